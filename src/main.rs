//! The `dscoder` command line: parsing, dispatch and exit codes. Each subcommand lives in its
//! own file under `cli/`; the work lives in the library.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use dscoder::{error, interrupt};

#[derive(Parser)]
#[command(
    name = "dscoder",
    version,
    about = "Convert, quantize and run DeepSeek-Coder-V2 GGUF models locally"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face DeepSeek-V2 / DeepSeek-Coder-V2 checkpoint folder to GGUF.
    Convert(cli::convert::ConvertArgs),
    /// Requantize a GGUF model (llama-quantize's rules, plus expert-aware overrides).
    Quantize(cli::quantize::QuantizeArgs),
    /// Compute an importance matrix over a calibration text (llama-imatrix's method and format).
    Imatrix(cli::imatrix::ImatrixArgs),
    /// Show a GGUF file's metadata and tensors.
    Info(cli::info::InfoArgs),
    /// One-shot generation: only the generated text goes to stdout.
    Run(cli::run::RunArgs),
    /// Interactive coding chat with a model.
    Chat(cli::chat::ChatArgs),
    /// Prompt-processing and generation speed of a model (like llama-bench's pp512/tg128).
    Bench(cli::bench::BenchArgs),
    /// Perplexity over a text file, and KL divergence against a base model (llama-perplexity's method).
    Perplexity(cli::perplexity::PerplexityArgs),
    /// Fill in the middle at a cursor (FILE:LINE:COL): only the completion goes to stdout.
    Complete(cli::complete::CompleteArgs),
    /// Serve the model over HTTP: OpenAI, llama.cpp (/infill) and ollama endpoints.
    Serve(cli::serve::ServeArgs),
    /// Serve this machine's CPU (or GPUs) to another machine's `--rpc` (ggml's RPC back-end).
    RpcServer(cli::rpc_server::RpcServerArgs),
    /// List the models in the models folder (name, type, size, parameters, context).
    List(cli::list::ListArgs),
    /// Delete models from the models folder.
    Rm(cli::rm::RmArgs),
    /// Show the effective settings (config file, models folder, roles) and where each comes from.
    Config(cli::config::ConfigArgs),
    /// Print a shell completion script, e.g. `dscoder completions bash > ~/.local/share/bash-completion/completions/dscoder`.
    Completions(cli::completions::CompletionsArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sub = matches
        .subcommand()
        .map(|(_, m)| m)
        .expect("a subcommand is required");
    // Colour only on a terminal that has not asked for none (https://no-color.org): logs
    // piped to a file carry no escape codes. Timestamps and module names only when asked for
    // with DSCODER_LOG; by default a warning is one plain line.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let verbose = std::env::var_os("DSCODER_LOG").is_some();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DSCODER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    if verbose {
        logs.init();
    } else {
        logs.without_time().with_target(false).init();
    }
    interrupt::install();
    // The config file matters only to the commands that run a model; a broken one must not stop
    // `info` or `convert`.
    let defaults = || -> anyhow::Result<cli::Defaults<'_>> {
        Ok(cli::Defaults::new(dscoder::config::load()?, sub))
    };
    let result = match cli.command {
        Command::Convert(args) => cli::convert::run(args),
        Command::Quantize(args) => cli::quantize::run(args),
        Command::Imatrix(args) => cli::imatrix::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Run(args) => defaults().and_then(|d| cli::run::run(args, &d)),
        Command::Chat(args) => defaults().and_then(|d| cli::chat::run(args, &d)),
        Command::Bench(args) => cli::bench::run(args),
        Command::Perplexity(args) => cli::perplexity::run(args),
        Command::Complete(args) => defaults().and_then(|d| cli::complete::run(args, &d)),
        Command::Serve(args) => defaults().and_then(|d| cli::serve::run(args, &d)),
        Command::RpcServer(args) => cli::rpc_server::run(args),
        Command::List(args) => cli::list::run(args),
        Command::Rm(args) => cli::rm::run(args),
        Command::Config(args) => cli::config::run(args),
        Command::Completions(args) => cli::completions::run::<Cli>(args),
    };
    match result {
        // A termination signal ended the chat (its read, cut short, returns normally): say so
        // in the status, as a process killed by SIGTERM would.
        Ok(()) if interrupt::repl_terminated() => ExitCode::from(143),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            if e.is::<error::Interrupted>() {
                // Ctrl-C itself is no error to explain.
                eprintln!("[interrupted]");
            } else {
                eprintln!("error: {}", error::chain(e));
            }
            ExitCode::from(if error::is_interrupted(e) { 130 } else { 1 })
        }
    }
}
