//! `dscoder perplexity`: llama-perplexity's measure, and KL divergence against a base model.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use dscoder::engine::EngineSettings;
use dscoder::perplexity::{self, Labels};

use super::{load_engine, EngineArgs};

#[derive(Args)]
pub struct PerplexityArgs {
    /// The GGUF model.
    model: PathBuf,
    /// The text to score.
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Also measure a base model (e.g. the bf16 conversion) and the KL divergence from it.
    #[arg(long, value_name = "BASE.gguf")]
    kl_base: Option<PathBuf>,
    /// Run the base model on the CPU only, whatever the GPU flags say: checks a GPU run
    /// against the CPU (use the same file for both).
    #[arg(long, requires = "kl_base")]
    base_on_cpu: bool,
    /// Score at most this many chunks.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    chunks: Option<u64>,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Chunk size in tokens (the context each chunk is evaluated with).
    #[arg(long = "chunk-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..))]
    chunk_size: u32,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    let text = dscoder::input::read_text(&args.file, dscoder::input::TEXT_LIMIT)?;
    let n_ctx = args.chunk_size;
    let mut settings = args.engine.settings()?;
    settings.ctx_size = Some(n_ctx);
    let mut names = Vec::new();
    let mut load = |path: &Path| {
        // With a base, it is loaded first.
        let on_cpu = args.base_on_cpu && names.is_empty();
        let settings = if on_cpu {
            EngineSettings {
                gpu_layers: 0,
                gpu_auto: false,
                vram_budget: None,
                cpu_moe: false,
                override_tensor: Vec::new(),
                ..settings.clone()
            }
        } else {
            settings.clone()
        };
        let engine = load_engine(path, settings)?;
        names.push(engine.name().to_string());
        Ok(engine)
    };
    let (pb, progress) = super::chunk_progress("");
    let mut progress = |done, total| progress(done, total);
    let report = perplexity::measure(
        &mut load,
        &args.model,
        args.kl_base.as_deref(),
        &text,
        n_ctx as usize,
        args.chunks.map(|c| c as usize),
        &mut progress,
    );
    pb.finish_and_clear();
    let report = report?;
    let labels = Labels {
        model_path: args.model.display().to_string(),
        model_name: names.last().cloned().unwrap_or_default(),
        text_path: args.file.display().to_string(),
        base_path: args.kl_base.as_ref().map(|p| p.display().to_string()),
        base_name: names.first().cloned().unwrap_or_default(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&labels))?
        );
    } else {
        print!("{}", report.render(&labels));
    }
    Ok(())
}
