//! ggml block formats and quantizers, byte-identical to ggml's reference code.
//!
//! * [`quantize`] / [`quantize_with`] produce exactly the bytes of ggml's `ggml_quantize_chunk`
//!   without an importance matrix, for every type in [`GgmlType::QUANTIZABLE`] and on every
//!   [`Backend`]; [`quantize_weighted`] does the same with an importance vector. Where ggml
//!   aborts instead (IQ3_S on values so large that its grid search overflows) they return
//!   [`QuantizeError::Unencodable`].
//! * [`dequantize`] decodes any of them back to f32 with ggml's `dequantize_row_*` arithmetic.
//!
//! Modules:
//! * `types`: ids and block geometry (part of the GGUF format).
//! * `float`: ggml's exact f16/bf16 conversions.
//! * `simd`: backend detection, `nearest_int`, and the macro that compiles one portable
//!   lane-parallel kernel per instruction set.
//! * `legacy`: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-element blocks).
//! * `kquants`: Q4_K, Q5_K, Q6_K, Q8_K (256-element super-blocks); Q4_K, Q5_K and Q6_K also
//!   with an importance vector ([`quantize_weighted`]: ggml's `quantize_row_q{4,5,6}_K_impl`).
//! * `q3k`: Q3_K, also with an importance vector.
//! * `iq4`: IQ4_NL and IQ4_XS (a non-linear 4-bit table), also with an importance vector
//!   ([`quantize_weighted`]).
//! * `iq3`: IQ3_S and IQ3_XXS (groups of four on a 512- or 256-point grid), also with an
//!   importance vector.
//! * `grid_lanes`: the lane-parallel neighbour search and sums that `iq3` and `iq2` share.
//! * `iq2`: IQ2_XXS, IQ2_XS and IQ2_S (groups of eight on a 256-, 512- or 1024-point grid);
//!   IQ2_XXS and IQ2_XS only with an importance vector (as in ggml), so they are in
//!   [`has_weighted_quantizer`] but not in [`GgmlType::QUANTIZABLE`].
//!
//! Every format has a scalar reference (the spec, ported line by line from `ggml-quants.c`) and a
//! lane-parallel kernel; tests check they agree bytewise, and the root crate's oracle test checks
//! both against ggml itself.
// Index loops are deliberate: the references mirror ggml's C line by line, and the lane kernels
// index `[element][lane]` arrays so that each `for k in 0..N` loop is one SIMD operation.
#![allow(clippy::needless_range_loop)]

mod float;
mod grid_lanes;
mod iq2;
mod iq3;
mod iq4;
mod kquants;
mod legacy;
mod q3k;
mod simd;
mod types;

pub use float::{
    bf16_bits_to_f32, bf16_bytes_to_f32, f16_bits_to_f32, f16_bytes_to_f32, f32_to_bf16_bits,
    f32_to_f16_bits,
};
pub use simd::Backend;
pub use types::{GgmlType, UnknownType, QK_K};

use rayon::prelude::*;

/// Why a quantization or dequantization call was refused.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The input holds a NaN or infinity (ggml would silently produce garbage). `index` is the
    /// element index into `src`: row `index / n_per_row`, column `index % n_per_row` (the caller,
    /// which knows the tensor name and its first row, formats those).
    #[error("non-finite value {value} at element {index}")]
    NonFinite { index: usize, value: f32 },
    /// The row length is not a whole number of blocks of this type.
    #[error("row length {n_per_row} is not a multiple of the {ty} block size {}", .ty.block_size())]
    RowLength { ty: GgmlType, n_per_row: usize },
    /// A buffer does not have the size the other one implies.
    #[error("buffer size mismatch: expected {expected}, got {got}")]
    BufferSize { expected: usize, got: usize },
    /// dscoder has no quantizer (and no decoder) for this type; it can still read and copy it.
    #[error("dscoder cannot quantize to or decode {0}")]
    Unsupported(GgmlType),
    /// ggml's 1- to 3-bit grid types place points by importance: they need an importance matrix.
    #[error("{0} cannot be quantized without an importance matrix")]
    NeedsImportance(GgmlType),
    /// ggml's quantizer aborts on this block (IQ3_S: its grid search finds no finite distance,
    /// for values so large that `w·diff²` overflows), so there are no bytes to match. `index`
    /// is the block's first element in `src`.
    #[error("{ty} cannot encode the block at element {index}: its values are too large for the grid search (ggml aborts on it)")]
    Unencodable { ty: GgmlType, index: usize },
    /// The requested backend cannot run on this CPU.
    #[error("backend {0} is not available on this CPU")]
    BackendUnavailable(Backend),
}

