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

/// Dropout that is the identity in eval mode. `candle_nn::ops::dropout` is built from
/// differentiable ops (a random mask multiply), so gradients flow through it.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(x, p as f32)
    } else {
        Ok(x.clone())
    }
}
