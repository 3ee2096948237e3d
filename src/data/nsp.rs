//! Next-sentence prediction batches, BERT's original pretraining data: the corpus is
//! documents (files, JSONL records, or blocks of a text file separated by blank lines)
//! of one sentence per line, the layout of BERT's `create_pretraining_data.py`. Each
//! example is `[CLS] A [SEP] B [SEP]` where A is a sentence and B, half of the time,
//! the sentence after it (label 0, "IsNext") and otherwise a random sentence of another
//! document (label 1, "NotNext"); token types are 0 up to the first [SEP], 1 after.
//! Both segments are then masked as for masked LM, and the two losses are summed.
//!
//! Pairs are drawn once, from the seed; batches are padded to their longest example and
//! served in a seeded order per epoch, with masks keyed by the batch number, so a resumed
//! run sees exactly what it would have.
//!
//! RoBERTa (Liu et al. 2019) found NSP does not help and dropped it; modern recipes
//! pretrain with masked LM alone (`--objective mlm`). It is here because it is part of
//! BERT's recipe, and its head is part of BertForPreTraining checkpoints.

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::mlm::{special_id, Masker};
use super::order::EpochOrder;
use super::{pad_batch, Padding};
use crate::error::{Result, WickError};
use crate::labels::IGNORE;
use crate::tokenizer::{Special, Tokenizer};

/// Label of a pair whose B follows A.
pub const IS_NEXT: u32 = 0;
/// Label of a pair whose B is a random sentence.
pub const NOT_NEXT: u32 = 1;

/// One example: segments A and B (no special tokens) and its NSP label.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePair {
    pub a: Vec<u32>,
    pub b: Vec<u32>,
    pub label: u32,
}

