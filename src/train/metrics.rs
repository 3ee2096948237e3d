//! metrics.jsonl (one object per logged step) and the loss curve as SVG.

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, WickError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub step: usize,
    pub train_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    pub perplexity: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_sec: f64,
    /// Wall seconds of training so far (evals included; a resumed run carries on from its
    /// checkpoint's figure), so curves can be read against minutes as well as steps.
    #[serde(default)]
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub macro_f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub micro_f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exact_match: Option<f64>,
}

pub struct Metrics {
    path: PathBuf,
    pub records: Vec<Record>,
}

impl Metrics {
    /// Opens `<out>/metrics.jsonl`, keeping the records up to `resume_step` (a resumed
    /// run drops what was logged after its checkpoint).
    pub fn open(out: &Path, resume_step: Option<usize>) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let mut records = Vec::new();
        if let (Some(limit), Ok(text)) = (resume_step, std::fs::read_to_string(&path)) {
            records = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Record>(l).ok())
                .filter(|r| r.step <= limit)
                .collect();
        }
        let m = Self { path, records };
        m.rewrite()?;
        Ok(m)
    }

    fn rewrite(&self) -> Result<()> {
        let text: String = self
            .records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        crate::files::atomic_write(&self.path, text.as_bytes())
    }

    pub fn push(&mut self, r: Record) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| WickError::io(&self.path, e))?;
        writeln!(f, "{}", serde_json::to_string(&r).unwrap())
            .map_err(|e| WickError::io(&self.path, e))?;
        self.records.push(r);
        Ok(())
    }

    /// Train and validation loss against step.
    pub fn plot(&self, path: &Path, title: &str) -> Result<()> {
        let train: Vec<(f64, f64)> = self
            .records
            .iter()
            .map(|r| (r.step as f64, r.train_loss))
            .collect();
        let val: Vec<(f64, f64)> = self
            .records
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v)))
            .collect();
        if train.is_empty() {
            return Ok(());
        }
        let x_max = train.iter().map(|p| p.0).fold(1.0, f64::max);
        let ys = train
            .iter()
            .chain(&val)
            .map(|p| p.1)
            .filter(|y| y.is_finite());
        let (y_min, y_max) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let pad = ((y_max - y_min) * 0.05).max(1e-3);
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
            let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("loss")
                .draw()?;
            chart
                .draw_series(LineSeries::new(train.clone(), &BLUE))?
                .label("train")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
            chart
                .draw_series(LineSeries::new(val.clone(), RED.stroke_width(2)))?
                .label("val")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart.draw_series(val.iter().map(|p| Circle::new(*p, 3, RED.filled())))?;
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE)
                .draw()?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| {
            WickError::Unsupported(format!("{}: plotting failed: {e}", path.display()))
        })
    }
}
