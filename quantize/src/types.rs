//! The ggml tensor types dscoder reads and writes, with their block geometry.
//!
//! Ids and sizes are those of `ggml/include/ggml.h` and `ggml/src/ggml-common.h`; a GGUF file stores
//! the id, so these numbers are part of the file format and must never change.

use std::fmt;
use std::str::FromStr;

/// Elements in one K-quant super-block.
pub const QK_K: usize = 256;

/// A ggml tensor type: every id of the vendored ggml (`enum ggml_type`), so any GGUF that
/// llama.cpp runs can be read. Only [`GgmlType::has_quantizer`] types can be written by
/// `dscoder-quantize`; the others are read, sized and passed through.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    Q2_0,
}

/// One row of the type table: id, ggml name, elements per block, bytes per block.
struct Traits {
    id: u32,
    name: &'static str,
    block: usize,
    size: usize,
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    /// The types `dscoder-quantize` can write (and decode), in id order.
    pub const QUANTIZABLE: [GgmlType; 18] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ3_XXS,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::BF16,
    ];

    /// Sizes from `ggml/src/ggml-common.h` (the `static_assert`s beside each block struct) and
    /// `type_traits` in `ggml/src/ggml.c`; a test checks every row against the linked ggml.
    const fn traits(self) -> Traits {
        let (id, name, block, size) = match self {
            GgmlType::F32 => (0, "f32", 1, 4),
            GgmlType::F16 => (1, "f16", 1, 2),
            GgmlType::Q4_0 => (2, "q4_0", 32, 18),
            GgmlType::Q4_1 => (3, "q4_1", 32, 20),
            GgmlType::Q5_0 => (6, "q5_0", 32, 22),
            GgmlType::Q5_1 => (7, "q5_1", 32, 24),
            GgmlType::Q8_0 => (8, "q8_0", 32, 34),
            GgmlType::Q8_1 => (9, "q8_1", 32, 36),
            GgmlType::Q2_K => (10, "q2_K", 256, 84),
            GgmlType::Q3_K => (11, "q3_K", 256, 110),
            GgmlType::Q4_K => (12, "q4_K", 256, 144),
            GgmlType::Q5_K => (13, "q5_K", 256, 176),
            GgmlType::Q6_K => (14, "q6_K", 256, 210),
            GgmlType::Q8_K => (15, "q8_K", 256, 292),
            GgmlType::IQ2_XXS => (16, "iq2_xxs", 256, 66),
            GgmlType::IQ2_XS => (17, "iq2_xs", 256, 74),
            GgmlType::IQ3_XXS => (18, "iq3_xxs", 256, 98),
            GgmlType::IQ1_S => (19, "iq1_s", 256, 50),
            GgmlType::IQ4_NL => (20, "iq4_nl", 32, 18),
            GgmlType::IQ3_S => (21, "iq3_s", 256, 110),
            GgmlType::IQ2_S => (22, "iq2_s", 256, 82),
            GgmlType::IQ4_XS => (23, "iq4_xs", 256, 136),
            GgmlType::I8 => (24, "i8", 1, 1),
            GgmlType::I16 => (25, "i16", 1, 2),
            GgmlType::I32 => (26, "i32", 1, 4),
            GgmlType::I64 => (27, "i64", 1, 8),
            GgmlType::F64 => (28, "f64", 1, 8),
            GgmlType::IQ1_M => (29, "iq1_m", 256, 56),
            GgmlType::BF16 => (30, "bf16", 1, 2),
            GgmlType::TQ1_0 => (34, "tq1_0", 256, 54),
            GgmlType::TQ2_0 => (35, "tq2_0", 256, 66),
            GgmlType::MXFP4 => (39, "mxfp4", 32, 17),
            GgmlType::NVFP4 => (40, "nvfp4", 64, 36),
            GgmlType::Q1_0 => (41, "q1_0", 128, 18),
            GgmlType::Q2_0 => (42, "q2_0", 64, 18),
        };
        Traits {
            id,
            name,
            block,
            size,
        }
    }

    /// The `enum ggml_type` id stored in GGUF tensor infos.
    pub const fn id(self) -> u32 {
        self.traits().id
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's own name (`ggml_type_name`), e.g. `q4_K`.
    pub const fn name(self) -> &'static str {
        self.traits().name
    }

    /// Elements per block (1 for plain float and integer types).
    pub const fn block_size(self) -> usize {
        self.traits().block
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        self.traits().size
    }

    /// True when `dscoder-quantize` can produce (and decode) this type.
    pub fn has_quantizer(self) -> bool {
        Self::QUANTIZABLE.contains(&self)
    }

    /// True for the block-quantized types (everything but the plain float and integer types).
    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of one row of `n` elements, or `None` when `n` is not a whole number of blocks.
    pub const fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        Some(n / self.block_size() * self.type_size())
    }

    /// Bits per weight of a full row.
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a type name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tensor type '{0}' (dscoder can write f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, q8_k)")]
pub struct UnknownType(pub String);

impl FromStr for GgmlType {
    type Err = UnknownType;

    /// Case-insensitive ggml name, e.g. `q4_k` or `Q4_K`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(&lower))
            .ok_or_else(|| UnknownType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml_common() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(t.name().parse::<GgmlType>().unwrap(), t);
        }
        assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_bytes(1408), None);
        assert_eq!(GgmlType::Q6_K.bits_per_weight(), 6.5625);
        assert!(GgmlType::from_id(4).is_none());
    }
}
