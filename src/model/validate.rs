//! What llama.cpp's deepseek2 loader and graph assert, checked before llama.cpp sees a file.
//!
//! llama.cpp turns most bad files into a load error, but some values reach a `GGML_ASSERT`, a
//! null function pointer or a C++ exception that crosses into Rust, and the process dies
//! (SIGABRT, SIGSEGV) instead. Each check below names the vendored source line that would fire;
//! they were derived from reading `src/llama-model.cpp`, `src/models/deepseek2.cpp`,
//! `src/llama-graph.cpp`, `src/llama-vocab.cpp`, `ggml/src/ggml-cpu/` and `ggml-backend.cpp` of
//! the llama.cpp that llama-cpp-sys-2 0.1.161 vendors (the audit, with file and line for each
//! condition, is `docs/llama-deepseek2-asserts.md`). Missing and misshapen tensors, which llama.cpp
//! only reports as "cannot load", are named here too, except the attention projections' shapes.

use std::collections::HashSet;

use dscoder_quantize::GgmlType;

use crate::gguf::{GgufFile, Value};

use super::ARCH;

/// The first fault found, in words.
#[derive(Debug, thiserror::Error)]
#[error("{path}: llama.cpp cannot run this file: {fault}")]
pub struct ValidateError {
    pub path: String,
    pub fault: String,
}

/// `LLAMA_MAX_LAYERS` and `LLAMA_MAX_EXPERTS` (src/llama-hparams.h).
const MAX_LAYERS: u64 = 512;
const MAX_EXPERTS: u64 = 1024;
/// `TENSOR_ALIGNMENT` (ggml-backend): a mapped tensor's address must be a multiple of it.
const TENSOR_ALIGNMENT: u64 = 32;

/// Checks a deepseek2 GGUF against llama.cpp's hard limits. Files of other architectures are
/// left alone (the shape reader refuses them with its own message).
pub fn validate(file: &GgufFile) -> Result<(), ValidateError> {
    let fail = |fault: String| ValidateError {
        path: file.path().display().to_string(),
        fault: crate::units::printable(&fault).into_owned(),
    };
    if file
        .metadata
        .get(super::keys::ARCHITECTURE)
        .and_then(Value::as_str)
        != Some(ARCH)
    {
        return Ok(());
    }
    hyper_parameters(file).map_err(fail)?;
    tokenizer(file).map_err(fail)?;
    tensors(file).map_err(fail)?;
    tensor_table(file).map_err(fail)?;
    Ok(())
}

/// The attention widths of deepseek2 (llama-model.cpp's names: E, H, Q, L, R, P, Dkm, Dvm).
struct Attention {
    n_embd: u64,
    n_head: u64,
    q_lora: u64,
    kv_lora: u64,
    rope: u64,
    nope: u64,
    key: u64,
    value: u64,
}

/// Checks that a tensor exists with a shape; `Err` names it.
type WantShape<'a> = dyn Fn(&str, &[u64]) -> Result<(), String> + 'a;

/// One layer's attention tensors in whichever layout it has: the query through a LoRA
/// (`attn_q_a`/`attn_q_b`, the 236B) or direct (`attn_q`, Lite); the key/value up-projection
/// split per head for MLA (`attn_k_b`/`attn_v_b`) or fused (`attn_kv_b`, older files).
fn attention(
    n: &dyn Fn(&str) -> String,
    want: &WantShape<'_>,
    has: &dyn Fn(&str) -> bool,
    a: &Attention,
) -> Result<(), String> {
    if a.q_lora > 0 {
        want(&n("attn_q_a_norm.weight"), &[a.q_lora])?;
        want(&n("attn_q_a.weight"), &[a.n_embd, a.q_lora])?;
        want(&n("attn_q_b.weight"), &[a.q_lora, a.n_head * a.key])?;
    } else {
        want(&n("attn_q.weight"), &[a.n_embd, a.n_head * a.key])?;
    }
    want(&n("attn_kv_a_norm.weight"), &[a.kv_lora])?;
    want(&n("attn_kv_a_mqa.weight"), &[a.n_embd, a.kv_lora + a.rope])?;
    if has(&n("attn_k_b.weight")) || has(&n("attn_v_b.weight")) {
        want(&n("attn_k_b.weight"), &[a.nope, a.kv_lora, a.n_head])?;
        want(&n("attn_v_b.weight"), &[a.kv_lora, a.value, a.n_head])?;
    } else {
        want(
            &n("attn_kv_b.weight"),
            &[a.kv_lora, a.n_head * (a.nope + a.value)],
        )?;
    }
    want(&n("attn_output.weight"), &[a.n_head * a.value, a.n_embd])
}

