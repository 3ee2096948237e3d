//! The training loop. Built around the one model definition: the model being trained is
//! the same `Model` that `wick generate` and `wick score` load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use super::checkpoints::{self, Snapshot, TrainerState, Weights};
use super::config::{merge, Objective, Preset, TrainConfig};
use super::distributed::{self, Collective};
use super::metrics::{Metrics, Record};
use super::objectives::{self, Built, Eval, Setup, Task};
use super::optim::{AdamW, AdamWConfig};
use super::schedule::LrSchedule;
use super::shards::accumulate;
use super::step_times::Phase;
use crate::checkpoint::{resolve, InitPolicy, TensorStore, WeightSource};
use crate::error::{Result, WickError};
use crate::models::{EncoderFamily, Model, ModelConfig};
use crate::tokenizer::Tokenizer;

/// What `wick train` was asked to do, before anything is resolved.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// Preset name, config.json or preset file, checkpoint folder or hub id.
    pub model: String,
    pub data: Option<PathBuf>,
    pub out: Option<PathBuf>,
    /// "char", or a tokenizer.json / folder; defaults to the checkpoint's or preset's.
    pub tokenizer: Option<String>,
    pub resume: bool,
    /// Training settings given as flags (TrainConfig keys).
    pub overrides: Map<String, Value>,
    pub device: Device,
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub out: PathBuf,
    pub steps: usize,
    pub final_val_loss: Option<f64>,
    pub seconds: f64,
    pub tokens_per_sec: f64,
    pub interrupted: bool,
    pub sample: Option<String>,
    /// Whether this process wrote the run (rank 0, or the only process); the others'
    /// summaries say nothing the user needs.
    pub leader: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Where the model comes from.
enum Source {
    Scratch {
        config: Value,
        name: String,
        tokenizer: Option<String>,
        data: Option<PathBuf>,
        train: Map<String, Value>,
    },
    Checkpoint {
        dir: PathBuf,
    },
}

fn source_of(model: &str) -> Result<Source> {
    if let Some(p) = Preset::find(model) {
        let p = p?;
        return Ok(Source::Scratch {
            config: p.model,
            name: p.name,
            tokenizer: p.tokenizer,
            data: p.data,
            train: p.train,
        });
    }
    let path = Path::new(model);
    if path.is_file() && path.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| WickError::config(path, format!("not valid JSON: {e}")))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        if v.get("model").is_some() {
            let p = Preset::parse(&text, path)?;
            return Ok(Source::Scratch {
                config: p.model,
                name: p.name,
                tokenizer: p.tokenizer,
                data: p.data,
                train: p.train,
            });
        }
        return Ok(Source::Scratch {
            config: v,
            name,
            tokenizer: None,
            data: None,
            train: Map::new(),
        });
    }
    Ok(Source::Checkpoint {
        dir: resolve(model)?,
    })
}

/// Refuses to write into a folder that holds a model or a run unless resuming it.
fn check_out_dir(out: &Path, resume: bool) -> Result<()> {
    let has_run = !checkpoints::list(out).is_empty() || out.join("trainer_state.json").exists();
    let has_model = crate::files::holds_model(out);
    if resume {
        if !has_run {
            return Err(WickError::Unsupported(format!(
                "--resume: {} holds no checkpoint to resume",
                out.display()
            )));
        }
    } else if has_run {
        return Err(WickError::Unsupported(format!(
            "{} already holds a training run: pass --resume to continue it, or choose another --out",
            out.display()
        )));
    } else if let Some(file) = has_model {
        return Err(WickError::Unsupported(format!(
            "{} holds another model ({file}): choose another --out; nothing was overwritten",
            out.display()
        )));
    }
    Ok(())
}

