//! Which weight layout a model loads with, and what to tell the user about memory: policy only.
//! The mechanism (the `use_extra_bufts` flag reaching llama.cpp) is `llama_sys::weight_layout`.
//!
//! llama.cpp's CPU back-end can copy Q4_0/Q4_K/IQ4_NL (and, with AVX-512, Q2_K) weights into
//! interleaved "repacked" buffers for its AVX2 and NEON kernels. The copy is anonymous memory
//! on top of the mapped file, whose pages stay in the page cache: a 9.65 GiB Lite Q4_K_M peaks at
//! 15.8 GB. Mapped without repacking, the weights are the page cache's pages alone, shared and
//! evictable, so a model larger than RAM still runs (from disk) instead of thrashing two copies.
//!
//! Measured (BENCHMARKS.md, "Weight layouts"): with AVX-512 kernels the plain layout is faster
//! for prompt processing than the repacked AVX2 one as well as smaller; in a build with AMX
//! kernels the extra buffers include ggml's AMX buffer type, and llama.cpp aborts on deepseek2
//! with it (`GGML_ASSERT(*cur_backend_id != -1)`: the AMX type cannot run the MLA's 3-D,
//! non-contiguous `attn_k_b`/`attn_v_b` matmuls, and no other back-end can read its tiles). So
//! the extra buffers are used only with AVX2-class kernels (or NEON), and only when both copies
//! fit in memory.

use crate::model::ModelShape;
use crate::units::human_bytes;

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayoutRequest {
    /// Chosen from the CPU kernels and the memory there is.
    #[default]
    Auto,
    /// `--low-memory`: mapped, never repacked.
    LowMemory,
    /// `--repack`: llama.cpp's extra buffers whenever they apply.
    Repack,
    /// llama.cpp's own default, whatever the kernels (AMX included): a diagnostic to reproduce
    /// its behaviour (`DSCODER_LLAMA_DEFAULT_BUFFERS=1`, BENCHMARKS.md "Laptops").
    LlamaDefault,
}

/// The CPU kernels compiled into the linked ggml.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuKernels {
    pub avx2: bool,
    pub avx512: bool,
    pub avx512_vnni: bool,
    pub avx512_bf16: bool,
    pub amx: bool,
    pub neon: bool,
}

impl CpuKernels {
    /// What this build's ggml was compiled with.
    pub fn linked() -> CpuKernels {
        crate::llama_sys::cpu_kernels()
    }

    /// For logs and `dscoder info --system`: "AVX-512 (VNNI, BF16)", "AVX2", ...
    pub fn describe(&self) -> String {
        let mut extras = Vec::new();
        if self.avx512_vnni {
            extras.push("VNNI");
        }
        if self.avx512_bf16 {
            extras.push("BF16");
        }
        if self.amx {
            extras.push("AMX");
        }
        let base = if self.avx512 {
            "AVX-512"
        } else if self.avx2 {
            "AVX2"
        } else if self.neon {
            "NEON"
        } else {
            "scalar/SSE"
        };
        if extras.is_empty() {
            base.to_string()
        } else {
            format!("{base} ({})", extras.join(", "))
        }
    }
}

/// Whether a ggml type is one the CPU back-end repacks with these kernels (the weights that
/// the extra buffers copy; shape conditions aside).
pub fn repacked_type(ggml_type: u32, k: &CpuKernels) -> bool {
    match ggml_type {
        2 | 12 | 20 => k.avx2 || k.neon, // Q4_0, Q4_K, IQ4_NL
        10 => k.avx512,                  // Q2_K
        13 | 14 => k.neon,               // Q5_K, Q6_K
        _ => false,
    }
}

/// Bytes of the weights the extra buffers would copy.
pub fn repacked_bytes(shape: &ModelShape, k: &CpuKernels) -> u64 {
    shape
        .tensors
        .iter()
        .filter(|t| repacked_type(t.ggml_type, k))
        .map(|t| t.bytes)
        .sum()
}

/// The decision and the reason for it, said in the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// llama.cpp's `use_extra_bufts`.
    pub extra_buffers: bool,
    pub reason: String,
}

/// Chooses the layout. `budget` is the memory there is (None: unknown), `anon` what the
/// context needs beside the weights (KV cache, compute buffers).
pub fn choose(
    request: LayoutRequest,
    kernels: &CpuKernels,
    settable: bool,
    weights: u64,
    repacked: u64,
    anon: u64,
    budget: Option<u64>,
) -> Result<Layout, String> {
    let mapped = |reason: String| Layout {
        extra_buffers: false,
        reason,
    };
    if !settable {
        return Ok(Layout {
            extra_buffers: true,
            reason: "llama.cpp's default (this platform's build cannot turn repacking off)".into(),
        });
    }
    match request {
        LayoutRequest::LowMemory => {
            return Ok(mapped("mapped from the file (--low-memory)".into()));
        }
        LayoutRequest::Repack if kernels.amx => {
            return Err("--repack: this build's ggml has AMX kernels, whose buffers llama.cpp cannot use for \
                 deepseek2's attention (it aborts); leave --repack out"
                .into());
        }
        LayoutRequest::Repack => {
            return Ok(Layout {
                extra_buffers: true,
                reason: "repacked for the CPU kernels (--repack)".into(),
            })
        }
        LayoutRequest::LlamaDefault => {
            return Ok(Layout {
                extra_buffers: true,
                reason: "in llama.cpp's default extra buffers (DSCODER_LLAMA_DEFAULT_BUFFERS)"
                    .into(),
            })
        }
        LayoutRequest::Auto => {}
    }
    if repacked == 0 {
        return Ok(mapped(
            "mapped from the file (no tensor of a type the CPU kernels repack)".into(),
        ));
    }
    if kernels.amx {
        return Ok(mapped(
            "mapped from the file (AMX build: its repacked buffers abort on deepseek2)".into(),
        ));
    }
    if let Some(b) = budget {
        if weights + repacked + anon > b {
            return Ok(mapped(format!(
                "mapped from the file, low-memory mode: the file ({}) and a repacked copy ({}) \
                 would not both fit in the {} available",
                human_bytes(weights),
                human_bytes(repacked),
                human_bytes(b)
            )));
        }
    }
    if kernels.avx512 {
        return Ok(mapped(
            "mapped from the file (AVX-512 kernels read the plain layout faster than the repacked one)"
                .into(),
        ));
    }
    Ok(Layout {
        extra_buffers: true,
        reason: format!(
            "repacked for the {} kernels ({} copied; --low-memory keeps them mapped)",
            kernels.describe(),
            human_bytes(repacked)
        ),
    })
}

