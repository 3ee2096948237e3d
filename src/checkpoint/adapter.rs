//! LoRA adapters in peft's layout: `adapter_config.json` (a `LoraConfig`) and
//! `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight` (r, in)
//! and `.lora_B.weight` (out, r), plus trained heads (`modules_to_save`) under
//! `base_model.model.<module>.weight`. `PeftModel.from_pretrained(base, DIR)` loads what
//! wick writes, and wick loads what peft writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, WickError};
use crate::models::Model;
use crate::nn::Lora;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// What peft puts before a module's path in the base model.
const PEFT_PREFIX: &str = "base_model.model.";

/// The `LoraConfig` fields wick reads and writes; peft's others are kept as they were.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base checkpoint: a folder or a hub id.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// peft also takes one string (a regular expression), which wick refuses.
    #[serde(default)]
    pub target_modules: Option<Value>,
    /// GPT-2's Conv1D stores W as (in, out): the merged update is transposed.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub layers_to_transform: Option<Value>,
    #[serde(default)]
    pub rank_pattern: Map<String, Value>,
    #[serde(default)]
    pub alpha_pattern: Map<String, Value>,
    #[serde(default = "yes")]
    pub inference_mode: bool,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}
fn yes() -> bool {
    true
}

/// A LoRA configuration as the model sees it.
#[derive(Debug, Clone)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    pub rslora: bool,
}

impl LoraSpec {
    /// α / r, or α / √r with rank-stabilised LoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// The layers peft targets by default for each family
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
pub fn default_targets(model: &Model) -> Vec<String> {
    let names: &[&str] = match model {
        Model::Gpt2(_) => &["c_attn"],
        Model::Bert(b) => b.family().lora_targets(),
        Model::Seq2Seq(_) => &["q_proj", "v_proj"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// peft's rule for a list of targets: the module's full name, or its last components.
fn targeted(name: &str, targets: &[String]) -> bool {
    targets
        .iter()
        .any(|t| name == t || name.ends_with(&format!(".{t}")))
}

/// The module's path in the transformers class peft wraps: GPT2LMHeadModel nests the
/// decoder under `transformer.`, an encoder with heads (BertFor*, RobertaFor*, ...)
/// under its family's prefix (`bert.`, `roberta.`, `distilbert.`); wick names layers
/// as the checkpoint it loaded did, which may lack the prefix.
fn peft_path(model: &Model, name: &str) -> String {
    let encoder_prefix;
    let prefix = match model {
        Model::Gpt2(_) if name != "lm_head" && !name.starts_with("lm_head.") => "transformer.",
        Model::Bert(b) if b.has_mlm_head() || b.has_classifier() || b.has_nsp_head() => {
            let head = b
                .family()
                .head_modules()
                .iter()
                .any(|h| name == *h || name.starts_with(&format!("{h}.")));
            encoder_prefix = format!("{}.", b.family().prefix());
            if head {
                ""
            } else {
                encoder_prefix.as_str()
            }
        }
        _ => "",
    };
    if name.starts_with(prefix) {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}

/// The key of a tensor of module `name` in adapter_model.safetensors.
pub fn peft_key(model: &Model, name: &str, tensor: &str) -> String {
    format!("{PEFT_PREFIX}{}.{tensor}", peft_path(model, name))
}

/// The key of a head's tensor (`classifier.weight`) in adapter_model.safetensors.
pub fn peft_tensor_key(model: &Model, tensor: &str) -> String {
    format!("{PEFT_PREFIX}{}", peft_path(model, tensor))
}

/// Where the update weights come from.
pub enum LoraInit<'a> {
    /// A kaiming-uniform (peft's default), B zero: training starts from the base.
    Fresh(&'a mut StdRng),
    /// An adapter file's tensors, by key.
    Stored(&'a HashMap<String, Tensor>),
}

/// Puts an update on every linear layer `spec` targets. Returns its tensors as `Var`s
/// (what a run trains) under their peft keys, A before B, in layer order.
pub fn attach(
    model: &mut Model,
    spec: &LoraSpec,
    mut init: LoraInit,
    device: &Device,
) -> Result<Vec<(String, Var)>> {
    if spec.r == 0 {
        return Err(WickError::Unsupported(
            "LoRA rank r must be at least 1".into(),
        ));
    }
    let names: Vec<String> = model
        .linears_mut()
        .iter()
        .map(|l| l.name().to_string())
        .collect();
    let keys: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            (
                peft_key(model, n, "lora_A.weight"),
                peft_key(model, n, "lora_B.weight"),
            )
        })
        .collect();
    let mut vars = vec![];
    for (lin, (key_a, key_b)) in model.linears_mut().into_iter().zip(keys) {
        if !targeted(lin.name(), &spec.targets) {
            continue;
        }
        let (inp, out) = lin.dims()?;
        let (a, b) = match &mut init {
            LoraInit::Fresh(rng) => {
                // kaiming_uniform(a=√5) on (r, in): U(-1/√in, 1/√in).
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..spec.r * inp)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                (
                    Tensor::from_vec(a, (spec.r, inp), device)?,
                    Tensor::zeros((out, spec.r), DType::F32, device)?,
                )
            }
            LoraInit::Stored(tensors) => {
                let get = |k: &str| {
                    tensors
                        .get(k)
                        .ok_or_else(|| WickError::Unsupported(format!("the adapter has no `{k}`")))
                        .and_then(|t| Ok(t.to_dtype(DType::F32)?.to_device(device)?))
                };
                (get(&key_a)?, get(&key_b)?)
            }
        };
        let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        let lora = Lora::new(
            a.as_tensor().clone(),
            b.as_tensor().clone(),
            spec.scale(),
            spec.dropout,
        )?;
        lin.set_lora(lora)?;
        vars.push((key_a, a));
        vars.push((key_b, b));
    }
    if vars.is_empty() {
        let mut kinds: Vec<String> = names
            .iter()
            .map(|n| n.rsplit('.').next().unwrap_or(n).to_string())
            .collect();
        kinds.sort();
        kinds.dedup();
        return Err(WickError::Unsupported(format!(
            "LoRA targets {} match no linear layer of this model; its layers are named {}",
            spec.targets.join(","),
            kinds.join(", ")
        )));
    }
    Ok(vars)
}

/// An adapter folder: its config and tensors.
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub tensors: HashMap<String, Tensor>,
}

impl Adapter {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|e| WickError::io(&path, e))?;
        let config: AdapterConfig =
            serde_json::from_str(&text).map_err(|e| WickError::config(&path, e.to_string()))?;
        config.check(&path)?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        if !weights.is_file() {
            let bin = dir.join("adapter_model.bin");
            return Err(WickError::MissingFile {
                path: weights,
                what: if bin.is_file() {
                    "adapter weights in safetensors (adapter_model.bin is not read: save with \
                     safe_serialization=True)"
                        .into()
                } else {
                    "adapter weights".into()
                },
            });
        }
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| {
            WickError::BadWeights {
                path: weights.clone(),
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tensors,
        })
    }

