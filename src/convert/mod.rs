//! `dscoder convert`: a Hugging Face DeepSeek-V2 / DeepSeek-Coder-V2 checkpoint to GGUF, in one
//! streaming pass.
//!
//! - [`config`] reads and checks `config.json`;
//! - [`checkpoint`] maps the safetensors shards;
//! - [`tokenizer`] turns `tokenizer.json` into llama.cpp's vocabulary keys;
//! - [`mapping`] is the HF → GGUF tensor table (expert stacking, the `kv_b` split).
//!
//! Then the same [`crate::recipe`] and [`crate::pipeline`] as `dscoder quantize` choose the types
//! and write the file, so converting straight to Q4_K_M gives the same bytes as converting to F32
//! and quantizing that.

pub mod checkpoint;
pub mod config;
pub mod mapping;
pub mod tokenizer;
pub mod tokenizer_proof;

use std::path::{Path, PathBuf};

use dscoder_quantize::GgmlType;

use crate::gguf::{Metadata, Value};
use crate::pipeline::PlannedTensor;
use crate::recipe::{Planner, Recipe, RecipeError, TensorRef};
use crate::requantize::QUANTIZATION_VERSION;
use checkpoint::Checkpoint;
use config::{HfConfig, ScoringFunc};
use tokenizer::TokenizerInfo;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: key '{key}': {message}")]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: missing {what}")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{path}: not a valid safetensors file: {message}")]
    Shard { path: PathBuf, message: String },
    #[error("{path}: tensor '{tensor}' {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
}

/// A checkpoint folder opened and checked, ready to plan.
pub struct Source {
    pub dir: PathBuf,
    pub config: HfConfig,
    pub checkpoint: Checkpoint,
    pub tokenizer: TokenizerInfo,
}

