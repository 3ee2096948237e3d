//! Fill-mask: the masked-LM head's most probable tokens at each mask token (the
//! tokenizer's own: `[MASK]`, `<mask>`).

use candle_core::{Device, IndexOp, Tensor, D};
use serde::Serialize;

use crate::error::{Result, WickError};
use crate::models::Bert;
use crate::tokenizer::{Special, Tokenizer};

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub token_id: u32,
    pub token: String,
    /// Softmax probability over the vocabulary.
    pub score: f32,
}

/// Top-k predictions for every [MASK] in `text`, in order of appearance.
pub fn fill_mask(
    model: &Bert,
    tok: &Tokenizer,
    text: &str,
    top_k: usize,
    device: &Device,
) -> Result<Vec<Vec<Prediction>>> {
    let (mask, mask_id) = tok.special(Special::Mask).ok_or_else(|| {
        WickError::Unsupported("the tokenizer has no mask token ([MASK] or <mask>)".into())
    })?;
    let ids = tok.encode(text, true)?;
    let positions: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == mask_id)
        .map(|(i, _)| i)
        .collect();
    if positions.is_empty() {
        return Err(WickError::Unsupported(format!(
            "the text has no {mask} token: {text:?}"
        )));
    }
    let max = model.config().max_tokens();
    if ids.len() > max {
        return Err(WickError::TooLong {
            len: ids.len(),
            max,
        });
    }
    let x = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?; // (1, T)
    let logits = model
        .mlm_logits(&model.forward(&x, None, None, false)?)?
        .i(0)?; // (T, V)
    positions
        .iter()
        .map(|&p| {
            let probs = candle_nn::ops::softmax(&logits.i(p)?, D::Minus1)?.to_vec1::<f32>()?;
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            Ok(order
                .into_iter()
                .take(top_k)
                .map(|i| Prediction {
                    token_id: i as u32,
                    token: tok.id_to_token(i as u32).unwrap_or_default(),
                    score: probs[i],
                })
                .collect())
        })
        .collect()
}
