//! `dscoder chat`: the interactive REPL (in the library's `repl`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{load_engine, model_or_bundled, EngineArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
    /// The GGUF model (default: the bundled dscoder-nano demo model).
    model: Option<PathBuf>,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 1024)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let model = model_or_bundled(args.model)?;
    let engine = load_engine(&model, args.engine.settings()?)?;
    dscoder::repl::run(
        &engine,
        dscoder::repl::ChatOptions {
            system: args.system,
            sampling: args.sampling.settings(),
            fixed_seed: args.sampling.fixed_seed(),
            max_tokens: args.max_tokens,
        },
    )
}
