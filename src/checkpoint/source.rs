//! The `VarBuilder` backend every model is built through. One mechanism serves
//! inference (tensors straight from the checkpoint), fine-tuning (trainable `Var`s
//! initialised from the checkpoint) and training from scratch (`Var`s initialised as
//! the model asks), and it records every tensor handed out under its Hugging Face name,
//! which is exactly what saving needs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::store::TensorStore;
use crate::error::WickError;

/// Which tensors absent from the checkpoint may be freshly initialised.
#[derive(Debug, Clone)]
pub enum InitPolicy {
    /// None: a missing tensor is an error (inference).
    Never,
    /// Those whose name starts with one of these prefixes (a new task head).
    Prefixes(Vec<String>),
    /// Every tensor (training from scratch).
    All,
}

struct Inner {
    store: Option<TensorStore>,
    init: InitPolicy,
    trainable: bool,
    /// LoRA: the checkpoint's tensors stay plain (frozen) even when trainable; only
    /// those initialised fresh or given as overrides (new heads) become `Var`s.
    frozen_base: bool,
    /// Tensors served before the checkpoint's, by name (an adapter's trained heads).
    overrides: std::collections::HashMap<String, Tensor>,
    /// Every tensor handed out, in order, by name; Vars alongside when trainable.
    tensors: Mutex<Vec<(String, Tensor)>>,
    vars: Mutex<Vec<(String, Var)>>,
    initialised: Mutex<Vec<String>>,
    /// Tensors the model holds as quantized blocks instead, with their element counts
    /// (0 for a tied head, which is no parameter of its own).
    quantized: Mutex<Vec<(String, usize)>>,
    /// Fresh weights come from this seeded generator (candle's CPU generator cannot be
    /// seeded), in the order the model asks for them: same seed, same model.
    rng: Mutex<StdRng>,
}

/// A handle on the weights behind a model: keep it to save, train or inspect the model.
#[derive(Clone)]
pub struct WeightSource {
    inner: Arc<Inner>,
}

/// Buffers transformers keeps in some checkpoints that are not parameters.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("position_ids")
}

impl WeightSource {
    pub fn new(store: Option<TensorStore>, init: InitPolicy, trainable: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                init,
                trainable,
                frozen_base: false,
                overrides: Default::default(),
                tensors: Mutex::new(Vec::new()),
                vars: Mutex::new(Vec::new()),
                initialised: Mutex::new(Vec::new()),
                quantized: Mutex::new(Vec::new()),
                rng: Mutex::new(StdRng::seed_from_u64(0)),
            }),
        }
    }

    /// Frozen weights from a checkpoint, nothing initialised.
    pub fn inference(store: TensorStore) -> Self {
        Self::new(Some(store), InitPolicy::Never, false)
    }

    /// Randomly initialised trainable weights.
    pub fn from_scratch() -> Self {
        Self::new(None, InitPolicy::All, true)
    }

    /// Keeps the checkpoint's tensors frozen (LoRA); call before the model is built.
    pub fn with_frozen_base(mut self) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("configured before the model is built")
            .frozen_base = true;
        self
    }

    /// Serves these tensors in place of the checkpoint's (an adapter's heads).
    pub fn with_overrides(mut self, overrides: std::collections::HashMap<String, Tensor>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("configured before the model is built")
            .overrides = overrides;
        self
    }

    /// Seeds the generator fresh weights are drawn from (before the model is built).
    pub fn with_seed(self, seed: u64) -> Self {
        *self.inner.rng.lock().unwrap() = StdRng::seed_from_u64(seed);
        self
    }

    fn init_tensor(&self, init: Init, shape: Shape, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut rng = self.inner.rng.lock().unwrap();
        let values: Vec<f32> = match init {
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| {
                    // Box-Muller: two uniforms give one standard normal.
                    let (u1, u2): (f64, f64) =
                        (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    (mean + stdev * z) as f32
                })
                .collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            Init::Const(c) => vec![c as f32; n],
            other => return Ok(other.var(shape, dtype, dev)?.as_tensor().clone()),
        };
        Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)
    }

    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    pub fn store(&self) -> Option<&TensorStore> {
        self.inner.store.as_ref()
    }

    /// Unmaps the checkpoint's files ([`TensorStore::release`]); called once the model
    /// is built and holds its tensors.
    pub fn release_checkpoint(&self) {
        if let Some(store) = &self.inner.store {
            store.release();
        }
    }

    /// Every (name, tensor) the model holds, in the order it asked for them.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.inner.tensors.lock().unwrap().clone()
    }

    /// The trainable variables (empty unless built trainable).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.inner.vars.lock().unwrap().clone()
    }

    /// Drops the dense copy of `name` once the model holds it quantized: it still counts
    /// as a parameter and as used, but is no longer kept (or saved) in f32.
    pub fn forget_quantized(&self, name: &str) {
        let mut tensors = self.inner.tensors.lock().unwrap();
        let n = tensors
            .iter()
            .position(|(n, _)| n == name)
            .map_or(0, |i| tensors.remove(i).1.elem_count());
        self.inner
            .quantized
            .lock()
            .unwrap()
            .push((name.to_string(), n));
    }

    /// Names that were not in the checkpoint and were initialised.
    pub fn initialised(&self) -> Vec<String> {
        self.inner.initialised.lock().unwrap().clone()
    }

    /// Checkpoint tensors the model never asked for (buffers excluded): the analogue of
    /// transformers' "some weights were not used" warning.
    pub fn unused(&self) -> Vec<String> {
        let Some(store) = &self.inner.store else {
            return vec![];
        };
        let tensors = self.inner.tensors.lock().unwrap();
        let quantized = self.inner.quantized.lock().unwrap();
        let used: HashSet<&str> = tensors
            .iter()
            .map(|(n, _)| n)
            .chain(quantized.iter().map(|(n, _)| n))
            .map(String::as_str)
            .collect();
        let loaded_as_task = |n: &str| {
            BASE_MODEL_PREFIXES
                .iter()
                .any(|p| used.contains(format!("{p}{n}").as_str()))
        };
        let has_shared = store.contains("model.shared.weight") || store.contains("shared.weight");
        let mut unused: Vec<String> = store
            .names()
            .filter(|n| !used.contains(*n) && !loaded_as_task(n) && !is_buffer(n))
            .filter(|n| !(has_shared && is_tied_copy(n)))
            .map(String::from)
            .collect();
        unused.sort();
        unused
    }

    /// Number of scalar parameters handed out (quantized ones included).
    pub fn num_parameters(&self) -> usize {
        let dense: usize = self
            .inner
            .tensors
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum();
        dense
            + self
                .inner
                .quantized
                .lock()
                .unwrap()
                .iter()
                .map(|(_, n)| n)
                .sum::<usize>()
    }

    /// Where the checkpoint keeps `name`: under that name, or, for an encoder's task
    /// model built on a bare encoder checkpoint (a classifier on a BertModel), without
    /// the base-model prefix, as transformers' `from_pretrained` loads it. The tensor
    /// keeps the prefixed name, so the model saves in the task model's layout.
    fn stored_name<'a>(&self, name: &'a str) -> Option<&'a str> {
        let store = self.inner.store.as_ref()?;
        if store.contains(name) {
            return Some(name);
        }
        BASE_MODEL_PREFIXES
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .filter(|bare| store.contains(bare))
    }

    fn may_init(&self, name: &str) -> bool {
        match &self.inner.init {
            InitPolicy::Never => false,
            InitPolicy::All => true,
            InitPolicy::Prefixes(ps) => ps.iter().any(|p| name.starts_with(p.as_str())),
        }
    }

    /// Keeps a tensor handed out; a `Var` when it trains (`frozen`: it is a frozen
    /// checkpoint tensor of a LoRA run).
    fn record(&self, name: &str, tensor: Tensor, frozen: bool) -> Result<Tensor> {
        let tensor = if self.inner.trainable && !frozen {
            let var = Var::from_tensor(&tensor)?;
            self.inner
                .vars
                .lock()
                .unwrap()
                .push((name.to_string(), var.clone()));
            var.as_tensor().clone()
        } else {
            tensor
        };
        self.inner
            .tensors
            .lock()
            .unwrap()
            .push((name.to_string(), tensor.clone()));
        Ok(tensor)
    }
}

