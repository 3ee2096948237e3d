//! Special tokens by role. BERT spells them `[CLS] [SEP] [MASK] [PAD]`, RoBERTa and
//! XLM-R `<s> </s> <mask> <pad>`; tokenizer_config.json (`mask_token`, ...) names them
//! when it is there, as transformers reads it, and the usual spellings stand in when
//! it is not.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Special {
    /// The sequence's first token, whose state the classifier reads.
    Cls,
    /// The end-of-segment token.
    Sep,
    /// The masked-LM's blank.
    Mask,
    Pad,
}

impl Special {
    const ALL: [Self; 4] = [Self::Cls, Self::Sep, Self::Mask, Self::Pad];

    /// tokenizer_config.json's key.
    fn key(self) -> &'static str {
        match self {
            Self::Cls => "cls_token",
            Self::Sep => "sep_token",
            Self::Mask => "mask_token",
            Self::Pad => "pad_token",
        }
    }

    /// What a tokenizer without tokenizer_config.json is looked up for, BERT's first.
    pub fn spellings(self) -> &'static [&'static str] {
        match self {
            Self::Cls => &["[CLS]", "<s>"],
            Self::Sep => &["[SEP]", "</s>"],
            Self::Mask => &["[MASK]", "<mask>"],
            Self::Pad => &["[PAD]", "<pad>"],
        }
    }
}

/// The special tokens tokenizer_config.json names (a string, or an AddedToken object
/// with `content`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Configured(BTreeMap<Special, String>);

impl Configured {
    pub fn read(dir: &Path) -> Self {
        let Some(v) = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        else {
            return Self::default();
        };
        let name = |x: &Value| match x {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content")?.as_str().map(String::from),
            _ => None,
        };
        Self(
            Special::ALL
                .into_iter()
                .filter_map(|s| Some((s, v.get(s.key()).and_then(name)?)))
                .collect(),
        )
    }

    pub fn get(&self, role: Special) -> Option<&str> {
        self.0.get(&role).map(String::as_str)
    }
}
