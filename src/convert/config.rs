//! `config.json` of a DeepSeek-V2 / DeepSeek-Coder-V2 checkpoint, checked and normalised.
//!
//! The published configs and the ones transformers 5 writes differ in small ways (`rope_scaling`
//! vs `rope_parameters`, `type` vs `rope_type`), so the raw JSON is read leniently and then
//! turned into one [`HfConfig`] whose every field the converter can rely on. A missing required
//! key, or a value we cannot honour, is an error that names the file and the key.

use std::path::Path;

use serde_json::{Map, Value};

use super::ConvertError;

/// Rope scaling, when the checkpoint uses YaRN (all DeepSeek-V2 models do).
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    pub original_max_position_embeddings: u32,
    pub beta_fast: Option<f32>,
    pub beta_slow: Option<f32>,
    pub mscale: Option<f32>,
    pub mscale_all_dim: Option<f32>,
}

/// How the router turns logits into expert weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
}

/// The hyper-parameters the converter needs, with published defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub moe_intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    pub n_shared_experts: u32,
    pub n_routed_experts: u32,
    pub num_experts_per_tok: u32,
    pub routed_scaling_factor: Option<f32>,
    pub kv_lora_rank: u32,
    pub q_lora_rank: Option<u32>,
    pub qk_rope_head_dim: u32,
    pub qk_nope_head_dim: u32,
    pub v_head_dim: u32,
    pub n_group: Option<u32>,
    pub topk_group: Option<u32>,
    pub first_k_dense_replace: u32,
    pub norm_topk_prob: bool,
    pub scoring_func: ScoringFunc,
    pub max_position_embeddings: u32,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub yarn: Option<Yarn>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// Reads the JSON object in `path`, naming the file in every error.
pub fn read_json(path: &Path) -> Result<Map<String, Value>, ConvertError> {
    let text = crate::input::read_text(path, crate::input::JSON_LIMIT)?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ConvertError::Json {
            path: path.to_path_buf(),
            message: "expected a JSON object".into(),
        }),
        Err(e) => Err(ConvertError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Typed access to a JSON object, with errors that name the file and key.
struct Keys<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConvertError {
        ConvertError::Config {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(key, format!("expected a non-negative integer, found {v}"))
                }),
        }
    }

    fn u32(&self, key: &str) -> Result<u32, ConvertError> {
        self.opt_u32(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a string, found {v}"))),
        }
    }
}

/// The `model_type`s (and `architectures`) this converter understands.
const MODEL_TYPES: [&str; 1] = ["deepseek_v2"];

impl HfConfig {
    /// Reads and checks `config.json`.
    pub fn load(path: &Path) -> Result<HfConfig, ConvertError> {
        let map = read_json(path)?;
        HfConfig::from_map(path, &map)
    }