/// Quantizes whole rows in parallel (rayon) with [`Backend::detect`].
///
/// `src` holds `src.len() / n_per_row` rows; `dst` must be exactly `rows × ty.row_bytes(n_per_row)`.
pub fn quantize(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
) -> Result<(), QuantizeError> {
    quantize_with(ty, src, n_per_row, dst, Backend::detect(), true)
}

/// Elements per parallel work item (whole blocks; blocks are independent so chunking never
/// changes bytes).
const PAR_CHUNK_ELEMS: usize = 16 * 1024;

/// Like [`quantize`] with an explicit backend and parallelism switch.
pub fn quantize_with(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
    backend: Backend,
    parallel: bool,
) -> Result<(), QuantizeError> {
    if !ty.has_quantizer() {
        return Err(QuantizeError::Unsupported(ty));
    }
    if !backend.is_available() {
        return Err(QuantizeError::BackendUnavailable(backend));
    }
    check_sizes(ty, src, n_per_row, dst)?;
    check_finite(src, parallel)?;

    // Rows are whole blocks, so the tensor is just a sequence of blocks.
    let bs = ty.block_size();
    let ts = ty.type_size();
    let chunk_blocks = (PAR_CHUNK_ELEMS / bs).max(1);
    let bad = if parallel {
        src.par_chunks(chunk_blocks * bs)
            .zip(dst.par_chunks_mut(chunk_blocks * ts))
            .enumerate()
            .filter_map(|(c, (s, d))| {
                run_blocks(ty, backend, s, d).map(|i| c * chunk_blocks * bs + i)
            })
            .min()
    } else {
        run_blocks(ty, backend, src, dst)
    };
    match bad {
        Some(index) => Err(QuantizeError::Unencodable { ty, index }),
        None => Ok(()),
    }
}

/// What every quantizer checks before it writes (here or in ggml, which would abort or write
/// garbage): `src` is whole rows of whole blocks of `ty`, `dst` exactly their bytes, and every
/// value finite. For callers that hand the rows to another quantizer.
pub fn check_input(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &[u8],
) -> Result<(), QuantizeError> {
    check_sizes(ty, src, n_per_row, dst)?;
    check_finite(src, true)
}

/// Whole rows of whole blocks in, exactly their bytes out; returns the bytes per row.
fn check_sizes(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &[u8],
) -> Result<usize, QuantizeError> {
    let row_bytes = ty
        .row_bytes(n_per_row)
        .filter(|_| n_per_row > 0)
        .ok_or(QuantizeError::RowLength { ty, n_per_row })?;
    if !src.len().is_multiple_of(n_per_row) {
        return Err(QuantizeError::BufferSize {
            expected: src.len().div_ceil(n_per_row) * n_per_row,
            got: src.len(),
        });
    }
    let expected = src.len() / n_per_row * row_bytes;
    if dst.len() != expected {
        return Err(QuantizeError::BufferSize {
            expected,
            got: dst.len(),
        });
    }
    Ok(row_bytes)
}

