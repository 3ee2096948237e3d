//! BERT's original pretraining (BertForPreTraining): each example is `[CLS] A [SEP] B
//! [SEP]` with B the next sentence of A's document half of the time and a sentence of
//! another document otherwise, masked as for MLM; the loss is MLM + NSP.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use super::mlm::mlm_loss;
use super::{bert_heads, does_not_fit, Built, Eval, Objective, Setup, Task};
use crate::data::nsp::{draw_pairs, split_sentences, NspBatch, NspBatches, IS_NEXT};
use crate::data::read_documents;
use crate::data::Part;
use crate::error::{Result, WickError};
use crate::models::{Bert, BertHeads, EncoderFamily, Model, ModelConfig};
use crate::nn::loss::cross_entropy;
use crate::tokenizer::Tokenizer;
use crate::train::config::TrainConfig;

pub struct MlmNsp;

impl Objective for MlmNsp {
    fn prepare(
        &mut self,
        config: &mut ModelConfig,
        _cfg: &TrainConfig,
        _data: &Path,
        _tokenizer: &Tokenizer,
    ) -> Result<Option<BertHeads>> {
        if matches!(config, ModelConfig::Bert(c) if c.family != EncoderFamily::Bert) {
            // RoBERTa dropped next-sentence prediction; DistilBERT has no pooler for it.
            return Err(does_not_fit("mlm+nsp", config));
        }
        bert_heads(
            config,
            "mlm+nsp",
            "ForPreTraining",
            BertHeads {
                pooler: true,
                mlm: true,
                classifier: false,
                nsp: true,
            },
        )
    }

    fn build<'m>(self: Box<Self>, model: &'m Model, s: &Setup) -> Result<Built<'m>> {
        let Model::Bert(model) = model else {
            return Err(does_not_fit("mlm+nsp", s.config));
        };
        let (cfg, data, tokenizer) = (s.cfg, s.data, s.tokenizer);
        // Documents, not sentences, are split: a held-out pair never shares a
        // document with a training pair.
        let mut docs: Vec<Vec<Vec<u32>>> = split_sentences(&read_documents(data)?)
            .iter()
            .map(|d| {
                d.iter()
                    .map(|s| tokenizer.encode(s, false))
                    .filter(|t| t.as_ref().map_or(true, |t| !t.is_empty()))
                    .collect::<Result<Vec<_>>>()
            })
            .filter(|d| d.as_ref().map_or(true, |d| !d.is_empty()))
            .collect::<Result<_>>()?;
        docs.shuffle(&mut StdRng::seed_from_u64(cfg.seed));
        let n_val = ((docs.len() as f64) * cfg.val_fraction).round() as usize;
        let val_docs = if n_val >= 2 && docs.len() - n_val >= 2 {
            docs.split_off(docs.len() - n_val)
        } else {
            vec![]
        };
        let max_tokens = cfg
            .block_size
            .checked_sub(3)
            .filter(|&n| n >= 2)
            .ok_or_else(|| {
                WickError::Unsupported("--block-size must be at least 5 for mlm+nsp".into())
            })?;
        let pairs = draw_pairs(&docs, max_tokens, cfg.seed)
            .map_err(|e| WickError::Unsupported(format!("{}: {e}", data.display())))?;
        let val_pairs = if val_docs.is_empty() {
            vec![]
        } else {
            draw_pairs(&val_docs, max_tokens, cfg.seed ^ 0x5eed)?
        };
        let data_line = format!(
            "{} documents, {} sentence pairs ({:.0}% IsNext), {} held-out pairs from {} documents",
            docs.len(),
            pairs.len(),
            100.0 * pairs.iter().filter(|p| p.label == IS_NEXT).count() as f64 / pairs.len() as f64,
            val_pairs.len(),
            val_docs.len()
        );
        let steps_per_epoch = super::steps_per_epoch(pairs.len(), cfg);
        let batches = |p, shuffle, seed| {
            NspBatches::new(
                p,
                tokenizer,
                cfg.whole_word_mask,
                cfg.batch_size,
                seed,
                shuffle,
            )
        };
        let task = MlmNspTask {
            model,
            train: batches(pairs, true, cfg.seed)?,
            val: (!val_pairs.is_empty())
                .then(|| batches(val_pairs, false, cfg.seed ^ 0x5eed))
                .transpose()?,
        };
        Ok(Built {
            task: Box::new(task),
            data_line,
            steps_per_epoch,
        })
    }
}

struct MlmNspTask<'m> {
    model: &'m Bert,
    train: NspBatches,
    val: Option<NspBatches>,
}

impl Task for MlmNspTask<'_> {
    fn train_loss(&mut self, n: usize, part: Part, device: &Device) -> Result<Tensor> {
        let b = self.train.batch(n, device)?.rows(part)?;
        let (mlm, nsp, _) = losses(self.model, &b, true)?;
        Ok((mlm + nsp)?)
    }

    /// The whole validation set, in order: the summed loss and NSP accuracy.
    fn evaluate(&mut self, _iters: usize, device: &Device) -> Result<Option<Eval>> {
        let Some(val) = &mut self.val else {
            return Ok(None);
        };
        let (mut loss, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let n = val.batches_per_pass();
        for i in 0..n {
            let b = val.batch(i, device)?;
            let (mlm, nsp, right) = losses(self.model, &b, false)?;
            loss += (mlm + nsp)?.to_scalar::<f32>()? as f64;
            correct += right;
            seen += b.nsp_labels.dim(0)?;
        }
        Ok(Some(Eval {
            loss: loss / n as f64,
            accuracy: Some(correct as f64 / seen as f64),
            ..Default::default()
        }))
    }
}

/// The masked-LM and next-sentence losses of a batch (BertForPreTraining's total loss is
/// their sum), and how many next-sentence labels the model got right.
fn losses(model: &Bert, b: &NspBatch, train: bool) -> Result<(Tensor, Tensor, usize)> {
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
