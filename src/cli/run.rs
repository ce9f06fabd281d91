//! `dscoder run`: one-shot generation; only the generated text goes to stdout.
//!
//! It works as a Unix filter, as `ollama run` and `llm` do: piped stdin is put before the
//! prompt (`cat f.py | dscoder run "Explain this code"`), and with no model the bundled one runs.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use dscoder::chat::{self, Message, Role};
use dscoder::engine::{GenerateOptions, Generator, StopReason};
use dscoder::error::Interrupted;
use dscoder::interrupt;

use super::{load_engine, Defaults, EngineArgs, SamplingArgs};

/// Largest prompt read from stdin.

#[derive(Args)]
pub struct RunArgs {
    /// `[MODEL] [PROMPT]`: a model (a file or a name from `dscoder list`) and the prompt. One
    /// argument is the model if it names one (or `-p` gives the prompt), else the prompt for
    /// the default model.
    #[arg(num_args = 0..=2, value_name = "[MODEL] [PROMPT]")]
    positional: Vec<String>,
    /// The prompt; `-` reads it from stdin.
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 256)]
    max_tokens: usize,
    /// Skip the chat template: the prompt is the model's input as it is, and stdout is the exact
    /// continuation.
    #[arg(long)]
    raw: bool,
    /// A system prompt (chat mode).
    #[arg(long, conflicts_with = "role")]
    system: Option<String>,
    /// A named system prompt (`dscoder config` lists them).
    #[arg(long, conflicts_with = "raw")]
    role: Option<String>,
    /// Stop when the context is full instead of dropping the oldest half of the output (the
    /// prompt is kept) and going on.
    #[arg(long)]
    no_context_shift: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

fn read_stdin() -> Result<String> {
    Ok(dscoder::input::read_stdin(dscoder::input::TEXT_LIMIT)?)
}

/// The model (if named) and the prompt, from the arguments and stdin.
fn model_and_prompt(args: &RunArgs) -> Result<(Option<String>, String)> {
    let mut positional = args.positional.clone();
    let (model, prompt) = match (positional.len(), &args.prompt) {
        (2, Some(_)) => bail!("two prompts: give it as an argument or with -p, not both"),
        (2, None) => {
            let prompt = positional.pop();
            (positional.pop(), prompt)
        }
        (1, Some(p)) => (positional.pop(), Some(p.clone())),
        (1, None)
            if Path::new(&positional[0]).is_file() || dscoder::models::is_name(&positional[0]) =>
        {
            (positional.pop(), None)
        }
        (1, None) => (None, positional.pop()),
        (_, p) => (None, p.clone()),
    };
    let prompt = match prompt.as_deref() {
        Some("-") => read_stdin()?,
        other => {
            let text = other.unwrap_or_default().to_string();
            // Piped input comes first, then the instruction about it.
            if std::io::stdin().is_terminal() {
                text
            } else {
                let piped = read_stdin()?;
                match (piped.trim().is_empty(), text.is_empty()) {
                    (true, _) => text,
                    (false, true) => piped,
                    (false, false) => format!("{}\n\n{text}", piped.trim_end()),
                }
            }
        }
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty: give one as an argument, with -p, or on stdin");
    }
    Ok((model, prompt))
}

pub fn run(mut args: RunArgs, d: &Defaults) -> Result<()> {
    args.engine.apply_config(d)?;
    args.sampling.apply_config(d)?;
    if let Some(r) = &args.role {
        args.system = Some(d.loaded.role(r)?.to_string());
    }
    let (model, prompt) = model_and_prompt(&args)?;
    let model = d.model(model.as_deref())?;
    let engine = load_engine(&model, args.engine.settings()?)?;
    tracing::info!("model: {}", engine.name());
    let options = GenerateOptions {
        sampling: args.sampling.settings(),
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        draft: args.sampling.draft,
        context_shift: (!args.no_context_shift).then_some(usize::MAX),
    };
    let mut session = engine.session()?;
    dscoder::progress::show_prefill(&mut session);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let mut last = '\n';
    let mut on_text = |t: &str| match out.write_all(t.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => {
            last = t.chars().last().unwrap_or(last);
            true
        }
        Err(e) => {
            write_error = Some(e);
            false
        }
    };
    let stats = if args.raw {
        let tokens = engine.tokenize(&prompt, true);
        Generator::new(&mut session, &tokens, &options, interrupt::requested)?.drive(on_text)?
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new(Role::System, s.clone()));
        }
        messages.push(Message::new(Role::User, prompt));
        chat::reply(
            &mut session,
            &messages,
            &options,
            interrupt::requested,
            &mut on_text,
        )?
        .stats
    };
    if let Some(e) = write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing to stdout");
        }
    }
    // A reply ends with a newline; a raw continuation is printed exactly (a newline only for a
    // terminal's sake).
    if last != '\n' && (!args.raw || out.is_terminal()) {
        let _ = writeln!(out);
    }
    drop(out);
    if stats.stop_reason == StopReason::Cancelled && interrupt::requested() {
        return Err(Interrupted.into());
    }
    if stats.shifts > 0 {
        eprintln!(
            "[the context of {} tokens filled {} time(s): {} older generated tokens were dropped to go on; --no-context-shift stops instead]",
            session.n_ctx(),
            stats.shifts,
            stats.dropped_tokens
        );
    }
    eprintln!(
        "{} prompt tokens ({:.1} t/s), {} generated ({:.1} t/s){}",
        stats.prompt_tokens,
        stats.prompt_tokens as f64 / stats.prompt_seconds.max(1e-9),
        stats.generated_tokens,
        stats.generation_tokens_per_second(),
        stats.draft_summary()
    );
    match stats.stop_reason {
        StopReason::TokenLimit => {
            eprintln!("[stopped at the token limit: -n {}]", args.max_tokens)
        }
        StopReason::ContextFull => eprintln!(
            "[stopped: the context of {} tokens is full; use a larger --ctx-size, or leave out --no-context-shift]",
            session.n_ctx()
        ),
        _ => {}
    }
    Ok(())
}
