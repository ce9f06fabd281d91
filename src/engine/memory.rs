//! Will it fit? An estimate of weights + KV cache + compute buffers against free memory, made
//! before loading so that a too-large context is refused with numbers instead of thrashing.
//!
//! The KV cache of deepseek2 in llama.cpp's MLA layout holds, per token and layer, one
//! `key_length` (kv_lora + rope = 576 for Lite) and one `value_length` (kv_lora = 512) vector:
//! 57.4 KiB per token for Lite in F16. That is read from the GGUF header, so it is exact for any
//! model size.

use std::path::Path;

use super::offload::{ModelShape, WeightTensor};
use crate::gguf::GgufFile;

/// Bytes per cached element for the KV cache types we offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheType {
    F16,
    Q8_0,
}

impl CacheType {
    pub fn bytes_per_element(self) -> f64 {
        match self {
            CacheType::F16 => 2.0,
            CacheType::Q8_0 => 34.0 / 32.0,
        }
    }
}

/// What a model needs besides its context.
#[derive(Clone, Debug)]
pub struct ModelFootprint {
    pub weights: u64,
    /// Cached elements per token of context (all layers, K and V).
    pub kv_elements_per_token: u64,
    pub n_vocab: u64,
    pub n_ctx_train: u32,
    /// Tensor sizes and layer structure, for GPU offload planning.
    pub shape: ModelShape,
}

impl ModelFootprint {
    /// Reads the sizes from the GGUF header (the file is memory-mapped, not read).
    pub fn of(path: &Path) -> Result<ModelFootprint, String> {
        let f = GgufFile::open(path).map_err(|e| e.to_string())?;
        let arch = f
            .metadata
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{}: no general.architecture", path.display()))?
            .to_string();
        let u = |k: &str| {
            f.metadata
                .get(&format!("{arch}.{k}"))
                .and_then(|v| v.as_u32())
        };
        let n_layer = u("block_count").unwrap_or(0) as u64;
        let n_embd = u("embedding_length").unwrap_or(0) as u64;
        let n_head = u("attention.head_count").unwrap_or(1).max(1) as u64;
        let n_head_kv = u("attention.head_count_kv").unwrap_or(n_head as u32) as u64;
        let k = u("attention.key_length").map_or(n_embd / n_head, u64::from);
        let v = u("attention.value_length").map_or(n_embd / n_head, u64::from);
        let n_vocab = f
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(0, |a| a.len() as u64);
        Ok(ModelFootprint {
            weights: f.tensors.iter().map(|t| t.n_bytes()).sum(),
            kv_elements_per_token: n_layer * n_head_kv * (k + v),
            n_vocab,
            n_ctx_train: u("context_length").unwrap_or(4096),
            shape: ModelShape {
                tensors: f
                    .tensors
                    .iter()
                    .map(|t| WeightTensor {
                        name: t.name.clone(),
                        bytes: t.n_bytes(),
                    })
                    .collect(),
                n_layer: n_layer as usize,
                n_expert: u("expert_count").unwrap_or(0) as usize,
                n_expert_used: u("expert_used_count").unwrap_or(0) as usize,
            },
        })
    }

    pub fn kv_bytes(&self, n_ctx: u32, cache: CacheType) -> u64 {
        (self.kv_elements_per_token as f64 * n_ctx as f64 * cache.bytes_per_element()) as u64
    }

    /// Compute buffers: logits for a batch plus a fixed allowance for the graph's scratch.
    pub fn compute_bytes(&self, n_batch: u32) -> u64 {
        (256 << 20) + self.n_vocab * 4 * n_batch as u64
    }

    pub fn total(&self, n_ctx: u32, n_batch: u32, cache: CacheType) -> u64 {
        self.weights + self.kv_bytes(n_ctx, cache) + self.compute_bytes(n_batch)
    }
}

/// Memory the kernel says is available (Linux `MemAvailable`); `None` where unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite_kv_cache_is_57_kib_per_token_in_f16() {
        let lite = ModelFootprint {
            weights: 0,
            kv_elements_per_token: 27 * (576 + 512),
            n_vocab: 102400,
            n_ctx_train: 163840,
            shape: ModelShape {
                tensors: Vec::new(),
                n_layer: 27,
                n_expert: 64,
                n_expert_used: 6,
            },
        };
        assert_eq!(lite.kv_bytes(1, CacheType::F16), 58752); // 57.4 KiB
        assert_eq!(lite.kv_bytes(32768, CacheType::F16), 58752 * 32768); // 1836 MiB
    }
}
