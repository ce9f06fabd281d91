//! The engine: a GGUF model running on llama.cpp (through `llama-cpp-2`), behind a small API of
//! settings, sessions, tokens and text.
//!
//! Layers, bottom up (the model returns logits; the caller drives, as in candle):
//! - [`Engine`] ([`load`]): the loaded model, its tokenizer and chat template.
//! - [`Session`] ([`session`]): one context, the tokens its KV cache holds, and one batched
//!   decode that prefill, generation, perplexity, bench and speculative verification share;
//!   logits at chosen batch positions, sampling at a batch index, truncation to a prefix.
//! - [`Generator`] ([`generate`]): step-wise generation that the caller pulls: stop strings
//!   (held back across token boundaries, never emitted), a token cap, a cancel check passed in,
//!   and the stop reason with counts and timings; prompt-lookup speculation ([`draft`]) inside.
//!
//! Nothing above this module touches a llama.cpp type, and nothing here knows of chats,
//! terminals or HTTP: front-ends speak to it through `chat`/`prompt`.

mod bench;
pub mod draft;
pub mod generate;
pub mod layout;
mod load;
pub mod memory;
pub mod offload;
pub mod prefetch;
pub mod rpc;
mod sampling;
pub mod session;
pub mod vocab;

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

pub use bench::{BenchReport, BenchResult, VerifyCost};
pub use draft::DraftMode;
pub use generate::{GenerateOptions, GenerationStats, Generator, StopMatcher, StopReason};
pub use load::{Engine, EngineSettings, DEFAULT_MAX_CTX};
pub use memory::CacheType;
pub use sampling::{check_knob, Sampler, SamplingSettings};
pub use session::{PrefillProgress, Session};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: llama.cpp cannot load the model (a tensor it needs is missing or has another shape, or the model is one it does not support); DSCODER_LLAMA_LOG=1 shows llama.cpp's own messages")]
    Load { path: String },
    #[error("{path}: {message}")]
    Model { path: String, message: String },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Shape(#[from] crate::model::ShapeError),
    #[error(transparent)]
    Invalid(#[from] crate::model::ValidateError),
    #[error("this dscoder build has no GPU back-end (it runs on the CPU only), so {flag} cannot be honoured; build with `cargo build --release --features cuda` (NVIDIA), `--features metal` (Apple Silicon) or `--features vulkan`")]
    NoGpu { flag: String },
    #[error("--override-tensor '{0}': expected PATTERN=BUFFER, and only the CPU buffer is supported (e.g. '\\.ffn_.*_exps\\.=CPU')")]
    Override(String),
    #[error("{path}: not enough memory for a context of {n_ctx} tokens: {breakdown}; use a smaller --ctx-size, --cache-type q8_0, or close other programs")]
    Memory {
        path: String,
        n_ctx: u32,
        breakdown: String,
    },
    #[error("cannot create a context of {n_ctx} tokens: {message}")]
    Context { n_ctx: u32, message: String },
    #[error("the prompt is {n_prompt} tokens but the context holds {n_ctx}; use a larger --ctx-size or a shorter prompt")]
    PromptTooLong { n_prompt: usize, n_ctx: u32 },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("llama.cpp failed to evaluate the batch: {0}")]
    Decode(String),
    #[error("{what} {path}: {message}")]
    State {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("chat template: {0}")]
    Template(String),
    #[error("the model has no {0} token, so it cannot fill in the middle")]
    NoFimToken(&'static str),
    #[error("loading the model was stopped")]
    LoadStopped(#[source] crate::error::Interrupted),
    #[error("--rpc {endpoint}: {message}")]
    Rpc { endpoint: String, message: String },
    #[error("{0}")]
    Unsupported(String),
}

/// llama.cpp's process-wide back-end, initialised once (logs off unless `DSCODER_LLAMA_LOG`
/// is set). Everything in the process that calls llama.cpp shares it.
pub fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let mut b = LlamaBackend::init().expect("llama.cpp backend initialises once");
        if std::env::var_os("DSCODER_LLAMA_LOG").is_none() {
            b.void_logs();
        }
        b
    })
}

/// Physical cores: llama.cpp's own default, since hyper-threads only add contention to its
/// memory-bound kernels.
pub fn default_threads() -> i32 {
    num_cpus::get_physical().max(1) as i32
}
