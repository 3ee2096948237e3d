//! Losses. On the CPU cross-entropy is one fused kernel (log-softmax, pick, and its
//! backward); elsewhere it is candle's log-softmax + NLL composition.

use candle_core::{DType, Result, Tensor, D};

use crate::nn::fused::{self, IGNORE};

/// Mean cross-entropy of logits (N, C) against targets (N,).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused::enabled(logits.device()) && logits.dtype() == DType::F32 {
        fused::cross_entropy_rows(logits, targets)?.mean_all()
    } else {
        candle_nn::loss::cross_entropy(logits, &targets.to_dtype(DType::U32)?)
    }
}

/// Mean next-token cross-entropy of logits (B, T, V) against targets (B, T).
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    cross_entropy(&logits.reshape(((), v))?, &targets.flatten_all()?)
}

/// Mean cross-entropy over the positions whose label is not [`IGNORE`] (masked LM):
/// logits (B, T, V), labels (B, T).
pub fn masked_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let (logits, labels) = (logits.reshape(((), v))?, labels.flatten_all()?);
    let keep: Vec<u32> = labels
        .to_vec1::<u32>()?
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != IGNORE)
        .map(|(i, _)| i as u32)
        .collect();
    let n = keep.len().max(1) as f64;
    if fused::enabled(logits.device()) && logits.dtype() == DType::F32 {
        // Ignored rows contribute zero loss and zero gradient.
        fused::cross_entropy_rows(&logits, &labels)?.sum_all()? / n
    } else {
        let idx = Tensor::new(keep, logits.device())?;
        candle_nn::loss::cross_entropy(
            &logits.index_select(&idx, 0)?,
            &labels.index_select(&idx, 0)?,
        )
    }
}
