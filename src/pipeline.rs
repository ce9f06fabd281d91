//! plan → quantize → write: the one path every output tensor takes.
//!
//! `convert` (safetensors in) and `quantize` (GGUF in) differ only in where rows come from. Both
//! hand this module a list of [`PlannedTensor`]s, each with a [`RowSource`], and it streams them
//! into a [`GgufWriter`] a chunk of rows at a time: read rows as f32, quantize them in parallel,
//! append the bytes. Memory stays bounded by the chunk size, whatever the model size, and the
//! quantized bytes cannot depend on which command produced them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use dscoder_quantize::{GgmlType, QuantizeError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::Interrupted;
use crate::gguf::{GgufError, GgufWriter, Metadata, TensorDecl};
use crate::model::TensorClass;
use crate::units::{bits_per_weight, human_bytes};

/// Floats per chunk: 16 Mi floats = 64 MiB of f32 working memory, plus the output bytes.
const CHUNK_ELEMENTS: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tensor '{tensor}': non-finite value {value} at row {row}, column {col}; refusing to quantize NaN or Inf")]
    NonFinite {
        tensor: String,
        row: u64,
        col: u64,
        value: f32,
    },
    #[error("tensor '{tensor}'")]
    Quantize {
        tensor: String,
        source: QuantizeError,
    },
    #[error("tensor '{tensor}': {message}")]
    Source { tensor: String, message: String },
    #[error("no output was written")]
    Interrupted(#[source] Interrupted),
}

/// Where a tensor's rows come from.
pub trait RowSource: Sync {
    /// The type the rows are stored as in the source.
    fn stored_type(&self) -> GgmlType;
    /// Fills `out` with whole rows starting at `first_row`, as f32.
    fn read_rows(&self, first_row: u64, out: &mut [f32]) -> Result<(), String>;
    /// The stored bytes of rows `[first_row, first_row + n_rows)`, when they can be copied as they are.
    fn raw_rows(&self, first_row: u64, n_rows: u64) -> Option<&[u8]>;
    /// The most rows one chunk may span (a stacked expert tensor reads one expert at a time, so
    /// its raw rows stay one contiguous slice).
    fn max_chunk_rows(&self) -> u64 {
        u64::MAX
    }
    /// Called once rows `[first_row, first_row + n_rows)` are written: a memory-mapped source
    /// drops those pages, so resident memory stays bounded on a model larger than RAM.
    fn release_rows(&self, _first_row: u64, _n_rows: u64) {}
}

/// One output tensor: what it is, what it becomes, and where its rows come from.
pub struct PlannedTensor<'a> {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub out_type: GgmlType,
    pub source: Box<dyn RowSource + 'a>,
    /// The importance vector (mean x² per input column, one block of `row_len` per matrix of a
    /// stacked expert tensor) the quantizer weighs errors by; see `crate::imatrix`.
    pub importance: Option<std::sync::Arc<Vec<f32>>>,
}

impl PlannedTensor<'_> {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn row_len(&self) -> u64 {
        self.dims[0]
    }

    pub fn n_rows(&self) -> u64 {
        self.n_elements() / self.row_len()
    }

    /// Bytes once written as `out_type`.
    pub fn out_bytes(&self) -> u64 {
        self.n_rows()
            * self
                .out_type
                .row_bytes(self.row_len() as usize)
                .unwrap_or(0) as u64
    }
}

/// Size totals, overall and by tensor class.
#[derive(Debug, Default, Clone)]
pub struct SizeSummary {
    pub by_class: BTreeMap<TensorClass, (u64, u64)>,
    pub elements: u64,
    pub bytes: u64,
}

impl SizeSummary {
    pub fn of(plan: &[PlannedTensor<'_>]) -> SizeSummary {
        let mut s = SizeSummary::default();
        for t in plan {
            s.add(&t.name, t.n_elements(), t.out_bytes());
        }
        s
    }

    pub fn add(&mut self, name: &str, elements: u64, bytes: u64) {
        let e = self.by_class.entry(TensorClass::of(name)).or_default();
        e.0 += elements;
        e.1 += bytes;
        self.elements += elements;
        self.bytes += bytes;
    }

    pub fn bpw(&self) -> f64 {
        bits_per_weight(self.bytes, self.elements)
    }

    /// A small table for people: class, weights, size, bits per weight.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<18} {:>14} {:>12} {:>8}\n",
            "class", "weights", "size", "bpw"
        );
        for (class, (elements, bytes)) in &self.by_class {
            out += &format!(
                "{:<18} {:>14} {:>12} {:>8.3}\n",
                class.label(),
                elements,
                human_bytes(*bytes),
                bits_per_weight(*bytes, *elements)
            );
        }
        out += &format!(
            "{:<18} {:>14} {:>12} {:>8.3}\n",
            "total",
            self.elements,
            human_bytes(self.bytes),
            self.bpw()
        );
        out
    }
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress_bar(total_bytes: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb
}

