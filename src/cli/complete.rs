//! `dscoder complete`: fill in the middle at a cursor, printing only the middle on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use dscoder::engine::{GenerateOptions, Generator};
use dscoder::prompt::{self, BlockEnd, ExtraFile, FimInput};
use dscoder::{input, interrupt};

use super::{load_engine, Defaults, EngineArgs, SamplingArgs};

/// Largest input file read, so a wrong path (a device, a huge log) fails clearly.

#[derive(Args)]
pub struct CompleteArgs {
    /// `[MODEL] FILE:LINE:COL`: the cursor in FILE (line and column from 1; `-` reads the file
    /// from stdin, and `-` alone puts the cursor at its end). With no MODEL the bundled model
    /// runs.
    #[arg(num_args = 0..=2, value_name = "[MODEL] FILE:LINE:COL")]
    positional: Vec<String>,
    /// The text before the cursor, from a file (instead of FILE:LINE:COL).
    #[arg(long, value_name = "FILE")]
    prefix_file: Option<PathBuf>,
    /// The text after the cursor, from a file (with --prefix-file).
    #[arg(long, value_name = "FILE", requires = "prefix_file")]
    suffix_file: Option<PathBuf>,
    /// Another file to show the model as context (repeatable); dropped first when the context
    /// is short.
    #[arg(long = "extra", value_name = "FILE")]
    extra: Vec<PathBuf>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 128)]
    max_tokens: usize,
    /// Stop at this text (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Stop at the end of the current block: at the first new line indented less than the
    /// cursor's line.
    #[arg(long)]
    block: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

fn read_file(path: &Path) -> Result<String> {
    Ok(if path == Path::new("-") {
        input::read_stdin(input::TEXT_LIMIT)?
    } else {
        input::read_text(path, input::TEXT_LIMIT)?
    })
}

/// `FILE:LINE:COL` (or `-` alone), split at the cursor.
fn split_at_cursor(spec: &str) -> Result<(String, String)> {
    if spec == "-" {
        return Ok((read_file(Path::new("-"))?, String::new()));
    }
    let mut parts = spec.rsplitn(3, ':');
    let (col, line, file) = match (parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(l), Some(f)) if !f.is_empty() => (c, l, f),
        _ => bail!("'{spec}': expected FILE:LINE:COL (line and column from 1)"),
    };
    let number = |s: &str, what: &str| -> Result<usize> {
        match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!("'{spec}': the {what} '{s}' is not a number from 1"),
        }
    };
    let (line, col) = (number(line, "line")?, number(col, "column")?);
    let text = read_file(Path::new(file))?;
    let starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let Some(&start) = starts.get(line - 1) else {
        bail!(
            "{file} has {} lines; line {line} is past its end",
            starts.len()
        );
    };
    let this_line = text[start..].split('\n').next().unwrap_or("");
    let n_chars = this_line.chars().count();
    if col > n_chars + 1 {
        bail!("{file}:{line} has {n_chars} characters; column {col} is past its end");
    }
    let offset = start
        + this_line
            .char_indices()
            .nth(col - 1)
            .map_or(this_line.len(), |(i, _)| i);
    Ok((text[..offset].to_string(), text[offset..].to_string()))
}

pub fn run(mut args: CompleteArgs, d: &Defaults) -> Result<()> {
    // Completion keeps its own sampling defaults (greedy); the engine settings apply.
    args.engine.apply_config(d)?;
    let mut positional = args.positional.clone();
    let target = if args.prefix_file.is_some() {
        None
    } else {
        match positional.pop() {
            Some(t) => Some(t),
            None => bail!("give the cursor as FILE:LINE:COL, or --prefix-file"),
        }
    };
    if positional.len() > 1 {
        bail!("too many arguments: expected [MODEL] FILE:LINE:COL");
    }
    let (prefix, suffix) = match (&target, &args.prefix_file) {
        (Some(t), _) => split_at_cursor(t)?,
        (None, Some(p)) => (
            read_file(p)?,
            match &args.suffix_file {
                Some(s) => read_file(s)?,
                None => String::new(),
            },
        ),
        (None, None) => unreachable!("checked above"),
    };
    let extra = args
        .extra
        .iter()
        .map(|p| {
            Ok(ExtraFile {
                name: p.display().to_string(),
                text: read_file(p)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let model = d.model(positional.pop().as_deref())?;
    let engine = load_engine(&model, args.engine.settings()?)?;
    let n_indent = args.block.then(|| BlockEnd::indent_of_last_line(&prefix));
    let input = FimInput {
        prefix,
        suffix,
        extra,
    };
    let fim = prompt::fim_tokens(&engine, &input, args.max_tokens)?;
    if fim.dropped.any() {
        eprintln!("note: {}", fim.dropped);
    }
    let options = GenerateOptions {
        sampling: args.sampling.settings_with_temperature(0.0),
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        draft: args.sampling.draft,
        context_shift: None,
    };
    let mut session = engine.session()?;
    let mut generator = Generator::new(&mut session, &fim.tokens, &options, interrupt::requested)?;
    let mut block = n_indent.map(BlockEnd::new);
    let mut out = std::io::stdout().lock();
    while let Some(text) = generator.next_text()? {
        let text = BlockEnd::apply(block.as_mut(), text, &mut generator);
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing to stdout");
        }
    }
    if let Some(rest) = block.as_mut().map(BlockEnd::finish) {
        let _ = out.write_all(rest.as_bytes());
    }
    let stats = generator.stats();
    eprintln!(
        "{} prompt tokens, {} generated ({:.1} t/s){}, stopped: {:?}",
        stats.prompt_tokens,
        stats.generated_tokens,
        stats.generation_tokens_per_second(),
        stats.draft_summary(),
        stats.stop_reason
    );
    if interrupt::requested() {
        return Err(dscoder::error::Interrupted.into());
    }
    Ok(())
}
