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
//!
//! [`attention`] is the same for separate q, k and v (B, T, C) under any [`Mask`]: the
//! encoder-decoder's self- and cross-attention and BERT's, with padding. There the
//! composed form adds a scale, a broadcast bias add and the head copies to the nodes
//! above, and candle's backward zero-fills and sums a gradient for each of them.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::mask::Mask;

use super::dropout::{apply_in_place, Draw};
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
    /// p (Tq, Tk) = causal softmax of s·scale by rows, in place: query i, the last Tq
    /// of Tk positions, sees keys up to `past + i` (zeros after).
    fn causal_softmax(p: &mut [f32], tk: usize, past: usize, scale: f32) {
        for (i, row) in p.chunks_exact_mut(tk).enumerate() {
            softmax_in_place(row, scale, (past + i + 1).min(tk));
        }
    }
}

simd_fn! {
    /// p (Tq, Tk) = softmax of s·scale by rows, in place, over every key.
    fn full_softmax(p: &mut [f32], tk: usize, scale: f32) {
        for row in p.chunks_exact_mut(tk) {
            softmax_in_place(row, scale, tk);
        }
    }
}

simd_fn! {
    /// p (Tq, Tk) = softmax of s·scale + bias by rows, in place (the composed path's
    /// arithmetic: scale, add, then softmax).
    fn biased_softmax(p: &mut [f32], bias: &[f32], tk: usize, scale: f32) {
        for (row, b) in p.chunks_exact_mut(tk).zip(bias.chunks_exact(tk)) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v = *v * scale + b);
            softmax_in_place(row, 1.0, tk);
        }
    }
}

