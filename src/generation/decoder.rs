//! What every decoding strategy needs from a model: the next-token logits of the newest
//! position given everything fed so far (held in a KV cache), and the means to reorder
//! or restart that cache. GPT-2 and the encoder-decoder both implement it, so greedy,
//! sampling and beam search are written once.

use candle_core::{IndexOp, Result, Tensor};

use crate::models::{Gpt2, Gpt2Cache, Seq2Seq, Seq2SeqCache};

pub trait Decoder {
    /// The longest sequence the decoder's positions allow.
    fn max_len(&self) -> usize;
    /// Positions held in the cache.
    fn past_len(&self) -> usize;
    /// Feeds ids (B, T) with an optional key-padding mask (B, past + T) and returns the
    /// logits of the last position: (B, V).
    fn step(&mut self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor>;
    /// Forgets every fed token (the window slides and is re-encoded).
    fn reset(&mut self);
    /// Keeps the batch rows `indices` (U32, (B',)), in that order.
    fn reorder(&mut self, indices: &Tensor) -> Result<()>;
}

/// A GPT-2 with its cache, for one generation.
pub struct Gpt2Decoder<'a> {
    model: &'a Gpt2,
    cache: Gpt2Cache,
}

impl<'a> Gpt2Decoder<'a> {
    /// `capacity`: the positions to preallocate (prompt plus new tokens).
    pub fn new(model: &'a Gpt2, capacity: usize) -> Self {
        let capacity = capacity.min(model.config().n_positions);
        Self {
            model,
            cache: model.new_cache(capacity),
        }
    }
}

impl Decoder for Gpt2Decoder<'_> {
    fn max_len(&self) -> usize {
        self.model.config().n_positions
    }

    fn past_len(&self) -> usize {
        self.cache.len()
    }

    fn step(&mut self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self
            .model
            .hidden_states(ids, mask, Some(&mut self.cache), false)?; // (B, T, C)
                                                                      // Only the last position is projected: a 256-token prompt would otherwise cost
                                                                      // 256 vocabulary-sized matmul rows for nothing.
        let last = h.i((.., h.dim(1)? - 1..))?.contiguous()?; // (B, 1, C)
        self.model.lm_logits(&last)?.squeeze(1) // (B, V)
    }

    fn reset(&mut self) {
        self.cache.reset();
    }

    fn reorder(&mut self, indices: &Tensor) -> Result<()> {
        self.cache.select_batch(indices)
    }
}

/// The encoder-decoder with the encoder output of a source batch, computed once.
pub struct Seq2SeqDecoder<'a> {
    model: &'a Seq2Seq,
    memory: Tensor,           // (B, S, C)
    src_mask: Option<Tensor>, // (B, S)
    cache: Seq2SeqCache,
    capacity: usize,
}

impl<'a> Seq2SeqDecoder<'a> {
    /// Encodes `src` (B, S) once; each source row is repeated `copies` times (beams or
    /// return sequences), adjacent.
    pub fn new(
        model: &'a Seq2Seq,
        src: &Tensor,
        src_mask: Option<&Tensor>,
        copies: usize,
        capacity: usize,
    ) -> Result<Self> {
        let memory = model.encode(src, src_mask, false)?;
        let rows: Vec<u32> = (0..src.dim(0)? as u32)
            .flat_map(|r| std::iter::repeat_n(r, copies))
            .collect();
        let rows = Tensor::new(rows, src.device())?;
        let capacity = capacity.min(model.config().max_position_embeddings);
        Ok(Self {
            model,
            memory: memory.index_select(&rows, 0)?,
            src_mask: src_mask.map(|m| m.index_select(&rows, 0)).transpose()?,
            cache: model.new_cache(capacity),
            capacity,
        })
    }
}

impl Decoder for Seq2SeqDecoder<'_> {
    fn max_len(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    fn past_len(&self) -> usize {
        self.cache.len()
    }

    fn step(&mut self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let logits = self.model.decode(
            ids,
            &self.memory,
            self.src_mask.as_ref(),
            mask,
            Some(&mut self.cache),
            false,
        )?; // (B, T, V)
        logits.i((.., logits.dim(1)? - 1))?.contiguous() // (B, V)
    }

    fn reset(&mut self) {
        self.cache = self.model.new_cache(self.capacity);
    }

    fn reorder(&mut self, indices: &Tensor) -> Result<()> {
        self.cache.select_batch(indices)?;
        self.memory = self.memory.index_select(indices, 0)?;
        self.src_mask = self
            .src_mask
            .as_ref()
            .map(|m| m.index_select(indices, 0))
            .transpose()?;
        Ok(())
    }
}