/// What to say when the weights do not all fit in the memory there is beside the context's own
/// buffers: they stay mapped and are read from disk as generation needs them. `None` when they
/// fit.
pub fn weights_advice(weights: u64, anon: u64, budget: Option<u64>) -> Option<String> {
    let b = budget?;
    if weights + anon <= b {
        return None;
    }
    let room = b.saturating_sub(anon);
    Some(format!(
        "the weights ({}) do not fit in the {} of memory left beside the KV cache and compute buffers ({}): \
         they stay mapped and the experts each token needs are read from disk, which is slower. A file of \
         at most {} would fit (a 3-bit GGUF such as Q3_K_S or IQ3_M from llama-quantize runs here), or \
         offload with --gpu-layers auto / --rpc",
        human_bytes(weights),
        human_bytes(room),
        human_bytes(anon),
        human_bytes(room)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn avx2() -> CpuKernels {
        CpuKernels {
            avx2: true,
            ..Default::default()
        }
    }

    fn avx512() -> CpuKernels {
        CpuKernels {
            avx2: true,
            avx512: true,
            avx512_vnni: true,
            ..Default::default()
        }
    }

    fn amx() -> CpuKernels {
        CpuKernels {
            amx: true,
            ..avx512()
        }
    }

    /// Lite Q4_K_M: 9.65 GiB of which ~5.5 GiB is Q4_K (the repacked part).
    const LITE: u64 = 9_650_000_000;
    const LITE_Q4K: u64 = 5_500_000_000;
    const ANON: u64 = GIB;

    fn auto(k: &CpuKernels, budget: Option<u64>) -> Layout {
        choose(LayoutRequest::Auto, k, true, LITE, LITE_Q4K, ANON, budget).unwrap()
    }

    #[test]
    fn avx2_kernels_repack_when_both_copies_fit() {
        assert!(auto(&avx2(), Some(24 * GIB)).extra_buffers);
        assert!(auto(&avx2(), None).extra_buffers);
    }

    #[test]
    fn low_memory_is_automatic_when_the_repacked_copy_would_not_fit() {
        let l = auto(&avx2(), Some(12 * GIB));
        assert!(!l.extra_buffers);
        assert!(l.reason.contains("low-memory"), "{}", l.reason);
    }

    #[test]
    fn avx512_and_amx_kernels_keep_the_weights_mapped() {
        assert!(!auto(&avx512(), Some(64 * GIB)).extra_buffers);
        let l = auto(&amx(), Some(64 * GIB));
        assert!(!l.extra_buffers && l.reason.contains("AMX"), "{}", l.reason);
        // Asking for repacking on an AMX build is refused rather than crashing in llama.cpp.
        let e = choose(
            LayoutRequest::Repack,
            &amx(),
            true,
            LITE,
            LITE_Q4K,
            ANON,
            None,
        );
        assert!(e.unwrap_err().contains("AMX"));
    }

    #[test]
    fn explicit_requests_win() {
        let r = choose(
            LayoutRequest::Repack,
            &avx512(),
            true,
            LITE,
            LITE_Q4K,
            ANON,
            Some(8 * GIB),
        );
        assert!(r.unwrap().extra_buffers);
        let r = choose(
            LayoutRequest::LowMemory,
            &avx2(),
            true,
            LITE,
            LITE_Q4K,
            ANON,
            Some(64 * GIB),
        );
        assert!(!r.unwrap().extra_buffers);
    }

    #[test]
    fn nothing_to_repack_means_mapped_and_no_switch_means_the_default() {
        let r = choose(LayoutRequest::Auto, &avx2(), true, LITE, 0, ANON, None).unwrap();
        assert!(!r.extra_buffers);
        let r = choose(
            LayoutRequest::LowMemory,
            &avx2(),
            false,
            LITE,
            LITE_Q4K,
            ANON,
            None,
        );
        assert!(r.unwrap().extra_buffers);
    }

    #[test]
    fn repacked_types_follow_the_kernels() {
        // Q4_K is repacked by the AVX2 kernels, Q2_K only by AVX-512's, Q6_K only on ARM.
        assert!(repacked_type(12, &avx2()));
        assert!(!repacked_type(10, &avx2()) && repacked_type(10, &avx512()));
        assert!(!repacked_type(14, &avx512()));
        assert!(!repacked_type(8, &avx512())); // Q8_0
    }

    #[test]
    fn advice_when_the_weights_do_not_fit() {
        // Lite Q4_K_M in an 8 GiB machine: run from disk, and say what fits instead.
        let a = weights_advice(LITE, ANON, Some(8 * GIB)).unwrap();
        assert!(
            a.contains("read from disk") && a.contains("at most 7.00 GiB"),
            "{a}"
        );
        assert!(weights_advice(LITE, ANON, Some(16 * GIB)).is_none());
        assert!(weights_advice(LITE, ANON, None).is_none());
    }
}
