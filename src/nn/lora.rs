//! LoRA (Hu et al., 2021): a frozen linear layer plus a trained low-rank update,
//! y = x·W + b + s · dropout(x)·Aᵀ·Bᵀ with A (r, in), B (out, r) and s = α / r.
//!
//! Why low rank: the update of a fine-tune has low intrinsic rank, so r ≪ in, out
//! learns nearly what a full fine-tune does while W gets no gradient and no AdamW
//! moments. A and B are stored as peft stores them (`nn.Linear` weights, whatever the
//! base layer's layout), so a wick adapter and a peft adapter are the same file.

use candle_core::{Result, Tensor};

use super::dropout;
use super::kernels::linear;

#[derive(Debug, Clone)]
pub struct Lora {
    /// (r, in): the down-projection, kaiming-uniform at the start.
    a: Tensor,
    /// (out, r): the up-projection, zero at the start so training starts from W.
    b: Tensor,
    scale: f64,
    dropout: f64,
}

impl Lora {
    pub fn new(a: Tensor, b: Tensor, scale: f64, dropout: f64) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            candle_core::bail!(
                "lora_A is {:?} and lora_B {:?}: ranks differ",
                a.dims(),
                b.dims()
            )
        }
        Ok(Self {
            a,
            b,
            scale,
            dropout,
        })
    }

    pub fn a(&self) -> &Tensor {
        &self.a
    }

    pub fn b(&self) -> &Tensor {
        &self.b
    }

    /// The update alone: x (..., in) -> (..., out).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = dropout(x, self.dropout, train)?;
        let h = linear(&x, &self.a, None, false)?; // (..., r)
        linear(&h, &self.b, None, false)? * self.scale // (..., out)
    }

    /// s·B·A, the update folded into a weight: (out, in), or (in, out) for a weight
    /// stored as GPT-2's Conv1D (peft's `fan_in_fan_out`).
    pub fn delta_weight(&self, in_out: bool) -> Result<Tensor> {
        let d = (self.b.matmul(&self.a)? * self.scale)?; // (out, in)
        if in_out {
            d.t()?.contiguous()
        } else {
            Ok(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Linear;
    use candle_core::{Device, Var};

    fn ramp(shape: &[usize], k: usize) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * k % 23) as f32 - 11.0) / 17.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// The layer with its update equals the plain layer with s·B·A folded into W, in
    /// both weight layouts; this is what `wick merge` relies on.
    #[test]
    fn the_update_equals_its_folded_weight_in_both_layouts() -> Result<()> {
        let x = ramp(&[2, 3, 6], 7)?;
        for in_out in [true, false] {
            let w = ramp(if in_out { &[6, 5] } else { &[5, 6] }, 5)?;
            let bias = ramp(&[5], 3)?;
            let lora = Lora::new(ramp(&[2, 6], 11)?, ramp(&[5, 2], 13)?, 0.75, 0.0)?;
            let merged_w = (&w + lora.delta_weight(in_out)?)?;
            let mut with = Linear::new(w, Some(bias.clone()), in_out);
            with.set_lora(lora)?;
            let merged = Linear::new(merged_w, Some(bias), in_out);
            let (a, b) = (with.forward_t(&x, false)?, merged.forward_t(&x, false)?);
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "in_out {in_out}: differs by {d}");
        }
        Ok(())
    }

    /// Gradients of A and B against central finite differences of the loss.
    #[test]
    fn gradients_of_a_and_b_match_finite_differences() -> Result<()> {
        let x = ramp(&[3, 6], 7)?.to_dtype(candle_core::DType::F64)?;
        let a = Var::from_tensor(&ramp(&[2, 6], 11)?.to_dtype(candle_core::DType::F64)?)?;
        let b = Var::from_tensor(&ramp(&[4, 2], 13)?.to_dtype(candle_core::DType::F64)?)?;
        let target = ramp(&[3, 4], 5)?.to_dtype(candle_core::DType::F64)?;
        let loss = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            let lora = Lora::new(a.clone(), b.clone(), 2.0, 0.0)?;
            (lora.forward(&x, true)? - &target)?.sqr()?.sum_all()
        };
        let grads = loss(a.as_tensor(), b.as_tensor())?.backward()?;
        for (var, other_is_a) in [(&a, false), (&b, true)] {
            let g = grads.get(var).unwrap().flatten_all()?.to_vec1::<f64>()?;
            let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            for i in 0..base.len() {
                let at = |eps: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[i] += eps;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu)?;
                    let (a_t, b_t) = if other_is_a {
                        (a.as_tensor().clone(), t)
                    } else {
                        (t, b.as_tensor().clone())
                    };
                    loss(&a_t, &b_t)?.to_scalar::<f64>()
                };
                let numeric = (at(1e-6)? - at(-1e-6)?) / 2e-6;
                assert!(
                    (numeric - g[i]).abs() < 1e-6 * numeric.abs().max(1.0),
                    "element {i}: analytic {} numeric {numeric}",
                    g[i]
                );
            }
        }
        Ok(())
    }
}
