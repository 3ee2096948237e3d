use anyhow::Result;
use serde_json::json;

use super::{as_bert, emit, BatchArgs, ModelArgs, TextArgs};
use crate::checkpoint::LoadOptions;
use crate::tasks::classify::classify;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: TextArgs,
    #[command(flatten)]
    batch: BatchArgs,
    /// Multi-label models: predict every label whose probability reaches this.
    #[arg(long, default_value_t = 0.5, value_parser = super::finite_f64)]
    threshold: f64,
}

pub fn run(args: Args) -> Result<()> {
    args.batch.check()?;
    if !(0.0..=1.0).contains(&args.threshold) {
        anyhow::bail!(
            "--threshold must be between 0 and 1, got {}",
            args.threshold
        );
    }
    let texts = args.input.texts()?;
    let p = args.model.load(LoadOptions::default())?;
    let model = as_bert(&p, "classify")?;
    if !model.has_classifier() {
        anyhow::bail!(
            "{} has no classification head (classifier.weight)",
            p.dir.display()
        );
    }
    let (tok, device) = (p.tokenizer()?, args.model.device()?);
    let preds = args.batch.run(&texts, "classifying", |b| {
        classify(
            model,
            tok,
            b,
            args.batch.max_length,
            args.threshold,
            &device,
        )
    })?;
    emit(args.model.json, &json!({"predictions": preds}), || {
        preds
            .iter()
            .zip(&texts)
            .map(|(p, t)| match model.config().multi_label() {
                true => format!("{:<30} {t}", p.labels.join(",")),
                false => format!("{:<20} {:.4}  {t}", p.label, p.score),
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}
