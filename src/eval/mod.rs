//! Held-out figures over a whole split, in order, shared by `wick train` (its evals and
//! final figures) and `wick eval`: a causal LM's loss, an encoder-decoder's loss, a
//! classifier's loss, accuracy and macro-F1. Below both `train` and `cli`: it runs
//! models on batches and knows nothing of optimisers or flags.

mod classify;
mod lm;
mod seq2seq;

pub use classify::{classify_over, macro_f1, ClassifyScores};
pub use lm::{lm_loss_over, mean_loss};
pub use seq2seq::seq2seq_loss_over;
