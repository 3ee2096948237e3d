//! A classifier's held-out figures over every example, in order: loss, accuracy and
//! macro-F1 for one label per text; for multi-label (a sigmoid per label) loss,
//! micro- and macro-F1, exact match and each label's F1.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, D};

use crate::data::labeled::ClassifyBatches;
use crate::error::{Result, WickError};
use crate::models::Bert;
use crate::nn::loss::{bce_with_logits, cross_entropy};

/// Held-out scores of a classifier.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClassifyScores {
    pub loss: f64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub examples: usize,
}

/// F1 from true positives, false positives and false negatives: 2tp / (2tp + fp + fn),
/// 0 when there are none of the three (scikit-learn's zero_division=0).
fn f1(tp: usize, fp: usize, fn_: usize) -> f64 {
    match 2 * tp + fp + fn_ {
        0 => 0.0,
        d => 2.0 * tp as f64 / d as f64,
    }
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
        .map(|c| f1(tp[c], fp[c], fn_[c]))
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

/// Where a label's sigmoid counts as predicted: one threshold for every label, or one
/// per label (tuned on held-out data: rare labels rarely reach 0.5).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Thresholds {
    All(f64),
    PerLabel(Vec<f64>),
}

impl Thresholds {
    pub fn at(&self, label: usize) -> f64 {
        match self {
            Thresholds::All(t) => *t,
            Thresholds::PerLabel(ts) => ts[label],
        }
    }