/// The tensors every layer needs, with the shapes that do not depend on the attention layout
/// (llama-model.cpp's deepseek2 `create_tensor` calls, ggml order). llama.cpp itself only says
/// "cannot load" for a missing or misshapen tensor; this names it.
fn tensor_table(file: &GgufFile) -> Result<(), String> {
    let get = |key: &str| uint(file, key).ok().flatten().unwrap_or(0);
    let (n_layer, n_embd) = (get("block_count"), get("embedding_length"));
    let (n_expert, lead) = (get("expert_count"), get("leading_dense_block_count"));
    let (ff, ff_exp, n_shared) = (
        get("feed_forward_length"),
        get("expert_feed_forward_length"),
        get("expert_shared_count"),
    );
    let n_vocab = file
        .metadata
        .get(super::keys::TOKENS)
        .and_then(Value::as_array)
        .map_or(0, |a| a.len() as u64);
    let dims = |name: &str| file.tensor(name).map(|t| t.dims.clone());
    let has = |name: &str| file.tensor(name).is_some();
    let want = |name: &str, shape: &[u64]| -> Result<(), String> {
        match dims(name) {
            None => Err(format!("tensor '{name}' is missing")),
            Some(d) if d != shape => Err(format!(
                "tensor '{name}' has shape {d:?}, expected {shape:?} from the hyper-parameters"
            )),
            Some(_) => Ok(()),
        }
    };
    want("token_embd.weight", &[n_embd, n_vocab])?;
    want("output_norm.weight", &[n_embd])?;
    let n_head = get("attention.head_count");
    let rope = get("rope.dimension_count");
    let key = uint(file, "attention.key_length_mla")
        .ok()
        .flatten()
        .unwrap_or_else(|| get("attention.key_length"));
    let value = uint(file, "attention.value_length_mla")
        .ok()
        .flatten()
        .unwrap_or_else(|| get("attention.value_length"));
    let attn = Attention {
        n_embd,
        n_head,
        q_lora: get("attention.q_lora_rank"),
        kv_lora: get("attention.kv_lora_rank"),
        rope,
        nope: key.saturating_sub(rope),
        key,
        value,
    };
    for il in 0..n_layer {
        let n = |s: &str| format!("blk.{il}.{s}");
        want(&n("attn_norm.weight"), &[n_embd])?;
        want(&n("ffn_norm.weight"), &[n_embd])?;
        attention(&n, &want, &has, &attn)?;
        if il < lead {
            want(&n("ffn_gate.weight"), &[n_embd, ff])?;
            want(&n("ffn_up.weight"), &[n_embd, ff])?;
            want(&n("ffn_down.weight"), &[ff, n_embd])?;
        } else {
            want(&n("ffn_gate_inp.weight"), &[n_embd, n_expert])?;
            if has(&n("ffn_gate_up_exps.weight")) {
                want(
                    &n("ffn_gate_up_exps.weight"),
                    &[n_embd, 2 * ff_exp, n_expert],
                )?;
            } else {
                want(&n("ffn_gate_exps.weight"), &[n_embd, ff_exp, n_expert])?;
                want(&n("ffn_up_exps.weight"), &[n_embd, ff_exp, n_expert])?;
            }
            want(&n("ffn_down_exps.weight"), &[ff_exp, n_embd, n_expert])?;
            if n_shared > 0 {
                want(&n("ffn_gate_shexp.weight"), &[n_embd, ff_exp * n_shared])?;
                want(&n("ffn_up_shexp.weight"), &[n_embd, ff_exp * n_shared])?;
                want(&n("ffn_down_shexp.weight"), &[ff_exp * n_shared, n_embd])?;
            }
        }
    }
    Ok(())
}

