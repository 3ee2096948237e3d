//! Sequence classification with a BERT classification head, batched.

use std::collections::BTreeMap;

use candle_core::{Device, D};
use serde::Serialize;

use super::embed::encode_all;
use crate::data::{pad_batch, Padding};
use crate::error::Result;
use crate::eval::Thresholds;
use crate::models::Bert;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    /// Every label predicted: the top one, or for a multi-label model each whose
    /// sigmoid reaches the threshold (possibly none).
    pub labels: Vec<String>,
    /// The most probable label and its probability.
    pub label: String,
    pub score: f32,
    /// Each label's probability: a softmax over the labels, or per-label sigmoids.
    pub scores: BTreeMap<String, f32>,
    #[serde(skip)]
    pub logits: Vec<f32>,
}

/// Classifies the texts as one padded batch, each cut to `max_length` tokens (default:
/// the model's context). A multi-label model predicts each label whose probability
/// reaches its threshold.
pub fn classify(
    model: &Bert,
    tok: &Tokenizer,
    texts: &[String],
    max_length: Option<usize>,
    threshold: &Thresholds,
    device: &Device,
) -> Result<Vec<Classification>> {
    let max_length = max_length.unwrap_or(model.config().max_tokens());
    let seqs = encode_all(tok, texts, max_length)?;
    let pad = model.config().pad_token_id.unwrap_or(0);
    let (ids, mask) = pad_batch(&seqs, pad, Padding::Right, device)?;
    let hidden = model.forward(&ids, None, Some(&mask), false)?;
    let logits = model.classifier_logits(&hidden, false)?; // (B, num_labels)
    let multi = model.config().multi_label();
    let probs = match multi {
        true => candle_nn::ops::sigmoid(&logits)?,
        false => candle_nn::ops::softmax(&logits, D::Minus1)?,
    }
    .to_vec2::<f32>()?;
    let labels = model.config().labels();
    Ok(probs
        .into_iter()
        .zip(logits.to_vec2::<f32>()?)
        .map(|(p, logits)| {
            let best = (0..p.len())
                .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                .unwrap_or(0);
            let predicted = match multi {
                true => (0..p.len())
                    .filter(|&k| p[k] as f64 >= threshold.at(k))
                    .map(|k| labels[k].clone())
                    .collect(),
                false => vec![labels[best].clone()],
            };
            Classification {
                labels: predicted,
                label: labels[best].clone(),
                score: p[best],
                scores: labels.iter().cloned().zip(p.iter().copied()).collect(),
                logits,
            }
        })
        .collect())
}
