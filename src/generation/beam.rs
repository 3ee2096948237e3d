//! Beam search: keep the `num_beams` most probable partial sequences of each prompt,
//! extend each by every token, keep the best again. Finished hypotheses (ending in EOS)
//! are scored by sum of log-probabilities / generated_length^length_penalty, as in
//! transformers, and the search for a prompt stops according to `early_stopping`.

use candle_core::{Device, Tensor};

use super::decoder::Decoder;
use super::search::{check_prompts, next_logits};
use super::{EarlyStopping, GenerateOptions, Generation};
use crate::data::padding::Padded;
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
    check_beam_options(prompts, dec.max_len(), opts)?;
    let k = opts.num_beams;
    let n = prompts.len();
    if opts.max_new_tokens == 0 {
        let empty = Generation {
            ids: vec![],
            score: None,
        };
        return Ok(vec![vec![empty]; n]);
    }
    // Row r = i·k + j is beam j of prompt i; at the start only beam 0 may be chosen.
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), k))
        .collect();
    let mut padded = Padded::new(&rows, opts.pad_token_id);
    let mut fed = 0;
    let mut beams = Beams {
        generated: vec![Vec::new(); n * k],
        scores: (0..n * k)
            .map(|r| if r % k == 0 { 0.0 } else { NEVER })
            .collect(),
        ..Beams::default()
    };
    let mut finished: Vec<Finished> = (0..n)
        .map(|_| Finished {
            hyps: vec![],
            num_beams: k,
            length_penalty: opts.length_penalty,
        })
        .collect();
    let mut done = vec![false; n];
    for step in 0..opts.max_new_tokens {
        let logits = next_logits(dec, &padded, &mut fed, device)?;
        let mut next = Beams::default();
        for (i, fin) in finished.iter_mut().enumerate() {
            if done[i] {
                for r in i * k..(i + 1) * k {
                    next.push(
                        r,
                        opts.pad_token_id,
                        beams.scores[r],
                        beams.generated[r].clone(),
                    );
                }
                continue;
            }
            done[i] = beams.extend_prompt(i, &prompts[i], &logits, step, opts, fin, &mut next);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        dec.reorder(&Tensor::new(next.rows.as_slice(), device)?)?;
        padded.reorder(&next.rows);
        padded.push(&next.tokens);
        beams = next;
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

/// The prompts fit, and the options make sense for a beam search.
fn check_beam_options(prompts: &[Vec<u32>], max_len: usize, opts: &GenerateOptions) -> Result<()> {
    check_prompts(prompts, max_len, opts)?;
    if opts.num_return_sequences > opts.num_beams {
        return Err(WickError::Unsupported(format!(
            "--num-return-sequences {} is more than --num-beams {}",
            opts.num_return_sequences, opts.num_beams
        )));
    }
    if opts.processors.sampling() {
        return Err(WickError::Unsupported(
            "beam search is deterministic: drop --temperature (or set it to 0) with --num-beams"
                .into(),
        ));
    }
    Ok(())
}

/// The running beams of every prompt, row by row: which row of the previous step each
/// continues (`rows`), the token it adds, its summed log-probability and its ids.
#[derive(Default)]
struct Beams {
    rows: Vec<u32>,
    tokens: Vec<u32>,
    scores: Vec<f64>,
    generated: Vec<Vec<u32>>,
}

impl Beams {
    fn push(&mut self, row: usize, token: u32, score: f64, ids: Vec<u32>) {
        self.rows.push(row as u32);
        self.tokens.push(token);
        self.scores.push(score);
        self.generated.push(ids);
    }

    /// Extends prompt `i`'s k beams by their best tokens into `next` (always k rows),
    /// moving the candidates that end into `fin`; whether the prompt is done.
    #[allow(clippy::too_many_arguments)]
    fn extend_prompt(
        &self,
        i: usize,
        prompt: &[u32],
        logits: &[Vec<f32>],
        step: usize,
        opts: &GenerateOptions,
        fin: &mut Finished,
        next: &mut Beams,
    ) -> bool {
        let (k, cfg) = (opts.num_beams, &opts.processors);
        // Enough candidates that k survive even if every EOS id is among them.
        let keep = (1 + cfg.eos_token_ids.len()).max(2) * k;
        // Every (beam, token) extension of this prompt's beams, scored.
        let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
        for (r, row) in logits.iter().enumerate().skip(i * k).take(k) {
            // As transformers does for beams: processors act on log-probabilities.
            let mut lp = log_softmax(row);
            let mut history = prompt.to_vec();
            history.extend_from_slice(&self.generated[r]);
            cfg.apply(&mut lp, &history, &self.generated[r]);
            // Only a row's best `keep` can make the best `keep` overall.
            let mut idx: Vec<usize> = (0..lp.len()).collect();
            let top = keep.min(idx.len());
            idx.select_nth_unstable_by(top - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
            for &t in &idx[..top] {
                candidates.push((self.scores[r] + lp[t] as f64, r, t as u32));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        candidates.truncate(keep);
        let last_step = step + 1 == opts.max_new_tokens;
        let first = next.rows.len();
        let mut kept = 0;
        for (rank, &(score, r, t)) in candidates.iter().enumerate() {
            let mut ids = self.generated[r].clone();
            ids.push(t);
            // A candidate ends at EOS, or at the length limit. Only the top k may
            // become hypotheses; the rest only stand by to keep k beams running.
            if last_step || cfg.eos_token_ids.contains(&t) {
                if rank < k {
                    fin.add(ids, score);
                }
                continue;
            }
            next.push(r, t, score, ids);
            kept += 1;
            if kept == k {
                break;
            }
        }
        if last_step {
            return true;
        }
        // Every candidate ended: pad the beams out (the prompt is done anyway).
        for _ in kept..k {
            next.push(
                i * k,
                opts.pad_token_id,
                NEVER,
                self.generated[i * k].clone(),
            );
        }
        kept < k
            || fin.is_done(
                next.scores[first],
                step + 1,
                opts.max_new_tokens,
                opts.early_stopping,
            )
    }
}
