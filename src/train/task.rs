//! What is being learned: the objective, its model head and its batches. The training
//! loop asks a task for the loss of micro-batch n and for held-out loss (and accuracy);
//! everything objective-specific lives here.

use std::sync::Arc;

use rand::{rngs::StdRng, Rng, SeedableRng};

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::loss::{cross_entropy, labelled_positions, lm_loss, masked_lm_loss, smoothed_loss};
use super::shards;
use crate::data::labeled::ClassifyBatches;
use crate::data::mlm::MlmBatches;
use crate::data::nsp::{NspBatch, NspBatches};
use crate::data::pairs::PairBatches;
use crate::data::{LmBatches, TokenBuffer};
use crate::error::Result;
use crate::models::{Bert, Gpt2, Seq2Seq};

pub enum Task<'m> {
    /// Next-token prediction with GPT-2.
    Clm {
        model: &'m Gpt2,
        train: LmBatches,
        val: Option<LmBatches>,
        /// (tokens, start, len, block, batch) of the validation split, for the final pass.
        val_split: Option<(Arc<TokenBuffer>, usize, usize, usize, usize)>,
    },
    /// Masked-token prediction with BERT's MLM head.
    Mlm {
        model: &'m Bert,
        train: MlmBatches,
        val: Option<MlmBatches>,
    },
    /// BERT's pretraining: masked LM plus next-sentence prediction on sentence pairs.
    MlmNsp {
        model: &'m Bert,
        train: NspBatches,
        val: Option<NspBatches>,
    },
    /// Translation with the encoder-decoder, teacher-forced.
    Seq2Seq {
        model: &'m Seq2Seq,
        train: PairBatches,
        val: Option<PairBatches>,
        label_smoothing: f64,
        /// Probability of feeding the decoder its own previous prediction instead of
        /// the gold token (scheduled sampling; 0 = pure teacher forcing).
        scheduled_sampling: f64,
        seed: u64,
    },
    /// Sequence classification with BERT's [CLS] head.
    Classify {
        model: &'m Bert,
        train: ClassifyBatches,
        val: Option<ClassifyBatches>,
    },
}

/// Held-out results.
#[derive(Debug, Clone, Copy)]
pub struct Eval {
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
}

