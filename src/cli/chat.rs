//! `dscoder chat`: the interactive REPL (in the library's `repl`).

use std::path::PathBuf;

use std::io::IsTerminal;

use anyhow::Result;
use clap::{Args, ValueEnum};

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
    /// When the context fills, refuse the next message instead of dropping the oldest unpinned
    /// exchanges (/pin keeps exchanges).
    #[arg(long)]
    no_context_shift: bool,
    /// Colour code blocks: `auto` when stdout is a terminal and NO_COLOR is not set.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
    /// Code colours for a dark or light terminal background (`auto`: from COLORFGBG, else dark).
    #[arg(long, value_enum, default_value_t = Theme::Auto)]
    theme: Theme,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Theme {
    Auto,
    Dark,
    Light,
}

impl Theme {
    fn palette(self) -> dscoder::repl::markdown::Palette {
        use dscoder::repl::markdown::Palette;
        match self {
            Theme::Auto => Palette::detect(),
            Theme::Dark => Palette::Dark,
            Theme::Light => Palette::Light,
        }
    }
}

impl Color {
    fn enabled(self) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            // https://no-color.org: any non-empty value turns colour off.
            Color::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

pub fn run(args: ChatArgs) -> Result<()> {
    // From here on Ctrl-C stops a step, never the conversation.
    dscoder::interrupt::keep_alive();
    let model = model_or_bundled(args.model)?;
    let engine = load_engine(&model, args.engine.settings()?)?;
    // A Ctrl-C pressed while the model loaded is not meant for the first reply.
    dscoder::interrupt::reset();
    dscoder::repl::run(
        &engine,
        dscoder::repl::ChatOptions {
            system: args.system,
            sampling: args.sampling.settings(),
            fixed_seed: args.sampling.fixed_seed(),
            color: args.color.enabled(),
            palette: args.theme.palette(),
            max_tokens: args.max_tokens,
            draft: args.sampling.draft,
            context_shift: !args.no_context_shift,
        },
    )
}
