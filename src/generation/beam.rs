//! Beam search: keep the `num_beams` most probable partial sequences of each prompt,
//! extend each by every token, keep the best again. Finished hypotheses (ending in EOS)
//! are scored by sum of log-probabilities / generated_length^length_penalty, as in
//! transformers, and the search for a prompt stops according to `early_stopping`.

use candle_core::{Device, Tensor};

use super::decoder::Decoder;
use super::search::{check_prompts, next_logits, Padded};
use super::{EarlyStopping, GenerateOptions, Generation};
use crate::error::{Result, WickError};

/// A hypothesis score that can never be chosen (transformers uses -1e9 for the copies
/// of the first beam at the start).
const NEVER: f64 = -1e9;

/// Finished hypotheses of one prompt, the best `num_beams` kept.
struct Finished {
    hyps: Vec<(f64, Vec<u32>)>,
    num_beams: usize,
    length_penalty: f64,
}

impl Finished {
    fn score(&self, sum_logprobs: f64, len: usize) -> f64 {
        sum_logprobs / (len.max(1) as f64).powf(self.length_penalty)
    }

    fn worst(&self) -> f64 {
        self.hyps.iter().map(|h| h.0).fold(f64::INFINITY, f64::min)
    }

    fn add(&mut self, ids: Vec<u32>, sum_logprobs: f64) {
        let score = self.score(sum_logprobs, ids.len());
        if self.hyps.len() < self.num_beams || score > self.worst() {
            self.hyps.push((score, ids));
            if self.hyps.len() > self.num_beams {
                let worst = (0..self.hyps.len())
                    .min_by(|&a, &b| self.hyps[a].0.total_cmp(&self.hyps[b].0))
                    .unwrap();
                self.hyps.remove(worst);
            }
        }
    }

    /// Whether no running beam can still beat the worst finished hypothesis.
    fn is_done(
        &self,
        best_running: f64,
        generated: usize,
        max_new: usize,
        rule: EarlyStopping,
    ) -> bool {
        if self.hyps.len() < self.num_beams {
            return false;
        }
        match rule {
            EarlyStopping::True => true,
            // transformers' heuristic: the best running beam, scored at its current
            // length, cannot beat the worst finished one.
            EarlyStopping::False => self.worst() >= self.score(best_running, generated),
            // The exact bound: with a positive length penalty a longer beam divides by
            // more, so the best case is the longest possible length.
            EarlyStopping::Never => {
                let len = if self.length_penalty > 0.0 {
                    max_new
                } else {
                    generated
                };
                self.worst() >= self.score(best_running, len)
            }
        }
    }
}