impl Task<'_> {
    /// Loss of training micro-batch `n` and the gradients of `vars`, the loss scaled by
    /// `weight` (1 / grad_accum) before the backward pass; dropout seeded from `seed`.
    /// A causal LM's batch runs as shards side by side ([`super::shards`]); other
    /// objectives weigh positions unevenly (masked tokens, padding) and run whole.
    pub fn train_grads(
        &mut self,
        n: usize,
        weight: f64,
        seed: u64,
        vars: &[(String, Var)],
        device: &Device,
    ) -> Result<(f64, GradStore)> {
        if let Task::Clm { model, train, .. } = self {
            let (x, y) = train.batch(n, device)?;
            return shards::loss_and_grads(model, &x, &y, weight, seed, vars);
        }
        crate::nn::seed_dropout(seed);
        let loss = self.train_loss(n, device)?;
        shards::backward(&loss, weight)
    }

    /// Loss of training micro-batch `n`, dropout on.
    pub fn train_loss(&mut self, n: usize, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Task::Clm { model, train, .. } => {
                let (x, y) = train.batch(n, device)?;
                lm_loss(&model.forward(&x, None, None, true)?, &y)?
            }
            Task::Mlm { model, train, .. } => {
                let (x, y) = train.batch(n, device)?;
                mlm_loss(model, &model.forward(&x, None, None, true)?, &y)?
            }
            Task::MlmNsp { model, train, .. } => {
                let (mlm, nsp, _) = mlm_nsp_losses(model, &train.batch(n, device)?, true)?;
                (mlm + nsp)?
            }
            Task::Classify { model, train, .. } => {
                let (x, tt, mask, y) = train.batch(n, device)?;
                let h = model.forward(&x, Some(&tt), Some(&mask), true)?;
                cross_entropy(&model.classifier_logits(&h, true)?, &y)?
            }
            Task::Seq2Seq {
                model,
                train,
                label_smoothing,
                scheduled_sampling,
                seed,
                ..
            } => {
                let b = train.batch(n, device)?;
                let tgt_in = if *scheduled_sampling > 0.0 {
                    let mut rng = StdRng::seed_from_u64(
                        *seed ^ 0x5353 ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    );
                    scheduled_inputs(model, &b, *scheduled_sampling, &mut rng)?
                } else {
                    b.tgt_in.clone()
                };
                let logits =
                    model.forward(&b.src, Some(&b.src_mask), &tgt_in, Some(&b.tgt_mask), true)?;
                smoothed_loss(&logits, &b.labels, *label_smoothing)?
            }
        })
    }

    /// Mean loss over the first `iters` validation batches (the same ones every time);
    /// classification and translation evaluate their whole validation set.
    pub fn evaluate(&mut self, iters: usize, device: &Device) -> Result<Option<Eval>> {
        match self {
            Task::Seq2Seq {
                model,
                val: Some(val),
                ..
            } => Ok(Some(Eval {
                loss: super::evaluate::seq2seq_loss_over(model, val, device)?,
                accuracy: None,
                macro_f1: None,
            })),
            Task::Clm {
                model,
                val: Some(val),
                ..
            } => {
                let mut total = 0f64;
                for i in 0..iters {
                    let (x, y) = val.batch(i, device)?;
                    total += shards::mean_loss(model, &x, &y)?;
                }
                Ok(Some(Eval {
                    loss: total / iters as f64,
                    accuracy: None,
                    macro_f1: None,
                }))
            }
            Task::Mlm {
                model,
                val: Some(val),
                ..
            } => {
                let mut total = 0f64;
                for i in 0..iters {
                    let (x, y) = val.batch(i, device)?;
                    let h = model.forward(&x, None, None, false)?;
                    total += mlm_loss(model, &h, &y)?.to_scalar::<f32>()? as f64;
                }
                Ok(Some(Eval {
                    loss: total / iters as f64,
                    accuracy: None,
                    macro_f1: None,
                }))
            }
            Task::MlmNsp {
                model,
                val: Some(val),
                ..
            } => {
                // The whole validation set, in order: summed loss and NSP accuracy.
                let (mut loss, mut correct, mut seen) = (0f64, 0usize, 0usize);
                let n = val.batches_per_pass();
                for i in 0..n {
                    let b = val.batch(i, device)?;
                    let (mlm, nsp, right) = mlm_nsp_losses(model, &b, false)?;
                    loss += (mlm + nsp)?.to_scalar::<f32>()? as f64;
                    correct += right;
                    seen += b.nsp_labels.dim(0)?;
                }
                Ok(Some(Eval {
                    loss: loss / n as f64,
                    accuracy: Some(correct as f64 / seen as f64),
                    macro_f1: None,
                }))
            }
            Task::Classify {
                model,
                val: Some(val),
                ..
            } => {
                let s = super::evaluate::classify_over(model, val, device)?;
                Ok(Some(Eval {
                    loss: s.loss,
                    accuracy: Some(s.accuracy),
                    macro_f1: Some(s.macro_f1),
                }))
            }
            _ => Ok(None),
        }
    }

    /// The held-out figure reported at the end: a causal LM's loss over its whole
    /// validation split; otherwise what `evaluate` gives.
    pub fn final_eval(&mut self, iters: usize, device: &Device) -> Result<Option<Eval>> {
        if let Task::Clm {
            model,
            val_split: Some((tokens, start, len, block, batch)),
            ..
        } = self
        {
            let loss = super::evaluate::lm_loss_over(
                model,
                tokens.clone(),
                *start,
                *len,
                *block,
                *batch,
                device,
            )?;
            return Ok(Some(Eval {
                loss,
                accuracy: None,
                macro_f1: None,
            }));
        }
        self.evaluate(iters, device)
    }

    /// The causal LM, when the task has one (for the end-of-run sample).
    pub fn causal_lm(&self) -> Option<&Gpt2> {
        match self {
            Task::Clm { model, .. } => Some(model),
            _ => None,
        }
    }
}

