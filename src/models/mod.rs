//! The three variants of the one model definition.

mod bart_config;
pub mod bert;
pub mod config;
mod distilbert_config;
pub mod encoder_family;
pub mod gpt2;
pub mod seq2seq;
pub(crate) mod strict;

pub use bert::{Bert, BertConfig, BertHeads};
pub use config::ModelConfig;
pub use encoder_family::EncoderFamily;
pub use gpt2::{Gpt2, Gpt2Cache, Gpt2Config};
pub use seq2seq::{Seq2Seq, Seq2SeqCache, Seq2SeqConfig, Seq2SeqFamily};

use candle_core::Result;
use candle_nn::VarBuilder;

/// Any of the three variants, built from a config through one `VarBuilder`. A process
/// holds one or two models for its whole life, so the size difference between variants
/// is not worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Model {
    Gpt2(Gpt2),
    Bert(Bert),
    Seq2Seq(Seq2Seq),
}

impl Model {
    /// Builds the variant `config` describes. BERT builds the heads given, or those the
    /// checkpoint holds when `bert_heads` is `None`.
    pub fn build(
        config: &ModelConfig,
        bert_heads: Option<BertHeads>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match config {
            ModelConfig::Gpt2(c) => Model::Gpt2(Gpt2::load(c, vb)?),
            ModelConfig::Bert(c) => {
                let heads = bert_heads.unwrap_or_else(|| BertHeads::detect(c, &vb));
                Model::Bert(Bert::load(c, heads, vb)?)
            }
            ModelConfig::Seq2Seq(c) => Model::Seq2Seq(Seq2Seq::load(c, vb)?),
        })
    }

    /// Every linear layer of the variant (what LoRA and quantization reach).
    pub fn linears_mut(&mut self) -> Vec<&mut crate::nn::Linear> {
        match self {
            Model::Gpt2(m) => m.linears_mut(),
            Model::Bert(m) => m.linears_mut(),
            Model::Seq2Seq(m) => m.linears_mut(),
        }
    }

    /// Training recomputes every block's activations in the backward pass instead of
    /// keeping them (transformers' `gradient_checkpointing_enable()`).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        match self {
            Model::Gpt2(m) => m.set_gradient_checkpointing(on),
            Model::Bert(m) => m.set_gradient_checkpointing(on),
            Model::Seq2Seq(m) => m.set_gradient_checkpointing(on),
        }
    }

    /// The checkpoint family, as `wick info` names it.
    pub fn family(&self) -> &'static str {
        match self {
            Model::Gpt2(_) => "GPT-2",
            Model::Bert(b) => b.family().name(),
            Model::Seq2Seq(m) => m.config().family.name(),
        }
    }

    /// What wick can do with this checkpoint: its commands and training objectives.
    pub fn supported(&self) -> Vec<&'static str> {
        match self {
            Model::Gpt2(_) => vec![
                "generate",
                "score",
                "eval",
                "serve (completions, chat with a template)",
                "quantize",
                "export (GGUF)",
                "train --objective clm",
            ],
            Model::Bert(b) => {
                let mut s = vec!["embed", "serve (embeddings)"];
                if b.has_mlm_head() {
                    s.push("fill-mask");
                }
                if b.has_classifier() {
                    s.extend(["classify", "eval", "serve (classify)"]);
                }
                s.extend(["train --objective mlm", "train --objective classify"]);
                if b.family() == EncoderFamily::Bert {
                    s.push("train --objective mlm+nsp");
                }
                s
            }
            Model::Seq2Seq(m) if m.config().is_nat() => vec![
                "translate",
                "eval",
                "serve (translate)",
                "train --objective nat",
            ],
            Model::Seq2Seq(_) => vec![
                "translate",
                "eval",
                "serve (translate)",
                "train --objective seq2seq",
            ],
        }
    }

    /// A short human name for the architecture.
    pub fn architecture(&self) -> String {
        match self {
            Model::Gpt2(_) => "GPT-2 decoder (GPT2LMHeadModel)".into(),
            Model::Bert(b) => {
                let encoder = format!("{} encoder", b.family().name());
                let mut parts = vec![encoder.as_str()];
                if b.has_mlm_head() {
                    parts.push("masked-LM head");
                }
                if b.has_nsp_head() {
                    parts.push("next-sentence head");
                }
                if b.has_classifier() {
                    parts.push("classification head");
                }
                parts.join(" + ")
            }
            Model::Seq2Seq(m) if m.config().is_nat() => {
                "non-autoregressive encoder-decoder Transformer (Mask-Predict)".into()
            }
            Model::Seq2Seq(m) => match m.config().family {
                Seq2SeqFamily::Wick => "encoder-decoder Transformer".into(),
                f => format!("{} encoder-decoder ({})", f.name(), f.architecture()),
            },
        }
    }
}
