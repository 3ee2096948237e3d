//! Trainer checkpoints: `<out>/checkpoint-NNNNNN/` holds the model in the Hugging Face
//! layout plus the optimizer moments and the trainer state. A checkpoint is written into
//! a hidden temporary folder and renamed into place, so a crash mid-save leaves only
//! complete checkpoints; `trainer_state.json` is the last file written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::checkpoint::adapter::{self, AdapterConfig};
use crate::checkpoint::{save, save_pretrained, side_files};
use crate::error::{Result, WickError};
use crate::files::atomic_write;
use crate::models::ModelConfig;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub best_val_loss: Option<f64>,
    pub train_config: TrainConfig,
    /// The corpus the run trains on (a resumed run reads it again).
    pub data: PathBuf,
    pub wick_version: String,
}

pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step:06}"))
}

/// Complete checkpoints in `out`, oldest first.
pub fn list(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

pub fn latest(out: &Path) -> Option<(usize, PathBuf)> {
    list(out).pop()
}

/// The weights a checkpoint saves.
pub enum Weights<'a> {
    /// Every tensor of the model (model.safetensors).
    Full(Vec<(String, Tensor)>),
    /// A LoRA run's adapter alone (adapter_config.json + adapter_model.safetensors).
    Adapter(&'a AdapterConfig, &'a [(String, Tensor)]),
}

/// What a checkpoint is made of.
pub struct Snapshot<'a> {
    pub config: &'a ModelConfig,
    pub weights: Weights<'a>,
    pub tokenizer: &'a Tokenizer,
    pub optimizer: Vec<(String, Tensor)>,
    pub state: TrainerState,
    /// The folder the run started from: its sentence-transformers files are carried.
    pub base: Option<&'a Path>,
}

/// Writes checkpoint-N atomically, points `<out>`'s own model files at it, and keeps
/// only the newest `keep_last` checkpoints.
pub fn save_checkpoint(out: &Path, snap: &Snapshot, keep_last: usize) -> Result<PathBuf> {
    let final_dir = checkpoint_dir(out, snap.state.step);
    let tmp = out.join(format!(".checkpoint-{:06}.tmp", snap.state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    match &snap.weights {
        Weights::Full(tensors) => {
            save_pretrained(&tmp, snap.config, tensors, Some(snap.tokenizer))?
        }
        Weights::Adapter(cfg, tensors) => {
            adapter::save(&tmp, cfg, tensors)?;
            save::save_model_files(&tmp, snap.config, Some(snap.tokenizer))?;
        }
    }
    if let Some(base) = snap.base {
        side_files::carry_sentence_transformers(base, &tmp)?;
    }
    atomic_write(
        &tmp.join("optimizer.safetensors"),
        &save::safetensors_bytes(&snap.optimizer)?,
    )?;
    let state = serde_json::to_string_pretty(&snap.state).expect("state serialises");
    atomic_write(&tmp.join("trainer_state.json"), state.as_bytes())?;
    if final_dir.exists() {
        remove_aside(&final_dir, |d| std::fs::remove_dir_all(d))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| WickError::io(&final_dir, e))?;
    publish(&final_dir, out)?;
    prune(out, keep_last, |d| std::fs::remove_dir_all(d));
    Ok(final_dir)
}

/// Keeps the newest `keep_last` checkpoints (all when 0) and sweeps away what an earlier
/// removal left half done.
fn prune(out: &Path, keep_last: usize, remove: impl Fn(&Path) -> std::io::Result<()>) {
    let leftovers = std::fs::read_dir(out).into_iter().flatten().flatten();
    for e in leftovers {
        if e.file_name().to_string_lossy().ends_with(DELETING) {
            let _ = remove(&e.path());
        }
    }
    if keep_last > 0 {
        let all = list(out);
        for (_, dir) in all.iter().take(all.len().saturating_sub(keep_last)) {
            let _ = remove_aside(dir, &remove);
        }
    }
}

/// The suffix of a checkpoint folder being deleted.
const DELETING: &str = ".deleting";

/// Deletes a checkpoint folder by first renaming it to a hidden `.<name>.deleting`, so a
/// kill during the deletion leaves no `checkpoint-*` folder with some of its files gone
/// (which `--resume` or a user would take for a checkpoint); the next save sweeps it.
fn remove_aside(dir: &Path, remove: impl Fn(&Path) -> std::io::Result<()>) -> Result<()> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let aside = dir.with_file_name(format!(".{name}{DELETING}"));
    let _ = remove(&aside);
    std::fs::rename(dir, &aside).map_err(|e| WickError::io(dir, e))?;
    remove(&aside).map_err(|e| WickError::io(&aside, e))
}

/// Copies a checkpoint's model files (config, weights or adapter, tokenizer) into
/// `dest`, each atomically, so `dest` is always a loadable model folder.
pub fn publish(checkpoint: &Path, dest: &Path) -> Result<()> {
    side_files::carry_sentence_transformers(checkpoint, dest)?;
    // config.json, written last, marks the folder whole (after adapter_config.json,
    // which makes it an adapter).
    let files = [
        crate::tokenizer::SOURCE_TOKENIZER,
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
        adapter::ADAPTER_WEIGHTS,
        "tokenizer.json",
        adapter::ADAPTER_CONFIG,
        "config.json",
    ];
    // A Marian tokenizer's sentencepiece files and vocab.json go before tokenizer.json.
    let files = crate::tokenizer::MARIAN_FILES.into_iter().chain(files);
    let present = files.filter(|f| checkpoint.join(f).is_file());
    for f in present {
        let src = checkpoint.join(f);
        let bytes = std::fs::read(&src).map_err(|e| WickError::io(&src, e))?;
        atomic_write(&dest.join(f), &bytes)?;
    }
    Ok(())
}

pub fn load_state(dir: &Path) -> Result<(TrainerState, HashMap<String, Tensor>)> {
    let p = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| WickError::io(&p, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| WickError::config(&p, e.to_string()))?;
    let opt = dir.join("optimizer.safetensors");
    let tensors =
        candle_core::safetensors::load(&opt, &Device::Cpu).map_err(|e| WickError::BadWeights {
            path: opt.clone(),
            message: e.to_string(),
        })?;
    Ok((state, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint folder as `list` sees one, with the files a model needs.
    fn fake_checkpoint(out: &Path, step: usize) -> PathBuf {
        let dir = checkpoint_dir(out, step);
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "trainer_state.json",
        ] {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        dir
    }

    #[test]
    fn a_removal_cut_short_leaves_no_half_checkpoint_and_is_swept_later() {
        let out = tempfile::tempdir().unwrap();
        for step in [10, 20, 30] {
            fake_checkpoint(out.path(), step);
        }
        // A deletion killed after its first file: the tokenizer is gone, then it stops.
        let killed = |d: &Path| -> std::io::Result<()> {
            std::fs::remove_file(d.join("tokenizer.json"))?;
            Err(std::io::Error::other("killed"))
        };
        prune(out.path(), 1, killed);
        for (_, dir) in list(out.path()) {
            assert!(
                dir.join("tokenizer.json").is_file(),
                "{} is half gone",
                dir.display()
            );
        }
        let names = |out: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(out.path()),
            [
                ".checkpoint-000010.deleting",
                ".checkpoint-000020.deleting",
                "checkpoint-000030"
            ]
        );
        // The next prune, with a removal that completes, sweeps the leftovers.
        prune(out.path(), 1, |d| std::fs::remove_dir_all(d));
        assert_eq!(names(out.path()), ["checkpoint-000030"]);
    }
}
