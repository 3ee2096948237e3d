//! The worker behind a causal LM: one thread that owns the model and decodes every
//! active sequence together ([`RunningBatch`]), admitting waiting requests between
//! steps up to `--max-batch` rows and letting finished ones go at once. Each sequence
//! keeps its own sampling settings, seeded generator, stop strings and text stream, so
//! what it generates does not depend on what it shares the batch with.
//!
//! Results go back over a per-request channel; a request whose receiver is gone (the
//! client disconnected) is cancelled at the next step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use rand::{rngs::StdRng, SeedableRng};
use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use super::metrics::Metrics;
use super::queue::Queue;
use crate::checkpoint::Pretrained;
use crate::generation::{
    generate, processors::softmax, sampler, Flow, GenerateOptions, Prefilled, ProcessorConfig,
    RunningBatch, TextStream,
};
use crate::models::{Gpt2, Model};
use crate::tokenizer::Tokenizer;

/// One prompt to continue, with `n` choices.
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// EOS ids included.
    pub processors: ProcessorConfig,
    /// Choice i samples with a generator seeded from `seed + i`.
    pub seed: u64,
    pub n: usize,
    /// The response index of this prompt's first choice.
    pub first_choice: usize,
    pub stop: Vec<String>,
    /// Per generated token: its log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// The prompt's own log-probabilities too (`echo` with `logprobs`).
    pub prompt_logprobs: bool,
    pub num_beams: usize,
    pub length_penalty: f64,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub text: String,
    /// None for a prompt's first token (nothing predicts it).
    pub logprob: Option<f32>,
    /// The likeliest tokens at this position and their log-probabilities.
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug)]
pub enum Event {
    /// The first event of a prompt asked for with `prompt_logprobs`.
    PromptLogprobs {
        first_choice: usize,
        logprobs: Vec<TokenLogprob>,
    },
    /// Text released for a choice (on whole-word boundaries, as the CLI streams), with
    /// the tokens that made it.
    Text {
        choice: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        choice: usize,
        reason: FinishReason,
        tokens: usize,
    },
    Failed(ApiError),
}

/// The handle the routes hold: a queue and the channel into the worker thread.
pub struct LmEngine {
    tx: mpsc::Sender<GenRequest>,
    pub queue: Arc<Queue>,
}

impl LmEngine {
    pub fn spawn(
        model: Arc<Pretrained>,
        device: Device,
        max_batch: usize,
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let q = queue.clone();
        std::thread::Builder::new()
            .name("wick-lm".into())
            .spawn(move || {
                let scheduler = Scheduler {
                    model: &model,
                    device,
                    max_batch,
                    queue: q,
                    metrics,
                    cancel,
                };
                scheduler.run(rx)
            })
            .expect("spawning the model thread");
        Self { tx, queue }
    }

    /// Queues a request that has already taken its place with [`Queue::enter`].
    pub fn submit(&self, r: GenRequest) -> Result<(), ApiError> {
        self.tx.send(r).map_err(|_| {
            self.queue.leave();
            ApiError::internal("the model's worker has stopped")
        })
    }
}

struct Scheduler<'m> {
    model: &'m Pretrained,
    device: Device,
    max_batch: usize,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    /// Set when the shutdown grace period is over: every sequence ends.
    cancel: Arc<AtomicBool>,
}

/// A choice being decoded.
struct Row<'t> {
    events: UnboundedSender<Event>,
    choice: usize,
    processors: ProcessorConfig,
    rng: StdRng,
    history: Vec<u32>,
    out: Vec<u32>,
    max_tokens: usize,
    text: TextStream<'t>,
    logprobs: Option<usize>,
    /// Tokens chosen since text was last released.
    pending: Vec<TokenLogprob>,
    /// Next-token logits.
    logits: Vec<f32>,
    arrived: Instant,
    last_token: Option<Instant>,
}

