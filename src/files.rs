//! Writing a file so that a crash, a kill or a full disk leaves either the old file or
//! the new one, never half of one: everything wick writes (checkpoints, tokenizers,
//! metrics, embeddings, caches) goes through [`atomic_write`]. A leaf module, so any
//! layer may write without importing checkpoint code.

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
