use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use serde_json::{Map, Value};

use crate::train::{train, Objective, TrainRequest};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A preset name (shakespeare-char), a preset or config.json file (train from
    /// scratch), or a checkpoint folder / hub id (fine-tune).
    #[arg(long, default_value = "shakespeare-char")]
    model: String,
    /// Training corpus: a text file, a folder of .txt, or JSONL with a `text` field.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder (default runs/<preset or model name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// "char" for a character-level tokenizer built from the corpus, or a
    /// tokenizer.json (default: the checkpoint's or preset's).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Continue the run in --out from its latest checkpoint, up to --max-iters.
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    #[arg(long)]
    max_iters: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    block_size: Option<usize>,
    /// Micro-batches accumulated per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup_iters: Option<usize>,
    /// Step where the decay reaches --min-lr (default: --max-iters).
    #[arg(long)]
    lr_decay_iters: Option<usize>,
    #[arg(long, value_enum)]
    lr_schedule: Option<crate::train::schedule::Schedule>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 disables).
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long)]
    dropout: Option<f64>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    eval_iters: Option<usize>,
    #[arg(long)]
    log_every: Option<usize>,
    #[arg(long)]
    save_every: Option<usize>,
    /// Checkpoints to keep (0 keeps all).
    #[arg(long)]
    keep_last: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Tokens to sample at the end (0: none).
    #[arg(long)]
    sample_tokens: Option<usize>,
    /// Classification: held-out examples (default: a --val-fraction of --data).
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Classification: the text column (default: text, sentence or sentence1).
    #[arg(long)]
    text_column: Option<String>,
    /// Classification: a second text column, for sentence pairs.
    #[arg(long)]
    pair_column: Option<String>,
    /// Classification: the label column (default: label).
    #[arg(long)]
    label_column: Option<String>,
    /// Seq2seq: label smoothing ε.
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Seq2seq: probability of feeding the decoder its own previous prediction.
    #[arg(long)]
    scheduled_sampling: Option<f64>,
    /// Masked LM: mask whole words (all WordPiece pieces of a word together).
    #[arg(long)]
    whole_word_mask: bool,
    /// Seq2seq from scratch: separate source and target BPE vocabularies (default: joint).
    #[arg(long)]
    separate_vocab: bool,
    /// cpu, cuda[:N] or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: Args) -> Result<()> {
    let mut o = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(k.into(), v);
        }
    };
    put(
        "objective",
        a.objective.map(|x| serde_json::to_value(x).unwrap()),
    );
    put("max_iters", a.max_iters.map(Value::from));
    put("batch_size", a.batch_size.map(Value::from));
    put("block_size", a.block_size.map(Value::from));
    put("grad_accum", a.grad_accum.map(Value::from));
    put("learning_rate", a.learning_rate.map(Value::from));
    put("min_lr", a.min_lr.map(Value::from));
    put("warmup_iters", a.warmup_iters.map(Value::from));
    put("lr_decay_iters", a.lr_decay_iters.map(Value::from));
    put(
        "lr_schedule",
        a.lr_schedule.map(|x| serde_json::to_value(x).unwrap()),
    );
    put("weight_decay", a.weight_decay.map(Value::from));
    put("grad_clip", a.grad_clip.map(Value::from));
    put("dropout", a.dropout.map(Value::from));
    put("eval_every", a.eval_every.map(Value::from));
    put("eval_iters", a.eval_iters.map(Value::from));
    put("log_every", a.log_every.map(Value::from));
    put("save_every", a.save_every.map(Value::from));
    put("keep_last", a.keep_last.map(Value::from));
    put("seed", a.seed.map(Value::from));
    put("sample_tokens", a.sample_tokens.map(Value::from));
    put("label_smoothing", a.label_smoothing.map(Value::from));
    put("scheduled_sampling", a.scheduled_sampling.map(Value::from));
    put(
        "whole_word_mask",
        a.whole_word_mask.then_some(Value::Bool(true)),
    );
    put(
        "separate_vocab",
        a.separate_vocab.then_some(Value::Bool(true)),
    );
    put(
        "eval_data",
        a.eval_data
            .map(|p| Value::from(p.to_string_lossy().into_owned())),
    );
    put("text_column", a.text_column.map(Value::from));
    put("pair_column", a.pair_column.map(Value::from));
    put("label_column", a.label_column.map(Value::from));
    let summary = train(TrainRequest {
        model: a.model,
        data: a.data,
        out: a.out,
        tokenizer: a.tokenizer,
        resume: a.resume,
        overrides: o,
        device: crate::device::parse_device(&a.device)?,
        progress: std::io::stderr().is_terminal(),
    })?;
    if let Some(v) = summary.final_val_loss {
        println!(
            "val loss     {v:.4} (whole validation split), perplexity {:.3}",
            v.exp()
        );
    }
    println!(
        "trained      {} steps in {:.1} s, {:.0} tokens/s -> {}",
        summary.steps,
        summary.seconds,
        summary.tokens_per_sec,
        summary.out.display()
    );
    if let Some(s) = summary.sample {
        println!("sample:\n{s}");
    }
    if summary.interrupted {
        std::process::exit(130);
    }
    Ok(())
}
