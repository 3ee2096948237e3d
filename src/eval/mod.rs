//! Held-out figures over a whole split, in order, shared by `wick train` (its evals and
//! final figures) and `wick eval`: a causal LM's loss, an encoder-decoder's loss, a
//! classifier's loss, accuracy and macro-F1 (multi-label: micro-/macro-F1, exact match). Below both `train` and `cli`: it runs
//! models on batches and knows nothing of optimisers or flags.

mod classify;
mod lm;
mod seq2seq;

pub use classify::{
    classify_over, macro_f1, multi_label_over, multi_label_scores, tune_thresholds, ClassifyScores,
    LabelF1, MultiLabelScores, Thresholds,
};
pub use lm::{lm_loss_over, mean_loss};
pub use seq2seq::{nat_loss, nat_loss_over, seq2seq_loss_over, NatLoss, LENGTH_LOSS_WEIGHT};
