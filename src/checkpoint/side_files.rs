//! The files transformers reads beside config.json, so that a folder wick writes opens
//! with `AutoTokenizer.from_pretrained(DIR)` and `pipeline("text-generation", model=DIR)`
//! with no extra arguments: `tokenizer_config.json` (the tokenizer class, its special
//! tokens, the context length) and `generation_config.json` (the ids generation starts,
//! stops and pads with). And a sentence-transformers folder's own files, carried from a
//! base to what is trained or merged from it.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Result, WickError};
use crate::files::atomic_write;

use crate::models::ModelConfig;
use crate::tokenizer::{Special, Tokenizer};

/// What makes a folder a SentenceTransformer (its pooling and normalisation), relative
/// to `dir`: modules.json, the two config files beside it, and the files of each module
/// folder modules.json names (`1_Pooling/config.json`, ...). Empty for other folders.
pub fn sentence_transformers_files(dir: &Path) -> Vec<PathBuf> {
    let Some(modules) = std::fs::read_to_string(dir.join("modules.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.as_array().cloned())
    else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = [
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|f| dir.join(f).is_file())
    .collect();
    for m in &modules {
        // The module folder, never the model's own root ("" is the Transformer module).
        let Some(sub) = m["path"].as_str().map(Path::new).filter(|p| {
            !p.as_os_str().is_empty()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
        }) else {
            continue;
        };
        let entries = std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten();
        files.extend(
            entries
                .filter(|e| e.path().is_file())
                .map(|e| sub.join(e.file_name())),
        );
    }
    files
}

/// Copies `from`'s sentence-transformers files into `to` (atomically, each), so that a
/// model trained or merged from a SentenceTransformer loads as one with its pooling.
pub fn carry_sentence_transformers(from: &Path, to: &Path) -> Result<()> {
    for f in sentence_transformers_files(from) {
        let (src, dest) = (from.join(&f), to.join(&f));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| WickError::io(parent, e))?;
        }
        let bytes = std::fs::read(&src).map_err(|e| WickError::io(&src, e))?;
        atomic_write(&dest, &bytes)?;
    }
    Ok(())
}

/// tokenizer_config.json for `tok` serving a model of `config`. The class is
/// `PreTrainedTokenizerFast`, which reads everything else from tokenizer.json; the
/// special tokens are the ones the config's ids name, and the family's usual ones
/// where the vocabulary has them.
pub fn tokenizer_config(config: &ModelConfig, tok: &Tokenizer) -> Value {
    let mut v = Map::new();
    v.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    v.insert("model_max_length".into(), config.max_positions().into());
    let by_id = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let by_name = |names: &[&str]| {
        names
            .iter()
            .find(|n| tok.token_to_id(n).is_some())
            .map(|n| n.to_string())
    };
    let specials: Vec<(&str, Option<String>)> = match config {
        ModelConfig::Gpt2(c) => {
            let eos = by_id(c.eos_token_id.first().copied()).or(by_name(&["<|endoftext|>"]));
            vec![
                ("bos_token", by_id(c.bos_token_id).or(eos.clone())),
                (
                    "unk_token",
                    by_name(&["<|endoftext|>", "\u{fffd}"]).or(eos.clone()),
                ),
                ("pad_token", by_id(c.pad_token_id)),
                ("eos_token", eos),
            ]
        }
        ModelConfig::Bert(c) => {
            let special = |role| tok.special(role).map(|(t, _)| t);
            let mut v = vec![
                ("unk_token", by_name(&["[UNK]", "<unk>"])),
                ("sep_token", special(Special::Sep)),
                ("pad_token", by_id(c.pad_token_id).or(special(Special::Pad))),
                ("cls_token", special(Special::Cls)),
                ("mask_token", special(Special::Mask)),
            ];
            // RoBERTa's tokenizer also names <s> and </s> as its bos and eos.
            if c.family.is_roberta() {
                v.extend([
                    ("bos_token", special(Special::Cls)),
                    ("eos_token", special(Special::Sep)),
                ]);
            }
            v
        }
        ModelConfig::Seq2Seq(c) => {
            // BART's bos is the `<s>` that opens each side (its decoder starts at `</s>`);
            // its tokenizer also names RoBERTa's cls, sep and mask.
            let mut v = vec![
                (
                    "bos_token",
                    by_id(Some(c.sequence_start_token_id.unwrap_or(c.bos_token_id))),
                ),
                ("eos_token", by_id(Some(c.eos_token_id))),
                ("pad_token", by_id(Some(c.pad_token_id))),
                ("unk_token", by_name(&["<unk>", "[UNK]"])),
            ];
            if c.sequence_start_token_id.is_some() {
                let special = |role| tok.special(role).map(|(t, _)| t);
                v.extend([
                    ("cls_token", special(Special::Cls)),
                    ("sep_token", special(Special::Sep)),
                    ("mask_token", special(Special::Mask)),
                ]);
            }
            v
        }
    };
    for (key, token) in specials {
        if let Some(t) = token {
            v.insert(key.into(), t.into());
        }
    }
    if tok.is_marian() {
        // transformers' MarianTokenizer reads source.spm, target.spm and vocab.json,
        // which the tokenizer copies beside its tokenizer.json.
        v.insert("tokenizer_class".into(), "MarianTokenizer".into());
        v.insert(
            "separate_vocabs".into(),
            tok.marian_separate_vocabs().into(),
        );
    }
    if let Some(t) = tok.chat_template() {
        v.insert("chat_template".into(), t.clone());
    }
    Value::Object(v)
}

