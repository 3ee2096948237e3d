//! Masked language modelling (BERT): 15% of the tokens of each window are chosen, and
//! the model predicts them (BertForMaskedLM). The MLM head runs only at the chosen
//! positions.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::{bert_heads, does_not_fit, Built, Eval, Objective, Setup, Task, TokenSplit};
use crate::data::mlm::MlmBatches;
use crate::data::Part;
use crate::error::Result;
use crate::models::{Bert, BertHeads, Model, ModelConfig};
use crate::nn::loss::{cross_entropy, labelled_positions, masked_lm_loss};
use crate::tokenizer::{Special, Tokenizer};
use crate::train::config::TrainConfig;

pub struct Mlm;

impl Objective for Mlm {
    fn prepare(
        &mut self,
        config: &mut ModelConfig,
        _cfg: &TrainConfig,
        _data: &Path,
        _tokenizer: &Tokenizer,
    ) -> Result<Option<BertHeads>> {
        bert_heads(
            config,
            "mlm",
            "ForMaskedLM",
            BertHeads {
                pooler: false,
                mlm: true,
                classifier: false,
                nsp: false,
            },
        )
    }

    fn build<'m>(self: Box<Self>, model: &'m Model, s: &Setup) -> Result<Built<'m>> {
        let Model::Bert(model) = model else {
            return Err(does_not_fit("mlm", s.config));
        };
        let cfg = s.cfg;
        let split = TokenSplit::read(s, s.tokenizer.special(Special::Sep).map(|(_, id)| id))?;
        let masked = |start, len, seed| {
            MlmBatches::new(
                split.tokens.clone(),
                start,
                len,
                cfg.block_size,
                cfg.batch_size,
                seed,
                true,
                s.tokenizer,
                cfg.whole_word_mask,
            )
        };
        let task = MlmTask {
            model,
            train: masked(0, split.n_train, cfg.seed).map_err(super::split_error(s.data))?,
            val: split
                .has_val
                .then(|| masked(split.n_train, split.n_val, cfg.seed ^ 0x5eed))
                .transpose()?,
        };
        Ok(Built {
            steps_per_epoch: split.steps_per_epoch(cfg),
            data_line: split.line,
            task: Box::new(task),
        })
    }
}

struct MlmTask<'m> {
    model: &'m Bert,
    train: MlmBatches,
    val: Option<MlmBatches>,
}

impl Task for MlmTask<'_> {
    fn train_loss(&mut self, n: usize, part: Part, device: &Device) -> Result<Tensor> {
        let (x, y) = self.train.batch(n, device)?;
        let (x, y) = (part.rows(&x)?, part.rows(&y)?);
        mlm_loss(self.model, &self.model.forward(&x, None, None, true)?, &y)
    }

    fn evaluate(&mut self, iters: usize, device: &Device) -> Result<Option<Eval>> {
        let Some(val) = &mut self.val else {
            return Ok(None);
        };
        let mut total = 0f64;
        for i in 0..iters {
            let (x, y) = val.batch(i, device)?;
            let h = self.model.forward(&x, None, None, false)?;
            total += mlm_loss(self.model, &h, &y)?.to_scalar::<f32>()? as f64;
        }
        Ok(Some(Eval::loss(total / iters as f64)))
    }
}

/// Masked-LM loss of hidden states (B, T, H) against labels (B, T): the head (a
/// transform and a projection onto the whole vocabulary, most of a small BERT's
/// training step) runs only where a token was masked, not at every position.
pub(super) fn mlm_loss(model: &Bert, h: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(match labelled_positions(h, labels)? {
        Some((h, labels)) => cross_entropy(&model.mlm_logits(&h)?, &labels)?,
        None => masked_lm_loss(&model.mlm_logits(h)?, labels)?, // nothing masked: 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::WeightSource;
    use crate::labels::IGNORE;
    use candle_core::backprop::GradStore;
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