fn check_finite(src: &[f32], parallel: bool) -> Result<(), QuantizeError> {
    let bad = |s: &[f32]| {
        // Branch-free scan per 64 values (vectorises); locate the culprit only on a hit.
        for (c, chunk) in s.chunks(64).enumerate() {
            let mut any = false;
            for v in chunk {
                any |= !v.is_finite();
            }
            if any {
                return chunk
                    .iter()
                    .position(|v| !v.is_finite())
                    .map(|i| c * 64 + i);
            }
        }
        None
    };
    let found = if parallel {
        src.par_chunks(PAR_CHUNK_ELEMS)
            .enumerate()
            .filter_map(|(c, s)| bad(s).map(|i| c * PAR_CHUNK_ELEMS + i))
            .min()
    } else {
        bad(src)
    };
    match found {
        Some(index) => Err(QuantizeError::NonFinite {
            index,
            value: src[index],
        }),
        None => Ok(()),
    }
}

per_float!();

/// Quantizes whole blocks; `backend` has been checked to be available. Returns the first
/// element of the first block ggml would abort on (the IQ3 and IQ2 grids only), if any.
fn run_blocks(ty: GgmlType, backend: Backend, src: &[f32], dst: &mut [u8]) -> Option<usize> {
    use GgmlType::*;
    if matches!(ty, IQ3_S | IQ3_XXS) {
        return iq3_rows(ty, backend, src, None, dst).map(|b| b * QK_K);
    }
    if ty == IQ2_S {
        return iq2_rows(ty, backend, src, None, dst).map(|b| b * QK_K);
    }
    if backend == Backend::Scalar {
        let f: fn(&[f32], &mut [u8]) = match ty {
            F32 => float::f32_to_f32_slice,
            F16 => float::f32_to_f16_slice,
            BF16 => float::f32_to_bf16_slice,
            Q8_0 => legacy::q8_0_ref,
            Q4_0 => legacy::qx_0_ref::<4>,
            Q5_0 => legacy::qx_0_ref::<5>,
            Q4_1 => legacy::qx_1_ref::<4>,
            Q5_1 => legacy::qx_1_ref::<5>,
            Q4_K => kquants::qk45_ref::<4>,
            Q5_K => kquants::qk45_ref::<5>,
            Q6_K => kquants::q6k_ref,
            Q8_K => kquants::q8k_ref,
            Q3_K => q3k::q3k_ref,
            IQ4_NL => |x: &[f32], y: &mut [u8]| iq4::iq4_ref::<32>(x, None, y),
            IQ4_XS => |x: &[f32], y: &mut [u8]| iq4::iq4_ref::<256>(x, None, y),
            _ => unreachable!("quantize_with checks has_quantizer"),
        };
        if !ty.is_quantized() {
            f(src, dst);
            return None;
        }
        for (x, y) in src
            .chunks_exact(ty.block_size())
            .zip(dst.chunks_exact_mut(ty.type_size()))
        {
            f(x, y);
        }
        return None;
    }
    // SAFETY: `quantize_with` checked `backend.is_available()`.
    unsafe {
        match ty {
            F32 => f32_simd::run(backend, src, dst),
            F16 => f16_simd::run(backend, src, dst),
            BF16 => bf16_simd::run(backend, src, dst),
            Q8_0 => legacy::q8_0_simd::run(backend, src, dst),
            Q4_0 => legacy::q4_0_simd::run(backend, src, dst),
            Q5_0 => legacy::q5_0_simd::run(backend, src, dst),
            Q4_1 => legacy::q4_1_simd::run(backend, src, dst),
            Q5_1 => legacy::q5_1_simd::run(backend, src, dst),
            Q4_K => kquants::q4k_simd::run(backend, src, dst),
            Q5_K => kquants::q5k_simd::run(backend, src, dst),
            Q6_K => kquants::q6k_simd::run(backend, src, dst),
            Q8_K => kquants::q8k_simd::run(backend, src, dst),
            Q3_K => q3k::q3k_simd::run(backend, src, dst),
            IQ4_NL => iq4::iq4nl_simd::run(backend, src, None, dst),
            IQ4_XS => iq4::iq4xs_simd::run(backend, src, None, dst),
            _ => unreachable!("quantize_with checks has_quantizer"),
        }
    }
    None
}

