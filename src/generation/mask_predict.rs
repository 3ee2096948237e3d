//! Mask-Predict (Ghazvininejad et al. 2019), the decoding of a non-autoregressive
//! encoder-decoder: the length predictor proposes the `length_beam` likeliest target
//! lengths (distinct, 1..=nat_max_length); for each, the decoder reads that many `<mask>` placeholders and fills every
//! position in one pass. Each of the `iterations − 1` further passes masks again the
//! n = L·(K − k)/K least confident tokens and predicts them anew, the rest held fixed.
//! The candidate with the highest mean log-probability wins. Every source's candidates
//! run as rows of one batch.

use candle_core::{Device, Result, Tensor, D};

use crate::data::{pad_batch, Padding};
use crate::models::Seq2Seq;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskPredictOptions {
    /// Decoder passes (K); 1 is a single parallel argmax.
    pub iterations: usize,
    /// Target lengths tried per source (ℓ).
    pub length_beam: usize,
}

impl Default for MaskPredictOptions {
    /// The paper's settings for its headline figures.
    fn default() -> Self {
        Self {
            iterations: 10,
            length_beam: 5,
        }
    }
}

/// One source's winning candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskPredicted {
    /// The tokens before the first EOS (placeholders and padding removed).
    pub ids: Vec<u32>,
    /// Mean log-probability of the candidate's tokens.
    pub score: f64,
    /// The length it was decoded at (EOS included).
    pub length: usize,
}

/// One candidate: a source row, a length, its tokens and their log-probabilities.
struct Candidate {
    source: usize,
    tokens: Vec<u32>,
    logp: Vec<f32>,
}

/// Decodes every source row of `src` (B, S) with its padding mask.
pub fn mask_predict(
    model: &Seq2Seq,
    src: &Tensor,
    src_mask: &Tensor,
    opts: &MaskPredictOptions,
) -> Result<Vec<MaskPredicted>> {
    let c = model.config();
    let (Some(_), Some(mask_id)) = (c.nat_max_length, c.mask_token_id) else {
        candle_core::bail!(
            "Mask-Predict needs a non-autoregressive model (trained with --objective nat)"
        )
    };
    if opts.iterations == 0 || opts.length_beam == 0 {
        candle_core::bail!("Mask-Predict needs at least one iteration and one length");
    }
    let memory = model.encode(src, Some(src_mask), false)?; // (B, S, C)
    let classes = model.predict_length(&memory, Some(src_mask))?; // (B, 2·max + 1)
    let src_lengths = src_mask
        .to_dtype(candle_core::DType::F32)?
        .sum(1)?
        .to_vec1::<f32>()?;
    let mut cands = candidates(model, &classes, &src_lengths, opts.length_beam, mask_id)?;
    let rows: Vec<u32> = cands.iter().map(|c| c.source as u32).collect();
    let rows = Tensor::new(rows, src.device())?;
    let (memory, src_mask) = (
        memory.index_select(&rows, 0)?,
        src_mask.index_select(&rows, 0)?,
    );
    let banned = banned_tokens(
        c.vocab_size,
        &[c.pad_token_id, c.bos_token_id, mask_id],
        src.device(),
    )?;
    let k = opts.iterations;
    let mut open: Vec<Vec<usize>> = cands
        .iter()
        .map(|c| (0..c.tokens.len()).collect())
        .collect();
    for it in 0..k {
        if it > 0 {
            open = cands
                .iter_mut()
                .map(|c| remask(c, k, it, mask_id))
                .collect();
            if open.iter().all(Vec::is_empty) {
                break;
            }
        }
        let tokens: Vec<Vec<u32>> = cands.iter().map(|c| c.tokens.clone()).collect();
        let (tgt, tgt_mask) = pad_batch(&tokens, c.pad_token_id, Padding::Right, src.device())?;
        let hidden =
            model.decode_hidden(&tgt, &memory, Some(&src_mask), Some(&tgt_mask), None, false)?; // (R, T, C)
                                                                                                // Only the positions this pass predicts meet the vocabulary: (N, C) -> (N, V).
        let (width, d) = (hidden.dim(1)?, hidden.dim(2)?);
        let rows: Vec<u32> = (open.iter().enumerate())
            .flat_map(|(r, ts)| ts.iter().map(move |&t| (r * width + t) as u32))
            .collect();
        let rows = Tensor::new(rows, src.device())?;
        let logits = model
            .output_logits(&hidden.reshape(((), d))?.index_select(&rows, 0)?)?
            .broadcast_add(&banned)?;
        let arg = logits.argmax(D::Minus1)?; // (N,)
                                             // log p(argmax) = −(its cross-entropy): the fused row kernel, no (N, V) softmax.
        let nll = crate::nn::kernels::cross_entropy_rows(&logits, &arg, 0.0)?.to_vec1::<f32>()?;
        let (arg, mut at) = (arg.to_vec1::<u32>()?, 0);
        for (cand, ts) in cands.iter_mut().zip(&open) {
            for &t in ts {
                cand.tokens[t] = arg[at];
                cand.logp[t] = -nll[at];
                at += 1;
            }
        }
    }
    Ok(pick_best(
        cands,
        src.dim(0)?,
        c.eos_token_id,
        &[c.pad_token_id, mask_id],
    ))
}

