//! Losses, on the per-row cross-entropy op ([`crate::nn::kernels::cross_entropy_rows`]:
//! one fused kernel on the CPU, log-softmax + gather elsewhere).

use candle_core::{DType, Result, Tensor, D};

use crate::labels::IGNORE;
use crate::nn::kernels;

/// Mean cross-entropy of logits (N, C) against targets (N,).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    kernels::cross_entropy_rows(logits, &targets.to_dtype(DType::U32)?, 0.0)?.mean_all()
}

/// Mean next-token cross-entropy of logits (B, T, V) against targets (B, T).
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    cross_entropy(&logits.reshape(((), v))?, &targets.flatten_all()?)
}

/// Mean binary cross-entropy of logits (N, C) against 0/1 targets (N, C), one sigmoid per
/// class (transformers' `multi_label_classification`, torch's `BCEWithLogitsLoss`): per
/// element softplus(x) − x·y. softplus(x) = m + log(e^(x−m) + e^(−m)) with m = max(x, 0)
/// held constant: nothing large is exponentiated, and the gradient is σ(x) − y
/// everywhere (a relu and an abs would each take a zero subgradient at x = 0).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let y = targets.to_dtype(logits.dtype())?;
    let m = logits.relu()?.detach();
    let soft = (((logits - &m)?.exp()? + m.neg()?.exp()?)?.log()? + &m)?;
    (soft - (logits * y)?)?.mean_all()
}

/// Indices of the flat labels that are not [`IGNORE`].
fn labelled_rows(labels: &Tensor) -> Result<Vec<u32>> {
    Ok(labels
        .to_vec1::<u32>()?
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != IGNORE)
        .map(|(i, _)| i as u32)
        .collect())
}

/// Mean cross-entropy over the positions whose label is not [`IGNORE`] (masked LM):
/// logits (B, T, V), labels (B, T).
pub fn masked_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    smoothed_loss(logits, labels, 0.0)
}

/// Hidden states (B, T, C) and labels (B, T) cut to the positions that carry a label:
/// (N, C) and (N,); None when no position does. For the masked-LM head, which then
/// projects onto the vocabulary only the ~15% of positions the loss reads.
pub fn labelled_positions(hidden: &Tensor, labels: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    let c = hidden.dim(D::Minus1)?;
    let labels = labels.flatten_all()?;
    let keep = labelled_rows(&labels)?;
    if keep.is_empty() {
        return Ok(None);
    }
    let idx = Tensor::new(keep, hidden.device())?;
    Ok(Some((
        hidden.reshape(((), c))?.index_select(&idx, 0)?,
        labels.index_select(&idx, 0)?,
    )))
}

/// Token cross-entropy with label smoothing ε (the paper's ε_ls = 0.1): the target gets
/// 1 − ε of the probability mass and ε is spread uniformly over the vocabulary, i.e.
/// (1 − ε)·NLL + ε·mean over the vocabulary of −log p. Positions labelled [`IGNORE`]
/// (padding) count for nothing. logits (B, T, V), labels (B, T).
pub fn smoothed_loss(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let (logits, labels) = (logits.reshape(((), v))?, labels.flatten_all()?);
    let n = labelled_rows(&labels)?.len().max(1) as f64;
    // Ignored rows contribute zero loss and zero gradient.
    kernels::cross_entropy_rows(&logits, &labels, eps)?.sum_all()? / n
}

#[cfg(test)]
mod smoothing_tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn bce_matches_the_formula_and_finite_differences() {
        let x = [[2.0f32, -1.0, 0.5], [-30.0, 40.0, 0.0]];
        let y = [[1.0f32, 0.0, 1.0], [0.0, 1.0, 1.0]];
        let xv = Var::new(&x, &Device::Cpu).unwrap();
        let yt = Tensor::new(&y, &Device::Cpu).unwrap();
        let loss = bce_with_logits(xv.as_tensor(), &yt).unwrap();
        // torch: -(y log σ(x) + (1 − y) log(1 − σ(x))), averaged.
        let reference = |x: &[[f32; 3]; 2]| -> f64 {
            let mut s = 0.0;
            for (xr, yr) in x.iter().zip(&y) {
                for (&a, &b) in xr.iter().zip(yr) {
                    let (a, b) = (a as f64, b as f64);
                    let p = 1.0 / (1.0 + (-a).exp());
                    s -= b * p.max(1e-300).ln() + (1.0 - b) * (1.0 - p).max(1e-300).ln();
                }
            }
            s / 6.0
        };
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (got - reference(&x)).abs() < 1e-6,
            "{got} vs {}",
            reference(&x)
        );
        let grads = loss.backward().unwrap();
        let g = grads.get(&xv).unwrap().to_vec2::<f32>().unwrap();
        for i in 0..2 {
            for j in 0..3 {
                let h = 1e-3;
                let (mut up, mut down) = (x, x);
                up[i][j] += h;
                down[i][j] -= h;
                let fd = (reference(&up) - reference(&down)) / (2.0 * h as f64);
                assert!(
                    (g[i][j] as f64 - fd).abs() < 1e-4,
                    "({i},{j}): {} vs {fd}",
                    g[i][j]
                );
            }
        }
    }

    #[test]
    fn label_smoothing_matches_torch() {
        // torch.nn.functional.cross_entropy(..., label_smoothing=0.1) is this formula.
        let logits = Tensor::new(&[[[2.0f32, 0.5, -1.0], [0.1, 0.2, 0.3]]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[[0u32, IGNORE]], &Device::Cpu).unwrap();
        let got = smoothed_loss(&logits, &labels, 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lse = (2.0f64.exp() + 0.5f64.exp() + (-1.0f64).exp()).ln();
        let logp = [2.0 - lse, 0.5 - lse, -1.0 - lse];
        let want = 0.9 * -logp[0] + 0.1 * -(logp.iter().sum::<f64>() / 3.0);
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        let plain = smoothed_loss(&logits, &labels, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((plain as f64 + logp[0]).abs() < 1e-5);
    }
}