impl Scheduler<'_> {
    fn run(&self, rx: mpsc::Receiver<GenRequest>) {
        let Model::Gpt2(model) = &self.model.model else {
            return;
        };
        let Ok(tok) = self.model.tokenizer() else {
            return;
        };
        let mut batch = RunningBatch::new(model, &self.device);
        let mut rows: Vec<Row> = vec![];
        let mut waiting: VecDeque<GenRequest> = VecDeque::new();
        loop {
            if rows.is_empty() && waiting.is_empty() {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(r) => waiting.push_back(r),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            waiting.extend(rx.try_iter());
            if self.cancel.load(Ordering::SeqCst) {
                for r in rows
                    .drain(..)
                    .map(|r| r.events)
                    .chain(waiting.drain(..).map(|w| {
                        self.queue.leave();
                        w.events
                    }))
                {
                    let _ = r.send(Event::Failed(ApiError::shutting_down()));
                }
                batch = RunningBatch::new(model, &self.device);
                self.queue.set_active(0);
                continue;
            }
            self.admit(model, tok, &mut batch, &mut rows, &mut waiting);
            self.queue.set_active(rows.len());
            if rows.is_empty() {
                continue;
            }
            if let Err(e) = self.step(&mut batch, &mut rows) {
                for r in rows.drain(..) {
                    let _ = r
                        .events
                        .send(Event::Failed(ApiError::internal(e.to_string())));
                }
                batch = RunningBatch::new(model, &self.device);
            }
            self.queue.set_active(rows.len());
        }
    }

    /// Moves waiting requests into the batch while there is room.
    fn admit<'t>(
        &self,
        model: &Gpt2,
        tok: &'t Tokenizer,
        batch: &mut RunningBatch,
        rows: &mut Vec<Row<'t>>,
        waiting: &mut VecDeque<GenRequest>,
    ) {
        while let Some(front) = waiting.front() {
            if !front.events.is_closed()
                && !rows.is_empty()
                && rows.len() + front.n > self.max_batch
            {
                return;
            }
            let r = waiting.pop_front().expect("front exists");
            self.queue.leave();
            if r.events.is_closed() {
                continue;
            }
            let done = match r.num_beams > 1 {
                true => self.beam(model, tok, &r),
                false => self.join(tok, batch, rows, &r),
            };
            if let Err(e) = done {
                let _ = r.events.send(Event::Failed(e));
            }
        }
    }

    /// Prefills a request's prompt and adds a row per choice.
    fn join<'t>(
        &self,
        tok: &'t Tokenizer,
        batch: &mut RunningBatch,
        rows: &mut Vec<Row<'t>>,
        r: &GenRequest,
    ) -> Result<(), ApiError> {
        let prompt = &r.prompt;
        let pre: Prefilled = batch.prefill(prompt, r.prompt_logprobs)?;
        if let Some(every) = &pre.every {
            let every = every
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.to_vec2::<f32>())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let mut lps = vec![TokenLogprob {
                text: piece(tok, prompt[0]),
                logprob: None,
                top: vec![],
            }];
            for (t, &id) in prompt.iter().enumerate().skip(1) {
                lps.push(logprob_of(tok, &every[t - 1], id, r.logprobs.unwrap_or(0)));
            }
            let _ = r.events.send(Event::PromptLogprobs {
                first_choice: r.first_choice,
                logprobs: lps,
            });
        }
        if r.max_tokens == 0 {
            // Scoring the prompt only (`echo`, `logprobs`, `max_tokens` 0).
            for i in 0..r.n {
                let _ = r.events.send(Event::Done {
                    choice: r.first_choice + i,
                    reason: FinishReason::Length,
                    tokens: 0,
                });
            }
            return Ok(());
        }
        batch.join(&pre, r.n)?;
        for i in 0..r.n {
            rows.push(Row {
                events: r.events.clone(),
                choice: r.first_choice + i,
                processors: r.processors.clone(),
                rng: StdRng::seed_from_u64(r.seed.wrapping_add(i as u64)),
                history: prompt.to_vec(),
                out: vec![],
                max_tokens: r.max_tokens,
                text: TextStream::new(tok, &r.stop),
                logprobs: r.logprobs,
                pending: vec![],
                logits: pre.last.clone(),
                arrived: r.arrived,
                last_token: None,
            });
        }
        Ok(())
    }

    /// Chooses a token for every row, lets finished rows go, and runs one forward pass
    /// for the rest.
    fn step(&self, batch: &mut RunningBatch, rows: &mut Vec<Row>) -> crate::error::Result<()> {
        self.metrics.batch_size.observe(rows.len() as f64);
        let mut keep = Vec::with_capacity(rows.len());
        let mut next = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter_mut().enumerate() {
            let now = Instant::now();
            match row.last_token {
                None => self.metrics.ttft.observe((now - row.arrived).as_secs_f64()),
                Some(t) => self.metrics.per_token.observe((now - t).as_secs_f64()),
            }
            row.last_token = Some(now);
            self.metrics.tokens.fetch_add(1, Ordering::Relaxed);
            if row.advance()? == Flow::Continue {
                keep.push(i);
                next.push(*row.out.last().expect("a token was chosen"));
            }
        }
        batch.keep(&keep)?;
        let mut kept = vec![false; rows.len()];
        keep.iter().for_each(|&i| kept[i] = true);
        let mut flags = kept.into_iter();
        rows.retain(|_| flags.next().unwrap_or(false));
        if rows.is_empty() {
            return Ok(());
        }
        for (row, logits) in rows.iter_mut().zip(batch.step(&next)?) {
            row.logits = logits;
        }
        Ok(())
    }

    /// Beam search runs by itself (it reorders its hypotheses every step, so it does not
    /// share a batch); the running batch waits for it.
    fn beam(&self, model: &Gpt2, tok: &Tokenizer, r: &GenRequest) -> Result<(), ApiError> {
        let opts = GenerateOptions {
            max_new_tokens: r.max_tokens,
            processors: r.processors.clone(),
            seed: r.seed,
            num_return_sequences: r.n,
            num_beams: r.num_beams,
            length_penalty: r.length_penalty,
            pad_token_id: r.processors.eos_token_ids.first().copied().unwrap_or(0),
            ..Default::default()
        };
        let gens = generate(
            model,
            std::slice::from_ref(&r.prompt),
            &opts,
            &self.device,
            |_, _| Ok(Flow::Continue),
        )?;
        for (i, g) in gens.into_iter().flatten().enumerate() {
            let mut s = TextStream::new(tok, &r.stop);
            let mut reason = FinishReason::Length;
            for &id in &g.ids {
                if s.push(id)?.1 == Flow::Stop || r.processors.eos_token_ids.contains(&id) {
                    reason = FinishReason::Stop;
                    break;
                }
            }
            let choice = r.first_choice + i;
            self.metrics
                .tokens
                .fetch_add(g.ids.len() as u64, Ordering::Relaxed);
            let _ = r.events.send(Event::Text {
                choice,
                text: s.text().to_string(),
                logprobs: vec![],
            });
            let _ = r.events.send(Event::Done {
                choice,
                reason,
                tokens: g.ids.len(),
            });
        }
        Ok(())
    }
}

