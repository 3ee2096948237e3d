//! Tokenizers through the `tokenizers` crate: a `tokenizer.json` when the checkpoint has
//! one, else GPT-2's `vocab.json` + `merges.txt` or BERT's `vocab.txt`, plus a
//! character-level tokenizer for training from scratch (saved as a tokenizer.json too).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Result, WickError};

mod sentencepiece;
mod special;
mod stream;

pub use special::Special;

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it was loaded from, for error messages.
    source: PathBuf,
    /// A translation model's source-side tokenizer when the two sides have separate
    /// vocabularies (`source_tokenizer.json` beside `tokenizer.json`); this one is then
    /// the target side's.
    source_side: Option<Box<Tokenizer>>,
    /// The special tokens tokenizer_config.json names.
    configured: special::Configured,
    /// The files a Marian tokenizer was read from (source.spm, target.spm, vocab.json,
    /// ...), copied beside a saved tokenizer.json so that transformers' MarianTokenizer
    /// opens the folder.
    marian_files: Vec<PathBuf>,
    /// The chat template the folder carried (tokenizer_config.json's `chat_template`, a
    /// string or a list of named ones, or chat_template.jinja), written back into a saved
    /// tokenizer_config.json: a fine-tune or merge of a chat model stays one.
    chat_template: Option<serde_json::Value>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer({}, vocab {})",
            self.source.display(),
            self.vocab_size()
        )
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn tok_err(path: &Path, e: impl std::fmt::Display) -> WickError {
    WickError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// What a Marian repository's tokenizer is read from (the last only with separate
/// vocabularies), copied beside a saved tokenizer.json.
pub const MARIAN_FILES: [&str; 4] = [
    "vocab.json",
    "source.spm",
    "target.spm",
    "target_vocab.json",
];

/// A separate source-side tokenizer's file name in a checkpoint folder.
pub const SOURCE_TOKENIZER: &str = "source_tokenizer.json";

impl Tokenizer {
    pub fn new(mut inner: tokenizers::Tokenizer, source: PathBuf) -> Self {
        // Some checkpoints ship fixed padding/truncation (all-MiniLM pads every input to
        // 128): wick pads batches itself, to the longest text, and truncates on request.
        inner.with_padding(None);
        let _ = inner.with_truncation(None);
        Self {
            inner,
            source,
            source_side: None,
            configured: special::Configured::default(),
            marian_files: vec![],
            chat_template: None,
        }
    }

    /// Loads the tokenizer of a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut tok = Self::from_dir_files(dir)?;
        tok.configured = special::Configured::read(dir);
        tok.marian_files = marian_files(dir).unwrap_or_default();
        tok.chat_template = chat_template(dir);
        Ok(tok)
    }

    /// The chat template this tokenizer's folder carried, as tokenizer_config.json holds it.
    pub fn chat_template(&self) -> Option<&serde_json::Value> {
        self.chat_template.as_ref()
    }

    fn from_dir_files(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let tok = Self::from_file(&json)?;
            let src = dir.join(SOURCE_TOKENIZER);
            return Ok(if src.is_file() {
                tok.with_source_side(Self::from_file(&src)?)
            } else {
                tok
            });
        }
        let (vocab_json, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab_json.is_file() && merges.is_file() {
            return Self::gpt2_bpe(&vocab_json, &merges);
        }
        if marian_files(dir).is_some() {
            return Self::marian(dir);
        }
        let vocab_txt = dir.join("vocab.txt");
        if vocab_txt.is_file() {
            return Self::bert_wordpiece(&vocab_txt, lower_case(dir));
        }
        Err(WickError::MissingFile {
            path: dir.to_path_buf(),
            what: "no tokenizer: looked for tokenizer.json, vocab.json + merges.txt, \
                   vocab.json + source.spm + target.spm, vocab.txt"
                .into(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| tok_err(path, e))?;
        Ok(Self::new(inner, path.to_path_buf()))
    }

    /// Marian's two sentencepiece models over vocab.json's ids (`target_vocab.json` for
    /// the target side when the vocabularies are separate): the source side encodes,
    /// the target side decodes (sentencepiece.rs says what cannot match transformers).
    pub fn marian(dir: &Path) -> Result<Self> {
        let [vocab, source_spm, target_spm, target_vocab_file] = MARIAN_FILES.map(|f| dir.join(f));
        let read_vocab = |path: &Path| -> Result<HashMap<String, u32>> {
            let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| tok_err(path, format!("not a token -> id map: {e}")))
        };
        let source_vocab = read_vocab(&vocab)?;
        let target_vocab = match target_vocab_file.is_file() {
            true => read_vocab(&target_vocab_file)?,
            false => source_vocab.clone(),
        };
        let side = |spm: &Path, vocab: &HashMap<String, u32>| -> Result<Self> {
            let inner = sentencepiece::SpmModel::read(spm)?.marian_side(vocab, spm)?;
            Ok(Self::new(inner, spm.to_path_buf()))
        };
        Ok(side(&target_spm, &target_vocab)?.with_source_side(side(&source_spm, &source_vocab)?))
    }

    /// GPT-2's byte-level BPE from the original vocab.json + merges.txt.
    pub fn gpt2_bpe(vocab: &Path, merges: &Path) -> Result<Self> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| tok_err(vocab, e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevelDecoder::default()));
        if inner.token_to_id("<|endoftext|>").is_some() {
            inner
                .add_special_tokens([AddedToken::from("<|endoftext|>", true)])
                .map_err(|e| tok_err(vocab, e))?;
        }
        Ok(Self::new(inner, vocab.to_path_buf()))
    }

    /// BERT's WordPiece from vocab.txt, with [CLS] ... [SEP] around every input.
    pub fn bert_wordpiece(vocab: &Path, lowercase: bool) -> Result<Self> {
        let wp = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tok_err(vocab, e))?;
        let mut inner = tokenizers::Tokenizer::new(wp);
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| tok_err(vocab, format!("vocab has no {t} token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .map_err(|e| tok_err(vocab, e))?
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )))
            .with_decoder(Some(WordPieceDecoder::default()));
        inner
            .add_special_tokens(specials)
            .map_err(|e| tok_err(vocab, e))?;
        Ok(Self::new(inner, vocab.to_path_buf()))
    }

    /// The special tokens of a trained subword tokenizer, in id order: padding,
    /// beginning and end of sequence, unknown (the encoder-decoder's defaults 0, 1, 2).
    pub const SEQ2SEQ_SPECIALS: [&'static str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

    /// The placeholder a non-autoregressive decoder reads where a target token is still
    /// to be predicted (BART's and RoBERTa's name for it).
    pub const MASK: &'static str = "<mask>";

    /// Trains a byte-level BPE on `texts` (one joint vocabulary for source and target,
    /// like the paper's shared 37k BPE), with [`Self::SEQ2SEQ_SPECIALS`] first and then
    /// `extra` specials (the non-autoregressive decoder's [`Self::MASK`]).
    pub fn train_bpe(texts: &[String], vocab_size: usize, extra: &[&str]) -> Result<Self> {
        use tokenizers::models::bpe::BpeTrainerBuilder;
        use tokenizers::models::TrainerWrapper;
        let here = Path::new("<bpe>");
        if texts.iter().all(|t| t.trim().is_empty()) {
            return Err(WickError::Unsupported(
                "cannot train a tokenizer on empty text".into(),
            ));
        }
        let specials = Self::SEQ2SEQ_SPECIALS
            .iter()
            .chain(extra)
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .show_progress(false)
            .build()
            .into();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner
            .with_pre_tokenizer(Some(ByteLevel::default()))
            .with_decoder(Some(ByteLevelDecoder::default()));
        inner
            .train(&mut trainer, texts.iter())
            .map_err(|e| tok_err(here, e))?;
        Ok(Self::new(inner, here.to_path_buf()))
    }

    /// One token per character of `text` (sorted, like nanoGPT's shakespeare_char).
    pub fn char_level(text: &str) -> Result<Self> {
        let chars: BTreeSet<char> = text.chars().collect();
        if chars.is_empty() {
            return Err(WickError::Unsupported(
                "cannot build a character vocabulary from empty text".into(),
            ));
        }
        let vocab = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("\u{fffd}".into())
            .build()
            .map_err(|e| tok_err(Path::new("<char-level>"), e))?;
        let split = Split::new(
            // Every character, newlines included, in a pattern both the Rust regex engine
            // and Python tokenizers' Oniguruma accept (`(?s).` is not valid Oniguruma).
            SplitPattern::Regex(r"[\s\S]".into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(Path::new("<char-level>"), e))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner
            .with_pre_tokenizer(Some(split))
            .with_decoder(Some(Fuse::new()));
        Ok(Self::new(inner, PathBuf::from("<char-level>")))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e: BoxError| tok_err(&self.source, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A sentence pair: ids and token-type ids (0 for the first text, 1 for the second).
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self
            .inner
            .encode((a, b), true)
            .map_err(|e: BoxError| tok_err(&self.source, e))?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e: BoxError| tok_err(&self.source, e))
    }

    /// The token playing `role` and its id: the one tokenizer_config.json names, else
    /// the first of the usual spellings in the vocabulary.
    pub fn special(&self, role: Special) -> Option<(String, u32)> {
        let named = self.configured.get(role).into_iter();
        named
            .chain(role.spellings().iter().copied())
            .find_map(|t| Some((t.to_string(), self.token_to_id(t)?)))
    }

    /// [`Self::special`]'s id, or an error naming what `purpose` needs.
    pub fn special_id(&self, role: Special, purpose: &str) -> Result<u32> {
        self.special(role).map(|(_, id)| id).ok_or_else(|| {
            WickError::Unsupported(format!(
                "{purpose} needs a {} token in the tokenizer ({})",
                role.spellings()[0],
                role.spellings().join(" or ")
            ))
        })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Writes tokenizer.json at `path`, and a separate source side beside it as
    /// `source_tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(src) = &self.source_side {
            src.save(&path.with_file_name(SOURCE_TOKENIZER))?;
        }
        for f in &self.marian_files {
            let to = path.with_file_name(f.file_name().unwrap_or_default());
            if to != *f {
                let bytes = std::fs::read(f).map_err(|e| WickError::io(f, e))?;
                crate::files::atomic_write(&to, &bytes)?;
            }
        }
        let json = self.inner.to_string(true).map_err(|e| tok_err(path, e))?;
        crate::files::atomic_write(path, json.as_bytes())
    }

    /// This tokenizer for targets, `src` for sources (separate vocabularies).
    pub fn with_source_side(mut self, src: Tokenizer) -> Self {
        self.source_side = Some(Box::new(src));
        self
    }

    /// The tokenizer that encodes a translation's source: the separate one, or this.
    /// Whether this is a Marian tokenizer read from its sentencepiece files.
    pub fn is_marian(&self) -> bool {
        !self.marian_files.is_empty()
    }

    /// A Marian tokenizer with a target vocabulary of its own (`target_vocab.json`).
    pub fn marian_separate_vocabs(&self) -> bool {
        self.marian_files
            .iter()
            .any(|f| f.ends_with(MARIAN_FILES[3]))
    }

    pub fn source_side(&self) -> &Tokenizer {
        self.source_side.as_deref().unwrap_or(self)
    }
}

