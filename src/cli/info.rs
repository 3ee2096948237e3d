use anyhow::Result;
use serde_json::json;

use super::{emit, ModelArgs};
use crate::checkpoint::LoadOptions;
use crate::models::ModelConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: Args) -> Result<()> {
    let p = args.model.load(LoadOptions::default())?;
    let (layers, hidden, heads, ffn) = match &p.config {
        ModelConfig::Gpt2(c) => (json!(c.n_layer), c.n_embd, c.n_head, c.inner_dim()),
        ModelConfig::Bert(c) => (
            json!(c.num_hidden_layers),
            c.hidden_size,
            c.num_attention_heads,
            c.intermediate_size,
        ),
        ModelConfig::Seq2Seq(c) => (
            json!({"encoder": c.encoder_layers, "decoder": c.decoder_layers}),
            c.d_model,
            c.num_heads,
            c.d_ff,
        ),
    };
    let dtype = p.weights.store().and_then(|s| {
        s.quantization()
            .map(|q| format!("{q} (linear layers), f32"))
            .or_else(|| s.stored_dtype().map(|d| format!("{d:?}").to_lowercase()))
    });
    let tokenizer = p.tokenizer.as_ref().map(|t| {
        let src = t.source_side();
        let mut v = json!({"source": t.source(), "vocab_size": t.vocab_size()});
        if !std::ptr::eq(src, t) {
            v["source_side"] = json!({"source": src.source(), "vocab_size": src.vocab_size()});
        }
        v
    });
    let unused = p.weights.unused();
    let value = json!({
        "path": p.dir,
        "model_type": p.config.model_type(),
        "family": p.model.family(),
        "architecture": p.model.architecture(),
        "supported": p.model.supported(),
        "layers": layers,
        "hidden_size": hidden,
        "heads": heads,
        "ffn_size": ffn,
        "vocab_size": p.config.vocab_size(),
        "context": p.config.max_positions(),
        "parameters": p.weights.num_parameters(),
        "dtype": dtype,
        "tokenizer": tokenizer,
        "unused_tensors": unused,
        "config": p.config.to_json(),
    });
    emit(args.model.json, &value, || {
        let mut s = format!(
            "model         {}\nfamily        {}\narchitecture  {}\nsupported     {}\nlayers        {}\nhidden size   {hidden}\nheads         {heads}\nffn size      {ffn}\nvocab size    {}\ncontext       {}\nparameters    {} ({:.2}M)\nstored dtype  {}\n",
            p.dir.display(),
            p.model.family(),
            p.model.architecture(),
            p.model.supported().join(", "),
            layers,
            p.config.vocab_size(),
            p.config.max_positions(),
            p.weights.num_parameters(),
            p.weights.num_parameters() as f64 / 1e6,
            dtype.as_deref().unwrap_or("?"),
        );
        s += &match &p.tokenizer {
            Some(t) => format!(
                "tokenizer     {} (vocab {})",
                t.source().display(),
                t.vocab_size()
            ),
            None => "tokenizer     none".into(),
        };
        if let Some(t) = &p.tokenizer {
            let side = t.source_side();
            if !std::ptr::eq(side, t) {
                s += &format!(
                    "\nsource side   {} (vocab {})",
                    side.source().display(),
                    side.vocab_size()
                );
            }
        }
        if !unused.is_empty() {
            s += &format!(
                "\nunused        {} checkpoint tensors: {}",
                unused.len(),
                unused.join(", ")
            );
        }
        s
    })
}
