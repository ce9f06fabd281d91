//! The code-edit benchmark for prompt-lookup speculation: 20 edit tasks made mechanically from
//! the first functions of the nano model's held-out Python (nobody picked them to suit the
//! drafter), and 20 fresh functions written from a signature alone (nothing to copy).
//!
//! ```text
//! cargo run --release --example edit_bench -- [--model M.gguf] [--flash-attn on|off|auto]
//!     [--verify-cost lite.json] [--json out.json]
//! ```
//!
//! Each task runs greedily with `--draft off`, `auto`, 4 and 8; the outputs agree up to float
//! rounding (a task whose output differs at a near-tie is counted in "same output"). Reported per mode: tokens/s over all tasks, drafted and accepted
//! tokens, and the speed-up over `off`. With `--verify-cost` (the JSON of `dscoder bench
//! --verify 1,2,...` on another model), each run's decode calls are also priced with that
//! model's measured cost per batch size: the speed-up that model would see with the same drafts.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dscoder::engine::{
    DraftMode, Engine, EngineSettings, GenerateOptions, GenerationStats, Generator,
    SamplingSettings,
};

/// A top-level function of the held-out file: its name, parameters and source.
struct Function {
    name: String,
    params: Vec<String>,
    source: String,
}

fn functions(text: &str) -> Vec<Function> {
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = indent_of(line);
        let head = line.trim_start();
        if !head.starts_with("def ") || !head.trim_end().ends_with(':') {
            i += 1;
            continue;
        }
        // Functions and methods alike: the body is what is indented deeper than the `def`.
        let mut end = i + 1;
        while end < lines.len() && (lines[end].trim().is_empty() || indent_of(lines[end]) > indent)
        {
            end += 1;
        }
        let body: Vec<&str> = lines[i..end]
            .iter()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect();
        let body_len = body
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(0, |p| p + 1);
        let first = body[0];
        let name = first[4..first.find('(').unwrap_or(4)].trim().to_string();
        let params = first
            .find('(')
            .and_then(|a| first.rfind(')').map(|b| &first[a + 1..b]))
            .unwrap_or("")
            .split(',')
            .map(|p| p.split(['=', ':']).next().unwrap_or("").trim().to_string())
            .filter(|p| !p.is_empty() && p != "self" && !p.starts_with('*'))
            .collect();
        if (6..=30).contains(&body_len) && !name.is_empty() {
            out.push(Function {
                name,
                params,
                source: body[..body_len].join("\n") + "\n",
            });
        }
        // Methods inside a class are found on the way through its body.
        i += 1;
    }
    out
}

/// The edit prompts, in raw completion form: the original, an instruction as a comment, and the
/// start of the edited version (the model copies the rest, changed or not).
fn edit_prompt(k: usize, f: &Function) -> String {
    let first = f.source.lines().next().unwrap_or_default();
    match k % 4 {
        0 if !f.params.is_empty() => {
            let old = &f.params[0];
            let new = format!("{old}_value");
            format!(
                "{}\n\n# The same function with the parameter `{old}` renamed to `{new}`:\n{}\n",
                f.source,
                first.replacen(old.as_str(), &new, 1)
            )
        }
        1 => format!(
            "{}\n\n# The same function with a new keyword parameter `verbose=False`:\n{}\n",
            f.source,
            first.replacen("):", ", verbose=False):", 1)
        ),
        2 => format!(
            "{}\n\n# The same function, reformatted to the project's style:\n{first}\n",
            f.source
        ),
        _ => format!(
            "{}\n\n# The same function with a docstring:\n{first}\n    \"\"\"",
            f.source
        ),
    }
}

/// A fresh function from its signature: nothing in the context to copy.
fn fresh_prompt(f: &Function) -> String {
    let first = f.source.lines().next().unwrap_or_default();
    format!("# Write `{}`.\n{first}\n", f.name)
}

#[derive(Default, Clone)]
struct Totals {
    /// Tasks whose output differed from `--draft off` (at a near-tie).
    diverged: usize,
    tokens: usize,
    seconds: f64,
    drafted: usize,
    accepted: usize,
    decodes: Vec<usize>,
}

impl Totals {
    fn add(&mut self, s: &GenerationStats) {
        self.tokens += s.generated_tokens;
        self.seconds += s.generation_seconds;
        self.drafted += s.drafted_tokens;
        self.accepted += s.accepted_tokens;
        if self.decodes.len() < s.decodes.len() {
            self.decodes.resize(s.decodes.len(), 0);
        }
        for (a, b) in self.decodes.iter_mut().zip(&s.decodes) {
            *a += b;
        }
    }

    /// Seconds the same decode calls would take at `cost(b)` seconds per batch of `b`.
    fn priced(&self, cost: &dyn Fn(usize) -> f64) -> f64 {
        self.decodes
            .iter()
            .enumerate()
            .map(|(b, &n)| n as f64 * cost(b))
            .sum()
    }
}

