//! Masked-LM batches, the run_mlm convention: the token stream is cut into windows of
//! block_size − 2 tokens, each wrapped in [CLS] … [SEP]; 15% of the window's tokens are
//! chosen, of which 80% become [MASK], 10% a random token and 10% stay; the loss is taken
//! on the chosen positions only (labels elsewhere are `IGNORE`). Masks come from a seeded
//! generator keyed by the batch number, so a resumed run masks exactly as before.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{LmBatches, TokenBuffer};
use crate::error::{Result, WickError};
use crate::nn::fused::IGNORE;
use crate::tokenizer::Tokenizer;

pub struct MlmBatches {
    windows: LmBatches,
    cls: u32,
    sep: u32,
    mask: u32,
    vocab: u32,
    seed: u64,
    prob: f64,
}

impl MlmBatches {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tokens: Arc<TokenBuffer>,
        start: usize,
        len: usize,
        block_size: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        tok: &Tokenizer,
    ) -> Result<Self> {
        let id = |t: &str| {
            tok.token_to_id(t).ok_or_else(|| {
                WickError::Unsupported(format!("masked LM needs a {t} token in the tokenizer"))
            })
        };
        if block_size < 4 {
            return Err(WickError::Unsupported(
                "--block-size must be at least 4 for masked LM".into(),
            ));
        }
        Ok(Self {
            windows: LmBatches::new(
                tokens,
                start,
                len,
                block_size - 2,
                batch_size,
                seed,
                shuffle,
            )?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
            vocab: tok.vocab_size() as u32,
            seed,
            prob: 0.15,
        })
    }

    pub fn windows_per_epoch(&self) -> usize {
        self.windows.windows_per_epoch()
    }

    /// Batch `n`: (masked ids, labels), each (B, block_size) u32.
    pub fn batch(&mut self, n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let (x, _) = self.windows.batch(n, device)?;
        let rows = x.to_vec2::<u32>()?;
        let mut rng = StdRng::seed_from_u64(
            self.seed ^ 0x6d61_736b ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        let mut chosen = 0usize;
        for row in &rows {
            ids.push(self.cls);
            labels.push(IGNORE);
            for &t in row {
                if rng.random_bool(self.prob) {
                    chosen += 1;
                    labels.push(t);
                    let r: f64 = rng.random();
                    ids.push(if r < 0.8 {
                        self.mask
                    } else if r < 0.9 {
                        rng.random_range(0..self.vocab)
                    } else {
                        t
                    });
                } else {
                    ids.push(t);
                    labels.push(IGNORE);
                }
            }
            ids.push(self.sep);
            labels.push(IGNORE);
        }
        if chosen == 0 {
            // Always at least one prediction, so the loss is defined.
            labels[1] = rows[0][0];
            ids[1] = self.mask;
        }
        let shape = (rows.len(), rows[0].len() + 2);
        Ok((
            Tensor::from_vec(ids, shape, device)?,
            Tensor::from_vec(labels, shape, device)?,
        ))
    }
}