/// A Marian repository's tokenizer files in `dir`: vocab.json, source.spm and
/// target.spm (and target_vocab.json when there is one), or `None` (GPT-2's vocab.json
/// comes with merges.txt instead).
/// `dir`'s chat template: tokenizer_config.json's `chat_template`, else chat_template.jinja.
fn chat_template(dir: &Path) -> Option<serde_json::Value> {
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok();
    let from_config = config
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("chat_template").cloned())
        .filter(|t| t.is_string() || t.is_array());
    from_config.or_else(|| {
        let jinja = std::fs::read_to_string(dir.join("chat_template.jinja")).ok()?;
        Some(jinja.into())
    })
}

fn marian_files(dir: &Path) -> Option<Vec<PathBuf>> {
    let files = MARIAN_FILES.map(|f| dir.join(f));
    let complete = files[..3].iter().all(|f| f.is_file()) && !dir.join("merges.txt").is_file();
    complete.then(|| files.into_iter().filter(|f| f.is_file()).collect())
}

/// `do_lower_case` from tokenizer_config.json, default true like BertTokenizer.
fn lower_case(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_level_round_trips_and_saves() -> Result<()> {
        let text = "hello world\nhi!";
        let tok = Tokenizer::char_level(text)?;
        assert_eq!(tok.vocab_size(), 11); // unique characters
        let ids = tok.encode("hello\n", false)?;
        assert_eq!(ids.len(), 6);
        assert_eq!(tok.decode(&ids, false)?, "hello\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path)?;
        let back = Tokenizer::from_file(&path)?;
        assert_eq!(
            back.encode("hello world", false)?,
            tok.encode("hello world", false)?
        );
        // Python tokenizers (Oniguruma) rejects `(?s).`, the pattern this once saved;
        // tests/fixtures/check_run_in_transformers.py loads the file in Python itself.
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(saved["pre_tokenizer"]["pattern"]["Regex"], r"[\s\S]");
        Ok(())
    }
}
