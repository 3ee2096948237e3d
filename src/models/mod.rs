//! The three variants of the one model definition.

pub mod bert;
pub mod config;
pub mod gpt2;
pub mod seq2seq;

pub use bert::{Bert, BertConfig, BertHeads};
pub use config::ModelConfig;
pub use gpt2::{Gpt2, Gpt2Cache, Gpt2Config};
pub use seq2seq::{Seq2Seq, Seq2SeqCache, Seq2SeqConfig};
