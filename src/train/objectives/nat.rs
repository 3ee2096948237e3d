//! Non-autoregressive translation, trained as Mask-Predict's conditional masked LM: the
//! decoder (no causal mask) reads the target with a random number of its positions
//! replaced by `<mask>` and predicts those, while a length predictor on the pooled
//! encoder output learns the target's length. The loss is the masked tokens'
//! cross-entropy (label-smoothed) plus 0.1 × the length loss. Same pairs, split and
//! held-out file as `seq2seq`, and `--distill-from` for the teacher's targets.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::seq2seq::PairSplit;
use super::{does_not_fit, Built, Eval, Objective, Setup, Task};
use crate::data::nat::NatBatches;
use crate::data::pairs::encode_pairs;
use crate::data::Part;
use crate::error::{Result, WickError};
use crate::eval::{nat_loss, nat_loss_over};
use crate::models::{BertHeads, Model, ModelConfig, Seq2Seq, Seq2SeqFamily};
use crate::tokenizer::Tokenizer;
use crate::train::config::TrainConfig;

pub struct Nat;

impl Objective for Nat {
    /// Makes the encoder-decoder non-autoregressive: targets of up to --block-size
    /// tokens (a model that already is keeps its length classes) and the tokenizer's
    /// `<mask>` as the placeholder.
    fn prepare(
        &mut self,
        config: &mut ModelConfig,
        cfg: &TrainConfig,
        _data: &Path,
        tokenizer: &Tokenizer,
    ) -> Result<Option<BertHeads>> {
        let ModelConfig::Seq2Seq(c) = config else {
            return Err(does_not_fit("nat", config));
        };
        if c.family != Seq2SeqFamily::Wick {
            // transformers' classes have no length predictor to save it in.
            return Err(WickError::Unsupported(format!(
                "--objective nat trains wick's own encoder-decoder; a {} checkpoint saves in \
                 transformers' layout, which has no length predictor (use --objective seq2seq)",
                c.family.name()
            )));
        }
        let mask = tokenizer.token_to_id(Tokenizer::MASK).ok_or_else(|| {
            WickError::Unsupported(format!(
                "--objective nat needs a `{}` token, and {} has none (a tokenizer wick learns for --objective nat has one)",
                Tokenizer::MASK,
                tokenizer.source().display()
            ))
        })?;
        let max = *c
            .nat_max_length
            .get_or_insert(cfg.block_size.min(c.max_position_embeddings));
        if cfg.block_size > max {
            return Err(WickError::Unsupported(format!(
                "--block-size {} is over the model's longest target of {max} (nat_max_length)",
                cfg.block_size
            )));
        }
        c.mask_token_id = Some(mask);
        Ok(None)
    }

    fn build<'m>(self: Box<Self>, model: &'m Model, s: &Setup) -> Result<Built<'m>> {
        let Model::Seq2Seq(model) = model else {
            return Err(does_not_fit("nat", s.config));
        };
        let (cfg, c) = (s.cfg, model.config());
        let PairSplit {
            train,
            val,
            data_line,
        } = PairSplit::read(s)?;
        let mask = c.mask_token_id.expect("prepare set the mask token");
        // The held-out masks are seed 0's, as `wick eval` draws them: the same loss.
        let batches = |ps: &[(String, String)], seed, shuffle| -> Result<NatBatches> {
            let encoded = encode_pairs(s.tokenizer, ps, c.framing(), cfg.block_size)?;
            Ok(NatBatches::new(
                encoded,
                cfg.batch_size,
                seed,
                shuffle,
                c.pad_token_id,
                mask,
            ))
        };
        let task = NatTask {
            model,
            train: batches(&train, cfg.seed, true)?,
            val: (!val.is_empty())
                .then(|| batches(&val, 0, false))
                .transpose()?,
            label_smoothing: cfg.label_smoothing,
        };
        Ok(Built {
            task: Box::new(task),
            data_line,
            steps_per_epoch: super::steps_per_epoch(train.len(), cfg),
        })
    }
}

struct NatTask<'m> {
    model: &'m Seq2Seq,
    train: NatBatches,
    val: Option<NatBatches>,
    label_smoothing: f64,
}

impl Task for NatTask<'_> {
    fn train_loss(&mut self, n: usize, part: Part, device: &Device) -> Result<Tensor> {
        let b = self.train.batch(n, device)?.rows(part)?;
        Ok(nat_loss(self.model, &b, self.label_smoothing, true)?.total)
    }

    /// The loss over the whole held-out set (no smoothing, the same masks every time).
    fn evaluate(&mut self, _iters: usize, device: &Device) -> Result<Option<Eval>> {
        let Some(val) = &mut self.val else {
            return Ok(None);
        };
        let (loss, _length_accuracy) = nat_loss_over(self.model, val, device)?;
        Ok(Some(Eval::loss(loss)))
    }
}
