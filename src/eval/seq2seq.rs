//! An encoder-decoder's teacher-forced loss over every pair, in order. (BLEU, which needs
//! decoding, is [`crate::tasks::bleu`] on [`crate::tasks::translate`]'s output.)

use candle_core::Device;

use crate::data::pairs::PairBatches;
use crate::error::Result;
use crate::models::Seq2Seq;
use crate::nn::loss::masked_lm_loss;

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
