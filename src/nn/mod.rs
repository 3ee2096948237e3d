//! Building blocks of the transformer, one concept per file. Every block that training
//! flows through is differentiable: the ops they call ([`kernels`]) are fused CPU
//! kernels with hand-written backward passes, or tensor-op compositions (candle-nn
//! 0.11's fused `LayerNorm`, `ops::layer_norm` and `ops::softmax_last_dim` have no
//! backward pass).

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod feed_forward;
pub mod kernels;
pub mod kv_cache;
pub mod layer_norm;
pub mod linear;
pub mod lora;
pub mod loss;
pub mod mask;
pub mod packing;
pub mod recompute;
pub mod residual;

pub use activation::Activation;
pub use attention::{scaled_dot_product_attention, MultiHeadAttention, QkvProjection};
pub use embedding::{
    position_ids, sinusoidal_table, sinusoidal_table_with, Embedding, SinusoidLayout,
    SinusoidalPositions,
};
pub use feed_forward::FeedForward;
pub use kv_cache::KvCache;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use lora::Lora;
pub use mask::{attention_bias, Mask};
pub use packing::Packing;
pub use residual::{residual, NormPlacement};

use candle_core::{Result, Tensor};

thread_local! {
    /// The masks dropout draws on this thread, seeded by the trainer before each
    /// forward pass ([`seed_dropout`]) so a run, and a resumed run, repeats exactly;
    /// candle's CPU `rand` cannot be seeded. Per thread, because the shards of a batch
    /// run side by side, each with its own seed.
    static DROPOUT_RNG: std::cell::RefCell<Option<rand::rngs::StdRng>> =
        const { std::cell::RefCell::new(None) };
}

/// Seeds the masks of every dropout call that follows on this thread, in call order.
/// The trainer calls it with (run seed, micro-batch, shard) before each forward pass,
/// which also starts a fresh gradient-checkpointing tape ([`recompute`]).
pub fn seed_dropout(seed: u64) {
    use rand::SeedableRng;
    DROPOUT_RNG.with(|r| *r.borrow_mut() = Some(rand::rngs::StdRng::seed_from_u64(seed)));
    recompute::clear();
}

/// Where this thread's dropout generator stands, for a block that is recomputed in the
/// backward pass and must draw the same masks again.
fn dropout_state() -> Option<rand::rngs::StdRng> {
    DROPOUT_RNG.with(|r| r.borrow().clone())
}

fn set_dropout_state(state: Option<rand::rngs::StdRng>) {
    DROPOUT_RNG.with(|r| *r.borrow_mut() = state);
}

/// The seed of the next dropout mask on this thread: one draw from its seeded generator
/// ([`seed_dropout`]), or None when it is unseeded.
pub fn dropout_seed() -> Option<u64> {
    use rand::Rng;
    DROPOUT_RNG.with(|r| r.borrow_mut().as_mut().map(|rng| rng.random::<u64>()))
}

/// Inverted dropout, the identity in eval mode: x · mask / (1 − p) with mask ~
/// Bernoulli(1 − p), drawn from this thread's seeded generator ([`seed_dropout`]): one
/// draw per call seeds the whole mask ([`kernels::dropout`]).
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !(train && p > 0.0) {
        return Ok(x.clone());
    }
    match dropout_seed() {
        Some(seed) => kernels::dropout(x, p, seed),
        None => candle_nn::ops::dropout(x, p as f32), // unseeded: candle's own
    }
}
