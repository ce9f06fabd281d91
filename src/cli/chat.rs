//! `dscoder chat`: the interactive REPL (in the library's `repl`).

use std::io::IsTerminal;

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::{load_engine, Defaults, EngineArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
    /// A GGUF file or a name from `dscoder list` (default: the config file's model, else the
    /// newest in the models folder, else the bundled dscoder-nano demo model).
    model: Option<String>,
    /// A system prompt.
    #[arg(long, conflicts_with = "role")]
    system: Option<String>,
    /// A named system prompt from the config file or the built-in ones (`dscoder config` lists
    /// them).
    #[arg(long)]
    role: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 1024)]
    max_tokens: usize,
    /// When the context fills, refuse the next message instead of dropping the oldest unpinned
    /// exchanges (/pin keeps exchanges).
    #[arg(long)]
    no_context_shift: bool,
    /// Resume the last conversation (every chat is autosaved; its KV cache too when the model
    /// and context settings are the same).
    #[arg(long = "continue")]
    resume: bool,
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

pub fn run(mut args: ChatArgs, d: &Defaults) -> Result<()> {
    let c = &d.loaded.config;
    args.engine.apply_config(d)?;
    args.sampling.apply_config(d)?;
    d.apply(
        "max_tokens",
        "max_tokens",
        &mut args.max_tokens,
        &c.max_tokens,
        |s| {
            s.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("'{s}' is not a positive whole number"))
        },
    )?;
    d.apply("color", "color", &mut args.color, &c.color, |s| {
        Color::from_str(s, true).map_err(|_| format!("'{s}' is not auto, always or never"))
    })?;
    d.apply("theme", "theme", &mut args.theme, &c.theme, |s| {
        Theme::from_str(s, true).map_err(|_| format!("'{s}' is not auto, dark or light"))
    })?;
    let system = match &args.role {
        Some(r) => Some(d.loaded.role(r)?.to_string()),
        None => args.system.clone(),
    };
    // From here on Ctrl-C stops a step, never the conversation.
    dscoder::interrupt::keep_alive();
    let model = d.model(args.model.as_deref())?;
    let engine = load_engine(&model, args.engine.settings()?)?;
    // A Ctrl-C pressed while the model loaded is not meant for the first reply.
    dscoder::interrupt::reset();
    dscoder::repl::run(
        &engine,
        dscoder::repl::ChatOptions {
            system,
            roles: d.loaded.clone(),
            sampling: args.sampling.settings(),
            fixed_seed: args.sampling.fixed_seed(),
            terminal: std::io::stdout().is_terminal(),
            color: args.color.enabled(),
            palette: args.theme.palette(),
            max_tokens: args.max_tokens,
            draft: args.sampling.draft,
            context_shift: !args.no_context_shift,
            resume: args.resume,
        },
    )
}
