//! A causal LM's held-out loss: every full window of a token range, in order, each batch
//! split into shards that run side by side as in training.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::data::{LmBatches, TokenBuffer};
use crate::error::Result;
use crate::models::Gpt2;
use crate::nn::kernels::parallel::over_shards;
use crate::nn::loss::lm_loss;

/// Mean next-token loss of inputs x (B, T) against targets y (B, T), dropout off.
pub fn mean_loss(model: &Gpt2, x: &Tensor, y: &Tensor) -> Result<f64> {
    let losses = over_shards(&[x, y], |_, t| {
        Ok(lm_loss(&model.forward(&t[0], None, None, false)?, &t[1])?.to_scalar::<f32>()? as f64)
    })?;
    Ok(losses.iter().sum::<f64>() / losses.len() as f64)
}

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
        let x = Tensor::cat(&xs, 0)?;
        let y = Tensor::cat(&ys, 0)?;
        let loss = mean_loss(model, &x, &y)?;
        total += loss * b as f64;
        count += b;
        i += b;
    }
    Ok(total / count as f64)
}
