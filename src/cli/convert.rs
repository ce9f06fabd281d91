//! `dscoder convert`: a Hugging Face checkpoint folder to GGUF.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dscoder::recipe::FileType;

use super::PlanArgs;

#[derive(Args)]
pub struct ConvertArgs {
    /// The checkpoint folder (config.json, *.safetensors, tokenizer.json, tokenizer_config.json).
    hf_dir: PathBuf,
    /// Output GGUF; written to a temporary file and renamed when complete.
    #[arg(short = 'o', long = "out", value_name = "OUT.gguf")]
    out: PathBuf,
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
    #[command(flatten)]
    plan: PlanArgs,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    if !args.plan.dry_run {
        dscoder::input::check_output(&args.out, &[&args.hf_dir])?;
    }
    let recipe = args.plan.recipe(args.ftype)?;
    let source = dscoder::convert::Source::open(&args.hf_dir, args.pre.as_deref())?;
    let mut plan = source.plan(&recipe)?;
    let keys = args.plan.attach_imatrix(&mut plan, args.ftype)?;
    let n_params = plan.iter().map(|t| t.n_elements()).sum();
    args.plan.finish(&plan, &args.out, || {
        let mut m = source.metadata(&recipe, n_params);
        for (k, v) in keys {
            m.set(k, v);
        }
        m
    })
}
