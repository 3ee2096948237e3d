//! Checkpoint I/O in the Hugging Face layout: resolving a folder or hub id, reading
//! weights, building a model from them, and saving atomically.

pub mod adapter;
pub mod gguf_export;
pub mod load;
pub mod quantize;
pub mod resolve;
pub mod save;
pub mod side_files;
pub mod source;
pub mod store;

pub use load::{load, read_config_json, vocab_fits, LoadOptions, Model, Pretrained};
pub use quantize::{quantize_model, save_quantized, QuantFormat};
pub use resolve::resolve;
pub use save::save_pretrained;
pub use source::{InitPolicy, WeightSource};
pub use store::TensorStore;