pub fn train(req: TrainRequest) -> Result<TrainSummary> {
    // The processes beside this one (none, or the ranks a launcher started), and the
    // device this one trains on (its own GPU under NCCL).
    let (comm, device) = distributed::from_env(&req.device)?;
    let leader = comm.is_leader();
    // 1. Where the model, settings, data and output come from.
    let Plan {
        start,
        out,
        cfg,
        data,
    } = plan(&req, leader)?;
    distributed::check_batch(comm.as_ref(), cfg.batch_size)?;
    if matches!(
        cfg.objective,
        Objective::Clm | Objective::Classify | Objective::Seq2seq
    ) && device.is_cpu()
    {
        // Before any tensor work: the batch runs as shards side by side (train/shards.rs).
        crate::runtime::candle_ops_on_caller();
    }

    // 2. Tokenizer and model config; the objective checks the model fits and names its
    //    heads (classification reads its labels from the data first: they size the head).
    let (tokenizer, model_json, mut weights_dir) = tokenizer_and_config(&req, &cfg, &data, &start)?;
    // LoRA: the base named as the adapter will name it; a resumed run's updates.
    let (lora_base, resumed_adapter) = lora_start(&req, &cfg, &start, &mut weights_dir)?;
    let mut model_config = ModelConfig::from_value(&model_json, Path::new(&req.model))?;
    if let Some(p) = cfg.dropout {
        model_config.set_dropout(p);
    }
    let mut objective = objectives::objective(cfg.objective);
    let heads = objective.prepare(&mut model_config, &cfg, &data, &tokenizer)?;
    check_fits(&model_config, &tokenizer, &cfg)?;

    // 3. Weights and the optimizer, resumed when resuming.
    let resuming = matches!(start, Start::Resume { .. });
    let mut weights = weight_source(weights_dir.as_deref(), resuming, cfg.seed)?;
    if let Some(a) = &resumed_adapter {
        let store = weights.store().expect("a LoRA run has a base");
        let heads = a.heads(|n| store.contains(n));
        weights = weights.with_overrides(heads);
    }
    if lora_base.is_some() {
        weights = weights.with_frozen_base();
    }
    let mut model = Model::build(
        &model_config,
        heads,
        weights.var_builder(DType::F32, &device),
    )?;
    model.set_gradient_checkpointing(cfg.gradient_checkpointing);
    crate::nn::kernels::set_matmul_precision(cfg.matmul_precision)
        .map_err(|e| WickError::Unsupported(format!("--matmul-precision bf16: {e}")))?;
    let initialised = weights.initialised();
    if !initialised.is_empty() && weights_dir.is_some() {
        println!(
            "initialised  {} tensors not in the checkpoint: {}",
            initialised.len(),
            initialised.join(", ")
        );
    }
    let (lora, vars) = match &lora_base {
        Some(base) => {
            let (run, vars) = super::lora::attach(
                &mut model,
                &cfg,
                &weights,
                base,
                resumed_adapter.as_ref(),
                &device,
            )?;
            (Some(run), vars)
        }
        None => (None, weights.vars()),
    };
    // The model holds its tensors now: the checkpoint's mapped pages can go.
    weights.release_checkpoint();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        },
        cfg.decay_embeddings,
    )?;
    let (mut start_step, mut best_val) = (0, None);
    if let Start::Resume {
        dir,
        state,
        moments,
    } = start
    {
        opt.load_state(moments, state.step as u64)?;
        start_step = state.step;
        best_val = state.best_val_loss;
        if leader {
            eprintln!("resuming {} from step {start_step}", dir.display());
        }
    }
    // Every rank starts from rank 0's weights.
    distributed::broadcast_vars(comm.as_ref(), &vars)?;

    // 4. Data: the objective's batches, split into train and validation. The run's
    //    folder appears now, after every check of flags and model (it holds the token
    //    cache and held-out pairs), and goes again if the data is refused. Ranks other
    //    than 0 write nothing there: their caches go to a folder of their own.
    let scratch = distributed::scratch_dir(comm.as_ref())?;
    let build_dir = scratch.as_ref().map_or(out.as_path(), |d| d.path());
    let created = !build_dir.exists();
    std::fs::create_dir_all(build_dir).map_err(|e| WickError::io(build_dir, e))?;
    let setup = Setup {
        cfg: &cfg,
        data: &data,
        tokenizer: &tokenizer,
        config: &model_config,
        out: build_dir,
        device: &device,
    };
    let Built {
        mut task,
        data_line,
        steps_per_epoch,
    } = objective.build(&model, &setup).inspect_err(|_| {
        if created {
            let _ = std::fs::remove_dir_all(build_dir);
        }
    })?;

    // 5. The numbers up front, and the effective config stored with the run.
    let run = Run {
        cfg: &cfg,
        out: &out,
        data: &data,
        model_config: &model_config,
        tokenizer: &tokenizer,
        weights: &weights,
        base: weights_dir.as_deref(),
        lora: lora.as_ref(),
        device: &device,
        progress: req.progress && leader,
        comm: comm.as_ref(),
        times: super::step_times::StepTimes::from_env(),
    };
    run.announce(&model, &opt, &data_line, steps_per_epoch, task.shards())?;

    // 6. The loop, then 7. the whole validation split and a sample.
    let looped = run.train_loop(task.as_mut(), &mut opt, &vars, start_step, best_val)?;
    run.finish(task.as_mut(), looped)
}

