//! The tensors of a checkpoint on disk, indexed by name across every file that holds
//! them: `model.safetensors` (memory-mapped), a sharded `model.safetensors.index.json`,
//! or `pytorch_model.bin` read by candle's pickle reader (which executes no code), or
//! the `model.gguf` of a folder `wick quantize` wrote.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WickError};

enum File {
    /// Mapped until [`TensorStore::release`]: every page the model's tensors were
    /// copied from stays resident, and counts as the process's memory, while mapped.
    Safetensors(std::sync::RwLock<Option<MmapedSafetensors>>),
    Pickle(PthTensors),
    Gguf(gguf_file::Content),
}

pub struct TensorStore {
    files: Vec<(PathBuf, File)>,
    /// name -> (index into `files`, shape, stored dtype); a quantized tensor appears in
    /// the Hugging Face layout and as f32, which is what `load` dequantizes it to.
    index: HashMap<String, (usize, Vec<usize>, DType)>,
    /// Tensors held as ggml blocks.
    quantized: HashSet<String>,
    /// Tensors a GGUF file holds transposed from the Hugging Face layout (GPT-2's
    /// Conv1D weights, which quantize along rows of (out, in)).
    transposed: HashSet<String>,
    /// The `wick quantize` format of a GGUF file (`q8_0`, `q4k`).
    quantization: Option<String>,
    /// Names a GGUF file stores under another tensor's name (a tied token embedding
    /// kept only as the quantized LM head): alias -> stored name.
    aliases: HashMap<String, String>,
}

/// GGUF metadata keys `wick quantize` writes.
pub const GGUF_FORMAT_KEY: &str = "wick.quantization";
pub const GGUF_TRANSPOSED_KEY: &str = "wick.transposed";
/// Entries `alias=stored`: `alias` loads as the dequantized `stored` tensor.
pub const GGUF_ALIASES_KEY: &str = "wick.aliases";