    pub fn from_map(path: &Path, map: &Map<String, Value>) -> Result<HfConfig, ConvertError> {
        let k = Keys { path, map };
        let model_type = k
            .opt_str("model_type")?
            .ok_or_else(|| k.err("model_type", "missing"))?;
        if !MODEL_TYPES.contains(&model_type) {
            return Err(k.err(
                "model_type",
                format!("'{model_type}' is not supported; dscoder converts DeepSeek-V2 / DeepSeek-Coder-V2 (model_type \"deepseek_v2\")"),
            ));
        }
        let scoring_func = match k.opt_str("scoring_func")?.unwrap_or("softmax") {
            "softmax" => ScoringFunc::Softmax,
            "sigmoid" => ScoringFunc::Sigmoid,
            other => {
                return Err(k.err(
                    "scoring_func",
                    format!("unknown value '{other}' (expected softmax or sigmoid)"),
                ))
            }
        };
        if let Some(act) = k.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(k.err(
                    "hidden_act",
                    format!("'{act}' is not supported (DeepSeek-V2 uses silu)"),
                ));
            }
        }
        if k.opt_bool("attention_bias")?.unwrap_or(false) {
            return Err(k.err(
                "attention_bias",
                "attention biases are not supported by llama.cpp's deepseek2",
            ));
        }
        let num_attention_heads = k.u32("num_attention_heads")?;
        let cfg = HfConfig {
            vocab_size: k.u32("vocab_size")?,
            hidden_size: k.u32("hidden_size")?,
            intermediate_size: k.u32("intermediate_size")?,
            moe_intermediate_size: k.u32("moe_intermediate_size")?,
            num_hidden_layers: k.u32("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: k
                .opt_u32("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            n_shared_experts: k.opt_u32("n_shared_experts")?.unwrap_or(0),
            n_routed_experts: k.u32("n_routed_experts")?,
            num_experts_per_tok: k.u32("num_experts_per_tok")?,
            routed_scaling_factor: k.opt_f32("routed_scaling_factor")?,
            kv_lora_rank: k.opt_u32("kv_lora_rank")?.unwrap_or(512),
            q_lora_rank: k.opt_u32("q_lora_rank")?,
            qk_rope_head_dim: k.u32("qk_rope_head_dim")?,
            qk_nope_head_dim: k.u32("qk_nope_head_dim")?,
            v_head_dim: k.u32("v_head_dim")?,
            n_group: k.opt_u32("n_group")?,
            topk_group: k.opt_u32("topk_group")?,
            first_k_dense_replace: k.opt_u32("first_k_dense_replace")?.unwrap_or(0),
            norm_topk_prob: k.opt_bool("norm_topk_prob")?.unwrap_or(false),
            scoring_func,
            max_position_embeddings: k.u32("max_position_embeddings")?,
            rms_norm_eps: k.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope_theta(&k)?,
            yarn: yarn(&k)?,
            tie_word_embeddings: k.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: k.opt_u32("bos_token_id")?,
            eos_token_id: k.opt_u32("eos_token_id")?,
        };
        cfg.check(&k)?;
        Ok(cfg)
    }

    /// Consistency checks llama.cpp's loader would otherwise fail on later, less clearly.
    fn check(&self, k: &Keys<'_>) -> Result<(), ConvertError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("n_routed_experts", self.n_routed_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("moe_intermediate_size", self.moe_intermediate_size),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("v_head_dim", self.v_head_dim),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(k.err(key, "must be greater than 0"));
            }
        }
        if self.num_experts_per_tok > self.n_routed_experts {
            return Err(k.err(
                "num_experts_per_tok",
                format!(
                    "{} is more than n_routed_experts ({})",
                    self.num_experts_per_tok, self.n_routed_experts
                ),
            ));
        }
        if self.first_k_dense_replace > self.num_hidden_layers {
            return Err(k.err("first_k_dense_replace", "is more than num_hidden_layers"));
        }
        if let (Some(g), Some(used)) = (self.n_group, self.topk_group) {
            if g == 0
                || used == 0
                || used > g
                || (g > 1 && !self.n_routed_experts.is_multiple_of(g))
            {
                return Err(k.err(
                    "n_group",
                    format!(
                        "n_group {g} / topk_group {used} do not divide {} experts",
                        self.n_routed_experts
                    ),
                ));
            }
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(k.err("qk_rope_head_dim", "must be even"));
        }
        Ok(())
    }

    /// The model's shape as the GGUF will state it (MLA: one KV head whose key is the latent
    /// plus the RoPE part, and whose value is the latent).
    pub fn shape(&self) -> crate::model::ModelShape {
        crate::model::ModelShape {
            n_layer: self.num_hidden_layers,
            n_expert: self.n_routed_experts,
            n_expert_used: self.num_experts_per_tok,
            n_embd: self.hidden_size,
            n_head: self.num_attention_heads,
            n_head_kv: 1,
            key_length: self.kv_lora_rank + self.qk_rope_head_dim,
            value_length: self.kv_lora_rank,
            n_ctx_train: self.max_position_embeddings,
            mla: true,
            n_vocab: self.vocab_size as u64,
            tensors: Vec::new(),
        }
    }

    /// Head size of q and k in the attention (`qk_nope + qk_rope`).
    pub fn qk_head_dim(&self) -> u32 {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// True for a mixture-of-experts layer.
    pub fn is_moe_layer(&self, layer: u32) -> bool {
        layer >= self.first_k_dense_replace
    }
}

fn rope_object<'a>(k: &'a Keys<'_>) -> Option<(&'static str, &'a Map<String, Value>)> {
    ["rope_scaling", "rope_parameters"]
        .into_iter()
        .find_map(|key| k.get(key).and_then(Value::as_object).map(|m| (key, m)))
}

