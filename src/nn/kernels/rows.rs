//! The row kernels: GELU, LayerNorm, (causal) softmax and cross-entropy, each one pass
//! over memory with a hand-written backward, instead of a chain of small candle ops that
//! each allocate. Reached through the ops in [`super`], which choose between these and
//! the composed forms; tests hold the two to each other and to finite differences.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::simd::{self, simd_fn};
use crate::labels::IGNORE;

/// Rows smaller than this go single-threaded: waking a pool costs more than it saves.
const PAR_MIN: usize = 1 << 14;

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v,
        _ => candle_core::bail!("{what}: fused kernels take f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [u32]> {
    let data = match s {
        CpuStorage::U32(v) => v,
        _ => candle_core::bail!("{what}: targets must be u32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: targets must be contiguous"),
    }
}

/// Runs `f(row_in.., row_out)` over rows of length `n`, in parallel when large.
fn rows_mut(out: &mut [f32], n: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN && super::parallel::may_split() {
        out.par_chunks_mut(n).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        out.chunks_mut(n).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// An output buffer of `n` floats for a kernel to fill. Zeroed, because handing out
/// uninitialised memory as `&mut [f32]` is undefined behaviour; mimalloc serves
/// recycled blocks, so the cost is one memset per op.
pub(super) fn zeroed(n: usize) -> Vec<f32> {
    vec![0f32; n]
}

// ---------------------------------------------------------------- GELU

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// Φ(x), the standard normal CDF, and exp(-x²/2), which φ(x) and the erf share.
/// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, under 6e-7 in f32
/// arithmetic, far below what a GELU's output resolves): one exp and one division,
/// several times cheaper than libm's erff, which dominated BERT's training profile.
#[inline(always)]
fn normal_cdf(x: f32) -> (f32, f32) {
    let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = simd::exp(-a * a);
    let half_erfc = 0.5 * poly * e; // (1 - erf(|x|/√2)) / 2
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (cdf, e)
}

#[cfg(test)]
fn erf_fast(x: f32) -> f32 {
    2.0 * normal_cdf(x * std::f32::consts::SQRT_2).0 - 1.0
}

/// 1/sqrt(2π), the standard normal density at 0.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The two GELUs: exact x·Φ(x) (BERT's `gelu`) and the tanh approximation (GPT-2's
/// `gelu_new`).
#[derive(Clone, Copy)]
struct Gelu {
    exact: bool,
}

#[inline(always)]
fn gelu_value<const EXACT: bool>(v: f32) -> f32 {
    if EXACT {
        v * normal_cdf(v).0
    } else {
        0.5 * v * (1.0 + simd::tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    }
}

/// d/dx GELU(x).
#[inline(always)]
fn gelu_derivative<const EXACT: bool>(v: f32) -> f32 {
    if EXACT {
        let (cdf, e) = normal_cdf(v); // Φ(x) + x·φ(x)
        cdf + v * INV_SQRT_2PI * e
    } else {
        let t = simd::tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v));
        let dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
        0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * dinner
    }
}

simd_fn! {
    fn gelu_row(exact: bool, x: &[f32], y: &mut [f32]) {
        if exact {
            y.iter_mut().zip(x).for_each(|(o, &v)| *o = gelu_value::<true>(v));
        } else {
            y.iter_mut().zip(x).for_each(|(o, &v)| *o = gelu_value::<false>(v));
        }
    }
}

simd_fn! {
    fn gelu_grad_row(exact: bool, x: &[f32], g: &[f32], d: &mut [f32]) {
        if exact {
            for ((d, &v), &g) in d.iter_mut().zip(x).zip(g) {
                *d = g * gelu_derivative::<true>(v);
            }
        } else {
            for ((d, &v), &g) in d.iter_mut().zip(x).zip(g) {
                *d = g * gelu_derivative::<false>(v);
            }
        }
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "wick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu")?;
        let mut y = zeroed(x.len());
        rows_mut(&mut y, 4096, |i, r| gelu_row(self.exact, &x[i * 4096..], r));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &GeluGrad { gelu: *self },
        )?))
    }
}

