//! Importance-matrix files, interchangeable with llama.cpp's `llama-imatrix` and `llama-quantize`.
//!
//! Two formats exist, and llama.cpp's tools read both:
//!
//! * **GGUF** (llama.cpp since mid-2025, the default): `general.type = "imatrix"`, the keys
//!   `imatrix.datasets` (strings), `imatrix.chunk_count` and `imatrix.chunk_size` (u32), and per
//!   weight `W` the F32 tensors `W.in_sum2` (`[n_cols, n_mat]`: Σx² of each input column, per
//!   expert for a 3-D expert tensor), `W.counts` (`[1, n_mat]`: the rows summed) and optionally
//!   `W.in_sum` (Σx). Raw sums, so files merge by adding.
//! * **Legacy `.dat`**: `i32 n_entries`, then per entry `i32 len, name, i32 ncall, i32 nval,
//!   f32[nval]` holding `mean(x²) · ncall`, and optionally `i32 chunk_count, i32 len, dataset`.
//!
//! What a quantizer receives ([`ImportanceMatrix::weights`]) is the mean x² per column, per
//! expert, as `llama-quantize` computes it (an expert nobody routed to gets all ones).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dscoder_quantize::GgmlType;

use crate::gguf::{Array, GgufError, GgufFile, GgufWriter, Metadata, TensorDecl, Value};

/// The statistics of one weight's input.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Σx² per column, `n_mat` blocks of `n_cols` (legacy files: `mean(x²) · ncall`).
    pub sums: Vec<f32>,
    /// Rows summed, per matrix (legacy files: one value, `ncall`).
    pub counts: Vec<u64>,
    /// Σx per column, when the writer kept it.
    pub activations: Option<Vec<f32>>,
}

/// A whole importance matrix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportanceMatrix {
    /// By weight name (`blk.3.ffn_down_exps.weight`), sorted as llama.cpp stores them.
    pub entries: BTreeMap<String, Entry>,
    /// The calibration texts it was computed from.
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
    /// Read from a legacy `.dat` file (sums are `mean(x²) · ncall`).
    pub legacy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: not an importance matrix: {why}")]
    Invalid { path: PathBuf, why: String },
}

