//! The effective training configuration: defaults, overridden by a preset's `train`
//! section, overridden by command-line flags. It is printed at the start and stored with
//! every checkpoint (train_config.json).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::schedule::Schedule;
use crate::error::{Result, WickError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Causal language modelling: predict every next token.
    Clm,
    /// Masked language modelling (BERT).
    Mlm,
    /// BERT's original pretraining: masked LM plus next-sentence prediction on sentence
    /// pairs from a corpus of documents.
    #[serde(rename = "mlm+nsp")]
    #[value(name = "mlm+nsp")]
    MlmNsp,
    /// Sequence classification on [CLS].
    Classify,
    /// Translation with the encoder-decoder, teacher-forced, on source<TAB>target pairs.
    Seq2seq,
    /// Non-autoregressive translation (Mask-Predict): the decoder fills every target
    /// position at once, trained as a conditional masked LM with a length predictor.
    Nat,
}

impl Objective {
    /// The objectives that read `source<TAB>target` pairs and train the encoder-decoder.
    pub fn translates(self) -> bool {
        matches!(self, Self::Seq2seq | Self::Nat)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub objective: Objective,
    pub max_iters: usize,
    pub batch_size: usize,
    pub block_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub learning_rate: f64,
    /// Where decay ends; defaults to learning_rate / 10.
    pub min_lr: Option<f64>,
    pub warmup_iters: usize,
    /// Step at which decay reaches min_lr (default: max_iters), as nanoGPT's
    /// lr_decay_iters; a run stopped early and resumed keeps its schedule by fixing it.
    pub lr_decay_iters: Option<usize>,
    pub lr_schedule: Schedule,
    pub weight_decay: f64,
    pub decay_embeddings: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f64,
    /// Overrides the model's dropout probabilities when set.
    pub dropout: Option<f64>,
    pub eval_every: usize,
    /// Validation batches per evaluation (the same batches every time).
    pub eval_iters: usize,
    pub log_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// Checkpoints kept (0: all).
    pub keep_last: usize,
    pub seed: u64,
    /// Fraction of the corpus held out for validation (its end, as nanoGPT).
    pub val_fraction: f64,
    /// Tokens sampled at the end of a causal-LM run.
    pub sample_tokens: usize,
    /// Classification: held-out examples (default: val_fraction of --data).
    pub eval_data: Option<PathBuf>,
    /// Classification columns (default text column: text, sentence or sentence1).
    pub text_column: Option<String>,
    pub pair_column: Option<String>,
    pub label_column: String,
    /// Classification: one sigmoid per label (comma-separated label cells); also on
    /// when the data has such cells or the model's problem_type says so.
    pub multi_label: bool,
    /// Classification: a file naming the labels, one per line; the data's labels are
    /// then these names or their line numbers from 0.
    pub label_names: Option<PathBuf>,
    /// Multi-label: the probability from which a label is predicted.
    pub threshold: f64,
    /// Seq2seq: the target column holds comma-separated labels, written as label
    /// names in one order (`--label-names` names numeric ids).
    pub labels_as_target: bool,
    /// Masked LM: choose whole words (a WordPiece token and its `##` continuations)
    /// rather than single tokens.
    pub whole_word_mask: bool,
    /// Seq2seq: label smoothing ε (the paper uses 0.1).
    pub label_smoothing: f64,
    /// Seq2seq: probability of feeding the decoder its own prediction (0 = off).
    pub scheduled_sampling: f64,
    /// Seq2seq from scratch: learn one BPE per side (source and target vocabularies
    /// and embeddings of their own) instead of a joint one.
    pub separate_vocab: bool,
    /// Translation: train on a trained translator's outputs for the training sources
    /// instead of the references (sequence-level knowledge distillation, the usual
    /// recipe for non-autoregressive students). The held-out pairs keep the references.
    pub distill_from: Option<PathBuf>,
    /// LoRA rank; 0 trains every weight. With r > 0 the checkpoint's weights are frozen
    /// and only low-rank updates of `lora_targets` (and new heads) learn.
    pub lora_r: usize,
    /// LoRA scale numerator: updates are multiplied by α / r (peft's default α is 8).
    pub lora_alpha: f64,
    /// Dropout on the input of every LoRA update.
    pub lora_dropout: f64,
    /// Linear layers that get an update, by module name or name suffix (default: the
    /// family's, as peft picks them: GPT-2 c_attn, BERT query and value, the
    /// encoder-decoder q_proj and v_proj).
    pub lora_targets: Option<Vec<String>>,
    /// Recompute each block's activations in the backward pass instead of keeping them:
    /// less memory for one more forward pass per step, the same gradients.
    pub gradient_checkpointing: bool,
    /// Precision of the CPU matrix products: f32, or bf16 operands with f32 sums on
    /// AMX (weights, gradients and optimizer state stay f32).
    pub matmul_precision: crate::nn::kernels::MatmulPrecision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            objective: Objective::Clm,
            max_iters: 1000,
            batch_size: 8,
            block_size: 128,
            grad_accum: 1,
            learning_rate: 3e-4,
            min_lr: None,
            warmup_iters: 100,
            lr_decay_iters: None,
            lr_schedule: Schedule::Cosine,
            weight_decay: 0.1,
            decay_embeddings: true,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            dropout: None,
            eval_every: 250,
            eval_iters: 20,
            log_every: 10,
            save_every: 500,
            keep_last: 3,
            seed: 1337,
            val_fraction: 0.1,
            sample_tokens: 200,
            eval_data: None,
            whole_word_mask: false,
            label_smoothing: 0.0,
            scheduled_sampling: 0.0,
            separate_vocab: false,
            text_column: None,
            pair_column: None,
            label_column: "label".into(),
            multi_label: false,
            label_names: None,
            threshold: 0.5,
            labels_as_target: false,
            distill_from: None,
            lora_r: 0,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            lora_targets: None,
            gradient_checkpointing: false,
            matmul_precision: Default::default(),
        }
    }
}