/// GELU'(x) · g.
struct GeluGrad {
    gelu: Gelu,
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "wick-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (
            f32_slice(s1, l1, "gelu grad")?,
            f32_slice(s2, l2, "gelu grad")?,
        );
        let mut out = zeroed(x.len());
        rows_mut(&mut out, 4096, |i, r| {
            let o = i * 4096;
            gelu_grad_row(self.gelu.exact, &x[o..], &g[o..], r)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// GELU (tanh approximation) with a fused backward.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu { exact: false })
}

/// Exact GELU (through a fast erf) with a fused backward.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu { exact: true })
}

// ---------------------------------------------------------------- LayerNorm

#[derive(Clone, Copy)]
struct LayerNormOp {
    eps: f32,
}

#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum8(x) / n;
    let var = sum8_zip(x, x, |v, _| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_fn! {
    fn layer_norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
        let (mean, rstd) = row_stats(x, eps);
        for (((o, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *o = (x - mean) * rstd * w + b;
        }
    }
}

simd_fn! {
    /// dx = rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂)) for one row.
    fn layer_norm_grad_row(x: &[f32], g: &[f32], w: &[f32], eps: f32, dx: &mut [f32]) {
        let (mean, rstd) = row_stats(x, eps);
        let c = x.len() as f32;
        let a = sum8_zip(g, w, |g, w| g * w) / c;
        let mut gw_xhat = 0f32;
        for ((&x, &g), &w) in x.iter().zip(g).zip(w) {
            gw_xhat += g * w * (x - mean) * rstd;
        }
        let bsum = gw_xhat / c;
        for (((d, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
            let xhat = (x - mean) * rstd;
            *d = rstd * (g * w - a - xhat * bsum);
        }
    }
}

simd_fn! {
    /// dw = Σ g·x̂ and db = Σ g over rows, into zeroed dw and db.
    fn layer_norm_param_grads(x: &[f32], g: &[f32], eps: f32, dw: &mut [f32], db: &mut [f32]) {
        let c = dw.len();
        for (xr, gr) in x.chunks_exact(c).zip(g.chunks_exact(c)) {
            let (mean, rstd) = row_stats(xr, eps);
            for (((dw, db), &x), &g) in dw.iter_mut().zip(db.iter_mut()).zip(xr).zip(gr) {
                *dw += g * (x - mean) * rstd;
                *db += g;
            }
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "wick-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer norm")?;
        let (w, b) = (
            f32_slice(s2, l2, "layer norm")?,
            f32_slice(s3, l3, "layer norm")?,
        );
        let c = w.len();
        let mut y = zeroed(x.len());
        rows_mut(&mut y, c, |i, r| {
            layer_norm_row(&x[i * c..(i + 1) * c], w, b, self.eps, r)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.dim(0)?;
        let rows = x.elem_count() / c;
        // One pass computes (rows + 2, C): dx rows, then dw, then db.
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(c)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "wick-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, g) = (
            f32_slice(s1, l1, "ln grad")?,
            f32_slice(s2, l2, "ln grad")?,
            f32_slice(s3, l3, "ln grad")?,
        );
        let c = w.len();
        let rows = x.len() / c;
        let mut out = vec![0f32; (rows + 2) * c];
        let (dx, rest) = out.split_at_mut(rows * c);
        rows_mut(dx, c, |i, r| {
            let span = i * c..(i + 1) * c;
            layer_norm_grad_row(&x[span.clone()], &g[span], w, self.eps, r)
        });
        let (dw, db) = rest.split_at_mut(c);
        layer_norm_param_grads(x, g, self.eps, dw, db);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, c))))
    }
}

/// LayerNorm over the last dimension with a fused backward for x, weight and bias.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(w, b, LayerNormOp { eps: eps as f32 })
}

// ---------------------------------------------------------------- softmax

/// softmax(scale · s) over the last dimension; with `causal`, key j of query i is masked
/// when j > i + (Tk − Tq) (the queries are the last Tq positions).
#[derive(Clone, Copy)]
struct Softmax {
    scale: f32,
    causal: bool,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "wick-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax")?;
        let dims = l.dims();
        let tk = dims[dims.len() - 1];
        let tq = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        let past = tk.saturating_sub(tq);
        let mut y = zeroed(x.len());
        rows_mut(&mut y, tk, |i, r| {
            let visible = if self.causal {
                (i % tq + past + 1).min(tk)
            } else {
                tk
            };
            softmax_row(&x[i * tk..(i + 1) * tk], self.scale, visible, r);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &SoftmaxGrad { scale: self.scale },
        )?))
    }
}

