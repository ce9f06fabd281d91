//! dscoder: convert, quantize and run DeepSeek-Coder-V2 GGUF models locally.
//!
//! The layers, bottom up; each uses only those below it:
//!
//! | layer | modules | what |
//! |---|---|---|
//! | facts | [`model`], [`gguf`], [`units`], [`error`] | deepseek2's keys, tensor classes, [`model::ModelShape`] and special tokens; the GGUF reader/writer; sizes; errors |
//! | offline work | [`recipe`] (policy), [`pipeline`] (mechanism), [`convert`], [`requantize`], [`synthetic`], [`bundled`], [`models`] | which type for which tensor; plan → quantize (`dscoder-quantize`) → write; the models folder |
//! | runtime | [`engine`] (over [`llama_sys`] and `llama-cpp-2`) | load, sessions with one batched decode, the step-wise generator, sampling, bench, offload planning |
//! | shared front-end logic | [`chat`], [`prompt`], [`perplexity`], [`info`] | conversations and the one chat-turn path; chat and FIM prompts; reports as data with text and JSON forms |
//! | front-ends | [`repl`], [`progress`], [`config`] (and the `dscoder` binary's `cli`) | terminals and the user's settings; they never import each other |
//!
//! [`interrupt`] turns Ctrl-C into a flag that only front-ends read; the library takes cancel
//! checks as arguments.
pub mod bundled;
pub mod chat;
pub mod checksum;
pub mod config;
pub mod convert;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod imatrix;
pub mod info;
pub mod input;
pub mod interrupt;
pub mod llama_sys;
pub mod model;
pub mod models;
pub mod output;
pub mod perplexity;
pub mod pipeline;
pub mod progress;
pub mod prompt;
pub mod recipe;
pub mod repl;
pub mod requantize;
pub mod server;
pub mod synthetic;
pub mod units;
