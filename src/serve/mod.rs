//! `wick serve`: an OpenAI-compatible HTTP server for every model wick runs.
//!
//! - causal LMs: `/v1/completions`, `/v1/chat/completions` (with a chat template),
//!   decoded with continuous batching ([`engine`]);
//! - encoders: `/v1/embeddings` and `/v1/classify`; encoder-decoders: `/v1/translate`,
//!   each on its model's worker thread ([`tasks`]);
//! - `/health`, `/v1/models`, `/metrics`.
//!
//! axum on tokio carries HTTP; the models run on their own threads so a forward pass
//! never blocks the runtime. Errors are OpenAI's shape ([`error`]).

pub mod api;
pub mod chat;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod queue;
mod routes;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use candle_core::Device;

use crate::checkpoint::Pretrained;
use crate::models::Model;
use crate::tasks::embed::Pooling;
use chat::ChatTemplate;
use engine::LmEngine;
use metrics::Metrics;
use queue::Queue;
use tasks::TaskWorker;

pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Sequences decoded together per causal LM.
    pub max_batch: usize,
    /// Requests waiting per model before a 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    /// After SIGINT/SIGTERM, how long in-flight requests may take before they are
    /// cancelled.
    pub grace: Duration,
    pub device: Device,
}

/// What a model runs on.
pub enum Worker {
    Lm(LmEngine),
    Tasks(TaskWorker),
}

pub struct ServedModel {
    pub id: String,
    pub pretrained: Arc<Pretrained>,
    pub worker: Worker,
    pub chat: Option<ChatTemplate>,
    /// Embedding pooling and normalisation: the folder's sentence-transformers
    /// modules when it has them, else mean pooling unnormalised (as `wick embed`).
    pub pooling: (Pooling, bool),
    pub created: u64,
    pub device: Device,
}

impl ServedModel {
    pub fn queue(&self) -> &Queue {
        match &self.worker {
            Worker::Lm(e) => &e.queue,
            Worker::Tasks(t) => &t.queue,
        }
    }
}

pub struct AppState {
    pub models: Vec<ServedModel>,
    pub api_key: Option<String>,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub shutting_down: AtomicBool,
}

impl AppState {
    /// The model a request names; with one model served, `model` may be left out.
    pub fn model(&self, name: Option<&str>) -> Result<&ServedModel, error::ApiError> {
        match name {
            None if self.models.len() == 1 => Ok(&self.models[0]),
            None => Err(error::ApiError::invalid(
                "model",
                "`model` is required when several models are served",
            )),
            Some(n) => self.models.iter().find(|m| m.id == n).ok_or_else(|| {
                error::ApiError::model_not_found(
                    n,
                    &self.models.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                )
            }),
        }
    }
}

/// Wraps loaded models with their workers.
pub fn serve_models(
    loaded: Vec<(String, Pretrained)>,
    opts: &ServeOptions,
    metrics: &Arc<Metrics>,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<ServedModel>> {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = vec![];
    for (id, p) in loaded {
        let chat = ChatTemplate::from_dir(&p.dir).map_err(anyhow::Error::msg)?;
        let pooling = crate::tasks::embed::folder_pooling(&p.dir);
        let p = Arc::new(p);
        let queue = Arc::new(Queue::new(opts.max_queue));
        let worker = match &p.model {
            Model::Gpt2(_) => Worker::Lm(LmEngine::spawn(
                p.clone(),
                opts.device.clone(),
                opts.max_batch,
                queue,
                metrics.clone(),
                cancel.clone(),
            )),
            _ => Worker::Tasks(TaskWorker::spawn(queue)),
        };
        out.push(ServedModel {
            id,
            pretrained: p,
            worker,
            chat,
            pooling,
            created,
            device: opts.device.clone(),
        });
    }
    Ok(out)
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/health", get(routes::health))
        .route("/v1/models", get(routes::models))
        .route("/metrics", get(routes::metrics))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/v1/classify", post(routes::classify))
        .route("/v1/translate", post(routes::translate))
        .fallback(routes::fallback)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::guard,
        ))
        .with_state(state)
}

/// Serves until SIGINT or SIGTERM: then stops accepting connections, lets in-flight
/// requests finish for `grace`, cancels what is left and returns.
pub fn run(loaded: Vec<(String, Pretrained)>, opts: ServeOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let models = serve_models(loaded, &opts, &metrics, &cancel)?;
    let state = Arc::new(AppState {
        models,
        api_key: opts.api_key.clone(),
        metrics,
        max_batch: opts.max_batch,
        max_body_bytes: opts.max_body_bytes,
        shutting_down: AtomicBool::new(false),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
            .parse()
            .map_err(|e| anyhow::anyhow!("--host {} --port {}: {e}", opts.host, opts.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--host, --port): {e}"))?;
        let local = listener.local_addr()?;
        for m in &state.models {
            eprintln!(
                "wick serve: {} — {}",
                m.id,
                m.pretrained.model.architecture()
            );
        }
        eprintln!(
            "wick serve: listening on http://{local} (max batch {}, max queue {}, CPU: {})",
            opts.max_batch,
            opts.max_queue,
            crate::runtime::cpu_features()
        );
        let app = router(state.clone());
        let st = state.clone();
        let grace = opts.grace;
        let shutdown = async move {
            wait_for_signal().await;
            st.shutting_down.store(true, Ordering::SeqCst);
            eprintln!(
                "wick serve: shutting down; in-flight requests have {:.0} s to finish",
                grace.as_secs_f64()
            );
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                cancel.store(true, Ordering::SeqCst);
                // A connection that still has not closed does not hold the process.
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!("wick serve: stopped (connections still open were dropped)");
                std::process::exit(0);
            });
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        eprintln!("wick serve: stopped");
        anyhow::Ok(())
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
