//! Translation with the encoder-decoder: each source is encoded once, then the decoder
//! runs from BOS until EOS (or the length limit), greedy or with beam search, the
//! cross-attention keys and values cached after the first step; or, for a
//! non-autoregressive model, every position at once with Mask-Predict. Batched.

use candle_core::Device;
use serde::Serialize;

use crate::data::{pad_batch, Padding};
use crate::error::Result;
use crate::generation::{
    beam_search, mask_predict, search, Flow, GenerateOptions, MaskPredictOptions, Seq2SeqDecoder,
};
use crate::models::Seq2Seq;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Serialize)]
pub struct Translation {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Beam search's length-normalised log-probability; Mask-Predict's mean token
    /// log-probability.
    pub score: Option<f64>,
    /// The source's length in tokens (with EOS) when it was longer than the model's
    /// context and cut to fit: only the first `max_position_embeddings` were translated.
    pub source_truncated_from: Option<usize>,
}

/// How the decoder writes the target.
#[derive(Debug, Clone)]
pub enum Decoding {
    /// Left to right, greedy or beam search (`max_new_tokens` bounds each output).
    Autoregressive(GenerateOptions),
    /// Every position at once, refined over iterations (non-autoregressive models).
    MaskPredict(MaskPredictOptions),
}

impl Decoding {
    /// Refuses a decoding the model was not trained for, naming the flag.
    pub fn check(&self, model: &Seq2Seq) -> Result<()> {
        let msg = match (self, model.config().is_nat()) {
            (Self::Autoregressive(_), true) => {
                "this model is non-autoregressive (trained with --objective nat): use --decoding nat"
            }
            (Self::MaskPredict(_), false) => {
                "--decoding nat needs a non-autoregressive model (trained with --objective nat)"
            }
            _ => return Ok(()),
        };
        Err(crate::error::WickError::Unsupported(msg.into()))
    }
}

/// Translates `sources` in one batch; EOS and padding come from the model's config.
pub fn translate(
    model: &Seq2Seq,
    tok: &Tokenizer,
    sources: &[String],
    decoding: &Decoding,
    device: &Device,
) -> Result<Vec<Translation>> {
    decoding.check(model)?;
    let c = model.config();
    let mut cut = Vec::with_capacity(sources.len());
    let mut src = Vec::with_capacity(sources.len());
    for s in sources {
        let ids = tok.source_side().encode(s, false)?;
        let (ids, full) = c.framing().apply(ids, c.max_position_embeddings);
        src.push(ids);
        cut.push(full);
    }
    let (src, src_mask) = pad_batch(&src, c.pad_token_id, Padding::Right, device)?;
    let outputs = match decoding {
        Decoding::Autoregressive(opts) => search_outputs(model, &src, &src_mask, opts, device)?,
        Decoding::MaskPredict(opts) => mask_predict(model, &src, &src_mask, opts)?
            .into_iter()
            .map(|m| (m.ids, Some(m.score)))
            .collect(),
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

/// Greedy or beam-search outputs (ids, beam score) for the encoded sources.
fn search_outputs(
    model: &Seq2Seq,
    src: &candle_core::Tensor,
    src_mask: &candle_core::Tensor,
    opts: &GenerateOptions,
    device: &Device,
) -> Result<Vec<(Vec<u32>, Option<f64>)>> {
    let c = model.config();
    let mut opts = opts.clone();
    opts.processors.eos_token_ids = vec![c.eos_token_id];
    opts.pad_token_id = c.pad_token_id;
    opts.max_new_tokens = opts.max_new_tokens.min(c.max_position_embeddings - 1);
    opts.processors.forced_eos = c.forced_eos_token_id.map(|id| (opts.max_new_tokens, id));
    opts.processors.forced_bos = c.forced_bos_token_id;
    let prompts = vec![vec![c.bos_token_id]; src.dim(0)?];
    let capacity = opts.max_new_tokens + 1;
    Ok(if opts.num_beams > 1 {
        let mut dec = Seq2SeqDecoder::new(model, src, Some(src_mask), opts.num_beams, capacity)?;
        beam_search(&mut dec, &prompts, &opts, device)?
            .into_iter()
            .map(|mut g| {
                let best = g.remove(0);
                (best.ids, best.score)
            })
            .collect()
    } else {
        let mut dec = Seq2SeqDecoder::new(model, src, Some(src_mask), 1, capacity)?;
        search::sample(&mut dec, &prompts, &opts, device, &mut |_, _| {
            Ok(Flow::Continue)
        })?
        .into_iter()
        .map(|ids| (ids, None))
        .collect()
    })
}
