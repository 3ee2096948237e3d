//! Feed-forward non-linearities under the names Hugging Face configs use.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact GELU, x·Φ(x) with the error function (BERT's `gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU's tanh approximation (GPT-2's `gelu_new`; `gelu_pytorch_tanh` is the same
    /// formula).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    #[serde(rename = "relu")]
    Relu,
    /// x·σ(x), Marian's `swish` (transformers' `silu` is the same function).
    #[serde(rename = "swish", alias = "silu")]
    Silu,
    /// RoBERTa's classification head (not a feed-forward activation in any config).
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => super::kernels::gelu_erf(x),
            Activation::GeluNew => super::kernels::gelu_tanh(x),
            Activation::Relu => x.relu(),
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::Tanh => x.tanh(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activations_match_their_formulas() -> Result<()> {
        let xs = [-2.0f32, -0.5, 0.0, 0.7, 3.0];
        let x = Tensor::new(&xs, &Device::Cpu)?;
        let exact = Activation::Gelu.forward(&x)?.to_vec1::<f32>()?;
        let tanh = Activation::GeluNew.forward(&x)?.to_vec1::<f32>()?;
        let relu = Activation::Relu.forward(&x)?.to_vec1::<f32>()?;
        for (i, &v) in xs.iter().enumerate() {
            let v = v as f64;
            // Φ(v) via erf from the series-free identity used by PyTorch's reference.
            let erf_ref = libm_erf(v / 2f64.sqrt());
            let want_exact = 0.5 * v * (1.0 + erf_ref);
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3));
            let want_tanh = 0.5 * v * (1.0 + inner.tanh());
            assert!((exact[i] as f64 - want_exact).abs() < 1e-5, "gelu({v})");
            assert!((tanh[i] as f64 - want_tanh).abs() < 1e-5, "gelu_new({v})");
            assert_eq!(relu[i] as f64, v.max(0.0));
        }
        Ok(())
    }

    #[test]
    fn config_names_parse() {
        let a: Activation = serde_json::from_str("\"gelu_pytorch_tanh\"").unwrap();
        assert_eq!(a, Activation::GeluNew);
        for name in ["\"swish\"", "\"silu\""] {
            assert_eq!(
                serde_json::from_str::<Activation>(name).unwrap(),
                Activation::Silu
            );
        }
        assert!(serde_json::from_str::<Activation>("\"mish\"").is_err());
        let x = Tensor::new(&[-2.0f32, 0.5, 3.0], &Device::Cpu).unwrap();
        let got = Activation::Silu
            .forward(&x)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (g, v) in got.iter().zip([-2.0f64, 0.5, 3.0]) {
            assert!(
                (*g as f64 - v / (1.0 + (-v).exp())).abs() < 1e-6,
                "silu({v})"
            );
        }
    }

    /// Abramowitz–Stegun 7.1.26 is only 1e-7 accurate; integrate numerically instead.
    fn libm_erf(x: f64) -> f64 {
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            let t = i as f64 * h;
            s += if i % 2 == 1 { 4.0 * f(t) } else { 2.0 * f(t) };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }
}
