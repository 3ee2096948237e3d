//! The ops the blocks call, one public function each, and the CPU kernels behind them.
//!
//! Each op takes its fused kernel where the kernel serves the tensors (f32 on the CPU,
//! unless `WICK_NO_FUSED=1`) and otherwise its composed tensor-op form, the `*_slow`
//! function beside it: the path every other device runs, and the reference the tests
//! hold the fused kernel to (as candle's `ops::layer_norm` sits beside
//! `layer_norm_slow`). A model block has one call line and never sees the switch.
//!
//! The kernels: `rows` (GELU, LayerNorm, softmax, cross-entropy: one pass over each row
//! with a hand-written backward), `dropout` (its mask drawn inside the op), `linear` (x·W + b through gemm, GEMVs for one row),
//! `attention` (multi-head attention from q, k, v, or a fused q|k|v, to merged heads), `matmul` (gemm on
//! strided views), `simd` (exp/tanh and the run-time choice of instruction set),
//! `parallel` (whether a kernel may split its work over threads).

mod attention;
mod bf16;
mod dropout;
mod linear;
mod matmul;
pub mod parallel;
mod rows;
pub mod simd;

pub use bf16::{amx_available, matmul_precision, set_matmul_precision, MatmulPrecision};

use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor, D};

use super::mask::{attention_bias, Mask};
use crate::labels::IGNORE;

/// Whether the fused kernels serve tensors on `device`: the CPU, unless
/// `WICK_NO_FUSED=1` (read once, at the first op).
pub fn fused(device: &Device) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    device.is_cpu()
        && *ON.get_or_init(|| {
            std::env::var_os("WICK_NO_FUSED").is_none_or(|v| v.is_empty() || v == "0")
        })
}

/// Whether the fused kernels serve every one of `ts` (f32, on a device they serve).
fn serves(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32) && fused(ts[0].device())
}

// ---------------------------------------------------------------- LayerNorm

/// LayerNorm over the last dimension: x (..., C), weight and bias (C).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if serves(&[x, w, b]) {
        rows::layer_norm(x, w, b, eps)
    } else {
        layer_norm_slow(x, w, b, eps)
    }
}

/// LayerNorm from tensor ops, statistics in f32 for half-precision inputs (candle-nn's
/// fused `LayerNorm` has no backward pass: gradients upstream of it would vanish).
pub fn layer_norm_slow(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = match dtype {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let mean = x.mean_keepdim(D::Minus1)?; // (..., 1)
    let centered = x.broadcast_sub(&mean)?; // (..., C)
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1), biased like PyTorch
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(w)?.broadcast_add(b)
}

// ---------------------------------------------------------------- dropout

/// Inverted dropout: x ⊙ mask / (1 − p), each element dropped with probability p, the
/// mask a function of `seed` and the element's index (the same on every device).
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if serves(&[x]) {
        dropout::dropout(x, p, seed)
    } else {
        dropout_slow(x, p, seed)
    }
}

/// The same as a mask tensor made on the host and a multiply.
pub fn dropout_slow(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let mask = dropout::Draw::new(p, seed).mask(x.elem_count());
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    x * mask
}

// ---------------------------------------------------------------- GELU

/// Exact GELU, x·Φ(x) (BERT's `gelu`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if serves(&[x]) {
        rows::gelu_erf(x)
    } else {
        x.gelu_erf()
    }
}

/// GELU's tanh approximation (GPT-2's `gelu_new`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if serves(&[x]) {
        rows::gelu_tanh(x)
    } else {
        x.gelu()
    }
}

// ---------------------------------------------------------------- softmax

/// softmax(scores·scale + mask) over the last dimension: scores (B, H, Tq, Tk), a
/// causal mask over the last Tq of Tk keys, or an additive bias that broadcasts.
pub fn softmax(scores: &Tensor, scale: f64, mask: &Mask) -> Result<Tensor> {
    if !serves(&[scores]) {
        return softmax_slow(scores, scale, mask);
    }
    match mask {
        Mask::Causal => rows::softmax_scaled(scores, scale, true),
        Mask::None => rows::softmax_scaled(scores, scale, false),
        Mask::Bias(b) => rows::softmax_scaled(&(scores * scale)?.broadcast_add(b)?, 1.0, false),
    }
}