impl Source {
    pub fn open(dir: &Path, pre: Option<&str>) -> Result<Source, ConvertError> {
        if !dir.is_dir() {
            return Err(ConvertError::MissingFile {
                path: dir.to_path_buf(),
                what: "checkpoint folder",
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(ConvertError::MissingFile {
                path: config_path,
                what: "config.json",
            });
        }
        let config = HfConfig::load(&config_path)?;
        let checkpoint = Checkpoint::open(dir)?;
        // Every size in config.json (vocab_size included) must match the tensors before anything
        // is allocated from it: a vocab_size of 4294967295 is an error, not a 100 GB token table.
        mapping::plan_tensors(&config, &checkpoint, dir)?;
        let tokenizer = TokenizerInfo::load(dir, &config, pre)?;
        Ok(Source {
            dir: dir.to_path_buf(),
            config,
            checkpoint,
            tokenizer,
        })
    }

    /// Every output tensor with its type.
    pub fn plan(&self, recipe: &Recipe) -> Result<Vec<PlannedTensor<'_>>, ConvertError> {
        let tensors = mapping::plan_tensors(&self.config, &self.checkpoint, &self.dir)?;
        let mut planner = Planner::new(
            *recipe,
            &self.config.shape(),
            tensors.iter().map(|t| t.name.as_str()),
        );
        let mut plan = Vec::with_capacity(tensors.len());
        for t in tensors {
            // Like llama.cpp's converter, everything is F32 before the file type applies, so the
            // tensors kept out of quantization (norms, router) are stored as F32.
            let out_type = planner.choose(TensorRef {
                name: &t.name,
                dims: &t.dims,
                ty: GgmlType::F32,
            })?;
            plan.push(PlannedTensor {
                name: t.name,
                dims: t.dims,
                out_type,
                source: t.source,
                importance: None,
            });
        }
        Ok(plan)
    }

    /// The GGUF metadata (deepseek2-gguf.md §3 and §6).
    pub fn metadata(&self, recipe: &Recipe, n_params: u64) -> Metadata {
        let c = &self.config;
        let shape = c.shape();
        let a = |k: &str| format!("deepseek2.{k}");
        let mut m = Metadata::new();
        m.set("general.architecture", Value::String("deepseek2".into()));
        m.set("general.type", Value::String("model".into()));
        let name = self
            .dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "DeepSeek-V2".into());
        m.set("general.name", Value::String(name));
        m.set("general.size_label", Value::String(size_label(n_params)));
        m.set(a("block_count"), Value::U32(shape.n_layer));
        m.set(a("context_length"), Value::U32(shape.n_ctx_train));
        m.set(a("embedding_length"), Value::U32(shape.n_embd));
        m.set(a("feed_forward_length"), Value::U32(c.intermediate_size));
        m.set(a("attention.head_count"), Value::U32(shape.n_head));
        // MLA is multi-query attention over the compressed latent.
        m.set(a("attention.head_count_kv"), Value::U32(shape.n_head_kv));
        m.set(a("rope.freq_base"), Value::F32(c.rope_theta));
        m.set(
            a("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps),
        );
        m.set(a("expert_used_count"), Value::U32(shape.n_expert_used));
        if let Some(g) = c.n_group {
            m.set(a("expert_group_count"), Value::U32(g));
        }
        if let Some(g) = c.topk_group {
            m.set(a("expert_group_used_count"), Value::U32(g));
        }
        let gating = match c.scoring_func {
            ScoringFunc::Softmax => 1,
            ScoringFunc::Sigmoid => 2,
        };
        m.set(a("expert_gating_func"), Value::U32(gating));
        if let Some(y) = &c.yarn {
            m.set(a("rope.scaling.type"), Value::String("yarn".into()));
            m.set(a("rope.scaling.factor"), Value::F32(y.factor));
            m.set(
                a("rope.scaling.original_context_length"),
                Value::U32(y.original_max_position_embeddings),
            );
            if let Some(b) = y.beta_fast {
                m.set(a("rope.scaling.yarn_beta_fast"), Value::F32(b));
            }
            if let Some(b) = y.beta_slow {
                m.set(a("rope.scaling.yarn_beta_slow"), Value::F32(b));
            }
            if let Some(ms) = y.mscale_all_dim {
                // llama.cpp divides this by 0.1 on load (deepseek2-gguf.md §13.1).
                m.set(a("rope.scaling.yarn_log_multiplier"), Value::F32(0.1 * ms));
            }
        }
        m.set(
            a("leading_dense_block_count"),
            Value::U32(c.first_k_dense_replace),
        );
        m.set(a("vocab_size"), Value::U32(c.vocab_size));
        // Always written, 0 for Lite-style models: llama.cpp requires it unless the model has
        // exactly Lite's depth (§14).
        m.set(
            a("attention.q_lora_rank"),
            Value::U32(c.q_lora_rank.unwrap_or(0)),
        );
        m.set(a("attention.kv_lora_rank"), Value::U32(c.kv_lora_rank));
        m.set(a("attention.key_length"), Value::U32(shape.key_length));
        m.set(a("attention.value_length"), Value::U32(shape.value_length));
        m.set(a("attention.key_length_mla"), Value::U32(c.qk_head_dim()));
        m.set(a("attention.value_length_mla"), Value::U32(c.v_head_dim));
        m.set(
            a("expert_feed_forward_length"),
            Value::U32(c.moe_intermediate_size),
        );
        m.set(a("expert_count"), Value::U32(shape.n_expert));
        m.set(a("expert_shared_count"), Value::U32(c.n_shared_experts));
        if let Some(s) = c.routed_scaling_factor {
            m.set(a("expert_weights_scale"), Value::F32(s));
        }
        if c.norm_topk_prob {
            m.set(a("expert_weights_norm"), Value::Bool(true));
        }
        m.set(a("rope.dimension_count"), Value::U32(c.qk_rope_head_dim));
        self.tokenizer.write_to(&mut m);
        // Last, in llama-quantize's order, so requantizing an F32 conversion gives the same file.
        m.set(
            "general.quantization_version",
            Value::U32(QUANTIZATION_VERSION),
        );
        m.set("general.file_type", Value::U32(recipe.ftype.llama_ftype()));
        m
    }
}

/// "16B", "236B", "4.2M": the parameter count as model cards write it.
pub fn size_label(n: u64) -> String {
    let (v, unit) = match n {
        n if n >= 1_000_000_000_000 => (n as f64 / 1e12, "T"),
        n if n >= 1_000_000_000 => (n as f64 / 1e9, "B"),
        n if n >= 1_000_000 => (n as f64 / 1e6, "M"),
        n => (n as f64 / 1e3, "K"),
    };
    if v >= 10.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_labels() {
        assert_eq!(super::size_label(15_706_484_224), "16B");
        assert_eq!(super::size_label(235_741_434_880), "236B");
        assert_eq!(super::size_label(4_172_288), "4.2M");
    }
}
