//! Parallel text for the encoder-decoder: `source<TAB>target` per line (extra columns,
//! such as Tatoeba's attribution, ignored), tokenized once and served as padded batches
//! for teacher forcing, shuffled per epoch with a seed.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Result, WickError};
use crate::labels::IGNORE;
pub use crate::models::seq2seq::Framing;
use crate::tokenizer::Tokenizer;

/// Reads the pairs of a TSV file; a line without a tab is an error naming it.
pub fn read_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path).map_err(|e| WickError::io(path, e))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| WickError::Unsupported(format!("{}: not UTF-8 text ({e})", path.display())))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split('\t');
        match (cols.next(), cols.next()) {
            (Some(s), Some(t)) if !s.trim().is_empty() && !t.trim().is_empty() => {
                pairs.push((s.trim().to_string(), t.trim().to_string()))
            }
            _ => {
                return Err(WickError::Unsupported(format!(
                    "{}:{}: expected `source<TAB>target`, got {line:?}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    if pairs.is_empty() {
        return Err(WickError::Unsupported(format!(
            "{}: no sentence pairs",
            path.display()
        )));
    }
    Ok(pairs)
}

/// Token ids of one pair: source ending in EOS, target ending in EOS (the decoder input
/// is BOS + target without its EOS; the labels are the target).
#[derive(Debug, Clone)]
pub struct EncodedPair {
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
}

/// `--labels-as-target`: each target cell of comma-separated labels (names, or with
/// `names` also their 0-based ids) rewritten as the label names in one canonical order
/// (the names' order, else alphabetical), "joy, love", so that a translator learns to
/// write a text's label set and decides itself how many.
pub fn labels_as_target(pairs: &mut [(String, String)], names: Option<&[String]>) -> Result<()> {
    for (i, (_, target)) in pairs.iter_mut().enumerate() {
        let mut set: Vec<(usize, String)> = Vec::new();
        for part in target.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let entry = match names {
                None => (0, part.to_string()),
                Some(names) => {
                    let k = names
                        .iter()
                        .position(|n| n == part)
                        .or_else(|| part.parse::<usize>().ok().filter(|&k| k < names.len()))
                        .ok_or_else(|| {
                            WickError::Unsupported(format!(
                                "pair {}: label `{part}` is neither a name in --label-names nor an id below {}",
                                i + 1,
                                names.len()
                            ))
                        })?;
                    (k, names[k].clone())
                }
            };
            if !set.contains(&entry) {
                set.push(entry);
            }
        }
        set.sort();
        *target = set
            .into_iter()
            .map(|(_, n)| n)
            .collect::<Vec<_>>()
            .join(", ");
    }
    Ok(())
}

/// A decoded label set: the comma-separated names, trimmed, without repeats.
pub fn label_set_of(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    out
}

/// Encodes text for either side, framed as the model reads it (`[<s>] ... </s>`) and cut
/// to `max_len` tokens.
pub fn encode_side(
    tok: &Tokenizer,
    text: &str,
    framing: Framing,
    max_len: usize,
) -> Result<Vec<u32>> {
    Ok(framing.apply(tok.encode(text, false)?, max_len).0)
}

/// Every pair encoded: the source with `tok`'s source side, the target with `tok`, each
/// framed and cut to `max_len` tokens. Training and `wick eval` both encode so.
pub fn encode_pairs(
    tok: &Tokenizer,
    pairs: &[(String, String)],
    framing: Framing,
    max_len: usize,
) -> Result<Vec<EncodedPair>> {
    pairs
        .iter()
        .map(|(src, tgt)| {
            Ok(EncodedPair {
                src: encode_side(tok.source_side(), src, framing, max_len)?,
                tgt: encode_side(tok, tgt, framing, max_len)?,
            })
        })
        .collect()
}

/// A teacher-forcing batch, every tensor (B, T) u32.
pub struct PairBatch {
    pub src: Tensor,
    pub src_mask: Tensor,
    /// BOS + target, right-padded.
    pub tgt_in: Tensor,
    pub tgt_mask: Tensor,
    /// Target + EOS, `IGNORE` at padding.
    pub labels: Tensor,
}

impl PairBatch {
    /// `part`'s rows of the batch.
    pub fn rows(self, part: super::Part) -> Result<Self> {
        Ok(Self {
            src: part.rows(&self.src)?,
            src_mask: part.rows(&self.src_mask)?,
            tgt_in: part.rows(&self.tgt_in)?,
            tgt_mask: part.rows(&self.tgt_mask)?,
            labels: part.rows(&self.labels)?,
        })
    }
}

pub struct PairBatches {
    pairs: Vec<EncodedPair>,
    batch_size: usize,
    pad: u32,
    bos: u32,
    order: super::order::EpochOrder,
}

impl PairBatches {
    pub fn new(
        pairs: Vec<EncodedPair>,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        pad: u32,
        bos: u32,
    ) -> Self {
        Self {
            order: super::order::EpochOrder::new(pairs.len(), seed, shuffle),
            pairs,
            batch_size,
            pad,
            bos,
        }
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn pairs(&self) -> &[EncodedPair] {
        &self.pairs
    }

    /// Batches in one ordered pass.
    pub fn batches_per_pass(&self) -> usize {
        self.len().div_ceil(self.batch_size)
    }

    /// The pairs of batch `n`, as indices into [`Self::pairs`]: shuffled epochs when
    /// training, in order (last batch short) otherwise.
    pub fn picks(&mut self, n: usize) -> Vec<usize> {
        self.order.batch(n, self.batch_size)
    }

    /// The sources of `picks`, right-padded: (ids, mask), both (B, S).
    pub fn sources(&self, picks: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let src: Vec<Vec<u32>> = picks.iter().map(|&i| self.pairs[i].src.clone()).collect();
        Ok(super::pad_batch(
            &src,
            self.pad,
            super::Padding::Right,
            device,
        )?)
    }

    /// Batch `n`, for teacher forcing.
    pub fn batch(&mut self, n: usize, device: &Device) -> Result<PairBatch> {
        let picks = self.picks(n);
        let tgt_in: Vec<Vec<u32>> = picks
            .iter()
            .map(|&i| {
                let t = &self.pairs[i].tgt;
                std::iter::once(self.bos)
                    .chain(t[..t.len() - 1].iter().copied())
                    .collect()
            })
            .collect();
        let labels: Vec<Vec<u32>> = picks.iter().map(|&i| self.pairs[i].tgt.clone()).collect();
        use super::{pad_batch, Padding};
        let (src, src_mask) = self.sources(&picks, device)?;
        let (tgt_in, tgt_mask) = pad_batch(&tgt_in, self.pad, Padding::Right, device)?;
        let (labels, _) = pad_batch(&labels, IGNORE, Padding::Right, device)?;
        Ok(PairBatch {
            src,
            src_mask,
            tgt_in,
            tgt_mask,
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_ignoring_extra_columns_and_names_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.tsv");
        std::fs::write(&p, "Go.\tVa !\tCC-BY attribution\n\nHi.\tSalut.\n").unwrap();
        let pairs = read_pairs(&p).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("Go.".into(), "Va !".into()),
                ("Hi.".into(), "Salut.".into())
            ]
        );
        std::fs::write(&p, "Go.\tVa !\nno tab here\n").unwrap();
        let e = read_pairs(&p).unwrap_err().to_string();
        assert!(
            e.contains("p.tsv:2") && e.contains("source<TAB>target"),
            "{e}"
        );
        std::fs::write(&p, "\n\n").unwrap();
        assert!(read_pairs(&p)
            .unwrap_err()
            .to_string()
            .contains("no sentence pairs"));
    }

    #[test]
    fn decoder_input_is_the_target_shifted_right_after_bos() {
        let pairs = vec![
            EncodedPair {
                src: vec![5, 6, 2],
                tgt: vec![7, 8, 9, 2],
            },
            EncodedPair {
                src: vec![5, 2],
                tgt: vec![7, 2],
            },
        ];
        let mut b = PairBatches::new(pairs, 2, 0, false, 0, 1);
        let x = b.batch(0, &Device::Cpu).unwrap();
        assert_eq!(
            x.tgt_in.to_vec2::<u32>().unwrap(),
            vec![vec![1, 7, 8, 9], vec![1, 7, 0, 0]]
        );
        assert_eq!(
            x.labels.to_vec2::<u32>().unwrap(),
            vec![vec![7, 8, 9, 2], vec![7, 2, IGNORE, IGNORE]]
        );
        assert_eq!(
            x.src_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 1, 0]]
        );
    }

    #[test]
    fn framing_keeps_start_and_eos_when_it_cuts() {
        let marian = Framing {
            start: None,
            eos: 2,
        };
        assert_eq!(marian.apply(vec![7, 8, 9], 8), (vec![7, 8, 9, 2], None));
        assert_eq!(marian.apply(vec![7, 8, 9], 3), (vec![7, 8, 2], Some(4)));
        let bart = Framing {
            start: Some(0),
            eos: 2,
        };
        assert_eq!(bart.apply(vec![7, 8, 9], 5), (vec![0, 7, 8, 9, 2], None));
        assert_eq!(bart.apply(vec![7, 8, 9], 4), (vec![0, 7, 8, 2], Some(5)));
        assert_eq!(bart.apply(vec![], 4), (vec![0, 2], None));
    }

    #[test]
    fn label_targets_are_names_in_one_order() {
        let names: Vec<String> = ["anger", "joy", "love"].map(String::from).to_vec();
        let mut pairs = vec![
            ("a".to_string(), "2,1".to_string()),
            ("b".into(), "joy, 0, joy".into()),
        ];
        labels_as_target(&mut pairs, Some(&names)).unwrap();
        assert_eq!(pairs[0].1, "joy, love");
        assert_eq!(pairs[1].1, "anger, joy");
        let mut bad = vec![("c".to_string(), "7".to_string())];
        assert!(labels_as_target(&mut bad, Some(&names)).is_err());
        assert_eq!(label_set_of(" joy,love ,joy"), ["joy", "love"]);
    }
}
