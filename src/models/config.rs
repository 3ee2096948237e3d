//! `config.json`: one enum over the variants, dispatched on `model_type`; each family
//! reads its own fields strictly (`strict.rs`: an unknown field is an error naming the
//! file and the field).

use std::path::Path;

use serde_json::Value;

use super::bert::BertConfig;
use super::encoder_family::EncoderFamily;
use super::gpt2::Gpt2Config;
use super::seq2seq::{Seq2SeqConfig, Seq2SeqFamily};
use super::strict::parse_strict;
use crate::error::{Result, WickError};

#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt2(Gpt2Config),
    Bert(BertConfig),
    Seq2Seq(Seq2SeqConfig),
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&Self::read_json(path)?, path)
    }

    /// A config.json as JSON, errors naming the file.
    pub fn read_json(path: &Path) -> Result<Value> {
        let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| WickError::config(path, format!("not valid JSON: {e}")))
    }

    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| WickError::config(path, "expected a JSON object"))?;
        let model_type = obj
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or_else(|| {
                WickError::config(
                    path,
                    "no `model_type` (expected \"gpt2\", \"bert\", \"roberta\", \"xlm-roberta\", \"distilbert\", \"bart\", \"marian\" or \"wick-seq2seq\")",
                )
            })?;
        match model_type {
            "gpt2" => Ok(Self::Gpt2(Gpt2Config::from_json(obj, path)?)),
            "distilbert" => Ok(Self::Bert(super::distilbert_config::read(obj, path)?)),
            "marian" => Ok(Self::Seq2Seq(super::bart_config::read(
                obj,
                path,
                Seq2SeqFamily::Marian,
            )?)),
            "bart" => Ok(Self::Seq2Seq(super::bart_config::read(
                obj,
                path,
                Seq2SeqFamily::Bart,
            )?)),
            "wick-seq2seq" => Ok(Self::Seq2Seq(parse_strict(obj, path, &[])?)),
            other => match EncoderFamily::from_model_type(other) {
                Some(family) => Ok(Self::Bert(BertConfig::from_json(obj, path, family)?)),
                None => Err(WickError::config(
                    path,
                    format!(
                        "model_type `{other}` is not supported (gpt2, bert, roberta, \
                         xlm-roberta, distilbert, bart, marian, wick-seq2seq)"
                    ),
                )),
            },
        }
    }

    /// The config.json transformers reads back (wick-seq2seq: wick only).
    pub fn to_json(&self) -> Value {
        let (mut v, model_type, arch) = match self {
            Self::Gpt2(c) => (
                serde_json::to_value(c),
                "gpt2",
                vec!["GPT2LMHeadModel".to_string()],
            ),
            Self::Bert(c) if c.family == EncoderFamily::DistilBert => (
                Ok(super::distilbert_config::write(c)),
                c.family.model_type(),
                c.architectures(),
            ),
            Self::Bert(c) => (
                serde_json::to_value(c),
                c.family.model_type(),
                c.architectures(),
            ),
            Self::Seq2Seq(c) if c.family != Seq2SeqFamily::Wick => (
                Ok(super::bart_config::write(c)),
                c.family.model_type(),
                vec![c.family.architecture().into()],
            ),
            Self::Seq2Seq(c) => (
                serde_json::to_value(c),
                "wick-seq2seq",
                vec!["WickSeq2Seq".into()],
            ),
        };
        let obj = v.as_mut().ok().and_then(|v| v.as_object_mut());
        let mut out = obj.cloned().unwrap_or_default();
        out.insert("model_type".into(), model_type.into());
        out.insert("architectures".into(), arch.into());
        if let Self::Bert(c) = self {
            if let Some(p) = &c.problem_type {
                out.insert("problem_type".into(), p.clone().into());
            }
        }
        Value::Object(out)
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "gpt2",
            Self::Bert(c) => c.family.model_type(),
            Self::Seq2Seq(c) => c.family.model_type(),
        }
    }

    /// The longest sequence the position embeddings cover.
    /// Sets every dropout probability `--dropout` governs: GPT-2's residual, embedding
    /// and attention dropout, BERT's hidden and attention-probability dropout, the
    /// encoder-decoder's dropout.
    pub fn set_dropout(&mut self, p: f64) {
        match self {
            Self::Gpt2(c) => (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) = (p, p, p),
            Self::Bert(c) => (c.hidden_dropout_prob, c.attention_probs_dropout_prob) = (p, p),
            Self::Seq2Seq(c) => c.dropout = p,
        }
    }

    /// The width of the residual stream (the Noam schedule scales by it).
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_embd,
            Self::Bert(c) => c.hidden_size,
            Self::Seq2Seq(c) => c.d_model,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_positions,
            Self::Bert(c) => c.max_tokens(),
            Self::Seq2Seq(c) => c.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.vocab_size,
            Self::Bert(c) => c.vocab_size,
            Self::Seq2Seq(c) => c.vocab_size,
        }
    }

    /// End-of-sequence ids declared by the config (generation stops on any of them).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            Self::Gpt2(c) => c.eos_token_id.clone(),
            Self::Bert(_) => vec![],
            Self::Seq2Seq(c) => vec![c.eos_token_id],
        }
    }
}
