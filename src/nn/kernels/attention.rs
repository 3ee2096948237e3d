//! Causal self-attention as one op, from the fused q|k|v projection straight to the
//! merged heads: softmax(q·kᵀ·scale, causal)·v for every head, with its backward.
//!
//! Why: composed from candle ops, attention is ~20 graph nodes per layer (three
//! narrows, head split and merge transposes with their copies, two batched matmuls, the
//! softmax), and candle's backward allocates a zeroed gradient and adds into it for each
//! node. At GPT-2-small training sizes (T = 64, head size 32) the work itself is tiny;
//! the bookkeeping was most of attention's cost. This op reads q, k and v in place from
//! the projection's (B, T, 3C) output, writes (B, T, C), and recomputes the
//! probabilities in the backward pass instead of storing them (as FlashAttention does).
//! It serves training and scoring (no KV cache, no attention dropout, causal mask only);
//! everything else takes the composed path, and a test holds the two to each other.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{gemm_rows, View};
use super::rows::{f32_slice, softmax_grad_in_place, softmax_in_place, zeroed};
use super::simd::simd_fn;

#[derive(Clone, Copy)]
struct CausalAttention {
    heads: usize,
    scale: f32,
}

/// Sizes of one batch element's block: T rows of q|k|v (3C wide), heads of D.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    c: usize,
    d: usize,
    heads: usize,
}

/// Head h's q, k or v (`part` 0, 1, 2) inside one batch element's qkv (T, 3C), as a
/// (T, D) matrix read in place.
fn head(qkv: &[f32], part: usize, h: usize, dims: Dims) -> View<'_> {
    View::strided(&qkv[part * dims.c + h * dims.d..], 3 * dims.c, 1)
}

/// The same, transposed to (D, T).
fn head_t(qkv: &[f32], part: usize, h: usize, dims: Dims) -> View<'_> {
    View::strided(&qkv[part * dims.c + h * dims.d..], 1, 3 * dims.c)
}

simd_fn! {
    /// p (T, T) = causal softmax of s·scale by rows, in place; zeros above the diagonal.
    fn causal_softmax(p: &mut [f32], t: usize, scale: f32) {
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            softmax_in_place(row, scale, i + 1);
        }
    }
}

simd_fn! {
    /// ds = p ⊙ (dp − Σ_j p·dp)·scale by rows, in place of dp.
    fn softmax_backward(p: &[f32], dp: &mut [f32], t: usize, scale: f32) {
        for (pr, dr) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
            softmax_grad_in_place(pr, dr, scale);
        }
    }
}

// Products with a causal (lower-triangular) T×T matrix, split at h = T/2 so that the
// block above the diagonal that is all zeros, a quarter of the square, is skipped.

/// dst (T, T) = A (T, k) · B (k, T) where only j ≤ i is wanted; the skipped block of
/// dst (rows < h, columns ≥ h) is left as it was (zeros).
fn causal_product(dst: &mut [f32], t: usize, k: usize, a: View<'_>, b: View<'_>) {
    let h = t / 2;
    gemm_rows(dst, t, h, h, k, a, b, false);
    gemm_rows(&mut dst[h * t..], t, t - h, t, k, a.at(h, 0), b, false);
}

/// dst (T, n) = L (T, T) · R (T, n) for a lower-triangular L.
fn lower_times(dst: &mut [f32], t: usize, n: usize, l: View<'_>, r: View<'_>) {
    let h = t / 2;
    gemm_rows(dst, n, h, n, h, l, r, false);
    gemm_rows(&mut dst[h * n..], n, t - h, n, t, l.at(h, 0), r, false);
}

/// dst (T, n) = U (T, T) · R (T, n) for an upper-triangular U (a lower one transposed).
fn upper_times(dst: &mut [f32], t: usize, n: usize, u: View<'_>, r: View<'_>) {
    let h = t / 2;
    gemm_rows(dst, n, h, n, t, u, r, false);
    gemm_rows(
        &mut dst[h * n..],
        n,
        t - h,
        n,
        t - h,
        u.at(h, h),
        r.at(h, 0),
        false,
    );
}

/// P (T, T) of head h: causal softmax(Q·Kᵀ·scale).
fn probs(qkv: &[f32], h: usize, dims: Dims, scale: f32, p: &mut [f32]) {
    let Dims { t, d, .. } = dims;
    causal_product(p, t, d, head(qkv, 0, h, dims), head_t(qkv, 1, h, dims));
    causal_softmax(p, t, scale);
}

/// Head h's output y_h (T, D) = P·V for one batch element's qkv (T, 3C).
fn forward_head(qkv: &[f32], h: usize, dims: Dims, scale: f32, y: &mut [f32]) {
    let Dims { t, d, .. } = dims;
    let mut p = zeroed(t * t);
    probs(qkv, h, dims, scale, &mut p);
    lower_times(y, t, d, View::rows(&p, t), head(qkv, 2, h, dims));
}