simd_fn! {
    /// ds = p ⊙ (dp − Σ_j p·dp)·scale by rows of `tk`, in place of dp.
    fn softmax_backward(p: &[f32], dp: &mut [f32], tk: usize, scale: f32) {
        for (pr, dr) in p.chunks_exact(tk).zip(dp.chunks_exact_mut(tk)) {
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
    causal_softmax(p, t, 0, scale);
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

// ---------------------------------------------------------------- separate q, k, v

/// What a query may see, as the op reads it: a [`Mask`] with its bias on the host.
#[derive(Clone)]
enum Seen {
    All,
    Causal,
    /// An additive bias (Bb, Tq, Tk), Bb = 1 (shared by the batch) or B.
    Bias {
        bias: Arc<Vec<f32>>,
        per_batch: bool,
    },
}

/// Sizes of attention between q (B, Tq, C) and k, v (B, Tk, C), heads of D.
#[derive(Clone, Copy)]
struct Sizes {
    tq: usize,
    tk: usize,
    c: usize,
    d: usize,
}

#[derive(Clone)]
struct Attention {
    heads: usize,
    scale: f32,
    seen: Seen,
    /// Dropout on the probabilities, its mask indexed as the (B, H, Tq, Tk) tensor of
    /// them would be (the composed path's mask, to the bit).
    dropout: Option<Draw>,
}

/// One batch element's q (Tq, C), k and v (Tk, C).
struct Element<'a> {
    n: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl Attention {
    fn sizes(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> Result<(usize, Sizes)> {
        let (b, tq, c) = lq.shape().dims3()?;
        let (bk, tk, ck) = lk.shape().dims3()?;
        if (bk, tk, ck) != lv.shape().dims3()? || bk != b || ck != c {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit",
                lq.dims(),
                lk.dims(),
                lv.dims()
            )
        }
        if c % self.heads != 0 {
            candle_core::bail!(
                "attention: {c} channels do not split into {} heads",
                self.heads
            )
        }
        if let Seen::Bias { bias, per_batch } = &self.seen {
            let want = if *per_batch { b } else { 1 } * tq * tk;
            if bias.len() != want {
                candle_core::bail!(
                    "attention: a mask of {} values for {b} × {tq} × {tk}",
                    bias.len()
                )
            }
        }
        let d = c / self.heads;
        Ok((b, Sizes { tq, tk, c, d }))
    }

    /// P (Tq, Tk) of head h of element e: softmax(Q·Kᵀ·scale) under the mask.
    fn probs(&self, e: &Element<'_>, h: usize, z: Sizes, p: &mut [f32]) {
        let Sizes { tq, tk, c, d } = z;
        let q = e.head(e.q, h, z); // (Tq, D)
        let kt = View::strided(&e.k[h * d..], 1, c); // (D, Tk)
        gemm_rows(p, tk, tq, tk, d, q, kt, false);
        match &self.seen {
            Seen::All => full_softmax(p, tk, self.scale),
            Seen::Causal => causal_softmax(p, tk, tk.saturating_sub(tq), self.scale),
            Seen::Bias { bias, per_batch } => {
                let at = if *per_batch { e.n * tq * tk } else { 0 };
                biased_softmax(p, &bias[at..at + tq * tk], tk, self.scale)
            }
        }
    }

    /// x (Tq, Tk) of head h of element e ⊙ the dropout mask, when there is dropout.
    fn drop(&self, e: &Element<'_>, h: usize, z: Sizes, x: &mut [f32]) {
        if let Some(draw) = self.dropout {
            let first = (e.n * self.heads + h) * z.tq * z.tk;
            apply_in_place(x, draw, first);
        }
    }

    /// Head h's output y_h (Tq, D) = P·V (P after dropout).
    fn forward_head(&self, e: &Element<'_>, h: usize, z: Sizes, y: &mut [f32]) {
        let Sizes { tq, tk, d, .. } = z;
        let mut p = zeroed(tq * tk);
        self.probs(e, h, z, &mut p);
        self.drop(e, h, z, &mut p);
        let (p, v) = (View::rows(&p, tk), e.head(e.v, h, z)); // (Tq, Tk), (Tk, D)
        gemm_rows(y, d, tq, d, tk, p, v, false);
    }
    /// Head h's gradients dQ (Tq, D), dK (Tk, D), dV (Tk, D), one after the other in
    /// `out`, from dy (Tq, C).
    fn backward_head(&self, e: &Element<'_>, dy: &[f32], h: usize, z: Sizes, out: &mut [f32]) {
        let Sizes { tq, tk, c, d } = z;
        let mut p = zeroed(tq * tk);
        self.probs(e, h, z, &mut p);
        let (q, k) = (e.head(e.q, h, z), e.head(e.k, h, z)); // (Tq, D), (Tk, D)
        let vt = View::strided(&e.v[h * d..], 1, c); // (D, Tk)
        let dy_h = View::strided(&dy[h * d..], c, 1); // (Tq, D)

        // With dropout the output read P' = P ⊙ mask: dV = P'ᵀ·dY, dP = (dY·Vᵀ) ⊙ mask.
        let kept = self.dropout.map(|_| {
            let mut kept = p.clone();
            self.drop(e, h, z, &mut kept);
            kept
        });
        // dP = dY·Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale
        let mut ds = zeroed(tq * tk);
        gemm_rows(&mut ds, tk, tq, tk, d, dy_h, vt, false);
        self.drop(e, h, z, &mut ds);
        softmax_backward(&p, &mut ds, tk, self.scale);
        let (dq, rest) = out.split_at_mut(tq * d);
        let (dk, dv) = rest.split_at_mut(tk * d);
        let (ds, dst, pt) = (
            View::rows(&ds, tk),
            View::transposed(&ds, tk),
            View::transposed(kept.as_ref().unwrap_or(&p), tk),
        );
        gemm_rows(dq, d, tq, d, tk, ds, k, false); // dS·K
        gemm_rows(dk, d, tk, d, tq, dst, q, false); // dSᵀ·Q
        gemm_rows(dv, d, tk, d, tq, pt, dy_h, false); // Pᵀ·dY
    }
}

impl<'a> Element<'a> {
    /// Head h of x, one of q, k, v: (T, D) read in place.
    fn head(&self, x: &'a [f32], h: usize, z: Sizes) -> View<'a> {
        View::strided(&x[h * z.d..], z.c, 1)
    }
}

/// The batch elements of q, k, v read in place.
fn element<'a>(q: &'a [f32], k: &'a [f32], v: &'a [f32], n: usize, z: Sizes) -> Element<'a> {
    let (lq, lk) = (z.tq * z.c, z.tk * z.c);
    Element {
        n,
        q: &q[n * lq..][..lq],
        k: &k[n * lk..][..lk],
        v: &v[n * lk..][..lk],
    }
}

/// Head blocks (B, H, T, D) of `outs`, each `from` rows into its buffer at row `at`,
/// written into (B, T, C) `dst` with the heads merged.
fn merge(outs: &[Vec<f32>], heads: usize, t: usize, d: usize, at: usize, dst: &mut [f32]) {
    let c = heads * d;
    for (m, o) in outs.iter().enumerate() {
        let (n, h) = (m / heads, m % heads);
        for i in 0..t {
            dst[(n * t + i) * c + h * d..][..d].copy_from_slice(&o[(at + i) * d..][..d]);
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "wick-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, z) = self.sizes(lq, lk, lv)?;
        let (q, k, v) = (
            f32_slice(sq, lq, "attention")?,
            f32_slice(sk, lk, "attention")?,
            f32_slice(sv, lv, "attention")?,
        );
        let outs = per_head(b, self.heads, z.tq * z.d, |n, h, yh| {
            self.forward_head(&element(q, k, v, n, z), h, z, yh)
        });
        let mut y = zeroed(b * z.tq * z.c);
        merge(&outs, self.heads, z.tq, z.d, 0, &mut y);
        Ok((CpuStorage::F32(y), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, tq, c) = q.dims3()?;
        let tk = k.dim(1)?;
        let grads = q.apply_op3_no_bwd(
            k,
            v,
            &AttentionGrad {
                op: self.clone(),
                dy: grad.contiguous()?,
            },
        )?; // dq | dk | dv, flat
        let (nq, nk) = (b * tq * c, b * tk * c);
        Ok((
            Some(grads.narrow(0, 0, nq)?.reshape((b, tq, c))?),
            Some(grads.narrow(0, nq, nk)?.reshape((b, tk, c))?),
            Some(grads.narrow(0, nq + nk, nk)?.reshape((b, tk, c))?),
        ))
    }
}

/// The gradients of [`Attention`] for dy, read in place: dq (B, Tq, C), dk and dv
/// (B, Tk, C), one after the other in one flat tensor.
struct AttentionGrad {
    op: Attention,
    dy: Tensor,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "wick-attention-grad"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, z) = self.op.sizes(lq, lk, lv)?;
        let (q, k, v) = (
            f32_slice(sq, lq, "attention grad")?,
            f32_slice(sk, lk, "attention grad")?,
            f32_slice(sv, lv, "attention grad")?,
        );
        let (storage, ldy) = self.dy.storage_and_layout();
        let candle_core::Storage::Cpu(sdy) = &*storage else {
            candle_core::bail!("attention grad: dy is not on the CPU")
        };
        let dy = f32_slice(sdy, ldy, "attention grad")?;
        let (tq, tk, d) = (z.tq, z.tk, z.d);
        let outs = per_head(b, self.op.heads, (tq + 2 * tk) * d, |n, h, g| {
            let dy_n = &dy[n * tq * z.c..][..tq * z.c];
            self.op
                .backward_head(&element(q, k, v, n, z), dy_n, h, z, g)
        });
        let (nq, nk) = (b * tq * z.c, b * tk * z.c);
        let mut grads = zeroed(nq + 2 * nk);
        let (dq, rest) = grads.split_at_mut(nq);
        let (dk, dv) = rest.split_at_mut(nk);
        merge(&outs, self.op.heads, tq, d, 0, dq);
        merge(&outs, self.op.heads, tk, d, tq, dk);
        merge(&outs, self.op.heads, tk, d, tq + tk, dv);
        Ok((CpuStorage::F32(grads), Shape::from(nq + 2 * nk)))
    }
}

/// Multi-head attention softmax(q·kᵀ·scale + mask)·v of q (B, Tq, C) over k and v
/// (B, Tk, C), each split into `heads` heads, -> (B, Tq, C) with the heads merged;
/// `dropout` (p, seed) on the probabilities.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    mask: &Mask,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    let seen = match mask {
        Mask::None => Seen::All,
        Mask::Causal => Seen::Causal,
        Mask::Bias(b) => {
            let per_batch = b.dim(0)? != 1;
            let (tq, tk) = (q.dim(1)?, k.dim(1)?);
            let rows = if per_batch { q.dim(0)? } else { 1 };
            let b = b.to_dtype(DType::F32)?.broadcast_as((rows, 1, tq, tk))?;
            Seen::Bias {
                bias: Arc::new(b.flatten_all()?.to_vec1::<f32>()?),
                per_batch,
            }
        }
    };
    let op = Attention {
        heads,
        scale: scale as f32,
        seen,
        dropout: dropout.map(|(p, seed)| Draw::new(p, seed)),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

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

    #[test]
    fn separate_qkv_matches_composed_attention_under_every_mask_at_every_simd_level() -> Result<()>
    {
        crate::nn::kernels::simd::each_level(|_| check_separate().unwrap());
        Ok(())
    }

    fn check_separate() -> Result<()> {
        let dev = Device::Cpu;
        let (b, heads, d) = (3, 2, 5);
        let c = heads * d;
        let var = |t: usize, salt: usize| -> Result<Var> {
            let vals: Vec<f32> = (0..b * t * c)
                .map(|i| (((i + salt) * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            Var::from_tensor(&Tensor::from_vec(vals, (b, t, c), &dev)?)
        };
        // Row 0 left-padded (with a causal mask its first query sees nothing), row 1
        // right-padded, row 2 whole.
        let pad = |t: usize| -> Result<Tensor> {
            let rows: Vec<u32> = (0..b * t)
                .map(|i| match (i / t, i % t) {
                    (0, j) => u32::from(j >= 2),
                    (1, j) => u32::from(j + 2 < t),
                    _ => 1,
                })
                .collect();
            Tensor::from_vec(rows, (b, t), &dev)
        };
        let cases = [
            // (Tq, Tk, mask): self-attention, a cached past, cross-attention
            (6, 6, Mask::None),
            (6, 6, Mask::Causal),
            (3, 7, Mask::Causal),
            (
                6,
                6,
                Mask::new(6, 6, false, Some(&pad(6)?), DType::F32, &dev)?,
            ),
            (
                6,
                6,
                Mask::new(6, 6, true, Some(&pad(6)?), DType::F32, &dev)?,
            ),
            (
                4,
                7,
                Mask::new(4, 7, false, Some(&pad(7)?), DType::F32, &dev)?,
            ),
            (2, 5, Mask::new(2, 5, true, None, DType::F32, &dev)?),
        ];
        for (tq, tk, mask) in cases {
            let (q, k, v) = (var(tq, 0)?, var(tk, 7)?, var(tk, 19)?);
            let scale = 1.0 / (d as f64).sqrt();
            let args = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            // With dropout the two paths draw the same mask from the same seed.
            let drop = (tq == 6).then_some((0.3, 99));
            let fused = attention(args.0, args.1, args.2, heads, scale, &mask, drop)?;
            let plain =
                super::super::attention_slow(args.0, args.1, args.2, heads, scale, &mask, drop)?;
            let what = format!("Tq {tq}, Tk {tk}, {mask:?}, dropout {drop:?}");
            let diff = (&fused - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{what}: forward differs by {diff}");
            let w = Tensor::from_vec(
                (0..b * tq * c)
                    .map(|i| (i % 13) as f32 - 6.0)
                    .collect::<Vec<_>>(),
                (b, tq, c),
                &dev,
            )?;
            let gf = (fused * &w)?.sum_all()?.backward()?;
            let gp = (plain * &w)?.sum_all()?.backward()?;
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (f, p) = (gf.get(x).unwrap(), gp.get(x).unwrap());
                let diff = (f - p)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let size = p.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    size > 0.1 && diff < 1e-5 * size,
                    "{what}: d{name} differs by {diff} (of {size})"
                );
            }
        }
        Ok(())
    }
}
