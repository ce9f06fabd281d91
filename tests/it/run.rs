//! `dscoder run` and the engine under it, on the Lite-style fixture converted to F32, against
//! transformers' greedy continuation.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dscoder::chat::{Message, Role};
use dscoder::engine::{Engine, EngineSettings, SamplingSettings};
use dscoder::prompt::render_chat;

fn reference() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("lite-tiny/reference.json")).unwrap()).unwrap()
}

use crate::common;
use common::{fixture, ids};

/// The Lite-style fixture as an F32 GGUF, converted once per run.
fn lite_f32() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| common::converted(&fixture("lite-tiny"), "f32"))
}

fn dscoder(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    common::output_with_stdin(common::dscoder().args(args), stdin.unwrap_or(""))
}

#[test]
fn greedy_generation_reproduces_transformers() {
    let r = reference();
    let engine = Engine::load(lite_f32(), EngineSettings::default()).unwrap();
    let mut session = engine.session().unwrap();
    let prompt = ids(&r["greedy"]["prompt_ids"]);
    assert_eq!(
        engine.tokenize(r["greedy"]["prompt_text"].as_str().unwrap(), true),
        prompt
    );
    let want = ids(&r["greedy"]["output_ids"]);
    let stats = session
        .generate(&prompt, &SamplingSettings::greedy(), want.len(), |_| true)
        .unwrap();
    assert_eq!(stats.tokens, want);
}

