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
    /// Multi-label models: predict every label whose probability reaches this
    /// (default: the folder's thresholds.json, one per label, else 0.5).
    #[arg(long, value_parser = super::finite_f64)]
    threshold: Option<f64>,
}

pub fn run(args: Args) -> Result<()> {
    args.batch.check()?;
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
    let thresholds = super::thresholds(&p, args.threshold)?;
    let preds = args.batch.run(&texts, &device, "classifying", |b| {
        classify(model, tok, b, args.batch.max_length, &thresholds, &device)
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
