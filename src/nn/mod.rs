//! Building blocks of the transformer, one concept per file. Every block that training
//! flows through is written from differentiable tensor ops: candle-nn 0.11's fused
//! `LayerNorm`, `ops::layer_norm` and `ops::softmax_last_dim` have no backward pass.

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod fastmath;
pub mod feed_forward;
pub mod fused;
pub mod fused_attention;
pub mod fused_linear;
pub mod kv_cache;
pub mod layer_norm;
pub mod linear;
pub mod mask;
mod matmul;
pub mod packing;
pub mod residual;

pub use activation::Activation;
pub use attention::{scaled_dot_product_attention, MultiHeadAttention, QkvProjection};
pub use embedding::{position_ids, sinusoidal_table, Embedding, SinusoidalPositions};
pub use feed_forward::FeedForward;
pub use kv_cache::KvCache;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use mask::{attention_bias, Mask};
pub use packing::Packing;
pub use residual::{residual, NormPlacement};

use candle_core::{Result, Tensor};

/// The masks dropout draws, seeded by the trainer at every step ([`seed_dropout`]) so a
/// run, and a resumed run, repeats exactly; candle's CPU `rand` cannot be seeded.
static DROPOUT_RNG: std::sync::Mutex<Option<rand::rngs::StdRng>> = std::sync::Mutex::new(None);

/// Seeds the masks of every dropout call that follows, in call order. The trainer calls
/// it with (run seed, step) before each step's forward pass.
pub fn seed_dropout(seed: u64) {
    use rand::SeedableRng;
    *DROPOUT_RNG.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(rand::rngs::StdRng::seed_from_u64(seed));
}

/// Inverted dropout, the identity in eval mode: x · mask / (1 − p) with mask ~
/// Bernoulli(1 − p). The mask is a constant, so gradients flow through the multiply.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !(train && p > 0.0) {
        return Ok(x.clone());
    }
    let mut rng = DROPOUT_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rng) = rng.as_mut() else {
        return candle_nn::ops::dropout(x, p as f32); // unseeded: candle's own
    };
    use rand::Rng;
    let keep = 1.0 / (1.0 - p) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), &candle_core::Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    x * mask
}