/// generation_config.json for a model that generates (None for an encoder), with the
/// ids as config.json states them, as transformers writes it from a model config.
pub fn generation_config(config: &ModelConfig) -> Option<Value> {
    let mut v = match config {
        ModelConfig::Gpt2(c) => {
            let mut v = json!({});
            if let Some(b) = c.bos_token_id {
                v["bos_token_id"] = b.into();
            }
            match c.eos_token_id.as_slice() {
                [] => {}
                [one] => v["eos_token_id"] = (*one).into(),
                many => v["eos_token_id"] = many.into(),
            }
            if let Some(p) = c.pad_token_id {
                v["pad_token_id"] = p.into();
            }
            v
        }
        ModelConfig::Seq2Seq(c) => {
            let mut v = json!({
                "bos_token_id": c.sequence_start_token_id.unwrap_or(c.bos_token_id),
                "eos_token_id": c.eos_token_id,
                "pad_token_id": c.pad_token_id,
                "decoder_start_token_id": c.bos_token_id,
            });
            if let Some(id) = c.forced_eos_token_id {
                v["forced_eos_token_id"] = id.into();
            }
            if let Some(id) = c.forced_bos_token_id {
                v["forced_bos_token_id"] = id.into();
            }
            v
        }
        ModelConfig::Bert(_) => return None,
    };
    v["_from_model_config"] = true.into();
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: Value) -> ModelConfig {
        ModelConfig::from_value(&v, std::path::Path::new("<test>")).unwrap()
    }

    #[test]
    fn a_gpt2_folder_names_its_end_token_and_context() {
        let tok = Tokenizer::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-gpt2/tokenizer.json"
        )))
        .unwrap();
        let eot = tok.token_to_id("<|endoftext|>").unwrap();
        let c = config(
            json!({"model_type": "gpt2", "vocab_size": 320, "n_positions": 64,
            "n_embd": 8, "n_layer": 1, "n_head": 2, "bos_token_id": eot, "eos_token_id": eot}),
        );
        let t = tokenizer_config(&c, &tok);
        assert_eq!(t["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!(t["model_max_length"], 64);
        assert_eq!(t["eos_token"], "<|endoftext|>");
        assert_eq!(t["bos_token"], "<|endoftext|>");
        assert!(t.get("pad_token").is_none());
        let g = generation_config(&c).unwrap();
        assert_eq!(g["eos_token_id"], eot);
        assert_eq!(g["bos_token_id"], eot);
    }

    #[test]
    fn a_bert_folder_names_its_mask_and_has_no_generation_config() {
        let tok = Tokenizer::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-bert/tokenizer.json"
        )))
        .unwrap();
        let c = config(json!({"model_type": "bert", "vocab_size": tok.vocab_size(),
            "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 32, "pad_token_id": 0}));
        let t = tokenizer_config(&c, &tok);
        for (k, v) in [
            ("mask_token", "[MASK]"),
            ("cls_token", "[CLS]"),
            ("sep_token", "[SEP]"),
        ] {
            assert_eq!(t[k], v, "{t}");
        }
        assert!(generation_config(&c).is_none());
    }
}