impl ImportanceMatrix {
    /// Reads either format (GGUF by its magic, otherwise legacy).
    pub fn load(path: &Path) -> Result<ImportanceMatrix, ImatrixError> {
        let bytes = std::fs::read(path).map_err(|source| ImatrixError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |why: String| ImatrixError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        if bytes.starts_with(b"GGUF") {
            let file = GgufFile::parse(&bytes).map_err(|e| invalid(e.to_string()))?;
            Self::from_gguf(&file).map_err(invalid)
        } else {
            Self::from_legacy(&bytes).map_err(invalid)
        }
    }

    fn from_gguf(file: &GgufFile) -> Result<ImportanceMatrix, String> {
        let meta = &file.metadata;
        let u32_key = |k: &str| meta.get(k).and_then(Value::as_u32);
        let datasets = match meta.get("imatrix.datasets").and_then(Value::as_array) {
            Some(Array::String(v)) => v.clone(),
            _ => Vec::new(),
        };
        let (Some(chunk_count), Some(chunk_size)) = (
            u32_key("imatrix.chunk_count"),
            u32_key("imatrix.chunk_size"),
        ) else {
            // llama-quantize refuses such a file too ("missing imatrix metadata").
            return Err("the imatrix.chunk_count/chunk_size keys are missing".into());
        };
        let floats = |name: &str| -> Result<Option<Vec<f32>>, String> {
            let Some(t) = file.tensor(name) else {
                return Ok(None);
            };
            if t.ty != GgmlType::F32 {
                return Err(format!("{name} is {}, not f32", t.ty));
            }
            let data = file.tensor_data(t);
            Ok(Some(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ))
        };
        let mut entries = BTreeMap::new();
        for t in &file.tensors {
            let Some(weight) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let sums = floats(&t.name)?.unwrap_or_default();
            let counts = floats(&format!("{weight}.counts"))?
                .ok_or_else(|| format!("{weight} has sums but no counts"))?;
            if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
                return Err(format!(
                    "{weight}: {} sums do not split into {} matrices",
                    sums.len(),
                    counts.len()
                ));
            }
            if let Some(bad) = sums.iter().chain(&counts).find(|v| !v.is_finite()) {
                return Err(format!("{weight} holds the non-finite value {bad}"));
            }
            let activations =
                floats(&format!("{weight}.in_sum"))?.filter(|a| a.len() == sums.len());
            let counts = counts.iter().map(|c| c.round().max(0.0) as u64).collect();
            entries.insert(
                weight.to_string(),
                Entry {
                    sums,
                    counts,
                    activations,
                },
            );
        }
        if entries.is_empty() {
            return Err("it holds no *.in_sum2 tensors".into());
        }
        Ok(ImportanceMatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size,
            legacy: false,
        })
    }

    fn from_legacy(bytes: &[u8]) -> Result<ImportanceMatrix, String> {
        let mut r = Cursor { bytes, pos: 0 };
        let n = r.i32().ok_or("it is empty")?;
        if n < 1 {
            return Err(format!("it declares {n} entries"));
        }
        let mut entries = BTreeMap::new();
        for i in 0..n {
            let truncated = || format!("entry {} of {n} is truncated", i + 1);
            let len = r.len().ok_or_else(truncated)?;
            let name = r.take(len).ok_or_else(truncated)?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| format!("entry {} has a name that is not UTF-8", i + 1))?;
            let ncall = r.i32().ok_or_else(truncated)?;
            let nval = r.len().filter(|&v| v > 0).ok_or_else(truncated)?;
            let raw = r
                .take(nval.checked_mul(4).ok_or_else(truncated)?)
                .ok_or_else(truncated)?;
            let sums: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if sums.iter().any(|v| !v.is_finite()) {
                return Err(format!("entry '{name}' holds a non-finite value"));
            }
            entries.insert(
                name,
                Entry {
                    sums,
                    counts: vec![ncall.max(0) as u64],
                    activations: None,
                },
            );
        }
        let mut m = ImportanceMatrix {
            entries,
            legacy: true,
            ..Default::default()
        };
        // The trailer (chunk count and dataset name) is optional.
        if let Some(chunks) = r.i32() {
            m.chunk_count = chunks.max(0) as u32;
            if let Some(dataset) = r.len().and_then(|len| r.take(len)) {
                m.datasets
                    .push(String::from_utf8_lossy(dataset).into_owned());
            }
        }
        Ok(m)
    }

    /// The importance vector a quantizer gets for weight `name`: mean x² per column, one block
    /// of `n_cols` per matrix (llama-quantize's normalisation of either format).
    pub fn weights(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if self.legacy {
            let ncall = e.counts.first().copied().unwrap_or(0);
            return Some(if ncall > 0 {
                e.sums.iter().map(|s| s / ncall as f32).collect()
            } else {
                e.sums.clone()
            });
        }
        let n_cols = e.sums.len() / e.counts.len().max(1);
        let mut out = Vec::with_capacity(e.sums.len());
        for (block, &count) in e.sums.chunks(n_cols.max(1)).zip(&e.counts) {
            if count > 0 {
                out.extend(block.iter().map(|s| s / count as f32));
            } else {
                out.extend(std::iter::repeat_n(1.0, block.len()));
            }
        }
        Some(out)
    }

    /// Writes the GGUF format (through a temporary file renamed on success).
    pub fn save(&self, path: &Path) -> Result<u64, ImatrixError> {
        let mut meta = Metadata::new();
        meta.set("general.type", Value::String("imatrix".into()));
        meta.set(
            "imatrix.datasets",
            Value::Array(Array::String(self.datasets.clone())),
        );
        meta.set("imatrix.chunk_count", Value::U32(self.chunk_count));
        meta.set("imatrix.chunk_size", Value::U32(self.chunk_size));
        let mut decls = Vec::new();
        let mut data: Vec<Vec<u8>> = Vec::new();
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        // ggml stores a tensor with its trailing extents of 1 dropped ([256, 1] as [256]).
        let dims = |a: u64, b: u64| if b == 1 { vec![a] } else { vec![a, b] };
        for (name, e) in &self.entries {
            let n_mat = e.counts.len().max(1) as u64;
            let n_cols = e.sums.len() as u64 / n_mat;
            decls.push(TensorDecl::new(
                format!("{name}.in_sum2"),
                dims(n_cols, n_mat),
                GgmlType::F32,
            ));
            data.push(le(&e.sums));
            decls.push(TensorDecl::new(
                format!("{name}.counts"),
                dims(1, n_mat),
                GgmlType::F32,
            ));
            let counts: Vec<f32> = e.counts.iter().map(|&c| c as f32).collect();
            data.push(le(&counts));
            if let Some(a) = &e.activations {
                decls.push(TensorDecl::new(
                    format!("{name}.in_sum"),
                    dims(n_cols, n_mat),
                    GgmlType::F32,
                ));
                data.push(le(a));
            }
        }
        let mut w = GgufWriter::create(path, &meta, &decls)?;
        for (d, bytes) in decls.iter().zip(&data) {
            w.write_tensor(&d.name, bytes)?;
        }
        Ok(w.finish()?)
    }
}

/// Little-endian reads that stop (None) at the end instead of panicking.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative i32 length.
    fn len(&mut self) -> Option<usize> {
        self.i32().and_then(|v| usize::try_from(v).ok())
    }
}