/// The same from tensor ops: candle's `ops::softmax` is built from exp/sum/div and so
/// has a backward (`softmax_last_dim` has not).
pub fn softmax_slow(scores: &Tensor, scale: f64, mask: &Mask) -> Result<Tensor> {
    let scores = (scores * scale)?;
    let bias = match mask {
        Mask::None => None,
        Mask::Causal => {
            let (tq, tk) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
            attention_bias(tq, tk, true, None, scores.dtype(), scores.device())?
        }
        Mask::Bias(b) => Some(b.clone()),
    };
    let scores = match bias {
        Some(b) => scores.broadcast_add(&b)?,
        None => scores,
    };
    candle_nn::ops::softmax(&scores, D::Minus1)
}

// ---------------------------------------------------------------- linear

/// x (..., in) · W + b -> (..., out), W stored (in, out) when `in_out` (GPT-2's
/// Conv1D), else (out, in) (nn.Linear).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, in_out: bool) -> Result<Tensor> {
    if serves(&[x, w]) && b.is_none_or(|b| b.dtype() == DType::F32) {
        linear::linear(x, w, b, in_out)
    } else {
        linear_slow(x, w, b, in_out)
    }
}

/// The same as flatten, matmul, bias add, unflatten.
pub fn linear_slow(x: &Tensor, w: &Tensor, b: Option<&Tensor>, in_out: bool) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let x2 = x.reshape(((), dims[dims.len() - 1]))?; // (N, in)
    let y = if in_out {
        x2.matmul(w)?
    } else {
        x2.matmul(&w.t()?)?
    }; // (N, out)
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    *dims.last_mut().unwrap() = y.dim(1)?;
    y.reshape(dims)
}

// ---------------------------------------------------------------- attention

/// Causal self-attention straight from a fused projection: qkv (B, T, 3C), q | k | v
/// each split into `heads` heads -> (B, T, C) with the heads merged. No KV cache and no
/// attention dropout (those take the blocks' general path).
pub fn causal_self_attention(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    if serves(&[qkv]) {
        attention::causal_self_attention(qkv, heads, scale)
    } else {
        causal_self_attention_slow(qkv, heads, scale)
    }
}

/// The same as narrows, head splits, two matmuls and a softmax.
pub fn causal_self_attention_slow(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let c = qkv.dim(2)? / 3;
    let part = |i: usize| qkv.narrow(2, i * c, c);
    attention_slow(
        &part(0)?,
        &part(1)?,
        &part(2)?,
        heads,
        scale,
        &Mask::Causal,
        None,
    )
}

/// Multi-head attention of q (B, Tq, C) over k and v (B, Tk, C) under `mask`, heads
/// split and merged inside: (B, Tq, C); `dropout` (p, seed) on the probabilities, its
/// mask drawn as [`dropout`] draws one for them.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    mask: &Mask,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    if serves(&[q, k, v]) {
        attention::attention(q, k, v, heads, scale, mask, dropout)
    } else {
        attention_slow(q, k, v, heads, scale, mask, dropout)
    }
}

/// The same as head splits, two matmuls, a softmax and a dropout.
pub fn attention_slow(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    mask: &Mask,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    let (b, tq, c) = q.dims3()?;
    let split = |x: &Tensor| -> Result<Tensor> {
        let t = x.dim(1)?;
        x.reshape((b, t, heads, c / heads))?
            .transpose(1, 2)?
            .contiguous() // (B, H, T, D)
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let p = softmax_slow(&q.matmul(&k.t()?)?, scale, mask)?; // (B, H, Tq, Tk)
    let p = match dropout {
        Some((rate, seed)) => dropout_slow(&p, rate, seed)?,
        None => p,
    };
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, tq, c)) // (B, Tq, C)
}