/// Weight files of a checkpoint folder, in the order transformers prefers them.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for single in ["model.safetensors", "model.gguf"] {
        let single = dir.join(single);
        if single.is_file() {
            return Ok(vec![single]);
        }
    }
    for (index, _) in [
        ("model.safetensors.index.json", ()),
        ("pytorch_model.bin.index.json", ()),
    ] {
        let index = dir.join(index);
        if index.is_file() {
            return shard_files(&index);
        }
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(vec![bin]);
    }
    Err(WickError::MissingFile {
        path: dir.to_path_buf(),
        what: "no weights: looked for model.safetensors, model.gguf, \
               model.safetensors.index.json, pytorch_model.bin"
            .into(),
    })
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| WickError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| WickError::BadWeights {
            path: index.into(),
            message: e.to_string(),
        })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| WickError::BadWeights {
            path: index.into(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

impl TensorStore {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        let mut quantized = HashSet::new();
        let mut transposed = HashSet::new();
        let mut quantization = None;
        let mut aliases = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            if !path.is_file() {
                return Err(WickError::MissingFile {
                    path: path.clone(),
                    what: "weights".into(),
                });
            }
            let bad = |e: candle_core::Error| WickError::BadWeights {
                path: path.clone(),
                message: e.to_string(),
            };
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let is_pickle = matches!(ext, "bin" | "pt" | "pth");
            let file = if ext == "gguf" {
                let mut f = std::fs::File::open(path).map_err(|e| WickError::io(path, e))?;
                let content = gguf_file::Content::read(&mut f).map_err(bad)?;
                if let Some(v) = content.metadata.get(GGUF_FORMAT_KEY) {
                    quantization = Some(v.to_string().map_err(bad)?.clone());
                }
                if let Some(v) = content.metadata.get(GGUF_TRANSPOSED_KEY) {
                    for name in v.to_vec().map_err(bad)? {
                        transposed.insert(name.to_string().map_err(bad)?.clone());
                    }
                }
                for (name, info) in &content.tensor_infos {
                    let mut dims = info.shape.dims().to_vec();
                    if transposed.contains(name) {
                        dims.reverse();
                    }
                    if !matches!(info.ggml_dtype, GgmlDType::F32 | GgmlDType::F16) {
                        quantized.insert(name.clone());
                    }
                    index.insert(name.clone(), (i, dims, DType::F32));
                }
                if let Some(v) = content.metadata.get(GGUF_ALIASES_KEY) {
                    for entry in v.to_vec().map_err(bad)? {
                        let entry = entry.to_string().map_err(bad)?;
                        let (alias, stored) = entry
                            .split_once('=')
                            .filter(|(_, stored)| index.contains_key(*stored))
                            .ok_or_else(|| WickError::BadWeights {
                                path: path.clone(),
                                message: format!(
                                    "{GGUF_ALIASES_KEY} entry `{entry}` names no stored tensor"
                                ),
                            })?;
                        let (_, dims, dtype) = index[stored].clone();
                        index.insert(alias.to_string(), (i, dims, dtype));
                        aliases.insert(alias.to_string(), stored.to_string());
                    }
                }
                File::Gguf(content)
            } else if is_pickle {
                let pth = PthTensors::new(path, None).map_err(bad)?;
                for (name, info) in pth.tensor_infos() {
                    index.insert(
                        name.clone(),
                        (i, info.layout.shape().dims().to_vec(), info.dtype),
                    );
                }
                File::Pickle(pth)
            } else {
                // SAFETY: the file is mapped read-only; like every mmap, it must not be
                // truncated by another process while we hold it.
                let st = unsafe { MmapedSafetensors::new(path) }.map_err(bad)?;
                for (name, view) in st.tensors() {
                    let dtype = DType::try_from(view.dtype()).map_err(bad)?;
                    index.insert(name, (i, view.shape().to_vec(), dtype));
                }
                File::Safetensors(std::sync::RwLock::new(Some(st)))
            };
            files.push((path.clone(), file));
        }
        Ok(Self {
            files,
            index,
            quantized,
            transposed,
            quantization,
            aliases,
        })
    }

    /// Opens the weights of a checkpoint folder.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Self::open(&weight_files(dir)?)
    }

    /// Unmaps the safetensors files once the model holds its own copies of their
    /// tensors, so their pages stop counting towards the process's memory (the
    /// checkpoint's size: 1.4 GB for GPT-2 355M, for the whole run). The index stays:
    /// names, shapes and files are still known; a tensor asked for later is an error.
    pub fn release(&self) {
        for (_, file) in &self.files {
            if let File::Safetensors(st) = file {
                *st.write().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, s, _)| s.as_slice())
    }

    /// The `wick quantize` format, for a quantized checkpoint.
    pub fn quantization(&self) -> Option<&str> {
        self.quantization.as_deref()
    }

    /// The dtype most of the weights are stored in (what `wick info` reports).
    pub fn stored_dtype(&self) -> Option<DType> {
        let mut counts: HashMap<DType, usize> = HashMap::new();
        for (_, shape, dtype) in self.index.values() {
            *counts.entry(*dtype).or_default() += shape.iter().product::<usize>();
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d)
    }

    /// The file a tensor lives in (or the first file, for error messages about a tensor
    /// that is missing).
    pub fn file_of(&self, name: &str) -> &Path {
        let i = self.index.get(name).map(|(i, _, _)| *i).unwrap_or(0);
        self.files
            .get(i)
            .map(|(p, _)| p.as_path())
            .unwrap_or(Path::new("<no weights>"))
    }

    /// Loads a tensor on the CPU in its stored dtype.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        let (i, _, _) = self
            .index
            .get(name)
            .ok_or_else(|| WickError::MissingTensor {
                file: self.file_of(name).to_path_buf(),
                name: name.into(),
            })?;
        let (path, file) = &self.files[*i];
        let bad = |e: candle_core::Error| WickError::BadWeights {
            path: path.clone(),
            message: format!("tensor `{name}`: {e}"),
        };
        match file {
            File::Gguf(content) => {
                let q = read_gguf(path, content, name, &Device::Cpu).map_err(bad)?;
                let t = q.dequantize(&Device::Cpu).map_err(bad)?;
                if self.transposed.contains(name) {
                    t.t().and_then(|t| t.contiguous()).map_err(bad)
                } else {
                    Ok(t)
                }
            }
            File::Safetensors(st) => match &*st.read().unwrap_or_else(|e| e.into_inner()) {
                Some(st) => st.load(name, &Device::Cpu).map_err(bad),
                None => Err(WickError::BadWeights {
                    path: path.clone(),
                    message: format!("tensor `{name}` asked for after the file was released"),
                }),
            },
            File::Pickle(pth) => {
                pth.get(name)
                    .map_err(bad)?
                    .ok_or_else(|| WickError::MissingTensor {
                        file: path.clone(),
                        name: name.into(),
                    })
            }
        }
    }
}

impl TensorStore {
    /// The ggml blocks of a quantized tensor, as stored ((out, in) for a linear weight),
    /// or `None` when `name` is not quantized.
    pub fn load_quantized(&self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        if !self.quantized.contains(name) {
            return Ok(None);
        }
        let (i, _, _) = self.index[name];
        let (path, file) = &self.files[i];
        let File::Gguf(content) = file else {
            unreachable!("only GGUF files hold quantized tensors")
        };
        read_gguf(path, content, name, device)
            .map(Some)
            .map_err(|e| WickError::BadWeights {
                path: path.clone(),
                message: format!("tensor `{name}`: {e}"),
            })
    }
}

fn read_gguf(
    path: &Path,
    content: &gguf_file::Content,
    name: &str,
    device: &Device,
) -> candle_core::Result<QTensor> {
    let mut f = std::fs::File::open(path)?;
    content.tensor(&mut f, name, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_store_keeps_its_index_and_refuses_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &path).unwrap();
        let store = TensorStore::open(std::slice::from_ref(&path)).unwrap();
        let loaded = store.load("w").unwrap();
        store.release();
        // The loaded tensor owns its data: it outlives the mapping.
        assert_eq!(
            loaded.to_vec2::<f32>().unwrap(),
            vec![vec![1., 2.], vec![3., 4.]]
        );
        assert!(store.contains("w"));
        assert_eq!(store.shape("w"), Some(&[2usize, 2][..]));
        assert_eq!(store.file_of("w"), path.as_path());
        let e = store.load("w").unwrap_err().to_string();
        assert!(e.contains("after the file was released"), "{e}");
    }
}