/// A metadata value as an unsigned integer; arrays (per-layer values) must hold one value.
fn uint(file: &GgufFile, key: &str) -> Result<Option<u64>, String> {
    let k = format!("{ARCH}.{key}");
    let Some(v) = file.metadata.get(&k) else {
        return Ok(None);
    };
    if let Some(a) = v.as_array() {
        let vals: Vec<i128> = match a {
            crate::gguf::Array::U32(x) => x.iter().map(|&v| v.into()).collect(),
            crate::gguf::Array::I32(x) => x.iter().map(|&v| v.into()).collect(),
            _ => return Err(format!("'{k}' is an array of {}", a.type_name())),
        };
        return match vals.first() {
            Some(&first) if vals.iter().all(|&v| v == first) && first >= 0 => {
                Ok(Some(first as u64))
            }
            Some(_) => Err(format!(
                "'{k}' differs between layers; llama.cpp's graph uses one value for all"
            )),
            None => Err(format!("'{k}' is an empty array")),
        };
    }
    match v.as_integer() {
        Some(i) if i >= 0 => Ok(Some(i as u64)),
        _ => Err(format!(
            "'{k}' is {}, not a non-negative integer",
            v.type_name()
        )),
    }
}

fn float(file: &GgufFile, key: &str) -> Option<f64> {
    let v = file.metadata.get(&format!("{ARCH}.{key}"))?;
    v.as_f32().map(f64::from).or(v.as_f64())
}

