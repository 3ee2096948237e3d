//! Where the LayerNorm sits around a residual sublayer is the one difference between
//! GPT-2's blocks and BERT's / the original Transformer's.

use candle_core::{Result, Tensor};
use candle_nn::Module;

use super::LayerNorm;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// x + f(LN(x)) — GPT-2.
    Pre,
    /// LN(x + f(x)) — BERT and "Attention Is All You Need".
    Post,
}

/// One residual sublayer with its LayerNorm placed as `placement` says.
pub fn residual(
    x: &Tensor,
    norm: &LayerNorm,
    placement: NormPlacement,
    sublayer: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match placement {
        NormPlacement::Pre => x + sublayer(&norm.forward(x)?)?,
        NormPlacement::Post => norm.forward(&(x + sublayer(x)?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pre_and_post_differ_only_in_norm_placement() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 3.]], &dev)?;
        let ln = LayerNorm::new(
            Tensor::ones(2, candle_core::DType::F32, &dev)?,
            Tensor::zeros(2, candle_core::DType::F32, &dev)?,
            0.0,
        );
        let double = |h: &Tensor| h * 2.0;
        // Pre: x + 2·LN(x) = [1,3] + 2·[-1,1]
        let pre = residual(&x, &ln, NormPlacement::Pre, double)?.to_vec2::<f32>()?;
        assert_eq!(pre, vec![vec![-1., 5.]]);
        // Post: LN(x + 2x) = LN([3, 9]) = [-1, 1]
        let post = residual(&x, &ln, NormPlacement::Post, double)?.to_vec2::<f32>()?;
        assert_eq!(post, vec![vec![-1., 1.]]);
        Ok(())
    }
}