/// The tokenizer a run from scratch names: learned from the data ("char", or "bpe" on
/// translation pairs: joint over both sides, or one per side with `--separate-vocab`),
/// or read from a tokenizer.json or folder.
fn learn_tokenizer(
    kind: &str,
    config: &Value,
    data: &Path,
    cfg: &TrainConfig,
) -> Result<Tokenizer> {
    Ok(if kind == "char" {
        Tokenizer::char_level(&crate::data::read_documents(data)?.concat())?
    } else if kind == "bpe" {
        // A subword vocabulary learned from the pairs: joint over both sides, or
        // one per side with --separate-vocab.
        let size = config
            .get("vocab_size")
            .and_then(Value::as_u64)
            .filter(|&v| v > 0)
            .unwrap_or(8000) as usize;
        let pairs = cfg.read_pairs(data)?;
        let side = |f: fn(&(String, String)) -> &String| -> Vec<String> {
            pairs.iter().map(|p| f(p).clone()).collect()
        };
        // A non-autoregressive decoder reads `<mask>` where it is still to predict.
        let extra: &[&str] = match cfg.objective {
            Objective::Nat => &[Tokenizer::MASK],
            _ => &[],
        };
        let tok = if cfg.separate_vocab {
            let src = Tokenizer::train_bpe(&side(|p| &p.0), size, &[])?;
            Tokenizer::train_bpe(&side(|p| &p.1), size, extra)?.with_source_side(src)
        } else {
            let texts: Vec<String> = pairs.into_iter().flat_map(|(s, t)| [s, t]).collect();
            Tokenizer::train_bpe(&texts, size, extra)?
        };
        match cfg.separate_vocab {
            true => println!(
                "tokenizer    trained a {}-token source BPE and a {}-token target BPE on {}",
                tok.source_side().vocab_size(),
                tok.vocab_size(),
                data.display()
            ),
            false => println!(
                "tokenizer    trained a {}-token BPE on {}",
                tok.vocab_size(),
                data.display()
            ),
        }
        tok
    } else if Path::new(kind).is_dir() {
        Tokenizer::from_dir(Path::new(kind))?
    } else {
        Tokenizer::from_file(Path::new(kind))?
    })
}

/// The tokenizer, the model's config.json (edited for a learned vocabulary) and the
/// folder whose weights the run starts from (none from scratch).
fn tokenizer_and_config(
    req: &TrainRequest,
    cfg: &TrainConfig,
    data: &Path,
    start: &Start,
) -> Result<(Tokenizer, Value, Option<PathBuf>)> {
    Ok(match start {
        Start::Resume { dir, .. } => {
            let c = crate::checkpoint::read_config_json(dir)?;
            (Tokenizer::from_dir(dir)?, c, Some(dir.clone()))
        }
        Start::New(Source::Scratch {
            config, tokenizer, ..
        }) => {
            let kind = req.tokenizer.clone().or(tokenizer.clone()).ok_or_else(|| {
                WickError::Unsupported("training from a config needs a tokenizer: --tokenizer char or a tokenizer.json".into())
            })?;
            let tok = learn_tokenizer(&kind, config, data, cfg)?;
            let mut config = config.clone();
            if let Some(obj) = config.as_object_mut() {
                if obj.get("vocab_size").and_then(|v| v.as_u64()).unwrap_or(0) == 0 {
                    obj.insert("vocab_size".into(), tok.vocab_size().into());
                }
                if cfg.separate_vocab {
                    let src = tok.source_side().vocab_size();
                    obj.insert("src_vocab_size".into(), src.into());
                }
            }
            (tok, config, None)
        }
        Start::New(Source::Checkpoint { dir }) => {
            let c = crate::checkpoint::read_config_json(dir)?;
            let tok = match &req.tokenizer {
                Some(t) => Tokenizer::from_file(Path::new(t))?,
                None => Tokenizer::from_dir(dir)?,
            };
            (tok, c, Some(dir.clone()))
        }
    })
}

/// Refuses a tokenizer larger than the model's vocabulary and a block longer than its
/// context, naming both sizes.
fn check_fits(model_config: &ModelConfig, tokenizer: &Tokenizer, cfg: &TrainConfig) -> Result<()> {
    if let ModelConfig::Seq2Seq(c) = &model_config {
        if cfg.separate_vocab && c.src_vocab_size.is_none() {
            return Err(WickError::Unsupported(
                "--separate-vocab applies when wick learns the BPE (a preset with \"tokenizer\": \"bpe\"); this model has one joint vocabulary".into(),
            ));
        }
    }
    crate::checkpoint::vocab_fits(model_config, tokenizer).map_err(WickError::Unsupported)?;
    if cfg.block_size > model_config.max_positions() {
        return Err(WickError::Unsupported(format!(
            "--block-size {} is over the model's context of {} positions",
            cfg.block_size,
            model_config.max_positions()
        )));
    }
    Ok(())
}

