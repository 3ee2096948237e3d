//! Which example comes k-th in the stream of a run: epoch after epoch over the
//! examples, each epoch in its own seeded shuffle (or in order, for evaluation), so a
//! batch number alone says what the batch holds and a resumed run sees the same data.

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

pub struct EpochOrder {
    total: usize,
    seed: u64,
    shuffle: bool,
    /// The permutation of the epoch last asked about.
    current: Option<(usize, Vec<usize>)>,
}

impl EpochOrder {
    pub fn new(total: usize, seed: u64, shuffle: bool) -> Self {
        Self {
            total,
            seed,
            shuffle,
            current: None,
        }
    }

    /// The examples of batch `n` of `batch_size`: shuffled epochs back to back when
    /// shuffling, else one ordered pass whose last batch may be short.
    pub fn batch(&mut self, n: usize, batch_size: usize) -> Vec<usize> {
        let (shuffle, total) = (self.shuffle, self.total);
        (0..batch_size)
            .map(|j| n * batch_size + j)
            .take_while(|&k| shuffle || k < total)
            .map(|k| self.at(k))
            .collect()
    }

    fn at(&mut self, k: usize) -> usize {
        let epoch = k / self.total;
        if self.current.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.total).collect();
            if self.shuffle {
                order.shuffle(&mut StdRng::seed_from_u64(
                    self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ));
            }
            self.current = Some((epoch, order));
        }
        self.current.as_ref().unwrap().1[k % self.total]
    }
}
