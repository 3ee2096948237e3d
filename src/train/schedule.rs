//! Learning-rate schedules: linear warmup, then cosine (nanoGPT), linear or constant
//! decay to `min_lr`; or Noam's inverse square root ("Attention Is All You Need" §5.3).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
    Noam,
}

#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub schedule: Schedule,
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_iters: usize,
    /// The step at which decay reaches `min_lr` (the run's max_iters).
    pub decay_iters: usize,
    /// Noam's d_model (the scale of its peak).
    pub d_model: usize,
}

impl LrSchedule {
    /// Learning rate for optimizer step `it` (0-based).
    pub fn at(&self, it: usize) -> f64 {
        let (lr, min_lr, w) = (self.max_lr, self.min_lr, self.warmup_iters);
        if self.schedule == Schedule::Noam {
            // lr · d^-0.5 · min(s^-0.5, s·w^-1.5), s = it + 1; `lr` acts as a multiplier.
            let s = (it + 1) as f64;
            let w = w.max(1) as f64;
            return lr * (self.d_model as f64).powf(-0.5) * s.powf(-0.5).min(s * w.powf(-1.5));
        }
        if it < w {
            return lr * (it + 1) as f64 / (w + 1) as f64;
        }
        if it >= self.decay_iters {
            return if self.schedule == Schedule::Constant {
                lr
            } else {
                min_lr
            };
        }
        let ratio = (it - w) as f64 / (self.decay_iters - w).max(1) as f64;
        match self.schedule {
            Schedule::Cosine => {
                min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (lr - min_lr)
            }
            Schedule::Linear => lr - ratio * (lr - min_lr),
            Schedule::Constant => lr,
            Schedule::Noam => unreachable!(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(schedule: Schedule) -> LrSchedule {
        LrSchedule {
            schedule,
            max_lr: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 100,
            decay_iters: 2000,
            d_model: 512,
        }
    }

    #[test]
    fn cosine_matches_nanogpt() {
        let c = s(Schedule::Cosine);
        assert!((c.at(0) - 1e-3 / 101.0).abs() < 1e-12);
        assert!((c.at(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-12);
        assert!((c.at(100) - 1e-3).abs() < 1e-12);
        assert!((c.at(1050) - 5.5e-4).abs() < 1e-9); // half-way: the mean of lr and min_lr
        assert!((c.at(2000) - 1e-4).abs() < 1e-12);
        let l = s(Schedule::Linear);
        assert!((l.at(1050) - 5.5e-4).abs() < 1e-9);
        assert_eq!(s(Schedule::Constant).at(1500), 1e-3);
    }

    #[test]
    fn noam_peaks_at_warmup() {
        let n = LrSchedule {
            max_lr: 1.0,
            warmup_iters: 4000,
            ..s(Schedule::Noam)
        };
        let peak = n.at(3999);
        assert!(n.at(100) < peak && n.at(10_000) < peak);
        assert!((peak - 512f64.powf(-0.5) * 4000f64.powf(-0.5)).abs() < 1e-12);
    }
}
