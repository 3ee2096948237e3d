use std::time::Duration;

use anyhow::{Context, Result};

use crate::checkpoint::{load, LoadOptions};
use crate::serve::ServeOptions;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model to serve: a folder or hub id (its id is the folder name or the hub id),
    /// or NAME=DIR to serve it as NAME. Repeatable.
    #[arg(long, required = true)]
    model: Vec<String>,
    /// A LoRA adapter (folder or hub id) on the one --model; with several models, give
    /// each adapter folder as a --model of its own.
    #[arg(long)]
    adapter: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "WICK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Sequences a causal LM decodes together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests waiting per model before new ones get 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body accepted (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds in-flight requests may take after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10.0, value_parser = super::finite_f64)]
    grace_period: f64,
    /// cpu, cuda[:N] or metal.
    #[arg(long, default_value = "cpu", env = "WICK_DEVICE")]
    device: String,
    /// Matrix products in bf16 with f32 sums on CPUs with Intel AMX.
    #[arg(long, value_enum, default_value = "f32", env = "WICK_MATMUL_PRECISION")]
    matmul_precision: crate::nn::kernels::MatmulPrecision,
}

/// `NAME=DIR` or a bare reference, whose id is its last path component (a hub id
/// stays whole: `openai-community/gpt2`).
fn model_id(spec: &str) -> (String, String) {
    if let Some((name, dir)) = spec.split_once('=') {
        if !name.is_empty() && !name.contains('/') {
            return (name.to_string(), dir.to_string());
        }
    }
    let path = std::path::Path::new(spec);
    let id = match path.exists() {
        true => path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_else(|| spec.to_string()),
        false => spec.to_string(),
    };
    (id, spec.to_string())
}

pub fn run(args: Args) -> Result<()> {
    if args.max_batch == 0 || args.max_queue == 0 {
        anyhow::bail!("--max-batch and --max-queue must be at least 1");
    }
    if args.grace_period < 0.0 {
        anyhow::bail!("--grace-period must be >= 0");
    }
    if args.adapter.is_some() && args.model.len() > 1 {
        anyhow::bail!(
            "--adapter applies to one --model; with several, give each adapter folder as a \
             --model (NAME=ADAPTER_DIR)"
        );
    }
    let device = crate::device::parse_device(&args.device)?;
    crate::nn::kernels::set_matmul_precision(args.matmul_precision)
        .map_err(|e| anyhow::anyhow!("--matmul-precision bf16: {e}"))?;
    let opts = LoadOptions {
        device: device.clone(),
        adapter: args.adapter.clone(),
        ..LoadOptions::default()
    };
    let mut loaded: Vec<(String, crate::checkpoint::Pretrained)> = vec![];
    for spec in &args.model {
        let (id, reference) = model_id(spec);
        if loaded.iter().any(|(other, _)| *other == id) {
            anyhow::bail!("--model {spec}: two models have the id `{id}`; name one with NAME=DIR");
        }
        let p = load(&reference, &opts).with_context(|| format!("loading --model {spec}"))?;
        p.tokenizer()
            .with_context(|| format!("--model {spec}: serving needs a tokenizer"))?;
        loaded.push((id, p));
    }
    crate::serve::run(
        loaded,
        ServeOptions {
            host: args.host,
            port: args.port,
            api_key: args.api_key.filter(|k| !k.is_empty()),
            max_batch: args.max_batch,
            max_queue: args.max_queue,
            max_body_bytes: args.max_body_bytes,
            grace: Duration::from_secs_f64(args.grace_period),
            device,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_names_folders_or_hub_ids() {
        assert_eq!(model_id("tiny=/x/y").0, "tiny");
        assert_eq!(model_id("openai-community/gpt2").0, "openai-community/gpt2");
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().to_string_lossy().to_string();
        assert_eq!(
            model_id(&spec).0,
            dir.path().file_name().unwrap().to_string_lossy()
        );
    }
}
