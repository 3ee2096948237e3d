//! Scoring text with a causal LM: the log-probability of each token given the ones
//! before it, and the mean negative log-likelihood / perplexity.

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::error::{Result, WickError};
use crate::models::Gpt2;

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub token_ids: Vec<u32>,
    /// `logprobs[i]` = log p(token_ids[i+1] | token_ids[..=i]).
    pub logprobs: Vec<f32>,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// Log-probabilities of `ids[1..]`, each given its prefix, in one forward pass.
pub fn score(model: &Gpt2, ids: &[u32], device: &Device) -> Result<Score> {
    score_strided(model, ids, None, device)
}

/// Like `score`, and for a text longer than the context, over overlapping windows of
/// the context's length that advance by `stride` tokens (transformers' perplexity
/// recipe): every token is scored once, with at least `context - stride` tokens before
/// it, so a smaller stride is slower and closer to the model's full-context perplexity.
pub fn score_strided(
    model: &Gpt2,
    ids: &[u32],
    stride: Option<usize>,
    device: &Device,
) -> Result<Score> {
    if ids.len() < 2 {
        return Err(WickError::Unsupported(
            "scoring needs at least two tokens".into(),
        ));
    }
    let max = model.config().n_positions;
    let stride = match stride {
        _ if ids.len() <= max => max,
        None => {
            return Err(WickError::TooLong {
                len: ids.len(),
                max,
            })
        }
        Some(s) if s == 0 || s >= max => {
            return Err(WickError::Unsupported(format!(
                "the stride must be between 1 and {} (the context less one), got {s}",
                max - 1
            )))
        }
        Some(s) => s,
    };
    let mut logprobs = Vec::with_capacity(ids.len() - 1);
    let mut begin = 0;
    loop {
        let end = (begin + max).min(ids.len());
        let window = &ids[begin..end];
        // Tokens up to ids[logprobs.len()] were scored by an earlier window: only the
        // positions predicting the rest go through the vocabulary projection.
        let first_new = logprobs.len() - begin; // in window positions
        let x = Tensor::new(window, device)?.unsqueeze(0)?; // (1, W)
        let hidden = model.hidden_states(&x, None, None, false)?; // (1, W, C)
        let n = window.len() - 1 - first_new;
        let hidden = hidden.narrow(1, first_new, n)?; // (1, N, C)
        let logits = model.lm_logits(&hidden)?.squeeze(0)?; // (N, V)
        let targets = Tensor::new(&window[first_new + 1..], device)?; // (N,)
        let nll = crate::nn::kernels::cross_entropy_rows(&logits, &targets, 0.0)?; // (N,)
        logprobs.extend(nll.to_vec1::<f32>()?.into_iter().map(|v| -v));
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let mean_nll = -logprobs.iter().map(|&v| v as f64).sum::<f64>() / logprobs.len() as f64;
    Ok(Score {
        token_ids: ids.to_vec(),
        logprobs,
        mean_nll,
        perplexity: mean_nll.exp(),
    })
}
