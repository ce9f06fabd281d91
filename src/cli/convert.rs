//! `dscoder convert`: a Hugging Face checkpoint folder to GGUF.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dscoder::recipe::FileType;

use super::PlanArgs;

/// `--imatrix-text` without a file: the calibration code shipped in the binary.
const BUILTIN: &str = "@calibration";

#[derive(Args)]
pub struct ConvertArgs {
    /// The checkpoint folder (config.json, *.safetensors, tokenizer.json, tokenizer_config.json).
    hf_dir: PathBuf,
    /// Output GGUF; written to a temporary file and renamed when complete. Without it the model
    /// goes into the models folder as CHECKPOINT-TYPE (`dscoder list`; run it by that name).
    #[arg(short = 'o', long = "out", value_name = "OUT.gguf")]
    out: Option<PathBuf>,
    /// File type (llama-quantize's names).
    #[arg(
        long = "type",
        short = 't',
        value_name = "TYPE",
        ignore_case = true,
        default_value = "q4_k_m"
    )]
    ftype: FileType,
    /// llama.cpp pre-tokenizer name, when the tokenizer's own definition is not recognised.
    #[arg(long, value_name = "NAME")]
    pre: Option<String>,
    /// Convert even when the written tokenizer does not tokenize a sample as the checkpoint's
    /// tokenizer.json does (the check runs before any weights are written).
    #[arg(long)]
    skip_tokenizer_check: bool,
    /// Compute an importance matrix over this text first (dscoder's shipped calibration code
    /// when no file is given), on a temporary BF16 conversion removed afterwards, and quantize
    /// with it: checkpoint to low-bit GGUF in one command.
    #[arg(long, value_name = "TEXT", num_args = 0..=1, default_missing_value = BUILTIN, conflicts_with = "imatrix")]
    imatrix_text: Option<PathBuf>,
    /// With --imatrix-text: at most this many chunks of 512 tokens.
    #[arg(long, requires = "imatrix_text", value_parser = clap::value_parser!(u64).range(1..))]
    imatrix_chunks: Option<u64>,
    #[command(flatten)]
    plan: PlanArgs,
}

pub fn run(mut args: ConvertArgs) -> Result<()> {
    let named = match &args.out {
        Some(_) => None,
        None => {
            let name = dscoder::models::name_for(&args.hf_dir, args.ftype.name());
            let dir = dscoder::models::dir()?;
            if !args.plan.dry_run {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            }
            args.out = Some(dir.join(format!("{name}.gguf")));
            Some(name)
        }
    };
    let out = args.out.clone().expect("set above");
    if !args.plan.dry_run {
        dscoder::input::check_output(&out, &[&args.hf_dir])?;
    }
    let mut recipe = args.plan.recipe(args.ftype)?;
    recipe.imatrix |= args.imatrix_text.is_some();
    let source = dscoder::convert::Source::open(&args.hf_dir, args.pre.as_deref())?;
    let mut plan = source.plan(&recipe)?;
    if !args.skip_tokenizer_check && !args.plan.dry_run {
        let n_params = plan.iter().map(|t| t.n_elements()).sum();
        prove_tokenizer(&source, &source.metadata(&recipe, n_params), &out)?;
    }
    let keys = match &args.imatrix_text {
        Some(text) if !args.plan.dry_run => {
            let (m, label) = imatrix_from_text(&args, &source, text)?;
            super::attach_matrix(&mut plan, &m, args.ftype, &label)?
        }
        _ => args.plan.attach_imatrix(&mut plan, args.ftype)?,
    };
    let n_params = plan.iter().map(|t| t.n_elements()).sum();
    args.plan.finish(&plan, &out, || {
        let mut m = source.metadata(&recipe, n_params);
        for (k, v) in keys {
            m.set(k, v);
        }
        m
    })?;
    if let (Some(name), false) = (named, args.plan.dry_run) {
        eprintln!("Saved in the models folder as {name}: dscoder chat {name}");
    }
    Ok(())
}

/// Writes the metadata alone to a temporary file beside `out` and checks that llama.cpp
/// tokenizes a sample with it as Hugging Face's `tokenizers` does with the checkpoint's
/// `tokenizer.json` (see `dscoder::convert::tokenizer_proof`).
fn prove_tokenizer(
    source: &dscoder::convert::Source,
    metadata: &dscoder::gguf::Metadata,
    out: &std::path::Path,
) -> Result<()> {
    let temp = dscoder::output::temp_path_for(&out.with_extension("vocab.gguf"));
    let _cleanup = dscoder::interrupt::TempFile::register(&temp);
    dscoder::pipeline::write_gguf(&temp, metadata, &[])?;
    let result = dscoder::convert::tokenizer_proof::prove(
        &source.dir.join("tokenizer.json"),
        &temp,
        &source.tokenizer.pre,
    );
    let _ = std::fs::remove_file(&temp);
    let n = result?;
    tracing::info!("tokenizer: {n} sample texts tokenize as tokenizer.json does");
    Ok(())
}

/// Converts the checkpoint to a temporary BF16 GGUF beside the output, computes an importance
/// matrix on it over `text` ([`BUILTIN`]: the shipped calibration code), and removes the temporary
/// file. Memory stays bounded: the conversion streams, and the model is memory-mapped.
fn imatrix_from_text(
    args: &ConvertArgs,
    source: &dscoder::convert::Source,
    text: &std::path::Path,
) -> Result<(dscoder::imatrix::ImportanceMatrix, String)> {
    use anyhow::Context;
    use dscoder::imatrix::collect::{self, Collector};
    let (text, dataset) = if text.as_os_str() == BUILTIN {
        (
            dscoder::imatrix::CALIBRATION.to_string(),
            dscoder::imatrix::CALIBRATION_NAME.to_string(),
        )
    } else {
        (
            dscoder::input::read_text(text, dscoder::input::TEXT_LIMIT)?,
            text.display().to_string(),
        )
    };
    let bf16 = dscoder::recipe::Recipe {
        ftype: FileType::BF16,
        pure: false,
        imatrix: false,
        overrides: Default::default(),
    };
    let out = args.out.as_ref().expect("chosen before");
    let temp = dscoder::output::temp_path_for(&out.with_extension("bf16.gguf"));
    let _cleanup = dscoder::interrupt::TempFile::register(&temp);
    let plan = source.plan(&bf16)?;
    let n_params = plan.iter().map(|t| t.n_elements()).sum();
    tracing::info!(
        "importance matrix: converting to a temporary BF16 model {}",
        temp.display()
    );
    dscoder::pipeline::write_gguf_cancellable(
        &temp,
        &source.metadata(&bf16, n_params),
        &plan,
        &dscoder::interrupt::requested,
    )
    .with_context(|| format!("writing {}", temp.display()))?;
    let result = (|| -> Result<_> {
        let settings = dscoder::engine::EngineSettings {
            ctx_size: Some(512),
            ..Default::default()
        };
        let engine = dscoder::engine::Engine::load(&temp, settings)?;
        let collector = Collector::new();
        let (pb, progress) = super::chunk_progress("importance matrix ");
        let mut progress = |done, total| progress(done, total);
        let max = args.imatrix_chunks.map(|c| c as usize);
        let summary = collect::compute(&engine, &collector, &text, 512, max, &mut progress);
        pb.finish_and_clear();
        let summary = summary?;
        if dscoder::interrupt::requested() {
            anyhow::bail!("interrupted; nothing was written");
        }
        Ok(collector.matrix(vec![dataset.clone()], summary.chunks as u32, 512))
    })();
    let _ = std::fs::remove_file(&temp);
    Ok((result?, dataset))
}
