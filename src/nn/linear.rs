//! A linear layer y = x·W + b for both weight layouts found in checkpoints:
//! `nn.Linear` stores W as (out, in); GPT-2's `Conv1D` stores it as (in, out). For CPU
//! inference the weight may instead be a ggml-quantized matrix (see `wick quantize`).
//! A layer may carry a LoRA update on top of its weight ([`Lora`]).

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::Lora;

#[derive(Debug, Clone)]
enum Weight {
    /// Always kept as stored, so saving writes back the checkpoint's own layout.
    Dense(Tensor),
    /// Quantized blocks, always (out, in): ggml's matmul computes x·Wᵀ.
    Quantized(QMatMul),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// True for GPT-2's Conv1D layout (in, out).
    in_out: bool,
    /// The checkpoint prefix of this layer (`h.0.attn.c_attn`), by which quantized
    /// weights are saved and found again.
    name: String,
    lora: Option<Lora>,
}

/// GPT-2 and BERT initialise weights from N(0, 0.02).
pub const INIT_STD: f64 = 0.02;

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, in_out: bool) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias,
            in_out,
            name: String::new(),
            lora: None,
        }
    }

    /// Names a layer built with `new` (the `load*` constructors take the prefix).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
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
        Ok(Self::new(weight, bias, false).named(vb.prefix()))
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
        Ok(Self::new(weight, Some(bias), true).named(vb.prefix()))
    }

    /// Whether the checkpoint stores the weight as GPT-2's Conv1D (in, out).
    pub fn is_conv1d(&self) -> bool {
        self.in_out
    }

    /// The dense weight as stored; `None` once quantized.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            Weight::Quantized(_) => None,
        }
    }

    /// The dense weight as (out, in), the orientation quantized blocks run along.
    pub fn weight_out_in(&self) -> Option<Tensor> {
        let w = self.weight()?;
        Some(if self.in_out { w.t().ok()? } else { w.clone() })
    }

    /// Replaces the weight by quantized blocks of shape (out, in).
    pub fn set_quantized(&mut self, q: std::sync::Arc<QTensor>) -> Result<()> {
        let (out, inp) = q.shape().dims2()?;
        let dims = self.weight_out_in().map(|w| w.dims().to_vec());
        if let Some(d) = dims.filter(|d| d[..] != [out, inp]) {
            candle_core::bail!(
                "quantized weight of `{}` is ({out}, {inp}), the layer is {d:?} (out, in)",
                self.name
            )
        }
        self.weight = Weight::Quantized(QMatMul::from_arc(q)?);
        Ok(())
    }

    /// (in, out) of the map, whatever the weight's layout or quantization.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match &self.weight {
            Weight::Dense(w) => {
                let (a, b) = w.dims2()?;
                Ok(if self.in_out { (a, b) } else { (b, a) })
            }
            Weight::Quantized(QMatMul::QTensor(q)) => {
                let (out, inp) = q.shape().dims2()?;
                Ok((inp, out))
            }
            Weight::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                let (out, inp) = w.dims2()?;
                Ok((inp, out))
            }
        }
    }

    /// Puts a LoRA update on the layer; its A must be (r, in) and its B (out, r).
    pub fn set_lora(&mut self, lora: Lora) -> Result<()> {
        let (inp, out) = self.dims()?;
        let ((_, a_in), (b_out, _)) = (lora.a().dims2()?, lora.b().dims2()?);
        if (a_in, b_out) != (inp, out) {
            candle_core::bail!(
                "LoRA update of `{}` maps {a_in} -> {b_out}, the layer {inp} -> {out}",
                self.name
            )
        }
        self.lora = Some(lora);
        Ok(())
    }

    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// Folds the LoRA update into the dense weight (W + s·B·A) and drops it: the
    /// layer then computes the same map as a plain one.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some(lora) = self.lora.take() else {
            return Ok(());
        };
        let Weight::Dense(w) = &self.weight else {
            candle_core::bail!(
                "`{}`: a quantized weight cannot take a merged LoRA update",
                self.name
            )
        };
        let delta = lora.delta_weight(self.in_out)?.to_dtype(w.dtype())?;
        self.weight = Weight::Dense((w + delta)?);
        Ok(())
    }

    /// x (..., in) -> (..., out); `train` switches the LoRA update's dropout on.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => super::kernels::linear(x, w, self.bias.as_ref(), self.in_out)?,
            Weight::Quantized(q) => {
                let mut dims = x.dims().to_vec();
                let x2 = x.reshape(((), dims[dims.len() - 1]))?.contiguous()?; // (N, in)
                let y = candle_core::Module::forward(q, &x2)?; // (N, out)
                let y = match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                *dims.last_mut().unwrap() = y.dim(1)?;
                y.reshape(dims)?
            }
        };
        match &self.lora {
            Some(lora) => y + lora.forward(x, train)?,
            None => Ok(y),
        }
    }

    /// The quantized blocks, when the weight is quantized.
    pub fn quantized(&self) -> Option<&std::sync::Arc<QTensor>> {
        match &self.weight {
            Weight::Quantized(QMatMul::QTensor(q)) => Some(q),
            _ => None,
        }
    }
}

impl candle_nn::Module for Linear {
    /// In eval mode: see [`Linear::forward_t`].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
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
