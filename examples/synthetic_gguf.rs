//! Writes a synthetic deepseek2 GGUF (F32, random weights) for demos and benchmarks.
//!
//! ```text
//! cargo run --release --example synthetic_gguf -- tiny.gguf            # a few MB
//! cargo run --release --example synthetic_gguf -- lite4.gguf --lite 4  # Lite's shapes, 4 layers
//! cargo run --release --example synthetic_gguf -- lite.gguf --lite 27 --type q4_k_m  # 9.6 GiB
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use dscoder::pipeline::write_gguf;
use dscoder::recipe::{FileType, Recipe};
use dscoder::synthetic::SyntheticConfig;
use dscoder::units::human_bytes;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut output: Option<PathBuf> = None;
    let mut config = SyntheticConfig::tiny();
    let mut ftype: Option<FileType> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--lite" => {
                let n = args.next().context("--lite needs a layer count")?;
                config = SyntheticConfig::lite(n.parse().context("--lite: not a number")?);
            }
            "--type" => {
                let t = args.next().context("--type needs a file type")?;
                ftype = Some(t.parse()?);
            }
            "-h" | "--help" => {
                println!("usage: synthetic_gguf OUTPUT.gguf [--lite N_LAYERS] [--type FILE_TYPE]");
                return Ok(());
            }
            _ if output.is_none() => output = Some(arg.into()),
            _ => bail!("unexpected argument '{arg}'"),
        }
    }
    let output = output.context("usage: synthetic_gguf OUTPUT.gguf [--lite N_LAYERS]")?;
    dscoder::interrupt::install();
    let plan = match ftype {
        None => config.plan(),
        Some(ftype) => config.plan_with(Recipe {
            ftype,
            pure: false,
            imatrix: false,
            overrides: Default::default(),
        })?,
    };
    let mut metadata = config.metadata();
    if let Some(ftype) = ftype {
        metadata.set(
            "general.file_type",
            dscoder::gguf::Value::U32(ftype.llama_ftype()),
        );
    }
    let report = write_gguf(&output, &metadata, &plan)?;
    println!(
        "wrote {} ({}): {}",
        output.display(),
        human_bytes(report.file_bytes),
        config.name
    );
    Ok(())
}