    /// A `thresholds.json` ({label: threshold}) for the model's `labels`.
    pub fn load(path: &Path, labels: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
        let map: BTreeMap<String, f64> =
            serde_json::from_str(&text).map_err(|e| WickError::config(path, e.to_string()))?;
        let ts = labels
            .iter()
            .map(|l| {
                map.get(l)
                    .copied()
                    .filter(|t| (0.0..=1.0).contains(t))
                    .ok_or_else(|| {
                        WickError::config(path, format!("no threshold in [0, 1] for label `{l}`"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Thresholds::PerLabel(ts))
    }

    /// Writes {label: threshold} to `path`, atomically.
    pub fn save(&self, path: &Path, labels: &[String]) -> Result<()> {
        let map: BTreeMap<&str, f64> = labels
            .iter()
            .enumerate()
            .map(|(k, l)| (l.as_str(), self.at(k)))
            .collect();
        let json = serde_json::to_string_pretty(&map).expect("thresholds serialise");
        crate::files::atomic_write(path, json.as_bytes())
    }
}

/// Held-out scores of a multi-label classifier at its thresholds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MultiLabelScores {
    pub loss: f64,
    /// F1 of every (example, label) decision pooled.
    pub micro_f1: f64,
    /// Mean of the labels' F1, every label counted (0 for a label never present nor
    /// predicted, as scikit-learn's `f1_score(average="macro")`).
    pub macro_f1: f64,
    /// Fraction of examples whose predicted label set is exactly the gold one.
    pub exact_match: f64,
    pub threshold: Thresholds,
    pub examples: usize,
    /// Each label's F1 and how many examples carry it.
    pub per_label: Vec<LabelF1>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelF1 {
    pub label: String,
    pub f1: f64,
    pub support: usize,
}

/// Multi-label figures from gold and predicted 0/1 rows (examples × labels).
pub fn multi_label_scores(
    gold: &[Vec<bool>],
    pred: &[Vec<bool>],
    labels: &[String],
) -> (f64, f64, f64, Vec<LabelF1>) {
    let c = labels.len();
    let (mut tp, mut fp, mut fn_) = (vec![0usize; c], vec![0usize; c], vec![0usize; c]);
    let mut exact = 0;
    for (g, p) in gold.iter().zip(pred) {
        exact += usize::from(g == p);
        for k in 0..c {
            match (g[k], p[k]) {
                (true, true) => tp[k] += 1,
                (false, true) => fp[k] += 1,
                (true, false) => fn_[k] += 1,
                (false, false) => {}
            }
        }
    }
    let per_label: Vec<LabelF1> = (0..c)
        .map(|k| LabelF1 {
            label: labels[k].clone(),
            f1: f1(tp[k], fp[k], fn_[k]),
            support: tp[k] + fn_[k],
        })
        .collect();
    let micro = f1(tp.iter().sum(), fp.iter().sum(), fn_.iter().sum());
    let macro_ = per_label.iter().map(|l| l.f1).sum::<f64>() / c.max(1) as f64;
    (
        micro,
        macro_,
        exact as f64 / gold.len().max(1) as f64,
        per_label,
    )
}

/// The threshold of 0.05, 0.10, …, 0.95 at which one label's (probability, gold)
/// pairs have the highest F1; ties go to the one nearest 0.5.
fn best_threshold(column: &[(f32, bool)]) -> f64 {
    let f1_at = |t: f64| {
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for &(p, g) in column {
            match (p as f64 >= t, g) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
        f1(tp, fp, fn_)
    };
    (1..20)
        .map(|i| (i * 5) as f64 / 100.0)
        .max_by(|&a, &b| {
            f1_at(a)
                .total_cmp(&f1_at(b))
                .then((b - 0.5).abs().total_cmp(&(a - 0.5).abs()))
        })
        .unwrap_or(0.5)
}

/// The mean loss, each example's sigmoids and each example's gold labels.
type Probs = (f64, Vec<Vec<f32>>, Vec<Vec<bool>>);

/// A multi-label classifier over every example: the mean loss, each example's
/// sigmoids and its gold labels.
fn multi_label_probs(
    model: &Bert,
    batches: &mut ClassifyBatches,
    device: &Device,
) -> Result<Probs> {
    let (mut loss, mut probs, mut gold) = (0f64, Vec::new(), Vec::new());
    for i in 0..batches.batches_per_pass() {
        let (x, tt, mask, y) = batches.batch(i, device)?;
        let logits =
            model.classifier_logits(&model.forward(&x, Some(&tt), Some(&mask), false)?, false)?;
        let b = y.dim(0)?;
        loss += bce_with_logits(&logits, &y)?.to_scalar::<f32>()? as f64 * b as f64;
        probs.extend(candle_nn::ops::sigmoid(&logits)?.to_vec2::<f32>()?);
        gold.extend(
            y.to_vec2::<f32>()?
                .iter()
                .map(|r| r.iter().map(|&v| v > 0.5).collect::<Vec<_>>()),
        );
    }
    Ok((loss / gold.len().max(1) as f64, probs, gold))
}

fn scores_at(
    loss: f64,
    probs: &[Vec<f32>],
    gold: &[Vec<bool>],
    labels: &[String],
    threshold: Thresholds,
) -> MultiLabelScores {
    let pred: Vec<Vec<bool>> = probs
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(k, &p)| p as f64 >= threshold.at(k))
                .collect()
        })
        .collect();
    let (micro_f1, macro_f1, exact_match, per_label) = multi_label_scores(gold, &pred, labels);
    MultiLabelScores {
        loss,
        micro_f1,
        macro_f1,
        exact_match,
        threshold,
        examples: gold.len(),
        per_label,
    }
}

/// Loss, micro-/macro-F1 and exact match of a multi-label classifier over every
/// example, a label predicted when its sigmoid reaches its threshold.
pub fn multi_label_over(
    model: &Bert,
    batches: &mut ClassifyBatches,
    threshold: &Thresholds,
    device: &Device,
) -> Result<MultiLabelScores> {
    let (loss, probs, gold) = multi_label_probs(model, batches, device)?;
    Ok(scores_at(
        loss,
        &probs,
        &gold,
        &model.config().labels(),
        threshold.clone(),
    ))
}

/// Each label's threshold chosen on these examples (the one of 0.05, 0.10, …, 0.95
/// that maximises the label's F1; ties to the one nearest 0.5), and the figures there.
pub fn tune_thresholds(
    model: &Bert,
    batches: &mut ClassifyBatches,
    device: &Device,
) -> Result<MultiLabelScores> {
    let (loss, probs, gold) = multi_label_probs(model, batches, device)?;
    let labels = model.config().labels();
    let best = (0..labels.len())
        .map(|k| {
            let column: Vec<(f32, bool)> =
                probs.iter().zip(&gold).map(|(p, g)| (p[k], g[k])).collect();
            best_threshold(&column)
        })
        .collect();
    Ok(scores_at(
        loss,
        &probs,
        &gold,
        &labels,
        Thresholds::PerLabel(best),
    ))
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

    #[test]
    fn multi_label_scores_match_scikit_learn() {
        // y_true = [[1,0,1],[0,1,0],[1,1,0]], y_pred = [[1,0,0],[0,1,0],[1,0,1]]:
        // f1_score(average="micro") = 2·3/(2·3+1+2) = 0.6666…, average="macro" =
        // mean(1.0, 2/3, 0.0) = 0.5555…, accuracy_score (exact match) = 1/3.
        let b = |r: [u8; 3]| r.iter().map(|&v| v == 1).collect::<Vec<_>>();
        let gold = vec![b([1, 0, 1]), b([0, 1, 0]), b([1, 1, 0])];
        let pred = vec![b([1, 0, 0]), b([0, 1, 0]), b([1, 0, 1])];
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let (micro, macro_, exact, per) = multi_label_scores(&gold, &pred, &labels);
        assert!((micro - 2.0 / 3.0).abs() < 1e-12, "{micro}");
        assert!((macro_ - 5.0 / 9.0).abs() < 1e-12, "{macro_}");
        assert!((exact - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(per[0].support, 2);
        assert_eq!(per[2].f1, 0.0);
    }

    #[test]
    fn the_tuned_threshold_separates_a_label_and_prefers_the_middle_on_ties() {
        // Positives at 0.2 and 0.3, negatives at 0.1 and 0.05: any t in (0.1, 0.2] is
        // perfect; 0.15 and 0.2 tie, and 0.2 is nearer 0.5.
        let col = [(0.2f32, true), (0.3, true), (0.1, false), (0.05, false)];
        assert_eq!(best_threshold(&col), 0.2);
        // Perfectly separable at 0.5 and above: 0.5 itself wins the tie.
        assert_eq!(best_threshold(&[(0.9, true), (0.4, false)]), 0.5);
    }
}