// ---------------------------------------------------------------- cross-entropy

/// Cross-entropy of each row of logits (N, C) against targets (N,): (N,), with 0 (and
/// no gradient) where the target is [`IGNORE`]; label-smoothed by `smoothing` ε (the
/// target gets 1 − ε of the mass, every class ε / C).
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    if serves(&[logits]) {
        rows::cross_entropy_rows(logits, targets, smoothing)
    } else {
        cross_entropy_rows_slow(logits, targets, smoothing)
    }
}

/// The same as log-softmax, gather, a mean and a mask.
pub fn cross_entropy_rows_slow(
    logits: &Tensor,
    targets: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    let t = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let keep: Vec<f32> = t
        .iter()
        .map(|&v| f32::from(u8::from(v != IGNORE)))
        .collect();
    let safe: Vec<u32> = t.iter().map(|&v| if v == IGNORE { 0 } else { v }).collect();
    let dev = logits.device();
    let safe = Tensor::new(safe, dev)?.unsqueeze(1)?; // (N, 1)
    let keep = Tensor::new(keep, dev)?.to_dtype(logits.dtype())?; // (N,)
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?; // (N, C)
    let nll = log_p.gather(&safe, 1)?.squeeze(1)?.neg()?; // (N,)
    let loss = if smoothing == 0.0 {
        nll
    } else {
        let uniform = log_p.mean(D::Minus1)?.neg()?; // (N,)
        ((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?
    };
    loss * keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn ramp(shape: &[usize], seed: usize) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// The switch itself: off the fused kernels' device or dtype, each op is its
    /// composed form, to the bit.
    #[test]
    fn ops_off_f32_run_the_slow_path() -> Result<()> {
        let x = ramp(&[3, 8], 1).as_tensor().to_dtype(DType::F64)?;
        let w = ramp(&[8], 2).as_tensor().to_dtype(DType::F64)?;
        let b = ramp(&[8], 3).as_tensor().to_dtype(DType::F64)?;
        let same = |a: Tensor, b: Tensor| {
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f64>().unwrap()
            )
        };
        same(
            layer_norm(&x, &w, &b, 1e-5)?,
            layer_norm_slow(&x, &w, &b, 1e-5)?,
        );
        same(gelu_erf(&x)?, x.gelu_erf()?);
        same(gelu_tanh(&x)?, x.gelu()?);
        let s = x.reshape((1, 1, 3, 8))?;
        same(
            softmax(&s, 0.5, &Mask::None)?,
            softmax_slow(&s, 0.5, &Mask::None)?,
        );
        Ok(())
    }

    /// The slow cross-entropy ignores what the fused one ignores, with the same values
    /// and gradients.
    #[test]
    fn cross_entropy_rows_agree_and_ignore() -> Result<()> {
        let logits = ramp(&[5, 7], 4);
        let t = Tensor::new(&[3u32, IGNORE, 0, 6, IGNORE], &Device::Cpu)?;
        for smoothing in [0.0, 0.1] {
            check_cross_entropy_rows(&logits, &t, smoothing)?;
        }
        Ok(())
    }

    fn check_cross_entropy_rows(logits: &Var, t: &Tensor, smoothing: f64) -> Result<()> {
        let fast = rows::cross_entropy_rows(logits.as_tensor(), t, smoothing)?;
        let slow = cross_entropy_rows_slow(logits.as_tensor(), t, smoothing)?;
        let (f, s) = (fast.to_vec1::<f32>()?, slow.to_vec1::<f32>()?);
        for (a, b) in f.iter().zip(&s) {
            assert!((a - b).abs() < 1e-6, "{f:?} vs {s:?}");
        }
        assert_eq!((s[1], s[4]), (0.0, 0.0));
        let gf = fast.sum_all()?.backward()?;
        let gs = slow.sum_all()?.backward()?;
        let d = (gf.get(logits).unwrap() - gs.get(logits).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6, "smoothing {smoothing}: gradients differ by {d}");
        Ok(())
    }
}
