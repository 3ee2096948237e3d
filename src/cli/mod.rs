//! The `wick` command line. Every subcommand takes `--model`, `--device` and `--json`;
//! with `--json`, stdout is exactly one JSON object and everything else goes to stderr.

mod classify;
mod embed;
mod eval;
mod export;
mod fill_mask;
mod generate;
mod info;
mod merge;
mod quantize;
mod score;
mod serve;
mod train;
mod translate;

use std::io::Write;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::checkpoint::{load, LoadOptions, Pretrained};
use crate::models::{Bert, Gpt2, Model};

#[derive(Parser, Debug)]
#[command(
    name = "wick",
    version,
    about = "Train, fine-tune and run GPT-2, BERT and encoder-decoder transformers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Architecture, sizes, parameter count, dtype and tokenizer of a model.
    Info(info::Args),
    /// Log-probability of each token of a text under a causal LM.
    Score(score::Args),
    /// Continue a prompt with a causal LM.
    Generate(generate::Args),
    /// Sentence embeddings from a BERT encoder.
    Embed(embed::Args),
    /// Most probable tokens at each [MASK].
    FillMask(fill_mask::Args),
    /// Labels and probabilities from a BERT classifier.
    Classify(classify::Args),
    /// Train from scratch or fine-tune (default: the shakespeare-char preset).
    Train(Box<train::Args>),
    /// Loss and perplexity of a causal LM on a text; accuracy and macro-F1 of a
    /// classifier; loss and BLEU of a translator.
    Eval(eval::Args),
    /// Translate sentences with an encoder-decoder (greedy or beam search).
    Translate(translate::Args),
    /// Quantize a GPT-2's linear layers (q8_0 or q4k) for faster CPU generation.
    Quantize(quantize::Args),
    /// Fold a LoRA adapter into its base and write a plain checkpoint.
    Merge(merge::Args),
    /// Write a GPT-2 as a GGUF file in llama.cpp's gpt2 layout (llama.cpp, ollama).
    Export(export::Args),
    /// An OpenAI-compatible HTTP server (completions, chat, embeddings, classify,
    /// translate) with continuous batching.
    Serve(serve::Args),
}

/// What every subcommand that runs a model takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A checkpoint folder (config.json, weights, tokenizer) or a hub id such as `gpt2`
    /// (resolved through the hf-hub cache; set HF_HUB_OFFLINE=1 to stay offline).
    #[arg(long)]
    pub model: String,
    /// A LoRA adapter folder or hub id (peft's layout) to put on --model; an adapter
    /// folder may also be given as --model itself.
    #[arg(long)]
    pub adapter: Option<String>,
    /// cpu, cuda[:N] or metal.
    #[arg(long, default_value = "cpu", env = "WICK_DEVICE")]
    pub device: String,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Matrix products in bf16 with f32 sums on CPUs with Intel AMX (as torch's
    /// `set_float32_matmul_precision("medium")`).
    #[arg(long, value_enum, default_value = "f32", env = "WICK_MATMUL_PRECISION")]
    pub matmul_precision: crate::nn::kernels::MatmulPrecision,
}

impl ModelArgs {
    pub fn device(&self) -> Result<Device> {
        Ok(crate::device::parse_device(&self.device)?)
    }

    pub fn load(&self, opts: LoadOptions) -> Result<Pretrained> {
        crate::nn::kernels::set_matmul_precision(self.matmul_precision)
            .map_err(|e| anyhow::anyhow!("--matmul-precision bf16: {e}"))?;
        let opts = LoadOptions {
            device: self.device()?,
            adapter: self.adapter.clone(),
            ..opts
        };
        load(&self.model, &opts).with_context(|| format!("loading --model {}", self.model))
    }
}

