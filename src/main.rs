//! The `dscoder` command line: argument parsing and error reporting at the edge; the work lives
//! in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use dscoder::gguf::GgufFile;
use dscoder::pipeline::{self, human_bytes, PipelineError, SizeSummary};
use dscoder::recipe::{parse_tensor_type, FileType, Overrides, Recipe};
use dscoder::{info, interrupt, requantize};
use dscoder_quantize::GgmlType;

#[derive(Parser)]
#[command(
    name = "dscoder",
    version,
    about = "Convert, quantize and run DeepSeek-Coder-V2 GGUF models locally"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face DeepSeek-V2 / DeepSeek-Coder-V2 checkpoint folder to GGUF.
    Convert(ConvertArgs),
    /// Requantize a GGUF model (llama-quantize's rules, plus expert-aware overrides).
    Quantize(QuantizeArgs),
    /// Show a GGUF file's metadata and tensors.
    Info(InfoArgs),
    /// One-shot generation: only the generated text goes to stdout.
    Run(RunArgs),
    /// Interactive coding chat with a model.
    Chat(ChatArgs),
    /// Prompt-processing and generation speed of a model (like llama-bench's pp512/tg128).
    Bench(BenchArgs),
    /// Perplexity over a text file, and KL divergence against a base model (llama-perplexity's method).
    Perplexity(PerplexityArgs),
}

/// Per-class type overrides, applied after the file type's rules.
#[derive(Args, Debug, Clone, Default)]
struct OverrideArgs {
    /// Type for the routed experts (ffn_*_exps), e.g. q4_k.
    #[arg(long, value_name = "TYPE", value_parser = parse_tensor_type)]
    experts: Option<GgmlType>,
    /// Type for the shared experts and the dense FFN layers.
    #[arg(long, value_name = "TYPE", value_parser = parse_tensor_type)]
    shared: Option<GgmlType>,
    /// Type for the attention projections.
    #[arg(long, value_name = "TYPE", value_parser = parse_tensor_type)]
    attn: Option<GgmlType>,
    /// Type for the token embedding.
    #[arg(long, value_name = "TYPE", value_parser = parse_tensor_type)]
    embed: Option<GgmlType>,
    /// Type for the output (LM head) tensor.
    #[arg(long = "output", id = "output_type", value_name = "TYPE", value_parser = parse_tensor_type)]
    output: Option<GgmlType>,
}

impl OverrideArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            experts: self.experts,
            shared: self.shared,
            attn: self.attn,
            embed: self.embed,
            output: self.output,
        }
    }
}

#[derive(Args)]
struct QuantizeArgs {
    /// Input GGUF (F32, F16 or BF16 weights for a byte-exact match with llama-quantize).
    input: PathBuf,
    /// Output GGUF; written to a temporary file and renamed when complete.
    output: PathBuf,
    /// File type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k.
    #[arg(long = "type", short = 't', value_name = "TYPE", value_parser = |s: &str| s.parse::<FileType>())]
    ftype: FileType,
    /// Allow quantizing tensors that are already quantized.
    #[arg(long)]
    allow_requantize: bool,
    #[command(flatten)]
    plan: PlanArgs,
}

#[derive(Args)]
struct ConvertArgs {
    /// The checkpoint folder (config.json, *.safetensors, tokenizer.json, tokenizer_config.json).
    hf_dir: PathBuf,
    /// Output GGUF; written to a temporary file and renamed when complete.
    #[arg(short = 'o', long = "out", value_name = "OUT.gguf")]
    out: PathBuf,
    /// File type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k.
    #[arg(long = "type", short = 't', value_name = "TYPE", default_value = "q4_k_m", value_parser = |s: &str| s.parse::<FileType>())]
    ftype: FileType,
    /// llama.cpp pre-tokenizer name, when the tokenizer's own definition is not recognised.
    #[arg(long, value_name = "NAME")]
    pre: Option<String>,
    #[command(flatten)]
    plan: PlanArgs,
}

/// What `quantize` and `convert` share: the recipe's knobs, the dry run and the thread count.
#[derive(Args)]
struct PlanArgs {
    /// Give every quantizable tensor the file type's default type (llama-quantize --pure).
    #[arg(long)]
    pure: bool,
    /// Print the plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    overrides: OverrideArgs,
}

impl PlanArgs {
    fn recipe(&self, ftype: FileType) -> Result<Recipe> {
        set_threads(self.threads)?;
        Ok(Recipe {
            ftype,
            pure: self.pure,
            overrides: self.overrides.overrides(),
        })
    }

