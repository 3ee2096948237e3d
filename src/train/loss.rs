//! Losses. On the CPU cross-entropy is one fused kernel (log-softmax, pick, and its
//! backward); elsewhere it is candle's log-softmax + NLL composition.

use candle_core::{Result, Tensor, D};

use crate::nn::fused;

/// Mean next-token cross-entropy of logits (B, T, V) against targets (B, T).
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let logits = logits.reshape(((), v))?;
    let targets = targets.flatten_all()?;
    if fused::enabled(logits.device()) && logits.dtype() == candle_core::DType::F32 {
        fused::cross_entropy_rows(&logits, &targets)?.mean_all()
    } else {
        candle_nn::loss::cross_entropy(&logits, &targets)
    }
}
