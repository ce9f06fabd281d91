//! `dscoder imatrix`: an importance matrix from a calibration text, for `quantize --imatrix`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dscoder::imatrix::collect::{self, Collector};
use dscoder::imatrix::{CALIBRATION, CALIBRATION_NAME};

use super::{load_engine, EngineArgs};

#[derive(Args)]
pub struct ImatrixArgs {
    /// The GGUF model (F16/BF16 or Q8_0 gives the most faithful statistics).
    model: PathBuf,
    /// Calibration text (default: the code shipped with dscoder, ~225 KB of Python).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Output, in llama.cpp's imatrix GGUF format (readable by llama-quantize).
    #[arg(short = 'o', long, default_value = "imatrix.gguf")]
    output: PathBuf,
    /// Process at most this many chunks.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    chunks: Option<u64>,
    /// Tokens per chunk (each is evaluated from an empty cache, BOS first).
    #[arg(long = "chunk-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..))]
    chunk_size: u32,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: ImatrixArgs) -> Result<()> {
    let (text, dataset) = match &args.file {
        Some(path) => (
            dscoder::input::read_text(path, dscoder::input::TEXT_LIMIT)?,
            path.display().to_string(),
        ),
        None => (CALIBRATION.to_string(), CALIBRATION_NAME.to_string()),
    };
    dscoder::input::check_output(&args.output, &[&args.model])?;
    let mut settings = args.engine.settings()?;
    settings.ctx_size = Some(args.chunk_size);
    // The callback reads activations in host memory: the statistics are computed on the CPU.
    settings.gpu_layers = 0;
    settings.gpu_auto = false;
    settings.cpu_moe = false;
    let engine = load_engine(&args.model, settings)?;
    let collector = Collector::new();
    let (pb, progress) = super::chunk_progress("");
    let mut stopped = false;
    let mut progress = |done, total| {
        let go_on = progress(done, total);
        stopped = !go_on;
        go_on
    };
    let summary = collect::compute(
        &engine,
        &collector,
        &text,
        args.chunk_size as usize,
        args.chunks.map(|c| c as usize),
        &mut progress,
    );
    pb.finish_and_clear();
    let summary = summary?;
    if stopped {
        eprintln!(
            "interrupted: saving the statistics of the {} chunks done",
            summary.chunks
        );
    }
    let matrix = collector.matrix(
        vec![dataset],
        summary.chunks as u32,
        summary.chunk_size as u32,
    );
    let bytes = matrix
        .save(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let experts_seen = matrix
        .entries
        .values()
        .filter(|e| e.counts.len() > 1)
        .map(|e| (e.counts.iter().filter(|&&c| c > 0).count(), e.counts.len()))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    println!(
        "wrote {} ({} entries, {} bytes) from {} chunks of {} tokens in {:.1} s; perplexity {:.4}",
        args.output.display(),
        matrix.entries.len(),
        bytes,
        summary.chunks,
        summary.chunk_size,
        summary.seconds,
        summary.perplexity
    );
    if experts_seen.1 > 0 && experts_seen.0 < experts_seen.1 {
        println!(
            "routed experts with data: {} of {} (the others get uniform importance; a longer text reaches more)",
            experts_seen.0, experts_seen.1
        );
    }
    Ok(())
}
