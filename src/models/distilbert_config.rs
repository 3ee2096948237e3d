//! DistilBERT's config.json speaks its own field names (`dim`, `n_layers`,
//! `hidden_dim`, ...) for what is a BERT encoder without token types: it is read into
//! a [`BertConfig`] of family [`EncoderFamily::DistilBert`] and written back in its own
//! names, so transformers reads wick's checkpoints as DistilBERT ones.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bert::BertConfig;
use super::encoder_family::EncoderFamily;
use crate::error::{Result, WickError};
use crate::nn::Activation;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DistilBertConfig {
    vocab_size: usize,
    #[serde(default = "defaults::max_positions")]
    max_position_embeddings: usize,
    /// The table is still stored in `position_embeddings`, so loading does not care;
    /// kept so that a saved config says what the checkpoint was trained with.
    #[serde(default)]
    sinusoidal_pos_embds: bool,
    n_layers: usize,
    n_heads: usize,
    dim: usize,
    hidden_dim: usize,
    #[serde(default = "defaults::pdrop")]
    dropout: f64,
    #[serde(default = "defaults::pdrop")]
    attention_dropout: f64,
    #[serde(default = "defaults::gelu")]
    activation: Activation,
    #[serde(default = "defaults::seq_classif_dropout")]
    seq_classif_dropout: f64,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label2id: Option<BTreeMap<String, u32>>,
    #[serde(default = "defaults::yes", alias = "tie_weights_")]
    tie_word_embeddings: bool,
}

mod defaults {
    use crate::nn::Activation;
    pub fn max_positions() -> usize {
        512
    }
    pub fn pdrop() -> f64 {
        0.1
    }
    pub fn seq_classif_dropout() -> f64 {
        0.2
    }
    pub fn gelu() -> Activation {
        Activation::Gelu
    }
    pub fn yes() -> bool {
        true
    }
}

/// DistilBERT's layer norms are built with eps 1e-12 (not a config field).
const LAYER_NORM_EPS: f64 = 1e-12;

/// Reads a `model_type: distilbert` config.json.
pub fn read(obj: &Map<String, Value>, path: &Path) -> Result<BertConfig> {
    let mut obj = obj.clone();
    // transformers 5 writes `tie_word_embeddings` beside the older `tie_weights_`.
    if obj.contains_key("tie_word_embeddings") {
        obj.remove("tie_weights_");
    }
    let d: DistilBertConfig =
        super::strict::parse_strict(&obj, path, &["qa_dropout", "bos_token_id", "eos_token_id"])?;
    if d.n_heads == 0 || !d.dim.is_multiple_of(d.n_heads) {
        return Err(WickError::config(path, "dim is not divisible by n_heads"));
    }
    let mut bert = BertConfig {
        vocab_size: d.vocab_size,
        hidden_size: d.dim,
        num_hidden_layers: d.n_layers,
        num_attention_heads: d.n_heads,
        intermediate_size: d.hidden_dim,
        hidden_act: d.activation,
        hidden_dropout_prob: d.dropout,
        attention_probs_dropout_prob: d.attention_dropout,
        max_position_embeddings: d.max_position_embeddings,
        type_vocab_size: 0,
        layer_norm_eps: LAYER_NORM_EPS,
        pad_token_id: d.pad_token_id,
        position_embedding_type: "absolute".into(),
        classifier_dropout: Some(d.seq_classif_dropout),
        id2label: d.id2label,
        label2id: d.label2id,
        bos_token_id: None,
        eos_token_id: vec![],
        tie_word_embeddings: d.tie_word_embeddings,
        add_cross_attention: false,
        family: EncoderFamily::DistilBert,
        sinusoidal_positions: d.sinusoidal_pos_embds,
        architecture: None,
        problem_type: None,
    };
    bert.read_task_fields(&obj);
    Ok(bert)
}

/// The config.json fields transformers' DistilBertConfig reads.
pub fn write(c: &BertConfig) -> Value {
    let d = DistilBertConfig {
        vocab_size: c.vocab_size,
        max_position_embeddings: c.max_position_embeddings,
        sinusoidal_pos_embds: c.sinusoidal_positions,
        n_layers: c.num_hidden_layers,
        n_heads: c.num_attention_heads,
        dim: c.hidden_size,
        hidden_dim: c.intermediate_size,
        dropout: c.hidden_dropout_prob,
        attention_dropout: c.attention_probs_dropout_prob,
        activation: c.hidden_act,
        seq_classif_dropout: c
            .classifier_dropout
            .unwrap_or_else(defaults::seq_classif_dropout),
        pad_token_id: c.pad_token_id,
        id2label: c.id2label.clone(),
        label2id: c.label2id.clone(),
        tie_word_embeddings: c.tie_word_embeddings,
    };
    serde_json::to_value(d).unwrap_or_default()
}
