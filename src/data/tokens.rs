//! Token ids of a corpus, computed once and cached on disk as raw little-endian u16 (when
//! the vocabulary fits) or u32, memory-mapped on later runs. The cache name carries a hash
//! of the tokenizer and the corpus files' paths, sizes and times, so a changed input is
//! re-read. The cache lives in wick's cache folder ([`crate::files::cache_dir`]), or the
//! run's folder without one: never beside the corpus, whose folder may be shared or
//! read-only.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::error::{Result, WickError};
use crate::tokenizer::Tokenizer;

pub enum TokenBuffer {
    U16(memmap2::Mmap),
    U32(memmap2::Mmap),
    Owned(Vec<u32>),
}

impl TokenBuffer {
    pub fn len(&self) -> usize {
        match self {
            TokenBuffer::U16(m) => m.len() / 2,
            TokenBuffer::U32(m) => m.len() / 4,
            TokenBuffer::Owned(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens `start..start + n` as u32.
    pub fn slice(&self, start: usize, n: usize) -> Vec<u32> {
        match self {
            TokenBuffer::U16(m) => m[2 * start..2 * (start + n)]
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .collect(),
            TokenBuffer::U32(m) => m[4 * start..4 * (start + n)]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            TokenBuffer::Owned(v) => v[start..start + n].to_vec(),
        }
    }
}

fn cache_key(files: &[PathBuf], tok: &Tokenizer) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tok.inner()
        .to_string(false)
        .unwrap_or_default()
        .hash(&mut h);
    for f in files {
        std::fs::canonicalize(f)
            .unwrap_or_else(|_| f.clone())
            .hash(&mut h);
        if let Ok(m) = std::fs::metadata(f) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

/// Tokenizes the documents of `data` (joined by `separator`, e.g. GPT-2's
/// <|endoftext|>), caching the ids in wick's cache folder, or in `fallback_dir` (the
/// run's folder) when there is none or it cannot be written. Returns the ids and the
/// cache file used.
pub fn tokenize_cached(
    data: &Path,
    tok: &Tokenizer,
    separator: Option<u32>,
    fallback_dir: &Path,
) -> Result<(TokenBuffer, Option<PathBuf>)> {
    let files = super::corpus::corpus_files(data)?;
    let wide = tok.vocab_size() > u16::MAX as usize;
    let name = format!(
        "{}.wick-tokens-{:016x}.{}",
        data.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into()),
        cache_key(&files, tok),
        if wide { "u32" } else { "u16" }
    );
    let cached = crate::files::cache_dir("tokens").map(|d| d.join(&name));
    let candidates: Vec<PathBuf> = cached
        .into_iter()
        .chain([fallback_dir.join(&name)])
        .collect();
    for c in &candidates {
        if let Ok(f) = std::fs::File::open(c) {
            // SAFETY: read-only map of a cache file only wick writes (atomically).
            let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| WickError::io(c, e))?;
            let buf = if wide {
                TokenBuffer::U32(m)
            } else {
                TokenBuffer::U16(m)
            };
            return Ok((buf, Some(c.clone())));
        }
    }
    let docs = super::read_documents(data)?;
    let mut ids = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            ids.extend(separator);
        }
        ids.extend(tok.encode(d, false)?);
    }
    let bytes: Vec<u8> = if wide {
        ids.iter().flat_map(|t| t.to_le_bytes()).collect()
    } else {
        ids.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect()
    };
    for c in &candidates {
        if crate::files::atomic_write(c, &bytes).is_ok() {
            return Ok((TokenBuffer::Owned(ids), Some(c.clone())));
        }
    }
    Ok((TokenBuffer::Owned(ids), None))
}
