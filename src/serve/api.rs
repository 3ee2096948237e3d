//! Request bodies, in OpenAI's field names plus wick's extensions under its CLI flags'
//! names (`top_k`, `min_p`, `repetition_penalty`, `min_tokens`, `num_beams`), checked
//! to the ranges OpenAI documents. Unknown fields are ignored, as OpenAI-compatible
//! servers do; known fields wick cannot honour are refused rather than ignored.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use crate::generation::ProcessorConfig;
use crate::tokenizer::Tokenizer;

/// Reads a JSON object body: malformed JSON and a body over the limit are each their
/// own error.
pub fn read_json(body: Result<Bytes, BytesRejection>, limit: usize) -> ApiResult<Value> {
    let bytes = body.map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(limit),
        _ => ApiError::bad_json(format!("cannot read the request body: {e}")),
    })?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_json(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_json("the body must be a JSON object"));
    }
    Ok(value)
}

/// The fields of `T` in a body; a field of the wrong type is an error naming it.
pub fn fields<T: DeserializeOwned>(value: &Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::invalid(&path, format!("`{path}`: {}", e.inner()))
    })
}

/// Sampling and stopping, shared by completions and chat completions (read from the
/// same body as their own fields).
#[derive(Debug, Deserialize, Default)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<usize>,
    pub stop: Option<Value>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub top_k: Option<usize>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f32>,
    pub min_tokens: Option<usize>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f64>,
    pub best_of: Option<usize>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Value,
    pub max_tokens: Option<usize>,
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Value>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Value,
    pub encoding_format: Option<String>,
    pub dimensions: Option<usize>,
}

/// wick's `/v1/classify` and `/v1/translate`: `input` is a string or a list.
#[derive(Debug, Deserialize)]
pub struct TextsRequest {
    pub model: Option<String>,
    pub input: Value,
    /// classify: a multi-label model's threshold for every label.
    pub threshold: Option<f64>,
    /// translate: beam search with this many beams (1 = greedy).
    pub num_beams: Option<usize>,
    pub max_tokens: Option<usize>,
}

/// The most choices (and beams) one request may ask for.
pub const MAX_N: usize = 16;

fn range(param: &str, ok: bool, what: &str) -> ApiResult<()> {
    match ok {
        true => Ok(()),
        false => Err(ApiError::invalid(
            param,
            format!("`{param}` must be {what}"),
        )),
    }
}

impl Sampling {
    /// The logits processors, checked: OpenAI's defaults (temperature 1) and ranges.
    pub fn processors(&self, eos: &[u32]) -> ApiResult<ProcessorConfig> {
        let t = self.temperature.unwrap_or(1.0);
        range("temperature", (0.0..=2.0).contains(&t), "between 0 and 2")?;
        if let Some(p) = self.top_p {
            range("top_p", p > 0.0 && p <= 1.0, "in (0, 1]")?;
        }
        if let Some(p) = self.min_p {
            range("min_p", p > 0.0 && p <= 1.0, "in (0, 1]")?;
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = v {
                range(name, (-2.0..=2.0).contains(&v), "between -2 and 2")?;
            }
        }
        if let Some(r) = self.repetition_penalty {
            range("repetition_penalty", r > 0.0 && r.is_finite(), "above 0")?;
        }
        range("top_k", self.top_k != Some(0), "at least 1")?;
        range(
            "n",
            matches!(self.n.unwrap_or(1), 1..=MAX_N),
            &format!("between 1 and {MAX_N}"),
        )?;
        range(
            "num_beams",
            matches!(self.num_beams.unwrap_or(1), 1..=MAX_N),
            &format!("between 1 and {MAX_N}"),
        )?;
        if let Some(lp) = self.length_penalty {
            range("length_penalty", lp.is_finite(), "finite")?;
        }
        if self.best_of.is_some_and(|b| b > 1) {
            return Err(ApiError::invalid(
                "best_of",
                "`best_of` is not supported: use `n` or `num_beams`",
            ));
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::invalid(
                "logit_bias",
                "`logit_bias` is not supported",
            ));
        }
        let beams = self.num_beams.unwrap_or(1);
        if beams > 1 && self.n.unwrap_or(1) > beams {
            return Err(ApiError::invalid(
                "n",
                "`n` must not exceed `num_beams` with beam search",
            ));
        }
        if beams > 1 && t > 0.0 && self.temperature.is_some() {
            return Err(ApiError::invalid("temperature", "beam search does not sample: give `temperature` 0 or leave it out with `num_beams`"));
        }
        Ok(ProcessorConfig {
            // Beam search does not sample.
            temperature: if beams > 1 { 0.0 } else { t },
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: None,
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            no_repeat_ngram_size: 0,
            min_new_tokens: self.min_tokens.unwrap_or(0),
            eos_token_ids: eos.to_vec(),
            forced_eos: None,
            forced_bos: None,
        })
    }

    /// `stop`: a string or a list of strings.
    pub fn stops(&self) -> ApiResult<Vec<String>> {
        match &self.stop {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()),
            _ => Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or a list of strings",
            )),
        }
    }
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of lists of
/// token ids; each becomes one prompt's ids.
pub fn prompts(value: &Value, tok: &Tokenizer, vocab: usize) -> ApiResult<Vec<Vec<u32>>> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "`prompt` must be a string, a list of strings, a list of token ids or a list of lists of token ids",
        )
    };
    let ids = |v: &[Value]| -> ApiResult<Vec<u32>> {
        v.iter()
            .map(|x| match x.as_u64() {
                Some(id) if (id as usize) < vocab => Ok(id as u32),
                Some(id) => Err(ApiError::invalid(
                    "prompt",
                    format!("token id {id} is outside the model's vocabulary of {vocab}"),
                )),
                None => Err(bad()),
            })
            .collect()
    };
    let encode = |s: &str| {
        tok.encode(s, false)
            .map_err(|e| ApiError::internal(e.to_string()))
    };
    let all = match value {
        Value::String(s) => vec![encode(s)?],
        Value::Array(a) if a.is_empty() => {
            return Err(ApiError::invalid("prompt", "`prompt` is an empty list"))
        }
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .map(|s| encode(s.as_str().unwrap_or_default()))
            .collect::<ApiResult<_>>()?,
        Value::Array(a) if a.iter().all(Value::is_number) => vec![ids(a)?],
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| ids(x.as_array().map(Vec::as_slice).unwrap_or_default()))
            .collect::<ApiResult<_>>()?,
        _ => return Err(bad()),
    };
    if all.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", "a prompt encodes to no tokens"));
    }
    Ok(all)
}