/// Head h's gradients (3, T, D): dQ, dK, dV, from one batch element's qkv (T, 3C) and
/// dy (T, C).
fn backward_head(qkv: &[f32], dy: &[f32], h: usize, dims: Dims, scale: f32, out: &mut [f32]) {
    let Dims { t, c, d, .. } = dims;
    let mut p = zeroed(t * t);
    probs(qkv, h, dims, scale, &mut p);
    let dy_h = View::strided(&dy[h * d..], c, 1); // (T, D)
                                                  // dP = dY·Vᵀ (j ≤ i), then dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale
    let mut ds = zeroed(t * t);
    causal_product(&mut ds, t, d, dy_h, head_t(qkv, 2, h, dims));
    softmax_backward(&p, &mut ds, t, scale);
    let (dq, rest) = out.split_at_mut(t * d);
    let (dk, dv) = rest.split_at_mut(t * d);
    lower_times(dq, t, d, View::rows(&ds, t), head(qkv, 1, h, dims)); // dS·K
    upper_times(dk, t, d, View::transposed(&ds, t), head(qkv, 0, h, dims)); // dSᵀ·Q
    upper_times(dv, t, d, View::transposed(&p, t), dy_h); // Pᵀ·dY
}

/// Runs `f(batch element, head, out)` for every (b, h) in parallel, each into its own
/// buffer of `len` floats; heads are independent, so even batch 1 uses every core.
fn per_head(
    b: usize,
    heads: usize,
    len: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    let one = |n: usize| {
        let mut out = zeroed(len);
        f(n / heads, n % heads, &mut out);
        out
    };
    if super::parallel::may_split() {
        (0..b * heads).into_par_iter().map(one).collect()
    } else {
        (0..b * heads).map(one).collect()
    }
}

impl CausalAttention {
    fn dims(&self, l: &Layout) -> Result<(usize, Dims)> {
        let (b, t, c3) = l.shape().dims3()?;
        if c3 % 3 != 0 || (c3 / 3) % self.heads != 0 {
            candle_core::bail!("causal attention: last dim {c3} is not 3 × heads × head size")
        }
        let c = c3 / 3;
        let d = c / self.heads;
        let heads = self.heads;
        Ok((b, Dims { t, c, d, heads }))
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "wick-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s, l, "causal attention")?;
        let (b, dims) = self.dims(l)?;
        let (t, c) = (dims.t, dims.c);
        let d = dims.d;
        let outs = per_head(b, dims.heads, t * d, |n, h, yh| {
            forward_head(&qkv[n * t * 3 * c..][..t * 3 * c], h, dims, self.scale, yh)
        });
        // (B, H, T, D) -> (B, T, C)
        let mut y = zeroed(b * t * c);
        for (m, yh) in outs.iter().enumerate() {
            let (n, h) = (m / dims.heads, m % dims.heads);
            for i in 0..t {
                y[(n * t + i) * c + h * d..][..d].copy_from_slice(&yh[i * d..][..d]);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((b, t, c))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            qkv.apply_op2_no_bwd(&grad, &CausalAttentionGrad(*self))?,
        ))
    }
}

struct CausalAttentionGrad(CausalAttention);

impl candle_core::CustomOp2 for CausalAttentionGrad {
    fn name(&self) -> &'static str {
        "wick-causal-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s1, l1, "causal attention grad")?;
        let dy = f32_slice(s2, l2, "causal attention grad")?;
        let (b, dims) = self.0.dims(l1)?;
        let (t, c) = (dims.t, dims.c);
        let d = dims.d;
        let outs = per_head(b, dims.heads, 3 * t * d, |n, h, g| {
            let qb = &qkv[n * t * 3 * c..][..t * 3 * c];
            backward_head(qb, &dy[n * t * c..][..t * c], h, dims, self.0.scale, g)
        });
        // (B, H, 3, T, D) -> (B, T, 3C)
        let mut dqkv = zeroed(b * t * 3 * c);
        for (m, g) in outs.iter().enumerate() {
            let (n, h) = (m / dims.heads, m % dims.heads);
            for part in 0..3 {
                for i in 0..t {
                    let src = &g[(part * t + i) * d..][..d];
                    dqkv[(n * t + i) * 3 * c + part * c + h * d..][..d].copy_from_slice(src);
                }
            }
        }
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

/// Causal multi-head self-attention of a fused projection qkv: (B, T, 3C) laid out
/// q | k | v, each split into `heads` heads, -> (B, T, C) with the heads merged.
pub fn causal_self_attention(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1(CausalAttention {
        heads,
        scale: scale as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_attention_and_its_gradient_at_every_simd_level() -> Result<()> {
        crate::nn::kernels::simd::each_level(|_| check().unwrap());
        Ok(())
    }

    fn check() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, heads, d) = (2, 7, 3, 5);
        let n = b * t * 3 * heads * d;
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let qkv = Var::from_tensor(&Tensor::from_vec(vals, (b, t, 3 * heads * d), &dev)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let fused = causal_self_attention(qkv.as_tensor(), heads, scale)?;
        let plain = super::super::causal_self_attention_slow(qkv.as_tensor(), heads, scale)?;
        let diff = (&fused - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "forward differs by {diff}");
        // A loss that weighs every output differently, so each gradient path matters.
        let w = Tensor::from_vec(
            (0..b * t * heads * d)
                .map(|i| (i % 13) as f32 - 6.0)
                .collect::<Vec<_>>(),
            (b, t, heads * d),
            &dev,
        )?;
        let gf = (fused * &w)?.sum_all()?.backward()?;
        let gp = (plain * &w)?.sum_all()?.backward()?;
        let (gf, gp) = (gf.get(&qkv).unwrap(), gp.get(&qkv).unwrap());
        let diff = (gf - gp)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let size = gp.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            size > 1.0 && diff < 1e-5 * size,
            "gradient differs by {diff} (of {size})"
        );
        Ok(())
    }
}