    /// Prints the plan (`--dry-run`) or writes it to `out` and prints the summary.
    fn finish(
        &self,
        plan: &[pipeline::PlannedTensor<'_>],
        out: &Path,
        metadata: impl FnOnce() -> dscoder::gguf::Metadata,
    ) -> Result<()> {
        if self.dry_run {
            print!("{}", info::plan_table(plan));
            print!("{}", SizeSummary::of(plan).render());
            return Ok(());
        }
        let report = pipeline::write_gguf(out, &metadata(), plan)
            .with_context(|| format!("writing {}", out.display()))?;
        print_written(out, &report);
        Ok(())
    }
}

#[derive(Args)]
struct RunArgs {
    /// The GGUF model.
    model: PathBuf,
    /// The prompt; `-` reads it from stdin.
    #[arg(short = 'p', long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 256)]
    max_tokens: usize,
    /// Skip the chat template: the prompt is the model's input as it is.
    #[arg(long)]
    raw: bool,
    /// A system prompt (chat mode).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Sampling flags shared by `run` and `chat`.
#[derive(Args, Clone)]
struct SamplingArgs {
    /// Temperature; 0 is greedy and deterministic.
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: i32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0xD5C0DE)]
    seed: u32,
}

impl SamplingArgs {
    fn settings(&self) -> dscoder::engine::SamplingSettings {
        dscoder::engine::SamplingSettings {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct ChatArgs {
    /// The GGUF model (default: the bundled dscoder-nano demo model).
    model: Option<PathBuf>,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 1024)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// How the model runs: threads, context, cache, offload.
#[derive(Args, Clone)]
struct EngineArgs {
    /// Threads (default: the physical cores).
    #[arg(long)]
    threads: Option<i32>,
    /// Context size in tokens (default: the model's, at most 16384, reduced to fit free memory).
    #[arg(long, short = 'c')]
    ctx_size: Option<u32>,
    /// Batch size for prompt processing.
    #[arg(long, default_value_t = 512)]
    batch_size: u32,
    /// KV cache type: f16 or q8_0 (half the memory).
    #[arg(long, default_value = "f16", value_parser = ["f16", "q8_0"])]
    cache_type: String,
    /// Flash attention: on, off or auto.
    #[arg(long, default_value = "auto", value_parser = ["on", "off", "auto"])]
    flash_attn: String,
    /// Lock the model in RAM.
    #[arg(long)]
    mlock: bool,
    /// Layers to offload to the GPU: a number, `all` or `auto` (GPU builds only).
    #[arg(long, short = 'g', value_name = "N|auto|all")]
    gpu_layers: Option<String>,
    /// With `--gpu-layers auto`: the VRAM to use, in GiB (default: all that is free).
    #[arg(long, value_name = "GIB")]
    vram_budget: Option<f64>,
    /// Keep the routed experts in RAM; attention, shared experts and the dense layer go to the GPU.
    #[arg(long)]
    cpu_moe: bool,
    /// PATTERN=BUFFER tensor placement passed to llama.cpp (repeatable).
    #[arg(long, value_name = "PATTERN=BUFFER")]
    override_tensor: Vec<String>,
    /// Skip the free-memory check before loading.
    #[arg(long)]
    no_memory_check: bool,
}

impl EngineArgs {
    fn settings(&self) -> Result<dscoder::engine::EngineSettings> {
        use dscoder::engine::{CacheType, EngineSettings};
        let gpu_auto = self.gpu_layers.as_deref() == Some("auto");
        let gpu_layers = match self.gpu_layers.as_deref() {
            // `--cpu-moe` alone means: everything else on the GPU.
            None if self.cpu_moe => u32::MAX,
            None | Some("auto") => 0,
            Some("all") => u32::MAX,
            Some(n) => n.parse().map_err(|_| {
                anyhow::anyhow!("--gpu-layers: '{n}' is not a number, `all` or `auto`")
            })?,
        };
        let vram_budget = match self.vram_budget {
            None => None,
            Some(g) if g.is_finite() && g > 0.0 && gpu_auto => {
                Some((g * (1u64 << 30) as f64) as u64)
            }
            Some(_) if !gpu_auto => anyhow::bail!("--vram-budget needs --gpu-layers auto"),
            Some(g) => anyhow::bail!("--vram-budget: {g} is not a positive number of GiB"),
        };
        Ok(EngineSettings {
            threads: self.threads,
            ctx_size: self.ctx_size,
            batch: self.batch_size.max(1),
            mlock: self.mlock,
            cache_type: if self.cache_type == "q8_0" {
                CacheType::Q8_0
            } else {
                CacheType::F16
            },
            flash_attn: match self.flash_attn.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            },
            gpu_layers,
            gpu_auto,
            vram_budget,
            cpu_moe: self.cpu_moe,
            override_tensor: self.override_tensor.clone(),
            memory_check: !self.no_memory_check,
        })
    }
}

#[derive(Args)]
struct BenchArgs {
    /// The GGUF model.
    model: PathBuf,
    /// Prompt tokens to process.
    #[arg(short = 'p', long, default_value_t = 512)]
    pp: usize,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    tg: usize,
    /// Repetitions (the report gives the mean and spread).
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct PerplexityArgs {
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
    #[arg(long)]
    chunks: Option<usize>,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Chunk size in tokens (the context each chunk is evaluated with).
    #[arg(long = "chunk-size", default_value_t = 512)]
    chunk_size: u32,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct InfoArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DSCODER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    interrupt::install();
    let result = match cli.command {
        Command::Convert(args) => convert(args),
        Command::Quantize(args) => quantize(args),
        Command::Info(args) => show_info(args),
        Command::Run(args) => run(args),
        Command::Chat(args) => chat(args),
        Command::Bench(args) => bench(args),
        Command::Perplexity(args) => perplexity(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<PipelineError>(),
                    Some(PipelineError::Interrupted)
                )
            });
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(if interrupted { 130 } else { 1 })
        }
    }
}