/// Refuses an `--out` folder that holds a model or a run: nothing is overwritten.
pub(crate) fn refuse_model_out(out: &std::path::Path) -> Result<()> {
    if let Some(file) = crate::files::holds_model(out) {
        anyhow::bail!(
            "--out {} already holds a model or run ({file}): choose a new folder; nothing was \
             overwritten",
            out.display()
        );
    }
    Ok(())
}

pub(crate) fn as_gpt2<'a>(p: &'a Pretrained, cmd: &str) -> Result<&'a Gpt2> {
    match &p.model {
        Model::Gpt2(m) => Ok(m),
        other => anyhow::bail!(
            "`wick {cmd}` needs a causal LM (GPT-2); {} is a {}",
            p.dir.display(),
            other.architecture()
        ),
    }
}

pub(crate) fn as_bert<'a>(p: &'a Pretrained, cmd: &str) -> Result<&'a Bert> {
    match &p.model {
        Model::Bert(m) => Ok(m),
        other => anyhow::bail!(
            "`wick {cmd}` needs an encoder (BERT, RoBERTa, XLM-RoBERTa, DistilBERT); {} is a {}",
            p.dir.display(),
            other.architecture()
        ),
    }
}

/// Texts from repeated `--text` flags and/or a `--file` with one text per line.
pub(crate) fn gather_texts(
    texts: &[String],
    file: Option<&std::path::Path>,
    (text_flag, file_flag): (&str, &str),
) -> Result<Vec<String>> {
    let mut all = texts.to_vec();
    if let Some(f) = file {
        let content =
            std::fs::read_to_string(f).with_context(|| format!("{file_flag} {}", f.display()))?;
        all.extend(
            content
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from),
        );
    }
    if all.is_empty() {
        anyhow::bail!("no input: give {text_flag} or {file_flag}");
    }
    Ok(all)
}

/// The texts a task reads: repeated `--text` flags and/or a `--file`.
#[derive(clap::Args, Debug, Clone)]
pub struct TextArgs {
    /// A text (repeatable).
    #[arg(long)]
    text: Vec<String>,
    /// One text per line.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
}

impl TextArgs {
    pub fn texts(&self) -> Result<Vec<String>> {
        gather_texts(&self.text, self.file.as_deref(), ("--text", "--file"))
    }
}

/// A float flag's parser that refuses NaN and ±inf, which every float flag would
/// otherwise carry silently into scores and updates.
pub(crate) fn finite_f64(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s} is not a finite number"))
    }
}

/// [`finite_f64`] for f32 flags (out of f32's range is not finite either).
pub(crate) fn finite_f32(s: &str) -> std::result::Result<f32, String> {
    let v = finite_f64(s)? as f32;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s} is out of range"))
    }
}

/// A multi-label model's thresholds: `--threshold` for every label when given, else
/// the model folder's `thresholds.json` (one per label, from `wick eval
/// --tune-thresholds --save-thresholds`), else 0.5.
pub(crate) fn thresholds(p: &Pretrained, flag: Option<f64>) -> Result<crate::eval::Thresholds> {
    use crate::eval::Thresholds;
    if let Some(t) = flag {
        if !(0.0..=1.0).contains(&t) {
            anyhow::bail!("--threshold must be between 0 and 1, got {t}");
        }
        return Ok(Thresholds::All(t));
    }
    let file = p.dir.join("thresholds.json");
    let labels = match &p.model {
        Model::Bert(b) => b.config().labels(),
        _ => vec![],
    };
    Ok(match file.is_file() {
        true => Thresholds::load(&file, &labels)?,
        false => Thresholds::All(0.5),
    })
}

/// Beam search, for every command that decodes.
#[derive(clap::Args, Debug, Clone)]
pub struct BeamArgs {
    /// Beam search with this many beams (1 = greedy, or sampling where the command samples).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Beam scores are divided by length^length_penalty (>0 favours longer outputs).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = finite_f64)]
    pub length_penalty: f64,
    #[arg(long, value_enum, default_value_t = crate::generation::EarlyStopping::False)]
    pub early_stopping: crate::generation::EarlyStopping,
}

