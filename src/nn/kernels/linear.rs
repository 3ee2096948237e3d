//! y = x·W + b as one op with one backward, for both weight layouts (GPT-2's Conv1D
//! stores W as (in, out), nn.Linear as (out, in)).
//!
//! Why: composed, a linear layer is four graph nodes (flatten, matmul, bias add,
//! unflatten), and candle's backward allocates a zeroed gradient and adds into it for
//! each; its matmul also zero-fills every output before the GEMM overwrites it. Here the
//! GEMMs (the `gemm` crate, which candle's CPU matmul calls too) write into the bias rows
//! or straight into fresh buffers, and the backward computes dx, dW and db in one pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::matmul::{
    gemm_into, gemv_in_out, gemv_out_in, gemv_rows_in_out, gemv_rows_out_in, View, SMALL_ROWS,
};
use super::rows::{f32_slice, zeroed};

#[derive(Clone, Copy)]
struct LinearOp {
    /// W stored (in, out) (Conv1D) rather than (out, in).
    in_out: bool,
}

/// Which gradients the backward computes: dW and db are skipped when the weight is
/// frozen (a LoRA run's base, a plain tensor rather than a `Var`), which saves one of
/// the two GEMMs of every linear layer's backward.
#[derive(Clone, Copy)]
struct LinearGrad {
    op: LinearOp,
    weight: bool,
}

impl LinearOp {
    /// (in, out) from W's stored shape.
    fn sizes(&self, w: &Layout) -> Result<(usize, usize)> {
        let (a, b) = w.shape().dims2()?;
        Ok(if self.in_out { (a, b) } else { (b, a) })
    }

    /// W as the (in, out) right-hand side of x·W.
    fn w_view<'a>(&self, w: &'a [f32], inp: usize, out: usize) -> View<'a> {
        if self.in_out {
            View::rows(w, out)
        } else {
            View::transposed(w, inp)
        }
    }

    /// Wᵀ as the (out, in) right-hand side of dy·Wᵀ.
    fn wt_view<'a>(&self, w: &'a [f32], inp: usize, out: usize) -> View<'a> {
        if self.in_out {
            View::transposed(w, out)
        } else {
            View::rows(w, inp)
        }
    }

    /// y = x·W [+ b]: one GEMM onto the bias rows, or for a single row (decoding one
    /// token) a GEMV that streams W, and for a few rows (a decode step of a continuous
    /// batch) a GEMV that streams W once for all of them.
    fn forward(
        &self,
        x: (&[f32], &Layout),
        w: (&[f32], &Layout),
        b: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let ((x, lx), (w, lw)) = (x, w);
        let (inp, out) = self.sizes(lw)?;
        let dims = lx.dims();
        if dims.last() != Some(&inp) || b.is_some_and(|b| b.len() != out) {
            candle_core::bail!(
                "linear: input {dims:?}, weight {:?}, bias {:?}",
                lw.dims(),
                b.map(<[f32]>::len)
            )
        }
        let n = x.len() / inp;
        // The products add into y: it starts as the bias rows (written once, not
        // zeroed first) or zeros.
        let mut y = match b {
            Some(b) => {
                let mut y = Vec::with_capacity(n * out);
                (0..n).for_each(|_| y.extend_from_slice(b));
                y
            }
            None => zeroed(n * out),
        };
        match (n, self.in_out) {
            (1, true) => gemv_in_out(x, w, &mut y),
            (1, false) => gemv_out_in(x, w, &mut y),
            (2..=SMALL_ROWS, true) => gemv_rows_in_out(x, w, &mut y, n),
            (2..=SMALL_ROWS, false) => gemv_rows_out_in(x, w, &mut y, n),
            _ => gemm_into(
                &mut y,
                n,
                out,
                inp,
                View::rows(x, inp),
                self.w_view(w, inp, out),
                true,
            ),
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = out;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    /// dx, and dW and db unless W is frozen, from [`LinearGrad`]'s packed output.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Option<[Tensor; 2]>)> {
        let weight = w.track_op();
        let op = LinearGrad { op: *self, weight };
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let (nx, nw) = (x.elem_count(), w.elem_count());
        let dx = all.narrow(0, 0, nx)?.reshape(x.shape())?;
        if !weight {
            return Ok((dx, None));
        }
        let dw = all.narrow(0, nx, nw)?.reshape(w.shape())?;
        let db = all.narrow(0, nx + nw, all.elem_count() - nx - nw)?;
        Ok((dx, Some([dw, db])))
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
        self.forward((x, l1), (w, l2), Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw_db) = self.grads(x, w, grad)?;
        let (dw, db) = match dw_db {
            Some([dw, db]) => (
                Some(dw),
                b.track_op().then(|| db.reshape(b.shape())).transpose()?,
            ),
            None => (None, None),
        };
        Ok((Some(dx), dw, db))
    }
}

/// The same layer without a bias (an LM head).
impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "wick-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "linear")?;
        let w = f32_slice(s2, l2, "linear weight")?;
        self.forward((x, l1), (w, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw_db) = self.grads(x, w, grad)?;
        Ok((Some(dx), dw_db.map(|[dw, _]| dw)))
    }
}

