//! Sequence classification (BertForSequenceClassification): a linear head on the pooled
//! [CLS] state; cross-entropy over the labels with accuracy and macro-F1 held out, or
//! for multi-label data (comma-separated label cells, transformers'
//! `multi_label_classification`) a sigmoid per label with binary cross-entropy and
//! micro-/macro-F1 and exact match held out. The labels found in the data (or named by
//! `--label-names`) size the head, so the examples are read before the model is built.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use super::{does_not_fit, held_out, Built, Eval, Objective, Setup, Task};
use crate::data::labeled::{
    label_set, looks_multi_label, read_examples, read_label_names, ClassifyBatches, Example,
};
use crate::data::Part;
use crate::error::Result;
use crate::eval::{classify_over, multi_label_over, Thresholds};
use crate::models::bert::MULTI_LABEL;
use crate::models::{Bert, BertHeads, Model, ModelConfig};
use crate::nn::kernels::parallel::shard_count;
use crate::nn::loss::{bce_with_logits, cross_entropy};
use crate::tokenizer::Tokenizer;
use crate::train::config::TrainConfig;
use crate::train::shards;

/// The training examples, once [`Objective::prepare`] has read them.
#[derive(Default)]
pub struct Classify {
    examples: Vec<Example>,
}

impl Objective for Classify {
    fn prepare(
        &mut self,
        config: &mut ModelConfig,
        cfg: &TrainConfig,
        data: &Path,
        _tokenizer: &Tokenizer,
    ) -> Result<Option<BertHeads>> {
        let ModelConfig::Bert(c) = config else {
            return Err(does_not_fit("classify", config));
        };
        self.examples = read_examples(data, &cfg.columns())?;
        let multi = cfg.multi_label || c.multi_label() || looks_multi_label(&self.examples);
        let existing = match &cfg.label_names {
            Some(f) => read_label_names(f)?,
            None => c.labels(),
        };
        let labels = label_set(&self.examples, &existing, data, multi)?;
        c.set_labels(&labels);
        c.problem_type = multi.then(|| MULTI_LABEL.to_string());
        c.architecture = Some(c.family.class("ForSequenceClassification"));
        Ok(Some(BertHeads {
            pooler: c.family.classifier_uses_pooler(),
            mlm: false,
            classifier: true,
            nsp: false,
        }))
    }

    fn build<'m>(self: Box<Self>, model: &'m Model, s: &Setup) -> Result<Built<'m>> {
        let Model::Bert(model) = model else {
            return Err(does_not_fit("classify", s.config));
        };
        let cfg = s.cfg;
        let mut examples = self.examples;
        let labels = model.config().labels();
        let multi = model.config().multi_label();
        let eval_source = cfg.eval_data.as_deref().unwrap_or(s.data);
        let eval_examples = match &cfg.eval_data {
            Some(p) => read_examples(p, &cfg.columns())?,
            None => {
                // A seeded shuffle, then the last val_fraction held out.
                examples.shuffle(&mut StdRng::seed_from_u64(cfg.seed));
                let n_val = held_out(examples.len(), cfg);
                examples.split_off(examples.len() - n_val)
            }
        };
        label_set(&eval_examples, &labels, eval_source, multi)?;
        let pad = model.config().pad_token_id.unwrap_or(0);
        let data_line = format!(
            "{} examples, {} labels{} ({}), {} held out{}",
            examples.len(),
            labels.len(),
            if multi { ", multi-label" } else { "" },
            labels.join(", "),
            eval_examples.len(),
            cfg.eval_data
                .as_ref()
                .map(|p| format!(" from {}", p.display()))
                .unwrap_or_default()
        );
        let steps_per_epoch = super::steps_per_epoch(examples.len(), cfg);
        let batches = |ex: &[Example], shuffle| {
            ClassifyBatches::new(
                ex,
                &labels,
                s.tokenizer,
                cfg.block_size,
                cfg.batch_size,
                cfg.seed,
                shuffle,
                pad,
                multi,
            )
        };
        let task = ClassifyTask {
            model,
            shards: shard_count(cfg.batch_size, s.device),
            threshold: multi.then_some(cfg.threshold),
            train: batches(&examples, true)?,
            val: (!eval_examples.is_empty())
                .then(|| batches(&eval_examples, false))
                .transpose()?,
        };
        Ok(Built {
            task: Box::new(task),
            data_line,
            steps_per_epoch,
        })
    }
}

struct ClassifyTask<'m> {
    model: &'m Bert,
    /// How many shards a batch runs as, side by side.
    shards: usize,
    /// Multi-label: the probability from which a label is predicted.
    threshold: Option<f64>,
    train: ClassifyBatches,
    val: Option<ClassifyBatches>,
}

impl ClassifyTask<'_> {
    /// `part`'s rows of training batch `n`: (ids, token types, mask, labels).
    fn rows(&mut self, n: usize, part: Part, device: &Device) -> Result<[Tensor; 4]> {
        let (x, tt, mask, y) = self.train.batch(n, device)?;
        Ok([
            part.rows(&x)?,
            part.rows(&tt)?,
            part.rows(&mask)?,
            part.rows(&y)?,
        ])
    }
}

/// The mean loss of a batch's rows [ids, token types, mask, labels]: every row weighs
/// the same (cross-entropy over rows; binary cross-entropy over rows and labels).
fn loss(model: &Bert, multi_label: bool, rows: &[Tensor]) -> Result<Tensor> {
    let [x, tt, mask, y] = rows else {
        unreachable!("four inputs")
    };
    let h = model.forward(x, Some(tt), Some(mask), true)?;
    let logits = model.classifier_logits(&h, true)?; // (B, labels)
    Ok(match multi_label {
        true => bce_with_logits(&logits, y)?,
        false => cross_entropy(&logits, y)?,
    })
}

impl Task for ClassifyTask<'_> {
    fn train_loss(&mut self, n: usize, part: Part, device: &Device) -> Result<Tensor> {
        loss(
            self.model,
            self.threshold.is_some(),
            &self.rows(n, part, device)?,
        )
    }

    /// The batch as shards side by side on the CPU (`train/shards.rs`), each with its
    /// own dropout seed: a fine-tune's batch of short texts is too small for one
    /// product to split well over the cores.
    fn train_grads(
        &mut self,
        n: usize,
        part: Part,
        weight: f64,
        seed: u64,
        vars: &[(String, Var)],
        device: &Device,
    ) -> Result<(f64, GradStore)> {
        let [x, tt, mask, y] = self.rows(n, part, device)?;
        let (model, multi) = (self.model, self.threshold.is_some());
        shards::grads_over(&[&x, &tt, &mask, &y], weight, seed, vars, |t| {
            loss(model, multi, t)
        })
    }

    fn shards(&self) -> usize {
        self.shards
    }

    /// The whole validation set: loss, accuracy and macro-F1.
    fn evaluate(&mut self, _iters: usize, device: &Device) -> Result<Option<Eval>> {
        let Some(val) = &mut self.val else {
            return Ok(None);
        };
        if let Some(t) = self.threshold {
            let s = multi_label_over(self.model, val, &Thresholds::All(t), device)?;
            return Ok(Some(Eval {
                loss: s.loss,
                macro_f1: Some(s.macro_f1),
                micro_f1: Some(s.micro_f1),
                exact_match: Some(s.exact_match),
                ..Default::default()
            }));
        }
        let s = classify_over(self.model, val, device)?;
        Ok(Some(Eval {
            loss: s.loss,
            accuracy: Some(s.accuracy),
            macro_f1: Some(s.macro_f1),
            ..Default::default()
        }))
    }
}
