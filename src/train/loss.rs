//! Losses. Cross-entropy is log-softmax then the negative log-likelihood of the target,
//! both differentiable compositions.

use candle_core::{Result, Tensor, D};

/// Mean next-token cross-entropy of logits (B, T, V) against targets (B, T).
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    candle_nn::loss::cross_entropy(&logits.reshape(((), v))?, &targets.flatten_all()?)
}
