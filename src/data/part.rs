//! A process's share of every batch when several train together (data parallelism,
//! `train/distributed.rs`): rows in equal blocks, in rank order, taken from the whole
//! batch each rank builds, so batch n stays a pure function of (seed, n).

use std::ops::Range;

use candle_core::Tensor;

use crate::error::Result;

/// A rank's share of each global batch: rows `range(batch)` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub rank: usize,
    pub world: usize,
}

impl Part {
    /// The rows of a batch of `rows` this rank takes: equal blocks in rank order (the
    /// trainer checks that the world divides the batch; a short last batch of an
    /// evaluation is split as evenly as it goes).
    pub fn range(&self, rows: usize) -> Range<usize> {
        let at = |r: usize| r * rows / self.world;
        at(self.rank)..at(self.rank + 1)
    }

    /// This rank's rows of a batch tensor (B, ...): the tensor itself for one process.
    pub fn rows(&self, t: &Tensor) -> Result<Tensor> {
        if self.world == 1 {
            return Ok(t.clone());
        }
        let r = self.range(t.dim(0)?);
        Ok(t.narrow(0, r.start, r.len())?)
    }

    /// This rank's items of a per-row list.
    pub fn items<T: Clone>(&self, v: &[T]) -> Vec<T> {
        v[self.range(v.len())].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn parts_cover_the_batch_in_rank_order() {
        let parts: Vec<Range<usize>> = (0..2)
            .map(|rank| Part { rank, world: 2 }.range(12))
            .collect();
        assert_eq!(parts, vec![0..6, 6..12]);
        let uneven: Vec<usize> = (0..3)
            .map(|rank| Part { rank, world: 3 }.range(7).len())
            .collect();
        assert_eq!(uneven.iter().sum::<usize>(), 7);
        let t = Tensor::arange(0u32, 12, &Device::Cpu)
            .unwrap()
            .reshape((6, 2))
            .unwrap();
        let second = Part { rank: 1, world: 2 }.rows(&t).unwrap();
        assert_eq!(
            second.to_vec2::<u32>().unwrap(),
            vec![vec![6, 7], vec![8, 9], vec![10, 11]]
        );
        let whole = Part { rank: 0, world: 1 };
        assert_eq!(whole.rows(&t).unwrap().dims(), &[6, 2]);
        assert_eq!(Part { rank: 0, world: 2 }.items(&[1, 2, 3, 4]), vec![1, 2]);
    }
}
