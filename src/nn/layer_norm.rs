//! LayerNorm over the last dimension, from `{prefix}.weight` and `{prefix}.bias`; the
//! op itself is [`super::kernels::layer_norm`] (with a backward pass, which candle-nn's
//! fused `LayerNorm` lacks: gradients upstream of it would silently vanish).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// Loads `{prefix}.weight` and `{prefix}.bias` (ones and zeros when initialising).
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", Init::Const(0.0))?;
        Ok(Self::new(weight, bias, eps))
    }
}

impl candle_nn::Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        super::kernels::layer_norm(x, &self.weight, &self.bias, self.eps) // (..., C)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::Module;

    #[test]
    fn normalises_each_row() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [-1., 0., 0., 5.]], &dev)?;
        let ln = LayerNorm::new(
            Tensor::new(&[1f32, 2., 1., 1.], &dev)?,
            Tensor::new(&[0f32, 0., 0., 1.], &dev)?,
            1e-5,
        );
        let y = ln.forward(&x)?.to_vec2::<f32>()?;
        // Row 0: mean 2.5, var 1.25.
        let s = (1.25f32 + 1e-5).sqrt();
        let want0 = [-1.5 / s, 2.0 * -0.5 / s, 0.5 / s, 1.5 / s + 1.0];
        for (a, b) in y[0].iter().zip(want0) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }

    /// The reason this module exists: gradients must reach the input, the weight and
    /// the bias. Compare the input gradient with central finite differences.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = [[0.3f64, -1.2, 2.0, 0.5], [1.0, 1.5, -0.7, 0.1]];
        let x = Var::new(&x0, &dev)?;
        let w = Var::new(&[1.5f64, -0.5, 0.8, 1.1], &dev)?;
        let b = Var::new(&[0.1f64, 0.2, -0.3, 0.0], &dev)?;
        let coef = Tensor::new(&[[0.7f64, -1.3, 0.4, 2.0], [1.1, 0.2, -0.9, 0.5]], &dev)?;
        let ln = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let loss = |x: &Tensor| -> Result<Tensor> { (ln.forward(x)? * &coef)?.sum_all() };
        let grads = loss(x.as_tensor())?.backward()?;
        let gx = grads.get(&x).expect("grad for x").to_vec2::<f64>()?;
        assert!(grads.get(&w).is_some() && grads.get(&b).is_some());
        let h = 1e-6;
        for i in 0..2 {
            for j in 0..4 {
                let mut plus = x0;
                plus[i][j] += h;
                let mut minus = x0;
                minus[i][j] -= h;
                let lp = loss(&Tensor::new(&plus, &dev)?)?.to_scalar::<f64>()?;
                let lm = loss(&Tensor::new(&minus, &dev)?)?.to_scalar::<f64>()?;
                let fd = (lp - lm) / (2.0 * h);
                assert!(
                    (gx[i][j] - fd).abs() < 1e-6,
                    "[{i},{j}] {} vs {fd}",
                    gx[i][j]
                );
            }
        }
        Ok(())
    }
}
