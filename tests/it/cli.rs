//! The `dscoder` binary as a user runs it: results on stdout, one clear error on stderr and a
//! non-zero exit for bad input, and never a partial output file.

use std::path::Path;
use std::process::Output;

use dscoder::gguf::{GgufFile, Value};
use dscoder::gguf::{GgufWriter, TensorDecl};
use dscoder::pipeline::write_gguf;
use dscoder::synthetic::SyntheticConfig;
use dscoder_quantize::GgmlType;

fn dscoder(args: &[&str]) -> Output {
    crate::common::dscoder()
        .args(args)
        .output()
        .expect("run dscoder")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_tiny(path: &Path) {
    let c = SyntheticConfig::tiny();
    write_gguf(path, &c.metadata(), &c.plan()).unwrap();
}

/// Files in `dir` other than `keep`.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// Writes the tiny model with one element of `tensor` replaced by `value`, straight through the
/// GGUF writer (the pipeline itself refuses non-finite values).
fn write_poisoned(path: &Path, tensor: &str, at: usize, value: f32) {
    let c = SyntheticConfig::tiny();
    let plan = c.plan();
    let decls: Vec<TensorDecl> = plan
        .iter()
        .map(|t| TensorDecl {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: GgmlType::F32,
        })
        .collect();
    let mut w = GgufWriter::create(path, &c.metadata(), &decls).unwrap();
    for t in &plan {
        let mut rows = vec![0f32; t.n_elements() as usize];
        t.source.read_rows(0, &mut rows).unwrap();
        if t.name == tensor {
            rows[at] = value;
        }
        let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor(&t.name, &bytes).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn nan_or_inf_in_a_tensor_is_an_error_naming_it_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    for (value, label) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let input = dir.path().join("bad.gguf");
        write_poisoned(&input, "blk.2.ffn_up_exps.weight", 300, value);
        let out = dscoder(&[
            "quantize",
            input.to_str().unwrap(),
            dir.path().join("out.gguf").to_str().unwrap(),
            "--type",
            "q4_k_m",
        ]);
        assert_eq!(out.status.code(), Some(1), "{label}");
        let err = stderr(&out);
        assert!(err.contains("blk.2.ffn_up_exps.weight"), "{label}: {err}");
        assert!(err.contains("row 1, column 44"), "{label}: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1);
        assert_eq!(
            others(dir.path(), &["bad.gguf"]),
            Vec::<String>::new(),
            "{label}"
        );
    }
}

#[test]
fn bad_inputs_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("tiny.gguf");
    write_tiny(&good);
    let g = good.to_str().unwrap();
    let out_path = dir.path().join("out.gguf");
    let o = out_path.to_str().unwrap();

    let missing = dscoder(&["quantize", "/nonexistent/x.gguf", o, "--type", "q8_0"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("/nonexistent/x.gguf"),
        "{}",
        stderr(&missing)
    );

    let bad_type = dscoder(&["quantize", g, o, "--type", "q3_k_x"]);
    assert!(!bad_type.status.success());
    assert!(
        stderr(&bad_type).contains("q3_k_x"),
        "{}",
        stderr(&bad_type)
    );

    let bad_override = dscoder(&["quantize", g, o, "--type", "q8_0", "--experts", "q9"]);
    assert!(!bad_override.status.success());
    assert!(stderr(&bad_override).contains("q9"));

    // A truncated file: an error naming it, not a panic (exit code 101).
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.gguf");
    for len in [0, 3, 9, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let r = dscoder(&["quantize", cut.to_str().unwrap(), o, "--type", "q8_0"]);
        assert_eq!(r.status.code(), Some(1), "len {len}: {}", stderr(&r));
        assert!(stderr(&r).contains("cut.gguf"), "len {len}: {}", stderr(&r));
        let r = dscoder(&["info", cut.to_str().unwrap()]);
        assert_eq!(r.status.code(), Some(1), "info, len {len}");
    }

    // Another architecture.
    let llama = dir.path().join("llama.gguf");
    let c = SyntheticConfig::tiny();
    let mut m = c.metadata();
    m.set("general.architecture", Value::String("llama".into()));
    write_gguf(&llama, &m, &c.plan()).unwrap();
    let r = dscoder(&["quantize", llama.to_str().unwrap(), o, "--type", "q8_0"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("'llama'"), "{}", stderr(&r));

    // Requantizing needs to be asked for.
    let q = dir.path().join("q4.gguf");
    assert!(
        dscoder(&["quantize", g, q.to_str().unwrap(), "--type", "q4_k_m"])
            .status
            .success()
    );
    let r = dscoder(&["quantize", q.to_str().unwrap(), o, "--type", "q8_0"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("--allow-requantize"), "{}", stderr(&r));
    let r = dscoder(&[
        "quantize",
        q.to_str().unwrap(),
        o,
        "--type",
        "q8_0",
        "--allow-requantize",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));

    std::fs::remove_file(&out_path).unwrap();
    let mut left = others(
        dir.path(),
        &["tiny.gguf", "cut.gguf", "llama.gguf", "q4.gguf"],
    );
    left.sort();
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("tiny.gguf");
    write_tiny(&good);
    let out = dscoder(&[
        "quantize",
        good.to_str().unwrap(),
        dir.path().join("out.gguf").to_str().unwrap(),
        "--type",
        "q4_k_m",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("blk.1.ffn_down_exps.weight"));
    assert!(text.contains("routed experts"));
    assert!(text.contains("total"));
    assert_eq!(others(dir.path(), &["tiny.gguf"]), Vec::<String>::new());
}

#[test]
fn quantize_reports_sizes_that_match_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("tiny.gguf");
    write_tiny(&good);
    let q = dir.path().join("q.gguf");
    let out = dscoder(&[
        "quantize",
        good.to_str().unwrap(),
        q.to_str().unwrap(),
        "--type",
        "q6_k",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let file = GgufFile::open(&q).unwrap();
    let tensor_bytes: u64 = file.tensors.iter().map(|t| t.n_bytes()).sum();
    let elements: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    let total = text.lines().find(|l| l.starts_with("total")).unwrap();
    assert!(total.contains(&elements.to_string()), "{total}");
    let bpw = tensor_bytes as f64 * 8.0 / elements as f64;
    assert!(total.contains(&format!("{bpw:.3}")), "{total} vs {bpw}");
}

#[test]
fn info_shows_metadata_tensors_and_totals_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("tiny.gguf");
    write_tiny(&good);
    let out = dscoder(&["info", good.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("deepseek2.block_count"));
    assert!(text.contains("blk.3.ffn_gate_exps.weight"));
    // 384 tokens are summarised, not dumped.
    assert!(!text.contains("[PAD383]"));

    let out = dscoder(&["info", "--json", good.to_str().unwrap()]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = GgufFile::open(&good).unwrap();
    assert_eq!(
        json["tensors"].as_array().unwrap().len(),
        file.tensors.len()
    );
    assert_eq!(json["metadata"]["deepseek2.block_count"]["value"], 4);
    assert_eq!(json["metadata"]["tokenizer.ggml.tokens"]["len"], 384);
    let bytes: u64 = file.tensors.iter().map(|t| t.n_bytes()).sum();
    assert_eq!(json["total"]["bytes"], bytes);
    assert_eq!(json["totals_by_type"]["f32"]["tensors"], file.tensors.len());
}

#[test]
fn a_model_without_a_chat_template_gets_deepseek_v2s_format() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("tiny.gguf");
    write_tiny(&good);
    let g = good.to_str().unwrap();
    let chat = dscoder(&["run", g, "-p", "hi", "--temp", "0", "-n", "2"]);
    assert!(chat.status.success(), "{}", stderr(&chat));
    let raw = dscoder(&["run", g, "-p", "hi", "--raw", "--temp", "0", "-n", "2"]);
    let prompt_tokens = |o: &Output| -> usize {
        stderr(o)
            .split(" prompt tokens")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // "User: hi\n\nAssistant:" is longer than "hi".
    assert!(prompt_tokens(&chat) > prompt_tokens(&raw) + 10);
}

/// A checkpoint folder given where a GGUF is expected says how to convert it; a directory or a
/// device is described as such.
#[test]
fn a_folder_or_a_device_given_as_a_model_is_named_for_what_it_is() {
    let ck = crate::common::fixture("lite-tiny");
    let o = dscoder(&["run", ck.to_str().unwrap(), "-p", "hi"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("looks like a Hugging Face checkpoint; convert it first: dscoder convert"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = dscoder(&["run", dir.path().to_str().unwrap(), "-p", "hi"]);
    assert!(
        stderr(&o).contains("a folder, not a GGUF file"),
        "{}",
        stderr(&o)
    );
    let o = dscoder(&["run", "/dev/null", "-p", "hi"]);
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
}

/// `dscoder completions SHELL`: a script the shell itself accepts, completing every subcommand
/// and flag.
#[test]
fn completion_scripts_parse_in_their_shell() {
    let out = dscoder(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in [
        "rpc-server",
        "completions",
        "--draft",
        "--rpc",
        "--cache-type",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dscoder.bash");
    std::fs::write(&path, &script).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = dscoder(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = dscoder(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Warnings piped to a file are plain lines: no ANSI escape codes, no timestamps (issue 13).
#[test]
fn logs_to_a_pipe_carry_no_escape_codes() {
    let model = crate::common::converted(&crate::common::repo("nano/model"), "q8_0");
    // A context beyond the model's training length is a warning, not an error.
    let o = crate::common::dscoder()
        .arg("run")
        .arg(&model)
        .args(["--raw", "-p", "def", "-n", "1", "--ctx-size", "4096"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("more than the"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(!err.contains('\u{1b}'), "escape codes in {err:?}");
    assert!(warning.trim_start().starts_with("WARN"), "{warning}");
}
