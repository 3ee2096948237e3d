//! A linear layer y = x·W + b for both weight layouts found in checkpoints:
//! `nn.Linear` stores W as (out, in); GPT-2's `Conv1D` stores it as (in, out).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct Linear {
    /// Always kept as stored, so saving writes back the checkpoint's own layout.
    weight: Tensor,
    bias: Option<Tensor>,
    /// True for GPT-2's Conv1D layout (in, out).
    in_out: bool,
}

/// GPT-2 and BERT initialise weights from N(0, 0.02).
pub const INIT_STD: f64 = 0.02;

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, in_out: bool) -> Self {
        Self {
            weight,
            bias,
            in_out,
        }
    }

    /// `nn.Linear`: `{prefix}.weight` is (out, in).
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = bias
            .then(|| vb.get_with_hints(out_dim, "bias", Init::Const(0.0)))
            .transpose()?;
        Ok(Self::new(weight, bias, false))
    }

    /// GPT-2's `Conv1D`: `{prefix}.weight` is (in, out).
    pub fn load_conv1d(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::load_conv1d_std(in_dim, out_dim, INIT_STD, vb)
    }

    /// Conv1D with an explicit init std (GPT-2 scales residual projections by
    /// 1/sqrt(2·n_layer)).
    pub fn load_conv1d_std(
        in_dim: usize,
        out_dim: usize,
        stdev: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let init = Init::Randn { mean: 0.0, stdev };
        let weight = vb.get_with_hints((in_dim, out_dim), "weight", init)?;
        let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
        Ok(Self::new(weight, Some(bias), true))
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl candle_nn::Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // x: (..., in) -> (N, in) so one GEMM covers every leading dimension.
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let x2 = x.reshape(((), in_dim))?;
        let y = if self.in_out {
            x2.matmul(&self.weight)?
        } else {
            x2.matmul(&self.weight.t()?)?
        }; // (N, out)
        let y = match &self.bias {
            Some(b)
                if y.dtype() == candle_core::DType::F32 && super::fused::enabled(y.device()) =>
            {
                super::fused::bias_add(&y, b)?
            }
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        y.reshape(out_dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Module;

    #[test]
    fn both_layouts_compute_the_same_map() -> Result<()> {
        let dev = Device::Cpu;
        let w_out_in = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev)?; // (3, 2)
        let b = Tensor::new(&[0.5f32, -1., 2.], &dev)?;
        let x = Tensor::new(&[[[1f32, -1.], [2., 0.5]]], &dev)?; // (1, 2, 2)
        let lin = Linear::new(w_out_in.clone(), Some(b.clone()), false);
        let conv = Linear::new(w_out_in.t()?.contiguous()?, Some(b), true);
        let a = lin.forward(&x)?;
        assert_eq!(a.dims(), &[1, 2, 3]);
        assert_eq!(a.to_vec3::<f32>()?, conv.forward(&x)?.to_vec3::<f32>()?);
        // Row 0: [1-2+0.5, 3-4-1, 5-6+2]
        assert_eq!(a.to_vec3::<f32>()?[0][0], vec![-0.5, -2.0, 1.0]);
        Ok(())
    }
}
