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

use super::fastmath::{self, simd_fn};
use super::fused::{f32_slice, sum8_zip, uninit};

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

/// Column `col` of head `h` (q: 0, k: 1, v: 2) transposed to (D, T), so that a row of
/// scores is a sum of D vectors along T (vectorised) instead of T short dot products.
#[inline(always)]
fn transpose_head(qkv: &[f32], col: usize, h: usize, dims: Dims, out: &mut [f32]) {
    let Dims { t, c, d, .. } = dims;
    for j in 0..t {
        let row = &qkv[j * 3 * c + col * c + h * d..][..d];
        for (e, &v) in row.iter().enumerate() {
            out[e * t + j] = v;
        }
    }
}

/// Causal softmax of q_i·k_j·scale over j ≤ i into p[..=i]; kt is head h's keys (D, T).
#[inline(always)]
fn probs_row(qkv: &[f32], kt: &[f32], i: usize, h: usize, dims: Dims, scale: f32, p: &mut [f32]) {
    let Dims { t, c, d, .. } = dims;
    let q = &qkv[i * 3 * c + h * d..][..d];
    let p = &mut p[..=i];
    p.iter_mut().for_each(|v| *v = 0.0);
    for (e, &qe) in q.iter().enumerate() {
        let k = &kt[e * t..][..=i];
        p.iter_mut().zip(k).for_each(|(o, &k)| *o += qe * k);
    }
    let max = p.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    p.iter_mut()
        .for_each(|v| *v = fastmath::exp((*v - max) * scale));
    let inv = 1.0 / sum8_zip(p, p, |a, _| a);
    p.iter_mut().for_each(|v| *v *= inv);
}

simd_fn! {
    /// Head h's output y_h (T, D) for one batch element's qkv (T, 3C).
    fn forward_head(qkv: &[f32], h: usize, dims: Dims, scale: f32, y: &mut [f32]) {
        let Dims { t, c, d, .. } = dims;
        let (mut p, mut kt) = (vec![0f32; t], vec![0f32; d * t]);
        transpose_head(qkv, 1, h, dims, &mut kt);
        for i in 0..t {
            probs_row(qkv, &kt, i, h, dims, scale, &mut p);
            let yi = &mut y[i * d..][..d];
            yi.iter_mut().for_each(|v| *v = 0.0);
            for (j, &pj) in p[..=i].iter().enumerate() {
                let v = &qkv[j * 3 * c + 2 * c + h * d..][..d];
                yi.iter_mut().zip(v).for_each(|(o, &v)| *o += pj * v);
            }
        }
    }
}

simd_fn! {
    /// Head h's gradients (3, T, D): dq, dk, dv, from one batch element's qkv (T, 3C)
    /// and dy (T, C).
    fn backward_head(qkv: &[f32], dy: &[f32], h: usize, dims: Dims, scale: f32, out: &mut [f32]) {
        let Dims { t, c, d, .. } = dims;
        out.iter_mut().for_each(|v| *v = 0.0);
        let (dq, rest) = out.split_at_mut(t * d);
        let (dk, dv) = rest.split_at_mut(t * d);
        let (mut p, mut dp) = (vec![0f32; t], vec![0f32; t]);
        let (mut kt, mut vt) = (vec![0f32; d * t], vec![0f32; d * t]);
        transpose_head(qkv, 1, h, dims, &mut kt);
        transpose_head(qkv, 2, h, dims, &mut vt);
        for i in 0..t {
            probs_row(qkv, &kt, i, h, dims, scale, &mut p);
            let dyi = &dy[i * c + h * d..][..d];
            // dp_ij = dy_i·v_j, summed along j as probs_row does
            let dpi = &mut dp[..=i];
            dpi.iter_mut().for_each(|v| *v = 0.0);
            for (e, &g) in dyi.iter().enumerate() {
                dpi.iter_mut().zip(&vt[e * t..][..=i]).for_each(|(o, &v)| *o += g * v);
            }
            let dot = sum8_zip(&p[..=i], dpi, |a, b| a * b);
            // dv_j += p_ij·dy_i
            for (j, &pj) in p[..=i].iter().enumerate() {
                let dvj = &mut dv[j * d..][..d];
                dvj.iter_mut().zip(dyi).for_each(|(o, &g)| *o += pj * g);
            }
            // ds_ij = p_ij·(dp_ij − Σ p·dp)·scale; dq_i += ds_ij·k_j; dk_j += ds_ij·q_i
            let q = &qkv[i * 3 * c + h * d..][..d];
            let dqi = &mut dq[i * d..][..d];
            for j in 0..=i {
                let ds = p[j] * (dp[j] - dot) * scale;
                let k = &qkv[j * 3 * c + c + h * d..][..d];
                dqi.iter_mut().zip(k).for_each(|(o, &k)| *o += ds * k);
                let dkj = &mut dk[j * d..][..d];
                dkj.iter_mut().zip(q).for_each(|(o, &q)| *o += ds * q);
            }
        }
    }
}

/// Runs `f(batch element, head, out)` for every (b, h) in parallel, each into its own
/// buffer of `len` floats; heads are independent, so even batch 1 uses every core.
fn per_head(
    b: usize,
    heads: usize,
    len: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    (0..b * heads)
        .into_par_iter()
        .map(|n| {
            let mut out = uninit(len);
            f(n / heads, n % heads, &mut out);
            out
        })
        .collect()
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
        let mut y = uninit(b * t * c);
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
        let mut dqkv = uninit(b * t * 3 * c);
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
    use crate::nn::attention::scaled_dot_product_attention;
    use crate::nn::mask::Mask;
    use candle_core::{Device, Var};

    /// The composed path: split heads, scaled_dot_product_attention (causal), merge.
    fn composed(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let (b, t, c3) = qkv.dims3()?;
        let c = c3 / 3;
        let split = |x: Tensor| -> Result<Tensor> {
            x.reshape((b, t, heads, c / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(qkv.narrow(2, 0, c)?)?;
        let k = split(qkv.narrow(2, c, c)?)?;
        let v = split(qkv.narrow(2, 2 * c, c)?)?;
        let y = scaled_dot_product_attention(&q, &k, &v, &Mask::Causal, scale, 0.0, false)?;
        y.transpose(1, 2)?.reshape((b, t, c))
    }

    #[test]
    fn matches_composed_attention_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, heads, d) = (2, 7, 3, 5);
        let n = b * t * 3 * heads * d;
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let qkv = Var::from_tensor(&Tensor::from_vec(vals, (b, t, 3 * heads * d), &dev)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let fused = causal_self_attention(qkv.as_tensor(), heads, scale)?;
        let plain = composed(qkv.as_tensor(), heads, scale)?;
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
