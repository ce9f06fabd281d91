//! `dscoder quantize`: GGUF to GGUF with llama-quantize's rules and expert-aware overrides.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dscoder::gguf::GgufFile;
use dscoder::recipe::FileType;
use dscoder::requantize;

use super::PlanArgs;

#[derive(Args)]
pub struct QuantizeArgs {
    /// Input GGUF (F32, F16 or BF16 weights for a byte-exact match with llama-quantize).
    input: PathBuf,
    /// Output GGUF; written to a temporary file and renamed when complete.
    output: PathBuf,
    /// File type (llama-quantize's names).
    #[arg(long = "type", short = 't', value_name = "TYPE", ignore_case = true)]
    ftype: FileType,
    /// Allow quantizing tensors that are already quantized.
    #[arg(long)]
    allow_requantize: bool,
    #[command(flatten)]
    plan: PlanArgs,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    if !args.plan.dry_run {
        dscoder::input::check_output(&args.output, &[&args.input])?;
    }
    let recipe = args.plan.recipe(args.ftype)?;
    let file = GgufFile::open(&args.input)?;
    let mut plan = requantize::plan(&file, &recipe, args.allow_requantize)?;
    let keys = args.plan.attach_imatrix(&mut plan, args.ftype)?;
    args.plan.finish(&plan, &args.output, || {
        let mut m = requantize::output_metadata(&file.metadata, &recipe);
        for (k, v) in keys {
            m.set(k, v);
        }
        m
    })
}