/// How an encoder-decoder writes its target, for translate and eval.
#[derive(clap::Args, Debug, Clone)]
pub struct DecodingArgs {
    /// autoregressive (left to right: greedy, or beams with --num-beams) or nat
    /// (Mask-Predict, for models trained with --objective nat). Default: the one the
    /// model was trained for.
    #[arg(long, value_enum)]
    pub decoding: Option<DecodingKind>,
    /// --decoding nat: decoder passes (1 = one parallel argmax).
    #[arg(long, default_value_t = 10)]
    pub iterations: usize,
    /// --decoding nat: target lengths tried per source, the likeliest first.
    #[arg(long, default_value_t = 5)]
    pub length_beam: usize,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodingKind {
    Autoregressive,
    Nat,
}

impl DecodingArgs {
    /// The decoding for `model`: `search` (greedy or beams) or Mask-Predict; flags that
    /// do not fit the model or each other are errors naming them.
    pub fn decoding(
        &self,
        model: &crate::models::Seq2Seq,
        search: crate::generation::GenerateOptions,
    ) -> Result<crate::tasks::translate::Decoding> {
        use crate::tasks::translate::Decoding;
        let nat = match self.decoding {
            Some(kind) => kind == DecodingKind::Nat,
            None => model.config().is_nat(),
        };
        let decoding = if nat {
            if self.iterations == 0 || self.length_beam == 0 {
                anyhow::bail!("--iterations and --length-beam must be at least 1");
            }
            if search.num_beams > 1 {
                anyhow::bail!("--num-beams applies to --decoding autoregressive; Mask-Predict searches over lengths with --length-beam");
            }
            Decoding::MaskPredict(crate::generation::MaskPredictOptions {
                iterations: self.iterations,
                length_beam: self.length_beam,
            })
        } else {
            Decoding::Autoregressive(search)
        };
        decoding.check(model)?;
        Ok(decoding)
    }
}

/// Batching of many input texts (BERT tasks).
#[derive(clap::Args, Debug, Clone)]
pub struct BatchArgs {
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Truncate inputs to this many tokens (default: the model's context).
    #[arg(long)]
    pub max_length: Option<usize>,
}

impl BatchArgs {
    pub fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            anyhow::bail!("--batch-size must be at least 1");
        }
        if self.max_length == Some(0) {
            anyhow::bail!("--max-length must be at least 1");
        }
        Ok(())
    }

    /// Runs `f` over `texts` in batches on `device` (side by side on the CPU), with a
    /// progress bar on stderr when there is more than one batch.
    pub fn run<T: Send>(
        &self,
        texts: &[String],
        device: &candle_core::Device,
        what: &str,
        f: impl Fn(&[String]) -> crate::error::Result<Vec<T>> + Sync,
    ) -> Result<Vec<T>> {
        let side_by_side = device.is_cpu();
        let batches =
            crate::tasks::map_batches_shown(texts, self.batch_size, side_by_side, what, f);
        Ok(batches?)
    }
}

/// Prints `value` as JSON, or the human-readable rendering.
pub(crate) fn emit<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        // Written as it serialises: a long text's scores are never one string in memory.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer(&mut out, value)?;
        writeln!(out)?;
        out.flush()?;
    } else {
        println!("{}", human());
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Embed(_) | Command::Classify(_) | Command::Translate(_) | Command::Eval(_) =
        &cli.command
    {
        // Their batches run side by side (`BatchArgs::run`): candle's own ops stay on
        // each batch's thread rather than queueing on candle's one-caller pool.
        crate::runtime::candle_ops_on_caller();
    }
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Score(a) => score::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Embed(a) => embed::run(a),
        Command::FillMask(a) => fill_mask::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Translate(a) => translate::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Export(a) => export::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Serve(a) => serve::run(a),
    }
}
