//! Batching sequences of different lengths: pad to the longest in the batch (never to a
//! fixed length) and build the attention mask that tells the model which are tokens.

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

/// Runs `f` over the texts in batches of `batch_size`, longest texts first so each batch
/// holds similar lengths (less padding, as sentence-transformers does), and returns the
/// results in input order. `on_batch(n)` is told how many texts each batch finished.
pub fn map_batches<T>(
    texts: &[String],
    batch_size: usize,
    mut f: impl FnMut(&[String]) -> crate::error::Result<Vec<T>>,
    mut on_batch: impl FnMut(usize),
) -> crate::error::Result<Vec<T>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
    let mut out: Vec<Option<T>> = (0..texts.len()).map(|_| None).collect();
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
        for (&i, r) in chunk.iter().zip(f(&batch)?) {
            out[i] = Some(r);
        }
        on_batch(chunk.len());
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every text batched"))
        .collect())
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn batches_by_length_and_restores_order() {
        let texts: Vec<String> = ["a", "ccc", "bb", "dddd", "e"].map(String::from).to_vec();
        let mut sizes = vec![];
        let out = map_batches(
            &texts,
            2,
            |b| {
                sizes.push(b.iter().map(String::len).collect::<Vec<_>>());
                Ok(b.iter().map(|t| t.to_uppercase()).collect())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(out, vec!["A", "CCC", "BB", "DDDD", "E"]);
        assert_eq!(sizes, vec![vec![4, 3], vec![2, 1], vec![1]]);
    }
}
