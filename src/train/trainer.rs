//! The training loop. Built around the one model definition: the model being trained is
//! the same `Model` that `wick generate` and `wick score` load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use super::checkpoints::{self, Snapshot, TrainerState};
use super::config::{merge, Objective, Preset, TrainConfig};
use super::loss::lm_loss;
use super::metrics::{Metrics, Record};
use super::optim::{AdamW, AdamWConfig};
use super::schedule::LrSchedule;
use crate::checkpoint::{resolve, InitPolicy, TensorStore, WeightSource};
use crate::data::{tokenize_cached, LmBatches};
use crate::error::{Result, WickError};
use crate::models::{Model, ModelConfig};
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

fn set_dropout(cfg: &mut Value, p: f64) {
    let keys = [
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "dropout",
    ];
    if let Some(obj) = cfg.as_object_mut() {
        for k in keys {
            if obj.contains_key(k)
                || matches!(
                    (k, obj.get("model_type").and_then(|m| m.as_str())),
                    ("resid_pdrop" | "embd_pdrop" | "attn_pdrop", Some("gpt2"))
                        | (
                            "hidden_dropout_prob" | "attention_probs_dropout_prob",
                            Some("bert")
                        )
                        | ("dropout", Some("wick-seq2seq"))
                )
            {
                obj.insert(k.into(), p.into());
            }
        }
    }
}

/// Refuses to write into a folder that holds a model or a run unless resuming it.
fn check_out_dir(out: &Path, resume: bool) -> Result<()> {
    let has_run = !checkpoints::list(out).is_empty() || out.join("trainer_state.json").exists();
    let has_model = out.join("config.json").exists();
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
    } else if has_model {
        return Err(WickError::Unsupported(format!(
            "{} holds another model (config.json): choose another --out; nothing was overwritten",
            out.display()
        )));
    }
    Ok(())
}

fn accumulate(
    into: &mut Option<GradStore>,
    grads: GradStore,
    vars: &[(String, Var)],
) -> Result<()> {
    match into {
        None => *into = Some(grads),
        Some(acc) => {
            for (_, v) in vars {
                if let Some(g) = grads.get(v) {
                    let sum = match acc.get(v) {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    };
                    acc.insert(v, sum);
                }
            }
        }
    }
    Ok(())
}