/// Masked-LM loss of hidden states (B, T, H) against labels (B, T): the head (a
/// transform and a projection onto the whole vocabulary, most of a small BERT's
/// training step) runs only where a token was masked, not at every position.
fn mlm_loss(model: &Bert, h: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(match labelled_positions(h, labels)? {
        Some((h, labels)) => cross_entropy(&model.mlm_logits(&h)?, &labels)?,
        None => masked_lm_loss(&model.mlm_logits(h)?, labels)?, // nothing masked: 0
    })
}

/// The masked-LM and next-sentence losses of a batch (BertForPreTraining's total loss is
/// their sum), and how many next-sentence labels the model got right.
fn mlm_nsp_losses(model: &Bert, b: &NspBatch, train: bool) -> Result<(Tensor, Tensor, usize)> {
    let h = model.forward(&b.ids, Some(&b.token_types), Some(&b.mask), train)?;
    let mlm = mlm_loss(model, &h, &b.mlm_labels)?;
    let nsp_logits = model.nsp_logits(&h)?; // (B, 2)
    let nsp = cross_entropy(&nsp_logits, &b.nsp_labels)?;
    let pred = nsp_logits
        .argmax(candle_core::D::Minus1)?
        .to_vec1::<u32>()?;
    let gold = b.nsp_labels.to_vec1::<u32>()?;
    let right = pred.iter().zip(&gold).filter(|(p, g)| p == g).count();
    Ok((mlm, nsp, right))
}

/// Scheduled sampling (Bengio et al. 2015, in the two-pass form used for Transformers):
/// a teacher-forced pass without gradient predicts every position; each decoder input
/// after BOS is then replaced, with probability `p`, by the prediction for it.
fn scheduled_inputs(
    model: &Seq2Seq,
    b: &crate::data::pairs::PairBatch,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::WeightSource;
    use crate::labels::IGNORE;
    use crate::models::{BertHeads, Model, ModelConfig};
    use candle_core::DType;

    #[test]
    fn mlm_loss_on_masked_positions_equals_the_full_head() {
        let cfg = serde_json::json!({"model_type": "bert", "vocab_size": 13, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 8});
        let cfg = ModelConfig::from_value(&cfg, std::path::Path::new("<test>")).unwrap();
        let w = WeightSource::from_scratch().with_seed(5);
        let heads = BertHeads {
            pooler: false,
            mlm: true,
            classifier: false,
            nsp: false,
        };
        let vb = w.var_builder(DType::F32, &Device::Cpu);
        let Model::Bert(m) = Model::build(&cfg, Some(heads), vb).unwrap() else {
            unreachable!()
        };
        let dev = Device::Cpu;
        let x = Tensor::new(&[[2u32, 5, 4, 9, 3], [2, 7, 4, 3, 1]], &dev).unwrap();
        let i = IGNORE;
        for labels in [[[i, 6, i, 12, i], [11, i, i, i, 1]], [[i; 5], [i; 5]]] {
            let y = Tensor::new(&labels, &dev).unwrap();
            let h = m.forward(&x, None, None, false).unwrap();
            let cut = mlm_loss(&m, &h, &y).unwrap();
            let full = masked_lm_loss(&m.mlm_logits(&h).unwrap(), &y).unwrap();
            let (a, b) = (
                cut.to_scalar::<f32>().unwrap(),
                full.to_scalar::<f32>().unwrap(),
            );
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            let (ga, gb) = (cut.backward().unwrap(), full.backward().unwrap());
            for (name, v) in w.vars() {
                let values = |g: &GradStore| -> Vec<f32> {
                    g.get(&v)
                        .map_or(vec![], |t| t.flatten_all().unwrap().to_vec1().unwrap())
                };
                let (p, q) = (values(&ga), values(&gb));
                assert_eq!(p.len(), q.len(), "{name}");
                for (p, q) in p.iter().zip(&q) {
                    assert!((p - q).abs() < 1e-5, "{name}: {p} vs {q}");
                }
            }
        }
    }
}