/// Seconds per decode by batch size from `bench --verify --json`, linear between measured sizes.
fn verify_cost(path: &PathBuf) -> Result<impl Fn(usize) -> f64> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let mut rows: Vec<(usize, f64)> = v["rows"]
        .as_array()
        .context("no rows")?
        .iter()
        .map(|r| {
            (
                r["batch"].as_u64().unwrap_or(0) as usize,
                r["seconds"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    if rows.first().map(|r| r.0) != Some(1) {
        bail!("{}: the verify cost needs batch size 1", path.display());
    }
    Ok(move |b: usize| {
        if b == 0 {
            return 0.0;
        }
        let hi = rows.iter().position(|r| r.0 >= b).unwrap_or(rows.len() - 1);
        let (b1, c1) = rows[hi.saturating_sub(1)];
        let (b2, c2) = rows[hi];
        if b2 == b1 {
            return c2;
        }
        c1 + (c2 - c1) * (b as f64 - b1 as f64) / (b2 as f64 - b1 as f64)
    })
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut cost_file, mut json_out) = (None, None, None);
    let mut settings = EngineSettings::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next().map(PathBuf::from),
            "--verify-cost" => cost_file = args.next().map(PathBuf::from),
            "--json" => json_out = args.next().map(PathBuf::from),
            "--flash-attn" => {
                settings.flash_attn = match args.next().as_deref() {
                    Some("on") => Some(true),
                    Some("off") => Some(false),
                    _ => None,
                }
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let model = match model {
        Some(m) => m,
        None => dscoder::bundled::gguf()?,
    };
    let cost = cost_file.as_ref().map(verify_cost).transpose()?;
    // From the repository root (also where a copied binary runs), else where it was built.
    let local = PathBuf::from("nano/heldout.py.txt");
    let held_out = std::fs::read_to_string(if local.is_file() {
        local
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nano/heldout.py.txt")
    })?;
    let fs = functions(&held_out);
    if fs.len() < 40 {
        bail!("only {} functions in the held-out file", fs.len());
    }
    let engine = Engine::load(&model, settings)?;
    let mut session = engine.session()?;
    session.warm_up()?;
    let modes = [
        DraftMode::Off,
        DraftMode::Auto,
        DraftMode::Fixed(4),
        DraftMode::Fixed(8),
    ];
    let mut report = serde_json::Map::new();
    let started = Instant::now();
    for (set, prompts) in [
        (
            "edit",
            fs[..20]
                .iter()
                .enumerate()
                .map(|(k, f)| (edit_prompt(k, f), f))
                .collect::<Vec<_>>(),
        ),
        (
            "fresh",
            fs[20..40].iter().map(|f| (fresh_prompt(f), f)).collect(),
        ),
    ] {
        let mut totals = vec![Totals::default(); modes.len()];
        for (prompt, f) in &prompts {
            let tokens = engine.tokenize(prompt, true);
            // Room for the whole function again, plus a little.
            let max_tokens = engine.tokenize_text(&f.source).len() + 16;
            let mut plain: Option<Vec<i32>> = None;
            for (m, &draft) in modes.iter().enumerate() {
                let options = GenerateOptions {
                    sampling: SamplingSettings::greedy(),
                    max_tokens,
                    stop: Vec::new(),
                    draft,
                    context_shift: None,
                };
                session.clear();
                let stats =
                    Generator::new(&mut session, &tokens, &options, || false)?.drive(|_| true)?;
                // Greedy output is the same with or without drafts up to float rounding: a
                // batched decode's logits differ from one-token decodes in the last bits, so a
                // near-tie (top-2 logits within ~1e-3) can go the other way. Counted, not hidden.
                match &plain {
                    None => plain = Some(stats.tokens.clone()),
                    Some(p) if *p != stats.tokens => totals[m].diverged += 1,
                    Some(_) => {}
                }
                totals[m].add(&stats);
            }
        }
        println!("\n{set} set ({} tasks), {}", prompts.len(), engine.name());
        println!(
            "| --draft | same output | tokens | t/s | drafted | accepted | speed-up |{}",
            if cost.is_some() {
                " priced speed-up |"
            } else {
                ""
            }
        );
        println!(
            "|---|---:|---:|---:|---:|---:|---:|{}",
            if cost.is_some() { "---:|" } else { "" }
        );
        let base = totals[0].tokens as f64 / totals[0].seconds;
        let base_priced = cost
            .as_ref()
            .map(|c| totals[0].tokens as f64 / totals[0].priced(c));
        let mut rows = Vec::new();
        for (m, t) in modes.iter().zip(&totals) {
            let tps = t.tokens as f64 / t.seconds;
            let priced = cost
                .as_ref()
                .zip(base_priced)
                .map(|(c, b)| t.tokens as f64 / t.priced(c) / b);
            println!(
                "| {m} | {}/{} | {} | {tps:.1} | {} | {} ({:.0}%) | {:.2}× |{}",
                prompts.len() - t.diverged,
                prompts.len(),
                t.tokens,
                t.drafted,
                t.accepted,
                100.0 * t.accepted as f64 / t.drafted.max(1) as f64,
                tps / base,
                priced.map_or(String::new(), |p| format!(" {p:.2}× |"))
            );
            rows.push(serde_json::json!({
                "draft": m.to_string(), "diverged": t.diverged, "tokens": t.tokens, "seconds": t.seconds,
                "drafted": t.drafted, "accepted": t.accepted, "speedup": tps / base,
                "priced_speedup": priced, "decodes": t.decodes,
            }));
        }
        report.insert(set.to_string(), serde_json::Value::Array(rows));
    }
    eprintln!("({:.0} s)", started.elapsed().as_secs_f64());
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
