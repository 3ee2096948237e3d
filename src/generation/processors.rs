//! Logits processors: small pieces that rewrite one row of next-token logits before a
//! token is chosen. Each follows the semantics of its transformers namesake (noted on
//! each function) so a `--top-p 0.9` here means what it means there. They run on a CPU
//! `Vec<f32>` per row: the vocabulary is a few hundred KB and the per-row bookkeeping
//! (histories, n-grams, sorting) is simpler and no slower than tensor ops.
//!
//! Order, as transformers applies them: penalties (repetition, frequency/presence,
//! no-repeat-n-gram, min-new-tokens) shape the scores for every strategy; the sampling
//! warpers (temperature, top-k, top-p, min-p, typical-p) apply only when sampling.

use std::collections::HashMap;

/// Removed tokens get -inf, as transformers' `filter_value`.
pub const FILTERED: f32 = f32::NEG_INFINITY;

/// Sampling and penalty settings shared by every decoding strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    /// 0 means greedy: the warpers below are skipped and the argmax is taken.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub typical_p: Option<f64>,
    /// transformers' `repetition_penalty` (1 = off).
    pub repetition_penalty: f32,
    /// OpenAI-style penalties over the generated tokens (0 = off).
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// 0 = off.
    pub no_repeat_ngram_size: usize,
    /// EOS is forbidden until this many tokens have been generated.
    pub min_new_tokens: usize,
    pub eos_token_ids: Vec<u32>,
    /// transformers' `forced_eos_token_id` (Marian): (n, id) makes the n-th generated
    /// token `id`, so a row that reaches the length limit still ends with EOS.
    pub forced_eos: Option<(usize, u32)>,
    /// transformers' `forced_bos_token_id` (BART): the first generated token is `id`.
    pub forced_bos: Option<u32>,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            typical_p: None,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            no_repeat_ngram_size: 0,
            min_new_tokens: 0,
            eos_token_ids: vec![],
            forced_eos: None,
            forced_bos: None,
        }
    }
}

impl ProcessorConfig {
    pub fn sampling(&self) -> bool {
        self.temperature > 0.0
    }

    /// Checks ranges the way transformers' GenerationConfig.validate does, naming the
    /// CLI flag.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: Option<f64>| match v {
            Some(p) if !(p > 0.0 && p <= 1.0) => Err(format!("{name} must be in (0, 1], got {p}")),
            _ => Ok(()),
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "--temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return Err("--top-k must be at least 1".into());
        }
        unit("--top-p", self.top_p)?;
        unit("--min-p", self.min_p)?;
        unit("--typical-p", self.typical_p)?;
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "--repetition-penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if !self.frequency_penalty.is_finite() || !self.presence_penalty.is_finite() {
            return Err("--frequency-penalty and --presence-penalty must be finite".into());
        }
        Ok(())
    }

    /// Applies every configured processor to one row. `history` is the row's prompt plus
    /// what it generated so far (no padding); `generated` is the generated tail.
    pub fn apply(&self, logits: &mut [f32], history: &[u32], generated: &[u32]) {
        if self.repetition_penalty != 1.0 {
            repetition_penalty(logits, history, self.repetition_penalty);
        }
        if self.frequency_penalty != 0.0 || self.presence_penalty != 0.0 {
            frequency_presence_penalty(
                logits,
                generated,
                self.frequency_penalty,
                self.presence_penalty,
            );
        }
        if self.no_repeat_ngram_size > 0 {
            no_repeat_ngram(logits, history, self.no_repeat_ngram_size);
        }
        if generated.len() < self.min_new_tokens {
            suppress(logits, &self.eos_token_ids);
        }
        // As ForcedBOSTokenLogitsProcessor and ForcedEOSTokenLogitsProcessor: every
        // other token -inf, the forced one 0 (a beam's score gains nothing from it).
        let forced = match (self.forced_bos, self.forced_eos) {
            (Some(id), _) if generated.is_empty() => Some(id),
            (_, Some((n, id))) if generated.len() + 1 == n => Some(id),
            _ => None,
        };
        if let Some(id) = forced.filter(|&id| (id as usize) < logits.len()) {
            logits.fill(f32::NEG_INFINITY);
            logits[id as usize] = 0.0;
        }
        if !self.sampling() {
            return;
        }
        if self.temperature != 1.0 {
            temperature(logits, self.temperature as f32);
        }
        if let Some(k) = self.top_k {
            top_k(logits, k);
        }
        if let Some(p) = self.top_p {
            top_p(logits, p as f32);
        }
        if let Some(p) = self.min_p {
            min_p(logits, p as f32);
        }
        if let Some(p) = self.typical_p {
            typical_p(logits, p as f32);
        }
    }
}

