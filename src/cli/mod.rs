//! The subcommands, one file each, and the flags they share. Each `run` takes its parsed
//! arguments and returns `anyhow::Result`; `main.rs` maps errors to exit codes.

pub mod bench;
pub mod chat;
pub mod complete;
pub mod completions;
pub mod config;
pub mod convert;
pub mod imatrix;
pub mod info;
pub mod list;
pub mod perplexity;
pub mod quantize;
pub mod rm;
pub mod rpc_server;
pub mod run;
pub mod serve;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use dscoder::engine::layout::LayoutRequest;
use dscoder::engine::{
    CacheType, DraftMode, Engine, EngineError, EngineSettings, SamplingSettings,
};
use dscoder::recipe::{FileType, Overrides, Recipe, TensorType};
use dscoder::units::human_bytes;
use dscoder::{interrupt, pipeline};

/// Per-class type overrides, applied after the file type's rules.
#[derive(Args, Debug, Clone, Default)]
pub struct OverrideArgs {
    /// Type for the routed experts (ffn_*_exps), e.g. q4_k.
    #[arg(long, value_name = "TYPE", ignore_case = true)]
    experts: Option<TensorType>,
    /// Type for the shared experts and the dense FFN layers.
    #[arg(long, value_name = "TYPE", ignore_case = true)]
    shared: Option<TensorType>,
    /// Type for the attention projections.
    #[arg(long, value_name = "TYPE", ignore_case = true)]
    attn: Option<TensorType>,
    /// Type for the token embedding.
    #[arg(long, value_name = "TYPE", ignore_case = true)]
    embed: Option<TensorType>,
    /// Type for the output (LM head) tensor.
    #[arg(
        long = "output",
        id = "output_type",
        value_name = "TYPE",
        ignore_case = true
    )]
    output: Option<TensorType>,
}

impl OverrideArgs {
    fn overrides(&self) -> Overrides {
        let t = |x: Option<TensorType>| x.map(|t| t.0);
        Overrides {
            experts: t(self.experts),
            shared: t(self.shared),
            attn: t(self.attn),
            embed: t(self.embed),
            output: t(self.output),
        }
    }
}

/// What `quantize` and `convert` share: the recipe's knobs, the dry run and the thread count.
#[derive(Args)]
pub struct PlanArgs {
    /// Give every quantizable tensor the file type's default type (llama-quantize --pure).
    #[arg(long)]
    pure: bool,
    /// Print the plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,
    /// Importance matrix (`dscoder imatrix` or `llama-imatrix`, GGUF or legacy .dat): the
    /// quantizers weigh each column by it. Needed for iq2_*, iq1_*, iq3_xxs and q2_k_s.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
}

