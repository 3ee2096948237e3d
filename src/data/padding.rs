//! Padding a batch of sequences of different lengths: to the longest in the batch
//! (never to a fixed length), with the attention mask that tells the model which are
//! tokens. Training batches, the tasks and their CLI all pad through [`pad_batch`];
//! generation keeps its left-padded rows growing in a [`Padded`], padded by the same
//! [`pad_row`].

use candle_core::{Device, Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Pad after the tokens (encoders).
    Right,
    /// Pad before the tokens, so that every row ends at its last token (decoder-only
    /// generation appends on the right).
    Left,
}

/// One sequence padded to `len` on `side`: (ids, attention mask: 1 for tokens).
pub fn pad_row(seq: &[u32], len: usize, pad_id: u32, side: Padding) -> (Vec<u32>, Vec<u32>) {
    let pad = len - seq.len();
    let (mut ids, mut mask) = (Vec::with_capacity(len), Vec::with_capacity(len));
    if side == Padding::Left {
        ids.resize(pad, pad_id);
        mask.resize(pad, 0);
    }
    ids.extend_from_slice(seq);
    mask.resize(mask.len() + seq.len(), 1);
    ids.resize(len, pad_id);
    mask.resize(len, 0);
    (ids, mask)
}

/// (ids, attention_mask), both (B, T_max) u32, mask 1 for tokens, 0 for padding.
pub fn pad_batch(
    seqs: &[Vec<u32>],
    pad_id: u32,
    side: Padding,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut mask) = (
        Vec::with_capacity(seqs.len() * len),
        Vec::with_capacity(seqs.len() * len),
    );
    for s in seqs {
        let (i, m) = pad_row(s, len, pad_id, side);
        ids.extend(i);
        mask.extend(m);
    }
    Ok((
        Tensor::from_vec(ids, (seqs.len(), len), device)?,
        Tensor::from_vec(mask, (seqs.len(), len), device)?,
    ))
}

/// Rows left-padded to one length that grow by a token each decoding step, with their
/// key-padding masks (1 = token).
pub struct Padded {
    tokens: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    /// Whether any row holds padding (no mask is needed otherwise).
    ragged: bool,
}

impl Padded {
    pub fn new(prompts: &[Vec<u32>], pad: u32) -> Self {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let (tokens, mask) = prompts
            .iter()
            .map(|p| pad_row(p, longest, pad, Padding::Left))
            .unzip();
        Self {
            tokens,
            mask,
            ragged: prompts.iter().any(|p| p.len() != longest),
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one token to every row.
    pub fn push(&mut self, next: &[u32]) {
        for ((row, m), &t) in self.tokens.iter_mut().zip(&mut self.mask).zip(next) {
            row.push(t);
            m.push(1);
        }
    }

    /// Keeps rows `rows`, in that order (beam search reorders its hypotheses).
    pub fn reorder(&mut self, rows: &[u32]) {
        self.tokens = rows
            .iter()
            .map(|&r| self.tokens[r as usize].clone())
            .collect();
        self.mask = rows
            .iter()
            .map(|&r| self.mask[r as usize].clone())
            .collect();
    }

    /// Columns `from..` of the tokens: (B, T).
    pub fn tokens_from(&self, from: usize, device: &Device) -> Result<Tensor> {
        columns(&self.tokens, from, device)
    }

    /// Columns `from..` of the mask, when there is padding: (B, T).
    pub fn mask_from(&self, from: usize, device: &Device) -> Result<Option<Tensor>> {
        Ok(if self.ragged {
            Some(columns(&self.mask, from, device)?)
        } else {
            None
        })
    }
}

fn columns(rows: &[Vec<u32>], from: usize, device: &Device) -> Result<Tensor> {
    let t = rows.first().map_or(0, Vec::len) - from;
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|r| r[from..].iter().copied())
        .collect();
    Tensor::from_vec(flat, (rows.len(), t), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_on_either_side() -> Result<()> {
        let seqs = vec![vec![5, 6, 7], vec![8]];
        let (ids, mask) = pad_batch(&seqs, 0, Padding::Right, &Device::Cpu)?;
        assert_eq!(ids.to_vec2::<u32>()?, vec![vec![5, 6, 7], vec![8, 0, 0]]);
        assert_eq!(mask.to_vec2::<u32>()?, vec![vec![1, 1, 1], vec![1, 0, 0]]);
        let (ids, mask) = pad_batch(&seqs, 9, Padding::Left, &Device::Cpu)?;
        assert_eq!(ids.to_vec2::<u32>()?, vec![vec![5, 6, 7], vec![9, 9, 8]]);
        assert_eq!(mask.to_vec2::<u32>()?, vec![vec![1, 1, 1], vec![0, 0, 1]]);
        Ok(())
    }

    #[test]
    fn padded_rows_grow_reorder_and_mask_only_when_ragged() -> Result<()> {
        let mut p = Padded::new(&[vec![5, 6], vec![7]], 0);
        assert_eq!(
            p.tokens_from(0, &Device::Cpu)?.to_vec2::<u32>()?,
            [[5, 6], [0, 7]]
        );
        p.push(&[1, 2]);
        p.reorder(&[1, 1]);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.tokens_from(1, &Device::Cpu)?.to_vec2::<u32>()?,
            [[7, 2], [7, 2]]
        );
        let mask = p.mask_from(0, &Device::Cpu)?.unwrap();
        assert_eq!(mask.to_vec2::<u32>()?, [[0, 1, 1], [0, 1, 1]]);
        assert!(Padded::new(&[vec![1], vec![2]], 0)
            .mask_from(0, &Device::Cpu)?
            .is_none());
        Ok(())
    }
}