impl Row<'_> {
    /// Chooses the next token from `logits`, sends the text it releases, and says
    /// whether the row goes on. A closed channel (the client left) ends it.
    fn advance(&mut self) -> crate::error::Result<Flow> {
        let tok = self.text.tokenizer();
        let raw = self.logprobs.map(|k| (self.logits.clone(), k));
        let id = sampler::choose(
            &self.processors,
            &mut self.logits,
            &self.history,
            &self.out,
            &mut self.rng,
        );
        self.out.push(id);
        self.history.push(id);
        if let Some((raw, k)) = raw {
            self.pending.push(logprob_of(tok, &raw, id, k));
        }
        let (mut delta, flow) = self.text.push(id)?;
        let reason = if flow == Flow::Stop || self.processors.eos_token_ids.contains(&id) {
            Some(FinishReason::Stop)
        } else if self.out.len() >= self.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        if reason.is_some() {
            delta.push_str(&self.text.finish());
        }
        if !delta.is_empty() || reason.is_some() {
            let sent = self.events.send(Event::Text {
                choice: self.choice,
                text: delta,
                logprobs: std::mem::take(&mut self.pending),
            });
            if sent.is_err() {
                return Ok(Flow::Stop);
            }
        }
        match reason {
            Some(reason) => {
                let _ = self.events.send(Event::Done {
                    choice: self.choice,
                    reason,
                    tokens: self.out.len(),
                });
                Ok(Flow::Stop)
            }
            None if self.events.is_closed() => Ok(Flow::Stop),
            None => Ok(Flow::Continue),
        }
    }
}

/// A token's text on its own (a piece of a multi-byte character decodes to U+FFFD).
fn piece(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// `id`'s log-probability under the model's own distribution (before any sampling
/// setting, as OpenAI reports it) and the `k` likeliest tokens.
fn logprob_of(tok: &Tokenizer, logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let probs = softmax(logits);
    let lp = |i: usize| (probs[i].max(f64::MIN_POSITIVE)).ln() as f32;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    let k = k.min(order.len());
    let top = if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| probs[b].total_cmp(&probs[a]));
        order.truncate(k);
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        order
            .iter()
            .map(|&i| (piece(tok, i as u32), lp(i)))
            .collect()
    } else {
        vec![]
    };
    TokenLogprob {
        text: piece(tok, id),
        logprob: Some(lp(id as usize)),
        top,
    }
}
