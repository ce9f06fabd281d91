//! The deepseek2 model's facts, in one place: GGUF metadata keys, tensor names and classes, the
//! model's shape ([`ModelShape`], read once from a GGUF header), and the special tokens of its
//! chat and fill-in-the-middle formats ([`tokens`]).
//!
//! The converter, the quantization recipes, `info`, the memory estimate and the offload planner
//! all ask this module what a tensor is and how big the model is, so a rename in llama.cpp's
//! naming is a one-line change here. Names follow `../shared/docs/deepseek2-gguf.md` §3-4.

mod shape;
pub mod tokens;
mod validate;

pub use shape::{ModelShape, ShapeError, WeightTensor};
pub use validate::{validate, ValidateError};

/// `general.architecture` of every file we produce.
pub const ARCH: &str = "deepseek2";

/// Metadata keys (without the `deepseek2.` prefix) that the quantization rules read.
pub mod keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const FILE_TYPE: &str = "general.file_type";
    pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
    pub const ALIGNMENT: &str = "general.alignment";
    pub const NAME: &str = "general.name";
    pub const BLOCK_COUNT: &str = "block_count";
    pub const EXPERT_COUNT: &str = "expert_count";
    pub const EXPERT_USED_COUNT: &str = "expert_used_count";
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    pub const CONTEXT_LENGTH: &str = "context_length";
    pub const HEAD_COUNT: &str = "attention.head_count";
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    pub const KEY_LENGTH: &str = "attention.key_length";
    pub const VALUE_LENGTH: &str = "attention.value_length";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
}

/// `{arch}.{key}`, e.g. `deepseek2.block_count`.
pub fn arch_key(arch: &str, key: &str) -> String {
    format!("{arch}.{key}")
}

/// What part of the model a tensor belongs to. Expert-aware recipes and size reports speak in
/// these classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorClass {
    /// `token_embd.weight`.
    Embedding,
    /// `output.weight` (the LM head).
    Output,
    /// Attention projections: `attn_q`, `attn_q_a`, `attn_q_b`, `attn_kv_a_mqa`, `attn_k_b`,
    /// `attn_v_b`, `attn_kv_b`, `attn_output`.
    Attention,
    /// Routed experts: `ffn_{gate,up,down}_exps`.
    RoutedExperts,
    /// Shared experts (`ffn_*_shexp`) and the dense FFN of the leading dense layers.
    SharedFfn,
    /// The MoE router `ffn_gate_inp` (always kept as written).
    Router,
    /// RMS norm weights and anything else one-dimensional.
    Norm,
    /// Anything this table does not know.
    Other,
}

impl TensorClass {
    pub fn label(self) -> &'static str {
        match self {
            TensorClass::Embedding => "embedding",
            TensorClass::Output => "output",
            TensorClass::Attention => "attention",
            TensorClass::RoutedExperts => "routed experts",
            TensorClass::SharedFfn => "shared/dense ffn",
            TensorClass::Router => "router",
            TensorClass::Norm => "norms",
            TensorClass::Other => "other",
        }
    }

    /// Classifies a GGUF tensor name.
    pub fn of(name: &str) -> TensorClass {
        let base = name.strip_prefix("blk.").map_or(name, |rest| {
            // Skip the layer number: "blk.7.attn_q.weight" -> "attn_q.weight".
            rest.split_once('.').map_or(rest, |(_, tail)| tail)
        });
        if name == "token_embd.weight" {
            TensorClass::Embedding
        } else if name == "output.weight" {
            TensorClass::Output
        } else if base.contains("_norm") {
            TensorClass::Norm
        } else if base.starts_with("ffn_gate_inp") || base.starts_with("exp_probs_b") {
            TensorClass::Router
        } else if base.starts_with("attn_") {
            TensorClass::Attention
        } else if base.starts_with("ffn_") && base.contains("_exps") {
            TensorClass::RoutedExperts
        } else if base.starts_with("ffn_") {
            TensorClass::SharedFfn
        } else {
            TensorClass::Other
        }
    }
}

/// The layer number of a `blk.N.` tensor (`sscanf("blk.%d.")` in llama.cpp).
pub fn layer_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("blk.")?;
    let (num, _) = rest.split_once('.')?;
    num.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_deepseek2_tensor() {
        let table = [
            ("token_embd.weight", TensorClass::Embedding),
            ("output.weight", TensorClass::Output),
            ("output_norm.weight", TensorClass::Norm),
            ("blk.0.attn_norm.weight", TensorClass::Norm),
            ("blk.0.attn_kv_a_norm.weight", TensorClass::Norm),
            ("blk.0.attn_q_a_norm.weight", TensorClass::Norm),
            ("blk.0.ffn_norm.weight", TensorClass::Norm),
            ("blk.0.attn_q.weight", TensorClass::Attention),
            ("blk.3.attn_q_a.weight", TensorClass::Attention),
            ("blk.3.attn_q_b.weight", TensorClass::Attention),
            ("blk.3.attn_kv_a_mqa.weight", TensorClass::Attention),
            ("blk.3.attn_k_b.weight", TensorClass::Attention),
            ("blk.3.attn_v_b.weight", TensorClass::Attention),
            ("blk.3.attn_output.weight", TensorClass::Attention),
            ("blk.0.ffn_gate.weight", TensorClass::SharedFfn),
            ("blk.0.ffn_down.weight", TensorClass::SharedFfn),
            ("blk.1.ffn_up_shexp.weight", TensorClass::SharedFfn),
            ("blk.1.ffn_down_exps.weight", TensorClass::RoutedExperts),
            ("blk.1.ffn_gate_exps.weight", TensorClass::RoutedExperts),
            ("blk.1.ffn_gate_inp.weight", TensorClass::Router),
            ("blk.1.exp_probs_b.bias", TensorClass::Router),
        ];
        for (name, class) in table {
            assert_eq!(TensorClass::of(name), class, "{name}");
        }
        assert_eq!(layer_of("blk.26.ffn_down_exps.weight"), Some(26));
        assert_eq!(layer_of("output.weight"), None);
    }
}
