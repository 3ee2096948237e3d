//! Checkpoint I/O in the Hugging Face layout: resolving a folder or hub id, reading
//! weights, building a model from them, and saving atomically.

pub mod source;
pub mod store;

pub use source::{InitPolicy, WeightSource};
pub use store::TensorStore;
