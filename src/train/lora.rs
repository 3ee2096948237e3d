//! A LoRA run: the checkpoint's weights frozen, low-rank updates on the targeted
//! linear layers and any new head trained, and checkpoints that hold only those, as a
//! peft adapter folder.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;

use super::config::TrainConfig;
use crate::checkpoint::adapter::{
    self, Adapter, AdapterConfig, LoraInit, LoraSpec, ADAPTER_CONFIG,
};
use crate::checkpoint::WeightSource;
use crate::error::{Result, WickError};
use crate::models::Model;

/// What a LoRA run saves with every checkpoint.
pub struct LoraRun {
    pub config: AdapterConfig,
    /// The adapter's tensors under their peft keys: updates, then trained heads.
    pub tensors: Vec<(String, Tensor)>,
    pub layers: usize,
}

impl LoraRun {
    pub fn trainable(&self) -> usize {
        self.tensors.iter().map(|(_, t)| t.elem_count()).sum()
    }
}

/// The adapter a resumed run left in `checkpoint`, when the run trains LoRA.
pub fn resumed(checkpoint: &Path) -> Result<Option<Adapter>> {
    if checkpoint.join(ADAPTER_CONFIG).is_file() {
        Adapter::read(checkpoint).map(Some)
    } else {
        Ok(None)
    }
}

/// The base as an adapter names it: a folder as an absolute path (the adapter may be
/// used from anywhere), a hub id as given.
pub fn base_reference(model: &str) -> String {
    let p = Path::new(model);
    match p.exists() {
        true => std::fs::canonicalize(p)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| model.to_string()),
        false => model.to_string(),
    }
}

/// Puts the updates on `model` (fresh, or a resumed run's) and returns what trains:
/// the updates' `Var`s and the new heads' (the weight source's only `Var`s, as its
/// base is frozen), with what checkpoints will save.
pub fn attach(
    model: &mut Model,
    cfg: &TrainConfig,
    weights: &WeightSource,
    base: &str,
    resumed: Option<&Adapter>,
    device: &Device,
) -> Result<(LoraRun, Vec<(String, Var)>)> {
    let spec = LoraSpec {
        r: cfg.lora_r,
        alpha: cfg.lora_alpha,
        dropout: cfg.lora_dropout,
        targets: cfg
            .lora_targets
            .clone()
            .unwrap_or_else(|| adapter::default_targets(model)),
        rslora: false,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x4c6f_5241);
    let init = match resumed {
        Some(a) => LoraInit::Stored(&a.tensors),
        None => LoraInit::Fresh(&mut rng),
    };
    let updates = adapter::attach(model, &spec, init, device)?;
    let heads = weights.vars();
    let head_names: Vec<String> = heads.iter().map(|(n, _)| n.clone()).collect();
    let mut tensors: Vec<(String, Tensor)> = updates
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    for (name, var) in &heads {
        tensors.push((
            adapter::peft_tensor_key(model, name),
            var.as_tensor().clone(),
        ));
    }
    let modules = adapter::head_modules(model, &head_names);
    let config = AdapterConfig::for_run(model, &spec, base, modules);
    let layers = updates.len() / 2;
    let mut vars = updates;
    vars.extend(heads);
    if vars.is_empty() {
        return Err(WickError::Unsupported("nothing to train".into()));
    }
    Ok((
        LoraRun {
            config,
            tensors,
            layers,
        },
        vars,
    ))
}