/// softmax(scale · r[..visible]) in place, zeros after: the one softmax kernel, which
/// the softmax op, the cross-entropy gradient and fused attention all run.
#[inline(always)]
pub(super) fn softmax_in_place(r: &mut [f32], scale: f32, visible: usize) {
    let (seen, future) = r.split_at_mut(visible);
    let max = max8(seen);
    seen.iter_mut()
        .for_each(|v| *v = simd::exp((*v - max) * scale));
    let inv = 1.0 / sum8(seen);
    seen.iter_mut().for_each(|v| *v *= inv);
    future.iter_mut().for_each(|v| *v = 0.0);
}

simd_fn! {
    /// y = softmax(scale · x[..visible]), zeros after.
    fn softmax_row(x: &[f32], scale: f32, visible: usize, y: &mut [f32]) {
        y.copy_from_slice(x);
        softmax_in_place(y, scale, visible);
    }
}

/// max x in eight interleaved lanes (one serial chain of compares is what kept a
/// 50k-wide row's maximum from vectorising); −∞ for an empty row.
#[inline(always)]
fn max8(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            if c[k] > acc[k] {
                acc[k] = c[k];
            }
        }
    }
    let m = acc.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
    tail.iter().fold(m, |m, &a| m.max(a))
}

/// Σ x in eight interleaved partial sums, a shape the compiler keeps in one vector
/// register (a single running sum is a serial chain it may not reorder).
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    sum8_zip(x, x, |a, _| a)
}

/// Σ f(a_k, b_k), eight partial sums as in [`sum8`].
#[inline(always)]
pub(super) fn sum8_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += f(x[k], y[k]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in ra.iter().zip(rb) {
        s += f(x, y);
    }
    s
}

/// d ← scale · y ⊙ (d − Σ d·y): a softmax row's backward, in place of its gradient.
#[inline(always)]
pub(super) fn softmax_grad_in_place(y: &[f32], d: &mut [f32], scale: f32) {
    let dot = sum8_zip(y, d, |a, b| a * b);
    for (o, &y) in d.iter_mut().zip(y) {
        *o = scale * y * (*o - dot);
    }
}

simd_fn! {
    fn softmax_grad_row(y: &[f32], g: &[f32], scale: f32, out: &mut [f32]) {
        out.copy_from_slice(g);
        softmax_grad_in_place(y, out, scale);
    }
}

/// ds = scale · y ⊙ (g − Σ g·y), per row.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "wick-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (
            f32_slice(s1, l1, "softmax grad")?,
            f32_slice(s2, l2, "softmax grad")?,
        );
        let tk = l1.dims()[l1.dims().len() - 1];
        let mut out = zeroed(y.len());
        rows_mut(&mut out, tk, |i, r| {
            let span = i * tk..(i + 1) * tk;
            softmax_grad_row(&y[span.clone()], &g[span], self.scale, r);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// softmax(scale · x) over the last dimension, optionally causal, with a fused backward.
pub fn softmax_scaled(x: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax {
        scale: scale as f32,
        causal,
    })
}

// ---------------------------------------------------------------- cross-entropy

/// Cross-entropy with label smoothing ε: the target gets 1 − ε of the probability mass
/// and every class ε / V, so loss_i = logsumexp(x_i) − (1 − ε)·x_i[t] − ε·mean(x_i).
#[derive(Clone, Copy)]
struct CrossEntropy {
    smoothing: f32,
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "wick-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, t) = (
            f32_slice(s1, l1, "cross-entropy")?,
            u32_slice(s2, l2, "cross-entropy")?,
        );
        let v = l1.dims()[1];
        let mut loss = zeroed(t.len());
        let nll = |i: usize, out: &mut f32| {
            if t[i] != IGNORE {
                row_nll(&x[i * v..(i + 1) * v], t[i] as usize, self.smoothing, out);
            }
        };
        if x.len() >= PAR_MIN && super::parallel::may_split() {
            loss.par_iter_mut().enumerate().for_each(|(i, o)| nll(i, o));
        } else {
            loss.iter_mut().enumerate().for_each(|(i, o)| nll(i, o));
        }
        Ok((CpuStorage::F32(loss), Shape::from(t.len())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &CrossEntropyGrad(*self))?;
        Ok((Some(d), None))
    }
}

