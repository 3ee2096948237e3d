//! Padding a batch of sequences of different lengths: to the longest in the batch
//! (never to a fixed length), with the attention mask that tells the model which are
//! tokens. Training batches, the tasks and their CLI all pad through [`pad_batch`].

use candle_core::{Device, Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Pad after the tokens (encoders).
    Right,
    /// Pad before the tokens, so that every row ends at its last token (decoder-only
    /// generation appends on the right).
    Left,
}

/// (ids, attention_mask), both (B, T_max) u32, mask 1 for tokens, 0 for padding.
pub fn pad_batch(
    seqs: &[Vec<u32>],
    pad_id: u32,
    side: Padding,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * len);
    let mut mask = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        let pad = len - s.len();
        let (pad_ids, pad_mask) = (
            std::iter::repeat_n(pad_id, pad),
            std::iter::repeat_n(0u32, pad),
        );
        let (tok_ids, tok_mask) = (s.iter().copied(), std::iter::repeat_n(1u32, s.len()));
        match side {
            Padding::Right => {
                ids.extend(tok_ids.chain(pad_ids));
                mask.extend(tok_mask.chain(pad_mask));
            }
            Padding::Left => {
                ids.extend(pad_ids.chain(tok_ids));
                mask.extend(pad_mask.chain(tok_mask));
            }
        }
    }
    Ok((
        Tensor::from_vec(ids, (seqs.len(), len), device)?,
        Tensor::from_vec(mask, (seqs.len(), len), device)?,
    ))
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
}
