//! Autoregressive generation with a KV cache: the prompt is prefilled in one pass, then
//! one token at a time is appended, reusing every earlier key and value.

use candle_core::{DType, Device, IndexOp, Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Result, WickError};
use crate::models::Gpt2;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f64,
    pub seed: u64,
    /// Generation stops after emitting any of these.
    pub eos_token_ids: Vec<u32>,
    /// Past the context window, keep going on the most recent tokens (re-encoding the
    /// window for each new token) instead of refusing.
    pub slide: bool,
}

/// Picks the next token from last-position logits (V,).
fn pick(logits: &Tensor, temperature: f64, rng: &mut StdRng) -> Result<u32> {
    if temperature <= 0.0 {
        return Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?);
    }
    let probs = candle_nn::ops::softmax(&(logits.to_dtype(DType::F32)? / temperature)?, D::Minus1)?;
    let probs = probs.to_vec1::<f32>()?;
    let mut u: f32 = rng.random::<f32>() * probs.iter().sum::<f32>();
    for (i, p) in probs.iter().enumerate() {
        u -= p;
        if u <= 0.0 {
            return Ok(i as u32);
        }
    }
    Ok((probs.len() - 1) as u32)
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each new id.
/// Returns the new ids (an end-of-sequence id included, as transformers does).
pub fn generate(
    model: &Gpt2,
    prompt: &[u32],
    opts: &GenerateOptions,
    device: &Device,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(WickError::Unsupported("the prompt is empty".into()));
    }
    let max = model.config().n_positions;
    if prompt.len() > max {
        return Err(WickError::TooLong {
            len: prompt.len(),
            max,
        });
    }
    if prompt.len() + opts.max_new_tokens > max && !opts.slide {
        return Err(WickError::Unsupported(format!(
            "a prompt of {} tokens plus {} new tokens exceeds the model's context of {max} tokens",
            prompt.len(),
            opts.max_new_tokens
        )));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = model.new_cache((prompt.len() + opts.max_new_tokens).min(max));
    let mut input = Tensor::new(prompt, device)?.unsqueeze(0)?; // (1, T) then (1, 1)
    let mut out: Vec<u32> = Vec::with_capacity(opts.max_new_tokens);
    while out.len() < opts.max_new_tokens {
        if cache.len() + input.dim(1)? > max {
            // The window is full: re-encode the most recent max - 1 tokens.
            let all: Vec<u32> = prompt.iter().chain(out.iter()).copied().collect();
            cache.reset();
            input = Tensor::new(&all[all.len() + 1 - max..], device)?.unsqueeze(0)?;
        }
        let logits = model.forward(&input, None, Some(&mut cache), false)?; // (1, T, V)
        let last = logits.i((0, logits.dim(1)? - 1))?; // (V,)
        let next = pick(&last, opts.temperature, &mut rng)?;
        out.push(next);
        on_token(next)?;
        if opts.eos_token_ids.contains(&next) {
            break;
        }
        input = Tensor::new(&[[next]], device)?;
    }
    Ok(out)
}
