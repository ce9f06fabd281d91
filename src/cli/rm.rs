//! `dscoder rm NAME...`: deletes models from the models folder (only there: never a path).

use anyhow::Result;
use clap::Args;
use dscoder::units::human_bytes;

#[derive(Args)]
pub struct RmArgs {
    /// Model names, as `dscoder list` shows them.
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(args: RmArgs) -> Result<()> {
    // All or nothing: every name is checked before anything is deleted.
    for name in &args.names {
        dscoder::models::find(name)?;
    }
    for name in &args.names {
        let (path, size) = dscoder::models::remove(name)?;
        eprintln!("deleted {} ({})", path.display(), human_bytes(size));
    }
    Ok(())
}