/// IQ3_S or IQ3_XXS over whole super-blocks of one row (`qw`: its importance vector), on an
/// available backend: the first block ggml aborts on, if any.
fn iq3_rows(
    ty: GgmlType,
    backend: Backend,
    x: &[f32],
    qw: Option<&[f32]>,
    y: &mut [u8],
) -> Option<usize> {
    let xxs = ty == GgmlType::IQ3_XXS;
    if backend == Backend::Scalar {
        return if xxs {
            iq3::iq3_ref::<iq3::Xxs>(x, qw, y)
        } else {
            iq3::iq3_ref::<iq3::S>(x, qw, y)
        };
    }
    let mut bad = None;
    // SAFETY: both callers checked `backend.is_available()`.
    unsafe {
        if xxs {
            iq3::iq3xxs_simd::run(backend, x, qw, y, &mut bad)
        } else {
            iq3::iq3s_simd::run(backend, x, qw, y, &mut bad)
        }
    };
    bad
}

/// IQ2_XXS, IQ2_XS or IQ2_S over whole super-blocks of one row (`qw`: its importance vector,
/// which only IQ2_S may lack), on an available backend: the first block ggml aborts on, if any.
fn iq2_rows(
    ty: GgmlType,
    backend: Backend,
    x: &[f32],
    qw: Option<&[f32]>,
    y: &mut [u8],
) -> Option<usize> {
    use iq2::{iq2_ref, Xs, Xxs, S};
    if backend == Backend::Scalar {
        return match ty {
            GgmlType::IQ2_XXS => iq2_ref::<Xxs>(x, qw, y),
            GgmlType::IQ2_XS => iq2_ref::<Xs>(x, qw, y),
            _ => iq2_ref::<S>(x, qw, y),
        };
    }
    let mut bad = None;
    // SAFETY: both callers checked `backend.is_available()`.
    unsafe {
        match ty {
            GgmlType::IQ2_XXS => iq2::iq2xxs_simd::run(backend, x, qw, y, &mut bad),
            GgmlType::IQ2_XS => iq2::iq2xs_simd::run(backend, x, qw, y, &mut bad),
            _ => iq2::iq2s_simd::run(backend, x, qw, y, &mut bad),
        }
    };
    bad
}

