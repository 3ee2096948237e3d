//! Dropout's mask drawn inside the op, from a seed and each element's index: nothing is
//! stored for the backward pass, which draws the same mask again.
//!
//! Why: composed, dropout is a mask tensor filled one random f64 at a time and a
//! multiply, and candle's backward of that multiply also computes (and zero-fills and
//! sums) a gradient for the mask, a constant. Here the mask is a counter-based hash
//! (SplitMix64's finaliser of seed + index), so any element's draw is known without
//! drawing the ones before it, and the loop vectorises.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::rows::{f32_slice, zeroed};
use super::simd::simd_fn;

/// SplitMix64's output for the `i`th element after `seed`.
#[inline(always)]
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The mask's rule: element `i` is dropped when the top 32 bits of its draw fall under
/// `threshold` = p · 2³².
#[derive(Clone, Copy)]
pub(super) struct Draw {
    seed: u64,
    threshold: u64,
    /// 1 / (1 − p), what a kept element is multiplied by.
    scale: f32,
}

impl Draw {
    pub(super) fn new(p: f64, seed: u64) -> Self {
        Self {
            seed,
            threshold: (p * 4_294_967_296.0).round() as u64,
            scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// Element i's factor: 0 or 1 / (1 − p).
    #[inline(always)]
    pub(super) fn factor(&self, i: usize) -> f32 {
        if mix(self.seed, i as u64) >> 32 < self.threshold {
            0.0
        } else {
            self.scale
        }
    }

    /// The whole mask of n elements, for the composed path on other devices.
    pub(super) fn mask(&self, n: usize) -> Vec<f32> {
        (0..n).map(|i| self.factor(i)).collect()
    }
}

simd_fn! {
    /// y = x ⊙ mask, the mask's elements counted from `first`.
    fn apply(x: &[f32], draw: Draw, first: usize, y: &mut [f32]) {
        for (j, (y, x)) in y.iter_mut().zip(x).enumerate() {
            *y = *x * draw.factor(first + j);
        }
    }
}

simd_fn! {
    /// x ⊙ mask in place, the mask's elements counted from `first`.
    pub(super) fn apply_in_place(x: &mut [f32], draw: Draw, first: usize) {
        for (j, x) in x.iter_mut().enumerate() {
            *x *= draw.factor(first + j);
        }
    }
}

/// x ⊙ mask; its own backward, since the gradient is the upstream gradient ⊙ the same
/// mask.
struct Dropout(Draw);

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "wick-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dropout")?;
        let mut y = zeroed(x.len());
        apply(x, self.0, 0, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Dropout(self.0))?))
    }
}

/// x ⊙ mask / (1 − p) with each element dropped with probability p, the mask drawn from
/// `seed` and the element's index.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Dropout(Draw::new(p, seed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn drops_about_p_and_scales_the_rest_at_every_simd_level() {
        crate::nn::kernels::simd::each_level(|_| {
            let n = 100_000;
            let x = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
            let y = dropout(&x, 0.2, 42).unwrap().to_vec1::<f32>().unwrap();
            let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
            assert!((dropped - 0.2).abs() < 0.005, "dropped {dropped}");
            assert!(y.iter().all(|&v| v == 0.0 || v == 1.25));
            // The mask is the seed's: the same again, another for another seed, and
            // the same as the composed path's mask.
            assert_eq!(y, dropout(&x, 0.2, 42).unwrap().to_vec1::<f32>().unwrap());
            assert_ne!(y, dropout(&x, 0.2, 43).unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(y, Draw::new(0.2, 42).mask(n));
        });
    }

    #[test]
    fn the_gradient_is_the_same_mask() -> Result<()> {
        let x = Var::new(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &Device::Cpu)?;
        let y = dropout(x.as_tensor(), 0.5, 7)?;
        let w = Tensor::new(
            &[1.0f32, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0],
            &Device::Cpu,
        )?;
        let g = (&y * &w)?.sum_all()?.backward()?;
        let mask = Draw::new(0.5, 7).mask(8);
        let want: Vec<f32> = mask
            .iter()
            .zip(w.to_vec1::<f32>()?)
            .map(|(m, w)| m * w)
            .collect();
        assert_eq!(g.get(&x).unwrap().to_vec1::<f32>()?, want);
        assert!(mask.contains(&0.0) && mask.contains(&2.0));
        Ok(())
    }
}
