//! Held-out loss of a causal LM over a whole token range, in order.

use std::sync::Arc;

use candle_core::Device;

use super::loss::lm_loss;
use crate::data::{LmBatches, TokenBuffer};
use crate::error::Result;
use crate::models::Gpt2;

/// Mean next-token loss over every full window of tokens[start..start + len].
pub fn lm_loss_over(
    model: &Gpt2,
    tokens: Arc<TokenBuffer>,
    start: usize,
    len: usize,
    block_size: usize,
    batch_size: usize,
    device: &Device,
) -> Result<f64> {
    let mut windows = LmBatches::new(tokens, start, len, block_size, 1, 0, false)?;
    let n = windows.windows_per_epoch();
    let (mut total, mut count) = (0f64, 0usize);
    let mut i = 0;
    while i < n {
        let b = batch_size.min(n - i);
        let (xs, ys): (Vec<_>, Vec<_>) = (i..i + b)
            .map(|k| windows.batch(k, device))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let x = candle_core::Tensor::cat(&xs, 0)?;
        let y = candle_core::Tensor::cat(&ys, 0)?;
        let loss = lm_loss(&model.forward(&x, None, None, false)?, &y)?.to_scalar::<f32>()? as f64;
        total += loss * b as f64;
        count += b;
        i += b;
    }
    Ok(total / count as f64)
}
