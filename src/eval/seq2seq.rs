//! An encoder-decoder's teacher-forced loss over every pair, in order, and the
//! non-autoregressive model's masked-target loss. (BLEU, which needs decoding, is
//! [`crate::tasks::bleu`] on [`crate::tasks::translate`]'s output.)

use candle_core::{DType, Device, Tensor, D};

use crate::data::nat::{NatBatch, NatBatches};
use crate::data::pairs::PairBatches;
use crate::error::Result;
use crate::labels::IGNORE;
use crate::models::Seq2Seq;
use crate::nn::loss::{cross_entropy, masked_lm_loss, smoothed_loss};

/// The length predictor's share of the non-autoregressive loss (Mask-Predict's and
/// fairseq's `length_loss_factor`).
pub const LENGTH_LOSS_WEIGHT: f64 = 0.1;

/// One batch's non-autoregressive loss and its parts.
pub struct NatLoss {
    /// What training minimises: `tokens` + [`LENGTH_LOSS_WEIGHT`] × `lengths`.
    pub total: Tensor,
    /// Cross-entropy (smoothed when asked) on the masked target positions.
    pub tokens: Tensor,
    /// The length predictor's cross-entropy.
    pub lengths: Tensor,
    /// The length predictor's logits: (B, 2·max + 1).
    pub length_logits: Tensor,
    /// The true length classes: (B,).
    pub length_classes: Tensor,
}

/// The conditional masked LM's loss on one batch, token loss smoothed by `eps`.
pub fn nat_loss(model: &Seq2Seq, b: &NatBatch, eps: f64, train: bool) -> Result<NatLoss> {
    let memory = model.encode(&b.src, Some(&b.src_mask), train)?; // (B, S, C)
    let logits = model.decode(
        &b.tgt_in,
        &memory,
        Some(&b.src_mask),
        Some(&b.tgt_mask),
        None,
        train,
    )?; // (B, T, V)
    let tokens = smoothed_loss(&logits, &b.labels, eps)?;
    let length_logits = model.predict_length(&memory, Some(&b.src_mask))?;
    let classes: Vec<u32> = (b.src_lengths.iter().zip(&b.tgt_lengths))
        .map(|(&s, &t)| model.length_class(s, t))
        .collect();
    let length_classes = Tensor::new(classes, length_logits.device())?;
    let lengths = cross_entropy(&length_logits, &length_classes)?;
    Ok(NatLoss {
        total: (&tokens + (&lengths * LENGTH_LOSS_WEIGHT)?)?,
        tokens,
        lengths,
        length_logits,
        length_classes,
    })
}

/// The non-autoregressive loss (no smoothing) over every pair, the token part weighted
/// by masked positions and the length part by pairs: (loss, length accuracy).
pub fn nat_loss_over(
    model: &Seq2Seq,
    batches: &mut NatBatches,
    device: &Device,
) -> Result<(f64, f64)> {
    let count = |t: Tensor| -> Result<f64> {
        Ok(t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as f64)
    };
    let (mut tokens, mut masked, mut lengths, mut right, mut pairs) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for i in 0..batches.batches_per_pass() {
        let b = batches.batch(i, device)?;
        let loss = nat_loss(model, &b, 0.0, false)?;
        let (n, rows) = (count(b.labels.ne(IGNORE)?)?, b.tgt_lengths.len() as f64);
        tokens += loss.tokens.to_scalar::<f32>()? as f64 * n;
        masked += n;
        lengths += loss.lengths.to_scalar::<f32>()? as f64 * rows;
        let guess = loss.length_logits.argmax(D::Minus1)?;
        right += count(guess.eq(&loss.length_classes)?)?;
        pairs += rows;
    }
    let (masked, pairs) = (masked.max(1.0), pairs.max(1.0));
    Ok((
        tokens / masked + LENGTH_LOSS_WEIGHT * lengths / pairs,
        right / pairs,
    ))
}

/// Token-weighted mean cross-entropy of the encoder-decoder over every pair, in order.
pub fn seq2seq_loss_over(
    model: &Seq2Seq,
    batches: &mut PairBatches,
    device: &Device,
) -> Result<f64> {
    let (mut total, mut tokens) = (0f64, 0usize);
    for i in 0..batches.batches_per_pass() {
        let b = batches.batch(i, device)?;
        let logits = model.forward(
            &b.src,
            Some(&b.src_mask),
            &b.tgt_in,
            Some(&b.tgt_mask),
            false,
        )?;
        let n = b.tgt_mask.sum_all()?.to_scalar::<u32>()? as usize;
        total += masked_lm_loss(&logits, &b.labels)?.to_scalar::<f32>()? as f64 * n as f64;
        tokens += n;
    }
    Ok(total / tokens.max(1) as f64)
}
