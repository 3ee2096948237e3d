use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use serde_json::Value;

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
    /// Training settings over the preset's, the checkpoint's or the resumed run's.
    #[command(flatten)]
    settings: Settings,
    /// cpu, cuda[:N] or metal.
    #[arg(long, default_value = "cpu", env = "WICK_DEVICE")]
    device: String,
}

/// The `wick train` flags that override TrainConfig keys of the same names: serialised,
/// the flags given (and only those) are the overrides.
#[derive(clap::Args, Debug, serde::Serialize)]
struct Settings {
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    objective: Option<Objective>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_iters: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    block_size: Option<usize>,
    /// Micro-batches accumulated per optimizer step.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_accum: Option<usize>,
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    learning_rate: Option<f64>,
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    min_lr: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_iters: Option<usize>,
    /// Step where the decay reaches --min-lr (default: --max-iters).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr_decay_iters: Option<usize>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr_schedule: Option<crate::train::schedule::Schedule>,
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_clip: Option<f64>,
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dropout: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_every: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_iters: Option<usize>,
    /// Fraction of --data held out for validation (its end; default 0.1).
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    val_fraction: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_every: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    save_every: Option<usize>,
    /// Checkpoints to keep (0 keeps all).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_last: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    /// Tokens to sample at the end (0: none).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_tokens: Option<usize>,
    /// Classification: held-out examples (default: a --val-fraction of --data).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_data: Option<PathBuf>,
    /// Classification: the text column (default: text, sentence or sentence1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    text_column: Option<String>,
    /// Classification: a second text column, for sentence pairs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pair_column: Option<String>,
    /// Classification: the label column (default: label).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    label_column: Option<String>,
    /// Classification: one sigmoid per label with binary cross-entropy (label cells
    /// hold comma-separated labels; detected from such cells too).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    multi_label: bool,
    /// Classification and --labels-as-target: a file with one label name per line; the
    /// data's labels are those names or their line numbers (0-based).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    label_names: Option<PathBuf>,
    /// Multi-label: predict a label when its probability reaches this (default 0.5).
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f64>,
    /// Seq2seq: targets are comma-separated labels (ids with --label-names, or names),
    /// learnt as label names in one order: multi-label classification as generation.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    labels_as_target: bool,
    /// Seq2seq: label smoothing ε.
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    label_smoothing: Option<f64>,
    /// Seq2seq: probability of feeding the decoder its own previous prediction.
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_sampling: Option<f64>,
    /// Masked LM: mask whole words (all WordPiece pieces of a word together).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    whole_word_mask: bool,
    /// Seq2seq from scratch: separate source and target BPE vocabularies (default: joint).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    separate_vocab: bool,
    /// Seq2seq and nat: train on this translator's translations of the training sources
    /// (greedy, or Mask-Predict for a non-autoregressive one: sequence-level knowledge
    /// distillation); held-out pairs keep their references.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    distill_from: Option<PathBuf>,
    /// LoRA: train rank-R updates of the chosen linear layers on frozen weights, and
    /// save only the adapter (peft's adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_r: Option<usize>,
    /// LoRA: the updates are scaled by ALPHA / R (default 8, as peft).
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_alpha: Option<f64>,
    /// LoRA: dropout on the updates' input (default 0).
    #[arg(long, value_parser = super::finite_f64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_dropout: Option<f64>,
    /// LoRA: comma-separated module names or suffixes (default: the family's, as peft:
    /// c_attn for GPT-2, query,value for BERT, q_proj,v_proj for the encoder-decoder).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_targets: Option<Vec<String>>,
    /// Recompute each block's activations in the backward pass instead of keeping them
    /// (less memory for a tenth to two fifths more time per step; the same losses).
    /// `--gradient-checkpointing false` turns it off when resuming.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    gradient_checkpointing: Option<bool>,
    /// Matrix products in bf16 with f32 sums on CPUs with Intel AMX (as torch's
    /// `set_float32_matmul_precision("medium")`); weights, gradients and AdamW stay f32.
    #[arg(long, value_enum, value_name = "PRECISION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    matmul_precision: Option<crate::nn::kernels::MatmulPrecision>,
}

pub fn run(a: Args) -> Result<()> {
    let overrides = match serde_json::to_value(&a.settings)? {
        Value::Object(o) => o,
        _ => unreachable!("Settings serialises as an object"),
    };
    let summary = train(TrainRequest {
        model: a.model,
        data: a.data,
        out: a.out,
        tokenizer: a.tokenizer,
        resume: a.resume,
        overrides,
        device: crate::device::parse_device(&a.device)?,
        progress: std::io::stderr().is_terminal(),
    })?;
    if !summary.leader {
        return Ok(());
    }
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
