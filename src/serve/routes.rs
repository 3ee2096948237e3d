//! The HTTP routes: each checks its request, hands the work to the model's worker and
//! shapes the answer as OpenAI does (streams as server-sent events ending in
//! `data: [DONE]`).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::api::{self, ChatRequest, CompletionRequest, EmbeddingRequest, Sampling, TextsRequest};
use super::engine::{Event, FinishReason, GenRequest, TokenLogprob};
use super::error::{ApiError, ApiResult};
use super::metrics::QueueReading;
use super::{AppState, ServedModel, Worker};
use crate::models::Model;

type AppRef = State<Arc<AppState>>;

/// Every request: the API key (all but /health), refusal while shutting down, and the
/// request counter by route and status.
pub async fn guard(State(s): AppRef, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let res = if route != "/health" && !authorized(&s, &req) {
        ApiError::unauthorized().into_response()
    } else if s.shutting_down.load(Ordering::SeqCst) && req.method() == Method::POST {
        ApiError::shutting_down().into_response()
    } else {
        next.run(req).await
    };
    s.metrics.request(&route, res.status().as_u16());
    res
}

fn authorized(s: &AppState, req: &Request) -> bool {
    let Some(key) = &s.api_key else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
}

/// Compares keys without leaking how much of a guess was right through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn models(State(s): AppRef) -> Json<Value> {
    let data: Vec<Value> = s
        .models
        .iter()
        .map(|m| {
            json!({"id": m.id, "object": "model", "created": m.created, "owned_by": "wick",
                   "architecture": m.pretrained.model.architecture()})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn metrics(State(s): AppRef) -> Response {
    let queues: Vec<QueueReading> = s
        .models
        .iter()
        .map(|m| QueueReading {
            model: &m.id,
            waiting: m.queue().waiting(),
            active: m.queue().active(),
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&queues),
    )
        .into_response()
}

pub async fn fallback(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

pub async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// The two OpenAI shapes generated text comes back in.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Completion,
    Chat,
}

/// One prompt's request, before it is queued.
struct Job {
    prompt: Vec<u32>,
    echo: Option<String>,
}

/// What every generated-text request carries once checked.
struct TextRequest {
    shape: Shape,
    jobs: Vec<Job>,
    max_tokens: usize,
    sampling: Sampling,
    logprobs: Option<usize>,
    prompt_logprobs: bool,
    extra_eos: Vec<u32>,
}

fn causal(m: &ServedModel, route: &str) -> ApiResult<usize> {
    match &m.pretrained.model {
        Model::Gpt2(g) => Ok(g.config().n_positions),
        other => Err(ApiError::wrong_model(format!(
            "`{}` is a {}: {route} needs a causal LM (GPT-2); {}",
            m.id,
            other.architecture(),
            match other {
                Model::Bert(_) => "use /v1/embeddings or /v1/classify",
                _ => "use /v1/translate",
            }
        ))),
    }
}

pub async fn completions(State(s): AppRef, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let body = api::read_json(body, s.max_body_bytes)?;
        let (req, sampling): (CompletionRequest, Sampling) =
            (api::fields(&body)?, api::fields(&body)?);
        let m = s.model(req.model.as_deref())?;
        causal(m, "/v1/completions")?;
        if req.suffix.as_deref().is_some_and(|x| !x.is_empty()) {
            return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
        }
        if let Some(k) = req.logprobs {
            if k > 5 {
                return Err(ApiError::invalid(
                    "logprobs",
                    "`logprobs` must be between 0 and 5",
                ));
            }
        }
        let tok = m.pretrained.tokenizer().map_err(ApiError::from)?;
        let prompts = api::prompts(&req.prompt, tok, m.pretrained.config.vocab_size())?;
        let jobs = prompts
            .into_iter()
            .map(|p| {
                let echo = match req.echo {
                    true => Some(tok.decode(&p, false).map_err(ApiError::from)?),
                    false => None,
                };
                Ok(Job { prompt: p, echo })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let g = TextRequest {
            shape: Shape::Completion,
            jobs,
            max_tokens: req.max_tokens.unwrap_or(16),
            sampling,
            logprobs: req.logprobs,
            prompt_logprobs: req.echo && req.logprobs.is_some(),
            extra_eos: vec![],
        };
        generate(&s, m, g).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn chat_completions(State(s): AppRef, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let body = api::read_json(body, s.max_body_bytes)?;
        let (req, sampling): (ChatRequest, Sampling) = (api::fields(&body)?, api::fields(&body)?);
        let m = s.model(req.model.as_deref())?;
        let context = causal(m, "/v1/chat/completions")?;
        let Some(template) = &m.chat else {
            return Err(ApiError::wrong_model(format!(
                "`{}` has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja): use /v1/completions",
                m.id
            )));
        };
        if req.messages.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` is empty"));
        }
        let messages = req
            .messages
            .iter()
            .enumerate()
            .map(|(i, msg)| {
                let (role, content) = api::message_text(msg, i)?;
                Ok(json!({"role": role, "content": content}))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let text = template
            .render(&messages)
            .map_err(|e| ApiError::invalid("messages", e))?;
        let tok = m.pretrained.tokenizer().map_err(ApiError::from)?;
        let prompt = tok.encode(&text, false).map_err(ApiError::from)?;
        if req.top_logprobs.is_some_and(|k| k > 20) {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` must be between 0 and 20",
            ));
        }
        if req.top_logprobs.is_some() && !req.logprobs {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        let max_tokens = req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or_else(|| context.saturating_sub(prompt.len()).max(1));
        let extra_eos = template.eos_id(tok).into_iter().collect();
        let g = TextRequest {
            shape: Shape::Chat,
            jobs: vec![Job { prompt, echo: None }],
            max_tokens,
            sampling,
            logprobs: req.logprobs.then(|| req.top_logprobs.unwrap_or(0)),
            prompt_logprobs: false,
            extra_eos,
        };
        generate(&s, m, g).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Queues every prompt of a checked request and answers, streamed or whole.
async fn generate(s: &AppState, m: &ServedModel, g: TextRequest) -> ApiResult<Response> {
    let Worker::Lm(engine) = &m.worker else {
        return Err(ApiError::internal("no decoder for this model"));
    };
    let context = causal(m, "")?;
    let mut eos = m.pretrained.eos_token_ids().map_err(ApiError::from)?;
    eos.extend(
        g.extra_eos
            .iter()
            .filter(|id| !eos.contains(id))
            .collect::<Vec<_>>(),
    );
    let processors = g.sampling.processors(&eos)?;
    let stop = g.sampling.stops()?;
    let n = g.sampling.n.unwrap_or(1);
    let beams = g.sampling.num_beams.unwrap_or(1);
    if n * g.jobs.len() > s.max_batch.max(api::MAX_N) {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{} choices in one request is over the limit of {}",
                n * g.jobs.len(),
                s.max_batch.max(api::MAX_N)
            ),
        ));
    }
    for j in &g.jobs {
        if j.prompt.len() + g.max_tokens > context {
            return Err(ApiError::context_length(format!(
                "this model's maximum context length is {context} tokens, but {} were requested ({} in the prompt, {} for the completion): shorten the prompt or lower `max_tokens`",
                j.prompt.len() + g.max_tokens,
                j.prompt.len(),
                g.max_tokens
            )));
        }
    }
    let queue = &engine.queue;
    for entered in 0..g.jobs.len() {
        if !queue.enter() {
            (0..entered).for_each(|_| queue.leave());
            return Err(ApiError::queue_full(&m.id, queue.max));
        }
    }
    let seed = g.sampling.seed.unwrap_or_else(rand::random);
    let (tx, mut rx) = unbounded_channel();
    let arrived = Instant::now();
    let prompt_tokens: usize = g.jobs.iter().map(|j| j.prompt.len()).sum();
    for (i, j) in g.jobs.iter().enumerate() {
        engine.submit(GenRequest {
            prompt: j.prompt.clone(),
            max_tokens: g.max_tokens,
            processors: processors.clone(),
            seed,
            n,
            first_choice: i * n,
            stop: stop.clone(),
            logprobs: g.logprobs,
            prompt_logprobs: g.prompt_logprobs,
            num_beams: beams,
            length_penalty: g.sampling.length_penalty.unwrap_or(1.0),
            events: tx.clone(),
            arrived,
        })?;
    }
    drop(tx);
    let reply = Reply {
        shape: g.shape,
        id: format!(
            "{}-{:016x}",
            if g.shape == Shape::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            rand::random::<u64>()
        ),
        model: m.id.clone(),
        created: unix_now(),
        choices: (0..g.jobs.len() * n)
            .map(|c| Choice {
                echo: g.jobs[c / n].echo.clone(),
                ..Choice::default()
            })
            .collect(),
        n,
        prompt_tokens,
    };
    // The first event decides between an error status and a 200.
    let first = rx.recv().await.ok_or_else(ApiError::shutting_down)?;
    if let Event::Failed(e) = first {
        return Err(e);
    }
    match g.sampling.stream {
        false => reply.collect(first, rx).await,
        true => {
            let usage = g
                .sampling
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage);
            Ok(reply.stream(first, rx, usage))
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Default, Clone)]
struct Choice {
    echo: Option<String>,
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    tokens: usize,
    /// A streamed choice has sent its opening chunk.
    opened: bool,
}

/// The answer being put together from the worker's events.
struct Reply {
    shape: Shape,
    id: String,
    model: String,
    created: u64,
    choices: Vec<Choice>,
    /// Choices per prompt.
    n: usize,
    prompt_tokens: usize,
}

impl Reply {
    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.tokens).sum();
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.prompt_tokens + completion})
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.shape, chunk) {
            (Shape::Completion, _) => "text_completion",
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
        }
    }

    /// Folds one event in; returns whether every choice has finished.
    fn absorb(&mut self, ev: &Event) -> Result<bool, ApiError> {
        match ev {
            Event::PromptLogprobs {
                first_choice,
                logprobs,
            } => {
                for c in &mut self.choices[*first_choice..*first_choice + self.n] {
                    c.logprobs.splice(0..0, logprobs.iter().cloned());
                }
            }
            Event::Text {
                choice,
                text,
                logprobs,
            } => {
                let c = &mut self.choices[*choice];
                c.text.push_str(text);
                c.logprobs.extend(logprobs.iter().cloned());
            }
            Event::Done {
                choice,
                reason,
                tokens,
            } => {
                let c = &mut self.choices[*choice];
                c.finish = Some(*reason);
                c.tokens = *tokens;
            }
            Event::Failed(e) => return Err(e.clone()),
        }
        Ok(self.choices.iter().all(|c| c.finish.is_some()))
    }

    async fn collect(
        mut self,
        first: Event,
        mut rx: UnboundedReceiver<Event>,
    ) -> ApiResult<Response> {
        let mut done = self.absorb(&first)?;
        while !done {
            let ev = rx.recv().await.ok_or_else(ApiError::shutting_down)?;
            done = self.absorb(&ev)?;
        }
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| self.choice_json(i, c, false))
            .collect();
        Ok(Json(
            json!({"id": self.id, "object": self.object(false), "created": self.created,
                       "model": self.model, "choices": choices, "usage": self.usage()}),
        )
        .into_response())
    }

    fn choice_json(&self, index: usize, c: &Choice, chunk: bool) -> Value {
        let finish = c.finish.map(FinishReason::as_str);
        let text = format!("{}{}", c.echo.as_deref().unwrap_or_default(), c.text);
        let logprobs = self.logprobs_json(c);
        match (self.shape, chunk) {
            (Shape::Completion, _) => {
                json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
            (Shape::Chat, false) => json!({"index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": finish}),
            (Shape::Chat, true) => {
                let mut delta = json!({});
                if !c.opened {
                    delta["role"] = json!("assistant");
                }
                if !text.is_empty() || !c.opened {
                    delta["content"] = json!(text);
                }
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    /// OpenAI's two logprobs layouts; null when none were asked for.
    fn logprobs_json(&self, c: &Choice) -> Value {
        if c.logprobs.is_empty() {
            return Value::Null;
        }
        match self.shape {
            Shape::Completion => {
                let mut offset = 0;
                let mut offsets = vec![];
                for t in &c.logprobs {
                    offsets.push(offset);
                    offset += t.text.chars().count();
                }
                json!({
                    "tokens": c.logprobs.iter().map(|t| &t.text).collect::<Vec<_>>(),
                    "token_logprobs": c.logprobs.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": c.logprobs.iter().map(|t| match t.logprob {
                        None => Value::Null,
                        Some(_) => Value::Object(t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect()),
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Shape::Chat => {
                let entry = |text: &str, lp: f32| json!({"token": text, "logprob": lp, "bytes": text.as_bytes()});
                json!({"content": c.logprobs.iter().map(|t| {
                    let mut e = entry(&t.text, t.logprob.unwrap_or(0.0));
                    e["top_logprobs"] = t.top.iter().map(|(s, l)| entry(s, *l)).collect();
                    e
                }).collect::<Vec<_>>()})
            }
        }
    }

    /// Server-sent events: a chunk per released piece of text, a last chunk per choice
    /// with its finish reason, the usage chunk when asked, then `[DONE]`. A client that
    /// goes away drops the stream, which cancels its sequences.
    fn stream(mut self, first: Event, mut rx: UnboundedReceiver<Event>, usage: bool) -> Response {
        let (out, body) = unbounded_channel::<Result<SseEvent, Infallible>>();
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let ev = match next.take() {
                    Some(ev) => ev,
                    None => match rx.recv().await {
                        Some(ev) => ev,
                        None => break,
                    },
                };
                let chunk = match self.chunk(&ev) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = out.send(Ok(SseEvent::default().data(e.body().to_string())));
                        return;
                    }
                };
                if let Some(c) = chunk {
                    if out
                        .send(Ok(SseEvent::default().data(c.to_string())))
                        .is_err()
                    {
                        return; // the client left: dropping `rx` cancels the sequences
                    }
                }
                if self.choices.iter().all(|c| c.finish.is_some()) {
                    break;
                }
            }
            if usage {
                let u = json!({"id": self.id, "object": self.object(true), "created": self.created,
                               "model": self.model, "choices": [], "usage": self.usage()});
                let _ = out.send(Ok(SseEvent::default().data(u.to_string())));
            }
            let _ = out.send(Ok(SseEvent::default().data("[DONE]")));
        });
        Sse::new(tokio_stream::wrappers::UnboundedReceiverStream::new(body))
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    /// The chunk one event makes (None for an event that only carries bookkeeping).
    fn chunk(&mut self, ev: &Event) -> ApiResult<Option<Value>> {
        let (index, piece) = match ev {
            Event::PromptLogprobs { .. } => {
                self.absorb(ev)?;
                return Ok(None);
            }
            Event::Text {
                choice,
                text,
                logprobs,
            } => {
                let c = &self.choices[*choice];
                let mut piece = Choice {
                    text: text.clone(),
                    logprobs: logprobs.clone(),
                    opened: c.opened,
                    ..Choice::default()
                };
                if !c.opened {
                    // Echo and prompt logprobs lead a choice's first chunk.
                    piece.echo = c.echo.clone();
                    piece.logprobs.splice(0..0, c.logprobs.iter().cloned());
                }
                (*choice, piece)
            }
            Event::Done { choice, reason, .. } => {
                let c = &self.choices[*choice];
                let piece = Choice {
                    finish: Some(*reason),
                    opened: c.opened,
                    echo: if c.opened { None } else { c.echo.clone() },
                    ..Choice::default()
                };
                (*choice, piece)
            }
            Event::Failed(e) => return Err(e.clone()),
        };
        let json_choice = self.choice_json(index, &piece, true);
        self.absorb(ev)?;
        self.choices[index].opened = true;
        Ok(Some(
            json!({"id": self.id, "object": self.object(true), "created": self.created,
                        "model": self.model, "choices": [json_choice]}),
        ))
    }
}

pub async fn embeddings(State(s): AppRef, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let req: EmbeddingRequest = api::fields(&api::read_json(body, s.max_body_bytes)?)?;
        let m = s.model(req.model.as_deref())?;
        let texts = api::texts(&req.input)?;
        let hidden = encoder(m, "/v1/embeddings")?.config().hidden_size;
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("`encoding_format` must be float or base64, got {other}"),
                ))
            }
        };
        if req.dimensions.is_some_and(|d| d != hidden) {
            return Err(ApiError::invalid(
                "dimensions",
                format!("this model's embeddings have {hidden} dimensions and cannot be shortened"),
            ));
        }
        let (pooling, normalize) = m.pooling;
        let (p, device) = (m.pretrained.clone(), m.device.clone());
        let (vectors, tokens) = run_task(m, move || {
            let Model::Bert(bert) = &p.model else {
                unreachable!("checked to be an encoder")
            };
            let tok = p.tokenizer()?;
            let max = bert.config().max_tokens();
            let tokens: usize = crate::tasks::embed::encode_all(tok, &texts, max)?
                .iter()
                .map(Vec::len)
                .sum();
            let v = crate::tasks::map_batches(
                &texts,
                32,
                device.is_cpu(),
                |b| crate::tasks::embed::embed(bert, tok, b, pooling, normalize, None, &device),
                |_| {},
            )?;
            Ok((v, tokens))
        })
        .await?;
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let embedding = match base64 {
                    true => {
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                    }
                    false => json!(v),
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        Ok(Json(json!({"object": "list", "data": data, "model": m.id,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn classify(State(s): AppRef, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let req: TextsRequest = api::fields(&api::read_json(body, s.max_body_bytes)?)?;
        let m = s.model(req.model.as_deref())?;
        let texts = api::texts(&req.input)?;
        let bert = encoder(m, "/v1/classify")?;
        if !bert.has_classifier() {
            return Err(ApiError::wrong_model(format!(
                "`{}` has no classification head: use /v1/embeddings",
                m.id
            )));
        }
        let thresholds = match req.threshold {
            Some(t) if !(0.0..=1.0).contains(&t) => {
                return Err(ApiError::invalid(
                    "threshold",
                    "`threshold` must be between 0 and 1",
                ))
            }
            Some(t) => crate::eval::Thresholds::All(t),
            None => crate::cli::thresholds(&m.pretrained, None)
                .map_err(|e| ApiError::internal(format!("{e:#}")))?,
        };
        let (p, device) = (m.pretrained.clone(), m.device.clone());
        let preds = run_task(m, move || {
            let Model::Bert(bert) = &p.model else {
                unreachable!("checked to be an encoder")
            };
            let tok = p.tokenizer()?;
            crate::tasks::map_batches(
                &texts,
                32,
                device.is_cpu(),
                |b| crate::tasks::classify::classify(bert, tok, b, None, &thresholds, &device),
                |_| {},
            )
        })
        .await?;
        let data: Vec<Value> = preds
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({"index": i, "label": c.label, "score": c.score, "labels": c.labels, "scores": c.scores})
            })
            .collect();
        Ok(Json(json!({"object": "list", "model": m.id, "data": data})).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn translate(State(s): AppRef, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let req: TextsRequest = api::fields(&api::read_json(body, s.max_body_bytes)?)?;
        let m = s.model(req.model.as_deref())?;
        let texts = api::texts(&req.input)?;
        let Model::Seq2Seq(model) = &m.pretrained.model else {
            return Err(ApiError::wrong_model(format!(
                "`{}` is a {}: /v1/translate needs an encoder-decoder",
                m.id,
                m.pretrained.model.architecture()
            )));
        };
        let beams = req.num_beams.unwrap_or(1);
        if !(1..=api::MAX_N).contains(&beams) {
            return Err(ApiError::invalid(
                "num_beams",
                format!("`num_beams` must be between 1 and {}", api::MAX_N),
            ));
        }
        let decoding = if model.config().is_nat() {
            if beams > 1 {
                return Err(ApiError::invalid(
                    "num_beams",
                    "this model is non-autoregressive (Mask-Predict): `num_beams` does not apply",
                ));
            }
            crate::tasks::translate::Decoding::MaskPredict(Default::default())
        } else {
            crate::tasks::translate::Decoding::Autoregressive(crate::generation::GenerateOptions {
                max_new_tokens: req.max_tokens.unwrap_or(64),
                num_beams: beams,
                ..Default::default()
            })
        };
        let (p, device) = (m.pretrained.clone(), m.device.clone());
        let out = run_task(m, move || {
            let Model::Seq2Seq(model) = &p.model else {
                unreachable!("checked to be an encoder-decoder")
            };
            let tok = p.tokenizer()?;
            crate::tasks::map_batches(
                &texts,
                32,
                device.is_cpu(),
                |b| crate::tasks::translate::translate(model, tok, b, &decoding, &device),
                |_| {},
            )
        })
        .await?;
        let data: Vec<Value> = out
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"index": i, "text": t.text, "score": t.score}))
            .collect();
        Ok(Json(json!({"object": "list", "model": m.id, "data": data})).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

fn encoder<'a>(m: &'a ServedModel, route: &str) -> ApiResult<&'a crate::models::Bert> {
    match &m.pretrained.model {
        Model::Bert(b) => Ok(b),
        other => Err(ApiError::wrong_model(format!(
            "`{}` is a {}: {route} needs an encoder (BERT); {}",
            m.id,
            other.architecture(),
            match other {
                Model::Gpt2(_) => "use /v1/completions",
                _ => "use /v1/translate",
            }
        ))),
    }
}

/// Runs a task on the model's worker, after taking a place in its queue.
async fn run_task<T: Send + 'static>(
    m: &ServedModel,
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let Worker::Tasks(w) = &m.worker else {
        return Err(ApiError::internal("no task worker for this model"));
    };
    if !w.queue.enter() {
        return Err(ApiError::queue_full(&m.id, w.queue.max));
    }
    w.run(move || f().map_err(ApiError::from)).await
}