/// Where the weights come from: fresh, a checkpoint being fine-tuned (a new task head
/// starts fresh), or the run's own checkpoint when resuming.
fn weight_source(weights_dir: Option<&Path>, resuming: bool, seed: u64) -> Result<WeightSource> {
    Ok(match weights_dir {
        None => WeightSource::from_scratch().with_seed(seed),
        Some(dir) => {
            let init = if resuming {
                InitPolicy::Never
            } else {
                // A new task head (and a pooler the checkpoint lacks) starts fresh, as
                // does the zero bias a bare BartModel lacks.
                let mut heads = std::collections::BTreeSet::from([
                    "lm_head".to_string(),
                    "final_logits_bias".to_string(),
                ]);
                for family in EncoderFamily::ALL {
                    heads.extend(family.head_prefixes());
                }
                InitPolicy::Prefixes(heads.into_iter().collect())
            };
            WeightSource::new(Some(TensorStore::open_dir(dir)?), init, true).with_seed(seed)
        }
    })
}

/// A LoRA run's base reference (for adapter_config.json) and, when resuming one, the
/// adapter its checkpoint holds; `weights_dir` then becomes the base's folder (the
/// checkpoint holds no base weights). `None`s for a full fine-tune.
fn lora_start(
    req: &TrainRequest,
    cfg: &TrainConfig,
    start: &Start,
    weights_dir: &mut Option<PathBuf>,
) -> Result<(Option<String>, Option<crate::checkpoint::adapter::Adapter>)> {
    if cfg.lora_r == 0 {
        return Ok((None, None));
    }
    match start {
        Start::New(Source::Scratch { .. }) => unreachable!("plan refuses LoRA from scratch"),
        Start::New(Source::Checkpoint { .. }) => {
            Ok((Some(super::lora::base_reference(&req.model)), None))
        }
        Start::Resume { dir, .. } => {
            let adapter = super::lora::resumed(dir)?.ok_or_else(|| {
                WickError::Unsupported(format!(
                    "--resume: {} is a full fine-tune; it cannot continue as a LoRA run",
                    dir.display()
                ))
            })?;
            let base = adapter.base()?;
            *weights_dir = Some(resolve(&base)?);
            Ok((Some(base), Some(adapter)))
        }
    }
}

/// What phase 1 resolves: where the model, settings, data and output come from.
struct Plan {
    start: Start,
    out: PathBuf,
    cfg: TrainConfig,
    data: PathBuf,
}

/// Where a run starts from. One per run, so the variants' size difference is not worth
/// a Box.
#[allow(clippy::large_enum_variant)]
enum Start {
    /// The run's latest checkpoint, with its trainer state and optimizer moments.
    Resume {
        dir: PathBuf,
        state: TrainerState,
        moments: HashMap<String, Tensor>,
    },
    /// A preset, a config or a checkpoint to fine-tune.
    New(Source),
}

/// Resolves the request. The settings and flags are checked before the output folder
/// is (a flag that does not fit the run is refused whatever `--out` holds), and the
/// folder is created only once every check has passed. Resuming reads the settings from
/// the run's folder, so that folder is checked first.
fn plan(req: &TrainRequest, leader: bool) -> Result<Plan> {
    let source = if req.resume {
        None
    } else {
        Some(source_of(&req.model)?)
    };
    let out = match (&req.out, &source) {
        (Some(o), _) => o.clone(),
        (None, Some(Source::Scratch { name, .. })) => PathBuf::from("runs").join(name),
        (None, _) => PathBuf::from("runs").join(
            Path::new(&req.model)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
        ),
    };
    let flags = "command-line flags";
    let (start, cfg, data) = match source {
        None => {
            check_out_dir(&out, true)?;
            // A folder can hold a run's trainer_state.json (a published model) and no
            // checkpoint-* to resume from.
            let dir = checkpoints::latest(&out)
                .map(|(_, dir)| dir)
                .ok_or_else(|| {
                    WickError::Unsupported(format!(
                        "--resume: {} holds no checkpoint-* folder to resume",
                        out.display()
                    ))
                })?;
            let (state, moments) = checkpoints::load_state(&dir)?;
            let cfg = merge(&state.train_config, &req.overrides, flags)?;
            if cfg.max_iters <= state.step {
                return Err(WickError::Unsupported(format!(
                    "--resume: {} is at step {} and --max-iters is {}: nothing to train; \
                     raise --max-iters past {}",
                    dir.display(),
                    state.step,
                    cfg.max_iters,
                    state.step
                )));
            }
            let data = req.data.clone().or_else(|| Some(state.data.clone()));
            let start = Start::Resume {
                dir,
                state,
                moments,
            };
            (start, cfg, data)
        }
        Some(source) => {
            let (cfg, data) = match &source {
                Source::Scratch { train, data, .. } => {
                    let base = merge(&TrainConfig::default(), train, &req.model)?;
                    let cfg = merge(&base, &req.overrides, flags)?;
                    (cfg, req.data.clone().or(data.clone()))
                }
                Source::Checkpoint { dir } => {
                    if let Some(t @ ("char" | "bpe")) = req.tokenizer.as_deref() {
                        return Err(WickError::Unsupported(format!(
                            "--tokenizer {t} learns a new vocabulary, which applies to training \
                             from scratch; the checkpoint {} brings its own tokenizer (omit \
                             --tokenizer, or give a tokenizer.json)",
                            dir.display()
                        )));
                    }
                    let cfg = merge(&TrainConfig::default(), &req.overrides, flags)?;
                    (cfg, req.data.clone())
                }
            };
            (Start::New(source), cfg, data)
        }
    };
    cfg.validate()?;
    if cfg.lora_r > 0 && matches!(start, Start::New(Source::Scratch { .. })) {
        return Err(WickError::Unsupported(
            "--lora-r fine-tunes a pretrained checkpoint; this run trains from scratch (give a \
             checkpoint folder or hub id as --model)"
                .into(),
        ));
    }
    let data = data.ok_or_else(|| {
        WickError::Unsupported("no training data: pass --data FILE_OR_DIR".into())
    })?;
    // Rank 0 checks the folder it alone writes (the others would find its first files).
    if let (Start::New(_), true) = (&start, leader) {
        check_out_dir(&out, false)?;
    }
    Ok(Plan {
        start,
        out,
        cfg,
        data,
    })
}

