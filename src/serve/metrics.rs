//! `GET /metrics` in Prometheus' text format: requests by route and status, queue
//! depth, batch size, tokens generated, time to first token and per-token latency.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A cumulative histogram with fixed upper bounds, as Prometheus reads it.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<(Vec<u64>, f64, u64)>, // per-bucket counts, sum, count
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            s.0[i] += 1;
        }
        s.1 += v;
        s.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&s.0) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", s.2);
        let braced = match labels {
            "" => String::new(),
            l => format!("{{{l}}}"),
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", s.1);
        let _ = writeln!(out, "{name}_count{braced} {}", s.2);
    }
}

const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const ROWS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub tokens: AtomicU64,
    pub ttft: Histogram,
    pub per_token: Histogram,
    pub batch_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            tokens: AtomicU64::new(0),
            ttft: Histogram::new(SECONDS),
            per_token: Histogram::new(SECONDS),
            batch_size: Histogram::new(ROWS),
        }
    }
}

/// One served model's queue, read when the metrics are rendered.
pub struct QueueReading<'a> {
    pub model: &'a str,
    pub waiting: usize,
    pub active: usize,
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((route.to_string(), status)).or_default() += 1;
    }

    pub fn render(&self, queues: &[QueueReading]) -> String {
        let mut out = String::new();
        out.push_str("# HELP wick_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE wick_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "wick_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        gauge(
            &mut out,
            "wick_queue_depth",
            "Requests waiting for a model.",
            queues,
            |q| q.waiting,
        );
        gauge(
            &mut out,
            "wick_active_sequences",
            "Sequences decoding or tasks running.",
            queues,
            |q| q.active,
        );
        out.push_str("# HELP wick_generated_tokens_total Tokens generated.\n");
        out.push_str("# TYPE wick_generated_tokens_total counter\n");
        let _ = writeln!(
            out,
            "wick_generated_tokens_total {}",
            self.tokens.load(Ordering::Relaxed)
        );
        self.batch_size.render(
            &mut out,
            "wick_batch_size",
            "",
            "Sequences in each decode step.",
        );
        self.ttft.render(
            &mut out,
            "wick_time_to_first_token_seconds",
            "",
            "From arrival to the first generated token.",
        );
        self.per_token.render(
            &mut out,
            "wick_time_per_output_token_seconds",
            "",
            "Between consecutive tokens of one sequence.",
        );
        out
    }
}

/// One gauge per served model.
fn gauge(
    out: &mut String,
    name: &str,
    help: &str,
    queues: &[QueueReading],
    value: impl Fn(&QueueReading) -> usize,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for q in queues {
        let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", q.model, value(q));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_requests_counted() {
        let m = Metrics::default();
        m.ttft.observe(0.02);
        m.ttft.observe(3.0);
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        let text = m.render(&[QueueReading {
            model: "tiny",
            waiting: 3,
            active: 1,
        }]);
        assert!(text.contains("wick_requests_total{route=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("wick_time_to_first_token_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("wick_time_to_first_token_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("wick_time_to_first_token_seconds_count 2"));
        assert!(text.contains("wick_queue_depth{model=\"tiny\"} 3"));
    }
}