/// [dx | dW | db] flattened: dx = dy·Wᵀ, dW = xᵀ·dy (or dyᵀ·x for (out, in)), db = Σ dy;
/// only [dx] for a frozen weight.
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
        let (inp, out) = self.op.sizes(l2)?;
        let n = x.len() / inp;
        if !self.weight {
            let mut dx = zeroed(n * inp);
            gemm_into(
                &mut dx,
                n,
                inp,
                out,
                View::rows(dy, out),
                self.op.wt_view(w, inp, out),
                false,
            );
            return Ok((CpuStorage::F32(dx), Shape::from(n * inp)));
        }
        let mut all = zeroed(n * inp + inp * out + out);
        let (dx, rest) = all.split_at_mut(n * inp);
        let (dw, db) = rest.split_at_mut(inp * out);
        // dx (n, in) = dy (n, out) · Wᵀ (out, in)
        let wt = self.op.wt_view(w, inp, out);
        gemm_into(dx, n, inp, out, View::rows(dy, out), wt, false);
        if self.op.in_out {
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
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, in_out: bool) -> Result<Tensor> {
    let op = LinearOp { in_out };
    match b {
        Some(b) => x
            .contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, op),
        None => x.contiguous()?.apply_op2(&w.contiguous()?, op),
    }
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

    /// Largest |a − b| relative to the largest |b|.
    fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(d / b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6))
    }

    /// Every path: the GEMM (several rows) and the GEMV (one row: decoding, sized so the
    /// rows split across threads and leave a tail), both weight layouts, with and
    /// without a bias; forward and all gradients against matmul + broadcast add.
    #[test]
    fn matches_matmul_and_its_gradients_in_every_path_at_every_simd_level() -> Result<()> {
        crate::nn::kernels::simd::each_level(|_| check().unwrap());
        Ok(())
    }

    fn check() -> Result<()> {
        for (x_shape, inp, out) in [
            (vec![2, 3, 5], 5, 4),
            (vec![1, 1, 301], 301, 262),
            (vec![3, 1, 301], 301, 262),
            (vec![9, 1, 33], 33, 17),
            (vec![4, 5, 7], 7, 9),
        ] {
            for in_out in [true, false] {
                for with_bias in [true, false] {
                    let x = ramp(&x_shape, 7)?;
                    let w_shape = if in_out { [inp, out] } else { [out, inp] };
                    let w = ramp(&w_shape, 5)?;
                    let b = ramp(&[out], 3)?;
                    let bias = with_bias.then(|| b.as_tensor());
                    let fused = linear(x.as_tensor(), w.as_tensor(), bias, in_out)?;
                    let wm = if in_out {
                        w.as_tensor().clone()
                    } else {
                        w.as_tensor().t()?
                    };
                    let mut plain = x.as_tensor().broadcast_matmul(&wm)?;
                    if with_bias {
                        plain = plain.broadcast_add(b.as_tensor())?;
                    }
                    let mut dims = x_shape.clone();
                    *dims.last_mut().unwrap() = out;
                    assert_eq!(fused.dims(), &dims[..]);
                    let d = rel_diff(&fused, &plain)?;
                    assert!(
                        d < 1e-5,
                        "forward differs by {d} ({x_shape:?}, in_out {in_out})"
                    );
                    let weights = ramp(&dims, 11)?;
                    let gf = (fused * weights.as_tensor())?.sum_all()?.backward()?;
                    let gp = (plain * weights.as_tensor())?.sum_all()?.backward()?;
                    let vars = if with_bias {
                        vec![&x, &w, &b]
                    } else {
                        vec![&x, &w]
                    };
                    for v in vars {
                        let (a, p) = (gf.get(v).unwrap(), gp.get(v).unwrap());
                        assert_eq!(a.dims(), v.dims());
                        let d = rel_diff(a, p)?;
                        assert!(
                            d < 1e-5,
                            "gradient differs by {d} ({x_shape:?}, in_out {in_out})"
                        );
                    }
                    assert_eq!(gf.get(&b).is_some(), with_bias);
                }
            }
        }
        Ok(())
    }

    /// A frozen weight (a plain tensor, as a LoRA run's base) gets no gradient and the
    /// input's gradient is the same as with a trainable one, in both layouts.
    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_input_the_same_one() -> Result<()> {
        for in_out in [true, false] {
            let x = ramp(&[4, 5, 7], 7)?;
            let w_shape = if in_out { [7, 9] } else { [9, 7] };
            let w = ramp(&w_shape, 5)?;
            let b = ramp(&[9], 3)?;
            let frozen_w = w.as_tensor().detach();
            let frozen_b = b.as_tensor().detach();
            let weights = ramp(&[4, 5, 9], 11)?;
            let y = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), in_out)?;
            let trained = (y * weights.as_tensor())?.sum_all()?.backward()?;
            let y = linear(x.as_tensor(), &frozen_w, Some(&frozen_b), in_out)?;
            let frozen = (y * weights.as_tensor())?.sum_all()?.backward()?;
            assert!(frozen.get(&frozen_w).is_none() && frozen.get(&frozen_b).is_none());
            let dx = frozen.get(&x).unwrap();
            assert_eq!(rel_diff(dx, trained.get(&x).unwrap())?, 0.0);
        }
        Ok(())
    }
}