/// Whether [`quantize_weighted`] has a kernel for `ty`.
pub fn has_weighted_quantizer(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::IQ4_NL
            | GgmlType::IQ4_XS
            | GgmlType::Q3_K
            | GgmlType::IQ3_S
            | GgmlType::IQ3_XXS
            | GgmlType::IQ2_XXS
            | GgmlType::IQ2_XS
            | GgmlType::IQ2_S
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

/// Like [`quantize_with`], weighing each column's error by `weights` (one importance value
/// per column, ggml's `quant_weights`): the bytes of `ggml_quantize_chunk` with that vector.
/// Only for the types [`has_weighted_quantizer`] names.
pub fn quantize_weighted(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    weights: &[f32],
    dst: &mut [u8],
    backend: Backend,
) -> Result<(), QuantizeError> {
    if !has_weighted_quantizer(ty) {
        return Err(QuantizeError::Unsupported(ty));
    }
    if !backend.is_available() {
        return Err(QuantizeError::BackendUnavailable(backend));
    }
    let row_bytes = check_sizes(ty, src, n_per_row, dst)?;
    if weights.len() != n_per_row {
        return Err(QuantizeError::BufferSize {
            expected: n_per_row,
            got: weights.len(),
        });
    }
    check_finite(src, true)?;
    let bad = src
        .par_chunks(n_per_row)
        .zip(dst.par_chunks_mut(row_bytes))
        .enumerate()
        .filter_map(|(row, (x, y))| {
            let w = Some(weights);
            if matches!(ty, GgmlType::IQ3_S | GgmlType::IQ3_XXS) {
                return iq3_rows(ty, backend, x, w, y).map(|b| row * n_per_row + b * QK_K);
            }
            if matches!(ty, GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ2_S) {
                return iq2_rows(ty, backend, x, w, y).map(|b| row * n_per_row + b * QK_K);
            }
            match (ty, backend) {
                (GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K, b) => {
                    kquants::weighted_row(ty, b, x, weights, y)
                }
                (GgmlType::Q3_K, Backend::Scalar) => {
                    for ((xb, wb), yb) in x
                        .chunks(QK_K)
                        .zip(weights.chunks(QK_K))
                        .zip(y.chunks_mut(110))
                    {
                        q3k::q3k_weighted_ref(xb, wb, yb)
                    }
                }
                // SAFETY: the backend was checked to be available above.
                (GgmlType::Q3_K, b) => unsafe { q3k::q3k_weighted_simd::run(b, x, w, y) },
                (GgmlType::IQ4_NL, Backend::Scalar) => iq4::iq4_ref::<32>(x, w, y),
                (_, Backend::Scalar) => iq4::iq4_ref::<256>(x, w, y),
                // SAFETY: the backend was checked to be available above.
                (GgmlType::IQ4_NL, b) => unsafe { iq4::iq4nl_simd::run(b, x, w, y) },
                (_, b) => unsafe { iq4::iq4xs_simd::run(b, x, w, y) },
            }
            None
        })
        .min();
    match bad {
        Some(index) => Err(QuantizeError::Unencodable { ty, index }),
        None => Ok(()),
    }
}

macro_rules! per_float {
    () => {
        simd::per_backend!(f32_simd, (src: &[f32], dst: &mut [u8]), avx2 => float::f32_to_f32_slice, avx512 => float::f32_to_f32_slice, neon => float::f32_to_f32_slice);
        simd::per_backend!(f16_simd, (src: &[f32], dst: &mut [u8]), avx2 => float::f32_to_f16_slice, avx512 => float::f32_to_f16_slice, neon => float::f32_to_f16_slice);
        simd::per_backend!(bf16_simd, (src: &[f32], dst: &mut [u8]), avx2 => float::f32_to_bf16_slice, avx512 => float::f32_to_bf16_slice, neon => float::f32_to_bf16_slice);
    };
}
use per_float;

/// Decodes `src` (whole blocks of `ty`) into `dst`, which must hold exactly the encoded elements.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantizeError> {
    use GgmlType::*;
    if !ty.has_quantizer() && !has_weighted_quantizer(ty) {
        return Err(QuantizeError::Unsupported(ty));
    }
    let bs = ty.block_size();
    let ts = ty.type_size();
    if !dst.len().is_multiple_of(bs) {
        return Err(QuantizeError::RowLength {
            ty,
            n_per_row: dst.len(),
        });
    }
    let expected = dst.len() / bs * ts;
    if src.len() != expected {
        return Err(QuantizeError::BufferSize {
            expected,
            got: src.len(),
        });
    }
    let f: fn(&[u8], &mut [f32]) = match ty {
        F32 => {
            for (s, d) in src.chunks_exact(4).zip(dst.iter_mut()) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
            return Ok(());
        }
        F16 => {
            f16_bytes_to_f32(src, dst);
            return Ok(());
        }
        BF16 => {
            bf16_bytes_to_f32(src, dst);
            return Ok(());
        }
        Q8_0 => legacy::dequant_q8_0,
        Q4_0 => legacy::dequant_qx_0::<4>,
        Q5_0 => legacy::dequant_qx_0::<5>,
        Q4_1 => legacy::dequant_qx_1::<4>,
        Q5_1 => legacy::dequant_qx_1::<5>,
        Q4_K => kquants::dequant_qk45::<4>,
        Q5_K => kquants::dequant_qk45::<5>,
        Q6_K => kquants::dequant_q6k,
        Q8_K => kquants::dequant_q8k,
        Q3_K => q3k::dequant_q3k,
        IQ4_NL => iq4::dequant_iq4::<32>,
        IQ4_XS => iq4::dequant_iq4::<256>,
        IQ3_S => iq3::dequant_iq3s,
        IQ3_XXS => iq3::dequant_iq3xxs,
        IQ2_XXS => iq2::dequant_iq2xxs,
        IQ2_XS => iq2::dequant_iq2xs,
        IQ2_S => iq2::dequant_iq2s,
        _ => unreachable!("checked has_quantizer above"),
    };
    for (x, y) in src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs)) {
        f(x, y);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