/// The `beam` likeliest distinct lengths of each source, as all-placeholder candidates.
fn candidates(
    model: &Seq2Seq,
    classes: &Tensor,
    src_lengths: &[f32],
    beam: usize,
    mask_id: u32,
) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for (source, row) in classes.to_vec2::<f32>()?.iter().enumerate() {
        let mut by_score: Vec<usize> = (0..row.len()).collect();
        by_score.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut lengths: Vec<usize> = Vec::with_capacity(beam);
        for class in by_score {
            let len = model.length_of_class(src_lengths[source] as usize, class);
            if !lengths.contains(&len) {
                lengths.push(len);
            }
            if lengths.len() == beam {
                break;
            }
        }
        for len in lengths {
            out.push(Candidate {
                source,
                tokens: vec![mask_id; len],
                logp: vec![0.0; len],
            });
        }
    }
    Ok(out)
}

/// Masks the L·(K − it)/K least confident tokens of `cand` again; returns their
/// positions.
fn remask(cand: &mut Candidate, k: usize, it: usize, mask_id: u32) -> Vec<usize> {
    let n = cand.tokens.len() * (k - it) / k;
    let mut order: Vec<usize> = (0..cand.tokens.len()).collect();
    order.sort_by(|&a, &b| cand.logp[a].total_cmp(&cand.logp[b]).then(a.cmp(&b)));
    order.truncate(n);
    for &t in &order {
        cand.tokens[t] = mask_id;
    }
    order
}

/// A (V,) bias at tokens a filled position must never be (padding, BOS, the placeholder
/// itself): −1e9, which every exp takes to exactly 0 (−∞ would make NaN of a row
/// minus its max in some kernels), 0 elsewhere.
fn banned_tokens(vocab: usize, ids: &[u32], device: &Device) -> Result<Tensor> {
    let mut bias = vec![0f32; vocab];
    for &id in ids {
        if let Some(b) = bias.get_mut(id as usize) {
            *b = -1e9;
        }
    }
    Tensor::from_vec(bias, vocab, device)
}

/// Each source's candidate with the highest mean log-probability (the first on ties),
/// cut before its first EOS.
fn pick_best(cands: Vec<Candidate>, sources: usize, eos: u32, drop: &[u32]) -> Vec<MaskPredicted> {
    let mut best: Vec<Option<MaskPredicted>> = vec![None; sources];
    for c in cands {
        let score = c.logp.iter().map(|&p| p as f64).sum::<f64>() / c.logp.len().max(1) as f64;
        if best[c.source].as_ref().is_some_and(|b| b.score >= score) {
            continue;
        }
        let ids = c
            .tokens
            .iter()
            .copied()
            .take_while(|&t| t != eos)
            .filter(|t| !drop.contains(t))
            .collect();
        best[c.source] = Some(MaskPredicted {
            ids,
            score,
            length: c.tokens.len(),
        });
    }
    best.into_iter()
        .map(|b| b.expect("every source has at least one length candidate"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pass_masks_again_fewer_of_the_least_confident() {
        let mut c = Candidate {
            source: 0,
            tokens: vec![10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
            logp: vec![-0.1, -3.0, -0.2, -2.0, -0.3, -1.0, -0.4, -0.5, -0.6, -0.7],
        };
        // K = 4, pass 1: 10·3/4 = 7 of 10 again, the least confident first.
        let open = remask(&mut c, 4, 1, 3);
        assert_eq!(open, vec![1, 3, 5, 9, 8, 7, 6]);
        assert_eq!(c.tokens, vec![10, 3, 12, 3, 14, 3, 3, 3, 3, 3]);
        // Pass 3: 10·1/4 = 2.
        assert_eq!(remask(&mut c, 4, 3, 3).len(), 2);
    }

    #[test]
    fn the_best_candidate_is_cut_before_its_first_eos() {
        let cand = |source, tokens: Vec<u32>, logp: Vec<f32>| Candidate {
            source,
            tokens,
            logp,
        };
        let best = pick_best(
            vec![
                cand(0, vec![7, 8, 2], vec![-1.0, -1.0, -1.0]),
                cand(0, vec![7, 3, 9, 2, 8], vec![-0.1, -0.1, -0.1, -0.1, -0.1]),
                cand(1, vec![2, 5], vec![-0.5, -0.5]),
            ],
            2,
            2,
            &[0, 3],
        );
        assert_eq!(best[0].ids, vec![7, 9]);
        assert_eq!(best[0].length, 5);
        assert!((best[0].score + 0.1).abs() < 1e-6);
        assert_eq!(best[1].ids, Vec::<u32>::new());
    }
}