pub fn train(req: TrainRequest) -> Result<TrainSummary> {
    let device = req.device.clone();
    // 1. Where the model, settings, data and output come from.
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
    check_out_dir(&out, req.resume)?;
    std::fs::create_dir_all(&out).map_err(|e| WickError::io(&out, e))?;

    let resume = if req.resume {
        checkpoints::latest(&out)
    } else {
        None
    };
    let (cfg, data, state) = match (&resume, &source) {
        (Some((_, dir)), _) => {
            let (state, opt) = checkpoints::load_state(dir)?;
            let cfg = merge(&state.train_config, &req.overrides, "command-line flags")?;
            let data = req.data.clone().or_else(|| Some(state.data.clone()));
            (cfg, data, Some((state, opt, dir.clone())))
        }
        (None, Some(Source::Scratch { train, data, .. })) => {
            let base = merge(&TrainConfig::default(), train, &req.model)?;
            (
                merge(&base, &req.overrides, "command-line flags")?,
                req.data.clone().or(data.clone()),
                None,
            )
        }
        (None, _) => (
            merge(
                &TrainConfig::default(),
                &req.overrides,
                "command-line flags",
            )?,
            req.data.clone(),
            None,
        ),
    };
    cfg.validate()?;
    if cfg.objective != Objective::Clm {
        return Err(WickError::Unsupported(format!(
            "--objective {:?}: this trainer runs causal LM (clm) so far",
            cfg.objective
        )));
    }
    let data = data.ok_or_else(|| {
        WickError::Unsupported("no training data: pass --data FILE_OR_DIR".into())
    })?;

    // 2. Tokenizer and model config.
    let (tokenizer, mut model_json, weights_dir) = match (&resume, source) {
        (Some((_, dir)), _) => {
            let c: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("config.json"))
                    .map_err(|e| WickError::io(dir, e))?,
            )
            .map_err(|e| WickError::config(dir.join("config.json"), e.to_string()))?;
            (Tokenizer::from_dir(dir)?, c, Some(dir.clone()))
        }
        (
            None,
            Some(Source::Scratch {
                config, tokenizer, ..
            }),
        ) => {
            let kind = req.tokenizer.clone().or(tokenizer).ok_or_else(|| {
                WickError::Unsupported("training from a config needs a tokenizer: --tokenizer char or a tokenizer.json".into())
            })?;
            let tok = if kind == "char" {
                Tokenizer::char_level(&crate::data::read_documents(&data)?.concat())?
            } else if Path::new(&kind).is_dir() {
                Tokenizer::from_dir(Path::new(&kind))?
            } else {
                Tokenizer::from_file(Path::new(&kind))?
            };
            let mut config = config;
            if let Some(obj) = config.as_object_mut() {
                if obj.get("vocab_size").and_then(|v| v.as_u64()).unwrap_or(0) == 0 {
                    obj.insert("vocab_size".into(), tok.vocab_size().into());
                }
            }
            (tok, config, None)
        }
        (None, Some(Source::Checkpoint { dir })) => {
            let p = dir.join("config.json");
            let c: Value = serde_json::from_str(
                &std::fs::read_to_string(&p).map_err(|e| WickError::io(&p, e))?,
            )
            .map_err(|e| WickError::config(&p, e.to_string()))?;
            let tok = match &req.tokenizer {
                Some(t) => Tokenizer::from_file(Path::new(t))?,
                None => Tokenizer::from_dir(&dir)?,
            };
            (tok, c, Some(dir))
        }
        (None, None) => unreachable!("source is resolved when not resuming"),
    };
    if let Some(p) = cfg.dropout {
        set_dropout(&mut model_json, p);
    }
    let model_config = ModelConfig::from_value(&model_json, Path::new(&req.model))?;
    if tokenizer.vocab_size() > model_config.vocab_size() {
        return Err(WickError::Unsupported(format!(
            "the tokenizer has {} tokens but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            model_config.vocab_size()
        )));
    }
    if cfg.block_size > model_config.max_positions() {
        return Err(WickError::Unsupported(format!(
            "--block-size {} is over the model's context of {} positions",
            cfg.block_size,
            model_config.max_positions()
        )));
    }

    // 3. Weights: fresh, from a checkpoint (fine-tuning), or from the run's checkpoint.
    let weights = match &weights_dir {
        None => WeightSource::from_scratch().with_seed(cfg.seed),
        Some(dir) => {
            let init = if resume.is_some() {
                InitPolicy::Never
            } else {
                InitPolicy::Prefixes(vec!["lm_head".into()])
            };
            WeightSource::new(Some(TensorStore::open_dir(dir)?), init, true).with_seed(cfg.seed)
        }
    };
    let model = Model::build(
        &model_config,
        None,
        weights.var_builder(DType::F32, &device),
    )?;
    let Model::Gpt2(gpt2) = &model else {
        return Err(WickError::Unsupported(
            "--objective clm needs a GPT-2 model".into(),
        ));
    };
    let vars = weights.vars();
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
    let mut start_step = 0;
    let mut best_val = None;
    if let Some((st, opt_tensors, dir)) = state {
        opt.load_state(opt_tensors, st.step as u64)?;
        start_step = st.step;
        best_val = st.best_val_loss;
        eprintln!("resuming {} from step {start_step}", dir.display());
    }

    // 4. Data: tokenize once (cached), split train/val.
    let eos = model_config
        .eos_token_ids()
        .first()
        .copied()
        .filter(|&e| (e as usize) < tokenizer.vocab_size());
    let (tokens, cache) = tokenize_cached(&data, &tokenizer, eos, &out)?;
    let tokens = Arc::new(tokens);
    let n = tokens.len();
    let n_val = ((n as f64) * cfg.val_fraction) as usize;
    let n_train = n - n_val;
    let mut train_batches = LmBatches::new(
        tokens.clone(),
        0,
        n_train,
        cfg.block_size,
        cfg.batch_size,
        cfg.seed,
        true,
    )
    .map_err(|e| WickError::Unsupported(format!("{}: training split: {e}", data.display())))?;
    let mut val_batches = if n_val > cfg.block_size + 1 {
        Some(LmBatches::new(
            tokens.clone(),
            n_train,
            n_val,
            cfg.block_size,
            cfg.batch_size,
            cfg.seed ^ 0x5eed,
            true,
        )?)
    } else {
        None
    };

    // 5. The numbers up front, and the effective config stored with the run.
    let (decayed, not_decayed) = opt.group_sizes();
    let params = weights.num_parameters();
    println!(
        "model        {} ({}), {:.2}M parameters ({decayed} decayed, {not_decayed} not)",
        model.architecture(),
        model_config.model_type(),
        params as f64 / 1e6
    );
    println!(
        "tokenizer    {} tokens ({})",
        tokenizer.vocab_size(),
        tokenizer.source().display()
    );
    println!(
        "data         {}: {n} tokens, {n_train} train / {n_val} val{}",
        data.display(),
        cache
            .map(|c| format!(" (cache {})", c.display()))
            .unwrap_or_default()
    );
    println!(
        "per step     {} tokens (batch {} x block {} x accum {}); {} steps = {:.2} epochs",
        cfg.tokens_per_step(),
        cfg.batch_size,
        cfg.block_size,
        cfg.grad_accum,
        cfg.max_iters,
        (cfg.max_iters * cfg.tokens_per_step()) as f64 / n_train as f64
    );
    println!(
        "device       {}, {} threads",
        crate::device::describe(&device),
        candle_core::utils::get_num_threads()
    );
    println!("out          {}", out.display());
    println!("config       {}", serde_json::to_string(&cfg).unwrap());
    let state_for = |step: usize, best: Option<f64>| TrainerState {
        step,
        best_val_loss: best,
        train_config: cfg.clone(),
        data: data.clone(),
        wick_version: env!("CARGO_PKG_VERSION").into(),
    };
    crate::checkpoint::atomic_write(
        &out.join("train_config.json"),
        serde_json::to_string_pretty(&cfg).unwrap().as_bytes(),
    )?;

    let sched = LrSchedule {
        schedule: cfg.lr_schedule,
        max_lr: cfg.learning_rate,
        min_lr: cfg.min_lr(),
        warmup_iters: cfg.warmup_iters,
        decay_iters: cfg.lr_decay_iters.unwrap_or(cfg.max_iters),
        d_model: match &model_config {
            ModelConfig::Gpt2(c) => c.n_embd,
            ModelConfig::Bert(c) => c.hidden_size,
            ModelConfig::Seq2Seq(c) => c.d_model,
        },
    };
    let mut metrics = Metrics::open(&out, Some(start_step))?;
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));

    let save = |step: usize, best: Option<f64>, opt: &AdamW| -> Result<PathBuf> {
        checkpoints::save_checkpoint(
            &out,
            &Snapshot {
                config: &model_config,
                tensors: weights.tensors(),
                tokenizer: &tokenizer,
                optimizer: opt.state_tensors(),
                state: state_for(step, best),
            },
            cfg.keep_last,
        )
    };
    let eval = |val: &mut LmBatches| -> Result<f64> {
        let mut total = 0f64;
        for i in 0..cfg.eval_iters {
            let (x, y) = val.batch(i, &device)?;
            total += lm_loss(&gpt2.forward(&x, None, None, false)?, &y)?.to_scalar::<f32>()? as f64;
        }
        Ok(total / cfg.eval_iters as f64)
    };

    // 6. The loop.
    let pb = if req.progress {
        ProgressBar::new(cfg.max_iters as u64)
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
    let run_start = Instant::now();
    let mut window = (Instant::now(), 0usize, 0f64, 0usize); // (since, tokens, loss sum, steps)
    let mut last_saved = None;
    let mut interrupted = false;
    for step in start_step..cfg.max_iters {
        if INTERRUPTED.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let lr = sched.at(step);
        let mut grads = None;
        let mut loss_sum = 0f64;
        for micro in 0..cfg.grad_accum {
            let (x, y) = train_batches.batch(step * cfg.grad_accum + micro, &device)?;
            let loss = lm_loss(&gpt2.forward(&x, None, None, true)?, &y)?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                pb.finish_and_clear();
                let last = checkpoints::latest(&out)
                    .map(|(_, d)| d.display().to_string())
                    .unwrap_or_else(|| "none".into());
                return Err(WickError::Unsupported(format!(
                    "the loss became {l} at step {step}: stopping (last good checkpoint: {last}); try a lower --learning-rate"
                )));
            }
            loss_sum += l;
            accumulate(
                &mut grads,
                loss.affine(1.0 / cfg.grad_accum as f64, 0.0)?.backward()?,
                &vars,
            )?;
        }
        let grads = grads.expect("at least one micro-batch");
        let norm = opt.grad_norm(&grads)?;
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            cfg.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        opt.step(&grads, lr, scale)?;
        let done = step + 1;
        let train_loss = loss_sum / cfg.grad_accum as f64;
        window.1 += cfg.tokens_per_step();
        window.2 += train_loss;
        window.3 += 1;
        pb.set_position(done as u64);

        let eval_now = done % cfg.eval_every == 0 || done == cfg.max_iters;
        if done % cfg.log_every == 0 || eval_now || done == start_step + 1 {
            let secs = window.0.elapsed().as_secs_f64().max(1e-9);
            let mean = window.2 / window.3 as f64;
            let tps = window.1 as f64 / secs;
            let val_loss = match (&mut val_batches, eval_now) {
                (Some(v), true) => Some(eval(v)?),
                _ => None,
            };
            pb.set_message(format!("loss {mean:.4} lr {lr:.2e} {:.0} tok/s", tps));
            metrics.push(Record {
                step: done,
                train_loss: mean,
                val_loss,
                perplexity: val_loss.unwrap_or(mean).exp(),
                lr,
                grad_norm: norm,
                tokens_per_sec: tps,
                accuracy: None,
            })?;
            if let Some(v) = val_loss {
                pb.println(format!("step {done:>6}: train loss {mean:.4}, val loss {v:.4}, lr {lr:.2e}, {tps:.0} tokens/s"));
                if !req.progress {
                    eprintln!("step {done:>6}: train loss {mean:.4}, val loss {v:.4}, lr {lr:.2e}, {tps:.0} tokens/s");
                }
                if best_val.is_none_or(|b| v < b) {
                    best_val = Some(v);
                    let dir = save(done, best_val, &opt)?;
                    last_saved = Some(done);
                    std::fs::create_dir_all(out.join("best"))
                        .map_err(|e| WickError::io(out.join("best"), e))?;
                    checkpoints::publish(&dir, &out.join("best"))?;
                }
                metrics.plot(
                    &out.join("loss.svg"),
                    &format!("{} on {}", model_config.model_type(), data.display()),
                )?;
            }
            window = (Instant::now(), 0, 0.0, 0);
        }
        if (cfg.save_every > 0 && done % cfg.save_every == 0 || done == cfg.max_iters)
            && last_saved != Some(done)
        {
            save(done, best_val, &opt)?;
            last_saved = Some(done);
        }
    }
    pb.finish_and_clear();
    let steps_done = opt.steps_taken() as usize;
    let seconds = run_start.elapsed().as_secs_f64();
    let trained_tokens = (steps_done - start_step) * cfg.tokens_per_step();
    if interrupted {
        let dir = save(steps_done, best_val, &opt)?;
        eprintln!(
            "interrupted: saved {}; continue with --resume",
            dir.display()
        );
        return Ok(TrainSummary {
            out,
            steps: steps_done,
            final_val_loss: None,
            seconds,
            tokens_per_sec: trained_tokens as f64 / seconds,
            interrupted: true,
            sample: None,
        });
    }
    metrics.plot(
        &out.join("loss.svg"),
        &format!("{} on {}", model_config.model_type(), data.display()),
    )?;

    // 7. The whole validation split, and a sample.
    let final_val = if n_val > cfg.block_size + 1 {
        Some(super::evaluate::lm_loss_over(
            gpt2,
            tokens.clone(),
            n_train,
            n_val,
            cfg.block_size,
            cfg.batch_size * 4,
            &device,
        )?)
    } else {
        None
    };
    let sample = if cfg.sample_tokens > 0 {
        let prompt = tokenizer
            .encode("\n", false)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| vec![0]);
        let opts = crate::generation::GenerateOptions {
            max_new_tokens: cfg.sample_tokens,
            temperature: 0.8,
            seed: cfg.seed,
            eos_token_ids: vec![],
            slide: true,
        };
        let ids = crate::generation::generate(gpt2, &prompt, &opts, &device, |_| Ok(()))?;
        Some(tokenizer.decode(&ids, true)?)
    } else {
        None
    };
    Ok(TrainSummary {
        out,
        steps: steps_done,
        final_val_loss: final_val,
        seconds,
        tokens_per_sec: trained_tokens as f64 / seconds,
        interrupted: false,
        sample,
    })
}
