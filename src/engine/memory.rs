//! Will it fit? An estimate of weights + KV cache + compute buffers against free memory, made
//! before loading so that a too-large context is refused with numbers instead of thrashing.
//!
//! The KV cache of deepseek2 in llama.cpp's MLA layout holds, per token and layer, one
//! `key_length` (kv_lora + rope = 576 for Lite) and one `value_length` (kv_lora = 512) vector:
//! 57.4 KiB per token for Lite in F16. That is read from the GGUF header, so it is exact for any
//! model size.

use crate::model::ModelShape;

/// Bytes per cached element for the KV cache types we offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheType {
    #[value(name = "f16")]
    F16,
    #[value(name = "q8_0")]
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

/// KV cache bytes for a context of `n_ctx` tokens.
pub fn kv_bytes(shape: &ModelShape, n_ctx: u32, cache: CacheType) -> u64 {
    (shape.kv_elements_per_token() as f64 * n_ctx as f64 * cache.bytes_per_element()) as u64
}

/// Compute buffers: logits for a batch plus a fixed allowance for the graph's scratch.
pub fn compute_bytes(shape: &ModelShape, n_batch: u32) -> u64 {
    (256 << 20) + shape.n_vocab * 4 * n_batch as u64
}

/// Weights + KV cache + compute buffers.
pub fn total(shape: &ModelShape, n_ctx: u32, n_batch: u32, cache: CacheType) -> u64 {
    shape.weight_bytes() + kv_bytes(shape, n_ctx, cache) + compute_bytes(shape, n_batch)
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
        let lite = ModelShape {
            n_layer: 27,
            n_expert: 64,
            n_expert_used: 6,
            n_head_kv: 1,
            key_length: 576,
            value_length: 512,
            n_vocab: 102400,
            n_ctx_train: 163840,
            ..Default::default()
        };
        assert_eq!(kv_bytes(&lite, 1, CacheType::F16), 58752); // 57.4 KiB
        assert_eq!(kv_bytes(&lite, 32768, CacheType::F16), 58752 * 32768); // 1836 MiB
    }
}
