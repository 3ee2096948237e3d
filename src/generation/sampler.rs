//! Choosing the next token from processed logits: the argmax (greedy) or a draw from
//! the softmax with a seeded generator, so a `--seed` repeats a run exactly.

use rand::{rngs::StdRng, Rng};

use super::processors::{softmax, ProcessorConfig};

/// The next token of one row: `cfg`'s processors applied to `logits` in place, then the
/// argmax, or a draw when `cfg` samples. `history` is the row's prompt and generated
/// tokens, `generated` the generated tail. Every left-to-right strategy chooses here.
pub fn choose(
    cfg: &ProcessorConfig,
    logits: &mut [f32],
    history: &[u32],
    generated: &[u32],
    rng: &mut StdRng,
) -> u32 {
    cfg.apply(logits, history, generated);
    if cfg.sampling() {
        sample(logits, rng)
    } else {
        argmax(logits)
    }
}

/// The first index of the largest logit (torch.argmax's tie rule).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws one token from softmax(logits); filtered (-inf) tokens have probability 0.
pub fn sample(logits: &[f32], rng: &mut StdRng) -> u32 {
    let probs = softmax(logits);
    let mut u: f64 = rng.random::<f64>();
    for (i, p) in probs.iter().enumerate() {
        u -= p;
        if u < 0.0 {
            return i as u32;
        }
    }
    // Rounding left a sliver: the last token with any probability.
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn sampling_follows_the_distribution_and_never_picks_filtered() {
        let mut rng = StdRng::seed_from_u64(0);
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY]; // probs 1/4, 3/4, 0
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            counts[sample(&logits, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        let share = counts[1] as f64 / 4000.0;
        assert!((share - 0.75).abs() < 0.03, "share of token 1: {share}");
    }
}
