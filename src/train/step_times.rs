//! Where a training step's time goes: gradients (forward and backward), summing them
//! over ranks, the clipping norm, the optimizer. Always counted (the distributed summary
//! reports the summing share); with `WICK_STEP_TIMES=1` the device is synchronized at
//! each phase's end, so a GPU's queued work is charged to the phase that queued it, and
//! the run ends with the split.

use std::cell::Cell;
use std::time::Instant;

use candle_core::Device;

use crate::error::Result;

#[derive(Clone, Copy)]
pub enum Phase {
    Gradients = 0,
    Summing = 1,
    Clipping = 2,
    Optimizer = 3,
}

const NAMES: [&str; 4] = ["gradients", "summing", "clipping", "optimizer"];

pub struct StepTimes {
    synchronized: bool,
    seconds: Cell<[f64; 4]>,
    steps: Cell<usize>,
}

impl StepTimes {
    pub fn from_env() -> Self {
        let on = std::env::var("WICK_STEP_TIMES").is_ok_and(|v| !v.is_empty() && v != "0");
        Self {
            synchronized: on,
            seconds: Cell::new([0.0; 4]),
            steps: Cell::new(0),
        }
    }

    /// Charges the time since `*since` to `phase` and restarts the clock.
    pub fn lap(&self, phase: Phase, device: &Device, since: &mut Instant) -> Result<()> {
        if self.synchronized {
            device.synchronize()?;
        }
        let mut s = self.seconds.get();
        s[phase as usize] += since.elapsed().as_secs_f64();
        self.seconds.set(s);
        if let Phase::Optimizer = phase {
            self.steps.set(self.steps.get() + 1);
        }
        *since = Instant::now();
        Ok(())
    }

    pub fn seconds(&self, phase: Phase) -> f64 {
        self.seconds.get()[phase as usize]
    }

    /// The mean per step of each phase, when asked for with `WICK_STEP_TIMES`.
    pub fn report(&self) -> Option<String> {
        let steps = self.steps.get();
        if !self.synchronized || steps == 0 {
            return None;
        }
        let parts: Vec<String> = NAMES
            .iter()
            .zip(self.seconds.get())
            .map(|(n, s)| format!("{n} {:.2} ms", s * 1e3 / steps as f64))
            .collect();
        Some(format!(
            "step split   {} (mean of {steps} steps, synchronized)",
            parts.join(", ")
        ))
    }
}
