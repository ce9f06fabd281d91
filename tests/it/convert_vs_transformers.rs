//! `dscoder convert` on the committed fixtures, run through llama.cpp, against HF transformers'
//! own outputs (computed in float32 from the same bf16 weights by `fixtures/make_fixtures.py`).

use std::path::Path;
use std::process::Command;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use serde_json::Value;

use crate::common::{self, fixture, ids};

fn reference(model: &str) -> Value {
    let text = std::fs::read_to_string(fixture(model).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn backend() -> &'static LlamaBackend {
    dscoder::engine::backend()
}

fn convert(model: &str, out: &Path, args: &[&str]) {
    common::convert_with(&fixture(model), out, args);
}

/// Logits of every position of `tokens`, in one batch.
fn all_logits(model: &LlamaModel, tokens: &[i32]) -> Vec<Vec<f32>> {
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(256))
        .with_n_batch(256)
        .with_n_ubatch(256);
    let mut ctx = model.new_context(backend(), params).unwrap();
    let mut batch = LlamaBatch::new(256, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(LlamaToken(t), i as i32, &[0], true).unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    (0..tokens.len())
        .map(|i| ctx.get_logits_ith(i as i32).to_vec())
        .collect()
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(reference || ours) for one position.
fn kl(reference: &[f32], ours: &[f32]) -> f64 {
    let p = log_softmax(reference);
    let q = log_softmax(ours);
    p.iter().zip(&q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum()
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Per-sequence results of a model against the reference logits.
struct Agreement {
    mean_kl: f64,
    max_kl: f64,
    top1_mismatches: usize,
    /// Mismatches where the reference's top-1/top-2 margin exceeds 0.01 (not a near-tie).
    clear_top1_mismatches: usize,
    positions: usize,
}

fn agreement(model_name: &str, gguf: &Path) -> Agreement {
    let r = reference(model_name);
    let model = LlamaModel::load_from_file(backend(), gguf, &LlamaModelParams::default())
        .unwrap_or_else(|e| panic!("{} does not load: {e}", gguf.display()));
    let mut a = Agreement {
        mean_kl: 0.0,
        max_kl: 0.0,
        top1_mismatches: 0,
        clear_top1_mismatches: 0,
        positions: 0,
    };
    for seq in r["logits"].as_array().unwrap() {
        let tokens = ids(&seq["token_ids"]);
        let shape: Vec<usize> = seq["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let bytes = std::fs::read(fixture(model_name).join(seq["file"].as_str().unwrap())).unwrap();
        let want: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let got = all_logits(&model, &tokens);
        let margins = seq["top1_top2_margin"].as_array().unwrap();
        for (pos, ours) in got.iter().enumerate() {
            let theirs = &want[pos * shape[1]..(pos + 1) * shape[1]];
            let k = kl(theirs, ours);
            a.mean_kl += k;
            a.max_kl = a.max_kl.max(k);
            if argmax(theirs) != argmax(ours) {
                a.top1_mismatches += 1;
                if margins[pos].as_f64().unwrap() > 0.01 {
                    a.clear_top1_mismatches += 1;
                }
            }
            a.positions += 1;
        }
    }
    a.mean_kl /= a.positions as f64;
    eprintln!(
        "{model_name} {}: mean KL {:.3e}, max KL {:.3e}, top-1 mismatches {} ({} clear) of {}",
        gguf.file_name().unwrap().to_string_lossy(),
        a.mean_kl,
        a.max_kl,
        a.top1_mismatches,
        a.clear_top1_mismatches,
        a.positions
    );
    a
}

/// Greedy decoding, one token at a time through the KV cache.
fn greedy(gguf: &Path, prompt: &[i32], n: usize) -> Vec<i32> {
    let model = LlamaModel::load_from_file(backend(), gguf, &LlamaModelParams::default()).unwrap();
    let params = LlamaContextParams::default().with_n_ctx(std::num::NonZeroU32::new(256));
    let mut ctx = model.new_context(backend(), params).unwrap();
    let mut batch = LlamaBatch::new(256, 1);
    for (i, &t) in prompt.iter().enumerate() {
        batch
            .add(LlamaToken(t), i as i32, &[0], i + 1 == prompt.len())
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let mut out = Vec::new();
    let start = prompt.len() as i32;
    for pos in start..start + n as i32 {
        let next = argmax(ctx.get_logits_ith(batch.n_tokens() - 1)) as i32;
        out.push(next);
        batch.clear();
        batch.add(LlamaToken(next), pos, &[0], true).unwrap();
        ctx.decode(&mut batch).unwrap();
    }
    out
}

#[test]
fn lite_f32_and_bf16_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference("lite-tiny");
    for ty in ["f32", "bf16"] {
        let out = dir.path().join(format!("lite-{ty}.gguf"));
        convert("lite-tiny", &out, &["--type", ty]);
        let a = agreement("lite-tiny", &out);
        if ty == "f32" {
            assert!(a.mean_kl <= 1e-4, "{ty}: mean KL {}", a.mean_kl);
            assert_eq!(
                a.top1_mismatches, 0,
                "{ty}: top-1 must agree at every position"
            );
        } else {
            // The file is exact (bf16 is the checkpoint's own type), but ggml's AVX-512 BF16
            // kernels (the native build's) round the activations to bf16 as well, where
            // transformers multiplies bf16 weights by f32 activations: mean KL 1.2e-4 there
            // against 9.8e-5 with the AVX2 kernels, and one near-tie may flip.
            assert!(a.mean_kl <= 2.5e-4, "{ty}: mean KL {}", a.mean_kl);
            assert_eq!(
                a.clear_top1_mismatches, 0,
                "{ty}: top-1 must agree wherever the reference is not a near-tie"
            );
        }
        let prompt = ids(&r["greedy"]["prompt_ids"]);
        let want = ids(&r["greedy"]["output_ids"]);
        assert_eq!(
            greedy(&out, &prompt, want.len()),
            want,
            "{ty}: greedy continuation"
        );
    }
}

#[test]
fn lite_quantized_stay_close_to_transformers() {
    let dir = tempfile::tempdir().unwrap();
    // (type args, bound on the mean KL). This random-weight fixture is far more sensitive to
    // 8-bit noise than a trained model: Q8_0 on the attention alone costs 1.5e-3 mean KL while
    // F16 costs 3e-6 (measured, BENCHMARKS.md), so the 1e-3 for Q8_0 is out of reach
    // here and the bounds below are regression guards a few times above what we measure
    // (q8_0 3.2e-3, q4_k_m 0.20, the mix 7.9e-3). They still catch real mistakes: a wrong scale
    // or tensor layout gives a mean KL above 1 on this model.
    let cases: [(&[&str], f64); 3] = [
        (&["--type", "q8_0"], 5e-3),
        (&["--type", "q4_k_m"], 0.4),
        (
            &["--type", "q8_0", "--experts", "q4_k", "--shared", "q8_0"],
            0.03,
        ),
    ];
    for (args, bound) in cases {
        let out = dir.path().join("q.gguf");
        convert("lite-tiny", &out, args);
        let a = agreement("lite-tiny", &out);
        assert!(
            a.mean_kl <= bound,
            "{args:?}: mean KL {} > {bound}",
            a.mean_kl
        );
    }
}

/// The full-style model (q_lora, 4 expert groups, routed_scaling_factor 2.5). llama.cpp scores an
/// expert group by the sum of its top two experts, HF DeepSeek-V2 by the max (deepseek2-gguf.md
/// §14), so on the few tokens where that picks other experts the logits differ. The fixture
/// records 13 token-layers of 80 where the rule changes the choice. Away from those, the model
/// must agree, so the bound is loose on KL but tight on the top-1 token.
#[test]
fn full_style_f32_agrees_except_for_group_routing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("full-f32.gguf");
    convert("full-tiny", &out, &["--type", "f32"]);
    let a = agreement("full-tiny", &out);
    assert!(a.mean_kl <= 0.05, "mean KL {}", a.mean_kl);
    assert!(
        a.clear_top1_mismatches * 10 <= a.positions,
        "too many top-1 mismatches: {}",
        a.clear_top1_mismatches
    );
}

#[test]
fn tokenization_and_chat_rendering_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lite.gguf");
    convert("lite-tiny", &out, &["--type", "q8_0"]);
    let model = LlamaModel::load_from_file(backend(), &out, &LlamaModelParams::default()).unwrap();
    let r = reference("lite-tiny");
    for case in r["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let with: Vec<i32> = model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .iter()
            .map(|t| t.0)
            .collect();
        let without: Vec<i32> = model
            .vocab()
            .tokenize(text.as_bytes(), false, true)
            .iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(with, ids(&case["ids_with_special"]), "with BOS: {text:?}");
        assert_eq!(
            without,
            ids(&case["ids_without_special"]),
            "without BOS: {text:?}"
        );
    }
    let chat = &r["chat"];
    let messages: Vec<LlamaChatMessage> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            LlamaChatMessage::new(
                m["role"].as_str().unwrap().into(),
                m["content"].as_str().unwrap().into(),
            )
            .unwrap()
        })
        .collect();
    let template = model.chat_template(None).unwrap();
    let rendered = model
        .apply_chat_template(&template, &messages, true)
        .unwrap();
    // llama.cpp's renderer leaves BOS to tokenization (add_bos), HF puts it in the text.
    assert_eq!(rendered, chat["rendered_without_bos"].as_str().unwrap());
    let tokens: Vec<i32> = model
        .vocab()
        .tokenize(rendered.as_bytes(), true, true)
        .iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(tokens, ids(&chat["ids"]));
}

/// One path for quantized bytes: converting straight to a type gives the same file as converting
/// to F32 and running `dscoder quantize` on that.
#[test]
fn converting_straight_equals_converting_to_f32_then_quantizing() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("f32.gguf");
    convert("full-tiny", &f32_path, &["--type", "f32"]);
    let cases: [&[&str]; 3] = [
        &["--type", "q4_k_m"],
        &["--type", "q5_k_s"],
        &["--type", "bf16", "--experts", "q4_0", "--attn", "q8_0"],
    ];
    for args in cases {
        let straight = dir.path().join("straight.gguf");
        convert("full-tiny", &straight, args);
        let requant = dir.path().join("requant.gguf");
        let o = Command::new(env!("CARGO_BIN_EXE_dscoder"))
            .arg("quantize")
            .arg(&f32_path)
            .arg(&requant)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            std::fs::read(&straight).unwrap() == std::fs::read(&requant).unwrap(),
            "{args:?}: files differ"
        );
    }
}
