//! Causal language modelling (GPT-2): predict each next token of random windows of the
//! corpus. A batch runs as shards side by side, one per thread (`train/shards.rs`), an
//! internal detail of this objective.

use std::path::Path;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::{does_not_fit, Built, Eval, Objective, Setup, Task, TokenSplit};
use crate::data::Part;
use crate::data::{LmBatches, TokenBuffer};
use crate::error::Result;
use crate::eval::{lm_loss_over, mean_loss};
use crate::models::{BertHeads, Gpt2, Model, ModelConfig};
use crate::nn::kernels::parallel::shard_count;
use crate::nn::loss::lm_loss;
use crate::tokenizer::Tokenizer;
use crate::train::config::TrainConfig;
use crate::train::shards;

pub struct Clm;

impl Objective for Clm {
    fn prepare(
        &mut self,
        config: &mut ModelConfig,
        _cfg: &TrainConfig,
        _data: &Path,
        _tokenizer: &Tokenizer,
    ) -> Result<Option<BertHeads>> {
        match config {
            ModelConfig::Gpt2(_) => Ok(None),
            c => Err(does_not_fit("clm", c)),
        }
    }

    fn build<'m>(self: Box<Self>, model: &'m Model, s: &Setup) -> Result<Built<'m>> {
        let Model::Gpt2(model) = model else {
            return Err(does_not_fit("clm", s.config));
        };
        let cfg = s.cfg;
        // Documents are separated by the EOS token, when the tokenizer has it.
        let eos = s
            .config
            .eos_token_ids()
            .first()
            .copied()
            .filter(|&e| (e as usize) < s.tokenizer.vocab_size());
        let split = TokenSplit::read(s, eos)?;
        let windows = |start, len, seed| {
            LmBatches::new(
                split.tokens.clone(),
                start,
                len,
                cfg.block_size,
                cfg.batch_size,
                seed,
                true,
            )
        };
        let task = ClmTask {
            model,
            train: windows(0, split.n_train, cfg.seed).map_err(super::split_error(s.data))?,
            val: split
                .has_val
                .then(|| windows(split.n_train, split.n_val, cfg.seed ^ 0x5eed))
                .transpose()?,
            val_split: split.has_val.then(|| ValSplit {
                tokens: split.tokens.clone(),
                start: split.n_train,
                len: split.n_val,
                block: cfg.block_size,
                batch: final_batch(cfg, s.config.vocab_size()),
            }),
            shards: shard_count(cfg.batch_size, s.device),
        };
        Ok(Built {
            steps_per_epoch: split.steps_per_epoch(cfg),
            data_line: split.line,
            task: Box::new(task),
        })
    }
}

/// Windows per batch of the final pass over the validation split: four training
/// batches, fewer where their logits would pass 128 MiB (GPT-2's 50k-token vocabulary
/// at 16 x 256 positions is 823 MB), so the end of a run needs no more memory than its
/// steps, even a LoRA run's with gradient checkpointing (at 256 MiB, its final pass
/// was a third above its steps' peak on GPT-2 124M). Two windows at least, so that the
/// pass still runs as two shards side by side.
fn final_batch(cfg: &TrainConfig, vocab: usize) -> usize {
    let row = cfg.block_size * vocab * std::mem::size_of::<f32>();
    (cfg.batch_size * 4).min((128 << 20) / row.max(1)).max(2)
}

/// The whole validation split, for the final pass.
struct ValSplit {
    tokens: Arc<TokenBuffer>,
    start: usize,
    len: usize,
    block: usize,
    batch: usize,
}

struct ClmTask<'m> {
    model: &'m Gpt2,
    train: LmBatches,
    val: Option<LmBatches>,
    val_split: Option<ValSplit>,
    shards: usize,
}

impl Task for ClmTask<'_> {
    fn train_loss(&mut self, n: usize, part: Part, device: &Device) -> Result<Tensor> {
        let (x, y) = self.train.batch(n, device)?;
        let (x, y) = (part.rows(&x)?, part.rows(&y)?);
        Ok(lm_loss(&self.model.forward(&x, None, None, true)?, &y)?)
    }

    /// The batch as shards side by side, each with its own dropout seed.
    fn train_grads(
        &mut self,
        n: usize,
        part: Part,
        weight: f64,
        seed: u64,
        vars: &[(String, Var)],
        device: &Device,
    ) -> Result<(f64, GradStore)> {
        let (x, y) = self.train.batch(n, device)?;
        let (x, y) = (part.rows(&x)?, part.rows(&y)?);
        shards::loss_and_grads(self.model, &x, &y, weight, seed, vars)
    }

    fn evaluate(&mut self, iters: usize, device: &Device) -> Result<Option<Eval>> {
        let Some(val) = &mut self.val else {
            return Ok(None);
        };
        let mut total = 0f64;
        for i in 0..iters {
            let (x, y) = val.batch(i, device)?;
            total += mean_loss(self.model, &x, &y)?;
        }
        Ok(Some(Eval::loss(total / iters as f64)))
    }

    /// The loss over the whole validation split, not a sample of its windows.
    fn final_eval(&mut self, iters: usize, device: &Device) -> Result<Option<Eval>> {
        let Some(v) = &self.val_split else {
            return self.evaluate(iters, device);
        };
        let loss = lm_loss_over(
            self.model,
            v.tokens.clone(),
            v.start,
            v.len,
            v.block,
            v.batch,
            device,
        )?;
        Ok(Some(Eval::loss(loss)))
    }

    fn shards(&self) -> usize {
        self.shards
    }

    fn causal_lm(&self) -> Option<&Gpt2> {
        Some(self.model)
    }
}
