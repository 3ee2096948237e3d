//! SentencePiece model files (Marian's `source.spm` and `target.spm`) read without the
//! sentencepiece library: the file is a protobuf `ModelProto`, of which a tokenizer
//! needs the pieces with their scores, the model type and the normalizer settings. A
//! unigram model becomes a `tokenizers` Unigram with the normalizer, pre-tokenizer and
//! decoder transformers' `SpmConverter` builds, written as the tokenizer.json it would
//! save and loaded from that.
//!
//! Marian maps pieces onto its own `vocab.json` ids (shared by both sides), so each
//! side's Unigram lists vocab.json's tokens in id order, scored by that side's model.
//! Two cases cannot match transformers' `MarianTokenizer` (which runs sentencepiece,
//! then looks each piece up): a piece of the .spm missing from vocab.json is not
//! proposed at all here, where transformers emits `<unk>` for it; and a vocab.json
//! token the side's .spm lacks is proposed with the lowest score. Moses punctuation
//! normalisation, which transformers applies only when `sacremoses` is installed, is not
//! applied.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde_json::{json, Value};

use crate::error::{Result, WickError};

/// A piece's kind (sentencepiece's `SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Debug, Clone)]
struct Piece {
    piece: String,
    score: f32,
    kind: PieceType,
}

/// What a tokenizer needs of a `ModelProto`.
#[derive(Debug, Clone)]
pub struct SpmModel {
    pieces: Vec<Piece>,
    /// TrainerSpec.model_type: 1 unigram, 2 BPE, 3 word, 4 char.
    model_type: u64,
    byte_fallback: bool,
    precompiled_charsmap: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

/// A protobuf reader over one message: (field number, value) pairs.
struct Fields<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err(format!("a field of {n} bytes runs past the end"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Option<std::result::Result<(u64, Field<'a>), String>> {
        if self.buf.is_empty() {
            return None;
        }
        Some((|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Field::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Field::Other
                }
                2 => {
                    let n = self.varint()? as usize;
                    Field::Bytes(self.take(n)?)
                }
                5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
                w => return Err(format!("unsupported wire type {w}")),
            };
            Ok((key >> 3, value))
        })())
    }
}

fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf }
}

fn text(b: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a piece is not UTF-8".to_string())
}

