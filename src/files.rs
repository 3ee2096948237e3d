//! Writing a file so that a crash, a kill or a full disk leaves either the old file or
//! the new one, never half of one: everything wick writes (checkpoints, tokenizers,
//! metrics, embeddings, caches) goes through [`atomic_write`]. A leaf module, so any
//! layer may write without importing checkpoint code. And [`holds_model`], the one test
//! of whether an output folder already holds something a command must not replace, and
//! [`cache_dir`], where wick keeps what it can recompute.

use std::io::Write;
use std::path::Path;

use crate::error::{Result, WickError};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced,
/// then renamed over `path`. Creates the folder if needed.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| WickError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| WickError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| WickError::io(path, e))?;
    // Temporary files are created private (0600); a checkpoint is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| WickError::io(path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| WickError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| WickError::io(path, e.error))?;
    Ok(())
}

/// wick's cache folder for `what` (e.g. "tokens"): `$WICK_CACHE_DIR/what`, else
/// `$XDG_CACHE_HOME/wick/what`, else `~/.cache/wick/what`; None without a home. Never
/// beside the user's data, which may be shared or read-only.
pub fn cache_dir(what: &str) -> Option<std::path::PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    let root = var("WICK_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("wick")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/wick")))?;
    Some(root.join(what))
}

/// The files whose presence makes a folder a model, a tokenizer or a training run that
/// a command writing a new one there would replace.
const MODEL_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "model.gguf",
    "tokenizer.json",
    "source_tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "adapter_config.json",
    "trainer_state.json",
];

/// The first thing in `dir` that a new model written there would replace (a model,
/// tokenizer or run file, or a `checkpoint-*` folder); None for a missing or
/// unrelated folder.
pub fn holds_model(dir: &Path) -> Option<String> {
    if let Some(f) = MODEL_FILES.iter().find(|f| dir.join(f).exists()) {
        return Some(f.to_string());
    }
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("checkpoint-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_holds_a_model_if_any_model_file_or_checkpoint_is_there() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holds_model(dir.path()), None);
        assert_eq!(holds_model(&dir.path().join("missing")), None);
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert_eq!(holds_model(dir.path()), None);
        std::fs::create_dir(dir.path().join("checkpoint-20")).unwrap();
        assert_eq!(holds_model(dir.path()).as_deref(), Some("checkpoint-20"));
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        assert_eq!(holds_model(dir.path()).as_deref(), Some("tokenizer.json"));
    }
}
