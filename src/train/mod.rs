//! Training: one loop for every variant and objective, with AdamW, schedules,
//! clipping, accumulation, evaluation, metrics and resumable checkpoints.

#[cfg(feature = "cuda")]
mod adamw_cuda;
pub mod checkpoints;
pub mod config;
pub mod distill;
pub mod distributed;
pub mod lora;
pub mod metrics;
pub mod objectives;
pub mod optim;
pub mod schedule;
pub mod shards;
pub mod step_times;
pub mod trainer;

pub use config::{Objective, Preset, TrainConfig};
pub use trainer::{train, TrainRequest, TrainSummary};