impl SpmModel {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| WickError::io(path, e))?;
        Self::parse(&bytes).map_err(|message| WickError::Tokenizer {
            path: path.to_path_buf(),
            message: format!("not a sentencepiece model: {message}"),
        })
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut m = Self {
            pieces: vec![],
            model_type: 1,
            byte_fallback: false,
            precompiled_charsmap: vec![],
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        let mut top = fields(bytes);
        while let Some(f) = top.next_field() {
            match f? {
                (1, Field::Bytes(b)) => m.pieces.push(Self::piece(b)?),
                (2, Field::Bytes(b)) => {
                    let mut t = fields(b);
                    while let Some(f) = t.next_field() {
                        match f? {
                            (3, Field::Varint(v)) => m.model_type = v,
                            (35, Field::Varint(v)) => m.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(b)) => {
                    let mut n = fields(b);
                    while let Some(f) = n.next_field() {
                        match f? {
                            (2, Field::Bytes(c)) => m.precompiled_charsmap = c.to_vec(),
                            (3, Field::Varint(v)) => m.add_dummy_prefix = v != 0,
                            (4, Field::Varint(v)) => m.remove_extra_whitespaces = v != 0,
                            (5, Field::Varint(v)) => m.escape_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces".into());
        }
        Ok(m)
    }

    fn piece(b: &[u8]) -> std::result::Result<Piece, String> {
        let mut p = Piece {
            piece: String::new(),
            score: 0.0,
            kind: PieceType::Normal,
        };
        let mut f = fields(b);
        while let Some(field) = f.next_field() {
            match field? {
                (1, Field::Bytes(s)) => p.piece = text(s)?,
                (2, Field::Fixed32(bits)) => p.score = f32::from_bits(bits),
                (3, Field::Varint(t)) => {
                    p.kind = match t {
                        2 => PieceType::Unknown,
                        3 => PieceType::Control,
                        4 => PieceType::UserDefined,
                        5 => PieceType::Unused,
                        6 => PieceType::Byte,
                        _ => PieceType::Normal,
                    }
                }
                _ => {}
            }
        }
        Ok(p)
    }

    /// The pieces text can be cut into, with their scores (not control or unknown).
    fn scores(&self) -> HashMap<&str, f64> {
        self.pieces
            .iter()
            .filter(|p| !matches!(p.kind, PieceType::Control | PieceType::Unknown))
            .map(|p| (p.piece.as_str(), p.score as f64))
            .collect()
    }

    /// transformers' SpmConverter normalizer, in sentencepiece's order.
    fn normalizer(&self) -> Value {
        let mut n = vec![];
        if !self.precompiled_charsmap.is_empty() {
            let map = base64::engine::general_purpose::STANDARD.encode(&self.precompiled_charsmap);
            n.push(json!({"type": "Precompiled", "precompiled_charsmap": map}));
        }
        if self.remove_extra_whitespaces {
            n.push(json!({"type": "Replace", "pattern": {"Regex": r"\A +| +\z"}, "content": ""}));
            n.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
        }
        if self.escape_whitespaces {
            n.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        }
        if self.add_dummy_prefix {
            // Metaspace skips the dummy prefix when the text already starts with "▁";
            // sentencepiece does not.
            n.push(json!({"type": "Replace", "pattern": {"Regex": r"\A▁"}, "content": "▁▁"}));
        }
        json!({"type": "Sequence", "normalizers": n})
    }

    fn decoder(&self) -> Value {
        let mut d = vec![json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "})];
        if self.byte_fallback {
            d.push(json!({"type": "ByteFallback"}));
        }
        if self.add_dummy_prefix {
            d.push(json!({"type": "Fuse"}));
            d.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        } else if self.byte_fallback {
            d.push(json!({"type": "Fuse"}));
        }
        json!({"type": "Sequence", "decoders": d})
    }

    /// One side of a Marian tokenizer: this model's unigram over `vocab` (vocab.json:
    /// token -> id), `</s>` appended to every text, the special tokens and Marian's
    /// `>>lang<<` codes whole.
    pub fn marian_side(
        &self,
        vocab: &HashMap<String, u32>,
        path: &Path,
    ) -> Result<tokenizers::Tokenizer> {
        let err = |message: String| WickError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if self.model_type != 1 {
            return Err(err(format!(
                "sentencepiece model type {} is not supported (unigram)",
                self.model_type
            )));
        }
        let n = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let mut by_id: Vec<Option<&str>> = vec![None; n];
        for (t, &id) in vocab {
            by_id[id as usize] = Some(t);
        }
        if by_id.iter().any(Option::is_none) {
            return Err(err("vocab.json's ids are not 0..n without gaps".into()));
        }
        let scores = self.scores();
        let floor = scores.values().copied().fold(0.0, f64::min) - 20.0;
        let model_vocab: Vec<Value> = by_id
            .iter()
            .map(|t| {
                let t = t.unwrap();
                json!([t, scores.get(t).copied().unwrap_or(floor)])
            })
            .collect();
        let id = |t: &str| vocab.get(t).copied();
        let unk = id("<unk>").ok_or_else(|| err("vocab.json has no <unk>".into()))?;
        let eos = id("</s>").ok_or_else(|| err("vocab.json has no </s>".into()))?;
        let mut specials: Vec<(&str, u32)> = ["</s>", "<unk>", "<pad>"]
            .iter()
            .filter_map(|t| Some((*t, id(t)?)))
            .collect();
        specials.extend(
            vocab
                .iter()
                .filter(|(t, _)| t.starts_with(">>") && t.ends_with("<<"))
                .map(|(t, &i)| (t.as_str(), i)),
        );
        specials.sort_by_key(|s| s.1);
        let added: Vec<Value> = specials
            .iter()
            .map(|(t, i)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let pre_tokenizer = match self.add_dummy_prefix {
            true => {
                json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false})
            }
            false => Value::Null,
        };
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": self.normalizer(),
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}},
                         {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "special_tokens": {"</s>": {"id": "</s>", "ids": [eos], "tokens": ["</s>"]}}
            },
            "decoder": self.decoder(),
            "model": {"type": "Unigram", "unk_id": unk, "vocab": model_vocab, "byte_fallback": self.byte_fallback}
        });
        tokenizer
            .to_string()
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| err(format!("building the unigram tokenizer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ModelProto written by hand: two pieces, a trainer spec, a normalizer spec.
    #[test]
    fn reads_pieces_scores_and_normalizer_settings() {
        let piece = |s: &str, score: f32, kind: u8| {
            let mut b = vec![0x0a, s.len() as u8];
            b.extend(s.as_bytes());
            b.push(0x15);
            b.extend(score.to_le_bytes());
            b.extend([0x18, kind]);
            b
        };
        let mut bytes = vec![];
        for p in [piece("<unk>", 0.0, 2), piece("▁be", -3.5, 1)] {
            bytes.push(0x0a);
            bytes.push(p.len() as u8);
            bytes.extend(p);
        }
        bytes.extend([0x12, 0x02, 0x18, 0x01]); // trainer_spec { model_type: UNIGRAM }
        bytes.extend([0x1a, 0x02, 0x18, 0x00]); // normalizer_spec { add_dummy_prefix: false }
        let m = SpmModel::parse(&bytes).unwrap();
        assert_eq!(m.pieces.len(), 2);
        assert_eq!(m.pieces[1].piece, "▁be");
        assert_eq!(m.pieces[1].score, -3.5);
        assert_eq!(m.pieces[0].kind, PieceType::Unknown);
        assert!(!m.add_dummy_prefix && m.remove_extra_whitespaces);
        assert_eq!(m.scores().len(), 1, "the unknown piece is not a text piece");
        assert!(
            SpmModel::parse(&bytes[..bytes.len() - 3]).is_err(),
            "truncated"
        );
        assert!(SpmModel::parse(b"").is_err());
    }
}