/// What the summary, the loop and the end of a run share.
struct Run<'a> {
    cfg: &'a TrainConfig,
    out: &'a Path,
    data: &'a Path,
    model_config: &'a ModelConfig,
    tokenizer: &'a Tokenizer,
    weights: &'a WeightSource,
    /// The folder the weights came from (a base, or the checkpoint resumed), whose
    /// sentence-transformers files each checkpoint carries.
    base: Option<&'a Path>,
    /// A LoRA run: what its checkpoints save instead of the whole model.
    lora: Option<&'a super::lora::LoraRun>,
    device: &'a Device,
    progress: bool,
    /// The ranks training together (one process: [`distributed::SingleProcess`]).
    comm: &'a dyn Collective,
    /// Where the steps' time went (the summing share, and `WICK_STEP_TIMES`).
    times: super::step_times::StepTimes,
}

/// Where the loop stopped.
struct Looped {
    steps_done: usize,
    start_step: usize,
    seconds: f64,
    interrupted: bool,
}

/// The numbers one logged step reports.
struct StepLog {
    done: usize,
    train_loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens_per_sec: f64,
    elapsed_s: f64,
}

impl Run<'_> {
    /// The derived numbers printed before the first step, and the effective config
    /// stored with the run (rank 0 alone: the other ranks' numbers are its own).
    fn announce(
        &self,
        model: &Model,
        opt: &AdamW,
        data_line: &str,
        steps_per_epoch: f64,
        shards: usize,
    ) -> Result<()> {
        if !self.comm.is_leader() {
            return Ok(());
        }
        let cfg = self.cfg;
        let (decayed, not_decayed) = opt.group_sizes();
        println!(
            "model        {} ({}), {:.2}M parameters ({decayed} decayed, {not_decayed} not)",
            model.architecture(),
            self.model_config.model_type(),
            self.weights.num_parameters() as f64 / 1e6
        );
        println!(
            "tokenizer    {} tokens ({})",
            self.tokenizer.vocab_size(),
            self.tokenizer.source().display()
        );
        println!("data         {}: {data_line}", self.data.display());
        println!(
            "per step     {} tokens (batch {} x block {} x accum {}); {} steps = {:.2} epochs",
            cfg.tokens_per_step(),
            cfg.batch_size,
            cfg.block_size,
            cfg.grad_accum,
            cfg.max_iters,
            cfg.max_iters as f64 / steps_per_epoch
        );
        println!(
            "device       {}, {} threads, {}{}",
            crate::device::describe(self.device),
            candle_core::utils::get_num_threads(),
            crate::runtime::cpu_features(),
            if shards > 1 {
                format!(", each batch as {shards} shards side by side")
            } else {
                String::new()
            }
        );
        if let Some(l) = self.lora {
            let c = &l.config;
            println!(
                "lora         r {} alpha {} (scale {:.3}) dropout {} on {} layers ({}); {} trained \
                 parameters ({:.3}% of the model){}; the rest frozen",
                c.r,
                c.lora_alpha,
                c.lora_alpha / c.r as f64,
                c.lora_dropout,
                l.layers,
                serde_json::to_string(&c.target_modules).unwrap_or_default(),
                l.trainable(),
                100.0 * l.trainable() as f64 / self.weights.num_parameters() as f64,
                c.modules_to_save
                    .as_ref()
                    .map(|m| format!(" with the new heads {}", m.join(", ")))
                    .unwrap_or_default(),
            );
        }
        if cfg.gradient_checkpointing {
            println!(
                "memory       gradient checkpointing: each block's activations are recomputed \
                 in the backward pass"
            );
        }
        let world = self.comm.world();
        if world > 1 {
            let (decayed, not_decayed) = opt.group_sizes();
            let floats = decayed + not_decayed;
            println!(
                "distributed  {}, {world} ranks: each takes {} rows of every batch of {}; \
                 {:.1} MB of gradients all-reduced per step; rank 0 logs, evaluates and writes",
                self.comm.name(),
                cfg.batch_size / world,
                cfg.batch_size,
                4.0 * floats as f64 / 1e6
            );
        }
        println!("out          {}", self.out.display());
        println!("config       {}", serde_json::to_string(cfg).unwrap());
        crate::files::atomic_write(
            &self.out.join("train_config.json"),
            serde_json::to_string_pretty(cfg).unwrap().as_bytes(),
        )
    }

    /// A checkpoint of step `step` (model, tokenizer, optimizer, trainer state).
    fn save(&self, step: usize, best: Option<f64>, opt: &AdamW) -> Result<PathBuf> {
        let state = TrainerState {
            step,
            best_val_loss: best,
            train_config: self.cfg.clone(),
            data: self.data.to_path_buf(),
            wick_version: env!("CARGO_PKG_VERSION").into(),
        };
        checkpoints::save_checkpoint(
            self.out,
            &Snapshot {
                config: self.model_config,
                weights: match self.lora {
                    Some(l) => Weights::Adapter(&l.config, &l.tensors),
                    None => Weights::Full(self.weights.tensors()),
                },
                tokenizer: self.tokenizer,
                optimizer: opt.state_tensors(),
                state,
                base: self.base,
            },
            self.cfg.keep_last,
        )
    }

    fn progress_bar(&self, start_step: usize) -> ProgressBar {
        let pb = if self.progress {
            ProgressBar::new(self.cfg.max_iters as u64)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        pb.set_position(start_step as u64);
        pb
    }

    /// One optimizer step: the micro-batches' losses and gradients summed, clipped, and
    /// AdamW applied. Returns the mean loss and the gradient norm before clipping.
    fn step(
        &self,
        step: usize,
        lr: f64,
        task: &mut dyn Task,
        opt: &mut AdamW,
        vars: &[(String, Var)],
    ) -> Result<(f64, f64)> {
        let cfg = self.cfg;
        let (part, world) = (self.comm.part(), self.comm.world() as f64);
        let mut grads = None;
        let mut loss_sum = 0f64;
        let mut clock = Instant::now();
        for micro in 0..cfg.grad_accum {
            let n = step * cfg.grad_accum + micro;
            // Dropout masks from (seed, micro-batch, rank): a resumed run draws the same
            // ones, and no two ranks the same.
            let seed = cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ n as u64
                ^ (part.rank as u64).wrapping_mul(0xa076_1d64_78bd_642f);
            let weight = 1.0 / (cfg.grad_accum as f64 * world);
            let (l, micro_grads) = task.train_grads(n, part, weight, seed, vars, self.device)?;
            loss_sum += l;
            accumulate(&mut grads, micro_grads, vars)?;
        }
        // Every rank's mean loss, summed: the same figure, and the same verdict on a
        // non-finite loss, on every rank.
        let [loss_sum] = distributed::sum_scalars(self.comm, [loss_sum / world])?;
        if !loss_sum.is_finite() {
            let last = checkpoints::latest(self.out)
                .map(|(_, d)| d.display().to_string())
                .unwrap_or_else(|| "none".into());
            return Err(WickError::Unsupported(format!(
                "the loss became {loss_sum} at step {step}: stopping (last good checkpoint: {last}); try a lower --learning-rate"
            )));
        }
        let mut grads = grads.expect("at least one micro-batch");
        self.times.lap(Phase::Gradients, self.device, &mut clock)?;
        distributed::all_reduce_grads(self.comm, &mut grads, vars)?;
        self.times.lap(Phase::Summing, self.device, &mut clock)?;
        let norm = opt.grad_norm(&grads)?;
        self.times.lap(Phase::Clipping, self.device, &mut clock)?;
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            cfg.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        opt.step(&grads, lr, scale)?;
        self.times.lap(Phase::Optimizer, self.device, &mut clock)?;
        Ok((loss_sum / cfg.grad_accum as f64, norm))
    }

    /// Steps from `start_step` to `max_iters`: logs, evaluates (saving and publishing
    /// `best/` on a better validation loss), checkpoints every `save_every`, and stops
    /// early with a checkpoint on Ctrl-C or SIGTERM.
    fn train_loop(
        &self,
        task: &mut dyn Task,
        opt: &mut AdamW,
        vars: &[(String, Var)],
        start_step: usize,
        mut best_val: Option<f64>,
    ) -> Result<Looped> {
        let cfg = self.cfg;
        let sched = LrSchedule {
            schedule: cfg.lr_schedule,
            max_lr: cfg.learning_rate,
            min_lr: cfg.min_lr(),
            warmup_iters: cfg.warmup_iters,
            decay_iters: cfg.lr_decay_iters.unwrap_or(cfg.max_iters),
            d_model: self.model_config.hidden_size(),
        };
        let leader = self.comm.is_leader();
        let mut metrics = if leader {
            Some(Metrics::open(self.out, Some(start_step))?)
        } else {
            None
        };
        let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
        let pb = self.progress_bar(start_step);
        let run_start = Instant::now();
        let elapsed_before = metrics
            .as_ref()
            .and_then(|m| m.records.last())
            .map_or(0.0, |r| r.elapsed_s);
        let mut window = (Instant::now(), 0usize, 0f64, 0usize); // (since, tokens, loss sum, steps)
        let mut last_saved = None;
        let mut interrupted = false;
        for step in start_step..cfg.max_iters {
            // Every rank stops at the same step when any was signalled.
            let stop = f64::from(u8::from(INTERRUPTED.load(Ordering::SeqCst)));
            if distributed::sum_scalars(self.comm, [stop])?[0] > 0.0 {
                interrupted = true;
                break;
            }
            let lr = sched.at(step);
            let (train_loss, grad_norm) = self
                .step(step, lr, task, opt, vars)
                .inspect_err(|_| pb.finish_and_clear())?;
            let done = step + 1;
            window.1 += cfg.tokens_per_step();
            window.2 += train_loss;
            window.3 += 1;
            pb.set_position(done as u64);

            let eval_now = done % cfg.eval_every == 0 || done == cfg.max_iters;
            let log_now = done % cfg.log_every == 0 || eval_now || done == start_step + 1;
            if let (true, Some(metrics)) = (log_now, metrics.as_mut()) {
                // Throughput over the steps alone; elapsed time with the evaluation.
                let tokens_per_sec = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                let eval = if eval_now {
                    task.evaluate(cfg.eval_iters, self.device)?
                } else {
                    None
                };
                let log = StepLog {
                    done,
                    train_loss: window.2 / window.3 as f64,
                    lr,
                    grad_norm,
                    tokens_per_sec,
                    elapsed_s: elapsed_before + run_start.elapsed().as_secs_f64(),
                };
                if self.record(&log, eval, metrics, &pb, &mut best_val, opt)? {
                    last_saved = Some(done);
                }
                window = (Instant::now(), 0, 0.0, 0);
            }
            if (cfg.save_every > 0 && done % cfg.save_every == 0 || done == cfg.max_iters)
                && last_saved != Some(done)
                && leader
            {
                self.save(done, best_val, opt)?;
                last_saved = Some(done);
            }
        }
        pb.finish_and_clear();
        let steps_done = opt.steps_taken() as usize;
        match (interrupted, &metrics) {
            (_, None) => {}
            (true, Some(_)) => {
                let dir = self.save(steps_done, best_val, opt)?;
                eprintln!(
                    "interrupted: saved {}; continue with --resume",
                    dir.display()
                );
            }
            (false, Some(metrics)) => self.plot(metrics)?,
        }
        Ok(Looped {
            steps_done,
            start_step,
            seconds: run_start.elapsed().as_secs_f64(),
            interrupted,
        })
    }

    /// Records a logged step in metrics.jsonl and the progress bar; with an evaluation,
    /// prints it, plots, and on a better validation loss saves a checkpoint and
    /// publishes it as `best/`. Returns whether it saved one.
    fn record(
        &self,
        log: &StepLog,
        eval: Option<Eval>,
        metrics: &mut Metrics,
        pb: &ProgressBar,
        best_val: &mut Option<f64>,
        opt: &AdamW,
    ) -> Result<bool> {
        let (done, mean, lr, tps) = (log.done, log.train_loss, log.lr, log.tokens_per_sec);
        let val_loss = eval.map(|e| e.loss);
        let accuracy = eval.and_then(|e| e.accuracy);
        let macro_f1 = eval.and_then(|e| e.macro_f1);
        let (micro_f1, exact_match) = (
            eval.and_then(|e| e.micro_f1),
            eval.and_then(|e| e.exact_match),
        );
        pb.set_message(format!("loss {mean:.4} lr {lr:.2e} {tps:.0} tok/s"));
        metrics.push(Record {
            step: done,
            train_loss: mean,
            val_loss,
            perplexity: val_loss.unwrap_or(mean).exp(),
            lr,
            grad_norm: log.grad_norm,
            tokens_per_sec: tps,
            elapsed_s: log.elapsed_s,
            accuracy,
            macro_f1,
            micro_f1,
            exact_match,
        })?;
        let Some(v) = val_loss else {
            return Ok(false);
        };
        let acc = accuracy
            .map(|a| format!(", accuracy {:.2}%", a * 100.0))
            .unwrap_or_default()
            + &micro_f1
                .map(|f| format!(", micro-F1 {f:.4}"))
                .unwrap_or_default()
            + &macro_f1
                .map(|f| format!(", macro-F1 {f:.4}"))
                .unwrap_or_default()
            + &exact_match
                .map(|f| format!(", exact match {:.2}%", f * 100.0))
                .unwrap_or_default();
        let line = format!("step {done:>6}: train loss {mean:.4}, val loss {v:.4}{acc}, lr {lr:.2e}, {tps:.0} tokens/s");
        if self.progress {
            pb.println(line);
        } else {
            eprintln!("{line}");
        }
        let mut saved = false;
        if best_val.is_none_or(|b| v < b) {
            *best_val = Some(v);
            let dir = self.save(done, *best_val, opt)?;
            saved = true;
            let best = self.out.join("best");
            std::fs::create_dir_all(&best).map_err(|e| WickError::io(&best, e))?;
            checkpoints::publish(&dir, &best)?;
        }
        self.plot(metrics)?;
        Ok(saved)
    }

    /// The loss curve, `loss.svg`.
    fn plot(&self, metrics: &Metrics) -> Result<()> {
        metrics.plot(
            &self.out.join("loss.svg"),
            &format!(
                "{} on {}",
                self.model_config.model_type(),
                self.data.display()
            ),
        )
    }

    /// The end of a run: the whole validation split, and a sample from a causal LM.
    fn finish(&self, task: &mut dyn Task, looped: Looped) -> Result<TrainSummary> {
        let cfg = self.cfg;
        let trained_tokens = (looped.steps_done - looped.start_step) * cfg.tokens_per_step();
        let mut summary = TrainSummary {
            out: self.out.to_path_buf(),
            steps: looped.steps_done,
            final_val_loss: None,
            seconds: looped.seconds,
            tokens_per_sec: trained_tokens as f64 / looped.seconds,
            interrupted: looped.interrupted,
            sample: None,
            leader: self.comm.is_leader(),
        };
        if self.comm.world() > 1 && summary.leader {
            let reduce = self.times.seconds(Phase::Summing);
            println!(
                "distributed  rank 0 spent {reduce:.1} s of the loop's {:.1} s ({:.1}%) \
                 summing gradients",
                looped.seconds,
                100.0 * reduce / looped.seconds.max(1e-9)
            );
        }
        if let Some(split) = self.times.report().filter(|_| summary.leader) {
            println!("{split}");
        }
        if looped.interrupted || !summary.leader {
            return Ok(summary);
        }
        let final_eval = task.final_eval(cfg.eval_iters, self.device)?;
        summary.sample = match task.causal_lm() {
            Some(gpt2) if cfg.sample_tokens > 0 => Some(self.sample(gpt2)?),
            _ => None,
        };
        summary.final_val_loss = final_eval.map(|e| e.loss);
        if let Some(a) = final_eval.and_then(|e| e.accuracy) {
            println!("accuracy     {:.2}% (validation)", a * 100.0);
        }
        if let Some(f) = final_eval.and_then(|e| e.micro_f1) {
            println!("micro-F1     {f:.4} (validation)");
        }
        if let Some(f) = final_eval.and_then(|e| e.macro_f1) {
            println!("macro-F1     {f:.4} (validation)");
        }
        if let Some(f) = final_eval.and_then(|e| e.exact_match) {
            println!("exact match  {:.2}% (validation)", f * 100.0);
        }
        Ok(summary)
    }

    /// `sample_tokens` tokens from a newline, at temperature 0.8.
    fn sample(&self, gpt2: &crate::models::Gpt2) -> Result<String> {
        let prompt = self
            .tokenizer
            .encode("\n", false)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| vec![0]);
        let opts = crate::generation::GenerateOptions {
            max_new_tokens: self.cfg.sample_tokens,
            processors: crate::generation::ProcessorConfig {
                temperature: 0.8,
                ..Default::default()
            },
            seed: self.cfg.seed,
            slide: true,
            ..Default::default()
        };
        let gens = crate::generation::generate(gpt2, &[prompt], &opts, self.device, |_, _| {
            Ok(crate::generation::Flow::Continue)
        })?;
        self.tokenizer.decode(&gens[0][0].ids, true)
    }
}
