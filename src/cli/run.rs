//! `dscoder run`: one-shot generation; only the generated text goes to stdout.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dscoder::chat::{self, Message, Role};
use dscoder::engine::{GenerateOptions, Generator};
use dscoder::interrupt;

use super::{load_engine, EngineArgs, SamplingArgs};

#[derive(Args)]
pub struct RunArgs {
    /// The GGUF model.
    model: PathBuf,
    /// The prompt; `-` reads it from stdin.
    #[arg(short = 'p', long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 256)]
    max_tokens: usize,
    /// Skip the chat template: the prompt is the model's input as it is.
    #[arg(long)]
    raw: bool,
    /// A system prompt (chat mode).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    let prompt = if args.prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the prompt from stdin")?;
        s
    } else {
        args.prompt.clone()
    };
    let engine = load_engine(&args.model, args.engine.settings()?)?;
    tracing::info!("model: {}", engine.name());
    let options = GenerateOptions {
        sampling: args.sampling.settings(),
        max_tokens: args.max_tokens,
        stop: Vec::new(),
    };
    let mut session = engine.session()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let mut on_text = |t: &str| match out.write_all(t.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => true,
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
    if std::io::IsTerminal::is_terminal(&out) {
        let _ = writeln!(out);
    }
    eprintln!(
        "{} prompt tokens ({:.1} t/s), {} generated ({:.1} t/s)",
        stats.prompt_tokens,
        stats.prompt_tokens as f64 / stats.prompt_seconds.max(1e-9),
        stats.generated_tokens,
        stats.generation_tokens_per_second()
    );
    Ok(())
}
