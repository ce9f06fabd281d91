//! Expert prefetch for mapped weights that do not all fit in memory (the low-memory mode on a
//! small machine).
//!
//! A token reads every layer's attention and shared weights but only the routed experts its
//! router picks (6 of 64 for Lite). When the file is larger than the page cache can hold, those
//! expert slices are often on disk, and the matmul that reads them page-faults them in one
//! small synchronous read at a time. But a layer's routing is known before its experts are
//! multiplied: llama.cpp computes the `ffn_moe_topk` node first. An eval callback
//! (`llama_sys::eval_callback`) sees that node and asks the kernel for every chosen expert's
//! gate, up and down slices at once (`posix_fadvise(WILLNEED)`, which starts the reads
//! asynchronously into the page cache), so the disk works on all of them in parallel while the
//! matmul begins.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gguf::GgufFile;
use crate::llama_sys::eval_callback::{self, Node, Observer};

/// The expert slices of one model file, by layer.
pub struct Prefetcher {
    file: std::fs::File,
    n_expert: usize,
    /// Per layer: `(file offset of expert 0, bytes per expert)` of each `*_exps` tensor.
    layers: Vec<Vec<(u64, u64)>>,
    /// Slices requested, for tests and logs.
    requests: AtomicU64,
}

impl Prefetcher {
    /// The expert tensors of `gguf`; `None` for a model without routed experts.
    pub fn new(gguf: &GgufFile, n_expert: usize, n_layer: usize) -> Option<Prefetcher> {
        if n_expert == 0 {
            return None;
        }
        let mut layers = vec![Vec::new(); n_layer];
        for t in &gguf.tensors {
            let Some(layer) = crate::model::layer_of(&t.name) else {
                continue;
            };
            if !t.name.contains("_exps.") || layer as usize >= n_layer {
                continue;
            }
            let per = t.n_bytes() / n_expert as u64;
            layers[layer as usize].push((gguf.data_offset + t.offset, per));
        }
        if layers.iter().all(Vec::is_empty) {
            return None;
        }
        let file = std::fs::File::open(gguf.path()).ok()?;
        Some(Prefetcher {
            file,
            n_expert,
            layers,
            requests: AtomicU64::new(0),
        })
    }

    /// Expert slices asked for so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Makes the next context created on this thread call [`Prefetcher::on_node`]; `self` must
    /// outlive that context (the engine owns it, and sessions borrow the engine).
    pub fn install(&self) -> bool {
        let (callback, data) = eval_callback::observer_callback(self);
        eval_callback::set_next_eval_callback(callback, data)
    }

    /// Asks for the chosen experts' slices of `layer`.
    fn experts_chosen(&self, layer: usize, chosen: &[bool]) {
        let Some(slices) = self.layers.get(layer) else {
            return;
        };
        for (e, _) in chosen.iter().enumerate().filter(|(_, c)| **c) {
            for &(base, per) in slices {
                let offset = base + e as u64 * per;
                // SAFETY: an advisory call on our own open descriptor; any range is allowed.
                unsafe {
                    libc::posix_fadvise(
                        self.file.as_raw_fd(),
                        offset as libc::off_t,
                        per as libc::off_t,
                        libc::POSIX_FADV_WILLNEED,
                    );
                }
                self.requests.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The layer of a router's top-k node (`ffn_moe_topk-12`).
fn topk_layer(name: &str) -> Option<usize> {
    name.strip_prefix("ffn_moe_topk-")?.parse().ok()
}

/// Wants the routers' top-k nodes, and prefetches what they chose.
impl Observer for Prefetcher {
    fn wants(&self, node: &Node<'_>) -> bool {
        topk_layer(node.name()).is_some()
    }

    fn observe(&self, node: &Node<'_>) {
        let Some(layer) = topk_layer(node.name()) else {
            return;
        };
        let (n_used, n_tokens) = node.shape();
        let mut chosen = vec![false; self.n_expert];
        for j in 0..n_tokens {
            for i in 0..n_used {
                if let Some(e) = node.i32_at(i, j) {
                    if let Some(c) = chosen.get_mut(e as usize) {
                        *c = true;
                    }
                }
            }
        }
        self.experts_chosen(layer, &chosen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_nodes_name_their_layer() {
        assert_eq!(topk_layer("ffn_moe_topk-12"), Some(12));
        assert_eq!(topk_layer("ffn_moe_topk"), None);
        assert_eq!(topk_layer("ffn_moe_weights-3"), None);
    }
}
