//! The integration tests, as one binary (ripgrep's layout): llama.cpp is linked once, and the
//! fixture helpers in [`common`] are defined once and shared (conversions are cached per run).

mod chat;
mod chat_pty;
mod cli;
mod common;
mod complete;
mod context_shift;
mod convert_errors;
mod convert_vs_transformers;
mod engine;
mod gguf_reader;
mod hostile;
mod imatrix;
mod layout;
mod llama_written;
mod models;
mod nano;
mod quant_oracle;
mod quantize_vs_llama;
mod rpc;
mod run;
mod server;
mod signals;
mod speculation;
