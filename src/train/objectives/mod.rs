//! The training objectives, one file each. An [`Objective`] is what `--objective` names
//! before the model exists: it checks that the model fits, names its heads, and then
//! builds a [`Task`] over the built model: its batches (split into train and
//! validation), its loss and gradients, its evaluation and its sample. The loop in
//! `trainer.rs` sees only these two traits.
//!
//! A new objective is one new file here and one line in [`objective`].

pub mod classify;
pub mod clm;
pub mod mlm;
pub mod mlm_nsp;
pub mod nat;
pub mod seq2seq;

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::config::{Objective as Name, TrainConfig};
use crate::data::Part;
use crate::error::{Result, WickError};
use crate::models::{BertHeads, Gpt2, Model, ModelConfig};
use crate::tokenizer::Tokenizer;

/// The objective `--objective` names. One line per objective.
pub fn objective(name: Name) -> Box<dyn Objective> {
    match name {
        Name::Clm => Box::new(clm::Clm),
        Name::Mlm => Box::new(mlm::Mlm),
        Name::MlmNsp => Box::new(mlm_nsp::MlmNsp),
        Name::Classify => Box::new(classify::Classify::default()),
        Name::Seq2seq => Box::new(seq2seq::Seq2Seq),
        Name::Nat => Box::new(nat::Nat),
    }
}

/// What building a task reads besides the model.
pub struct Setup<'a> {
    pub cfg: &'a TrainConfig,
    pub data: &'a Path,
    pub tokenizer: &'a Tokenizer,
    pub config: &'a ModelConfig,
    /// The run folder (the token cache and held-out pairs go there).
    pub out: &'a Path,
    pub device: &'a Device,
}

/// A task and what the summary says of its data.
pub struct Built<'m> {
    pub task: Box<dyn Task + 'm>,
    /// One line: sizes of the data and its split.
    pub data_line: String,
    /// Optimizer steps one epoch takes.
    pub steps_per_epoch: f64,
}

pub trait Objective {
    /// Checks that `config` fits the objective, sets what it must say (BERT's
    /// architecture, a classifier's labels read from `data`, the non-autoregressive
    /// decoder's placeholder in `tokenizer`), and returns the BERT heads to build
    /// (`None` for the other families).
    fn prepare(
        &mut self,
        config: &mut ModelConfig,
        cfg: &TrainConfig,
        data: &Path,
        tokenizer: &Tokenizer,
    ) -> Result<Option<BertHeads>>;

    /// The task over `model`, which [`Objective::prepare`] configured.
    fn build<'m>(self: Box<Self>, model: &'m Model, setup: &Setup) -> Result<Built<'m>>;
}

/// What is being learned, as the loop asks for it.
pub trait Task {
    /// Loss of `part`'s rows of training micro-batch `n`, dropout on.
    fn train_loss(&mut self, n: usize, part: Part, device: &Device) -> Result<Tensor>;

    /// Loss of `part`'s rows of training micro-batch `n` and the gradients of `vars`,
    /// the loss scaled by `weight` (1 / (grad_accum · ranks)) before the backward pass;
    /// dropout seeded from `seed`.
    fn train_grads(
        &mut self,
        n: usize,
        part: Part,
        weight: f64,
        seed: u64,
        _vars: &[(String, Var)],
        device: &Device,
    ) -> Result<(f64, GradStore)> {
        crate::nn::seed_dropout(seed);
        let loss = self.train_loss(n, part, device)?;
        super::shards::backward(&loss, weight)
    }

    /// Held-out results: the mean loss over the first `iters` validation batches (the
    /// same ones every time), or over the whole validation set where that is small.
    fn evaluate(&mut self, iters: usize, device: &Device) -> Result<Option<Eval>>;

    /// The held-out figure reported at the end; what `evaluate` gives unless the task
    /// has a fuller one.
    fn final_eval(&mut self, iters: usize, device: &Device) -> Result<Option<Eval>> {
        self.evaluate(iters, device)
    }

    /// How many shards side by side a training batch runs as (the summary says).
    fn shards(&self) -> usize {
        1
    }

    /// The causal LM, when the task has one (for the end-of-run sample).
    fn causal_lm(&self) -> Option<&Gpt2> {
        None
    }
}

/// Held-out results.
#[derive(Debug, Clone, Copy, Default)]
pub struct Eval {
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    /// Multi-label classification.
    pub micro_f1: Option<f64>,
    pub exact_match: Option<f64>,
}

impl Eval {
    pub fn loss(loss: f64) -> Self {
        Self {
            loss,
            ..Default::default()
        }
    }
}

/// The error for an objective that does not fit the model's family.
fn does_not_fit(name: &str, config: &ModelConfig) -> WickError {
    WickError::Unsupported(format!(
        "--objective {name} does not fit a {} model (clm: gpt2; mlm, classify: bert, roberta, xlm-roberta, distilbert; mlm+nsp: bert; seq2seq, nat: wick-seq2seq)",
        config.model_type()
    ))
}

/// The `prepare` of an encoder objective that only names its heads: the model must be
/// a BERT-style encoder, and it is saved as the family's class for `head`
/// ("ForMaskedLM": `RobertaForMaskedLM`, ...).
fn bert_heads(
    config: &mut ModelConfig,
    name: &str,
    head: &str,
    heads: BertHeads,
) -> Result<Option<BertHeads>> {
    let ModelConfig::Bert(c) = config else {
        return Err(does_not_fit(name, config));
    };
    c.architecture = Some(c.family.class(head));
    Ok(Some(heads))
}

/// Optimizer steps one epoch of `n` examples takes.
fn steps_per_epoch(n: usize, cfg: &TrainConfig) -> f64 {
    n as f64 / (cfg.batch_size * cfg.grad_accum) as f64
}

/// A held-out share of `n` items.
fn held_out(n: usize, cfg: &TrainConfig) -> usize {
    ((n as f64) * cfg.val_fraction) as usize
}

/// A tokenized corpus (cached beside the run) and its split: the first part trains,
/// the last `val_fraction` validates. For the objectives that read a token stream.
struct TokenSplit {
    tokens: std::sync::Arc<crate::data::TokenBuffer>,
    n_train: usize,
    n_val: usize,
    /// Whether the validation part holds one whole window.
    has_val: bool,
    line: String,
}

impl TokenSplit {
    /// `sep` goes between documents.
    fn read(setup: &Setup, sep: Option<u32>) -> Result<Self> {
        let (tokens, cache) =
            crate::data::tokenize_cached(setup.data, setup.tokenizer, sep, setup.out)?;
        let n = tokens.len();
        let n_val = held_out(n, setup.cfg);
        let n_train = n - n_val;
        let line = format!(
            "{n} tokens, {n_train} train / {n_val} val{}",
            cache
                .map(|c| format!(" (cache {})", c.display()))
                .unwrap_or_default()
        );
        Ok(Self {
            tokens: std::sync::Arc::new(tokens),
            n_train,
            n_val,
            has_val: n_val > setup.cfg.block_size + 1,
            line,
        })
    }

    fn steps_per_epoch(&self, cfg: &TrainConfig) -> f64 {
        self.n_train as f64 / cfg.tokens_per_step() as f64
    }
}

/// The error for a training split too small for its batches, naming the data.
fn split_error(data: &Path) -> impl Fn(WickError) -> WickError + '_ {
    move |e| WickError::Unsupported(format!("{}: training split: {e}", data.display()))
}