/// `TemperatureLogitsWarper`: logits / t.
pub fn temperature(logits: &mut [f32], t: f32) {
    logits.iter_mut().for_each(|x| *x /= t);
}

/// `RepetitionPenaltyLogitsProcessor` (CTRL): every token already present is made less
/// likely: a positive logit divided by the penalty, a negative one multiplied, once per
/// distinct token however often it occurred.
pub fn repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = history.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for &t in &seen {
        if let Some(x) = logits.get_mut(t as usize) {
            *x = if *x < 0.0 { *x * penalty } else { *x / penalty };
        }
    }
}

/// OpenAI's frequency and presence penalties over the generated tokens:
/// logit -= frequency · count + presence · [count > 0].
pub fn frequency_presence_penalty(
    logits: &mut [f32],
    generated: &[u32],
    frequency: f32,
    presence: f32,
) {
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in generated {
        *counts.entry(t).or_default() += 1;
    }
    for (t, c) in counts {
        if let Some(x) = logits.get_mut(t as usize) {
            *x -= frequency * c as f32 + presence;
        }
    }
}

/// `NoRepeatNGramLogitsProcessor`: forbids any token that would complete an n-gram
/// already present in the history.
pub fn no_repeat_ngram(logits: &mut [f32], history: &[u32], n: usize) {
    if n == 0 || history.len() + 1 < n {
        return;
    }
    let prefix = &history[history.len() + 1 - n..]; // the last n - 1 tokens
    for w in history.windows(n) {
        if &w[..n - 1] == prefix {
            if let Some(x) = logits.get_mut(w[n - 1] as usize) {
                *x = FILTERED;
            }
        }
    }
}

/// Sets the listed tokens to -inf (`MinNewTokensLengthLogitsProcessor` on EOS).
pub fn suppress(logits: &mut [f32], tokens: &[u32]) {
    for &t in tokens {
        if let Some(x) = logits.get_mut(t as usize) {
            *x = FILTERED;
        }
    }
}

/// `TopKLogitsWarper`: keeps the k highest logits (ties with the k-th are kept).
pub fn top_k(logits: &mut [f32], k: usize) {
    let k = k.max(1);
    if k >= logits.len() {
        return;
    }
    let mut sorted = logits.to_vec();
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    logits
        .iter_mut()
        .filter(|x| **x < kth)
        .for_each(|x| *x = FILTERED);
}

/// Softmax of a row in f64 (the warpers compare cumulative sums against p; f64 keeps a
/// 50k-term sum honest).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Token indices by descending logit (stable: ties keep the lower id first).
fn by_descending(logits: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx
}

/// `TopPLogitsWarper` (nucleus): keeps the smallest set of most probable tokens whose
/// mass reaches p, and always at least one token.
pub fn top_p(logits: &mut [f32], p: f32) {
    let probs = softmax(logits);
    let order = by_descending(logits);
    let mut mass = 0.0f64;
    let mut keep = order.len();
    for (rank, &i) in order.iter().enumerate() {
        mass += probs[i];
        if mass >= p as f64 {
            keep = rank + 1;
            break;
        }
    }
    for &i in &order[keep..] {
        logits[i] = FILTERED;
    }
}

/// `MinPLogitsWarper`: removes tokens less probable than min_p times the most probable
/// one (the most probable always stays).
pub fn min_p(logits: &mut [f32], p: f32) {
    let probs = softmax(logits);
    let top = probs.iter().copied().fold(0.0f64, f64::max);
    let threshold = p as f64 * top;
    for (x, &q) in logits.iter_mut().zip(&probs) {
        if q < threshold {
            *x = FILTERED;
        }
    }
}

