//! `dscoder bench`: prompt-processing and generation speed, like llama-bench's pp512/tg128.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dscoder::engine::BenchReport;

use super::{load_engine, EngineArgs};

#[derive(Args)]
pub struct BenchArgs {
    /// The GGUF model.
    model: PathBuf,
    /// Prompt tokens to process.
    #[arg(short = 'p', long, default_value_t = 512)]
    pp: usize,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    tg: usize,
    /// Repetitions (the report gives the mean and spread).
    #[arg(short = 'r', long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repetitions: u32,
    /// Instead of pp/tg: time one decode of each of these batch sizes after a context of `-p`
    /// tokens (the cost of verifying a speculative draft), e.g. `--verify 1,2,4,8,16`.
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    verify: Vec<usize>,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let mut settings = args.engine.settings()?;
    if settings.ctx_size.is_none() {
        settings.ctx_size = Some((args.pp + args.tg + 16) as u32);
    }
    if let Some(&b) = args.verify.iter().max() {
        settings.ctx_size = Some(
            settings
                .ctx_size
                .unwrap_or(0)
                .max((args.pp + b + 16) as u32),
        );
        settings.batch = settings.batch.max(b as u32);
    }
    if args.verify.contains(&0) {
        anyhow::bail!("--verify: a batch size must be at least 1");
    }
    let engine = load_engine(&args.model, settings)?;
    // What the figures depend on, beside them.
    eprintln!("{}", engine.layout_report());
    let mut session = engine.session()?;
    if !args.verify.is_empty() {
        let cost = session.verify_cost(args.pp, &args.verify, args.repetitions as usize)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&cost.to_json())?);
        } else {
            print!("{}", cost.render(engine.name()));
        }
        return Ok(());
    }
    // One untimed run pages the weights in and warms the kernels, as llama-bench's does.
    session.bench(args.pp, args.tg.min(1))?;
    let runs: Vec<_> = (0..args.repetitions)
        .map(|_| session.bench(args.pp, args.tg))
        .collect::<Result<_, _>>()?;
    let report = BenchReport::of(engine.name(), &runs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
