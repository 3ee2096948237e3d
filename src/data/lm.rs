//! Language-model batches from a token stream, the run_clm convention: the stream is cut
//! into windows of block_size + 1 tokens (inputs and next-token targets). Each epoch
//! shifts the window boundaries by a seeded offset and visits the windows in a seeded
//! order, so batch n of a run is a pure function of (seed, n): resuming at step k
//! continues exactly where the run stopped.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

use super::TokenBuffer;
use crate::error::{Result, WickError};

pub struct LmBatches {
    tokens: Arc<TokenBuffer>,
    start: usize,
    len: usize,
    block_size: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    /// (epoch, window starts in visiting order) of the epoch last used.
    epoch: Option<(usize, Vec<usize>)>,
}

impl LmBatches {
    /// Windows over tokens[start..start + len].
    pub fn new(
        tokens: Arc<TokenBuffer>,
        start: usize,
        len: usize,
        block_size: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
    ) -> Result<Self> {
        if len < block_size + 2 {
            return Err(WickError::Unsupported(format!(
                "{len} tokens are too few for block size {block_size}: need at least {}",
                block_size + 2
            )));
        }
        Ok(Self {
            tokens,
            start,
            len,
            block_size,
            batch_size,
            seed,
            shuffle,
            epoch: None,
        })
    }

    /// Number of windows per epoch (the last needs one extra token for its target).
    pub fn windows_per_epoch(&self) -> usize {
        (self.len - 1) / self.block_size
    }

    fn epoch_starts(&self, epoch: usize) -> Vec<usize> {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Shift boundaries, keeping room for the target of the last window.
        let n = self.windows_per_epoch();
        let slack = self.len - 1 - n * self.block_size;
        let offset = if self.shuffle && slack > 0 {
            rng.random_range(0..=slack)
        } else {
            0
        };
        let mut starts: Vec<usize> = (0..n)
            .map(|i| self.start + offset + i * self.block_size)
            .collect();
        if self.shuffle {
            starts.shuffle(&mut rng);
        }
        starts
    }

    /// Batch number `n` of the run: (x, y), each (batch_size, block_size) u32.
    pub fn batch(&mut self, n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let per_epoch = self.windows_per_epoch();
        let (b, t) = (self.batch_size, self.block_size);
        let mut x = Vec::with_capacity(b * t);
        let mut y = Vec::with_capacity(b * t);
        for j in 0..b {
            let k = n * b + j;
            let epoch = k / per_epoch;
            if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
                self.epoch = Some((epoch, self.epoch_starts(epoch)));
            }
            let start = self.epoch.as_ref().unwrap().1[k % per_epoch];
            let w = self.tokens.slice(start, t + 1);
            x.extend_from_slice(&w[..t]);
            y.extend_from_slice(&w[1..]);
        }
        Ok((
            Tensor::from_vec(x, (b, t), device)?,
            Tensor::from_vec(y, (b, t), device)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_shifted_targets_and_reproducible() -> Result<()> {
        let toks = Arc::new(TokenBuffer::Owned((0..1000).collect()));
        let mut a = LmBatches::new(toks.clone(), 100, 500, 8, 4, 7, true)?;
        let mut b = LmBatches::new(toks, 100, 500, 8, 4, 7, true)?;
        let (x, y) = a.batch(3, &Device::Cpu)?;
        let (x, y) = (x.to_vec2::<u32>()?, y.to_vec2::<u32>()?);
        for (xr, yr) in x.iter().zip(&y) {
            assert!(xr[0] >= 100 && yr[7] < 600, "window stays in its split");
            assert!(xr.windows(2).all(|w| w[1] == w[0] + 1));
            assert_eq!(yr[0], xr[0] + 1);
        }
        // Jumping straight to batch 3 (a resumed run) gives the same batch.
        assert_eq!(b.batch(3, &Device::Cpu)?.0.to_vec2::<u32>()?, x);
        // Batches cover many epochs without error.
        a.batch(100, &Device::Cpu)?;
        Ok(())
    }

    #[test]
    fn too_short_corpus_is_an_error() {
        let toks = Arc::new(TokenBuffer::Owned((0..10).collect()));
        assert!(LmBatches::new(toks, 0, 10, 64, 2, 0, true).is_err());
    }
}
