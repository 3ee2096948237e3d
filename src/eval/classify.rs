//! A classifier's held-out loss, accuracy and macro-F1 over every example, in order.

use candle_core::{Device, D};

use crate::data::labeled::ClassifyBatches;
use crate::error::Result;
use crate::models::Bert;
use crate::nn::loss::cross_entropy;

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
