//! Continuous batching for a causal LM (what TGI and vLLM do for a server): sequences
//! join a running batch between decode steps and leave it the step they finish, and
//! every step is one forward pass over all of them.
//!
//! The batch keeps one KV cache with a column per step. A sequence joins with its
//! prompt's keys and values right-aligned to the batch's newest column, padding in
//! front hidden by its row of the key-padding mask; GPT-2's positions are counted over
//! a row's own tokens ([`Gpt2::hidden_states`] with a mask), so a row computes what it
//! would alone. Columns that no row uses any more (the oldest sequence left) are
//! dropped, so the batch never holds more columns than its longest sequence.

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::error::{Result, WickError};
use crate::models::{Gpt2, Gpt2Cache};

/// A prompt run alone: its cache and the logits that choose its first token.
pub struct Prefilled {
    cache: Gpt2Cache,
    len: usize,
    /// The next-token logits of the last position: (V,).
    pub last: Vec<f32>,
    /// With `every_position`: the logits at each prompt position, (T, V), for the
    /// prompt's own log-probabilities (`echo` with `logprobs`).
    pub every: Option<Tensor>,
}

pub struct RunningBatch<'a> {
    model: &'a Gpt2,
    cache: Gpt2Cache,
    /// Per row, per column: 1 where the column holds one of the row's tokens.
    mask: Vec<Vec<u32>>,
    device: Device,
}

impl<'a> RunningBatch<'a> {
    pub fn new(model: &'a Gpt2, device: &Device) -> Self {
        Self {
            model,
            cache: Gpt2Cache::default(),
            mask: vec![],
            device: device.clone(),
        }
    }

    /// Rows (sequences) in the batch.
    pub fn rows(&self) -> usize {
        self.mask.len()
    }

    /// Positions held per row, padding included.
    pub fn columns(&self) -> usize {
        self.mask.first().map_or(0, Vec::len)
    }

    /// Runs `prompt` alone through the model (nothing joins yet).
    pub fn prefill(&self, prompt: &[u32], every_position: bool) -> Result<Prefilled> {
        if prompt.is_empty() {
            return Err(WickError::Unsupported("a prompt is empty".into()));
        }
        let mut cache = self.model.new_cache(prompt.len());
        let ids = Tensor::new(prompt, &self.device)?.unsqueeze(0)?; // (1, T)
        let h = self
            .model
            .hidden_states(&ids, None, Some(&mut cache), false)?; // (1, T, C)
        let t = prompt.len();
        let last_h = h.i((.., t - 1..))?.contiguous()?; // (1, 1, C)
        let last = self.model.lm_logits(&last_h)?.flatten_all()?; // (V,)
        let every = match every_position {
            true => Some(self.model.lm_logits(&h)?.squeeze(0)?), // (T, V)
            false => None,
        };
        Ok(Prefilled {
            cache,
            len: t,
            last: last.to_dtype(DType::F32)?.to_vec1()?,
            every,
        })
    }

    /// Adds `copies` rows that continue the prefilled prompt (one per choice).
    pub fn join(&mut self, p: &Prefilled, copies: usize) -> Result<()> {
        let context = self.model.config().n_positions;
        if p.len > context {
            return Err(WickError::TooLong {
                len: p.len,
                max: context,
            });
        }
        let columns = self.columns().max(p.len);
        for row in &mut self.mask {
            let missing = columns - row.len();
            row.splice(0..0, std::iter::repeat_n(0, missing));
        }
        // One join for every copy: each join copies the whole batch's cache.
        let mut copied = p.cache.clone();
        if copies > 1 {
            let rows = Tensor::new(vec![0u32; copies].as_slice(), &self.device)?;
            copied.select_batch(&rows)?;
        }
        self.cache.join(&copied)?;
        for _ in 0..copies {
            let mut row = vec![0; columns - p.len];
            row.extend(std::iter::repeat_n(1, p.len));
            self.mask.push(row);
        }
        Ok(())
    }

    /// Feeds one token per row (in row order) and returns each row's next-token logits.
    pub fn step(&mut self, next: &[u32]) -> Result<Vec<Vec<f32>>> {
        if next.len() != self.rows() {
            return Err(WickError::Unsupported(format!(
                "{} tokens for a batch of {} rows",
                next.len(),
                self.rows()
            )));
        }
        self.mask.iter_mut().for_each(|row| row.push(1));
        let ids = Tensor::new(next, &self.device)?.unsqueeze(1)?; // (B, 1)
                                                                  // No padding anywhere (one row, or rows in step): the unmasked path, which is
                                                                  // what `generate` runs for a single prompt.
        let mask = match self.mask.iter().all(|r| r.iter().all(|&m| m == 1)) {
            true => None,
            false => {
                let flat: Vec<u32> = self.mask.iter().flatten().copied().collect();
                Some(Tensor::from_vec(
                    flat,
                    (self.rows(), self.columns()),
                    &self.device,
                )?)
            }
        };
        let h = self
            .model
            .hidden_states(&ids, mask.as_ref(), Some(&mut self.cache), false)?; // (B, 1, C)
        let logits = self.model.lm_logits(&h)?.squeeze(1)?; // (B, V)
        Ok(logits.to_dtype(DType::F32)?.to_vec2()?)
    }