fn hyper_parameters(file: &GgufFile) -> Result<(), String> {
    let need = |key: &str| -> Result<u64, String> {
        uint(file, key)?.ok_or_else(|| format!("'{ARCH}.{key}' is missing"))
    };
    // llama-model.cpp: GGML_ASSERT(hparams.n_layer <= LLAMA_MAX_LAYERS) and later a zero-layer graph.
    let n_layer = need("block_count")?;
    if !(1..=MAX_LAYERS).contains(&n_layer) {
        return Err(format!("block_count {n_layer} is outside 1..={MAX_LAYERS}"));
    }
    // Multi-token-prediction layers: dscoder never loads them, and llama.cpp makes the trunk's
    // tensors optional when they are present (a null weight in the graph).
    if let Some(n) = uint(file, "nextn_predict_layers")?.filter(|&n| n > 0) {
        return Err(format!(
            "nextn_predict_layers is {n}; multi-token-prediction files are not supported"
        ));
    }
    let n_expert = uint(file, "expert_count")?.unwrap_or(0);
    let n_used = uint(file, "expert_used_count")?.unwrap_or(0);
    let lead = uint(file, "leading_dense_block_count")?.unwrap_or(0);
    if n_expert > MAX_EXPERTS {
        return Err(format!(
            "expert_count {n_expert} is above llama.cpp's maximum of {MAX_EXPERTS}"
        ));
    }
    if lead < n_layer && n_expert == 0 {
        return Err("expert_count is 0 but the model has mixture-of-experts layers".into());
    }
    if n_expert > 0 && !(1..=n_expert).contains(&n_used) {
        return Err(format!(
            "expert_used_count {n_used} is outside 1..={n_expert} (expert_count)"
        ));
    }
    if n_expert == 0 && n_used != 0 {
        return Err(format!("expert_used_count is {n_used} without experts"));
    }
    let groups = uint(file, "expert_group_count")?.unwrap_or(0);
    if groups > 1 {
        let used = uint(file, "expert_group_used_count")?.unwrap_or(0);
        if n_expert % groups != 0 || n_expert / groups < 2 || !(1..groups).contains(&used) {
            return Err(format!(
                "expert groups: {groups} groups of {n_expert} experts with {used} used \
                 (llama.cpp needs whole groups of at least 2 and 1 <= used < groups)"
            ));
        }
    }
    if let Some(g) = uint(file, "expert_gating_func")?.filter(|&g| g > 4) {
        return Err(format!(
            "expert_gating_func {g} is not one llama.cpp knows (0-4)"
        ));
    }
    if let Some(v) = file.metadata.get(&format!("{ARCH}.rope.scaling.type")) {
        match v.as_str() {
            Some("none" | "linear" | "yarn" | "longrope") => {}
            Some(other) => return Err(format!("rope.scaling.type '{other}' is not supported")),
            None => return Err("rope.scaling.type is not a string".into()),
        }
    }
    // ggml-cpu rms_norm: GGML_ASSERT(eps >= 0); NaN fails it too.
    match float(file, "attention.layer_norm_rms_epsilon") {
        Some(eps) if eps.is_finite() && eps > 0.0 => {}
        Some(eps) => {
            return Err(format!(
                "attention.layer_norm_rms_epsilon is {eps}; it must be a positive number"
            ))
        }
        None => return Err("attention.layer_norm_rms_epsilon is missing or not a float".into()),
    }
    if float(file, "attention.temperature_scale").is_some_and(|s| s != 0.0)
        && uint(file, "attention.temperature_length")?.unwrap_or(0) == 0
    {
        return Err("attention.temperature_scale is set without temperature_length".into());
    }
    if file
        .metadata
        .get(&format!("{ARCH}.attention.causal"))
        .and_then(Value::as_bool)
        == Some(false)
    {
        return Err("attention.causal is false; DeepSeek models are causal".into());
    }

    // Attention geometry (deepseek2.cpp and the KV cache's set_rows).
    let n_embd = need("embedding_length")?;
    let n_head = need("attention.head_count")?;
    if n_embd == 0 || n_head == 0 {
        return Err("embedding_length and attention.head_count must be at least 1".into());
    }
    let n_head_kv = uint(file, "attention.head_count_kv")?.unwrap_or(n_head);
    let key_len = uint(file, "attention.key_length")?.unwrap_or(n_embd / n_head);
    let value_len = uint(file, "attention.value_length")?.unwrap_or(n_embd / n_head);
    let key_mla = uint(file, "attention.key_length_mla")?.unwrap_or(0);
    let value_mla = uint(file, "attention.value_length_mla")?.unwrap_or(0);
    if (key_mla > 0) != (value_mla > 0) {
        return Err("attention.key_length_mla and value_length_mla must come together".into());
    }
    let mla = key_mla > 0;
    let rope = need("rope.dimension_count")?;
    let kv_lora = need("attention.kv_lora_rank")?;
    let key_head = if mla { key_mla } else { key_len };
    // deepseek2.cpp: GGML_ASSERT(n_embd_head_qk_nope >= 1); the CPU RoPE kernel wants even sizes.
    if rope < 2 || rope >= key_head || rope % 2 != 0 {
        return Err(format!(
            "rope.dimension_count {rope} must be even and below the key head size {key_head}"
        ));
    }
    if !mla && (key_head - rope) % 2 != 0 {
        return Err(format!(
            "the non-rotated part of the key head ({}) must be even",
            key_head - rope
        ));
    }
    if kv_lora == 0 {
        return Err("attention.kv_lora_rank must be at least 1".into());
    }
    if mla {
        if key_len != kv_lora + rope || value_len != kv_lora || n_head_kv != 1 {
            return Err(format!(
                "MLA cache geometry: key_length {key_len} must be kv_lora_rank + rope ({}), \
                 value_length {value_len} must be kv_lora_rank ({kv_lora}) and head_count_kv \
                 {n_head_kv} must be 1",
                kv_lora + rope
            ));
        }
    } else if n_head_kv != n_head {
        return Err(format!(
            "head_count_kv {n_head_kv} must equal head_count {n_head} without MLA"
        ));
    }
    // Tensor data must start 32-byte aligned in memory (ggml_backend_cpu_buffer_from_ptr).
    if let Some(t) = file
        .tensors
        .iter()
        .find(|t| !(file.data_offset + t.offset).is_multiple_of(TENSOR_ALIGNMENT))
    {
        return Err(format!(
            "tensor '{}' starts at byte {}, not a multiple of {TENSOR_ALIGNMENT} (general.alignment {}); \
             llama.cpp maps tensors in place and needs {TENSOR_ALIGNMENT}-byte alignment",
            t.name,
            file.data_offset + t.offset,
            file.alignment
        ));
    }
    if file
        .metadata
        .get("split.count")
        .and_then(Value::as_integer)
        .unwrap_or(0)
        > 1
    {
        return Err(
            "split GGUF files are not supported; merge them with llama-gguf-split --merge".into(),
        );
    }
    Ok(())
}

