//! wick: train, fine-tune and run transformer language models from one model
//! definition on candle.
//!
//! - [`nn`]: building blocks (embeddings, attention, feed-forward, LayerNorm, masks).
//! - [`models`]: GPT-2, BERT and the encoder-decoder Transformer built from them.
//! - [`checkpoint`]: Hugging Face checkpoints in and out.
//! - [`tokenizer`]: tokenizer.json, GPT-2/BERT vocab files, character level.
//! - [`serve`]: the OpenAI-compatible HTTP server.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod files;
pub mod generation;
pub mod labels;
pub mod models;
pub mod nn;
pub mod runtime;
pub mod serve;
pub mod tasks;
pub mod tokenizer;
pub mod train;

pub use error::{Result, WickError};
