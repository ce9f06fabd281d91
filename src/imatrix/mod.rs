//! Importance matrices: which input columns of each weight matter, measured on calibration text.
//!
//! A quantizer that knows the mean x² of every input column weighs its rounding errors by them,
//! so the columns the model actually uses keep their precision. ggml's 1- to 3-bit grid types
//! cannot be placed at all without it, and every k-quant gets better with it.
//!
//! * `file`: the two on-disk formats of llama.cpp (GGUF and legacy `.dat`), both ways.
//! * `collect`: computing one (`dscoder imatrix`): an eval callback sums x² over the input of
//!   every matrix multiplication while the model reads the text.
//! * [`attach`]: giving each planned tensor its vector, with llama-quantize's checks.

pub mod collect;
pub mod file;

use std::sync::Arc;

pub use file::{Entry, ImatrixError, ImportanceMatrix};

/// The default calibration text: whole CPython standard-library modules (PSF License 2.0); see
/// `calibration/SOURCES.md` and `scripts/make-calibration.sh`. Never the held-out evaluation
/// text (`tests/it/imatrix.rs` checks).
pub const CALIBRATION: &str = include_str!("calibration/code.txt");
/// The dataset name recorded for [`CALIBRATION`].
pub const CALIBRATION_NAME: &str = "dscoder-calibration-code";

use crate::pipeline::PlannedTensor;
use crate::recipe::{requires_imatrix, FileType};

/// Why a plan cannot use an importance matrix.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "the importance matrix has {got} values for tensor '{tensor}', which needs {expected} \
         ({cols} columns × {mats} matrices): it was computed for a different model"
    )]
    Size {
        tensor: String,
        got: usize,
        expected: usize,
        cols: u64,
        mats: u64,
    },
    #[error(
        "the importance matrix has no data for tensor '{tensor}', which {ty} cannot be written \
         without (compute it on a text that reaches that layer, or choose a type of 3 bits or more \
         for it)"
    )]
    Missing {
        tensor: String,
        ty: dscoder_quantize::GgmlType,
    },
}

/// Gives every tensor that will be quantized its importance vector, as llama-quantize does:
/// looked up by name, required to have `columns × matrices` values, and required for the
/// types ggml cannot write without one. Returns how many tensors got a vector.
pub fn attach(
    plan: &mut [PlannedTensor<'_>],
    imatrix: &ImportanceMatrix,
    ftype: FileType,
) -> Result<usize, AttachError> {
    let mut attached = 0;
    for t in plan.iter_mut() {
        if t.out_type == t.source.stored_type() || !t.out_type.is_quantized() {
            continue;
        }
        let cols = t.dims[0];
        let mats = t.dims.get(2).copied().unwrap_or(1);
        match imatrix.weights(&t.name) {
            Some(w) => {
                let expected = (cols * mats) as usize;
                if w.len() != expected {
                    return Err(AttachError::Size {
                        tensor: t.name.clone(),
                        got: w.len(),
                        expected,
                        cols,
                        mats,
                    });
                }
                t.importance = Some(Arc::new(w));
                attached += 1;
            }
            None if requires_imatrix(&t.name, t.out_type, ftype) => {
                return Err(AttachError::Missing {
                    tensor: t.name.clone(),
                    ty: t.out_type,
                });
            }
            None => {}
        }
    }
    Ok(attached)
}