/// Documents as sentences: each document is split again on blank lines, each non-empty
/// line is a sentence.
pub fn split_sentences(documents: &[String]) -> Vec<Vec<String>> {
    documents
        .iter()
        .flat_map(|d| d.split("\n\n"))
        .map(|block| {
            block
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Draws the sentence pairs: every sentence that has a successor starts one pair.
/// Each pair is cut to `max_tokens` together, trimming the longer segment's end (BERT's
/// `truncate_seq_pair`).
pub fn draw_pairs(
    docs: &[Vec<Vec<u32>>],
    max_tokens: usize,
    seed: u64,
) -> Result<Vec<SentencePair>> {
    if docs.len() < 2 {
        return Err(WickError::Unsupported(format!(
            "next-sentence prediction needs at least two documents (separate them with a \
             blank line, or give a folder of files); this corpus has {}",
            docs.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_7370);
    let mut pairs = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        for i in 0..doc.len().saturating_sub(1) {
            let (b, label) = if rng.random_bool(0.5) {
                (doc[i + 1].clone(), IS_NEXT)
            } else {
                let mut other = rng.random_range(0..docs.len() - 1);
                if other >= d {
                    other += 1;
                }
                let o = &docs[other];
                (o[rng.random_range(0..o.len())].clone(), NOT_NEXT)
            };
            let (mut a, mut b) = (doc[i].clone(), b);
            while a.len() + b.len() > max_tokens {
                if a.len() >= b.len() {
                    a.pop();
                } else {
                    b.pop();
                }
            }
            if !a.is_empty() && !b.is_empty() {
                pairs.push(SentencePair { a, b, label });
            }
        }
    }
    if pairs.is_empty() {
        return Err(WickError::Unsupported(
            "next-sentence prediction needs documents of at least two sentences (lines)".into(),
        ));
    }
    Ok(pairs)
}

/// A batch: ids, token types, attention mask and MLM labels (B, T); NSP labels (B,).
pub struct NspBatch {
    pub ids: Tensor,
    pub token_types: Tensor,
    pub mask: Tensor,
    pub mlm_labels: Tensor,
    pub nsp_labels: Tensor,
}

impl NspBatch {
    /// `part`'s rows of the batch.
    pub fn rows(self, part: super::Part) -> Result<Self> {
        Ok(Self {
            ids: part.rows(&self.ids)?,
            token_types: part.rows(&self.token_types)?,
            mask: part.rows(&self.mask)?,
            mlm_labels: part.rows(&self.mlm_labels)?,
            nsp_labels: part.rows(&self.nsp_labels)?,
        })
    }
}

pub struct NspBatches {
    pairs: Vec<SentencePair>,
    masker: Masker,
    cls: u32,
    sep: u32,
    pad: u32,
    batch_size: usize,
    seed: u64,
    order: EpochOrder,
}

impl NspBatches {
    pub fn new(
        pairs: Vec<SentencePair>,
        tok: &Tokenizer,
        whole_word: bool,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
    ) -> Result<Self> {
        Ok(Self {
            order: EpochOrder::new(pairs.len(), seed, shuffle),
            pairs,
            masker: Masker::new(tok, whole_word)?,
            cls: special_id(tok, Special::Cls)?,
            sep: special_id(tok, Special::Sep)?,
            pad: tok.token_to_id("[PAD]").unwrap_or(0),
            batch_size,
            seed,
        })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Batches in one ordered pass (evaluation).
    pub fn batches_per_pass(&self) -> usize {
        self.len().div_ceil(self.batch_size)
    }

    pub fn batch(&mut self, n: usize, device: &Device) -> Result<NspBatch> {
        let picks = self.order.batch(n, self.batch_size);
        let mut rng = StdRng::seed_from_u64(
            self.seed ^ 0x006e_73706d ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let (mut seqs, mut types, mut labels) = (vec![], vec![], vec![]);
        let mut chosen = 0;
        for &i in &picks {
            let p = &self.pairs[i];
            let (mut ids, mut lab) = (vec![self.cls], vec![IGNORE]);
            chosen += self.masker.apply(&p.a, &mut rng, &mut ids, &mut lab);
            ids.push(self.sep);
            lab.push(IGNORE);
            let first = ids.len();
            chosen += self.masker.apply(&p.b, &mut rng, &mut ids, &mut lab);
            ids.push(self.sep);
            lab.push(IGNORE);
            let mut tt = vec![0u32; ids.len()];
            tt[first..].fill(1);
            seqs.push(ids);
            types.push(tt);
            labels.push(lab);
        }
        if chosen == 0 {
            // Always at least one prediction, so the masked-LM loss is defined.
            labels[0][1] = self.pairs[picks[0]].a[0];
            seqs[0][1] = self.masker.mask_id();
        }
        let (ids, mask) = pad_batch(&seqs, self.pad, Padding::Right, device)?;
        let (token_types, _) = pad_batch(&types, 0, Padding::Right, device)?;
        let (mlm_labels, _) = pad_batch(&labels, IGNORE, Padding::Right, device)?;
        let nsp = picks
            .iter()
            .map(|&i| self.pairs[i].label)
            .collect::<Vec<_>>();
        Ok(NspBatch {
            ids,
            token_types,
            mask,
            mlm_labels,
            nsp_labels: Tensor::new(nsp, device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<Vec<Vec<u32>>> {
        (0..4u32)
            .map(|d| (0..6u32).map(|s| vec![100 * d + s; 3]).collect())
            .collect()
    }

    #[test]
    fn pairs_are_next_or_from_another_document_about_half_and_half() {
        let docs = docs();
        let pairs = draw_pairs(&docs, 100, 7).unwrap();
        assert_eq!(pairs.len(), 4 * 5); // every sentence with a successor
        let mut next = 0;
        for p in &pairs {
            let (da, sa) = (p.a[0] / 100, p.a[0] % 100);
            let (db, sb) = (p.b[0] / 100, p.b[0] % 100);
            if p.label == IS_NEXT {
                next += 1;
                assert_eq!((db, sb), (da, sa + 1));
            } else {
                assert_ne!(db, da, "a NotNext B comes from another document");
            }
        }
        assert!((5..=15).contains(&next), "{next} of 20 IsNext");
        assert_eq!(pairs, draw_pairs(&docs, 100, 7).unwrap(), "seeded");
    }

    #[test]
    fn pairs_are_cut_to_fit_and_bad_corpora_are_named() {
        let docs = vec![vec![vec![1; 10], vec![2; 4]], vec![vec![3; 2]]];
        for p in draw_pairs(&docs, 6, 1).unwrap() {
            assert!(p.a.len() + p.b.len() <= 6);
        }
        let one = draw_pairs(&docs[..1], 6, 1).unwrap_err().to_string();
        assert!(one.contains("two documents"), "{one}");
        let short = vec![vec![vec![1]], vec![vec![2]]];
        assert!(draw_pairs(&short, 6, 1).is_err());
        let split = split_sentences(&["a\nb\n\n\nc\n".into(), "d".into()]);
        assert_eq!(split, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
    }
}
