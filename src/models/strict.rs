//! Reading a family's config.json fields strictly: Hugging Face configs carry many
//! generic fields (generation defaults, label maps, bookkeeping), accepted by name;
//! anything else is an error naming the file and the field, because a misspelt
//! `n_layers` silently ignored builds the wrong model. A leaf the family configs use,
//! below [`super::config::ModelConfig`], which dispatches to them.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Result, WickError};

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