#[test]
fn run_prints_only_the_generated_text() {
    let r = reference();
    let model = lite_f32().to_str().unwrap();
    let prompt = r["greedy"]["prompt_text"].as_str().unwrap();
    let o = dscoder(
        &[
            "run", model, "-p", prompt, "--raw", "--temp", "0", "-n", "24",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // transformers decodes the same bytes, with U+FFFD for the incomplete characters.
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        r["greedy"]["output_text"].as_str().unwrap()
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("24 generated"));

    // `-p -` reads the prompt from stdin.
    let o2 = dscoder(
        &["run", model, "-p", "-", "--raw", "--temp", "0", "-n", "24"],
        Some(prompt),
    );
    assert!(o2.status.success());
    assert_eq!(
        String::from_utf8(o2.stdout).unwrap(),
        r["greedy"]["output_text"].as_str().unwrap()
    );
}

#[test]
fn chat_mode_uses_the_embedded_template_and_temperature_zero_is_deterministic() {
    let model = lite_f32().to_str().unwrap();
    let args = [
        "run",
        model,
        "-p",
        "Write a function",
        "--system",
        "Be brief.",
        "--temp",
        "0",
        "-n",
        "16",
    ];
    let a = dscoder(&args, None);
    let b = dscoder(&args, None);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    // The template adds the chat framing: more prompt tokens than the raw text has.
    let raw = dscoder(
        &[
            "run",
            model,
            "-p",
            "Write a function",
            "--raw",
            "--temp",
            "0",
            "-n",
            "1",
        ],
        None,
    );
    let n = |o: &std::process::Output| -> usize {
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        e.split(" prompt tokens")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(n(&a) > n(&raw) + 5, "{} vs {}", n(&a), n(&raw));
}

/// A second chat turn reuses the KV cache of the first and gives the same tokens as a fresh
/// evaluation of the whole prompt.
#[test]
fn kv_reuse_across_turns_matches_a_fresh_evaluation() {
    let engine = Engine::load(lite_f32(), EngineSettings::default()).unwrap();
    let mut messages = vec![Message::new(Role::User, "def add(a, b):")];
    let turn1 = engine.tokenize(&render_chat(&engine, &messages).unwrap(), true);
    let mut session = engine.session().unwrap();
    let greedy = SamplingSettings::greedy();
    let s1 = session.generate(&turn1, &greedy, 12, |_| true).unwrap();
    assert_eq!(s1.reused_tokens, 0);
    let reply: String = engine.detokenize(&s1.tokens);
    messages.push(Message::new(Role::Assistant, reply));
    messages.push(Message::new(Role::User, "Now add types."));
    let turn2 = engine.tokenize(&render_chat(&engine, &messages).unwrap(), true);
    let s2 = session.generate(&turn2, &greedy, 12, |_| true).unwrap();
    assert!(
        s2.reused_tokens >= turn1.len() - 1,
        "reused {} of {}",
        s2.reused_tokens,
        turn1.len()
    );

    let mut fresh = engine.session().unwrap();
    let s3 = fresh.generate(&turn2, &greedy, 12, |_| true).unwrap();
    assert_eq!(s3.reused_tokens, 0);
    assert_eq!(s2.tokens, s3.tokens);
}

#[test]
fn bad_models_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let o = dscoder(&["run", missing.to_str().unwrap(), "-p", "hi"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.gguf"));
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let o = dscoder(&["run", junk.to_str().unwrap(), "-p", "hi"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("junk.gguf"));
}

#[test]
fn a_context_too_big_for_memory_is_refused_with_the_numbers() {
    let model = lite_f32().to_str().unwrap();
    let o = dscoder(&["run", model, "-p", "hi", "--ctx-size", "200000000"], None);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not enough memory for a context of 200000000 tokens"),
        "{err}"
    );
    assert!(
        err.contains("KV cache") && err.contains("available"),
        "{err}"
    );
}

#[cfg(not(any(feature = "cuda", feature = "metal", feature = "vulkan")))]
#[test]
fn gpu_flags_on_a_cpu_only_build_say_so() {
    let model = lite_f32().to_str().unwrap();
    for flags in [&["--gpu-layers", "all"][..], &["--cpu-moe"][..]] {
        let mut args = vec!["run", model, "-p", "hi"];
        args.extend_from_slice(flags);
        let o = dscoder(&args, None);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("no GPU back-end") && err.contains("--features cuda"),
            "{err}"
        );
    }
}

#[test]
fn cache_and_attention_settings_run() {
    let model = lite_f32().to_str().unwrap();
    for flags in [
        &["--cache-type", "q8_0"][..],
        &["--flash-attn", "on"][..],
        &["--flash-attn", "off", "--threads", "1"][..],
    ] {
        let mut args = vec![
            "run", model, "-p", "def f(", "--raw", "--temp", "0", "-n", "8",
        ];
        args.extend_from_slice(flags);
        let o = dscoder(&args, None);
        assert!(
            o.status.success(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("8 generated"));
    }
}

/// `run` as a Unix filter: piped stdin goes before the prompt, a positional prompt works, the
/// bundled model runs when none is given, an empty prompt is an error, and the reply starts
/// without the template's space and ends with a newline.
#[test]
fn run_is_a_unix_filter() {
    let nano = common::converted(&common::repo("nano/model"), "f32");
    let nano = nano.to_str().unwrap();
    let code = "def f(x):\n    return x * 2\n";
    let piped = dscoder(
        &["run", nano, "What does this do?", "--temp", "0", "-n", "12"],
        Some(code),
    );
    let joined = dscoder(
        &[
            "run",
            nano,
            "-p",
            &format!("{}\n\nWhat does this do?", code.trim_end()),
            "--temp",
            "0",
            "-n",
            "12",
        ],
        None,
    );
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(piped.stdout, joined.stdout);
    let text = String::from_utf8(piped.stdout).unwrap();
    assert!(!text.starts_with(' ') && text.ends_with('\n'), "{text:?}");
    assert!(String::from_utf8_lossy(&piped.stderr).contains("[stopped at the token limit: -n 12]"));

    // No model: the bundled one, which answers as transformers does.
    let cache = tempfile::tempdir().unwrap();
    let r = common::json(&common::repo("nano/reference.json"));
    let case = &r["greedy"][1];
    let o = common::output_with_stdin(
        common::dscoder()
            .args([
                "run",
                case["user"].as_str().unwrap(),
                "--temp",
                "0",
                "-n",
                "64",
            ])
            .env("XDG_CACHE_HOME", cache.path()),
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        case["output_text"].as_str().unwrap().trim()
    );

    for args in [vec!["run", nano, "-p", "  "], vec!["run", nano]] {
        let o = dscoder(&args, Some(""));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("the prompt is empty"), "{err}");
    }
}
