//! Writes a Hugging Face-layout checkpoint with DeepSeek-Coder-V2-Lite's exact `config.json` and
//! random bf16 weights, for benchmarking `dscoder convert` (about 31 GB at the full 27 layers;
//! never used in CI).
//!
//! ```text
//! cargo run --release --example synthetic_checkpoint -- /data/lite-synth            # 27 layers
//! cargo run --release --example synthetic_checkpoint -- /data/lite-synth4 --layers 4
//! ```
//!
//! The tokenizer files are copied from the committed Lite-style fixture (its 1009 tokens are
//! padded to the real vocab_size of 102400 by the converter, as the real model's are).
//! Weights are streamed: shards are written tensor by tensor, never held in memory.

#![recursion_limit = "256"]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::json;

/// DeepSeek-Coder-V2-Lite-Instruct's config.json (layers may be cut).
fn lite_config(layers: u32) -> serde_json::Value {
    json!({
        "architectures": ["DeepseekV2ForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001,
        "bos_token_id": 100000,
        "eos_token_id": 100001,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 10944,
        "kv_lora_rank": 512,
        "max_position_embeddings": 163840,
        "model_type": "deepseek_v2",
        "moe_intermediate_size": 1408,
        "moe_layer_freq": 1,
        "n_group": 1,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "norm_topk_prob": false,
        "num_attention_heads": 16,
        "num_experts_per_tok": 6,
        "num_hidden_layers": layers,
        "num_key_value_heads": 16,
        "pretraining_tp": 1,
        "q_lora_rank": null,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
            "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 1.0,
        "scoring_func": "softmax",
        "seq_aux": true,
        "tie_word_embeddings": false,
        "topk_group": 1,
        "topk_method": "greedy",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.39.3",
        "use_cache": true,
        "v_head_dim": 128,
        "vocab_size": 102400
    })
}

/// Every tensor (HF name, torch shape) of the Lite architecture.
fn lite_tensors(layers: u32) -> Vec<(String, Vec<usize>)> {
    let (h, vocab, heads) = (2048, 102400, 16);
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, h]),
        ("model.norm.weight".to_string(), vec![h]),
        ("lm_head.weight".to_string(), vec![vocab, h]),
    ];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        v.push((p("input_layernorm.weight"), vec![h]));
        v.push((p("post_attention_layernorm.weight"), vec![h]));
        v.push((p("self_attn.q_proj.weight"), vec![heads * 192, h]));
        v.push((p("self_attn.kv_a_proj_with_mqa.weight"), vec![576, h]));
        v.push((p("self_attn.kv_a_layernorm.weight"), vec![512]));
        v.push((p("self_attn.kv_b_proj.weight"), vec![heads * 256, 512]));
        v.push((p("self_attn.o_proj.weight"), vec![h, heads * 128]));
        if l == 0 {
            v.push((p("mlp.gate_proj.weight"), vec![10944, h]));
            v.push((p("mlp.up_proj.weight"), vec![10944, h]));
            v.push((p("mlp.down_proj.weight"), vec![h, 10944]));
            continue;
        }
        v.push((p("mlp.gate.weight"), vec![64, h]));
        for e in 0..64 {
            v.push((
                p(&format!("mlp.experts.{e}.gate_proj.weight")),
                vec![1408, h],
            ));
            v.push((p(&format!("mlp.experts.{e}.up_proj.weight")), vec![1408, h]));
            v.push((
                p(&format!("mlp.experts.{e}.down_proj.weight")),
                vec![h, 1408],
            ));
        }
        v.push((p("mlp.shared_experts.gate_proj.weight"), vec![2816, h]));
        v.push((p("mlp.shared_experts.up_proj.weight"), vec![2816, h]));
        v.push((p("mlp.shared_experts.down_proj.weight"), vec![h, 2816]));
    }
    v
}

/// bf16 bytes of `n` values: norms are 1.0, everything else uniform in ±0.03.
fn fill(out: &mut [u8], seed: u64, norm: bool) {
    const CHUNK: usize = 1 << 20;
    out.par_chunks_mut(CHUNK * 2)
        .enumerate()
        .for_each(|(i, c)| {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(
                seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            for v in c.chunks_exact_mut(2) {
                let x: f32 = if norm {
                    1.0
                } else {
                    rng.gen_range(-0.03f32..0.03)
                };
                v.copy_from_slice(&((x.to_bits() >> 16) as u16).to_le_bytes());
            }
        });
}

fn write_shard(path: &Path, tensors: &[(String, Vec<usize>)], seed: u64) -> Result<u64> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut text = serde_json::to_string(&header)?;
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())?;
    let mut buf = Vec::new();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        buf.resize(shape.iter().product::<usize>() * 2, 0);
        fill(
            &mut buf,
            seed.wrapping_add(i as u64 * 7919),
            name.contains("norm"),
        );
        w.write_all(&buf)?;
    }
    w.flush()?;
    Ok(offset as u64)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut layers = 27u32;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--layers" => layers = args.next().context("--layers N")?.parse()?,
            _ if out.is_none() => out = Some(a.into()),
            _ => bail!("usage: synthetic_checkpoint OUT_DIR [--layers N]"),
        }
    }
    let out = out.context("usage: synthetic_checkpoint OUT_DIR [--layers N]")?;
    std::fs::create_dir_all(&out)?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lite-tiny");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(f), out.join(f)).with_context(|| format!("copying {f}"))?;
    }
    std::fs::write(
        out.join("config.json"),
        serde_json::to_vec_pretty(&lite_config(layers))?,
    )?;

    // About 4 GiB per shard, as published checkpoints are split.
    let tensors = lite_tensors(layers);
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut size = 0usize;
    for t in tensors {
        let n = t.1.iter().product::<usize>() * 2;
        if size + n > 4 << 30 && !shards.last().unwrap().is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        size += n;
        shards.last_mut().unwrap().push(t);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        total += write_shard(&out.join(&file), shard, 0xD5C0DE + i as u64)?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone().into());
        }
        eprintln!("wrote {file}");
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        out.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index)?,
    )?;
    println!(
        "wrote {} ({} layers, {:.2} GB of bf16 weights)",
        out.display(),
        layers,
        total as f64 / 1e9
    );
    Ok(())
}
