//! Scoring text with a causal LM: the log-probability of each token given the ones
//! before it, and the mean negative log-likelihood / perplexity.

use candle_core::{Device, IndexOp, Tensor, D};
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
    if ids.len() < 2 {
        return Err(WickError::Unsupported(
            "scoring needs at least two tokens".into(),
        ));
    }
    let max = model.config().n_positions;
    if ids.len() > max {
        return Err(WickError::TooLong {
            len: ids.len(),
            max,
        });
    }
    let x = Tensor::new(ids, device)?.unsqueeze(0)?; // (1, T)
    let logits = model.forward(&x, None, None, false)?.i(0)?; // (T, V)
    let logp = candle_nn::ops::log_softmax(&logits.narrow(0, 0, ids.len() - 1)?, D::Minus1)?;
    let targets = Tensor::new(&ids[1..], device)?.unsqueeze(1)?; // (T-1, 1)
    let logprobs = logp.gather(&targets, 1)?.squeeze(1)?.to_vec1::<f32>()?;
    let mean_nll = -logprobs.iter().map(|&v| v as f64).sum::<f64>() / logprobs.len() as f64;
    Ok(Score {
        token_ids: ids.to_vec(),
        logprobs,
        mean_nll,
        perplexity: mean_nll.exp(),
    })
}