impl PlanArgs {
    fn recipe(&self, ftype: FileType) -> Result<Recipe> {
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global()
                .context("setting the thread count")?;
        }
        Ok(Recipe {
            ftype,
            pure: self.pure,
            imatrix: self.imatrix.is_some(),
            overrides: self.overrides.overrides(),
        })
    }

    /// Loads `--imatrix` and gives the planned tensors their vectors; returns the metadata keys
    /// llama-quantize adds for it (`quantize.imatrix.*`).
    fn attach_imatrix(
        &self,
        plan: &mut [pipeline::PlannedTensor<'_>],
        ftype: FileType,
    ) -> Result<Vec<(&'static str, dscoder::gguf::Value)>> {
        let Some(path) = &self.imatrix else {
            return Ok(Vec::new());
        };
        let m = dscoder::imatrix::ImportanceMatrix::load(path)?;
        attach_matrix(plan, &m, ftype, &path.display().to_string())
            .with_context(|| format!("--imatrix {}", path.display()))
    }

    /// Prints the plan (`--dry-run`) or writes it to `out` and prints the summary.
    fn finish(
        &self,
        plan: &[pipeline::PlannedTensor<'_>],
        out: &Path,
        metadata: impl FnOnce() -> dscoder::gguf::Metadata,
    ) -> Result<()> {
        if self.dry_run {
            print!("{}", dscoder::info::plan_table(plan));
            print!("{}", pipeline::SizeSummary::of(plan).render());
            return Ok(());
        }
        let report =
            pipeline::write_gguf_cancellable(out, &metadata(), plan, &interrupt::requested)
                .with_context(|| format!("writing {}", out.display()))?;
        println!(
            "wrote {} ({}, {:.3} bits per weight) in {:.1} s",
            out.display(),
            human_bytes(report.file_bytes),
            report.summary.bpw(),
            report.seconds
        );
        print!("{}", report.summary.render());
        Ok(())
    }
}

/// Gives the planned tensors their importance vectors from `m` (named `label` in the output's
/// `quantize.imatrix.*` keys, as llama-quantize writes them).
fn attach_matrix(
    plan: &mut [pipeline::PlannedTensor<'_>],
    m: &dscoder::imatrix::ImportanceMatrix,
    ftype: FileType,
    label: &str,
) -> Result<Vec<(&'static str, dscoder::gguf::Value)>> {
    use dscoder::gguf::Value;
    let n = dscoder::imatrix::attach(plan, m, ftype)?;
    tracing::info!(
        "importance matrix {label}: {} entries, {n} of them used",
        m.entries.len()
    );
    let mut keys = vec![("quantize.imatrix.file", Value::String(label.to_string()))];
    if let Some(d) = m.datasets.first() {
        keys.push(("quantize.imatrix.dataset", Value::String(d.clone())));
    }
    keys.push((
        "quantize.imatrix.entries_count",
        Value::U32(m.entries.len() as u32),
    ));
    if m.chunk_count > 0 {
        keys.push(("quantize.imatrix.chunks_count", Value::U32(m.chunk_count)));
    }
    Ok(keys)
}

/// The bar of the chunked passes over a text (`perplexity`, `imatrix`): drawn on a terminal,
/// quiet when stderr is piped; `progress(done, total)` updates it and says whether to go on
/// (no Ctrl-C yet).
pub fn chunk_progress(prefix: &str) -> (indicatif::ProgressBar, impl Fn(usize, usize) -> bool) {
    let pb =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{prefix}{{spinner}} [{{elapsed_precise}}] {{wide_bar}} chunk {{pos}}/{{len}} ETA {{eta}}"
        ))
        .expect("static template"),
    );
    let bar = pb.clone();
    let progress = move |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        !interrupt::requested()
    };
    (pb, progress)
}

/// `--threads`: at least 1 and at most 4 per logical CPU. More only adds contention, and tens of
/// thousands crash OpenMP or make a job thousands of times slower.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    let max = 4 * num_cpus::get().max(1);
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!(
            "{n} is not between 1 and {max} (4 per logical CPU of this machine)"
        )),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// A float sampling knob, checked against the range `/set` uses (`check_knob`).
fn knob(name: &str, s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    dscoder::engine::check_knob(name, v)
}

/// Sampling flags shared by `run`, `chat` and `complete`.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy and deterministic [default: 0.8; 0 for complete].
    #[arg(long = "temp", value_parser = |s: &str| knob("temp", s))]
    temperature: Option<f32>,
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(i32).range(0..))]
    top_k: i32,
    #[arg(long, default_value_t = 0.95, value_parser = |s: &str| knob("top_p", s))]
    top_p: f32,
    #[arg(long, default_value_t = 0.05, value_parser = |s: &str| knob("min_p", s))]
    min_p: f32,
    #[arg(long, default_value_t = 1.0, value_parser = |s: &str| knob("repeat_penalty", s))]
    repeat_penalty: f32,
    /// Random seed, for reproducible sampling [default: a new one each time].
    #[arg(long)]
    seed: Option<u32>,
    /// Prompt-lookup speculation: off, auto (drafts while the measured speed says it pays) or
    /// a fixed draft length (1-16). The output is the same either way.
    #[arg(long, value_name = "off|auto|N", default_value = "auto")]
    pub draft: DraftMode,
}

impl SamplingArgs {
    pub fn settings(&self) -> SamplingSettings {
        self.settings_with_temperature(0.8)
    }

    /// True when `--seed` fixes the random draws.
    pub fn fixed_seed(&self) -> bool {
        self.seed.is_some()
    }

    /// The settings, with `temperature` when the flag is not given.
    pub fn settings_with_temperature(&self, temperature: f32) -> SamplingSettings {
        SamplingSettings {
            temperature: self.temperature.unwrap_or(temperature),
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed.unwrap_or_else(rand::random),
            ..Default::default()
        }
    }
}