fn rope_theta(k: &Keys<'_>) -> Result<f32, ConvertError> {
    if let Some(t) = k.opt_f32("rope_theta")? {
        return Ok(t);
    }
    if let Some((key, m)) = rope_object(k) {
        if let Some(t) = m.get("rope_theta").and_then(Value::as_f64) {
            return Ok(t as f32);
        }
        let _ = key;
    }
    Ok(10000.0)
}

fn yarn(k: &Keys<'_>) -> Result<Option<Yarn>, ConvertError> {
    let Some((key, m)) = rope_object(k) else {
        return Ok(None);
    };
    let inner = Keys {
        path: k.path,
        map: m,
    };
    let kind = inner
        .opt_str("rope_type")?
        .or(inner.opt_str("type")?)
        .unwrap_or("default");
    match kind {
        "default" | "none" => Ok(None),
        "yarn" => {
            let factor = inner
                .opt_f32("factor")?
                .ok_or_else(|| k.err(&format!("{key}.factor"), "missing for yarn"))?;
            let original = inner
                .opt_u32("original_max_position_embeddings")?
                .ok_or_else(|| {
                    k.err(
                        &format!("{key}.original_max_position_embeddings"),
                        "missing for yarn",
                    )
                })?;
            Ok(Some(Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: inner.opt_f32("beta_fast")?,
                beta_slow: inner.opt_f32("beta_slow")?,
                mscale: inner.opt_f32("mscale")?,
                mscale_all_dim: inner.opt_f32("mscale_all_dim")?,
            }))
        }
        other => Err(k.err(
            &format!("{key}.type"),
            format!("rope scaling '{other}' is not supported (DeepSeek-V2 uses yarn)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lite() -> Value {
        serde_json::json!({
            "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
            "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
            "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
            "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64,
            "routed_scaling_factor": 1.0, "kv_lora_rank": 512, "q_lora_rank": null,
            "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
            "topk_method": "greedy", "n_group": 1, "topk_group": 1, "num_experts_per_tok": 6,
            "first_k_dense_replace": 1, "norm_topk_prob": false, "scoring_func": "softmax",
            "hidden_act": "silu", "max_position_embeddings": 163840, "rms_norm_eps": 1e-06,
            "rope_theta": 10000, "tie_word_embeddings": false, "bos_token_id": 100000,
            "eos_token_id": 100001, "attention_bias": false,
            "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"}
        })
    }

    fn parse(v: Value) -> Result<HfConfig, ConvertError> {
        HfConfig::from_map(Path::new("config.json"), v.as_object().unwrap())
    }

    #[test]
    fn reads_the_published_lite_config() {
        let c = parse(lite()).unwrap();
        assert_eq!(c.q_lora_rank, None);
        assert_eq!(c.qk_head_dim(), 192);
        let y = c.yarn.unwrap();
        assert_eq!((y.factor, y.original_max_position_embeddings), (40.0, 4096));
        assert_eq!(y.mscale_all_dim, Some(0.707));
    }

    #[test]
    fn reads_transformers_5_rope_parameters() {
        let mut v = lite();
        let rope = v.as_object_mut().unwrap().remove("rope_scaling").unwrap();
        let mut rope = rope.as_object().unwrap().clone();
        rope.remove("type");
        rope.insert("rope_type".into(), "yarn".into());
        rope.insert("rope_theta".into(), 10000.0.into());
        v.as_object_mut().unwrap().remove("rope_theta");
        v.as_object_mut()
            .unwrap()
            .insert("rope_parameters".into(), Value::Object(rope));
        let c = parse(v).unwrap();
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.yarn.unwrap().factor, 40.0);
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = lite();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = parse(v).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("hidden_size"),
            "{e}"
        );

        let mut v = lite();
        v["model_type"] = "llama".into();
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("llama"), "{e}");

        let mut v = lite();
        v["scoring_func"] = "relu".into();
        assert!(parse(v).unwrap_err().to_string().contains("scoring_func"));

        let mut v = lite();
        v["num_experts_per_tok"] = "six".into();
        assert!(parse(v)
            .unwrap_err()
            .to_string()
            .contains("num_experts_per_tok"));
    }
}
