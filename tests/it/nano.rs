//! The bundled nano model (`nano/`): it loads and answers, and through our converter and
//! llama.cpp it reproduces transformers' greedy output and perplexity (`nano/reference.json`,
//! computed by `nano/train_nano.py` on the GPU machine right after training).

use std::path::PathBuf;

use dscoder::chat::{Message, Role};
use dscoder::engine::{Engine, EngineSettings, SamplingSettings};
use dscoder::prompt::render_chat;

use crate::common;
use common::ids;

fn nano(path: &str) -> PathBuf {
    common::repo("nano").join(path)
}

fn reference() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(nano("reference.json")).unwrap()).unwrap()
}

/// `nano/model` converted to `ty`, once per run and type.
fn converted(ty: &'static str) -> PathBuf {
    common::converted(&nano("model"), ty)
}

/// Every greedy continuation in the reference (chat prompts through the chat template, raw
/// prompts as they are), token for token.
fn greedy_matches_transformers(ty: &'static str) {
    let r = reference();
    let engine = Engine::load(&converted(ty), EngineSettings::default()).unwrap();
    let mut session = engine.session().unwrap();
    for g in r["greedy"].as_array().unwrap() {
        let prompt = ids(&g["prompt_ids"]);
        if g["kind"] == "chat" {
            // Our chat path (template, then tokens with BOS) gives the prompt the model was
            // trained on.
            let user = g["user"].as_str().unwrap().to_string();
            let rendered = render_chat(&engine, &[Message::new(Role::User, user)]).unwrap();
            assert_eq!(engine.tokenize(&rendered, true), prompt, "{rendered:?}");
        } else {
            assert_eq!(
                engine.tokenize(g["prompt_text"].as_str().unwrap(), true),
                prompt,
                "tokenization of {:?}",
                g["prompt_text"]
            );
        }
        let mut want = ids(&g["output_ids"]);
        let eos = g["stopped_at_eos"].as_bool().unwrap();
        if eos {
            want.pop(); // the engine stops at EOS without returning it
        }
        let stats = session
            .generate(&prompt, &SamplingSettings::greedy(), want.len() + 1, |_| {
                true
            })
            .unwrap();
        let got = &stats.tokens[..stats.tokens.len().min(want.len())];
        assert_eq!(got, &want[..], "{ty}: greedy after {:?}", g["prompt_text"]);
        if eos {
            assert_eq!(stats.tokens.len(), want.len(), "{ty}: should stop at EOS");
        }
    }
}

#[test]
fn greedy_f32_matches_transformers() {
    greedy_matches_transformers("f32");
}

#[test]
fn greedy_bf16_matches_transformers() {
    greedy_matches_transformers("bf16");
}

/// `dscoder perplexity` on the held-out code against transformers' value computed with
/// llama-perplexity's procedure (BOS-prefixed tokens, 256-token chunks, second halves scored).
#[test]
fn perplexity_agrees_with_transformers() {
    let r = reference();
    let want = &r["perplexity"]["llama_cpp_bos_prefixed"]["n_ctx_256"];
    let o = common::dscoder()
        .arg("perplexity")
        .arg(converted("f32"))
        .arg("-f")
        .arg(nano("heldout.py.txt"))
        .args(["--chunk-size", "256", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Same tokens and the same work.
    assert_eq!(got["n_tokens"], want["n_tokens"]);
    assert_eq!(got["n_chunks"], want["n_chunks"]);
    assert_eq!(got["n_scored"], want["count"]);
    let (g, w) = (
        got["perplexity"].as_f64().unwrap(),
        want["ppl"].as_f64().unwrap(),
    );
    // f32 on llama.cpp's CPU kernels vs f32 in PyTorch: measured 5e-5 relative.
    assert!(
        ((g - w) / w).abs() < 1e-3,
        "perplexity {g} vs transformers {w}"
    );
}

/// `dscoder chat` with no model converts the bundled one into the cache and answers.
#[test]
fn bundled_model_answers_a_chat_turn() {
    let cache = tempfile::tempdir().unwrap();
    let o = common::output_with_stdin(
        common::dscoder()
            .args(["chat", "--temp", "0", "-n", "64"])
            .env("XDG_CACHE_HOME", cache.path())
            .env("XDG_DATA_HOME", cache.path())
            .current_dir(cache.path()),
        "Write a function that returns the factorial of n.\n",
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(err.contains("dscoder-nano"), "{err}");
    // The same answer transformers gives (reference.json, greedy, first chat prompt).
    let r = reference();
    let want = r["greedy"][0]["output_text"].as_str().unwrap();
    assert!(out.contains(want.trim()), "{out:?} vs {want:?}");
    assert!(out.contains("def factorial"), "{out}");
    // One converted file, named by the bundled bytes, that later starts reuse.
    let cached: Vec<_> = std::fs::read_dir(cache.path().join("dscoder"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "gguf"))
        })
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
}

/// `--kl-base`: a model against itself diverges by nothing; a quantized one diverges, with
/// perplexities and the KL reported for the same scored tokens.
#[test]
fn kl_divergence_against_a_base() {
    let kl = |model: &std::path::Path| -> serde_json::Value {
        let o = common::dscoder()
            .arg("perplexity")
            .arg(model)
            .arg("-f")
            .arg(nano("heldout.py.txt"))
            .args([
                "--chunk-size",
                "256",
                "--chunks",
                "6",
                "--json",
                "--kl-base",
            ])
            .arg(converted("f32"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let same = kl(&converted("f32"));
    // Only the f32 rounding of the base's spilled log-probabilities is left.
    let self_kl = same["kl"]["mean"].as_f64().unwrap();
    assert!(self_kl < 1e-6, "KL against itself {self_kl}");
    assert_eq!(same["kl"]["top1_agreement"].as_f64().unwrap(), 1.0);
    assert_eq!(same["base"]["perplexity"], same["perplexity"]);
    let q4 = kl(&converted("q4_0"));
    let mean = q4["kl"]["mean"].as_f64().unwrap();
    let p99 = q4["kl"]["p99"].as_f64().unwrap();
    // BENCHMARKS.md measured 0.039 over all 121 chunks for q4_0.
    assert!(mean > 1e-3 && mean < 0.2, "mean KL {mean}");
    assert!(p99 >= mean, "p99 {p99} < mean {mean}");
    assert!(q4["kl"]["top1_agreement"].as_f64().unwrap() < 1.0);
    assert_eq!(q4["base"]["perplexity"], same["perplexity"]);
}

/// A base with another tokenizer is refused before anything is scored, naming what differs.
#[test]
fn kl_base_with_another_tokenizer_is_refused_up_front() {
    let other = common::converted(&common::fixture("lite-tiny"), "q8_0");
    let o = common::dscoder()
        .arg("perplexity")
        .arg(converted("f32"))
        .arg("-f")
        .arg(nano("heldout.py.txt"))
        .arg("--kl-base")
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("have different tokenizers ('tokenizer.ggml."),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}
