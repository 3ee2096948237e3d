//! Saving in the Hugging Face layout (config.json, model.safetensors, tokenizer.json),
//! every file written atomically: to a temporary file in the same folder, synced, then
//! renamed over the target, so a crash leaves the old file or the new one, never half.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use safetensors::tensor::TensorView;

use crate::error::{Result, WickError};
use crate::files::atomic_write;
use crate::models::ModelConfig;
use crate::tokenizer::Tokenizer;

fn st_dtype(dtype: DType) -> Result<safetensors::Dtype> {
    Ok(match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F64 => safetensors::Dtype::F64,
        DType::U32 => safetensors::Dtype::U32,
        DType::I64 => safetensors::Dtype::I64,
        DType::U8 => safetensors::Dtype::U8,
        other => {
            return Err(WickError::Unsupported(format!(
                "cannot save {other:?} tensors"
            )))
        }
    })
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.to_device(&candle_core::Device::Cpu)?.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        other => {
            return Err(WickError::Unsupported(format!(
                "cannot save {other:?} tensors"
            )))
        }
    })
}

/// Serialises named tensors to safetensors bytes, with the `{"format": "pt"}` metadata
/// transformers checks for.
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                tensor_bytes(t)?,
                t.dims().to_vec(),
                st_dtype(t.dtype())?,
            ))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, b, s, d)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| WickError::Unsupported(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| WickError::Unsupported(format!("safetensors: {e}")))
}

/// Writes a checkpoint folder: weights first, then the tokenizer with its
/// tokenizer_config.json, generation_config.json, then config.json (the file that makes
/// a folder a checkpoint), each atomically.
pub fn save_pretrained(
    dir: &Path,
    config: &ModelConfig,
    tensors: &[(String, Tensor)],
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| WickError::io(dir, e))?;
    atomic_write(&dir.join("model.safetensors"), &safetensors_bytes(tensors)?)?;
    save_model_files(dir, config, tokenizer)
}

/// What a checkpoint holds beside its weights (also beside a LoRA run's adapter): the
/// tokenizer with tokenizer_config.json, generation_config.json, then config.json.
pub fn save_model_files(
    dir: &Path,
    config: &ModelConfig,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| WickError::io(dir, e))?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("json serialises");
    if let Some(tok) = tokenizer {
        tok.save(&dir.join("tokenizer.json"))?;
        let t = super::side_files::tokenizer_config(config, tok);
        atomic_write(&dir.join("tokenizer_config.json"), pretty(&t).as_bytes())?;
    }
    if let Some(g) = super::side_files::generation_config(config) {
        atomic_write(&dir.join("generation_config.json"), pretty(&g).as_bytes())?;
    }
    let json = pretty(&config.to_json());
    atomic_write(&dir.join("config.json"), json.as_bytes())
}
