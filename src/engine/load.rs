//! Loading: settings in, a model in memory out, after checking that it fits (context sized to
//! free memory, GPU placement planned), plus the model-level services every front-end needs:
//! tokenizer, chat template, special-token ids.

use std::ffi::CString;
use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::path::Path;
use std::pin::pin;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use super::layout::{self, CpuKernels, LayoutRequest};
use super::memory::{self, available_memory, CacheType};
use super::{backend, default_threads, offload, EngineError, Session};
use crate::gguf::GgufFile;
use crate::model::{tokens, ModelShape};
use crate::units::human_bytes;

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
    /// ggml RPC servers (`host:port`) whose devices join this machine's (see [`super::rpc`]).
    pub rpc: Vec<String>,
    /// Asked while the weights load; true stops the load (an [`EngineError::LoadStopped`]).
    pub cancel: Option<fn() -> bool>,
    /// Repacked or mapped weights (see [`super::layout`]).
    pub layout: LayoutRequest,
    /// Read routed experts ahead when mapped weights do not fit (see [`super::prefetch`]).
    pub prefetch: bool,
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
            rpc: Vec::new(),
            cancel: None,
            layout: LayoutRequest::Auto,
            prefetch: true,
        }
    }
}

/// The largest context we choose on our own; more only when asked.
pub const DEFAULT_MAX_CTX: u32 = 16384;

/// A loaded model.
pub struct Engine {
    pub(super) model: LlamaModel,
    settings: EngineSettings,
    name: String,
    n_ctx: u32,
    /// Identifies the model file and the context settings a saved KV state depends on.
    identity: String,
    /// What went where, when a GPU is used.
    offload_report: Option<String>,
    /// The weight layout chosen and why, with the CPU kernels.
    layout_report: String,
    /// Expert read-ahead for mapped weights larger than memory.
    prefetcher: Option<Box<super::prefetch::Prefetcher>>,
    /// See [`Engine::control_texts`]; computed on first use.
    control_texts: std::sync::OnceLock<Vec<String>>,
    path: std::path::PathBuf,
}

