//! The training loop. Built around the one model definition: the model being trained is
//! the same `Model` that `wick generate` and `wick score` load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use super::checkpoints::{self, Snapshot, TrainerState};
use super::config::{merge, Objective, Preset, TrainConfig};
use super::metrics::{Metrics, Record};
use super::optim::{AdamW, AdamWConfig};
use super::schedule::LrSchedule;
use super::shards::{accumulate, shard_count};
use super::task::Task;
use crate::checkpoint::{resolve, InitPolicy, TensorStore, WeightSource};
use crate::data::labeled::{label_set, read_examples, ClassifyBatches, Example};
use crate::data::mlm::MlmBatches;
use crate::data::nsp::{draw_pairs, split_sentences, NspBatches, IS_NEXT};
use crate::data::{read_documents, tokenize_cached, LmBatches};
use crate::error::{Result, WickError};
use crate::models::BertHeads;
use crate::models::{Model, ModelConfig};
use crate::tokenizer::Tokenizer;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

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
    if cfg.objective == Objective::Clm && device.is_cpu() {
        // Before any tensor work: the batch runs as shards side by side (Task::train_grads).
        crate::runtime::candle_ops_on_caller();
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
            } else if kind == "bpe" {
                // A subword vocabulary learned from the pairs: joint over both sides, or
                // one per side with --separate-vocab.
                let size = config
                    .get("vocab_size")
                    .and_then(Value::as_u64)
                    .filter(|&v| v > 0)
                    .unwrap_or(8000) as usize;
                let pairs = crate::data::pairs::read_pairs(&data)?;
                let side = |f: fn(&(String, String)) -> &String| -> Vec<String> {
                    pairs.iter().map(|p| f(p).clone()).collect()
                };
                let tok = if cfg.separate_vocab {
                    let src = Tokenizer::train_bpe(&side(|p| &p.0), size)?;
                    Tokenizer::train_bpe(&side(|p| &p.1), size)?.with_source_side(src)
                } else {
                    let texts: Vec<String> = pairs.into_iter().flat_map(|(s, t)| [s, t]).collect();
                    Tokenizer::train_bpe(&texts, size)?
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
                if cfg.separate_vocab {
                    let src = tok.source_side().vocab_size();
                    obj.insert("src_vocab_size".into(), src.into());
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
    let mut model_config = ModelConfig::from_value(&model_json, Path::new(&req.model))?;
    // Classification reads its examples first: their labels size the head.
    let examples = match cfg.objective {
        Objective::Classify => Some(read_examples(&data, &cfg.columns())?),
        _ => None,
    };
    let heads = match (&mut model_config, cfg.objective) {
        (ModelConfig::Bert(c), Objective::Classify) => {
            let labels = label_set(examples.as_deref().unwrap_or_default(), &c.labels())?;
            c.set_labels(&labels);
            c.architecture = Some("BertForSequenceClassification".into());
            Some(BertHeads {
                pooler: true,
                mlm: false,
                classifier: true,
                nsp: false,
            })
        }
        (ModelConfig::Bert(c), Objective::Mlm) => {
            c.architecture = Some("BertForMaskedLM".into());
            Some(BertHeads {
                pooler: false,
                mlm: true,
                classifier: false,
                nsp: false,
            })
        }
        (ModelConfig::Bert(c), Objective::MlmNsp) => {
            c.architecture = Some("BertForPreTraining".into());
            Some(BertHeads {
                pooler: true,
                mlm: true,
                classifier: false,
                nsp: true,
            })
        }
        (ModelConfig::Gpt2(_), Objective::Clm) | (ModelConfig::Seq2Seq(_), Objective::Seq2seq) => {
            None
        }
        (c, o) => {
            return Err(WickError::Unsupported(format!(
                "--objective {} does not fit a {} model (clm: gpt2; mlm, mlm+nsp, classify: bert; seq2seq: wick-seq2seq)",
                serde_json::to_value(o).unwrap().as_str().unwrap_or("?"),
                c.model_type()
            )))
        }
    };
    if let ModelConfig::Seq2Seq(c) = &model_config {
        if cfg.separate_vocab && c.src_vocab_size.is_none() {
            return Err(WickError::Unsupported(
                "--separate-vocab applies when wick learns the BPE (a preset with \"tokenizer\": \"bpe\"); this model has one joint vocabulary".into(),
            ));
        }
        let src = tokenizer.source_side().vocab_size();
        if src > c.src_vocab_size.unwrap_or(c.vocab_size) {
            return Err(WickError::Unsupported(format!(
                "the source tokenizer has {src} tokens but the model's source vocabulary is {}",
                c.src_vocab_size.unwrap_or(c.vocab_size)
            )));
        }
    }
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
                // A new task head (and a pooler the checkpoint lacks) starts fresh.
                InitPolicy::Prefixes(
                    ["lm_head", "cls.", "classifier.", "pooler.", "bert.pooler."]
                        .map(String::from)
                        .to_vec(),
                )
            };
            WeightSource::new(Some(TensorStore::open_dir(dir)?), init, true).with_seed(cfg.seed)
        }
    };
    let model = Model::build(
        &model_config,
        heads,
        weights.var_builder(DType::F32, &device),
    )?;
    let initialised = weights.initialised();
    if !initialised.is_empty() && weights_dir.is_some() {
        println!(
            "initialised  {} tensors not in the checkpoint: {}",
            initialised.len(),
            initialised.join(", ")
        );
    }
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

    // 4. Data: tokenize once (cached), split train/val; or read labelled examples.
    let (mut task, data_line) = build_task(
        &model,
        &cfg,
        &data,
        examples,
        &tokenizer,
        &model_config,
        &out,
    )?;
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
    println!("data         {}: {}", data.display(), data_line.0);
    println!(
        "per step     {} tokens (batch {} x block {} x accum {}); {} steps = {:.2} epochs",
        cfg.tokens_per_step(),
        cfg.batch_size,
        cfg.block_size,
        cfg.grad_accum,
        cfg.max_iters,
        cfg.max_iters as f64 / data_line.1
    );
    let shards = match task {
        Task::Clm { .. } => shard_count(cfg.batch_size, &device),
        _ => 1,
    };
    println!(
        "device       {}, {} threads, {}{}",
        crate::device::describe(&device),
        candle_core::utils::get_num_threads(),
        crate::runtime::cpu_features(),
        if shards > 1 {
            format!(", each batch as {shards} shards side by side")
        } else {
            String::new()
        }
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
    crate::files::atomic_write(
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
    let elapsed_before = metrics.records.last().map_or(0.0, |r| r.elapsed_s);
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
            let n = step * cfg.grad_accum + micro;
            // Dropout masks from (seed, micro-batch): a resumed run draws the same ones.
            let seed = cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n as u64;
            let (l, micro_grads) =
                task.train_grads(n, 1.0 / cfg.grad_accum as f64, seed, &vars, &device)?;
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
            accumulate(&mut grads, micro_grads, &vars)?;
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
            let eval = if eval_now {
                task.evaluate(cfg.eval_iters, &device)?
            } else {
                None
            };
            let val_loss = eval.map(|e| e.loss);
            let accuracy = eval.and_then(|e| e.accuracy);
            let macro_f1 = eval.and_then(|e| e.macro_f1);
            pb.set_message(format!("loss {mean:.4} lr {lr:.2e} {:.0} tok/s", tps));
            metrics.push(Record {
                step: done,
                train_loss: mean,
                val_loss,
                perplexity: val_loss.unwrap_or(mean).exp(),
                lr,
                grad_norm: norm,
                tokens_per_sec: tps,
                elapsed_s: elapsed_before + run_start.elapsed().as_secs_f64(),
                accuracy,
                macro_f1,
            })?;
            if let Some(v) = val_loss {
                let acc = accuracy
                    .map(|a| format!(", accuracy {:.2}%", a * 100.0))
                    .unwrap_or_default()
                    + &macro_f1
                        .map(|f| format!(", macro-F1 {f:.4}"))
                        .unwrap_or_default();
                let line = format!("step {done:>6}: train loss {mean:.4}, val loss {v:.4}{acc}, lr {lr:.2e}, {tps:.0} tokens/s");
                if req.progress {
                    pb.println(line);
                } else {
                    eprintln!("{line}");
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
    let final_eval = task.final_eval(cfg.eval_iters, &device)?;
    let sample = match task.causal_lm() {
        Some(gpt2) if cfg.sample_tokens > 0 => {
            let prompt = tokenizer
                .encode("\n", false)
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| vec![0]);
            let opts = crate::generation::GenerateOptions {
                max_new_tokens: cfg.sample_tokens,
                processors: crate::generation::ProcessorConfig {
                    temperature: 0.8,
                    ..Default::default()
                },
                seed: cfg.seed,
                slide: true,
                ..Default::default()
            };
            let gens = crate::generation::generate(gpt2, &[prompt], &opts, &device, |_, _| {
                Ok(crate::generation::Flow::Continue)
            })?;
            let ids = &gens[0][0].ids;
            Some(tokenizer.decode(ids, true)?)
        }
        _ => None,
    };
    let final_val = final_eval.map(|e| e.loss);
    if let Some(a) = final_eval.and_then(|e| e.accuracy) {
        println!("accuracy     {:.2}% (validation)", a * 100.0);
    }
    if let Some(f) = final_eval.and_then(|e| e.macro_f1) {
        println!("macro-F1     {f:.4} (validation)");
    }
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

/// The task for the objective: batches over the data, split into train and validation.
/// Also returns a line describing the data and the optimizer steps one epoch takes.
fn build_task<'m>(
    model: &'m Model,
    cfg: &TrainConfig,
    data: &Path,
    examples: Option<Vec<Example>>,
    tokenizer: &Tokenizer,
    model_config: &ModelConfig,
    out: &Path,
) -> Result<(Task<'m>, (String, f64))> {
    let split_err =
        |e: WickError| WickError::Unsupported(format!("{}: training split: {e}", data.display()));
    match (model, cfg.objective) {
        (Model::Gpt2(_), Objective::Clm) | (Model::Bert(_), Objective::Mlm) => {
            let sep = match model {
                Model::Bert(_) => tokenizer.token_to_id("[SEP]"),
                _ => model_config
                    .eos_token_ids()
                    .first()
                    .copied()
                    .filter(|&e| (e as usize) < tokenizer.vocab_size()),
            };
            let (tokens, cache) = tokenize_cached(data, tokenizer, sep, out)?;
            let tokens = Arc::new(tokens);
            let n = tokens.len();
            let n_val = ((n as f64) * cfg.val_fraction) as usize;
            let n_train = n - n_val;
            let line = format!(
                "{n} tokens, {n_train} train / {n_val} val{}",
                cache
                    .map(|c| format!(" (cache {})", c.display()))
                    .unwrap_or_default()
            );
            let has_val = n_val > cfg.block_size + 1;
            let task = match model {
                Model::Gpt2(m) => Task::Clm {
                    model: m,
                    train: LmBatches::new(
                        tokens.clone(),
                        0,
                        n_train,
                        cfg.block_size,
                        cfg.batch_size,
                        cfg.seed,
                        true,
                    )
                    .map_err(split_err)?,
                    val: has_val
                        .then(|| {
                            LmBatches::new(
                                tokens.clone(),
                                n_train,
                                n_val,
                                cfg.block_size,
                                cfg.batch_size,
                                cfg.seed ^ 0x5eed,
                                true,
                            )
                        })
                        .transpose()?,
                    val_split: has_val.then(|| {
                        (
                            tokens.clone(),
                            n_train,
                            n_val,
                            cfg.block_size,
                            cfg.batch_size * 4,
                        )
                    }),
                },
                Model::Bert(m) => {
                    let mlm = |start, len, seed| {
                        MlmBatches::new(
                            tokens.clone(),
                            start,
                            len,
                            cfg.block_size,
                            cfg.batch_size,
                            seed,
                            true,
                            tokenizer,
                            cfg.whole_word_mask,
                        )
                    };
                    Task::Mlm {
                        model: m,
                        train: mlm(0, n_train, cfg.seed).map_err(split_err)?,
                        val: has_val
                            .then(|| mlm(n_train, n_val, cfg.seed ^ 0x5eed))
                            .transpose()?,
                    }
                }
                Model::Seq2Seq(_) => unreachable!("rejected before"),
            };
            let steps_per_epoch = n_train as f64 / cfg.tokens_per_step() as f64;
            Ok((task, (line, steps_per_epoch)))
        }
        (Model::Bert(m), Objective::Classify) => {
            let mut examples = examples.unwrap_or_default();
            let labels = m.config().labels();
            let eval_examples = match &cfg.eval_data {
                Some(p) => read_examples(p, &cfg.columns())?,
                None => {
                    // A seeded shuffle, then the last val_fraction held out.
                    examples.shuffle(&mut StdRng::seed_from_u64(cfg.seed));
                    let n_val = ((examples.len() as f64) * cfg.val_fraction) as usize;
                    examples.split_off(examples.len() - n_val)
                }
            };
            label_set(&eval_examples, &labels)?;
            let pad = m.config().pad_token_id.unwrap_or(0);
            let line = format!(
                "{} examples, {} labels ({}), {} held out{}",
                examples.len(),
                labels.len(),
                labels.join(", "),
                eval_examples.len(),
                cfg.eval_data
                    .as_ref()
                    .map(|p| format!(" from {}", p.display()))
                    .unwrap_or_default()
            );
            let n_train = examples.len();
            let batches = |ex: &[Example], shuffle| {
                ClassifyBatches::new(
                    ex,
                    &labels,
                    tokenizer,
                    cfg.block_size,
                    cfg.batch_size,
                    cfg.seed,
                    shuffle,
                    pad,
                )
            };
            let task = Task::Classify {
                model: m,
                train: batches(&examples, true)?,
                val: (!eval_examples.is_empty())
                    .then(|| batches(&eval_examples, false))
                    .transpose()?,
            };
            let steps_per_epoch = n_train as f64 / (cfg.batch_size * cfg.grad_accum) as f64;
            Ok((task, (line, steps_per_epoch)))
        }
        (Model::Bert(m), Objective::MlmNsp) => {
            // Documents, not sentences, are split: a held-out pair never shares a
            // document with a training pair.
            let mut docs: Vec<Vec<Vec<u32>>> = split_sentences(&read_documents(data)?)
                .iter()
                .map(|d| {
                    d.iter()
                        .map(|s| tokenizer.encode(s, false))
                        .filter(|t| t.as_ref().map_or(true, |t| !t.is_empty()))
                        .collect::<Result<Vec<_>>>()
                })
                .filter(|d| d.as_ref().map_or(true, |d| !d.is_empty()))
                .collect::<Result<_>>()?;
            docs.shuffle(&mut StdRng::seed_from_u64(cfg.seed));
            let n_val = ((docs.len() as f64) * cfg.val_fraction).round() as usize;
            let val_docs = if n_val >= 2 && docs.len() - n_val >= 2 {
                docs.split_off(docs.len() - n_val)
            } else {
                vec![]
            };
            let max_tokens = cfg
                .block_size
                .checked_sub(3)
                .filter(|&n| n >= 2)
                .ok_or_else(|| {
                    WickError::Unsupported("--block-size must be at least 5 for mlm+nsp".into())
                })?;
            let pairs = draw_pairs(&docs, max_tokens, cfg.seed)
                .map_err(|e| WickError::Unsupported(format!("{}: {e}", data.display())))?;
            let val_pairs = if val_docs.is_empty() {
                vec![]
            } else {
                draw_pairs(&val_docs, max_tokens, cfg.seed ^ 0x5eed)?
            };
            let line = format!(
                "{} documents, {} sentence pairs ({:.0}% IsNext), {} held-out pairs from {} documents",
                docs.len(),
                pairs.len(),
                100.0 * pairs.iter().filter(|p| p.label == IS_NEXT).count() as f64
                    / pairs.len() as f64,
                val_pairs.len(),
                val_docs.len()
            );
            let steps_per_epoch = pairs.len() as f64 / (cfg.batch_size * cfg.grad_accum) as f64;
            let batches = |p, shuffle, seed| {
                NspBatches::new(
                    p,
                    tokenizer,
                    cfg.whole_word_mask,
                    cfg.batch_size,
                    seed,
                    shuffle,
                )
            };
            let task = Task::MlmNsp {
                model: m,
                train: batches(pairs, true, cfg.seed)?,
                val: (!val_pairs.is_empty())
                    .then(|| batches(val_pairs, false, cfg.seed ^ 0x5eed))
                    .transpose()?,
            };
            Ok((task, (line, steps_per_epoch)))
        }
        (Model::Seq2Seq(m), Objective::Seq2seq) => {
            let c = m.config();
            let mut pairs = crate::data::pairs::read_pairs(data)?;
            // A seeded shuffle, then a fixed held-out tail (val_fraction of the pairs).
            pairs.shuffle(&mut StdRng::seed_from_u64(cfg.seed));
            let n_val = ((pairs.len() as f64) * cfg.val_fraction) as usize;
            let val_pairs = pairs.split_off(pairs.len() - n_val);
            // The held-out pairs, for `wick eval --data <out>/heldout.tsv` (BLEU).
            let heldout: String = val_pairs
                .iter()
                .map(|(s, t)| format!("{s}\t{t}\n"))
                .collect();
            crate::files::atomic_write(&out.join("heldout.tsv"), heldout.as_bytes())?;
            let encode = |ps: &[(String, String)]| -> Result<Vec<_>> {
                ps.iter()
                    .map(|(s, t)| {
                        Ok(crate::data::pairs::EncodedPair {
                            src: crate::data::pairs::encode_side(
                                tokenizer.source_side(),
                                s,
                                c.eos_token_id,
                                cfg.block_size,
                            )?,
                            tgt: crate::data::pairs::encode_side(
                                tokenizer,
                                t,
                                c.eos_token_id,
                                cfg.block_size,
                            )?,
                        })
                    })
                    .collect()
            };
            let batches = |ps, shuffle| {
                crate::data::pairs::PairBatches::new(
                    ps,
                    cfg.batch_size,
                    cfg.seed,
                    shuffle,
                    c.pad_token_id,
                    c.bos_token_id,
                )
            };
            let n_train = pairs.len();
            let line = format!(
                "{} sentence pairs, {} train / {} held out",
                n_train + n_val,
                n_train,
                n_val
            );
            let task = Task::Seq2Seq {
                model: m,
                train: batches(encode(&pairs)?, true),
                val: (n_val > 0)
                    .then(|| encode(&val_pairs).map(|v| batches(v, false)))
                    .transpose()?,
                label_smoothing: cfg.label_smoothing,
                scheduled_sampling: cfg.scheduled_sampling,
                seed: cfg.seed,
            };
            let steps_per_epoch = n_train as f64 / (cfg.batch_size * cfg.grad_accum) as f64;
            Ok((task, (line, steps_per_epoch)))
        }
        (_, o) => Err(WickError::Unsupported(format!(
            "--objective {o:?} is not supported for this model"
        ))),
    }
}
