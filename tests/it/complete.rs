//! Fill-in-the-middle against transformers: the FIM prompts that `nano/fim_reference.py`
//! built and greedily completed with `DeepseekV2ForCausalLM` on the GPU machine. Our prompt
//! (from the prefix and suffix text) must be the same token ids, and `dscoder complete` must
//! print the same middle.

use dscoder::engine::{Engine, EngineSettings};
use dscoder::prompt::{self, FimInput};
use serde_json::Value;

use crate::common::{self, ids};

pub fn fim_reference() -> Value {
    common::json(&common::repo("nano/fim_reference.json"))
}

pub fn nano_f32() -> std::path::PathBuf {
    common::converted(&common::repo("nano/model"), "f32")
}

#[test]
fn fim_prompts_are_the_models_training_format() {
    let r = fim_reference();
    let engine = Engine::load(&nano_f32(), EngineSettings::default()).unwrap();
    let (pre, suf, mid) = engine.fim_tokens().unwrap();
    assert_eq!(
        (pre, suf, mid),
        (
            r["fim_ids"]["pre"].as_i64().unwrap() as i32,
            r["fim_ids"]["suf"].as_i64().unwrap() as i32,
            r["fim_ids"]["mid"].as_i64().unwrap() as i32
        )
    );
    for case in r["cases"].as_array().unwrap() {
        let input = FimInput {
            prefix: case["prefix"].as_str().unwrap().into(),
            suffix: case["suffix"].as_str().unwrap().into(),
            extra: Vec::new(),
        };
        let p = prompt::fim_tokens(&engine, &input, 64).unwrap();
        assert_eq!(p.tokens, ids(&case["prompt_ids"]), "{}", case["name"]);
        assert!(!p.dropped.any());
    }
}

#[test]
fn fim_marker_text_in_the_file_stays_text() {
    let engine = Engine::load(&nano_f32(), EngineSettings::default()).unwrap();
    let (_, suf, _) = engine.fim_tokens().unwrap();
    let input = FimInput {
        prefix: "s = '<｜fim▁hole｜>'\n".into(),
        suffix: String::new(),
        extra: Vec::new(),
    };
    let p = prompt::fim_tokens(&engine, &input, 16).unwrap();
    // Only the one marker the prompt itself places.
    assert_eq!(p.tokens.iter().filter(|&&t| t == suf).count(), 1);
}

#[test]
fn complete_prints_transformers_greedy_middle() {
    let r = fim_reference();
    let model = nano_f32();
    let dir = tempfile::tempdir().unwrap();
    let max = r["max_new_tokens"].as_u64().unwrap().to_string();
    for case in r["cases"].as_array().unwrap() {
        let (pre, suf) = (dir.path().join("prefix"), dir.path().join("suffix"));
        std::fs::write(&pre, case["prefix"].as_str().unwrap()).unwrap();
        std::fs::write(&suf, case["suffix"].as_str().unwrap()).unwrap();
        let o = common::dscoder()
            .arg("complete")
            .arg(&model)
            .arg("--prefix-file")
            .arg(&pre)
            .arg("--suffix-file")
            .arg(&suf)
            .args(["-n", &max])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            case["middle_text"].as_str().unwrap(),
            "{}",
            case["name"]
        );
    }
}

#[test]
fn complete_at_file_line_col_and_its_errors() {
    let r = fim_reference();
    let case = &r["cases"][1];
    let (prefix, suffix) = (
        case["prefix"].as_str().unwrap(),
        case["suffix"].as_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("code.py");
    std::fs::write(&file, format!("{prefix}{suffix}")).unwrap();
    let line = prefix.matches('\n').count() + 1;
    let col = prefix.rsplit('\n').next().unwrap().chars().count() + 1;
    let model = nano_f32();
    let run = |spec: &str| {
        common::dscoder()
            .arg("complete")
            .arg(&model)
            .arg(spec)
            .args(["-n", "64"])
            .output()
            .unwrap()
    };
    let o = run(&format!("{}:{line}:{col}", file.display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        case["middle_text"].as_str().unwrap()
    );
    for (spec, needle) in [
        (
            format!("{}:{line}", file.display()),
            "expected FILE:LINE:COL",
        ),
        (format!("{}:0:1", file.display()), "not a number from 1"),
        (format!("{}:100000:1", file.display()), "past its end"),
        (format!("{}:1:1000", file.display()), "past its end"),
        ("/nonexistent.py:1:1".to_string(), "/nonexistent.py"),
        (
            format!("{}:1:1", dir.path().display()),
            "a regular file is expected",
        ),
    ] {
        let o = run(&spec);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{spec}: {err}");
        assert!(err.contains(needle), "{spec}: {err}");
        assert!(o.stdout.is_empty());
    }
}
