//! The tensors of a checkpoint on disk, indexed by name across every file that holds
//! them: `model.safetensors` (memory-mapped), a sharded `model.safetensors.index.json`,
//! or `pytorch_model.bin` read by candle's pickle reader (which executes no code).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WickError};

enum File {
    Safetensors(MmapedSafetensors),
    Pickle(PthTensors),
}

pub struct TensorStore {
    files: Vec<(PathBuf, File)>,
    /// name -> (index into `files`, shape, stored dtype)
    index: HashMap<String, (usize, Vec<usize>, DType)>,
}

/// Weight files of a checkpoint folder, in the order transformers prefers them.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
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
        what: "no weights: looked for model.safetensors, model.safetensors.index.json, \
               pytorch_model.bin"
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
            let is_pickle = path
                .extension()
                .is_some_and(|e| e == "bin" || e == "pt" || e == "pth");
            let file = if is_pickle {
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
                File::Safetensors(st)
            };
            files.push((path.clone(), file));
        }
        Ok(Self { files, index })
    }

    /// Opens the weights of a checkpoint folder.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Self::open(&weight_files(dir)?)
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
            File::Safetensors(st) => st.load(name, &Device::Cpu).map_err(bad),
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