/// Writes `plan` to `dest` under `metadata`. On any error nothing is left at `dest`.
pub fn write_gguf(
    dest: &Path,
    metadata: &Metadata,
    plan: &[PlannedTensor<'_>],
) -> Result<WriteReport, PipelineError> {
    write_gguf_cancellable(dest, metadata, plan, &|| false)
}

/// [`write_gguf`], asking `cancel` between chunks; a cancelled write leaves nothing at `dest`
/// and fails with [`Interrupted`] as its cause.
pub fn write_gguf_cancellable(
    dest: &Path,
    metadata: &Metadata,
    plan: &[PlannedTensor<'_>],
    cancel: &dyn Fn() -> bool,
) -> Result<WriteReport, PipelineError> {
    let started = Instant::now();
    let decls: Vec<TensorDecl> = plan
        .iter()
        .map(|t| TensorDecl {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.out_type,
        })
        .collect();
    let mut writer = GgufWriter::create(dest, metadata, &decls)?;
    let total: u64 = plan.iter().map(|t| t.out_bytes()).sum();
    let pb = progress_bar(total);
    let mut buf = Vec::new();
    for t in plan {
        pb.set_message(t.name.clone());
        produce_tensor(t, &mut buf, &pb, cancel, &mut |bytes| {
            writer.write_tensor_chunk(&t.name, bytes)
        })?;
    }
    pb.finish_and_clear();
    let file_bytes = writer.finish()?;
    Ok(WriteReport {
        summary: SizeSummary::of(plan),
        file_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Quantizes whole rows: dscoder's own kernels (byte-identical to ggml's and several times
/// faster) where it has one, with or without the importance vector; otherwise ggml's own
/// `ggml_quantize_chunk`, which has every type and the importance-weighted variants.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    weights: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantizeError> {
    // ggml ignores the weights for these; our kernels give its bytes.
    let unweighted = matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    );
    if ty.has_quantizer() && (weights.is_none() || unweighted) {
        return dscoder_quantize::quantize(ty, src, row_len, dst);
    }
    if let Some(w) = weights.filter(|_| dscoder_quantize::has_weighted_quantizer(ty)) {
        let backend = dscoder_quantize::Backend::detect();
        return dscoder_quantize::quantize_weighted(ty, src, row_len, w, dst, backend);
    }
    if weights.is_none() && crate::llama_sys::ggml_requires_importance(ty) {
        return Err(QuantizeError::NeedsImportance(ty));
    }
    dscoder_quantize::check_input(ty, src, row_len, dst)?;
    // Some: check_input accepted the row length.
    let row_bytes = ty.row_bytes(row_len).unwrap_or(1);
    // Rows are independent: split them over the cores like our own kernels do.
    use rayon::prelude::*;
    let rows_per_job = (16 * 1024 / row_len).max(1);
    src.par_chunks(rows_per_job * row_len)
        .zip(dst.par_chunks_mut(rows_per_job * row_bytes))
        .for_each(|(s, d)| crate::llama_sys::ggml_quantize_rows(ty, s, row_len, weights, d));
    Ok(())
}

/// What [`write_gguf`] did.
#[derive(Debug, Clone)]
pub struct WriteReport {
    pub summary: SizeSummary,
    pub file_bytes: u64,
    pub seconds: f64,
}

/// Produces tensor `t`'s output bytes chunk by chunk (in `out`, reused) and hands each chunk
/// to `sink`.
fn produce_tensor(
    t: &PlannedTensor<'_>,
    out: &mut Vec<u8>,
    pb: &ProgressBar,
    cancel: &dyn Fn() -> bool,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), GgufError>,
) -> Result<(), PipelineError> {
    let row_len = t.row_len();
    let n_rows = t.n_rows();
    let out_row_bytes =
        t.out_type
            .row_bytes(row_len as usize)
            .ok_or_else(|| PipelineError::Quantize {
                tensor: t.name.clone(),
                source: QuantizeError::RowLength {
                    ty: t.out_type,
                    n_per_row: row_len as usize,
                },
            })?;
    let rows_per_chunk = (CHUNK_ELEMENTS as u64 / row_len)
        .max(1)
        .min(n_rows.max(1))
        .min(t.source.max_chunk_rows().max(1));
    // With an importance vector per matrix, a chunk stays inside one matrix.
    let rows_per_matrix = match &t.importance {
        Some(w) => n_rows / (w.len() as u64 / row_len).max(1),
        None => n_rows,
    }
    .max(1);
    let copy = t.source.stored_type() == t.out_type;
    let mut f32_buf: Vec<f32> = Vec::new();
    let mut first = 0u64;
    while first < n_rows {
        if cancel() {
            return Err(PipelineError::Interrupted(Interrupted));
        }
        let rows = rows_per_chunk
            .min(n_rows - first)
            .min(rows_per_matrix - first % rows_per_matrix);
        let raw = if copy {
            t.source.raw_rows(first, rows)
        } else {
            None
        };
        let bytes: &[u8] = match raw {
            // Same type in and out: the stored bytes go straight to the file.
            Some(raw) => raw,
            None => {
                f32_buf.resize((rows * row_len) as usize, 0.0);
                t.source.read_rows(first, &mut f32_buf).map_err(|message| {
                    PipelineError::Source {
                        tensor: t.name.clone(),
                        message,
                    }
                })?;
                out.resize(rows as usize * out_row_bytes, 0);
                let weights = t.importance.as_deref().map(|w| {
                    let m = (first / rows_per_matrix) as usize * row_len as usize;
                    &w[m..m + row_len as usize]
                });
                quantize_rows(t.out_type, &f32_buf, row_len as usize, weights, out).map_err(
                    |e| match e {
                        QuantizeError::NonFinite { index, value } => PipelineError::NonFinite {
                            tensor: t.name.clone(),
                            row: first + index as u64 / row_len,
                            col: index as u64 % row_len,
                            value,
                        },
                        // The index counts from the chunk; report it within the tensor.
                        QuantizeError::Unencodable { ty, index } => PipelineError::Quantize {
                            tensor: t.name.clone(),
                            source: QuantizeError::Unencodable {
                                ty,
                                index: (first * row_len) as usize + index,
                            },
                        },
                        source => PipelineError::Quantize {
                            tensor: t.name.clone(),
                            source,
                        },
                    },
                )?;
                out
            }
        };
        sink(bytes)?;
        pb.inc(bytes.len() as u64);
        t.source.release_rows(first, rows);
        first += rows;
    }
    if n_rows == 0 {
        sink(&[])?;
    }
    Ok(())
}
