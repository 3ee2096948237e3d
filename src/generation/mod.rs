//! Autoregressive generation shared by every model with a decoder: the prompt is
//! prefilled in one pass, then one token per row is appended through a preallocated KV
//! cache. Strategies (greedy, sampling, beam search) are written once against the
//! [`Decoder`] trait; logits processors shape the scores; [`TextStream`] turns ids
//! into printable text with stop strings.

pub mod beam;
pub mod continuous;
pub mod decoder;
pub mod mask_predict;
pub mod processors;
pub mod sampler;
pub mod search;
pub mod stream;

use candle_core::Device;

pub use beam::beam_search;
pub use continuous::{Prefilled, RunningBatch};
pub use decoder::{Decoder, Gpt2Decoder, Seq2SeqDecoder};
pub use mask_predict::{mask_predict, MaskPredictOptions, MaskPredicted};
pub use processors::ProcessorConfig;
pub use stream::TextStream;

use crate::error::{Result, WickError};
use crate::models::Gpt2;

/// When a prompt's beam search ends (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EarlyStopping {
    /// As soon as `num_beams` hypotheses have finished.
    True,
    /// When the best running beam, at its current length, cannot beat the finished ones.
    #[default]
    False,
    /// Only when no running beam could ever beat them (the exact rule).
    Never,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Penalties, warpers, EOS ids and `min_new_tokens`.
    pub processors: ProcessorConfig,
    pub seed: u64,
    /// Continuations per prompt (sampled independently, or the best beams).
    pub num_return_sequences: usize,
    /// 1 = greedy or sampling; more = beam search.
    pub num_beams: usize,
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    /// Fills left padding and the rows that have finished.
    pub pad_token_id: u32,
    /// Past the context window, keep going on the most recent tokens (re-encoding the
    /// window for each new token) instead of refusing.
    pub slide: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            processors: ProcessorConfig::default(),
            seed: 0,
            num_return_sequences: 1,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            pad_token_id: 0,
            slide: false,
        }
    }
}

/// Whether a row goes on after a token (a stop string ends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// One continuation: the new ids (an EOS that ended it included) and, for beam search,
/// its length-normalised log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub score: Option<f64>,
}

/// Continues each prompt with a GPT-2: per prompt, `num_return_sequences` generations.
/// `on_token(row, id)` streams greedy and sampled tokens as they are chosen (row =
/// prompt · num_return_sequences + copy); beam search reports nothing until the end,
/// since its best hypothesis is only known then.
pub fn generate(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    device: &Device,
    mut on_token: impl FnMut(usize, u32) -> Result<Flow>,
) -> Result<Vec<Vec<Generation>>> {
    opts.processors.validate().map_err(WickError::Unsupported)?;
    if opts.num_beams == 0 || opts.num_return_sequences == 0 {
        return Err(WickError::Unsupported(
            "--num-beams and --num-return-sequences must be at least 1".into(),
        ));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let capacity = longest.saturating_add(opts.max_new_tokens);
    if opts.num_beams > 1 {
        let mut dec = Gpt2Decoder::new(model, capacity);
        return beam_search(&mut dec, prompts, opts, device);
    }
    let n = opts.num_return_sequences;
    if n > 1 && !opts.processors.sampling() {
        return Err(WickError::Unsupported(format!(
            "--num-return-sequences {n} needs sampling (--temperature > 0) or --num-beams >= {n}: \
             greedy decoding would return {n} identical copies"
        )));
    }
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), n))
        .collect();
    let mut dec = Gpt2Decoder::new(model, capacity);
    let out = search::sample(&mut dec, &rows, opts, device, &mut on_token)?;
    Ok(out
        .chunks(n)
        .map(|c| {
            c.iter()
                .map(|ids| Generation {
                    ids: ids.clone(),
                    score: None,
                })
                .collect()
        })
        .collect())
}