/// log_softmax of one row (accumulated in f64).
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// Beam search over each prompt; returns per prompt its best `num_return_sequences`
/// hypotheses, best first. Penalties apply per beam; sampling settings do not (beam
/// search is deterministic).
pub fn beam_search(
    dec: &mut dyn Decoder,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    device: &Device,
) -> Result<Vec<Vec<Generation>>> {
    check_prompts(prompts, dec.max_len(), opts)?;
    let k = opts.num_beams;
    if opts.num_return_sequences > k {
        return Err(WickError::Unsupported(format!(
            "--num-return-sequences {} is more than --num-beams {k}",
            opts.num_return_sequences
        )));
    }
    if opts.processors.sampling() {
        return Err(WickError::Unsupported(
            "beam search is deterministic: drop --temperature (or set it to 0) with --num-beams"
                .into(),
        ));
    }
    let cfg = &opts.processors;
    let n = prompts.len();
    // Enough candidates that k survive even if every EOS id is among them.
    let keep = (1 + cfg.eos_token_ids.len()).max(2) * k;
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), k))
        .collect();
    let mut padded = Padded::new(&rows, opts.pad_token_id);
    let mut fed = 0;
    // Per row: generated ids and the running sum of log-probabilities.
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); n * k];
    let mut scores: Vec<f64> = (0..n * k)
        .map(|r| if r % k == 0 { 0.0 } else { NEVER })
        .collect();
    let mut finished: Vec<Finished> = (0..n)
        .map(|_| Finished {
            hyps: vec![],
            num_beams: k,
            length_penalty: opts.length_penalty,
        })
        .collect();
    let mut done = vec![false; n];
    if opts.max_new_tokens == 0 {
        return Ok(vec![
            vec![Generation {
                ids: vec![],
                score: None
            }];
            n
        ]);
    }
    for step in 0..opts.max_new_tokens {
        let logits = next_logits(dec, &padded, &mut fed, device)?;
        let mut next_rows: Vec<u32> = Vec::with_capacity(n * k);
        let mut next_tokens: Vec<u32> = Vec::with_capacity(n * k);
        let mut next_scores: Vec<f64> = Vec::with_capacity(n * k);
        let mut next_generated: Vec<Vec<u32>> = Vec::with_capacity(n * k);
        for (i, fin) in finished.iter_mut().enumerate() {
            if done[i] {
                for r in i * k..(i + 1) * k {
                    next_rows.push(r as u32);
                    next_tokens.push(opts.pad_token_id);
                    next_scores.push(scores[r]);
                    next_generated.push(generated[r].clone());
                }
                continue;
            }
            // Every (beam, token) extension of this prompt's beams, scored.
            let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
            for r in i * k..(i + 1) * k {
                // As transformers does for beams: processors act on log-probabilities.
                let mut lp = log_softmax(&logits[r]);
                let mut history = prompts[i].clone();
                history.extend_from_slice(&generated[r]);
                cfg.apply(&mut lp, &history, &generated[r]);
                // Only a row's best `keep` can make the best `keep` overall.
                let mut idx: Vec<usize> = (0..lp.len()).collect();
                let top = keep.min(idx.len());
                idx.select_nth_unstable_by(top - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
                for &t in &idx[..top] {
                    candidates.push((scores[r] + lp[t] as f64, r, t as u32));
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            candidates.truncate(keep);
            let last_step = step + 1 == opts.max_new_tokens;
            let mut kept = 0;
            for (rank, &(score, r, t)) in candidates.iter().enumerate() {
                // A candidate ends at EOS, or at the length limit. Only the top k may
                // become hypotheses; the rest only stand by to keep k beams running.
                if last_step || cfg.eos_token_ids.contains(&t) {
                    if rank < k {
                        let mut ids = generated[r].clone();
                        ids.push(t);
                        fin.add(ids, score);
                    }
                    continue;
                }
                next_rows.push(r as u32);
                next_tokens.push(t);
                next_scores.push(score);
                let mut ids = generated[r].clone();
                ids.push(t);
                next_generated.push(ids);
                kept += 1;
                if kept == k {
                    break;
                }
            }
            if last_step {
                done[i] = true;
                continue;
            }
            if kept < k {
                // Every candidate ended: pad the beams out (the prompt is done anyway).
                for _ in kept..k {
                    next_rows.push((i * k) as u32);
                    next_tokens.push(opts.pad_token_id);
                    next_scores.push(NEVER);
                    next_generated.push(generated[i * k].clone());
                }
            }
            let best_running = next_scores[i * k];
            done[i] = kept < k
                || fin.is_done(
                    best_running,
                    step + 1,
                    opts.max_new_tokens,
                    opts.early_stopping,
                );
        }
        if done.iter().all(|&d| d) {
            break;
        }
        dec.reorder(&Tensor::new(next_rows.as_slice(), device)?)?;
        padded.reorder(&next_rows);
        scores = next_scores;
        generated = next_generated;
        padded.push(&next_tokens);
    }
    Ok(finished
        .into_iter()
        .map(|mut fin| {
            fin.hyps.sort_by(|a, b| b.0.total_cmp(&a.0));
            fin.hyps
                .into_iter()
                .take(opts.num_return_sequences)
                .map(|(score, ids)| Generation {
                    ids,
                    score: Some(score),
                })
                .collect()
        })
        .collect())
}