    /// Keeps the rows `keep` (ascending), in that order; the others leave.
    pub fn keep(&mut self, keep: &[usize]) -> Result<()> {
        if keep.len() == self.rows() {
            return Ok(());
        }
        if keep.is_empty() {
            self.cache = Gpt2Cache::default();
            self.mask.clear();
            return Ok(());
        }
        let idx: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
        self.cache
            .select_batch(&Tensor::new(idx.as_slice(), &self.device)?)?;
        self.mask = keep.iter().map(|&r| self.mask[r].clone()).collect();
        // Leading columns no remaining row uses.
        let unused = (0..self.columns())
            .take_while(|&c| self.mask.iter().all(|r| r[c] == 0))
            .count();
        if unused > 0 {
            self.cache.drop_front(unused)?;
            self.mask.iter_mut().for_each(|r| {
                r.drain(..unused);
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{generate, Flow, GenerateOptions};
    use crate::models::Gpt2Config;
    use candle_nn::{VarBuilder, VarMap};

    fn tiny() -> Gpt2 {
        let cfg = Gpt2Config {
            vocab_size: 37,
            n_positions: 48,
            n_embd: 16,
            n_layer: 2,
            n_head: 2,
            n_inner: None,
            activation_function: crate::nn::Activation::GeluNew,
            layer_norm_epsilon: 1e-5,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            bos_token_id: None,
            eos_token_id: vec![],
            pad_token_id: None,
            tie_word_embeddings: true,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            add_cross_attention: false,
        };
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Gpt2::load(&cfg, vb).unwrap()
    }

    fn alone(model: &Gpt2, prompt: &[u32], n: usize) -> Vec<u32> {
        let opts = GenerateOptions {
            max_new_tokens: n,
            ..Default::default()
        };
        generate(model, &[prompt.to_vec()], &opts, &Device::Cpu, |_, _| {
            Ok(Flow::Continue)
        })
        .unwrap()
        .remove(0)
        .remove(0)
        .ids
    }

    /// Sequences that join at different steps and leave early each get the greedy
    /// tokens they get alone.
    #[test]
    fn joining_and_leaving_rows_decode_as_alone() -> Result<()> {
        let model = tiny();
        let dev = Device::Cpu;
        let prompts: Vec<Vec<u32>> = vec![
            vec![3, 9, 4],
            vec![7],
            vec![1, 2, 3, 4, 5, 6, 7],
            vec![30, 2],
        ];
        let lengths = [12, 5, 9, 6];
        let joins_at = [0, 0, 2, 6]; // step at which each prompt arrives
        let mut batch = RunningBatch::new(&model, &dev);
        let mut rows: Vec<(usize, Vec<f32>)> = vec![]; // (prompt, next logits)
        let mut out: Vec<Vec<u32>> = vec![vec![]; prompts.len()];
        for step in 0.. {
            for (p, &at) in joins_at.iter().enumerate() {
                if at == step {
                    let pre = batch.prefill(&prompts[p], false)?;
                    batch.join(&pre, 1)?;
                    rows.push((p, pre.last));
                }
            }
            let mut next = vec![];
            let mut keep = vec![];
            for (r, (p, logits)) in rows.iter().enumerate() {
                let id = crate::generation::sampler::argmax(logits);
                out[*p].push(id);
                if out[*p].len() < lengths[*p] {
                    keep.push(r);
                    next.push(id);
                }
            }
            batch.keep(&keep)?;
            rows = keep.iter().map(|&r| rows[r].clone()).collect();
            if rows.is_empty() && step >= *joins_at.iter().max().unwrap() {
                break;
            }
            if !rows.is_empty() {
                for (row, logits) in rows.iter_mut().zip(batch.step(&next)?) {
                    row.1 = logits;
                }
            }
        }
        for (p, prompt) in prompts.iter().enumerate() {
            assert_eq!(out[p], alone(&model, prompt, lengths[p]), "prompt {p}");
        }
        Ok(())
    }

    #[test]
    fn columns_shrink_when_the_oldest_row_leaves() -> Result<()> {
        let model = tiny();
        let mut batch = RunningBatch::new(&model, &Device::Cpu);
        let long = batch.prefill(&[1; 10], false)?;
        batch.join(&long, 1)?;
        let short = batch.prefill(&[2; 3], false)?;
        batch.join(&short, 2)?;
        assert_eq!((batch.rows(), batch.columns()), (3, 10));
        batch.step(&[4, 5, 5])?;
        batch.keep(&[1, 2])?;
        assert_eq!((batch.rows(), batch.columns()), (2, 4));
        assert_eq!(batch.step(&[6, 6])?.len(), 2);
        Ok(())
    }
}