/// Merges `overrides` (keys of TrainConfig) into `base`, strictly: an unknown key is an
/// error naming `source`.
pub fn merge(
    base: &TrainConfig,
    overrides: &Map<String, Value>,
    source: &str,
) -> Result<TrainConfig> {
    let mut v = serde_json::to_value(base).expect("config serialises");
    let obj = v.as_object_mut().expect("object");
    for (k, val) in overrides {
        obj.insert(k.clone(), val.clone());
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        WickError::config(
            source,
            format!("training setting `{path}`: {}", e.into_inner()),
        )
    })
}

impl TrainConfig {
    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(self.learning_rate / 10.0)
    }

    /// Checks the numbers make sense together; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(WickError::Unsupported(m));
        if self.max_iters == 0 {
            return bad("--max-iters must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "--lora-dropout must be in [0, 1), got {}",
                self.lora_dropout
            ));
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return bad(format!(
                "--lora-alpha must be positive, got {}",
                self.lora_alpha
            ));
        }
        if self.lora_r == 0 && self.lora_targets.is_some() {
            return bad("--lora-targets needs --lora-r (the LoRA rank)".into());
        }
        if self
            .lora_targets
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.iter().any(|t| t.trim().is_empty()))
        {
            return bad("--lora-targets needs module names, such as c_attn,c_proj".into());
        }
        if self.batch_size == 0 || self.block_size == 0 || self.grad_accum == 0 {
            return bad("--batch-size, --block-size and --grad-accum must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!(
                "--learning-rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!(
                "--val-fraction must be in [0, 1), got {}",
                self.val_fraction
            ));
        }
        if let Some(p) = self.dropout {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("--dropout must be in [0, 1), got {p}"));
            }
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if self.separate_vocab && !self.objective.translates() {
            return bad("--separate-vocab applies to --objective seq2seq or nat".into());
        }
        if self.distill_from.is_some() && !self.objective.translates() {
            return bad("--distill-from applies to --objective seq2seq or nat".into());
        }
        if !(0.0..=1.0).contains(&self.scheduled_sampling) {
            return bad(format!(
                "--scheduled-sampling must be in [0, 1], got {}",
                self.scheduled_sampling
            ));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return bad(format!(
                "--threshold must be in (0, 1), got {}",
                self.threshold
            ));
        }
        if self.multi_label && self.objective != Objective::Classify {
            return bad("--multi-label applies to --objective classify".into());
        }
        if self.labels_as_target && !self.objective.translates() {
            return bad("--labels-as-target applies to --objective seq2seq or nat".into());
        }
        if self.label_names.is_some()
            && !(self.objective == Objective::Classify || self.labels_as_target)
        {
            return bad(
                "--label-names applies to --objective classify or --labels-as-target".into(),
            );
        }
        if self.eval_every == 0 || self.log_every == 0 || self.eval_iters == 0 {
            return bad("--eval-every, --eval-iters and --log-every must be at least 1".into());
        }
        Ok(())
    }

    /// The training pairs of a seq2seq run: `source<TAB>target` lines, targets turned
    /// into label sets with `--labels-as-target`. The tokenizer is learnt on these too.
    pub fn read_pairs(
        &self,
        data: &std::path::Path,
    ) -> crate::error::Result<Vec<(String, String)>> {
        let mut pairs = crate::data::pairs::read_pairs(data)?;
        if self.labels_as_target {
            let names = self
                .label_names
                .as_deref()
                .map(crate::data::labeled::read_label_names)
                .transpose()?;
            crate::data::pairs::labels_as_target(&mut pairs, names.as_deref())?;
        }
        Ok(pairs)
    }

    pub fn columns(&self) -> crate::data::labeled::Columns {
        crate::data::labeled::Columns {
            text: self.text_column.clone(),
            pair: self.pair_column.clone(),
            label: self.label_column.clone(),
        }
    }

    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.block_size * self.grad_accum
    }
}