/// The error and its causes on one line, each once: our library errors already include their
/// cause in their message (so they read well alone), which `{:#}` would print a second time.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting the thread count")?;
    }
    Ok(())
}

fn quantize(args: QuantizeArgs) -> Result<()> {
    let recipe = args.plan.recipe(args.ftype)?;
    let file = GgufFile::open(&args.input)?;
    let plan = requantize::plan(&file, &recipe, args.allow_requantize)?;
    args.plan.finish(&plan, &args.output, || {
        requantize::output_metadata(&file.metadata, &recipe)
    })
}

fn convert(args: ConvertArgs) -> Result<()> {
    let recipe = args.plan.recipe(args.ftype)?;
    let source = dscoder::convert::Source::open(&args.hf_dir, args.pre.as_deref())?;
    let plan = source.plan(&recipe)?;
    let n_params = plan.iter().map(|t| t.n_elements()).sum();
    args.plan
        .finish(&plan, &args.out, || source.metadata(&recipe, n_params))
}

fn print_written(path: &Path, report: &pipeline::WriteReport) {
    println!(
        "wrote {} ({}, {:.3} bits per weight) in {:.1} s",
        path.display(),
        human_bytes(report.file_bytes),
        report.summary.bpw(),
        report.seconds
    );
    print!("{}", report.summary.render());
}

fn run(args: RunArgs) -> Result<()> {
    use dscoder::engine::Event;
    use std::io::{Read, Write};

    let prompt = if args.prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the prompt from stdin")?;
        s
    } else {
        args.prompt.clone()
    };
    let engine = load_engine(&args.model, args.engine.settings()?)?;
    tracing::info!("model: {}", engine.name());
    let text = if args.raw {
        prompt
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(("system".to_string(), s.clone()));
        }
        messages.push(("user".to_string(), prompt));
        engine.render_chat(&messages)?
    };
    let tokens = engine.tokenize(&text, true);
    let sampling = args.sampling.settings();
    let mut session = engine.session()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let stats = session.generate(&tokens, &sampling, args.max_tokens, |event| {
        if interrupt::requested() {
            return false;
        }
        if let Event::Text(t) = event {
            if let Err(e) = out.write_all(t.as_bytes()).and_then(|_| out.flush()) {
                write_error = Some(e);
                return false;
            }
        }
        true
    })?;
    if let Some(e) = write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing to stdout");
        }
    }
    if std::io::IsTerminal::is_terminal(&out) {
        let _ = writeln!(out);
    }
    eprintln!(
        "{} prompt tokens ({:.1} t/s), {} generated ({:.1} t/s)",
        stats.prompt_tokens,
        stats.prompt_tokens as f64 / stats.prompt_seconds.max(1e-9),
        stats.generated_tokens,
        stats.generated_tokens as f64 / stats.generation_seconds.max(1e-9)
    );
    Ok(())
}

/// Loads a model and says on stderr where its weights went, when a GPU takes part.
fn load_engine(
    path: &Path,
    settings: dscoder::engine::EngineSettings,
) -> Result<dscoder::engine::Engine, dscoder::engine::EngineError> {
    let engine = dscoder::engine::Engine::load(path, settings)?;
    if let Some(report) = engine.offload_report() {
        eprintln!("{report}");
    }
    Ok(engine)
}

fn chat(args: ChatArgs) -> Result<()> {
    let model = match args.model {
        Some(m) => m,
        None => {
            let path = dscoder::bundled::gguf()?;
            eprintln!(
                "No model given: running {}, the bundled 7M-parameter demo model ({}). \
                 It writes small Python functions; for real work convert DeepSeek-Coder-V2-Lite (see the README).",
                dscoder::bundled::NAME,
                path.display()
            );
            path
        }
    };
    let engine = load_engine(&model, args.engine.settings()?)?;
    dscoder::repl::run(
        &engine,
        dscoder::repl::ChatOptions {
            system: args.system,
            sampling: args.sampling.settings(),
            max_tokens: args.max_tokens,
        },
    )
}

