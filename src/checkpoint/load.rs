//! Loading a pretrained model: resolve the reference, read config.json, open the
//! weights, build the variant, load the tokenizer.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::{Map, Value};

use super::adapter::{Adapter, ADAPTER_CONFIG};
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
    /// A LoRA adapter folder (or hub id) to put on the model (`--adapter`).
    pub adapter: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            bert_heads: None,
            adapter: None,
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
    /// The LoRA adapter on the model, if any; `dir` is then the base's folder.
    pub adapter: Option<PathBuf>,
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
        let Some((g, path)) = generation_config(&self.dir)? else {
            return Ok(self.config.eos_token_ids());
        };
        #[derive(serde::Deserialize)]
        struct GenerationConfig {
            #[serde(default, with = "crate::models::strict::token_ids")]
            eos_token_id: Vec<u32>,
        }
        let g: GenerationConfig = serde_json::from_value(Value::Object(g))
            .map_err(|e| WickError::config(&path, e.to_string()))?;
        Ok(if g.eos_token_id.is_empty() {
            self.config.eos_token_ids()
        } else {
            g.eos_token_id
        })
    }
}

/// `dir`'s generation_config.json as a JSON object, if it has one.
fn generation_config(dir: &Path) -> Result<Option<(Map<String, Value>, PathBuf)>> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| WickError::io(&path, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(g)) => Ok(Some((g, path))),
        Ok(_) => Err(WickError::config(&path, "expected a JSON object")),
        Err(e) => Err(WickError::config(&path, format!("not valid JSON: {e}"))),
    }
}

/// The ids an encoder-decoder's generation starts and is forced with, which
/// generation_config.json sets over config.json (transformers 5 writes BART's
/// `forced_bos_token_id` there alone).
const GENERATION_IDS: [&str; 3] = [
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
];

/// `dir`'s config.json, with generation_config.json's [`GENERATION_IDS`] over it.
pub fn read_config_json(dir: &Path) -> Result<Value> {
    let mut value = ModelConfig::read_json(&dir.join("config.json"))?;
    if let (Some(obj), Some((g, _))) = (value.as_object_mut(), generation_config(dir)?) {
        let encoder_decoder = obj.get("is_encoder_decoder") == Some(&Value::Bool(true))
            || obj.contains_key("decoder_start_token_id");
        for key in GENERATION_IDS.iter().filter(|_| encoder_decoder) {
            if let Some(v) = g.get(*key).filter(|v| v.is_u64()) {
                obj.insert(key.to_string(), v.clone());
            }
        }
    }
    Ok(value)
}

/// Loads `model` (a folder or a hub id) for inference. A LoRA adapter folder loads the
/// base its adapter_config.json names with the adapter on top, as `--adapter` does; the
/// adapter folder's own config.json and tokenizer (a run's, with its labels) win over
/// the base's.
pub fn load(model: &str, opts: &LoadOptions) -> Result<Pretrained> {
    let mut dir = resolve(model)?;
    let mut adapter = match &opts.adapter {
        Some(a) => Some(Adapter::read(&resolve(a)?)?),
        None => None,
    };
    if dir.join(ADAPTER_CONFIG).is_file() {
        if adapter.is_some() {
            return Err(WickError::Unsupported(format!(
                "{} is an adapter itself: pass its base as --model with --adapter",
                dir.display()
            )));
        }
        let a = Adapter::read(&dir)?;
        dir = resolve(&a.base()?)?;
        adapter = Some(a);
    }
    let from_adapter = |f: &str| {
        adapter
            .as_ref()
            .map(|a| a.dir.join(f))
            .filter(|p| p.is_file())
    };
    let config_path = from_adapter("config.json").unwrap_or_else(|| dir.join("config.json"));
    if !config_path.is_file() {
        return Err(WickError::MissingFile {
            path: config_path,
            what: "config.json".into(),
        });
    }
    let config_dir = config_path.parent().unwrap_or(&dir).to_path_buf();
    let config_json = read_config_json(&config_dir)?;
    let mut config = ModelConfig::from_value(&config_json, &config_path)?;
    let store = TensorStore::open_dir(&dir)?;
    let heads = adapter
        .as_ref()
        .map(|a| a.heads(|n| store.contains(n)))
        .unwrap_or_default();
    // A peft classifier adapter on a base without labels: the head's rows are the
    // labels, named as transformers names them.
    if let (ModelConfig::Bert(c), Some(head)) = (&mut config, heads.get("classifier.weight")) {
        if c.num_labels() == 0 {
            let n = head.dim(0).map_err(WickError::from)?;
            c.set_labels(&(0..n).map(|i| format!("LABEL_{i}")).collect::<Vec<_>>());
        }
    }
    let weights = WeightSource::inference(store).with_overrides(heads);
    let vb = weights.var_builder(opts.dtype, &opts.device);
    let mut model = Model::build(&config, opts.bert_heads, vb)?;
    if let Some(store) = weights.store() {
        super::quantize::attach_quantized(&mut model, store, &weights, &opts.device)?;
    }
    if let Some(a) = &adapter {
        let init = super::adapter::LoraInit::Stored(&a.tensors);
        super::adapter::attach(&mut model, &a.spec()?, init, &opts.device)?;
    }
    weights.release_checkpoint();
    let tok_dir = match from_adapter("tokenizer.json") {
        Some(_) => adapter.as_ref().map(|a| a.dir.clone()).unwrap_or_default(),
        None => dir.clone(),
    };
    let tokenizer = match Tokenizer::from_dir(&tok_dir) {
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
        adapter: adapter.map(|a| a.dir),
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
