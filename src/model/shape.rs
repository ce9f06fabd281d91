//! [`ModelShape`]: the one description of a model's size that every consumer reads.
//!
//! The quantization recipe needs the layer and expert counts, the memory estimate the KV width
//! and the vocabulary, the offload planner every tensor's size. They used to read the header
//! three times into three structs; now [`ModelShape::from_gguf`] reads it once.

use crate::gguf::{GgufFile, Metadata, Value};

use super::{arch_key, keys, ARCH};

/// A weight tensor's name and stored size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightTensor {
    pub name: String,
    pub bytes: u64,
    /// The ggml type id of the stored data.
    pub ggml_type: u32,
}

impl WeightTensor {
    /// The repeating layer a tensor belongs to (`blk.N.`).
    pub fn layer(&self) -> Option<usize> {
        super::layer_of(&self.name).map(|l| l as usize)
    }

    /// Routed experts, as llama.cpp's `--cpu-moe` pattern matches them.
    pub fn is_routed_expert(&self) -> bool {
        self.name.contains("_exps.")
    }

    /// llama.cpp keeps the token embedding on the CPU whatever the layer count.
    pub fn is_input(&self) -> bool {
        self.name.starts_with("token_embd.")
    }
}

/// The model as a whole. Fields a source does not provide are 0 (a checkpoint being converted
/// has no stored tensors yet).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelShape {
    /// `{arch}.block_count`.
    pub n_layer: u32,
    /// `{arch}.expert_count` (0 when absent).
    pub n_expert: u32,
    /// `{arch}.expert_used_count` (0 when absent).
    pub n_expert_used: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// Cached K and V widths per head (MLA: kv_lora + rope, and kv_lora).
    pub key_length: u32,
    pub value_length: u32,
    pub n_ctx_train: u32,
    /// Multi-head latent attention (`attention.key_length_mla`/`value_length_mla` present): the
    /// cache holds the compressed latent and rope key only, and V is a view of K.
    pub mla: bool,
    /// Entries of `tokenizer.ggml.tokens`.
    pub n_vocab: u64,
    /// Every stored tensor with its size, in file order.
    pub tensors: Vec<WeightTensor>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("{path}: key '{key}' is missing or not a {expected}")]
    Key {
        path: String,
        key: String,
        expected: &'static str,
    },
    #[error("{path}: architecture '{arch}' is not supported; dscoder handles deepseek2 models")]
    Architecture { path: String, arch: String },
}

impl ModelShape {
    /// Reads the shape of a deepseek2 GGUF from its header.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelShape, ShapeError> {
        let mut shape = Self::from_metadata(&file.path().display().to_string(), &file.metadata)?;
        shape.tensors = file
            .tensors
            .iter()
            .map(|t| WeightTensor {
                name: t.name.clone(),
                bytes: t.n_bytes(),
                ggml_type: t.ty.id(),
            })
            .collect();
        Ok(shape)
    }

    /// The hyper-parameters from GGUF metadata (no tensors). `block_count` is required; the
    /// attention widths default as llama.cpp's loader does.
    pub fn from_metadata(path: &str, metadata: &Metadata) -> Result<ModelShape, ShapeError> {
        let arch = metadata
            .get(keys::ARCHITECTURE)
            .and_then(Value::as_str)
            .ok_or_else(|| ShapeError::Key {
                path: path.to_string(),
                key: keys::ARCHITECTURE.to_string(),
                expected: "string",
            })?;
        if arch != ARCH {
            return Err(ShapeError::Architecture {
                path: path.to_string(),
                arch: arch.to_string(),
            });
        }
        let u = |k: &str| metadata.get(&arch_key(arch, k)).and_then(Value::as_u32);
        let block_count = arch_key(arch, keys::BLOCK_COUNT);
        let n_layer = u(keys::BLOCK_COUNT).ok_or_else(|| ShapeError::Key {
            path: path.to_string(),
            key: block_count,
            expected: "u32",
        })?;
        let n_embd = u(keys::EMBEDDING_LENGTH).unwrap_or(0);
        let n_head = u(keys::HEAD_COUNT).unwrap_or(1).max(1);
        Ok(ModelShape {
            n_layer,
            n_expert: u(keys::EXPERT_COUNT).unwrap_or(0),
            n_expert_used: u(keys::EXPERT_USED_COUNT).unwrap_or(0),
            n_embd,
            n_head,
            n_head_kv: u(keys::HEAD_COUNT_KV).unwrap_or(n_head),
            key_length: u(keys::KEY_LENGTH).unwrap_or(n_embd / n_head),
            value_length: u(keys::VALUE_LENGTH).unwrap_or(n_embd / n_head),
            n_ctx_train: u(keys::CONTEXT_LENGTH).unwrap_or(4096),
            mla: u("attention.key_length_mla").unwrap_or(0) != 0
                && u("attention.value_length_mla").unwrap_or(0) != 0,
            n_vocab: metadata
                .get(keys::TOKENS)
                .and_then(Value::as_array)
                .map_or(0, |a| a.len() as u64),
            tensors: Vec::new(),
        })
    }

    /// Bytes of all stored tensors.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// Cached elements per token of context (all layers, K and V). With MLA llama.cpp stores
    /// no V cache: V is the first `value_length` elements of each cached K row.
    pub fn kv_elements_per_token(&self) -> u64 {
        let v = if self.mla { 0 } else { self.value_length };
        self.n_layer as u64 * self.n_head_kv as u64 * (self.key_length as u64 + v as u64)
    }
}