fn tokenizer(file: &GgufFile) -> Result<(), String> {
    let model = file
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str);
    // llama-vocab.cpp: "none" asserts on the first vocab call, "llama" with a GPT-2 vocabulary
    // throws out of llama_tokenize, "rwkv" asserts at load.
    if model != Some("gpt2") {
        return Err(format!(
            "tokenizer.ggml.model is {}; DeepSeek models use 'gpt2' (byte-level BPE)",
            model.map_or("missing".to_string(), |m| format!("'{m}'"))
        ));
    }
    let tokens = file
        .metadata
        .get(super::keys::TOKENS)
        .and_then(Value::as_array)
        .and_then(|a| a.as_strings())
        .ok_or("tokenizer.ggml.tokens is missing or not a list of strings")?;
    if tokens.is_empty() {
        return Err("tokenizer.ggml.tokens is empty".into());
    }
    // llama-vocab.cpp renames empty tokens "[EMPTY_i]" and then asserts every text is distinct.
    let mut seen = HashSet::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let text = if t.is_empty() {
            format!("[EMPTY_{i}]")
        } else {
            t.clone()
        };
        if !seen.insert(text) {
            return Err(format!(
                "token {i} ({t:?}) appears twice in tokenizer.ggml.tokens"
            ));
        }
    }
    for (flag, id) in [
        (
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.bos_token_id",
        ),
        (
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.eos_token_id",
        ),
    ] {
        if file.metadata.get(flag).and_then(Value::as_bool) == Some(true) {
            let ok = file
                .metadata
                .get(id)
                .and_then(Value::as_integer)
                .is_some_and(|v| v >= 0 && (v as usize) < tokens.len());
            if !ok {
                return Err(format!("{flag} is set but {id} is missing or out of range"));
            }
        }
    }
    Ok(())
}

/// Weight types the CPU back-end can multiply (those with a `vec_dot`; ggml-cpu.c).
fn cpu_can_multiply(ty: GgmlType) -> bool {
    !matches!(
        ty,
        GgmlType::Q8_1
            | GgmlType::Q8_K
            | GgmlType::I8
            | GgmlType::I16
            | GgmlType::I32
            | GgmlType::I64
            | GgmlType::F64
    )
}

fn tensors(file: &GgufFile) -> Result<(), String> {
    for t in &file.tensors {
        let name = t.name.as_str();
        if name.ends_with(".scale") || name.ends_with(".input_scale") {
            return Err(format!(
                "tensor '{name}': scale tensors (NVFP4 checkpoints) are not supported for deepseek2"
            ));
        }
        // Norm weights and the expert bias go through F32-only element-wise ops
        // (ggml-cpu binary-ops: GGML_ABORT "unsupported types").
        let elementwise = name.ends_with("_norm.weight") || name.ends_with("exp_probs_b.bias");
        if elementwise && t.ty != GgmlType::F32 {
            return Err(format!(
                "tensor '{name}' is {}; llama.cpp's CPU back-end needs F32 for norm weights",
                t.ty
            ));
        }
        if !elementwise && !cpu_can_multiply(t.ty) {
            return Err(format!(
                "tensor '{name}' is {}, a type llama.cpp's CPU back-end cannot multiply",
                t.ty
            ));
        }
    }
    Ok(())
}
