//! Batches for the conditional masked LM that trains a non-autoregressive decoder
//! (Mask-Predict): each target (EOS included) has a uniformly drawn number 1..=L of its
//! L positions replaced by `<mask>`, and the loss reads only those. The decoder input is
//! the target itself, unshifted: position t predicts the token at t. The draws are
//! seeded, so a resumed run repeats them and every evaluation sees the same masks.

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, seq::index::sample, Rng, SeedableRng};

use super::pairs::{EncodedPair, PairBatches};
use super::{pad_batch, Padding};
use crate::error::Result;
use crate::labels::IGNORE;

pub struct NatBatch {
    pub src: Tensor,
    pub src_mask: Tensor,
    /// The targets with their masked positions replaced by the mask token: (B, T).
    pub tgt_in: Tensor,
    pub tgt_mask: Tensor,
    /// The true token at masked positions, [`IGNORE`] elsewhere: (B, T).
    pub labels: Tensor,
    /// Each source's and target's length in tokens (EOS included), from which the
    /// length predictor's classes follow.
    pub src_lengths: Vec<usize>,
    pub tgt_lengths: Vec<usize>,
}

impl NatBatch {
    /// `part`'s rows of the batch.
    pub fn rows(self, part: super::Part) -> Result<Self> {
        Ok(Self {
            src: part.rows(&self.src)?,
            src_mask: part.rows(&self.src_mask)?,
            tgt_in: part.rows(&self.tgt_in)?,
            tgt_mask: part.rows(&self.tgt_mask)?,
            labels: part.rows(&self.labels)?,
            src_lengths: part.items(&self.src_lengths),
            tgt_lengths: part.items(&self.tgt_lengths),
        })
    }
}

/// [`PairBatches`]' order and sources, with masked targets.
pub struct NatBatches {
    pairs: PairBatches,
    seed: u64,
    shuffle: bool,
    pad: u32,
    mask: u32,
}

impl NatBatches {
    pub fn new(
        pairs: Vec<EncodedPair>,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        pad: u32,
        mask: u32,
    ) -> Self {
        Self {
            // No teacher forcing here: the BOS it would prepend is never read.
            pairs: PairBatches::new(pairs, batch_size, seed, shuffle, pad, pad),
            seed,
            shuffle,
            pad,
            mask,
        }
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Batches in one ordered pass.
    pub fn batches_per_pass(&self) -> usize {
        self.pairs.batches_per_pass()
    }

    /// Batch `n`: shuffled epochs when training, in order (last batch short) otherwise.
    /// Each pair's masks are drawn from (seed, its index, and when training the batch
    /// number): in order, a pair is masked the same way whatever the batch size.
    pub fn batch(&mut self, n: usize, device: &Device) -> Result<NatBatch> {
        let picks = self.pairs.picks(n);
        let pairs = self.pairs.pairs();
        let draw = if self.shuffle { n as u64 + 1 } else { 0 };
        let (mut inputs, mut labels) = (Vec::new(), Vec::new());
        for &i in &picks {
            let mut rng = StdRng::seed_from_u64(
                self.seed
                    ^ 0x4e41_5400
                    ^ draw.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ^ (i as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
            );
            let (input, label) = mask_target(&pairs[i].tgt, self.mask, &mut rng);
            inputs.push(input);
            labels.push(label);
        }
        let (src, src_mask) = self.pairs.sources(&picks, device)?;
        let (tgt_in, tgt_mask) = pad_batch(&inputs, self.pad, Padding::Right, device)?;
        let (labels, _) = pad_batch(&labels, IGNORE, Padding::Right, device)?;
        Ok(NatBatch {
            src,
            src_mask,
            tgt_in,
            tgt_mask,
            labels,
            src_lengths: picks.iter().map(|&i| pairs[i].src.len()).collect(),
            tgt_lengths: picks.iter().map(|&i| pairs[i].tgt.len()).collect(),
        })
    }
}

/// Masks k of the target's L positions, k uniform in 1..=L: (decoder input, labels).
pub fn mask_target(tgt: &[u32], mask: u32, rng: &mut impl Rng) -> (Vec<u32>, Vec<u32>) {
    let mut input = tgt.to_vec();
    let mut labels = vec![IGNORE; tgt.len()];
    if tgt.is_empty() {
        return (input, labels);
    }
    let k = rng.random_range(1..=tgt.len());
    for t in sample(rng, tgt.len(), k) {
        input[t] = mask;
        labels[t] = tgt[t];
    }
    (input, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_between_one_and_every_position_and_labels_only_those() {
        let tgt: Vec<u32> = (10..20).collect();
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let (input, labels) = mask_target(&tgt, 3, &mut rng);
            let masked: Vec<usize> = (0..tgt.len()).filter(|&t| input[t] == 3).collect();
            assert!(!masked.is_empty());
            for t in 0..tgt.len() {
                if input[t] == 3 {
                    assert_eq!(labels[t], tgt[t]);
                } else {
                    assert_eq!((input[t], labels[t]), (tgt[t], IGNORE));
                }
            }
            counts.insert(masked.len());
        }
        // Every count from 1 to L turns up.
        assert_eq!(counts, (1..=10).collect());
    }

    #[test]
    fn the_same_batch_number_masks_the_same_way() {
        let pairs: Vec<EncodedPair> = (0..6)
            .map(|i| EncodedPair {
                src: vec![5 + i, 2],
                tgt: vec![7, 8 + i, 9, 2],
            })
            .collect();
        let mut a = NatBatches::new(pairs.clone(), 4, 1, true, 0, 3);
        let mut b = NatBatches::new(pairs, 4, 1, true, 0, 3);
        let d = Device::Cpu;
        let (x, y) = (a.batch(5, &d).unwrap(), b.batch(5, &d).unwrap());
        assert_eq!(
            x.tgt_in.to_vec2::<u32>().unwrap(),
            y.tgt_in.to_vec2::<u32>().unwrap()
        );
        assert_eq!((x.src_lengths, x.tgt_lengths), (vec![2; 4], vec![4; 4]));
    }

    #[test]
    fn in_order_a_pair_is_masked_the_same_way_at_any_batch_size() {
        let pairs: Vec<EncodedPair> = (0..6)
            .map(|i| EncodedPair {
                src: vec![5 + i, 2],
                tgt: (0..8).map(|t| 7 + t + i).chain([2]).collect(),
            })
            .collect();
        let d = Device::Cpu;
        let rows = |bs: usize| -> Vec<Vec<u32>> {
            let mut b = NatBatches::new(pairs.clone(), bs, 0, false, 0, 3);
            (0..b.batches_per_pass())
                .flat_map(|n| b.batch(n, &d).unwrap().tgt_in.to_vec2::<u32>().unwrap())
                .collect()
        };
        assert_eq!(rows(1), rows(4));
    }
}