/// `--flash-attn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FlashAttn {
    On,
    Off,
    Auto,
}

/// How the model runs: threads, context, cache, offload.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Threads (default: the physical cores).
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,
    /// Context size in tokens (default: the model's, at most 16384, reduced to fit free memory).
    #[arg(long, short = 'c')]
    ctx_size: Option<u32>,
    /// Batch size for prompt processing.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    batch_size: u32,
    /// KV cache type (q8_0 takes half the memory of f16).
    #[arg(long, value_enum, default_value_t = CacheType::F16)]
    cache_type: CacheType,
    /// Flash attention.
    #[arg(long, value_enum, default_value_t = FlashAttn::Auto)]
    flash_attn: FlashAttn,
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
    /// Keep the weights memory-mapped, never repacked: pages shared with the page cache and
    /// evictable, so a model near or beyond RAM runs (automatic when a repacked copy would not
    /// fit).
    #[arg(long, conflicts_with = "repack")]
    low_memory: bool,
    /// Repack Q4_0/Q4_K/IQ4_NL weights for the CPU kernels even where the default keeps them
    /// mapped (the default repacks only for AVX2/NEON kernels, when both copies fit).
    #[arg(long)]
    repack: bool,
    /// ggml RPC servers whose devices join this machine's (`dscoder rpc-server` on each), e.g.
    /// `192.168.1.20:50052,192.168.1.21:50052`; all layers go to them unless --gpu-layers says.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    rpc: Vec<String>,
}

impl EngineArgs {
    pub fn settings(&self) -> Result<EngineSettings> {
        let gpu_auto = self.gpu_layers.as_deref() == Some("auto");
        let gpu_layers = match self.gpu_layers.as_deref() {
            // `--cpu-moe` alone means: everything else on the GPU.
            None if self.cpu_moe => u32::MAX,
            // Remote devices given: the layers go to them, as llama.cpp's `--rpc` with `-ngl 99`.
            None if !self.rpc.is_empty() => u32::MAX,
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
            threads: self.threads.map(|t| t as i32),
            ctx_size: self.ctx_size,
            batch: self.batch_size,
            mlock: self.mlock,
            cache_type: self.cache_type,
            flash_attn: match self.flash_attn {
                FlashAttn::On => Some(true),
                FlashAttn::Off => Some(false),
                FlashAttn::Auto => None,
            },
            gpu_layers,
            gpu_auto,
            vram_budget,
            cpu_moe: self.cpu_moe,
            override_tensor: self.override_tensor.clone(),
            memory_check: !self.no_memory_check,
            rpc: self.rpc.clone(),
            cancel: Some(interrupt::requested),
            layout: if self.low_memory {
                LayoutRequest::LowMemory
            } else if self.repack {
                LayoutRequest::Repack
            } else if std::env::var_os("DSCODER_LLAMA_DEFAULT_BUFFERS").is_some() {
                // Diagnostics and measurements (BENCHMARKS.md "Laptops"), not for daily use.
                LayoutRequest::LlamaDefault
            } else {
                LayoutRequest::Auto
            },
            prefetch: std::env::var_os("DSCODER_NO_PREFETCH").is_none(),
        })
    }
}

/// Loads a model and says on stderr where its weights went, when a GPU takes part.
pub fn load_engine(path: &Path, settings: EngineSettings) -> Result<Engine, EngineError> {
    let engine = Engine::load(path, settings)?;
    if let Some(report) = engine.offload_report() {
        eprintln!("{report}");
    }
    Ok(engine)
}

/// The config file's values under the flags the user gave: a value applies where its flag was
/// not given (clap's value source says which were).
pub struct Defaults<'m> {
    pub loaded: dscoder::config::Loaded,
    matches: &'m clap::ArgMatches,
}

impl<'m> Defaults<'m> {
    pub fn new(loaded: dscoder::config::Loaded, matches: &'m clap::ArgMatches) -> Self {
        Defaults { loaded, matches }
    }

    /// Whether flag `id` (the field's name) was on the command line (or in its env variable).
    fn given(&self, id: &str) -> bool {
        use clap::parser::ValueSource;
        let m = self.matches;
        m.try_get_raw(id)
            .ok()
            .and(m.value_source(id))
            .is_some_and(|s| matches!(s, ValueSource::CommandLine | ValueSource::EnvVariable))
    }

