//! `dscoder config`: the effective settings and where each comes from, the config file's path,
//! the models folder and the roles.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct ConfigArgs {}

pub fn run(_: ConfigArgs) -> Result<()> {
    let path = dscoder::config::path();
    let loaded = dscoder::config::load()?;
    match (&path, &loaded.file) {
        (Some(p), Some(_)) => println!("# config file: {}", p.display()),
        (Some(p), None) => println!(
            "# config file: {} (not there: the defaults apply; create it to change them)",
            p.display()
        ),
        (None, _) => println!("# config file: none (no config folder on this system)"),
    }
    let models = dscoder::models::dir()?;
    let models_source = if std::env::var_os("DSCODER_MODELS").is_some_and(|v| !v.is_empty()) {
        "DSCODER_MODELS"
    } else {
        "default"
    };
    println!("# models folder: {} ({models_source})", models.display());
    let c = &loaded.config;
    let line = |key: &str, value: Option<String>, default: &str| {
        let set = value.is_some();
        let shown = value.unwrap_or_else(|| default.to_string());
        println!(
            "{:<32} # {}",
            format!("{key} = {shown}"),
            loaded.source(set)
        );
    };
    let quoted = |s: &Option<String>| s.as_ref().map(|v| format!("{v:?}"));
    let num = |v: Option<String>| v;
    line(
        "model",
        quoted(&c.model),
        "\"\" (the newest in the models folder, else the bundled demo model)",
    );
    line(
        "threads",
        num(c.threads.map(|v| v.to_string())),
        &format!("{} (physical cores)", dscoder::engine::default_threads()),
    );
    line(
        "ctx_size",
        num(c.ctx_size.map(|v| v.to_string())),
        "0 (the model's, at most 16384, to fit free memory)",
    );
    line("cache_type", quoted(&c.cache_type), "\"f16\"");
    line("temp", num(c.temp.map(|v| v.to_string())), "0.8");
    line("top_k", num(c.top_k.map(|v| v.to_string())), "40");
    line("top_p", num(c.top_p.map(|v| v.to_string())), "0.95");
    line("min_p", num(c.min_p.map(|v| v.to_string())), "0.05");
    line(
        "repeat_penalty",
        num(c.repeat_penalty.map(|v| v.to_string())),
        "1",
    );
    line(
        "max_tokens",
        num(c.max_tokens.map(|v| v.to_string())),
        "1024 (chat)",
    );
    line("color", quoted(&c.color), "\"auto\"");
    line("theme", quoted(&c.theme), "\"auto\"");
    println!("\n[roles]");
    for name in loaded.role_names() {
        let text = loaded.role(&name)?;
        let source = if c.roles.contains_key(&name) {
            loaded.source(true)
        } else {
            "built in".to_string()
        };
        let short: String = text.chars().take(60).collect();
        let more = if text.chars().count() > 60 { "..." } else { "" };
        println!("{name} = {:?}  # {source}", format!("{short}{more}"));
    }
    Ok(())
}
