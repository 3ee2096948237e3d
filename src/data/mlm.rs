//! Masked-LM batches, the run_mlm convention: the token stream is cut into windows of
//! block_size − 2 tokens, each wrapped in [CLS] … [SEP]; 15% of the window's tokens are
//! chosen, of which 80% become [MASK], 10% a random token and 10% stay; the loss is taken
//! on the chosen positions only (labels elsewhere are `IGNORE`). With whole-word masking
//! the choice is made per word (a WordPiece token and its `##` continuations), then the
//! 80/10/10 rule applies to each of its tokens, as transformers'
//! `DataCollatorForWholeWordMask`. Masks come from a seeded
//! generator keyed by the batch number, so a resumed run masks exactly as before.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{LmBatches, TokenBuffer};
use crate::error::{Result, WickError};
use crate::labels::IGNORE;
use crate::tokenizer::{Special, Tokenizer};

/// The masking rule, shared by masked-LM and MLM+NSP batches.
pub struct Masker {
    mask: u32,
    vocab: u32,
    prob: f64,
    /// Per token id: whether it continues the previous word (whole-word masking only).
    continues: Option<Vec<bool>>,
}

/// The id of a special token the masked-LM objectives need.
pub fn special_id(tok: &Tokenizer, role: Special) -> Result<u32> {
    tok.special_id(role, "masked LM")
}

/// Per token id: whether it continues the previous word. WordPiece marks
/// continuations (`##ing`); byte-level BPE (`Ġ`) and sentencepiece (`▁`) mark word
/// starts instead, so there a token continues unless it carries the mark or is special.
fn continuations(tok: &Tokenizer) -> Vec<bool> {
    let tokens: Vec<Option<String>> = (0..tok.vocab_size() as u32)
        .map(|i| tok.id_to_token(i))
        .collect();
    let any = |f: &dyn Fn(&str) -> bool| tokens.iter().flatten().any(|t| f(t));
    let starts_word = if any(&|t: &str| t.starts_with("##")) {
        return tokens
            .iter()
            .map(|t| t.as_deref().is_some_and(|t| t.starts_with("##")))
            .collect();
    } else if any(&|t: &str| t.starts_with('Ġ')) {
        'Ġ'
    } else {
        '▁'
    };
    let special = |t: &str| (t.starts_with('<') && t.ends_with('>')) || t.starts_with('[');
    tokens
        .iter()
        .map(|t| {
            t.as_deref()
                .is_some_and(|t| !t.starts_with(starts_word) && !special(t))
        })
        .collect()
}

impl Masker {
    pub fn new(tok: &Tokenizer, whole_word: bool) -> Result<Self> {
        Ok(Self {
            mask: special_id(tok, Special::Mask)?,
            vocab: tok.vocab_size() as u32,
            prob: 0.15,
            continues: whole_word.then(|| continuations(tok)),
        })
    }

    pub fn mask_id(&self) -> u32 {
        self.mask
    }

    /// Appends `tokens` to `ids`, each chosen one masked 80/10/10, and their labels
    /// (`IGNORE` where not chosen); returns how many were chosen.
    pub fn apply(
        &self,
        tokens: &[u32],
        rng: &mut StdRng,
        ids: &mut Vec<u32>,
        labels: &mut Vec<u32>,
    ) -> usize {
        let mut chosen = 0;
        let mut word_chosen = false;
        for &t in tokens {
            let continues = self
                .continues
                .as_ref()
                .is_some_and(|c| c.get(t as usize).copied().unwrap_or(false));
            if !continues {
                word_chosen = rng.random_bool(self.prob);
            }
            if word_chosen {
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
        chosen
    }
}

pub struct MlmBatches {
    windows: LmBatches,
    cls: u32,
    sep: u32,
    masker: Masker,
    seed: u64,
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
        whole_word: bool,
    ) -> Result<Self> {
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
            cls: special_id(tok, Special::Cls)?,
            sep: special_id(tok, Special::Sep)?,
            masker: Masker::new(tok, whole_word)?,
            seed,
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
            chosen += self.masker.apply(row, &mut rng, &mut ids, &mut labels);
            ids.push(self.sep);
            labels.push(IGNORE);
        }
        if chosen == 0 {
            // Always at least one prediction, so the loss is defined.
            labels[1] = rows[0][0];
            ids[1] = self.masker.mask_id();
        }
        let shape = (rows.len(), rows[0].len() + 2);
        Ok((
            Tensor::from_vec(ids, shape, device)?,
            Tensor::from_vec(labels, shape, device)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_word_masking_chooses_all_pieces_of_a_word() {
        let tok = Tokenizer::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/tokenizers/wordpiece-tokenizer.json"),
        )
        .unwrap();
        let text = "unresolved naïveté journeying citizens proceeded famished ".repeat(30);
        let ids = tok.encode(&text, false).unwrap();
        let continues: Vec<bool> = ids
            .iter()
            .map(|&i| tok.id_to_token(i).unwrap().starts_with("##"))
            .collect();
        assert!(
            continues.iter().filter(|&&c| c).count() > 20,
            "words split into pieces"
        );
        let buf = Arc::new(TokenBuffer::Owned(ids.clone()));
        let mut b = MlmBatches::new(buf, 0, ids.len(), 34, 4, 3, false, &tok, true).unwrap();
        let (_, labels) = b.batch(0, &Device::Cpu).unwrap();
        let mut chosen_words = 0;
        for (r, row) in labels.to_vec2::<u32>().unwrap().iter().enumerate() {
            // Row r holds ids[r*32 .. r*32+32] between [CLS] and [SEP].
            for j in 1..row.len() - 2 {
                let k = r * 32 + j - 1; // index into ids of position j
                if continues[k + 1] {
                    assert_eq!(
                        row[j] == IGNORE,
                        row[j + 1] == IGNORE,
                        "a word piece is masked apart from its word"
                    );
                }
                chosen_words += usize::from(row[j] != IGNORE && !continues[k]);
            }
        }
        assert!(chosen_words > 0);
    }
}