fn bench(args: BenchArgs) -> Result<()> {
    let mut settings = args.engine.settings()?;
    if settings.ctx_size.is_none() {
        settings.ctx_size = Some((args.pp + args.tg + 16) as u32);
    }
    let engine = load_engine(&args.model, settings)?;
    let mut session = engine.session()?;
    // One untimed run pages the weights in and warms the kernels, as llama-bench's does.
    session.bench(args.pp, args.tg.min(1))?;
    let runs: Vec<_> = (0..args.repetitions.max(1))
        .map(|_| session.bench(args.pp, args.tg))
        .collect::<Result<_, _>>()?;
    let stat = |f: &dyn Fn(&dscoder::engine::BenchResult) -> f64| {
        let v: Vec<f64> = runs.iter().map(f).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        // The sample standard deviation, as llama-bench reports it.
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64)
            .sqrt();
        (mean, sd)
    };
    let (pp, pp_sd) = stat(&|r| r.pp_tokens_per_second);
    let (tg, tg_sd) = stat(&|r| r.tg_tokens_per_second);
    println!("| model | test | t/s |");
    println!("|---|---|---:|");
    println!(
        "| {} | pp{} | {pp:.2} ± {pp_sd:.2} |",
        engine.name(),
        args.pp
    );
    println!(
        "| {} | tg{} | {tg:.2} ± {tg_sd:.2} |",
        engine.name(),
        args.tg
    );
    Ok(())
}

fn perplexity(args: PerplexityArgs) -> Result<()> {
    use dscoder::perplexity::{self, Report};
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("{}: cannot read the text file", args.file.display()))?;
    let n_ctx = args.chunk_size.max(16);
    let mut settings = args.engine.settings()?;
    settings.ctx_size = Some(n_ctx);
    let mut names = Vec::new();
    let mut load = |path: &Path| {
        // With a base, it is loaded first.
        let on_cpu = args.base_on_cpu && names.is_empty();
        let settings = if on_cpu {
            dscoder::engine::EngineSettings {
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
    let pb =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} chunk {pos}/{len} ETA {eta}",
        )
        .expect("static template"),
    );
    let mut progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
        true
    };
    let report: Report = perplexity::measure(
        &mut load,
        &args.model,
        args.kl_base.as_deref(),
        &text,
        n_ctx as usize,
        args.chunks,
        &mut progress,
    )?;
    pb.finish_and_clear();
    let model_name = names.last().cloned().unwrap_or_default();
    if args.json {
        let mut j = serde_json::json!({
            "model": args.model.display().to_string(),
            "name": model_name,
            "file": args.file.display().to_string(),
            "n_ctx": report.n_ctx,
            "n_chunks": report.n_chunks,
            "n_tokens": report.n_tokens,
            "n_scored": report.scores.count(),
            "mean_nll": report.scores.mean_nll(),
            "perplexity": report.scores.perplexity(),
            "perplexity_error": report.scores.perplexity_error(),
        });
        if let (Some((base, kl)), Some(path)) = (&report.base, &args.kl_base) {
            j["base"] = serde_json::json!({
                "model": path.display().to_string(),
                "name": names.first().cloned().unwrap_or_default(),
                "mean_nll": base.mean_nll(),
                "perplexity": base.perplexity(),
                "perplexity_error": base.perplexity_error(),
            });
            j["kl"] = serde_json::json!({
                "mean": kl.mean(),
                "p99": kl.quantile(0.99),
                "max": kl.max(),
                "top1_agreement": kl.top1_agreement(),
            });
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!(
        "{model_name}: perplexity {:.4} ± {:.4} ({} chunks of {} tokens, {} tokens scored)",
        report.scores.perplexity(),
        report.scores.perplexity_error(),
        report.n_chunks,
        report.n_ctx,
        report.scores.count()
    );
    if let Some((base, kl)) = &report.base {
        println!(
            "{}: perplexity {:.4} ± {:.4} (base)",
            names.first().cloned().unwrap_or_default(),
            base.perplexity(),
            base.perplexity_error()
        );
        println!(
            "KL divergence from the base: mean {:.6}, 99th percentile {:.6}, max {:.6}; same top token {:.2}%",
            kl.mean(),
            kl.quantile(0.99),
            kl.max(),
            100.0 * kl.top1_agreement()
        );
    }
    Ok(())
}

fn show_info(args: InfoArgs) -> Result<()> {
    let file = GgufFile::open(&args.file)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info::to_json(&file))?);
    } else {
        print!("{}", info::render(&file));
    }
    Ok(())
}