/// `input` of the encoder endpoints: a string or a non-empty list of strings.
pub fn texts(value: &Value) -> ApiResult<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => Ok(a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()),
        Value::Array(a) if a.is_empty() => Err(ApiError::invalid("input", "`input` is an empty list")),
        _ => Err(ApiError::invalid(
            "input",
            "`input` must be a string or a list of strings (token ids are not accepted: wick tokenizes with the model's own tokenizer)",
        )),
    }
}

/// A chat message's text: `content` as a string, or OpenAI's list of parts of which
/// the text ones are joined.
pub fn message_text(m: &Value, i: usize) -> ApiResult<(String, String)> {
    let param = format!("messages[{i}]");
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(&param, format!("`{param}.role` must be a string")))?;
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            &param,
                            format!("`{param}.content`: only text parts are supported"),
                        ))
                    }
                }
            }
            text
        }
        _ => {
            return Err(ApiError::invalid(
                &param,
                format!("`{param}.content` must be a string or a list of parts"),
            ))
        }
    };
    Ok((role.to_string(), content))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse<T: DeserializeOwned>(v: &str) -> ApiResult<T> {
        fields(&read_json(Ok(Bytes::from(v.to_string())), 10)?)
    }

    #[test]
    fn wrong_types_name_the_field_and_bad_json_is_its_own_error() {
        let e = parse::<CompletionRequest>(r#"{"prompt": "x", "max_tokens": "ten"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"), "{e:?}");
        let e = parse::<Sampling>(r#"{"prompt": "x", "n": -1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"), "{e:?}");
        let e = parse::<CompletionRequest>("{\"prompt\": ").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse::<CompletionRequest>("[1]").unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn ranges_follow_openai() {
        let s = |v: Value| serde_json::from_value::<Sampling>(v).unwrap();
        assert!(s(json!({})).processors(&[]).unwrap().temperature == 1.0);
        for (v, param) in [
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"presence_penalty": 3}), "presence_penalty"),
            (json!({"n": 0}), "n"),
            (json!({"top_k": 0}), "top_k"),
            (json!({"best_of": 2}), "best_of"),
            (json!({"logit_bias": {"1": 5}}), "logit_bias"),
        ] {
            let e = s(v.clone()).processors(&[]).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{v}");
        }
        assert_eq!(s(json!({"stop": "a"})).stops().unwrap(), vec!["a"]);
        assert!(s(json!({"stop": [1]})).stops().is_err());
    }
}