    /// The base checkpoint the adapter names, as a folder or hub id; a relative path is
    /// taken from the adapter folder when it is not one from here.
    pub fn base(&self) -> Result<String> {
        let base = self.config.base_model_name_or_path.clone().ok_or_else(|| {
            WickError::config(
                self.dir.join(ADAPTER_CONFIG),
                "no base_model_name_or_path: pass the base as --model and this folder as --adapter",
            )
        })?;
        let beside = self.dir.join(&base);
        Ok(if !Path::new(&base).exists() && beside.exists() {
            beside.to_string_lossy().into_owned()
        } else {
            base
        })
    }

    pub fn spec(&self) -> Result<LoraSpec> {
        Ok(LoraSpec {
            r: self.config.r,
            alpha: self.config.lora_alpha,
            dropout: self.config.lora_dropout,
            targets: self.config.targets(&self.dir.join(ADAPTER_CONFIG))?,
            rslora: self.config.use_rslora,
        })
    }

    /// The trained heads (modules_to_save), by the name the model asks for: the peft key
    /// without its prefix, and without the `transformer.`/`bert.` nesting when the base
    /// checkpoint's names lack it.
    pub fn heads(&self, base_has: impl Fn(&str) -> bool) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter(|(k, _)| !k.contains(".lora_A.") && !k.contains(".lora_B."))
            .filter_map(|(k, t)| {
                let name = k.strip_prefix(PEFT_PREFIX)?;
                let bare = ["transformer.", "bert.", "roberta.", "distilbert."]
                    .iter()
                    .find_map(|p| name.strip_prefix(p))
                    .filter(|bare| base_has(bare) && !base_has(name));
                Some((bare.unwrap_or(name).to_string(), t.clone()))
            })
            .collect()
    }
}

