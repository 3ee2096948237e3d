//! Inference tasks on top of the model variants: scoring text, sentence embeddings,
//! fill-mask and classification. The CLI is a thin layer over these.

pub mod batch;
pub mod bleu;
pub mod classify;
pub mod embed;
pub mod fill_mask;
pub mod score;
pub mod translate;

pub use batch::{map_batches, map_batches_shown};