impl Engine {
    pub fn load(path: &Path, settings: EngineSettings) -> Result<Engine, EngineError> {
        let path_str = path.display().to_string();
        if path.is_dir() {
            let hint = if path.join("config.json").is_file() {
                format!(
                    "a folder, which looks like a Hugging Face checkpoint; convert it first: dscoder convert {} -o model.gguf",
                    path.display()
                )
            } else {
                "a folder, not a GGUF file".to_string()
            };
            return Err(EngineError::Model {
                path: path_str,
                message: hint,
            });
        }
        if !path.is_file() {
            let message = if path.exists() {
                "not a regular file (a device or a pipe?); give a GGUF file"
            } else {
                "no such file"
            };
            return Err(EngineError::Model {
                path: path_str,
                message: message.into(),
            });
        }
        // Remote devices first, so the offload checks and planner below see them.
        super::rpc::connect(&settings.rpc)?;
        let wants_gpu = settings.gpu_auto
            || settings.gpu_layers > 0
            || settings.cpu_moe
            || !settings.override_tensor.is_empty();
        // A device to offload to: a GPU of this build, or a registered RPC server.
        if wants_gpu && gpu_device().is_none() {
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
        let gguf = GgufFile::open(path)?;
        // Values that would make llama.cpp abort rather than fail are refused here, by name.
        crate::model::validate(&gguf)?;
        let shape = ModelShape::from_gguf(&gguf)?;
        let prefetcher = super::prefetch::Prefetcher::new(
            &gguf,
            shape.n_expert as usize,
            shape.n_layer as usize,
        );
        drop(gguf);
        // A q8_0 cache stores rows in blocks of 32: llama.cpp fails deep inside context creation
        // ("null reference") when a head is not a whole number of blocks.
        if settings.cache_type == CacheType::Q8_0 {
            for (what, n) in [("K", shape.key_length), ("V", shape.value_length)] {
                if n % 32 != 0 {
                    return Err(EngineError::Model {
                        path: path_str,
                        message: format!(
                            "--cache-type q8_0 needs head sizes that are multiples of 32, and this \
                             model's cached {what} head has {n}; use --cache-type f16"
                        ),
                    });
                }
            }
        }
        // The memory check counts on RAM only when the CPU holds the model.
        let budget = (settings.memory_check && !wants_gpu && settings.rpc.is_empty())
            .then(available_memory)
            .flatten();
        let n_ctx = choose_ctx(&path_str, &shape, &settings, budget)?;
        let kernels = CpuKernels::linked();
        let anon = memory::kv_bytes(&shape, n_ctx, settings.cache_type)
            + memory::compute_bytes(&shape, settings.batch.min(n_ctx));
        let settable = crate::llama_sys::weight_layout::extra_buffers_settable();
        if settings.layout == LayoutRequest::LowMemory && !settable {
            tracing::warn!(
                "--low-memory: this platform's build cannot keep llama.cpp from repacking weights"
            );
        }
        let chosen = layout::choose(
            settings.layout,
            &kernels,
            settable,
            shape.weight_bytes(),
            layout::repacked_bytes(&shape, &kernels),
            anon,
            budget,
        )
        .map_err(|message| EngineError::Model {
            path: path_str.clone(),
            message,
        })?;
        let layout_report = format!(
            "CPU kernels: {}; weights {}",
            kernels.describe(),
            chosen.reason
        );
        // Said at the default log level only when it was forced on the user.
        if chosen.reason.contains("low-memory mode") {
            tracing::warn!("{layout_report}");
        } else {
            tracing::info!("{layout_report}");
        }
        let advice = layout::weights_advice(shape.weight_bytes(), anon, budget);
        if let Some(advice) = &advice {
            tracing::warn!("{advice}");
        }
        // Mapped weights that will not all stay in memory: the routed experts each token picks
        // are read ahead as soon as the router has picked them (see `prefetch`).
        let prefetcher = prefetcher.filter(|_| {
            settings.prefetch
                && !chosen.extra_buffers
                && (advice.is_some() || settings.layout == LayoutRequest::LowMemory)
        });
        crate::llama_sys::weight_layout::set_extra_buffers(chosen.extra_buffers);

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
        // With RPC servers the devices are several: the budget is their memory together, and
        // the report is the per-device split rather than one GPU's.
        let rpc = !settings.rpc.is_empty();
        let gpu = (wants_gpu && !rpc).then(gpu_device).flatten();
        if wants_gpu {
            let free = if rpc {
                super::rpc::devices().iter().map(|d| d.2).sum()
            } else {
                gpu.as_ref().map_or(0, |g| g.memory_free as u64)
            };
            let (plan, text) = plan_offload(&shape, &settings, n_ctx, free);
            gpu_layers = plan.n_gpu_layers(shape.n_layer as usize);
            cpu_patterns.extend(plan.override_patterns(&shape));
            offload_report = Some(if rpc {
                let n_layer = shape.n_layer as usize;
                super::rpc::split_report(n_layer, (gpu_layers as usize).min(n_layer + 1))
            } else {
                text
            });
        }

        let mut params = LlamaModelParams::default()
            .with_use_mlock(settings.mlock)
            .with_n_gpu_layers(gpu_layers);
        // llama.cpp asks after each tensor whether to go on: a large model's load stops at once.
        if let Some(cancel) = settings.cancel {
            params = params.with_progress_callback(move |_| !cancel());
        }
        let mut params = pin!(params);
        // The patterns must outlive the params; they live as long as the process.
        for pattern in cpu_patterns {
            let c = CString::new(pattern.clone()).map_err(|_| EngineError::Override(pattern))?;
            params
                .as_mut()
                .add_cpu_buft_override(Box::leak(c.into_boxed_c_str()));
        }
        let model = LlamaModel::load_from_file(backend(), path, &params).map_err(|_| {
            if settings.cancel.is_some_and(|c| c()) {
                EngineError::LoadStopped(crate::error::Interrupted)
            } else {
                EngineError::Load {
                    path: path_str.clone(),
                }
            }
        })?;
        // A name like "model" (a checkpoint folder's) says nothing; the file name does.
        let name = model
            .meta_val_str("general.name")
            .ok()
            .filter(|n| {
                !matches!(
                    n.trim().to_ascii_lowercase().as_str(),
                    "" | "model" | "checkpoint"
                )
            })
            .unwrap_or_else(|| {
                path.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let identity = format!(
            "{name}|{size}|{}|ctx={n_ctx}|cache={:?}",
            shape.weight_bytes(),
            settings.cache_type
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
            layout_report,
            prefetcher: prefetcher.map(Box::new),
            control_texts: Default::default(),
            path: path.to_path_buf(),
        })
    }

    /// Where the weights went and how much VRAM they took, when a GPU is used.
    pub fn offload_report(&self) -> Option<&str> {
        self.offload_report.as_deref()
    }

    /// Expert slices read ahead so far (0 when prefetch is off: weights that fit, or repacked).
    pub fn prefetch_requests(&self) -> Option<u64> {
        self.prefetcher.as_ref().map(|p| p.requests())
    }

    /// The CPU kernels and the weight layout, and why that layout.
    pub fn layout_report(&self) -> &str {
        &self.layout_report
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What a user asks `/show info` for, as (label, value) lines: file, size, parameters, file
    /// type, context, KV cache type, threads and where the weights are.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let m = &self.model;
        let ftype = m
            .meta_val_str(crate::model::keys::FILE_TYPE)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .and_then(|v| {
                crate::recipe::FileType::ALL
                    .into_iter()
                    .find(|f| f.llama_ftype() == v)
            })
            .map_or("unknown".to_string(), |f| f.name().to_string());
        let threads = self.settings.threads.unwrap_or_else(super::default_threads);
        let placement = match &self.offload_report {
            Some(report) => report.lines().next().unwrap_or("GPU").trim().to_string(),
            None => "CPU".to_string(),
        };
        vec![
            ("model", self.name.clone()),
            ("file", self.path.display().to_string()),
            (
                "size",
                format!(
                    "{} ({:.2} bits per weight)",
                    crate::units::human_bytes(m.size()),
                    m.size() as f64 * 8.0 / m.n_params().max(1) as f64
                ),
            ),
            ("parameters", crate::units::human_count(m.n_params())),
            ("file type", ftype),
            (
                "context",
                format!("{} tokens (trained {})", self.n_ctx, m.n_ctx_train()),
            ),
            (
                "KV cache",
                format!("{:?}", self.settings.cache_type).to_lowercase(),
            ),
            ("threads", threads.to_string()),
            ("placement", placement),
        ]
    }

    /// What a saved KV state must match to be reused (model file and context settings).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The KV cache's element type.
    pub fn cache_type(&self) -> CacheType {
        self.settings.cache_type
    }

    /// The context size a session gets.
    pub fn ctx_size(&self) -> u32 {
        self.n_ctx
    }

    /// Text to token ids, with special-token text parsed as the special token (`add_bos` as the
    /// model asks). For rendered templates, whose markers must become control tokens.
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Vec<i32> {
        self.tokenize_with(text, add_bos, true)
    }

    /// Text to token ids as plain text: special-token text stays text. For what a user, a file
    /// or a request supplied.
    pub fn tokenize_text(&self, text: &str) -> Vec<i32> {
        self.tokenize_with(text, false, false)
    }

    /// Texts of the control tokens (BOS, EOS, FIM markers, ...), which special-token parsing
    /// would turn into those tokens.
    pub fn control_texts(&self) -> &[String] {
        self.control_texts.get_or_init(|| {
            let vocab = self.model.vocab();
            (0..self.model.n_vocab().max(0))
                .map(LlamaToken)
                .filter(|&t| vocab.is_control(t))
                .filter_map(|t| {
                    let bytes = vocab.token_to_piece(t, true, None);
                    String::from_utf8(bytes)
                        .ok()
                        .filter(|s| s.chars().count() > 1)
                })
                .collect()
        })
    }

    /// [`Engine::tokenize`] and [`Engine::tokenize_text`] in one: `special` says whether
    /// special-token text becomes the special token.
    pub fn tokenize_with(&self, text: &str, add_bos: bool, special: bool) -> Vec<i32> {
        let add = add_bos && self.model.vocab().should_add_bos();
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add, special)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// The beginning-of-sequence token, when the model wants one at the start of a sequence.
    pub fn bos(&self) -> Option<i32> {
        let vocab = self.model.vocab();
        vocab.should_add_bos().then(|| vocab.bos().0)
    }

    /// True for an end-of-generation token (EOS, EOT, ...).
    pub fn is_eog(&self, token: i32) -> bool {
        self.model.vocab().is_eog(LlamaToken(token))
    }

    /// The fill-in-the-middle marker ids `(prefix, suffix, middle)`, as llama.cpp detected
    /// them (for DeepSeek: `<｜fim▁begin｜>`, `<｜fim▁hole｜>`, `<｜fim▁end｜>`).
    pub fn fim_tokens(&self) -> Result<(i32, i32, i32), EngineError> {
        let vocab = self.model.vocab();
        let id = |t: LlamaToken, name| {
            if t.0 < 0 {
                Err(EngineError::NoFimToken(name))
            } else {
                Ok(t.0)
            }
        };
        Ok((
            id(vocab.fim_pre(), tokens::FIM_BEGIN)?,
            id(vocab.fim_suf(), tokens::FIM_HOLE)?,
            id(vocab.fim_mid(), tokens::FIM_END)?,
        ))
    }

    /// Entries in a row of logits.
    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab().max(0) as usize
    }

    /// One token's bytes (special tokens give none).
    pub fn token_bytes(&self, token: i32) -> Vec<u8> {
        self.model
            .vocab()
            .token_to_piece(LlamaToken(token), false, None)
    }

    /// Token ids to text (special tokens omitted).
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.token_bytes(t)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Formats `(role, content)` pairs with the model's embedded chat template, ending in the
    /// assistant's turn. A model without one (a converted base model, a synthetic test model)
    /// gets DeepSeek-V2's built-in format, the one every model dscoder targets was trained on.
    pub fn apply_chat_template(&self, messages: &[(&str, &str)]) -> Result<String, EngineError> {
        let builtin = || {
            llama_cpp_2::model::LlamaChatTemplate::new(tokens::CHAT_TEMPLATE_NAME)
                .map_err(|e| EngineError::Template(e.to_string()))
        };
        let template = match self.model.chat_template(None) {
            Ok(t) => t,
            Err(_) => builtin()?,
        };
        // The template engine takes C strings; a NUL (a random model can emit one) would end
        // the message early, so it is dropped.
        let msgs = messages
            .iter()
            .map(|(r, c)| LlamaChatMessage::new(r.to_string(), c.replace('\0', "")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template(e.to_string()))?;
        match self.model.apply_chat_template(&template, &msgs, true) {
            Ok(text) => Ok(text),
            // An embedded template llama.cpp does not recognise: DeepSeek's own format instead,
            // said once, rather than no chat at all.
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "the model's chat template is not one llama.cpp knows ({e}); using DeepSeek-Coder-V2's built-in format"
                    )
                });
                self.model
                    .apply_chat_template(&builtin()?, &msgs, true)
                    .map_err(|e| EngineError::Template(e.to_string()))
            }
        }
    }

    /// A new context with an empty KV cache.
    pub fn session(&self) -> Result<Session<'_>, EngineError> {
        self.new_session(None)
    }

    /// Like [`Engine::session`], with `observer` shown the nodes it wants as ggml computes
    /// them (see `llama_sys::eval_callback`); it is borrowed for as long as the session lives.
    pub(crate) fn session_with_observer<'e, T: crate::llama_sys::eval_callback::Observer>(
        &'e self,
        observer: &'e T,
    ) -> Result<Session<'e>, EngineError> {
        self.new_session(Some(crate::llama_sys::eval_callback::observer_callback(
            observer,
        )))
    }

    fn new_session(
        &self,
        observer: Option<(
            crate::llama_sys::eval_callback::Callback,
            *mut std::os::raw::c_void,
        )>,
    ) -> Result<Session<'_>, EngineError> {
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
        if let Some((callback, data)) = observer {
            if !crate::llama_sys::eval_callback::set_next_eval_callback(callback, data) {
                return Err(EngineError::Unsupported(
                    "observing the computation needs the eval callback, which this platform's \
                     linker cannot route (no --wrap)"
                        .into(),
                ));
            }
        } else if let Some(p) = &self.prefetcher {
            p.install();
        }
        let ctx = self.model.new_context(backend(), params);
        crate::llama_sys::eval_callback::clear_next_eval_callback();
        let ctx = ctx.map_err(|e| EngineError::Context {
            n_ctx,
            message: e.to_string(),
        })?;
        Ok(Session::new(self, ctx, batch as usize))
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
    shape: &ModelShape,
    s: &EngineSettings,
    n_ctx: u32,
    free: u64,
) -> (offload::Plan, String) {
    use offload::{Overheads, Placement};
    let n_layer = shape.n_layer.max(1) as usize;
    let over = Overheads {
        kv_per_layer: memory::kv_bytes(shape, n_ctx, s.cache_type) / n_layer as u64,
        compute: memory::compute_bytes(shape, s.batch.min(n_ctx)),
    };
    if s.gpu_auto {
        let budget = s.vram_budget.map_or(free, |b| b.min(free));
        return offload::choose(shape, budget, over);
    }
    let placement = if s.cpu_moe {
        Placement::ExpertsInRam {
            gpu_expert_layers: 0,
        }
    } else {
        Placement::Layers((s.gpu_layers as usize).min(n_layer + 1))
    };
    let plan = offload::evaluate(shape, placement);
    let mut text = format!(
        "offload: {} ({} of weights on the GPU, {} in RAM; {} read per token in RAM)",
        plan.describe(shape),
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

/// The context size: the user's, if its KV cache fits; otherwise the model's (at most 16K),
/// halved until weights + KV cache + compute fit in `budget` (down to 2,048 tokens). Only the
/// context's own buffers must fit: weights that do not are read from disk as needed (slow, and
/// said by [`layout::weights_advice`]), since they stay mapped.
fn choose_ctx(
    path: &str,
    shape: &ModelShape,
    s: &EngineSettings,
    budget: Option<u64>,
) -> Result<u32, EngineError> {
    let anon = |n: u32| {
        memory::kv_bytes(shape, n, s.cache_type) + memory::compute_bytes(shape, s.batch.min(n))
    };
    let fits = |n: u32| budget.is_none_or(|a| anon(n) + shape.weight_bytes() <= a);
    let buffers_fit = |n: u32| budget.is_none_or(|a| anon(n) <= a);
    let refuse = |n: u32| {
        EngineError::Memory {
        path: path.to_string(),
        n_ctx: n,
        breakdown: format!(
            "its KV cache {} + compute {} = {} must be in RAM, but {} is available (weights {} besides)",
            human_bytes(memory::kv_bytes(shape, n, s.cache_type)),
            human_bytes(memory::compute_bytes(shape, s.batch.min(n))),
            human_bytes(anon(n)),
            human_bytes(budget.unwrap_or(0)),
            human_bytes(shape.weight_bytes()),
        ),
    }
    };
    if let Some(n) = s.ctx_size {
        let n = n.max(16);
        if n > shape.n_ctx_train {
            tracing::warn!(
                "--ctx-size {n} is more than the {} tokens the model was trained for; expect worse output past that",
                shape.n_ctx_train
            );
        }
        return if buffers_fit(n) {
            Ok(n)
        } else {
            Err(refuse(n))
        };
    }
    let mut n = shape.n_ctx_train.clamp(16, DEFAULT_MAX_CTX);
    while !fits(n) && n > 2048 {
        n /= 2;
    }
    if !buffers_fit(n) {
        return Err(refuse(n));
    }
    if n < shape.n_ctx_train.min(DEFAULT_MAX_CTX) {
        tracing::warn!("context reduced to {n} tokens to fit in free memory");
    }
    Ok(n)
}
