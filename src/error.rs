//! Typed errors for the library. Callers branch on these (a missing tensor is a bad
//! checkpoint, a missing file may mean "try the hub"), so they are an enum rather than
//! strings; the CLI wraps them with `anyhow` context at the edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WickError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: missing file ({what})")]
    MissingFile { path: PathBuf, what: String },

    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{file}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor { file: PathBuf, name: String },

    #[error("{file}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: cannot read weights: {message}")]
    BadWeights { path: PathBuf, message: String },

    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("model `{id}` cannot be resolved: {message}")]
    Resolve { id: String, message: String },

    #[error("input of {len} tokens is longer than the model's context of {max} tokens")]
    TooLong { len: usize, max: usize },

    #[error("{0}")]
    Unsupported(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = WickError> = std::result::Result<T, E>;

impl WickError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WickError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        WickError::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}
