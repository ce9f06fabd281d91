//! `dscoder list`: the models in the models folder (name, type, size, parameters, context).

use std::io::Write;

use anyhow::Result;
use clap::Args;
use dscoder::units::{human_bytes, human_count};

#[derive(Args)]
pub struct ListArgs {}

pub fn run(_: ListArgs) -> Result<()> {
    let dir = dscoder::models::dir()?;
    let models = dscoder::models::list_with_details()?;
    if models.is_empty() {
        eprintln!(
            "No models in {} yet: `dscoder convert CHECKPOINT_FOLDER` puts one there (or set DSCODER_MODELS).",
            dir.display()
        );
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let width = models
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:<width$}  {:<8}  {:>10}  {:>6}  {:>7}  MODIFIED",
        "NAME", "TYPE", "SIZE", "PARAMS", "CONTEXT"
    )?;
    for m in &models {
        let (ftype, params, ctx) = match &m.details {
            Some(d) => (
                d.file_type.clone(),
                human_count(d.parameters),
                d.context.map_or("?".into(), |c| c.to_string()),
            ),
            None => ("unreadable".into(), "?".into(), "?".into()),
        };
        let modified = humantime::format_rfc3339_seconds(m.modified).to_string();
        writeln!(
            out,
            "{:<width$}  {ftype:<8}  {:>10}  {params:>6}  {ctx:>7}  {}",
            m.name,
            human_bytes(m.size),
            modified.replace('T', " ").trim_end_matches('Z')
        )?;
    }
    eprintln!("({} in {})", models.len(), dir.display());
    Ok(())
}
