//! dscoder: convert, quantize and run DeepSeek-Coder-V2 GGUF models locally.
//!
//! Data flows one way: a source (GGUF today, a Hugging Face checkpoint later) becomes a plan of
//! output tensors ([`recipe`] decides each type), the [`pipeline`] quantizes rows with
//! `dscoder-quantize` and the [`gguf`] writer streams them to disk.
pub mod bundled;
pub mod convert;
pub mod deepseek2;
pub mod engine;
pub mod gguf;
pub mod info;
pub mod interrupt;
pub mod llama_sys;
pub mod perplexity;
pub mod pipeline;
pub mod recipe;
pub mod repl;
pub mod requantize;
pub mod synthetic;
