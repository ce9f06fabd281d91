//! `dscoder info`: a GGUF file's metadata and tensors.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dscoder::gguf::GgufFile;
use dscoder::info;

#[derive(Args)]
pub struct InfoArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let file = GgufFile::open(&args.file)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info::to_json(&file))?);
    } else {
        print!("{}", info::render(&file));
    }
    Ok(())
}
