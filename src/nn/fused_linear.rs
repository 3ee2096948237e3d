//! y = x·W + b as one op with one backward, for both weight layouts (GPT-2's Conv1D
//! stores W as (in, out), nn.Linear as (out, in)).
//!
//! Why: composed, a linear layer is four graph nodes (flatten, matmul, bias add,
//! unflatten), and candle's backward allocates a zeroed gradient and adds into it for
//! each; its matmul also zero-fills every output before the GEMM overwrites it. Here the
//! GEMMs (the `gemm` crate, which candle's CPU matmul calls too) write into the bias rows
//! or straight into fresh buffers, and the backward computes dx, dW and db in one pass.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::fused::{f32_slice, zeroed};
use super::matmul::{gemm_into, View};

#[derive(Clone, Copy)]
struct LinearOp {
    /// W stored (in, out) (Conv1D) rather than (out, in).
    in_out: bool,
}

impl LinearOp {
    /// (in, out) from W's stored shape.
    fn sizes(&self, w: &Layout) -> Result<(usize, usize)> {
        let (a, b) = w.shape().dims2()?;
        Ok(if self.in_out { (a, b) } else { (b, a) })
    }

    /// W as the (in, out) right-hand side of x·W.
    fn w_view(&self, w: &[f32], inp: usize, out: usize) -> View {
        if self.in_out {
            View::rows(w, out)
        } else {
            View::transposed(w, inp)
        }
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "wick-linear"
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
        let x = f32_slice(s1, l1, "linear")?;
        let w = f32_slice(s2, l2, "linear weight")?;
        let b = f32_slice(s3, l3, "linear bias")?;
        let (inp, out) = self.sizes(l2)?;
        let dims = l1.dims();
        if dims.last() != Some(&inp) || b.len() != out {
            candle_core::bail!(
                "linear: input {dims:?}, weight {:?}, bias {}",
                l2.dims(),
                b.len()
            )
        }
        let n = x.len() / inp;
        let mut y = zeroed(n * out);
        y.chunks_exact_mut(out).for_each(|r| r.copy_from_slice(b));
        gemm_into(
            &mut y,
            n,
            out,
            inp,
            View::rows(x, inp),
            self.w_view(w, inp, out),
            true,
        );
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = out;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LinearGrad(*self))?;
        let (nx, nw) = (x.elem_count(), w.elem_count());
        let dx = all.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dw = all.narrow(0, nx, nw)?.reshape(w.shape())?;
        let db = all.narrow(0, nx + nw, b.elem_count())?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// [dx | dW | db] flattened: dx = dy·Wᵀ, dW = xᵀ·dy (or dyᵀ·x for (out, in)), db = Σ dy.
struct LinearGrad(LinearOp);

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "wick-linear-grad"
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
        let x = f32_slice(s1, l1, "linear grad")?;
        let w = f32_slice(s2, l2, "linear grad")?;
        let dy = f32_slice(s3, l3, "linear grad")?;
        let (inp, out) = self.0.sizes(l2)?;
        let n = x.len() / inp;
        let mut all = zeroed(n * inp + inp * out + out);
        let (dx, rest) = all.split_at_mut(n * inp);
        let (dw, db) = rest.split_at_mut(inp * out);
        // dx (n, in) = dy (n, out) · Wᵀ (out, in)
        let wt = if self.0.in_out {
            View::transposed(w, out)
        } else {
            View::rows(w, inp)
        };
        gemm_into(dx, n, inp, out, View::rows(dy, out), wt, false);
        if self.0.in_out {
            // dW (in, out) = xᵀ (in, n) · dy (n, out)
            let (xt, dyv) = (View::transposed(x, inp), View::rows(dy, out));
            gemm_into(dw, inp, out, n, xt, dyv, false);
        } else {
            // dW (out, in) = dyᵀ (out, n) · x (n, in)
            let (dyt, xv) = (View::transposed(dy, out), View::rows(x, inp));
            gemm_into(dw, out, inp, n, dyt, xv, false);
        }
        db.iter_mut().for_each(|v| *v = 0.0);
        for r in dy.chunks_exact(out) {
            db.iter_mut().zip(r).for_each(|(d, &g)| *d += g);
        }
        Ok((CpuStorage::F32(all), Shape::from(n * inp + inp * out + out)))
    }
}

/// x (..., in) · W + b -> (..., out), W stored (in, out) when `in_out`, else (out, in).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, in_out: bool) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp { in_out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(shape: &[usize], k: usize) -> Result<Var> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * k % 23) as f32 - 11.0) / 7.0).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    #[test]
    fn matches_matmul_and_its_gradients_in_both_layouts() -> Result<()> {
        for in_out in [true, false] {
            let x = ramp(&[2, 3, 5], 7)?;
            let w = ramp(if in_out { &[5, 4] } else { &[4, 5] }, 5)?;
            let b = ramp(&[4], 3)?;
            let fused = linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), in_out)?;
            let wm = if in_out {
                w.as_tensor().clone()
            } else {
                w.as_tensor().t()?
            };
            let plain = x
                .as_tensor()
                .broadcast_matmul(&wm)?
                .broadcast_add(b.as_tensor())?;
            assert_eq!(fused.dims(), &[2, 3, 4]);
            let d = (&fused - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "forward differs by {d}");
            let weights = ramp(&[2, 3, 4], 11)?;
            let gf = (fused * weights.as_tensor())?.sum_all()?.backward()?;
            let gp = (plain * weights.as_tensor())?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let (a, p) = (gf.get(v).unwrap(), gp.get(v).unwrap());
                assert_eq!(a.dims(), v.dims());
                let d = (a - p)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-4, "gradient differs by {d} (in_out {in_out})");
            }
        }
        Ok(())
    }
}