/// A model preset: models/NAME.json. Presets bundled with wick are compiled in, so the
/// binary works outside the repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Default corpus, relative to the working directory.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// "char" builds a character-level tokenizer from the corpus.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// A config.json (model_type and sizes; vocab_size may be 0: set from the tokenizer).
    pub model: Value,
    #[serde(default)]
    pub train: Map<String, Value>,
}

const BUNDLED: &[(&str, &str)] = &[
    (
        "shakespeare-char",
        include_str!("../../models/shakespeare-char.json"),
    ),
    (
        "transformer-tiny",
        include_str!("../../models/transformer-tiny.json"),
    ),
    (
        "transformer-base",
        include_str!("../../models/transformer-base.json"),
    ),
];

impl Preset {
    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text)).map_err(
            |e| {
                let path = e.path().to_string();
                WickError::config(source, format!("`{path}`: {}", e.into_inner()))
            },
        )
    }

    /// A bundled preset by name, or `models/NAME.json` in the working directory.
    pub fn find(name: &str) -> Option<Result<Self>> {
        let local = Path::new("models").join(format!("{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&local) {
            if text.contains("\"train\"") || text.contains("\"model\"") {
                return Some(Self::parse(&text, &local));
            }
        }
        BUNDLED
            .iter()
            .find(|(n, t)| *n == name && t.contains("\"model\""))
            .map(|(n, t)| Self::parse(t, Path::new(&format!("<bundled preset {n}>"))))
    }

    pub fn names() -> Vec<&'static str> {
        BUNDLED
            .iter()
            .filter(|(_, t)| t.contains("\"model\""))
            .map(|(n, _)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_strictly() {
        let mut o = Map::new();
        o.insert("max_iters".into(), 40.into());
        let c = merge(&TrainConfig::default(), &o, "flags").unwrap();
        assert_eq!(c.max_iters, 40);
        o.insert("max_iter".into(), 1.into());
        let e = merge(&TrainConfig::default(), &o, "preset.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_iter") && e.contains("preset.json"), "{e}");
    }

    #[test]
    fn bundled_presets_parse() {
        for name in Preset::names() {
            let p = Preset::find(name).unwrap().unwrap();
            merge(&TrainConfig::default(), &p.train, name)
                .unwrap()
                .validate()
                .unwrap();
        }
    }
}
