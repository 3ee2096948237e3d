//! Ids to printable text as they arrive. Byte-level BPE can split one character over
//! several tokens, and a stop string can arrive in pieces, so text is released only up
//! to a complete word (like transformers' `TextStreamer`) and never any tail that might
//! still become a stop string; the stop string itself is never printed.

use super::Flow;
use crate::error::Result;
use crate::tokenizer::Tokenizer;

pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    stops: Vec<String>,
    ids: Vec<u32>,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    /// Where the first stop string begins, once one has appeared.
    stop_at: Option<usize>,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer, stops: &[String]) -> Self {
        Self {
            tok,
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ids: vec![],
            text: String::new(),
            emitted: 0,
            stop_at: None,
        }
    }

    pub fn tokenizer(&self) -> &'a Tokenizer {
        self.tok
    }

    /// Adds one token; returns the text that is now safe to print and whether a stop
    /// string has appeared.
    pub fn push(&mut self, id: u32) -> Result<(String, Flow)> {
        if self.stop_at.is_some() {
            return Ok((String::new(), Flow::Stop));
        }
        self.ids.push(id);
        self.text = self.tok.decode(&self.ids, true)?;
        if let Some(at) = self.first_stop() {
            self.stop_at = Some(at);
            return Ok((self.release(at), Flow::Stop));
        }
        // A trailing U+FFFD is a character whose remaining bytes are still to come.
        if self.text.ends_with('\u{fffd}') {
            return Ok((String::new(), Flow::Continue));
        }
        let mut end = self.text.len() - self.pending_stop_prefix();
        if !self.text[..end].ends_with('\n') {
            // Whole words only: up to the last whitespace.
            end = self.text[..end].rfind(char::is_whitespace).map_or(0, |i| {
                i + self.text[i..].chars().next().map_or(1, char::len_utf8)
            });
        }
        Ok((self.release(end), Flow::Continue))
    }

    /// Whatever is left to print once generation ends (up to a stop string).
    pub fn finish(&mut self) -> String {
        let end = self.stop_at.unwrap_or(self.text.len());
        self.release(end)
    }

    /// The whole generated text, cut before a stop string.
    pub fn text(&self) -> &str {
        &self.text[..self.stop_at.unwrap_or(self.text.len())]
    }

    fn release(&mut self, end: usize) -> String {
        // A tokenizer whose decoding of a longer sequence rewrites earlier text (WordPiece
        // clean-up) could move boundaries: hold everything until they line up again.
        if end <= self.emitted
            || !self.text.is_char_boundary(self.emitted)
            || !self.text.is_char_boundary(end)
        {
            return String::new();
        }
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    fn first_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
    }

    /// Length of the longest tail of the text that begins some stop string.
    fn pending_stop_prefix(&self) -> usize {
        let mut longest = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > longest && self.text.ends_with(&s[..i]) {
                    longest = i;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_all(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let text: String = pieces.concat();
        let tok = Tokenizer::char_level(&text).unwrap();
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&tok, &stops);
        let mut printed = String::new();
        let mut stopped = false;
        for piece in pieces {
            for id in tok.encode(piece, false).unwrap() {
                let (delta, flow) = s.push(id).unwrap();
                printed.push_str(&delta);
                if flow == Flow::Stop {
                    stopped = true;
                    break;
                }
            }
            if stopped {
                break;
            }
        }
        printed.push_str(&s.finish());
        (printed, s.text().to_string(), stopped)
    }

    #[test]
    fn stop_string_split_across_tokens_is_not_printed() {
        let (printed, text, stopped) =
            stream_all(&["END"], &["hello ", "wor", "ld E", "N", "D more"]);
        assert!(stopped);
        assert_eq!(printed, "hello world ");
        assert_eq!(text, "hello world ");
    }

    #[test]
    fn a_partial_stop_prefix_is_released_when_it_does_not_complete() {
        let (printed, _, stopped) = stream_all(&["END"], &["an EN", "d x"]);
        assert!(!stopped);
        assert_eq!(printed, "an ENd x");
    }

    #[test]
    fn words_are_released_whole() {
        let text = "ab cd";
        let tok = Tokenizer::char_level(text).unwrap();
        let mut s = TextStream::new(&tok, &[]);
        let deltas: Vec<String> = tok
            .encode(text, false)
            .unwrap()
            .into_iter()
            .map(|id| s.push(id).unwrap().0)
            .collect();
        assert_eq!(deltas, vec!["", "", "ab ", "", ""]);
        assert_eq!(s.finish(), "cd");
    }
}