/// `TypicalLogitsWarper` (locally typical sampling): ranks tokens by how close their
/// surprisal is to the distribution's entropy and keeps the closest ones until their
/// mass reaches p (at least one).
pub fn typical_p(logits: &mut [f32], p: f32) {
    let probs = softmax(logits);
    let entropy: f64 = probs
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|&q| -q * q.ln())
        .sum();
    let distance: Vec<f64> = probs
        .iter()
        .map(|&q| {
            if q > 0.0 {
                (-q.ln() - entropy).abs()
            } else {
                f64::INFINITY
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| distance[a].total_cmp(&distance[b]));
    // transformers keeps every token up to and including the first whose cumulative
    // mass reaches p, judged on the sorted distances (so ties at the cut stay).
    let mut mass = 0.0f64;
    let mut last = order.len() - 1;
    for (rank, &i) in order.iter().enumerate() {
        mass += probs[i];
        if mass >= p as f64 {
            last = rank;
            break;
        }
    }
    let cut = distance[order[last]];
    for (i, x) in logits.iter_mut().enumerate() {
        if distance[i] > cut {
            *x = FILTERED;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(logits: &[f32]) -> Vec<usize> {
        (0..logits.len())
            .filter(|&i| logits[i] != FILTERED)
            .collect()
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once() {
        let mut l = vec![2.0, -2.0, 1.0];
        repetition_penalty(&mut l, &[0, 1, 0, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_count_generated_tokens() {
        let mut l = vec![0.0; 3];
        frequency_presence_penalty(&mut l, &[2, 2, 0], 0.5, 1.0);
        assert_eq!(l, vec![-1.5, 0.0, -2.0]);
    }

    #[test]
    fn no_repeat_ngram_bans_completions_of_seen_ngrams() {
        // history 1 2 3 1 2: the bigram prefix is [2]; "2 3" was seen, so 3 is banned.
        let mut l = vec![0.0; 5];
        no_repeat_ngram(&mut l, &[1, 2, 3, 1, 2], 2);
        assert_eq!(kept(&l), vec![0, 1, 2, 4]);
        // Trigram prefix [1, 2] was followed by 3.
        let mut l = vec![0.0; 5];
        no_repeat_ngram(&mut l, &[1, 2, 3, 1, 2], 3);
        assert_eq!(kept(&l), vec![0, 1, 2, 4]);
        // Too short a history bans nothing.
        let mut l = vec![0.0; 5];
        no_repeat_ngram(&mut l, &[1], 3);
        assert_eq!(kept(&l).len(), 5);
    }

    #[test]
    fn top_k_keeps_k_highest_and_ties() {
        let mut l = vec![1.0, 4.0, 3.0, 3.0, 0.0];
        top_k(&mut l, 2);
        assert_eq!(kept(&l), vec![1, 2, 3]);
        let mut l = vec![1.0, 2.0];
        top_k(&mut l, 5);
        assert_eq!(kept(&l), vec![0, 1]);
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p_and_at_least_one() {
        // probs ≈ [0.643, 0.237, 0.087, 0.032]
        let base = [3.0f32, 2.0, 1.0, 0.0];
        let mut l = base.to_vec();
        top_p(&mut l, 0.8);
        assert_eq!(kept(&l), vec![0, 1]);
        let mut l = base.to_vec();
        top_p(&mut l, 0.5);
        assert_eq!(kept(&l), vec![0]);
        let mut l = base.to_vec();
        top_p(&mut l, 1e-6);
        assert_eq!(kept(&l), vec![0]);
        let mut l = base.to_vec();
        top_p(&mut l, 1.0);
        assert_eq!(kept(&l).len(), 4);
    }

    #[test]
    fn min_p_scales_with_the_top_probability() {
        let mut l = vec![3.0f32, 2.0, 1.0, 0.0]; // ratios to top: 1, .37, .14, .05
        min_p(&mut l, 0.2);
        assert_eq!(kept(&l), vec![0, 1]);
    }

    #[test]
    fn typical_p_prefers_tokens_near_the_entropy() {
        // A peaked distribution: the top token's surprisal is far below the entropy of
        // a near-uniform tail, so with a small mass the typical set is a tail token.
        let mut l = vec![0.0f32; 6];
        typical_p(&mut l, 0.5);
        assert_eq!(kept(&l).len(), 6, "uniform: all equally typical");
        let mut l = vec![10.0f32, 0.0, 0.0, 0.0];
        typical_p(&mut l, 0.9);
        assert_eq!(kept(&l), vec![0], "the dominant token carries the mass");
    }

    #[test]
    fn min_new_tokens_suppresses_eos_then_lets_it_through() {
        let cfg = ProcessorConfig {
            min_new_tokens: 2,
            eos_token_ids: vec![1],
            ..Default::default()
        };
        let mut l = vec![0.0f32, 5.0];
        cfg.apply(&mut l, &[0, 0], &[0]);
        assert_eq!(l[1], FILTERED);
        let mut l = vec![0.0f32, 5.0];
        cfg.apply(&mut l, &[0, 0, 0], &[0, 0]);
        assert_eq!(l[1], 5.0);
    }

    #[test]
    fn greedy_skips_the_warpers() {
        let cfg = ProcessorConfig {
            top_k: Some(1),
            ..Default::default()
        };
        let mut l = vec![1.0f32, 2.0];
        cfg.apply(&mut l, &[], &[]);
        assert_eq!(l, vec![1.0, 2.0]);
    }

    #[test]
    fn validate_names_the_flag() {
        let bad = ProcessorConfig {
            top_p: Some(1.5),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("--top-p"));
    }
}
