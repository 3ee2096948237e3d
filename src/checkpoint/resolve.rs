//! Turning `--model` into a checkpoint folder: a local folder as it is, or a hub id
//! (`gpt2`, `sentence-transformers/all-MiniLM-L6-v2`) through hf-hub's cache. The cache
//! honours `HF_HOME`; with `HF_HUB_OFFLINE=1` nothing is downloaded and a model missing
//! from the cache is an error saying where it was looked for.

use std::path::{Path, PathBuf};

use super::adapter::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::error::{Result, WickError};

/// Files a checkpoint may have beside config.json and its weights.
const OPTIONAL_FILES: &[&str] = &[
    "tokenizer.json",
    crate::tokenizer::SOURCE_TOKENIZER,
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "generation_config.json",
    "special_tokens_map.json",
];

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    !s.starts_with('.')
        && !s.starts_with('/')
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Resolves a model reference to a folder holding config.json (and weights), or a
/// LoRA adapter's adapter_config.json and adapter_model.safetensors.
pub fn resolve(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(WickError::Resolve {
            id: model.into(),
            message: "is a file; expected a checkpoint folder or a hub id".into(),
        });
    }
    if !looks_like_hub_id(model) {
        return Err(WickError::Resolve {
            id: model.into(),
            message: "no such folder, and not a hub id".into(),
        });
    }
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(model.to_string());
    if let Some(config) = cached.get("config.json") {
        if let Some(dir) = config.parent() {
            if crate::checkpoint::store::weight_files(dir).is_ok() {
                return Ok(dir.to_path_buf());
            }
        }
    }
    if let Some(config) = cached.get(ADAPTER_CONFIG) {
        if let Some(dir) = config
            .parent()
            .filter(|d| d.join(ADAPTER_WEIGHTS).is_file())
        {
            return Ok(dir.to_path_buf());
        }
    }
    if offline() {
        return Err(WickError::Resolve {
            id: model.into(),
            message: format!(
                "not a local folder and not in the hub cache at {} (HF_HUB_OFFLINE is set, so \
                 nothing is downloaded)",
                cache.path().display()
            ),
        });
    }
    download(model)
}

fn download(model: &str) -> Result<PathBuf> {
    let err = |message: String| WickError::Resolve {
        id: model.into(),
        message,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| err(format!("hub client: {e}")))?;
    let repo = api.model(model.to_string());
    let config = match repo.get("config.json") {
        Ok(c) => c,
        // A peft repository: the adapter alone, its base named inside.
        Err(e) => match repo.get(ADAPTER_CONFIG) {
            Ok(adapter) => {
                repo.get(ADAPTER_WEIGHTS)
                    .map_err(|e| err(format!("{ADAPTER_WEIGHTS}: {e}")))?;
                for f in OPTIONAL_FILES {
                    let _ = repo.get(f);
                }
                return Ok(adapter.parent().unwrap_or(Path::new(".")).to_path_buf());
            }
            Err(_) => return Err(err(format!("config.json: {e}"))),
        },
    };
    for f in OPTIONAL_FILES {
        let _ = repo.get(f);
    }
    if repo.get("model.safetensors").is_err() {
        match repo.get("model.safetensors.index.json") {
            Ok(index) => {
                let dir = index.parent().unwrap_or(Path::new("."));
                let text = std::fs::read_to_string(&index).map_err(|e| WickError::io(&index, e))?;
                let json: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| err(format!("model.safetensors.index.json: {e}")))?;
                let mut shards: Vec<&str> = json["weight_map"]
                    .as_object()
                    .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                shards.sort();
                shards.dedup();
                for s in shards {
                    if !dir.join(s).is_file() {
                        repo.get(s).map_err(|e| err(format!("{s}: {e}")))?;
                    }
                }
            }
            Err(_) => {
                repo.get("pytorch_model.bin")
                    .map_err(|e| err(format!("no model.safetensors or pytorch_model.bin: {e}")))?;
            }
        }
    }
    Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(looks_like_hub_id("gpt2"));
        assert!(looks_like_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        let e = resolve("./definitely/not/here").unwrap_err().to_string();
        assert!(e.contains("no such folder"), "{e}");
    }
}
