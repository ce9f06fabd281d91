//! The engine: a GGUF model running on llama.cpp (through `llama-cpp-2`), behind a small API of
//! settings, sessions, tokens and events.
//!
//! Nothing above this module touches a llama.cpp type, so the command line (and later a REPL or a
//! server) speaks only of text, token ids and [`Event`]s. A [`Session`] owns one context and
//! remembers which tokens its KV cache holds: evaluating a prompt that starts with them only
//! evaluates the rest, which is what makes multi-turn chat cheap.

pub mod memory;
pub mod offload;
mod sampling;

use std::ffi::CString;
use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::path::Path;
use std::pin::pin;
use std::sync::OnceLock;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use crate::pipeline::human_bytes;
pub use memory::CacheType;
use memory::{available_memory, ModelFootprint};
pub use sampling::SamplingSettings;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: cannot load the model (not a GGUF file llama.cpp can read, or a model it does not support)")]
    Load { path: String },
    #[error("{path}: {message}")]
    Model { path: String, message: String },
    #[error("this dscoder build has no GPU back-end (it runs on the CPU only), so {flag} cannot be honoured; build with `cargo build --release --features cuda` (NVIDIA), `--features metal` (Apple Silicon) or `--features vulkan`")]
    NoGpu { flag: String },
    #[error("--override-tensor '{0}': expected PATTERN=BUFFER, and only the CPU buffer is supported (e.g. '\\.ffn_.*_exps\\.=CPU')")]
    Override(String),
    #[error("{path}: not enough memory for a context of {n_ctx} tokens: {breakdown}; use a smaller --ctx-size, --cache-type q8_0, or close other programs")]
    Memory {
        path: String,
        n_ctx: u32,
        breakdown: String,
    },
    #[error("cannot create a context of {n_ctx} tokens: {message}")]
    Context { n_ctx: u32, message: String },
    #[error("the prompt is {n_prompt} tokens but the context holds {n_ctx}; use a larger --ctx-size or a shorter prompt")]
    PromptTooLong { n_prompt: usize, n_ctx: u32 },
    #[error("llama.cpp failed to evaluate the batch: {0}")]
    Decode(String),
    #[error("chat template: {0}")]
    Template(String),
}

/// How to run a model.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Threads for generation and prompt processing (default: physical cores).
    pub threads: Option<i32>,
    /// Context size in tokens (default: the model's, capped at 16384).
    pub ctx_size: Option<u32>,
    /// Logical and physical batch size for prompt processing.
    pub batch: u32,
    pub mlock: bool,
    /// KV cache element type.
    pub cache_type: CacheType,
    /// Flash attention: `None` lets llama.cpp decide.
    pub flash_attn: Option<bool>,
    /// Layers to offload to a GPU (`u32::MAX` for all); 0 runs on the CPU.
    pub gpu_layers: u32,
    /// Choose the placement to fit free VRAM (or `vram_budget`); overrides `gpu_layers`.
    pub gpu_auto: bool,
    /// The VRAM `gpu_auto` may use, in bytes (default: all that is free).
    pub vram_budget: Option<u64>,
    /// Keep the routed experts in RAM while the rest goes to the GPU.
    pub cpu_moe: bool,
    /// `PATTERN=BUFFER` tensor placements, passed to llama.cpp.
    pub override_tensor: Vec<String>,
    /// Refuse to load when the estimate says it will not fit in free memory.
    pub memory_check: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            threads: None,
            ctx_size: None,
            batch: 512,
            mlock: false,
            cache_type: CacheType::F16,
            flash_attn: None,
            gpu_layers: 0,
            gpu_auto: false,
            vram_budget: None,
            cpu_moe: false,
            override_tensor: Vec::new(),
            memory_check: true,
        }
    }
}

/// llama.cpp's name for the DeepSeek-V2 chat format (`User: ...\n\nAssistant:`).
const DEFAULT_TEMPLATE: &str = "deepseek2";

/// The largest context we choose on our own; more only when asked.
pub const DEFAULT_MAX_CTX: u32 = 16384;

fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let mut b = LlamaBackend::init().expect("llama.cpp backend initialises once");
        if std::env::var_os("DSCODER_LLAMA_LOG").is_none() {
            b.void_logs();
        }
        b
    })
}

/// Physical cores: llama.cpp's own default, since hyper-threads only add contention to its
/// memory-bound kernels.
pub fn default_threads() -> i32 {
    num_cpus::get_physical().max(1) as i32
}

/// A loaded model.
pub struct Engine {
    model: LlamaModel,
    settings: EngineSettings,
    name: String,
    n_ctx: u32,
    /// Identifies the model file and the context settings a saved KV state depends on.
    identity: String,
    /// What went where, when a GPU is used.
    offload_report: Option<String>,
}

/// What generation produces, as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text of the next token(s), valid UTF-8 (bytes of a split character are held back).
    Text(String),
    /// Generation ended: an end-of-generation token or the token limit.
    Done(StopReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndOfGeneration,
    TokenLimit,
    Interrupted,
}

/// Counts from one generation.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    /// The generated token ids (without the end-of-generation token).
    pub tokens: Vec<i32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries were reused from the previous call.
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_seconds: f64,
    pub generation_seconds: f64,
}

impl Engine {
    pub fn load(path: &Path, settings: EngineSettings) -> Result<Engine, EngineError> {
        let path_str = path.display().to_string();
        if !path.is_file() {
            return Err(EngineError::Model {
                path: path_str,
                message: "no such file".into(),
            });
        }
        let wants_gpu = settings.gpu_auto
            || settings.gpu_layers > 0
            || settings.cpu_moe
            || !settings.override_tensor.is_empty();
        if wants_gpu && !backend().supports_gpu_offload() {
            let flag = if settings.gpu_layers > 0 || settings.gpu_auto {
                "--gpu-layers"
            } else if settings.cpu_moe {
                "--cpu-moe"
            } else {
                "--override-tensor"
            };
            return Err(EngineError::NoGpu { flag: flag.into() });
        }
        // Our own reader gives a precise error for a bad file and the sizes for the estimate.
        let footprint = ModelFootprint::of(path).map_err(|message| EngineError::Model {
            path: path_str.clone(),
            message,
        })?;
        let n_ctx = choose_ctx(&path_str, &footprint, &settings)?;

        let mut cpu_patterns: Vec<String> = Vec::new();
        for o in &settings.override_tensor {
            let (pattern, buffer) = o
                .split_once('=')
                .ok_or_else(|| EngineError::Override(o.clone()))?;
            if !buffer.eq_ignore_ascii_case("cpu") || pattern.is_empty() {
                return Err(EngineError::Override(o.clone()));
            }
            cpu_patterns.push(pattern.to_string());
        }
        let mut gpu_layers = settings.gpu_layers;
        let mut offload_report = None;
        let gpu = wants_gpu.then(gpu_device).flatten();
        if wants_gpu {
            let (plan, text) = plan_offload(&footprint, &settings, n_ctx, gpu.as_ref());
            gpu_layers = plan.n_gpu_layers(footprint.shape.n_layer);
            cpu_patterns.extend(plan.override_patterns(&footprint.shape));
            offload_report = Some(text);
        }

        let mut params = pin!(LlamaModelParams::default()
            .with_use_mlock(settings.mlock)
            .with_n_gpu_layers(gpu_layers));
        // The patterns must outlive the params; they live as long as the process.
        for pattern in cpu_patterns {
            let c = CString::new(pattern.clone()).map_err(|_| EngineError::Override(pattern))?;
            params
                .as_mut()
                .add_cpu_buft_override(Box::leak(c.into_boxed_c_str()));
        }
        let model = LlamaModel::load_from_file(backend(), path, &params)
            .map_err(|_| EngineError::Load { path: path_str })?;
        let name = model.meta_val_str("general.name").unwrap_or_else(|_| {
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let identity = format!(
            "{name}|{size}|{}|ctx={n_ctx}|cache={:?}",
            footprint.weights, settings.cache_type
        );
        if let (Some(report), Some(before)) = (offload_report.as_mut(), gpu.as_ref()) {
            if let Some(after) = gpu_device() {
                let _ = write!(
                    report,
                    "\n  {} ({}): {} of VRAM taken by the weights, {} free of {}",
                    before.name,
                    before.description,
                    human_bytes(before.memory_free.saturating_sub(after.memory_free) as u64),
                    human_bytes(after.memory_free as u64),
                    human_bytes(after.memory_total as u64)
                );
            }
        }
        Ok(Engine {
            model,
            settings,
            name,
            n_ctx,
            identity,
            offload_report,
        })
    }

    /// Where the weights went and how much VRAM they took, when a GPU is used.
    pub fn offload_report(&self) -> Option<&str> {
        self.offload_report.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What a saved KV state must match to be reused (model file and context settings).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The context size a session gets.
    pub fn ctx_size(&self) -> u32 {
        self.n_ctx
    }

    /// Text to token ids (`add_bos` as the model asks; special tokens in the text are parsed).
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Vec<i32> {
        let add = add_bos && self.model.vocab().should_add_bos();
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// The beginning-of-sequence token, when the model wants one at the start of a sequence.
    pub fn bos(&self) -> Option<i32> {
        let vocab = self.model.vocab();
        vocab.should_add_bos().then(|| vocab.bos().0)
    }

    /// Entries in a row of logits.
    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab().max(0) as usize
    }

    /// Token ids to text (special tokens omitted).
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let mut bytes = Vec::new();
        for &t in tokens {
            bytes.extend(
                self.model
                    .vocab()
                    .token_to_piece(LlamaToken(t), false, None),
            );
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Renders a chat with the model's embedded template, ending in the assistant's turn. A model
    /// without one (a converted base model, a synthetic test model) gets DeepSeek-V2's format,
    /// the one every model dscoder targets was trained on.
    pub fn render_chat(&self, messages: &[(String, String)]) -> Result<String, EngineError> {
        let template = match self.model.chat_template(None) {
            Ok(t) => t,
            Err(_) => llama_cpp_2::model::LlamaChatTemplate::new(DEFAULT_TEMPLATE)
                .map_err(|e| EngineError::Template(e.to_string()))?,
        };
        // The template engine takes C strings; a NUL (a random model can emit one) would end
        // the message early, so it is dropped.
        let msgs = messages
            .iter()
            .map(|(r, c)| LlamaChatMessage::new(r.clone(), c.replace('\0', "")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template(e.to_string()))?;
        self.model
            .apply_chat_template(&template, &msgs, true)
            .map_err(|e| EngineError::Template(e.to_string()))
    }

    pub fn session(&self) -> Result<Session<'_>, EngineError> {
        let n_ctx = self.ctx_size();
        let threads = self.settings.threads.unwrap_or_else(default_threads);
        let batch = self.settings.batch.min(n_ctx);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(batch)
            .with_n_ubatch(batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_type_k(kv_type(self.settings.cache_type))
            .with_type_v(kv_type(self.settings.cache_type))
            .with_flash_attention_policy(match self.settings.flash_attn {
                None => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
                Some(true) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
                Some(false) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            });
        let ctx = self
            .model
            .new_context(backend(), params)
            .map_err(|e| EngineError::Context {
                n_ctx,
                message: e.to_string(),
            })?;
        Ok(Session {
            engine: self,
            ctx,
            cached: Vec::new(),
            batch: batch as usize,
        })
    }
}

/// The first GPU llama.cpp knows, with its free memory now.
fn gpu_device() -> Option<llama_cpp_2::LlamaBackendDevice> {
    use llama_cpp_2::LlamaBackendDeviceType as T;
    let _ = backend();
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .find(|d| matches!(d.device_type, T::Gpu | T::IntegratedGpu))
}

/// The placement for the GPU flags, and the text that reports it: `auto` fits the VRAM budget
/// (see [`offload`]); explicit flags are only described.
fn plan_offload(
    f: &ModelFootprint,
    s: &EngineSettings,
    n_ctx: u32,
    gpu: Option<&llama_cpp_2::LlamaBackendDevice>,
) -> (offload::Plan, String) {
    use offload::{Overheads, Placement};
    let n_layer = f.shape.n_layer.max(1);
    let over = Overheads {
        kv_per_layer: f.kv_bytes(n_ctx, s.cache_type) / n_layer as u64,
        compute: f.compute_bytes(s.batch.min(n_ctx)),
    };
    let free = gpu.map_or(0, |g| g.memory_free as u64);
    if s.gpu_auto {
        let budget = s.vram_budget.map_or(free, |b| b.min(free));
        return offload::choose(&f.shape, budget, over);
    }
    let placement = if s.cpu_moe {
        Placement::ExpertsInRam {
            gpu_expert_layers: 0,
        }
    } else {
        Placement::Layers((s.gpu_layers as usize).min(n_layer + 1))
    };
    let plan = offload::evaluate(&f.shape, placement);
    let mut text = format!(
        "offload: {} ({} of weights on the GPU, {} in RAM; {} read per token in RAM)",
        plan.describe(&f.shape),
        human_bytes(plan.gpu_bytes),
        human_bytes(plan.cpu_bytes),
        human_bytes(plan.cpu_read_per_token as u64)
    );
    if !s.override_tensor.is_empty() {
        text.push_str(", before the --override-tensor patterns");
    }
    (plan, text)
}

fn kv_type(c: CacheType) -> KvCacheType {
    match c {
        CacheType::F16 => KvCacheType::F16,
        CacheType::Q8_0 => KvCacheType::Q8_0,
    }
}

/// The context size: the user's, if it fits; otherwise the model's (at most 16K), halved until
/// weights + KV cache + compute fit in available memory.
fn choose_ctx(path: &str, f: &ModelFootprint, s: &EngineSettings) -> Result<u32, EngineError> {
    let available = if s.memory_check && s.gpu_layers == 0 {
        available_memory()
    } else {
        None
    };
    let fits = |n: u32| available.is_none_or(|a| f.total(n, s.batch.min(n), s.cache_type) <= a);
    let refuse = |n: u32| {
        let a = available.unwrap_or(0);
        EngineError::Memory {
            path: path.to_string(),
            n_ctx: n,
            breakdown: format!(
                "weights {} + KV cache {} + compute {} = {}, but {} is available",
                human_bytes(f.weights),
                human_bytes(f.kv_bytes(n, s.cache_type)),
                human_bytes(f.compute_bytes(s.batch.min(n))),
                human_bytes(f.total(n, s.batch.min(n), s.cache_type)),
                human_bytes(a)
            ),
        }
    };
    if let Some(n) = s.ctx_size {
        let n = n.max(16);
        return if fits(n) { Ok(n) } else { Err(refuse(n)) };
    }
    let mut n = f.n_ctx_train.clamp(16, DEFAULT_MAX_CTX);
    while !fits(n) && n > 2048 {
        n /= 2;
    }
    if !fits(n) {
        return Err(refuse(n));
    }
    if n < f.n_ctx_train.min(DEFAULT_MAX_CTX) {
        tracing::warn!("context reduced to {n} tokens to fit in free memory");
    }
    Ok(n)
}

/// One context and the tokens its KV cache holds.
pub struct Session<'e> {
    engine: &'e Engine,
    ctx: LlamaContext<'e>,
    cached: Vec<i32>,
    batch: usize,
}

impl Session<'_> {
    pub fn n_ctx(&self) -> u32 {
        self.ctx.n_ctx()
    }

    /// Saves the KV cache and the tokens it holds (llama.cpp's state file).
    pub fn save_state(&self, path: &Path) -> Result<(), EngineError> {
        let tokens: Vec<LlamaToken> = self.cached.iter().map(|&t| LlamaToken(t)).collect();
        self.ctx
            .state_save_file(path, &tokens)
            .map_err(|e| EngineError::Decode(format!("saving {}: {e}", path.display())))
    }

    /// Restores a state saved by [`Session::save_state`]; the next generation then reuses it as
    /// far as its prompt agrees. On failure the cache is emptied (everything is re-evaluated).
    pub fn load_state(&mut self, path: &Path) -> Result<usize, EngineError> {
        let max = self.n_ctx() as usize;
        match self.ctx.state_load_file(path, max) {
            Ok(tokens) => {
                self.cached = tokens.into_iter().map(|t| t.0).collect();
                Ok(self.cached.len())
            }
            Err(e) => {
                self.ctx.clear_kv_cache();
                self.cached.clear();
                Err(EngineError::Decode(format!(
                    "loading {}: {e}",
                    path.display()
                )))
            }
        }
    }

    /// Tokens currently held in the KV cache.
    pub fn cached_tokens(&self) -> &[i32] {
        &self.cached
    }

    /// Makes the KV cache hold exactly `tokens`, evaluating only what differs from what it held,
    /// and leaves the logits of the last token ready. Returns how many tokens were reused.
    fn prefill(&mut self, tokens: &[i32]) -> Result<usize, EngineError> {
        let n_ctx = self.n_ctx() as usize;
        if tokens.len() >= n_ctx {
            return Err(EngineError::PromptTooLong {
                n_prompt: tokens.len(),
                n_ctx: n_ctx as u32,
            });
        }
        let common = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // The last prompt token is always evaluated again, so its logits are fresh.
        let keep = common.min(tokens.len().saturating_sub(1));
        if keep < self.cached.len() {
            self.ctx
                .clear_kv_cache_seq(Some(0), Some(keep as u32), None)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        self.cached.truncate(keep);
        let n = tokens.len();
        self.decode_at(keep, &tokens[keep..], |pos| pos + 1 == n, |_, _| {})?;
        Ok(keep)
    }

    /// Evaluates `tokens` at positions `start..` in batches, appending them to the cache, and
    /// hands `on_logits(position, row)` the logits of each position `wants` selects.
    fn decode_at(
        &mut self,
        start: usize,
        tokens: &[i32],
        wants: impl Fn(usize) -> bool,
        mut on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        let mut batch = LlamaBatch::new(self.batch, 1);
        for (i, chunk) in tokens.chunks(self.batch).enumerate() {
            let first = start + i * self.batch;
            batch.clear();
            for (j, &t) in chunk.iter().enumerate() {
                batch
                    .add(LlamaToken(t), (first + j) as i32, &[0], wants(first + j))
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
            }
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            self.cached.extend_from_slice(chunk);
            for j in (0..chunk.len()).filter(|&j| wants(first + j)) {
                on_logits(first + j, self.ctx.get_logits_ith(j as i32));
            }
        }
        Ok(())
    }

    /// Generates after `prompt` (token ids), calling `on_event` for each piece of text. Return
    /// `false` from the callback to stop (reported as [`StopReason::Interrupted`]).
    pub fn generate(
        &mut self,
        prompt: &[i32],
        sampling: &SamplingSettings,
        max_tokens: usize,
        mut on_event: impl FnMut(Event) -> bool,
    ) -> Result<GenerationStats, EngineError> {
        let started = std::time::Instant::now();
        let reused = self.prefill(prompt)?;
        let prompt_seconds = started.elapsed().as_secs_f64();
        let model = &self.engine.model;
        let mut sampler = sampling.sampler(model.n_vocab(), &self.cached);
        let mut decoder = Utf8Stream::default();
        let mut batch = LlamaBatch::new(1, 1);
        let mut generated = 0;
        let mut tokens = Vec::new();
        let gen_started = std::time::Instant::now();
        let mut last_index = -1;
        let reason = loop {
            if generated >= max_tokens {
                break StopReason::TokenLimit;
            }
            if self.cached.len() >= self.n_ctx() as usize {
                break StopReason::TokenLimit;
            }
            // `sample` also accepts the token into the sampler's history (penalties).
            let token = sampler.sample(&self.ctx, last_index);
            if model.vocab().is_eog(token) {
                break StopReason::EndOfGeneration;
            }
            generated += 1;
            tokens.push(token.0);
            let piece = model.vocab().token_to_piece(token, false, None);
            if let Some(text) = decoder.push(&piece) {
                if !on_event(Event::Text(text)) {
                    break StopReason::Interrupted;
                }
            }
            batch.clear();
            batch
                .add(token, self.cached.len() as i32, &[0], true)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            self.cached.push(token.0);
            last_index = 0;
        };
        if let Some(rest) = decoder.finish() {
            on_event(Event::Text(rest));
        }
        on_event(Event::Done(reason));
        Ok(GenerationStats {
            tokens,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            generated_tokens: generated,
            prompt_seconds,
            generation_seconds: gen_started.elapsed().as_secs_f64(),
        })
    }
}

impl Session<'_> {
    /// Evaluates `tokens` from an empty cache and calls `on_logits(position, row)` for each
    /// position from `from` on, in order: the rows perplexity scoring needs, without holding
    /// them all (a 100K-entry row per position adds up).
    pub fn logits(
        &mut self,
        tokens: &[i32],
        from: usize,
        on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        let n_ctx = self.n_ctx() as usize;
        if tokens.len() > n_ctx {
            return Err(EngineError::PromptTooLong {
                n_prompt: tokens.len(),
                n_ctx: n_ctx as u32,
            });
        }
        self.ctx.clear_kv_cache();
        self.cached.clear();
        self.decode_at(0, tokens, |pos| pos >= from, on_logits)
    }
}

/// Prompt processing and generation speed, as llama-bench measures them.
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub pp_tokens: usize,
    pub pp_tokens_per_second: f64,
    pub tg_tokens: usize,
    pub tg_tokens_per_second: f64,
}

impl Session<'_> {
    /// Measures like `llama-bench -p pp -n tg`: prompt processing (`pp` tokens in batches) and
    /// generation (`tg` tokens one at a time) are separate tests, each from an empty cache, and
    /// the clock stops only when the back-end has finished (a GPU runs asynchronously).
    pub fn bench(&mut self, pp: usize, tg: usize) -> Result<BenchResult, EngineError> {
        let n_vocab = self.engine.model.n_vocab().max(2);
        // Arbitrary but fixed ids; skip id 0 in case it is special.
        let prompt: Vec<i32> = (0..pp)
            .map(|i| 1 + (i as i32 * 7919) % (n_vocab - 1))
            .collect();
        self.ctx.clear_kv_cache();
        self.cached.clear();
        let t = std::time::Instant::now();
        self.prefill(&prompt)?;
        self.ctx.synchronize();
        let pp_s = t.elapsed().as_secs_f64();
        self.ctx.clear_kv_cache();
        self.cached.clear();
        let mut batch = LlamaBatch::new(1, 1);
        let t = std::time::Instant::now();
        for i in 0..tg {
            batch.clear();
            let token = LlamaToken(1 + (i as i32 * 104729) % (n_vocab - 1));
            batch
                .add(token, i as i32, &[0], true)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            self.ctx.synchronize();
        }
        let tg_s = t.elapsed().as_secs_f64();
        self.ctx.clear_kv_cache();
        self.cached.clear();
        Ok(BenchResult {
            pp_tokens: pp,
            pp_tokens_per_second: pp as f64 / pp_s.max(1e-9),
            tg_tokens: tg,
            tg_tokens_per_second: tg as f64 / tg_s.max(1e-9),
        })
    }
}

/// Turns token bytes into text without ever splitting a UTF-8 character.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the next token; an invalid one is
            // replaced, as it will never complete.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return Some(s);
            }
        };
        if valid == 0 {
            return None;
        }
        let rest = self.pending.split_off(valid);
        let text = String::from_utf8(std::mem::replace(&mut self.pending, rest)).expect("checked");
        Some(text)
    }

    fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            None
        } else {
            Some(String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn utf8_stream_holds_back_split_characters() {
        let mut s = Utf8Stream::default();
        let bytes = "é世".as_bytes();
        assert_eq!(s.push(&bytes[..1]), None);
        assert_eq!(s.push(&bytes[1..3]).as_deref(), Some("é"));
        assert_eq!(s.push(&bytes[3..]).as_deref(), Some("世"));
        assert_eq!(s.push(&[0xff]).as_deref(), Some("\u{fffd}"));
        assert_eq!(s.finish(), None);
    }
}
