//! Translation with the encoder-decoder: each source is encoded once, then the decoder
//! runs from BOS until EOS (or the length limit), greedy or with beam search, the
//! cross-attention keys and values cached after the first step. Batched.

use candle_core::Device;
use serde::Serialize;

use crate::data::pairs::cut_with_eos;
use crate::data::{pad_batch, Padding};
use crate::error::Result;
use crate::generation::{beam_search, search, Flow, GenerateOptions, Seq2SeqDecoder};
use crate::models::Seq2Seq;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Serialize)]
pub struct Translation {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Beam search's length-normalised log-probability.
    pub score: Option<f64>,
    /// The source's length in tokens (with EOS) when it was longer than the model's
    /// context and cut to fit: only the first `max_position_embeddings` were translated.
    pub source_truncated_from: Option<usize>,
}

/// Translates `sources` in one batch. `opts.max_new_tokens` bounds each output; EOS and
/// padding come from the model's config.
pub fn translate(
    model: &Seq2Seq,
    tok: &Tokenizer,
    sources: &[String],
    opts: &GenerateOptions,
    device: &Device,
) -> Result<Vec<Translation>> {
    let c = model.config();
    let mut cut = Vec::with_capacity(sources.len());
    let mut src = Vec::with_capacity(sources.len());
    for s in sources {
        let ids = tok.source_side().encode(s, false)?;
        let (ids, full) = cut_with_eos(ids, c.eos_token_id, c.max_position_embeddings);
        src.push(ids);
        cut.push(full);
    }
    let (src, src_mask) = pad_batch(&src, c.pad_token_id, Padding::Right, device)?;
    let mut opts = opts.clone();
    opts.processors.eos_token_ids = vec![c.eos_token_id];
    opts.pad_token_id = c.pad_token_id;
    opts.max_new_tokens = opts.max_new_tokens.min(c.max_position_embeddings - 1);
    let prompts = vec![vec![c.bos_token_id]; sources.len()];
    let capacity = opts.max_new_tokens + 1;
    let outputs: Vec<(Vec<u32>, Option<f64>)> = if opts.num_beams > 1 {
        let mut dec = Seq2SeqDecoder::new(model, &src, Some(&src_mask), opts.num_beams, capacity)?;
        beam_search(&mut dec, &prompts, &opts, device)?
            .into_iter()
            .map(|mut g| {
                let best = g.remove(0);
                (best.ids, best.score)
            })
            .collect()
    } else {
        let mut dec = Seq2SeqDecoder::new(model, &src, Some(&src_mask), 1, capacity)?;
        search::sample(&mut dec, &prompts, &opts, device, &mut |_, _| {
            Ok(Flow::Continue)
        })?
        .into_iter()
        .map(|ids| (ids, None))
        .collect()
    };
    outputs
        .into_iter()
        .zip(cut)
        .map(|((ids, score), cut)| {
            Ok(Translation {
                text: tok.decode(&ids, true)?.trim().to_string(),
                token_ids: ids,
                score,
                source_truncated_from: cut,
            })
        })
        .collect()
}
