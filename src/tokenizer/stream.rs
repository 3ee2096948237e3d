//! Encoding a text of any length in pieces, reading it as it goes: a tokenizer asked to
//! encode one 50 MB string keeps every token's string, offsets and word ids at once
//! (about 260 bytes a token), where the ids alone are 4.
//!
//! The text is cut only before a space that sits between two printable ASCII
//! characters. Every pre-tokenizer wick loads splits there: byte-level BPE starts a new
//! piece at " word", WordPiece and character level split at any space, and a piece that
//! begins with that space sees no prefix space added. So the pieces' ids, put together,
//! are the whole text's ids.

use std::io::Read;
use std::path::Path;

use super::{tok_err, Tokenizer};
use crate::error::{Result, WickError};

/// Bytes read and encoded at a time (a piece ends at the last cut point in it).
const PIECE: usize = 1 << 16;

/// Where a piece of `bytes` may end: just before the last space with printable ASCII on
/// both sides; None when there is no such space.
fn last_cut(bytes: &[u8]) -> Option<usize> {
    let printable = |b: u8| b.is_ascii_graphic();
    (1..bytes.len().saturating_sub(1))
        .rev()
        .find(|&i| bytes[i] == b' ' && printable(bytes[i - 1]) && printable(bytes[i + 1]))
}

impl Tokenizer {
    /// The ids of everything `reader` yields (no special tokens), encoded piece by piece;
    /// `source` names the input in errors. The same ids as [`Tokenizer::encode`] on the
    /// whole text.
    pub fn encode_stream(&self, mut reader: impl Read, source: &Path) -> Result<Vec<u32>> {
        self.encode_pieces(&mut reader, source, PIECE)
    }

    fn encode_pieces(
        &self,
        reader: &mut dyn Read,
        source: &Path,
        piece: usize,
    ) -> Result<Vec<u32>> {
        let (mut ids, mut buf, mut offset) = (Vec::new(), Vec::new(), 0usize);
        loop {
            let start = buf.len();
            buf.resize(start + piece, 0);
            let n = read_full(reader, &mut buf[start..]).map_err(|e| WickError::io(source, e))?;
            buf.truncate(start + n);
            let end = if n == 0 {
                Some(buf.len())
            } else {
                last_cut(&buf)
            };
            let Some(end) = end else {
                continue; // no cut point yet: read on
            };
            let text = std::str::from_utf8(&buf[..end]).map_err(|e| {
                tok_err(
                    source,
                    format!("not UTF-8 (byte offset {})", offset + e.valid_up_to()),
                )
            })?;
            ids.extend(self.encode(text, false)?);
            offset += end;
            buf.drain(..end);
            if n == 0 {
                return Ok(ids);
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Tokenizer {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        Tokenizer::from_file(&p.join("tokenizer.json")).unwrap()
    }

    #[test]
    fn pieces_give_the_whole_texts_ids() {
        let text = "To be,  or not\tto be: that is the question.\n\nWhether 'tis nobler   \
                    in the mind to suffer the slings, é and arrows! 12 345 ?? "
            .repeat(30);
        for tok in [
            fixture("tiny-gpt2"),
            fixture("tiny-bert"),
            Tokenizer::char_level(&text).unwrap(),
        ] {
            let whole = tok.encode(&text, false).unwrap();
            for piece in [7, 64, 1000] {
                let got = tok
                    .encode_pieces(&mut text.as_bytes(), Path::new("t"), piece)
                    .unwrap();
                assert_eq!(got, whole, "piece {piece}");
            }
        }
    }

    #[test]
    fn a_text_without_cut_points_is_read_whole_and_bad_utf8_is_named() {
        let tok = fixture("tiny-gpt2");
        let text = "x".repeat(500);
        let got = tok
            .encode_pieces(&mut text.as_bytes(), Path::new("t"), 16)
            .unwrap();
        assert_eq!(got, tok.encode(&text, false).unwrap());
        let mut bad = b"ab cd ef gh ".repeat(10);
        bad[50] = 0xff;
        let err = tok
            .encode_pieces(&mut bad.as_slice(), Path::new("in.txt"), 16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("in.txt") && err.contains("byte offset 50"),
            "{err}"
        );
    }
}
