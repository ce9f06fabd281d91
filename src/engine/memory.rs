//! Will it fit? An estimate of weights + KV cache + compute buffers against free memory, made
//! before loading so that a too-large context is refused with numbers instead of thrashing.
//!
//! The KV cache of deepseek2 in llama.cpp's MLA layout holds, per token and layer, one
//! `key_length` vector (kv_lora + rope = 576 for Lite) and no V (V is a view of the latent part
//! of K): 30.4 KiB per token for Lite in F16, 16.1 KiB in q8_0, so Lite's whole 128K context is
//! 3.8 GiB in F16 and 2.0 GiB in q8_0. Files without MLA keys cache K and V per head. Read from
//! the GGUF header, so it is exact for any model size; a test checks it against the KV buffer
//! llama.cpp allocates.

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

/// Memory a new process can use: the kernel's `MemAvailable`, or less inside a memory cgroup
/// (a container, a systemd slice) whose limit leaves less room. `None` where unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let host = kb * 1024;
    Some(cgroup_room().map_or(host, |c| c.min(host)))
}

/// The room left under this process's memory cgroup limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), counting the cgroup's page cache as reclaimable. `None` without
/// a limit.
fn cgroup_room() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    groups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2: one hierarchy.
            room("", path, "memory.max", "memory.current", "file ")
        } else if controllers.split(',').any(|c| c == "memory") {
            room(
                "memory/",
                path,
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "cache ",
            )
        } else {
            None
        }
    })
}

/// Limit minus the usage that is not page cache, read from one cgroup's files.
fn room(root: &str, path: &str, limit: &str, usage: &str, cache_key: &str) -> Option<u64> {
    let read = |file: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{root}{path}/{file}"));
    // v2 says "max" without a limit; v1 a page-rounded i64::MAX.
    let limit: u64 = read(limit).ok()?.trim().parse().ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = read(usage).ok()?.trim().parse().ok()?;
    let cache: u64 = read("memory.stat")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(cache_key)?.trim().parse().ok())
        })
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(cache)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite_kv_cache_is_the_mla_key_rows_only() {
        let lite = ModelShape {
            n_layer: 27,
            n_expert: 64,
            n_expert_used: 6,
            n_head_kv: 1,
            key_length: 576,
            value_length: 512,
            n_vocab: 102400,
            n_ctx_train: 163840,
            mla: true,
            ..Default::default()
        };
        assert_eq!(kv_bytes(&lite, 1, CacheType::F16), 27 * 576 * 2); // 30.4 KiB
                                                                      // The 128K context in q8_0: 27 layers x 576 x 34/32 bytes x 131072 = 2.03 GiB.
        assert_eq!(
            kv_bytes(&lite, 131072, CacheType::Q8_0),
            27 * 576 * 34 / 32 * 131072
        );
        // Without MLA keys (an older file) K and V are both cached.
        let old = ModelShape { mla: false, ..lite };
        assert_eq!(kv_bytes(&old, 1, CacheType::F16), 27 * (576 + 512) * 2);
    }
}