/// The task models' `base_model_prefix`es: the encoders', and BART's and Marian's
/// `model.` (facebook/bart-base is a bare BartModel). GPT-2 picks its layout from the
/// checkpoint.
const BASE_MODEL_PREFIXES: [&str; 4] = ["bert.", "roberta.", "distilbert.", "model."];

/// Copies of the shared embedding that encoder-decoder checkpoints may keep beside
/// `shared.weight` (transformers ties them on load; so does wick, by reading `shared`).
fn is_tied_copy(name: &str) -> bool {
    let bare = name.strip_prefix("model.").unwrap_or(name);
    matches!(
        bare,
        "encoder.embed_tokens.weight" | "decoder.embed_tokens.weight" | "lm_head.weight"
    )
}

impl SimpleBackend for WeightSource {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        if let Some((_, t)) = self
            .inner
            .tensors
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| n == name)
        {
            return Ok(t.clone());
        }
        if let Some(t) = self.inner.overrides.get(name) {
            if t.dims() != shape.dims() {
                candle_core::bail!(
                    "adapter tensor `{name}` is {:?}, the model expects {:?}",
                    t.dims(),
                    shape.dims()
                )
            }
            return self.record(name, t.to_dtype(dtype)?.to_device(dev)?, false);
        }
        let stored = self.stored_name(name);
        let in_store = self.inner.store.as_ref().zip(stored);
        let frozen = self.inner.frozen_base && in_store.is_some();
        let tensor = match in_store {
            Some((store, stored)) => {
                let found = store.shape(stored).unwrap_or_default();
                if found != shape.dims() {
                    return Err(candle_core::Error::wrap(WickError::ShapeMismatch {
                        file: store.file_of(stored).to_path_buf(),
                        name: stored.to_string(),
                        expected: shape.dims().to_vec(),
                        found: found.to_vec(),
                    }));
                }
                let t = store.load(stored).map_err(candle_core::Error::wrap)?;
                t.to_dtype(dtype)?.to_device(dev)?
            }
            None if self.may_init(name) => {
                self.inner
                    .initialised
                    .lock()
                    .unwrap()
                    .push(name.to_string());
                self.init_tensor(init, shape, dtype, dev)?
            }
            None => {
                let file = match &self.inner.store {
                    Some(s) => s.file_of(name).to_path_buf(),
                    None => "<no checkpoint>".into(),
                };
                return Err(candle_core::Error::wrap(WickError::MissingTensor {
                    file,
                    name: name.to_string(),
                }));
            }
        };
        self.record(name, tensor, frozen)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let store = self.inner.store.as_ref().ok_or_else(|| {
            candle_core::Error::msg(format!("tensor `{name}` requested without a checkpoint"))
        })?;
        let t = store.load(name).map_err(candle_core::Error::wrap)?;
        let frozen = self.inner.frozen_base;
        self.record(name, t.to_dtype(dtype)?.to_device(dev)?, frozen)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.overrides.contains_key(name) || self.stored_name(name).is_some()
    }
}
