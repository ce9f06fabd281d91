//! The GGUF v3 container: an owned model of its metadata, a validating zero-copy reader and a
//! streaming, atomic writer.
//!
//! GGUF is what llama.cpp loads, so the rules here are those of the authoritative reader, ggml's
//! `gguf.cpp` (vendored by `llama-cpp-sys-2`): what it rejects we reject, with an error that names
//! the file, the byte offset and the key or tensor involved. The layout is
//!
//! ```text
//! "GGUF" u32:version i64:n_tensors i64:n_kv  KV*  TensorInfo*  pad  (tensor data, pad)*
//! ```
//!
//! with all integers little-endian and every pad zero bytes up to a multiple of the alignment
//! (`general.alignment`, default 32) counted from the start of the file. Tensor data must be laid out
//! contiguously in info order: `offset[i] == Σ_{j<i} PAD(nbytes_j)`.
//!
//! The module is split by idea: [`value`] holds the metadata model, [`reader`] parses and
//! validates a file (treating it as hostile input), [`writer`] produces one, and [`error`] holds the
//! one error type both use.

pub mod error;
pub mod reader;
pub mod value;
pub mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo};
pub use value::{Array, Metadata, Value, ValueType};
pub use writer::{GgufWriter, TensorDecl};

use dscoder_quantize::GgmlType;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version we write; the reader also accepts version 2, whose little-endian layout is the same
/// and which ggml still loads.
pub const GGUF_VERSION: u32 = 3;
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`]; it must be a power-of-two `u32`.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_NAME`: tensor names must be strictly shorter than this many bytes.
pub const MAX_NAME_LEN: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// `GGUF_MAX_STRING_LENGTH`: longest string (key, value or name) ggml reads, in bytes.
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// `GGUF_MAX_ARRAY_ELEMENTS`: most elements ggml reads in one array.
pub const MAX_ARRAY_LEN: u64 = 1 << 30;

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn pad(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// The alignment `metadata` asks for: `general.alignment` if present, else [`DEFAULT_ALIGNMENT`].
/// Errors (as a message) when the key has the wrong type or is not a power of two, exactly the
/// cases `gguf.cpp` rejects.
pub fn alignment_of(metadata: &Metadata) -> Result<u64, String> {
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(Value::U32(a)) => Err(format!(
            "'{ALIGNMENT_KEY}' is {a}, which is not a power of two"
        )),
        Some(v) => Err(format!(
            "'{ALIGNMENT_KEY}' must be of type u32 but is {}",
            v.type_name()
        )),
    }
}

/// Number of elements of a tensor with these dims (missing dims count as 1), or `None` if it does
/// not fit in an `i64` (ggml's element counter).
pub fn n_elements(dims: &[u64]) -> Option<u64> {
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
}

/// Bytes of a tensor with these dims and type: `(ne0 / block) * type_size * ne1 * ne2 * ne3`.
/// `None` if `ne0` is not a whole number of blocks or anything overflows.
pub fn n_bytes(dims: &[u64], ty: GgmlType) -> Option<u64> {
    n_elements(dims)?;
    let ne0 = dims.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if ne0 % block != 0 {
        return None;
    }
    let row = (ne0 / block).checked_mul(ty.type_size() as u64)?;
    dims.iter()
        .skip(1)
        .try_fold(row, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_rounds_up_and_reports_overflow() {
        assert_eq!(pad(0, 32), Some(0));
        assert_eq!(pad(1, 32), Some(32));
        assert_eq!(pad(64, 32), Some(64));
        assert_eq!(pad(5, 1), Some(5));
        assert_eq!(pad(u64::MAX - 3, 32), None);
    }

    #[test]
    fn tensor_sizes_follow_ggml_nbytes() {
        assert_eq!(n_bytes(&[8, 3], GgmlType::F32), Some(96));
        assert_eq!(n_bytes(&[256, 2, 3], GgmlType::Q4_K), Some(864));
        assert_eq!(n_bytes(&[64, 0], GgmlType::Q4_0), Some(0));
        assert_eq!(n_bytes(&[], GgmlType::F16), Some(2));
        assert_eq!(n_bytes(&[33], GgmlType::Q4_0), None);
        assert_eq!(n_bytes(&[1 << 62], GgmlType::F32), None);
        assert_eq!(n_elements(&[1 << 32, 1 << 31]), None);
        assert_eq!(n_elements(&[1 << 32, 1 << 30]), Some(1 << 62));
    }

    #[test]
    fn alignment_key_is_checked() {
        let mut m = Metadata::new();
        assert_eq!(alignment_of(&m), Ok(DEFAULT_ALIGNMENT));
        m.insert(ALIGNMENT_KEY, 64u32);
        assert_eq!(alignment_of(&m), Ok(64));
        m.insert(ALIGNMENT_KEY, 96u32);
        assert!(alignment_of(&m).unwrap_err().contains("power of two"));
        m.insert(ALIGNMENT_KEY, 64u64);
        assert!(alignment_of(&m).unwrap_err().contains("u64"));
    }
}