impl AdapterConfig {
    /// Refuses what wick does not compute, naming the field.
    fn check(&self, path: &Path) -> Result<()> {
        let refuse = |m: String| Err(WickError::config(path, m));
        if self.peft_type != "LORA" {
            return refuse(format!(
                "peft_type {} is not supported (LORA is)",
                self.peft_type
            ));
        }
        if self.r == 0 {
            return refuse("r must be at least 1".into());
        }
        if self.use_dora {
            return refuse("use_dora: DoRA adapters are not supported".into());
        }
        if self.bias != "none" {
            return refuse(format!(
                "bias \"{}\": only \"none\" is supported",
                self.bias
            ));
        }
        for field in [
            "exclude_modules",
            "trainable_token_indices",
            "layer_replication",
        ] {
            if self.other.get(field).is_some_and(|v| !v.is_null()) {
                return refuse(format!("{field} is not supported"));
            }
        }
        if self
            .other
            .get("lora_bias")
            .is_some_and(|v| v.as_bool() == Some(true))
        {
            return refuse("lora_bias is not supported".into());
        }
        if self
            .layers_to_transform
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return refuse("layers_to_transform is not supported".into());
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return refuse("rank_pattern and alpha_pattern are not supported".into());
        }
        self.targets(path).map(|_| ())
    }

    fn targets(&self, path: &Path) -> Result<Vec<String>> {
        match &self.target_modules {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(String::from).ok_or_else(|| {
                        WickError::config(path, "target_modules must hold module names")
                    })
                })
                .collect(),
            Some(Value::String(s)) => Err(WickError::config(
                path,
                format!("target_modules \"{s}\" is a regular expression; give a list of names"),
            )),
            _ => Err(WickError::config(path, "no target_modules")),
        }
    }

    /// The config wick writes for a run: what peft's LoraConfig holds for it.
    pub fn for_run(model: &Model, spec: &LoraSpec, base: &str, heads: Vec<String>) -> Self {
        let task_type = match model {
            Model::Gpt2(_) => "CAUSAL_LM",
            Model::Bert(b) if b.has_classifier() => "SEQ_CLS",
            Model::Bert(_) => "FEATURE_EXTRACTION",
            Model::Seq2Seq(_) => "SEQ_2_SEQ_LM",
        };
        Self {
            peft_type: "LORA".into(),
            task_type: Some(task_type.into()),
            base_model_name_or_path: Some(base.into()),
            r: spec.r,
            lora_alpha: spec.alpha,
            lora_dropout: spec.dropout,
            target_modules: Some(spec.targets.clone().into()),
            fan_in_fan_out: matches!(model, Model::Gpt2(_)),
            bias: "none".into(),
            modules_to_save: (!heads.is_empty()).then_some(heads),
            use_rslora: spec.rslora,
            use_dora: false,
            layers_to_transform: None,
            rank_pattern: Map::new(),
            alpha_pattern: Map::new(),
            inference_mode: true,
            other: Map::new(),
        }
    }
}

/// The modules of trained heads (`classifier` from `classifier.weight`), by their peft
/// path, for `modules_to_save`.
pub fn head_modules(model: &Model, tensor_names: &[String]) -> Vec<String> {
    // A head of several layers (RoBERTa's `classifier.dense` + `classifier.out_proj`) is
    // one module to peft, as its task type's default modules_to_save name it.
    let whole_head = |module: &str| -> Option<String> {
        let Model::Bert(b) = model else { return None };
        b.family()
            .head_modules()
            .iter()
            .find(|h| module.starts_with(&format!("{h}.")))
            .map(|h| h.to_string())
    };
    let mut modules: Vec<String> = tensor_names
        .iter()
        .map(|n| {
            let module = n.rsplit_once('.').map_or(n.as_str(), |(m, _)| m);
            whole_head(module).unwrap_or_else(|| peft_path(model, module))
        })
        .collect();
    modules.sort();
    modules.dedup();
    modules
}

/// Writes an adapter folder's two files, each atomically: the tensors first, then the
/// config that makes the folder an adapter.
pub fn save(dir: &Path, config: &AdapterConfig, tensors: &[(String, Tensor)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| WickError::io(dir, e))?;
    crate::files::atomic_write(
        &dir.join(ADAPTER_WEIGHTS),
        &super::save::safetensors_bytes(tensors)?,
    )?;
    let json = serde_json::to_string_pretty(config).expect("adapter config serialises");
    crate::files::atomic_write(&dir.join(ADAPTER_CONFIG), json.as_bytes())
}

/// The model's tensors with every LoRA update folded in (W + s·B·A), for `wick merge`.
pub fn merged_tensors(
    model: &mut Model,
    tensors: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>> {
    let mut merged: HashMap<String, Tensor> = HashMap::new();
    for lin in model.linears_mut() {
        if lin.lora().is_none() {
            continue;
        }
        lin.merge_lora()?;
        let w = lin.weight().cloned().ok_or_else(|| {
            WickError::Unsupported(format!(
                "`{}` is quantized: merge into an f32 base",
                lin.name()
            ))
        })?;
        merged.insert(format!("{}.weight", lin.name()), w);
    }
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = merged.remove(&name).unwrap_or(t);
        out.push((name, t));
    }
    if let Some(name) = merged.keys().next() {
        return Err(WickError::Unsupported(format!(
            "the update of `{name}` has no tensor of its own to fold into (a tied LM head)"
        )));
    }
    Ok(out)
}

/// The layers that carry updates (for the run summary).
pub fn count(model: &mut Model) -> usize {
    model
        .linears_mut()
        .iter()
        .filter(|l| l.lora().is_some())
        .count()
}
