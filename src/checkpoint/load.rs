//! Loading a pretrained model: resolve the reference, read config.json, open the
//! weights, build the variant, load the tokenizer.

use std::path::PathBuf;

use candle_core::{DType, Device};

use super::{resolve, TensorStore, WeightSource};
use crate::error::{Result, WickError};
pub use crate::models::Model;
use crate::models::{BertHeads, ModelConfig};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Weights are converted to this dtype on load (fp16 checkpoints run in f32 on CPU).
    pub dtype: DType,
    /// BERT heads to build; `None` builds what the checkpoint holds.
    pub bert_heads: Option<BertHeads>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            bert_heads: None,
        }
    }
}

/// A model with everything that came with it.
pub struct Pretrained {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub model: Model,
    /// `None` when the folder has no tokenizer files at all.
    pub tokenizer: Option<Tokenizer>,
    pub weights: WeightSource,
}

impl Pretrained {
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| WickError::MissingFile {
                path: self.dir.clone(),
                what: "no tokenizer: looked for tokenizer.json, vocab.json + merges.txt, vocab.txt"
                    .into(),
            })
    }

    /// End-of-sequence ids: generation_config.json's when the folder has one (it
    /// overrides config.json in transformers), else config.json's.
    pub fn eos_token_ids(&self) -> Result<Vec<u32>> {
        let path = self.dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(self.config.eos_token_ids());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| WickError::io(&path, e))?;
        #[derive(serde::Deserialize)]
        struct GenerationConfig {
            #[serde(default, with = "crate::models::strict::token_ids")]
            eos_token_id: Vec<u32>,
        }
        let g: GenerationConfig = serde_json::from_str(&text).map_err(|e| WickError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(if g.eos_token_id.is_empty() {
            self.config.eos_token_ids()
        } else {
            g.eos_token_id
        })
    }
}

/// Loads `model` (a folder or a hub id) for inference.
pub fn load(model: &str, opts: &LoadOptions) -> Result<Pretrained> {
    let dir = resolve(model)?;
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(WickError::MissingFile {
            path: config_path,
            what: "config.json".into(),
        });
    }
    let config = ModelConfig::from_file(&config_path)?;
    let weights = WeightSource::inference(TensorStore::open_dir(&dir)?);
    let vb = weights.var_builder(opts.dtype, &opts.device);
    let mut model = Model::build(&config, opts.bert_heads, vb)?;
    if let Some(store) = weights.store() {
        super::quantize::attach_quantized(&mut model, store, &weights, &opts.device)?;
    }
    let tokenizer = match Tokenizer::from_dir(&dir) {
        Ok(t) => Some(t),
        Err(WickError::MissingFile { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(tok) = &tokenizer {
        vocab_fits(&config, tok).map_err(|message| WickError::Config {
            path: config_path.clone(),
            message,
        })?;
    }
    Ok(Pretrained {
        dir,
        config,
        model,
        tokenizer,
        weights,
    })
}

/// Whether every id the tokenizer can produce has a row in the model's embedding (each
/// side of a translator with two vocabularies); the message names both sizes. Checked
/// at load and before training: otherwise the first such id fails deep in an
/// index-select.
pub fn vocab_fits(config: &ModelConfig, tok: &Tokenizer) -> std::result::Result<(), String> {
    if let ModelConfig::Seq2Seq(c) = config {
        let (src, rows) = (
            tok.source_side().vocab_size(),
            c.src_vocab_size.unwrap_or(c.vocab_size),
        );
        if src > rows {
            return Err(format!(
                "the source tokenizer has {src} tokens but the model's source vocabulary \
                 ({}) is {rows}: ids from {rows} up have no embedding",
                if c.src_vocab_size.is_some() {
                    "src_vocab_size"
                } else {
                    "vocab_size"
                }
            ));
        }
    }
    let (n, rows) = (tok.vocab_size(), config.vocab_size());
    if n > rows {
        return Err(format!(
            "the tokenizer ({}) has {n} tokens but vocab_size is {rows}: ids from {rows} up \
             have no embedding",
            tok.source().display()
        ));
    }
    Ok(())
}