simd_fn! {
    /// −log softmax(r)[target] = logsumexp(r) − r[target]. The sum of exponentials runs
    /// in eight f32 lanes per block of 256, the blocks added in f64: a vocabulary of 50k
    /// summed in one f32 chain lost up to 1e-3 of a log-probability. With smoothing ε,
    /// −(1 − ε)·log p[target] − ε·mean log p.
    fn row_nll(r: &[f32], target: usize, smoothing: f32, out: &mut f32) {
        let max = max8(r);
        // The exponentials of a block into a buffer, then summed: the element-wise loop
        // vectorises, an exp inside the summing loop did not.
        let (mut sum, mut buf) = (0f64, [0f32; 256]);
        for c in r.chunks(256) {
            let e = &mut buf[..c.len()];
            e.iter_mut().zip(c).for_each(|(o, &a)| *o = simd::exp(a - max));
            sum += sum8(e) as f64;
        }
        let lse = sum.ln() + max as f64;
        *out = if smoothing == 0.0 {
            (lse - r[target] as f64) as f32
        } else {
            let (eps, mean) = (smoothing as f64, sum8(r) as f64 / r.len() as f64);
            (lse - (1.0 - eps) * r[target] as f64 - eps * mean) as f32
        };
    }
}

/// d loss_i / d logits_i = (softmax(logits_i) − (1 − ε)·onehot(t_i) − ε / V) · g_i.
struct CrossEntropyGrad(CrossEntropy);

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "wick-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "ce grad")?;
        let t = u32_slice(s2, l2, "ce grad")?;
        let g = f32_slice(s3, l3, "ce grad")?;
        let v = l1.dims()[1];
        let mut out = zeroed(x.len());
        rows_mut(&mut out, v, |i, r| {
            if t[i] == IGNORE {
                return; // no gradient: the row stays zero
            }
            // softmax(x_i) · g_i − onehot(t_i) · g_i, the target's share smoothed
            softmax_row(&x[i * v..(i + 1) * v], 1.0, v, r);
            let eps = self.0.smoothing;
            if eps == 0.0 {
                r.iter_mut().for_each(|a| *a *= g[i]);
                r[t[i] as usize] -= g[i];
            } else {
                let spread = eps / v as f32;
                r.iter_mut().for_each(|a| *a = (*a - spread) * g[i]);
                r[t[i] as usize] -= (1.0 - eps) * g[i];
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Per-row cross-entropy of logits (N, V) against targets (N,) u32, label-smoothed by
/// `smoothing`, with a fused backward; rows whose target is [`IGNORE`] give 0.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    let op = CrossEntropy {
        smoothing: smoothing as f32,
    };
    logits.contiguous()?.apply_op2(&targets, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < tol, "max diff {d}");
    }

    fn x(shape: &[usize], seed: u64) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 7919 + seed * 104729) % 1000) as f32 / 250.0) - 2.0)
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Each fused op against the composed tensor ops it replaces, forward and backward.
    #[test]
    fn gelu_matches_composed() -> Result<()> {
        type Op = fn(&Tensor) -> Result<Tensor>;
        let pairs: [(Op, Op); 2] = [(gelu_tanh, Tensor::gelu), (gelu_erf, Tensor::gelu_erf)];
        for (fused_op, plain_op) in pairs {
            let a = x(&[3, 50], 1);
            let coef = x(&[3, 50], 2).as_tensor().clone();
            let fused = fused_op(a.as_tensor())?;
            let plain = plain_op(a.as_tensor())?;
            close(&fused, &plain, 1e-6);
            let gf = (fused * &coef)?.sum_all()?.backward()?;
            let gp = (plain * &coef)?.sum_all()?.backward()?;
            close(gf.get(&a).unwrap(), gp.get(&a).unwrap(), 1e-5);
        }
        Ok(())
    }

    #[test]
    fn fast_erf_is_within_f32_resolution() {
        let mut worst = (0.0, 0.0);
        for i in -4000..=4000 {
            let x = i as f32 / 1000.0;
            let err = (erf_fast(x) as f64 - candle_core::cpu::erf::erf_f64(x as f64)).abs();
            if err > worst.0 {
                worst = (err, x);
            }
        }
        // The formula's 1.5e-7 plus f32 rounding of 1 - poly·exp.
        assert!(worst.0 < 6e-7, "erf error {} at {}", worst.0, worst.1);
    }

    #[test]
    fn layer_norm_matches_composed() -> Result<()> {
        let (a, w, b) = (x(&[4, 3, 16], 3), x(&[16], 4), x(&[16], 5));
        let coef = x(&[4, 3, 16], 6).as_tensor().clone();
        let fused = layer_norm(a.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
        let plain =
            super::super::layer_norm_slow(a.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
        close(&fused, &plain, 1e-5);
        let gf = (fused * &coef)?.sum_all()?.backward()?;
        let gp = (plain * &coef)?.sum_all()?.backward()?;
        for v in [&a, &w, &b] {
            close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-4);
        }
        Ok(())
    }

    #[test]
    fn causal_softmax_matches_masked_composed() -> Result<()> {
        for (tq, tk) in [(5, 5), (2, 6)] {
            let s = x(&[2, 3, tq, tk], 7);
            let coef = x(&[2, 3, tq, tk], 8).as_tensor().clone();
            let fused = softmax_scaled(s.as_tensor(), 0.5, true)?;
            let bias =
                crate::nn::attention_bias(tq, tk, true, None, DType::F32, &Device::Cpu)?.unwrap();
            let plain =
                candle_nn::ops::softmax(&(s.as_tensor() * 0.5)?.broadcast_add(&bias)?, D::Minus1)?;
            close(&fused, &plain, 1e-6);
            let gf = (fused * &coef)?.sum_all()?.backward()?;
            let gp = (plain * &coef)?.sum_all()?.backward()?;
            close(gf.get(&s).unwrap(), gp.get(&s).unwrap(), 1e-5);
        }
        Ok(())
    }

    /// Keys behind a padding mask get exactly zero weight, and no probability or
    /// gradient is subnormal: subnormal operands make Intel's FMA units take microcode
    /// assists, and the products with P (P·V and its backward) ran several times slower
    /// there than candle's composed path, whose exp underflows to 0.
    #[test]
    fn masked_softmax_gives_exact_zeros_and_no_subnormals() -> Result<()> {
        let (b, tq, tk) = (2, 3, 6);
        let s = x(&[b, 1, tq, tk], 13);
        let padding = Tensor::new(&[[1u32, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], &Device::Cpu)?;
        let bias =
            crate::nn::attention_bias(tq, tk, false, Some(&padding), DType::F32, &Device::Cpu)?
                .unwrap();
        let scores = (s.as_tensor() * 0.5)?.broadcast_add(&bias)?;
        let fused = softmax_scaled(&scores, 1.0, false)?;
        let plain = candle_nn::ops::softmax(&scores, D::Minus1)?;
        close(&fused, &plain, 1e-6);
        let p = fused.flatten_all()?.to_vec1::<f32>()?;
        let visible = [4usize, 2];
        for (i, row) in p.chunks(tk).enumerate() {
            let seen = visible[i / tq];
            assert!(
                row[seen..].iter().all(|&v| v == 0.0),
                "masked keys got {row:?}"
            );
        }
        let coef = x(&[b, 1, tq, tk], 14).as_tensor().clone();
        let g = (fused * &coef)?.sum_all()?.backward()?;
        let ds = g.get(&s).unwrap().flatten_all()?.to_vec1::<f32>()?;
        for v in p.iter().chain(&ds) {
            assert!(!v.is_subnormal(), "subnormal {v:e}");
        }
        Ok(())
    }

    /// Every fused op, forward and backward, gives the same bits at every SIMD level
    /// this CPU has as at the baseline build.
    #[test]
    fn every_simd_level_gives_the_baseline_bits() -> Result<()> {
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        let run = || -> Result<Vec<Vec<u32>>> {
            let mut out = vec![];
            let a = x(&[5, 37], 21);
            let coef = x(&[5, 37], 22).as_tensor().clone();
            let (w, b) = (x(&[37], 23), x(&[37], 24));
            let padding = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 0, 0, 0]], &Device::Cpu)?;
            let bias =
                crate::nn::attention_bias(9, 9, false, Some(&padding), DType::F32, &Device::Cpu)?
                    .unwrap();
            let s = x(&[1, 2, 9, 9], 25);
            let scoef = x(&[1, 2, 9, 9], 26).as_tensor().clone();
            let ys = [
                gelu_tanh(a.as_tensor())?,
                gelu_erf(a.as_tensor())?,
                layer_norm(a.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?,
            ];
            for y in ys {
                let g = (&y * &coef)?.sum_all()?.backward()?;
                out.push(bits(&y));
                for v in [&a, &w, &b] {
                    out.extend(g.get(v).map(bits));
                }
            }
            for (causal, scores) in [
                (true, s.as_tensor().clone()),
                (false, s.as_tensor().broadcast_add(&bias)?),
            ] {
                let y = softmax_scaled(&scores, 0.3, causal)?;
                let g = (&y * &scoef)?.sum_all()?.backward()?;
                out.push(bits(&y));
                out.push(bits(g.get(&s).unwrap()));
            }
            let t = Tensor::new(&[3u32, 0, IGNORE, 36, 5], &Device::Cpu)?;
            let ce = cross_entropy_rows(a.as_tensor(), &t, 0.0)?;
            let smoothed = cross_entropy_rows(a.as_tensor(), &t, 0.1)?;
            let gs = smoothed.sum_all()?.backward()?;
            out.push(bits(&smoothed));
            out.push(bits(gs.get(&a).unwrap()));
            let g = ce.sum_all()?.backward()?;
            out.push(bits(&ce));
            out.push(bits(g.get(&a).unwrap()));
            Ok(out)
        };
        let mut baseline = None;
        let mut failure = None;
        simd::each_level(|l| {
            let got = run().unwrap();
            match &baseline {
                None => baseline = Some(got),
                Some(want) if *want != got => failure = Some(l),
                Some(_) => {}
            }
        });
        assert_eq!(failure, None, "a SIMD level differs from the baseline");
        Ok(())
    }

    #[test]
    fn cross_entropy_matches_composed_and_ignores() -> Result<()> {
        let logits = x(&[6, 11], 9);
        let t = Tensor::new(&[3u32, 0, 10, IGNORE, 5, 5], &Device::Cpu)?;
        let rows = cross_entropy_rows(logits.as_tensor(), &t, 0.0)?;
        let keep = [0usize, 1, 2, 4, 5];
        let idx = Tensor::new(&[0u32, 1, 2, 4, 5], &Device::Cpu)?;
        let plain = candle_nn::loss::cross_entropy(
            &logits.as_tensor().index_select(&idx, 0)?,
            &t.index_select(&idx, 0)?,
        )?;
        let fused_mean = (rows.index_select(&idx, 0)?.sum_all()? / keep.len() as f64)?;
        close(&fused_mean, &plain, 1e-6);
        assert_eq!(rows.to_vec1::<f32>()?[3], 0.0);
        let gf = fused_mean.backward()?;
        let gp = plain.backward()?;
        close(gf.get(&logits).unwrap(), gp.get(&logits).unwrap(), 1e-6);
        Ok(())
    }

    #[test]
    fn cross_entropy_over_a_gpt2_sized_vocabulary_keeps_f64_accuracy() -> Result<()> {
        // One f32 chain over 50,257 exponentials drifted by up to 1e-3 from this.
        let v = 50_257;
        let row: Vec<f32> = (0..v)
            .map(|i| ((i as u64 * 2_654_435_761 % 10_007) as f32 / 10_007.0) * 8.0 - 4.0)
            .collect();
        let want = {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &a| m.max(a as f64));
            let lse = row
                .iter()
                .map(|&a| (a as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            lse - row[123] as f64
        };
        let logits = Tensor::from_vec(row, (1, v), &Device::Cpu)?;
        let got = cross_entropy_rows(&logits, &Tensor::new(&[123u32], &Device::Cpu)?, 0.0)?;
        let got = got.to_vec1::<f32>()?[0] as f64;
        assert!((got - want).abs() < 2e-6, "{got} vs {want}");
        Ok(())
    }
}
