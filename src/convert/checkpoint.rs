//! The weights of a Hugging Face checkpoint folder, memory-mapped, one or many safetensors shards.
//!
//! Nothing is read into memory here: each tensor is a borrowed byte slice of its shard's mapping,
//! so a 31 GB checkpoint costs only address space until its rows are converted. The safetensors
//! crate validates each header against its file (a truncated shard is an error naming it), and
//! the index must agree with the shards about which tensor lives where.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::config::read_json;
use super::ConvertError;

/// Element types we convert from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceDtype {
    F32,
    F16,
    BF16,
}

impl SourceDtype {
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F32 => 4,
            SourceDtype::F16 | SourceDtype::BF16 => 2,
        }
    }

    pub fn ggml(self) -> dscoder_quantize::GgmlType {
        match self {
            SourceDtype::F32 => dscoder_quantize::GgmlType::F32,
            SourceDtype::F16 => dscoder_quantize::GgmlType::F16,
            SourceDtype::BF16 => dscoder_quantize::GgmlType::BF16,
        }
    }
}

/// One tensor of the checkpoint: where it is and what it holds.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub shard: usize,
    pub dtype: SourceDtype,
    /// torch order: the last dimension is contiguous.
    pub shape: Vec<u64>,
    /// Byte range in the shard's mapping.
    pub start: usize,
    pub end: usize,
}

impl SourceTensor {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// All shards of a checkpoint and an index of their tensors.
pub struct Checkpoint {
    shards: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, SourceTensor>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Checkpoint, ConvertError> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (files, expected): (Vec<PathBuf>, Option<HashMap<String, String>>) =
            if index_path.exists() {
                let index = read_json(&index_path)?;
                let map = index
                    .get("weight_map")
                    .and_then(|v| v.as_object())
                    .ok_or_else(|| ConvertError::Config {
                        path: index_path.clone(),
                        key: "weight_map".into(),
                        message: "missing or not an object".into(),
                    })?;
                let mut expected = HashMap::new();
                let mut files: Vec<String> = Vec::new();
                for (name, file) in map {
                    let file = file.as_str().ok_or_else(|| ConvertError::Config {
                        path: index_path.clone(),
                        key: format!("weight_map.{name}"),
                        message: "expected a file name".into(),
                    })?;
                    if file.contains('/') || file.contains('\\') || file == ".." {
                        return Err(ConvertError::Config {
                            path: index_path.clone(),
                            key: format!("weight_map.{name}"),
                            message: format!("'{file}' is not a file in the checkpoint folder"),
                        });
                    }
                    if !files.iter().any(|f| f == file) {
                        files.push(file.to_string());
                    }
                    expected.insert(name.clone(), file.to_string());
                }
                files.sort();
                (
                    files.into_iter().map(|f| dir.join(f)).collect(),
                    Some(expected),
                )
            } else if single.exists() {
                (vec![single], None)
            } else {
                return Err(ConvertError::MissingFile {
                    path: single,
                    what: "weights (model.safetensors or model.safetensors.index.json)",
                });
            };

        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = BTreeMap::new();
        for (i, path) in files.into_iter().enumerate() {
            crate::input::regular_file(&path)?;
            let file = File::open(&path).map_err(|source| ConvertError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the mapping is read-only; a checkpoint modified while we convert it can give
            // wrong numbers, as with any reader, but not unsoundness in our code, which only
            // copies bytes out.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ConvertError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| ConvertError::Shard {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let dtype = match info.dtype {
                    Dtype::F32 => SourceDtype::F32,
                    Dtype::F16 => SourceDtype::F16,
                    Dtype::BF16 => SourceDtype::BF16,
                    other => {
                        return Err(ConvertError::Tensor {
                            path: path.clone(),
                            tensor: name,
                            message: format!(
                                "dtype {other:?} is not supported (expected BF16, F16 or F32)"
                            ),
                        })
                    }
                };
                let t = SourceTensor {
                    shard: i,
                    dtype,
                    shape: info.shape.iter().map(|&d| d as u64).collect(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if let Some(expected) = &expected {
                    let want = expected.get(&name).map(String::as_str);
                    let got = path.file_name().and_then(|f| f.to_str());
                    if want != got {
                        return Err(ConvertError::Tensor {
                            path: path.clone(),
                            tensor: name,
                            message: match want {
                                Some(w) => format!("the index says it is in {w}"),
                                None => "not listed in model.safetensors.index.json".into(),
                            },
                        });
                    }
                }
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(ConvertError::Tensor {
                        path: path.clone(),
                        tensor: name,
                        message: "appears in more than one shard".into(),
                    });
                }
            }
            let _ = mmap.advise(memmap2::Advice::Sequential);
            shards.push((path, mmap));
        }
        if let Some(expected) = expected {
            let mut missing: Vec<&String> = expected
                .keys()
                .filter(|n| !tensors.contains_key(*n))
                .collect();
            missing.sort();
            if let Some(name) = missing.first() {
                return Err(ConvertError::Tensor {
                    path: dir.join(&expected[*name]),
                    tensor: (*name).clone(),
                    message: "listed in model.safetensors.index.json but not in the shard".into(),
                });
            }
        }
        Ok(Checkpoint { shards, tensors })
    }

    pub fn get(&self, name: &str) -> Option<&SourceTensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The bytes of a tensor.
    pub fn bytes(&self, t: &SourceTensor) -> &[u8] {
        &self.shards[t.shard].1[t.start..t.end]
    }

    pub fn shard_path(&self, t: &SourceTensor) -> &Path {
        &self.shards[t.shard].0
    }

    /// Tells the kernel we are done with `bytes` (a slice of one of our mappings), so its pages
    /// leave our resident set. Converting reads every byte once, front to back; without this a
    /// 31 GB checkpoint would fill RAM with pages we never touch again.
    pub fn release(&self, bytes: &[u8]) {
        const PAGE: usize = 4096;
        let addr = bytes.as_ptr() as usize;
        for (_, mmap) in &self.shards {
            let base = mmap.as_ptr() as usize;
            if addr < base || addr + bytes.len() > base + mmap.len() {
                continue;
            }
            // Whole pages inside the slice only: a page shared with a neighbour stays.
            let start = (addr - base).div_ceil(PAGE) * PAGE;
            let end = (addr - base + bytes.len()) / PAGE * PAGE;
            if end > start {
                // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only drops
                // our page-table entries; a later read faults the same bytes back in from the file.
                let _ = unsafe {
                    mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
            return;
        }
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| (t.end - t.start) as u64)
            .sum()
    }
}

/// Converts little-endian source elements to f32, in parallel for large inputs (this runs once
/// per element of the model, so on one thread it would cap the whole conversion).
pub fn to_f32(dtype: SourceDtype, src: &[u8], out: &mut [f32]) {
    use rayon::prelude::*;
    const PIECE: usize = 1 << 16;
    if out.len() <= PIECE {
        to_f32_serial(dtype, src, out);
        return;
    }
    out.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE * dtype.size()))
        .for_each(|(o, s)| to_f32_serial(dtype, s, o));
}

fn to_f32_serial(dtype: SourceDtype, src: &[u8], out: &mut [f32]) {
    match dtype {
        SourceDtype::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        SourceDtype::F16 => dscoder_quantize::f16_bytes_to_f32(src, out),
        SourceDtype::BF16 => dscoder_quantize::bf16_bytes_to_f32(src, out),
    }
}