    /// `field = value` unless flag `id` was given; `check` validates the file's value the way
    /// the flag's parser does, and its error names the file and the key.
    fn apply<T: Clone, S: ToString>(
        &self,
        id: &str,
        key: &str,
        field: &mut T,
        value: &Option<S>,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<()> {
        let Some(v) = value else { return Ok(()) };
        if self.given(id) {
            return Ok(());
        }
        let file = self
            .loaded
            .file
            .as_ref()
            .map_or(String::from("config"), |f| f.display().to_string());
        *field = check(&v.to_string()).map_err(|e| anyhow::anyhow!("{file}: {key}: {e}"))?;
        Ok(())
    }

    /// The model to run: the argument (a path or a name in the models folder), else the config
    /// file's, else the newest in the models folder, else the bundled demo model (converted into
    /// the cache on first use), saying on stderr which default it took.
    pub fn model(&self, arg: Option<&str>) -> Result<PathBuf> {
        if let Some(a) = arg {
            return Ok(dscoder::models::resolve(a)?);
        }
        if let Some(m) = &self.loaded.config.model {
            let path = dscoder::models::resolve(m).map_err(|e| {
                anyhow::anyhow!("{e} (the default model in {})", self.source_file())
            })?;
            eprintln!(
                "No model given: running {} (the config file's default).",
                path.display()
            );
            return Ok(path);
        }
        if let Some(path) = dscoder::models::newest() {
            eprintln!(
                "No model given: running {}, the newest in the models folder (name one to choose; `dscoder list` shows them).",
                path.display()
            );
            return Ok(path);
        }
        let path = dscoder::bundled::gguf()?;
        eprintln!(
            "No model given: running {}, the bundled 7M-parameter demo model ({}). \
             It writes small Python functions; for real work convert DeepSeek-Coder-V2-Lite (see the README).",
            dscoder::bundled::NAME,
            path.display()
        );
        Ok(path)
    }

    fn source_file(&self) -> String {
        self.loaded
            .file
            .as_ref()
            .map_or("the config file".into(), |f| f.display().to_string())
    }
}

impl EngineArgs {
    /// Threads, context and KV type from the config file where not given as flags.
    pub fn apply_config(&mut self, d: &Defaults) -> Result<()> {
        let c = &d.loaded.config;
        let mut threads = self.threads.unwrap_or(0);
        d.apply(
            "threads",
            "threads",
            &mut threads,
            &c.threads,
            parse_threads,
        )?;
        if threads > 0 {
            self.threads = Some(threads);
        }
        let mut ctx = self.ctx_size.unwrap_or(0);
        d.apply("ctx_size", "ctx_size", &mut ctx, &c.ctx_size, |s| {
            s.parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("'{s}' is not a positive whole number"))
        })?;
        if ctx > 0 {
            self.ctx_size = Some(ctx);
        }
        d.apply(
            "cache_type",
            "cache_type",
            &mut self.cache_type,
            &c.cache_type,
            |s| CacheType::from_str(s, true).map_err(|_| format!("'{s}' is not f16 or q8_0")),
        )?;
        Ok(())
    }
}

impl SamplingArgs {
    /// The sampling knobs from the config file where not given as flags.
    pub fn apply_config(&mut self, d: &Defaults) -> Result<()> {
        let c = &d.loaded.config;
        if c.temp.is_some() {
            let mut t = self.temperature.unwrap_or(0.0);
            d.apply("temperature", "temp", &mut t, &c.temp, |s| knob("temp", s))?;
            if !d.given("temperature") {
                self.temperature = Some(t);
            }
        }
        d.apply("top_k", "top_k", &mut self.top_k, &c.top_k, |s| {
            s.parse::<i32>()
                .ok()
                .filter(|&k| k >= 0)
                .ok_or_else(|| format!("'{s}' is not a whole number >= 0"))
        })?;
        d.apply("top_p", "top_p", &mut self.top_p, &c.top_p, |s| {
            knob("top_p", s)
        })?;
        d.apply("min_p", "min_p", &mut self.min_p, &c.min_p, |s| {
            knob("min_p", s)
        })?;
        d.apply(
            "repeat_penalty",
            "repeat_penalty",
            &mut self.repeat_penalty,
            &c.repeat_penalty,
            |s| knob("repeat_penalty", s),
        )?;
        Ok(())
    }
}
