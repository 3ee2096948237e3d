//! `config.json`: one enum over the variants, dispatched on `model_type`, parsed
//! strictly. Hugging Face configs carry many generic fields (generation defaults, label
//! maps, bookkeeping); those are accepted by name. Anything else is an error naming the
//! file and the field, because a misspelt `n_layers` silently ignored builds the wrong
//! model.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::bert::BertConfig;
use super::gpt2::Gpt2Config;
use super::seq2seq::Seq2SeqConfig;
use crate::error::{Result, WickError};

#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt2(Gpt2Config),
    Bert(BertConfig),
    Seq2Seq(Seq2SeqConfig),
}

/// Fields of transformers' `PretrainedConfig` (and generation defaults older configs
/// keep in config.json) that do not change the forward pass.
const GENERIC_FIELDS: &[&str] = &[
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "is_encoder_decoder",
    "is_decoder",
    "tie_encoder_decoder",
    "chunk_size_feed_forward",
    "pruned_heads",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "cross_attention_hidden_size",
    "gradient_checkpointing",
    "initializer_range",
    "problem_type",
    "num_labels",
    "tf_legacy_loss",
    "use_bfloat16",
];

/// Deserialises `value` into `T`, which must `deny_unknown_fields`, after dropping the
/// generic fields, the model's own `ignored` ones and private `_...` keys.
pub(crate) fn parse_strict<T: DeserializeOwned>(
    value: &Map<String, Value>,
    path: &Path,
    ignored: &[&str],
) -> Result<T> {
    let mut kept = Map::new();
    for (k, v) in value {
        if k.starts_with('_')
            || GENERIC_FIELDS.contains(&k.as_str())
            || ignored.contains(&k.as_str())
        {
            continue;
        }
        kept.insert(k.clone(), v.clone());
    }
    serde_path_to_error::deserialize(Value::Object(kept)).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names unknown fields itself; type errors need the path added.
        let message = if field == "." || inner.contains("unknown field") {
            inner
        } else {
            format!("field `{field}`: {inner}")
        };
        WickError::config(path, message)
    })
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| WickError::config(path, format!("not valid JSON: {e}")))?;
        Self::from_value(&value, path)
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
                    "no `model_type` (expected \"gpt2\", \"bert\" or \"wick-seq2seq\")",
                )
            })?;
        match model_type {
            "gpt2" => Ok(Self::Gpt2(Gpt2Config::from_json(obj, path)?)),
            "bert" => Ok(Self::Bert(BertConfig::from_json(obj, path)?)),
            "wick-seq2seq" => Ok(Self::Seq2Seq(parse_strict(obj, path, &[])?)),
            other => Err(WickError::config(
                path,
                format!("model_type `{other}` is not supported (gpt2, bert, wick-seq2seq)"),
            )),
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
            Self::Bert(c) => (serde_json::to_value(c), "bert", c.architectures()),
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
        Value::Object(out)
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "gpt2",
            Self::Bert(_) => "bert",
            Self::Seq2Seq(_) => "wick-seq2seq",
        }
    }

    /// The longest sequence the position embeddings cover.
    pub fn max_positions(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_positions,
            Self::Bert(c) => c.max_position_embeddings,
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

/// A token id field that transformers lets be a number, a list of numbers or null.
pub(crate) mod token_ids {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        Ok(match Option::<OneOrMany>::deserialize(d)? {
            None => vec![],
            Some(OneOrMany::One(x)) => vec![x],
            Some(OneOrMany::Many(xs)) => xs,
        })
    }

    pub fn serialize<S: Serializer>(ids: &[u32], s: S) -> Result<S::Ok, S::Error> {
        match ids {
            [] => Option::<u32>::None.serialize(s),
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}
