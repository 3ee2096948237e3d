//! Held-out figures over a whole split, in order: a causal LM's loss, a classifier's
//! loss, accuracy and macro-F1.

use std::sync::Arc;

use candle_core::Device;

use candle_core::D;

use super::loss::cross_entropy;
use crate::data::labeled::ClassifyBatches;
use crate::data::{LmBatches, TokenBuffer};
use crate::error::Result;
use crate::models::{Bert, Gpt2};

/// Mean next-token loss over every full window of tokens[start..start + len].
pub fn lm_loss_over(
    model: &Gpt2,
    tokens: Arc<TokenBuffer>,
    start: usize,
    len: usize,
    block_size: usize,
    batch_size: usize,
    device: &Device,
) -> Result<f64> {
    let mut windows = LmBatches::new(tokens, start, len, block_size, 1, 0, false)?;
    let n = windows.windows_per_epoch();
    let (mut total, mut count) = (0f64, 0usize);
    let mut i = 0;
    while i < n {
        let b = batch_size.min(n - i);
        let (xs, ys): (Vec<_>, Vec<_>) = (i..i + b)
            .map(|k| windows.batch(k, device))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let x = candle_core::Tensor::cat(&xs, 0)?;
        let y = candle_core::Tensor::cat(&ys, 0)?;
        let loss = super::shards::mean_loss(model, &x, &y)?;
        total += loss * b as f64;
        count += b;
        i += b;
    }
    Ok(total / count as f64)
}

/// Token-weighted mean cross-entropy of the encoder-decoder over every pair, in order.
pub fn seq2seq_loss_over(
    model: &crate::models::Seq2Seq,
    batches: &mut crate::data::pairs::PairBatches,
    device: &Device,
) -> Result<f64> {
    let (mut total, mut tokens) = (0f64, 0usize);
    for i in 0..batches.batches_per_pass() {
        let b = batches.batch(i, device)?;
        let logits = model.forward(
            &b.src,
            Some(&b.src_mask),
            &b.tgt_in,
            Some(&b.tgt_mask),
            false,
        )?;
        let n = b.tgt_mask.sum_all()?.to_scalar::<u32>()? as usize;
        total +=
            super::loss::masked_lm_loss(&logits, &b.labels)?.to_scalar::<f32>()? as f64 * n as f64;
        tokens += n;
    }
    Ok(total / tokens.max(1) as f64)
}

/// Held-out scores of a classifier.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClassifyScores {
    pub loss: f64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub examples: usize,
}

/// Mean of the per-class F1 over the classes that occur in the gold labels or the
/// predictions (scikit-learn's `f1_score(average="macro")`; a class never predicted
/// nor present is left out rather than counted as 0).
pub fn macro_f1(gold: &[u32], pred: &[u32], num_labels: usize) -> f64 {
    let mut tp = vec![0usize; num_labels];
    let mut fp = vec![0usize; num_labels];
    let mut fn_ = vec![0usize; num_labels];
    for (&g, &p) in gold.iter().zip(pred) {
        if g == p {
            tp[g as usize] += 1;
        } else {
            fp[p as usize] += 1;
            fn_[g as usize] += 1;
        }
    }
    let f1s: Vec<f64> = (0..num_labels)
        .filter(|&c| tp[c] + fp[c] + fn_[c] > 0)
        .map(|c| 2.0 * tp[c] as f64 / (2 * tp[c] + fp[c] + fn_[c]) as f64)
        .collect();
    if f1s.is_empty() {
        0.0
    } else {
        f1s.iter().sum::<f64>() / f1s.len() as f64
    }
}

/// Loss, accuracy and macro-F1 of a BERT classifier over every example, in order.
pub fn classify_over(
    model: &Bert,
    batches: &mut ClassifyBatches,
    device: &Device,
) -> Result<ClassifyScores> {
    let (mut loss, mut gold, mut pred) = (0f64, Vec::new(), Vec::new());
    for i in 0..batches.batches_per_pass() {
        let (x, tt, mask, y) = batches.batch(i, device)?;
        let logits =
            model.classifier_logits(&model.forward(&x, Some(&tt), Some(&mask), false)?, false)?;
        let b = y.dim(0)?;
        loss += cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * b as f64;
        pred.extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        gold.extend(y.to_vec1::<u32>()?);
    }
    let n = gold.len().max(1);
    let correct = gold.iter().zip(&pred).filter(|(g, p)| g == p).count();
    Ok(ClassifyScores {
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        macro_f1: macro_f1(&gold, &pred, model.config().labels().len()),
        examples: gold.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_matches_scikit_learn() {
        // sklearn.metrics.f1_score([0,0,1,1,2,2], [0,1,1,1,2,0], average="macro")
        // = mean(F1 of class 0, 1, 2) = mean(2/4, 4/5, 2/3) = 0.655555...
        let f = macro_f1(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 2, 0], 3);
        assert!((f - 0.655_555_556).abs() < 1e-6, "{f}");
        // A label absent from both sides does not count.
        assert_eq!(macro_f1(&[0, 1], &[0, 1], 5), 1.0);
    }
}
