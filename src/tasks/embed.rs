//! Sentence embeddings from a BERT encoder: [CLS] or mean pooling over real tokens (the
//! sentence-transformers convention), optionally L2-normalised.

use candle_core::{DType, Device, IndexOp, D};
use serde::{Deserialize, Serialize};

use crate::data::{pad_batch, Padding};
use crate::error::Result;
use crate::models::Bert;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Cls,
    Mean,
}

/// A sentence-transformers folder's pooling and whether it normalises
/// (`1_Pooling/config.json`, a `Normalize` module in `modules.json`); mean pooling,
/// unnormalised, for any other folder.
pub fn folder_pooling(dir: &std::path::Path) -> (Pooling, bool) {
    let read = |p: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(p)).ok()?).ok()
    };
    let pooling = match read("1_Pooling/config.json") {
        Some(c) if c["pooling_mode_cls_token"] == true => Pooling::Cls,
        _ => Pooling::Mean,
    };
    let normalize = read("modules.json")
        .and_then(|m| m.as_array().cloned())
        .is_some_and(|mods| {
            mods.iter().any(|m| {
                m["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("models.Normalize"))
            })
        });
    (pooling, normalize)
}

/// Encodes texts with special tokens, cut to `max_length` tokens.
pub fn encode_all(tok: &Tokenizer, texts: &[String], max_length: usize) -> Result<Vec<Vec<u32>>> {
    texts
        .iter()
        .map(|t| {
            let mut ids = tok.encode(t, true)?;
            if ids.len() > max_length {
                // Keep the final special token ([SEP]) like transformers' truncation.
                let last = *ids.last().unwrap();
                ids.truncate(max_length);
                if let Some(l) = ids.last_mut() {
                    *l = last;
                }
            }
            Ok(ids)
        })
        .collect()
}

/// One embedding per text, as one padded batch.
pub fn embed(
    model: &Bert,
    tok: &Tokenizer,
    texts: &[String],
    pooling: Pooling,
    normalize: bool,
    max_length: Option<usize>,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let max_length = max_length.unwrap_or(model.config().max_tokens());
    let seqs = encode_all(tok, texts, max_length)?;
    let pad = model.config().pad_token_id.unwrap_or(0);
    let (ids, mask) = pad_batch(&seqs, pad, Padding::Right, device)?;
    let hidden = model.forward(&ids, None, Some(&mask), false)?; // (B, T, H)
    let pooled = match pooling {
        Pooling::Cls => hidden.i((.., 0))?, // (B, H)
        Pooling::Mean => {
            let m = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?; // (B, T, 1)
            let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (B, H)
            summed.broadcast_div(&m.sum(1)?.clamp(1e-9, f64::MAX)?)?
        }
    };
    let pooled = if normalize {
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norm)?
    } else {
        pooled
    };
    Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}
