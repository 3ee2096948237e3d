//! Translation with the encoder-decoder, teacher-forced: the decoder reads BOS + target
//! and predicts target + EOS, with label smoothing and optional scheduled sampling. A
//! seeded share of the pairs is held out and written to `<out>/heldout.tsv` (for
//! `wick eval`'s BLEU).

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

use super::{does_not_fit, held_out, Built, Eval, Objective, Setup, Task};
use crate::data::pairs::{encode_pairs, PairBatch, PairBatches};
use crate::data::Part;
use crate::error::{Result, WickError};
use crate::eval::seq2seq_loss_over;
use crate::labels::IGNORE;
use crate::models::{BertHeads, Model, ModelConfig, Seq2Seq as Seq2SeqModel};
use crate::nn::kernels::parallel::shard_count;
use crate::nn::loss::smoothed_loss;
use crate::tokenizer::Tokenizer;
use crate::train::config::TrainConfig;
use crate::train::shards;

pub struct Seq2Seq;

impl Objective for Seq2Seq {
    fn prepare(
        &mut self,
        config: &mut ModelConfig,
        _cfg: &TrainConfig,
        _data: &Path,
        _tokenizer: &Tokenizer,
    ) -> Result<Option<BertHeads>> {
        match config {
            ModelConfig::Seq2Seq(c) if c.is_nat() => Err(WickError::Unsupported(
                "this encoder-decoder is non-autoregressive: train it with --objective nat".into(),
            )),
            ModelConfig::Seq2Seq(_) => Ok(None),
            c => Err(does_not_fit("seq2seq", c)),
        }
    }

    fn build<'m>(self: Box<Self>, model: &'m Model, s: &Setup) -> Result<Built<'m>> {
        let Model::Seq2Seq(model) = model else {
            return Err(does_not_fit("seq2seq", s.config));
        };
        let (cfg, tokenizer) = (s.cfg, s.tokenizer);
        let c = model.config();
        let PairSplit {
            train,
            val,
            data_line,
        } = PairSplit::read(s)?;
        let encode =
            |ps: &[(String, String)]| encode_pairs(tokenizer, ps, c.framing(), cfg.block_size);
        let batches = |ps, shuffle| {
            PairBatches::new(
                ps,
                cfg.batch_size,
                cfg.seed,
                shuffle,
                c.pad_token_id,
                c.bos_token_id,
            )
        };
        let n_train = train.len();
        let task = Seq2SeqTask {
            model,
            train: batches(encode(&train)?, true),
            val: (!val.is_empty())
                .then(|| encode(&val).map(|v| batches(v, false)))
                .transpose()?,
            label_smoothing: cfg.label_smoothing,
            scheduled_sampling: cfg.scheduled_sampling,
            seed: cfg.seed,
            shards: shard_count(cfg.batch_size, s.device),
        };
        Ok(Built {
            task: Box::new(task),
            data_line,
            steps_per_epoch: super::steps_per_epoch(n_train, cfg),
        })
    }
}

/// A translation run's pairs: shuffled with the seed, a fixed held-out tail
/// (val_fraction of them) written to `<out>/heldout.tsv` with its references, and the
/// training targets distilled from `--distill-from` when it is set.
pub(super) struct PairSplit {
    pub train: Vec<(String, String)>,
    pub val: Vec<(String, String)>,
    /// What the summary says of them.
    pub data_line: String,
}

impl PairSplit {
    pub fn read(s: &Setup) -> Result<Self> {
        let mut train = s.cfg.read_pairs(s.data)?;
        train.shuffle(&mut StdRng::seed_from_u64(s.cfg.seed));
        let n_val = held_out(train.len(), s.cfg);
        let val = train.split_off(train.len() - n_val);
        let heldout: String = val.iter().map(|(s, t)| format!("{s}\t{t}\n")).collect();
        crate::files::atomic_write(&s.out.join("heldout.tsv"), heldout.as_bytes())?;
        if let Some(teacher) = &s.cfg.distill_from {
            crate::train::distill::distill(teacher, &mut train, s.out, s.device)?;
        }
        let data_line = format!(
            "{} sentence pairs, {} train{} / {} held out",
            train.len() + n_val,
            train.len(),
            if s.cfg.distill_from.is_some() {
                " (distilled)"
            } else {
                ""
            },
            n_val
        );
        Ok(Self {
            train,
            val,
            data_line,
        })
    }
}

struct Seq2SeqTask<'m> {
    model: &'m Seq2SeqModel,
    train: PairBatches,
    val: Option<PairBatches>,
    label_smoothing: f64,
    /// Probability of feeding the decoder its own previous prediction instead of the
    /// gold token (scheduled sampling; 0 = pure teacher forcing).
    scheduled_sampling: f64,
    seed: u64,
    /// How many shards a batch runs as, side by side.
    shards: usize,
}

impl Seq2SeqTask<'_> {
    /// What the decoder reads for batch `n`: the gold targets after BOS, or under
    /// scheduled sampling some of them replaced by the model's own predictions.
    fn decoder_inputs(&self, b: &PairBatch, n: usize) -> Result<Tensor> {
        if self.scheduled_sampling == 0.0 {
            return Ok(b.tgt_in.clone());
        }
        let mut rng = StdRng::seed_from_u64(
            self.seed ^ 0x5353 ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        scheduled_inputs(self.model, b, self.scheduled_sampling, &mut rng)
    }
}

impl Task for Seq2SeqTask<'_> {
    fn train_loss(&mut self, n: usize, part: Part, device: &Device) -> Result<Tensor> {
        let b = self.train.batch(n, device)?.rows(part)?;
        let tgt_in = self.decoder_inputs(&b, n)?;
        let logits =
            self.model
                .forward(&b.src, Some(&b.src_mask), &tgt_in, Some(&b.tgt_mask), true)?;
        Ok(smoothed_loss(&logits, &b.labels, self.label_smoothing)?)
    }

    /// The batch as shards side by side on the CPU (`train/shards.rs`). The loss is a
    /// mean over target tokens, and shards hold different numbers of them, so each
    /// shard's mean is weighed by its share of the batch's tokens: the shards' losses
    /// then average to the whole batch's, and their gradients sum to its gradient.
    fn train_grads(
        &mut self,
        n: usize,
        part: Part,
        weight: f64,
        seed: u64,
        vars: &[(String, Var)],
        device: &Device,
    ) -> Result<(f64, GradStore)> {
        let b = self.train.batch(n, device)?.rows(part)?;
        let tgt_in = self.decoder_inputs(&b, n)?;
        let shards = shard_count(b.src.dim(0)?, device) as f64;
        let total = labelled(&b.labels)?;
        let (model, eps) = (self.model, self.label_smoothing);
        let rows = [&b.src, &b.src_mask, &tgt_in, &b.tgt_mask, &b.labels];
        shards::grads_over(&rows, weight, seed, vars, |t| {
            let logits = model.forward(&t[0], Some(&t[1]), &t[2], Some(&t[3]), true)?;
            let share = labelled(&t[4])? * shards / total;
            Ok((smoothed_loss(&logits, &t[4], eps)? * share)?)
        })
    }

    fn shards(&self) -> usize {
        self.shards
    }

    /// The loss over the whole held-out set (no smoothing).
    fn evaluate(&mut self, _iters: usize, device: &Device) -> Result<Option<Eval>> {
        let Some(val) = &mut self.val else {
            return Ok(None);
        };
        Ok(Some(Eval::loss(seq2seq_loss_over(
            self.model, val, device,
        )?)))
    }
}

/// How many target tokens of `labels` (B, T) count for the loss (not padding).
fn labelled(labels: &Tensor) -> Result<f64> {
    Ok(labels
        .ne(IGNORE)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as f64)
}

/// Scheduled sampling (Bengio et al. 2015, in the two-pass form used for Transformers):
/// a teacher-forced pass without gradient predicts every position; each decoder input
/// after BOS is then replaced, with probability `p`, by the prediction for it.
fn scheduled_inputs(
    model: &Seq2SeqModel,
    b: &PairBatch,
    p: f64,
    rng: &mut StdRng,
) -> Result<Tensor> {
    let logits = model
        .forward(
            &b.src,
            Some(&b.src_mask),
            &b.tgt_in,
            Some(&b.tgt_mask),
            false,
        )?
        .detach();
    let pred = logits.argmax(candle_core::D::Minus1)?.to_vec2::<u32>()?; // (B, T)
    let gold = b.tgt_in.to_vec2::<u32>()?;
    let mask = b.tgt_mask.to_vec2::<u32>()?;
    let mixed: Vec<u32> = gold
        .iter()
        .zip(&pred)
        .zip(&mask)
        .flat_map(|((g, pr), m)| {
            let mut row = g.clone();
            for t in 1..row.len() {
                // Input t is the token after position t - 1: the prediction made there.
                if m[t] == 1 && rng.random_bool(p) {
                    row[t] = pr[t - 1];
                }
            }
            row
        })
        .collect();
    Ok(Tensor::from_vec(
        mixed,
        b.tgt_in.dims2()?,
        b.tgt_in.device(),
    )?)
}
