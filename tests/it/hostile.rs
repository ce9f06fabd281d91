//! Hostile but fair input: each case once crashed, hung, lost a file or was silently changed.
//! Every one must now be a clear error (exit 1), quickly, with nothing lost.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dscoder::gguf::{GgufWriter, TensorDecl};
use dscoder::synthetic::SyntheticConfig;
use dscoder_quantize::GgmlType;

use crate::common;

/// Runs dscoder with `args`; it must exit 1 within 30 s with `needle` on stderr.
fn fails_with(args: &[&str], needle: &str) {
    let mut child = common::dscoder()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // 1 for our errors, 2 for the ones clap finds in the flags; never a crash.
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "{args:?}: {:?} {err}",
        out.status
    );
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

fn tiny_gguf(dir: &Path) -> std::path::PathBuf {
    common::converted(&common::fixture("lite-tiny"), "f32")
        .canonicalize()
        .map(|p| {
            let to = dir.join("tiny.gguf");
            std::fs::copy(&p, &to).unwrap();
            to
        })
        .unwrap()
}

#[test]
fn quantize_refuses_empty_and_zero_dimensional_tensors() {
    let dir = tempfile::tempdir().unwrap();
    // (A tensor with no dimensions at all takes the same check; our writer cannot make one.)
    for dims in [vec![0u64, 4], vec![4, 0]] {
        let path = dir.path().join("empty.gguf");
        let decl = TensorDecl::new("blk.0.attn_norm.weight", dims.clone(), GgmlType::F32);
        let bytes = vec![0u8; decl.n_bytes() as usize];
        let mut w =
            GgufWriter::create(&path, &SyntheticConfig::tiny().metadata(), &[decl]).unwrap();
        w.write_tensor("blk.0.attn_norm.weight", &bytes).unwrap();
        w.finish().unwrap();
        let out = dir.path().join("out.gguf");
        fails_with(
            &[
                "quantize",
                path.to_str().unwrap(),
                out.to_str().unwrap(),
                "--type",
                "q8_0",
            ],
            "no elements",
        );
        assert!(!out.exists());
    }
}

#[test]
fn outputs_that_are_inputs_or_not_files_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let src = common::fixture("lite-tiny");
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    let weights = ck.join("model-00001-of-00003.safetensors");
    let before = std::fs::read(&weights).unwrap();
    for victim in ["model-00001-of-00003.safetensors", "config.json"] {
        let out = ck.join(victim);
        fails_with(
            &["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()],
            "one of the inputs",
        );
    }
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        before,
        "an input was changed"
    );
    fails_with(
        &[
            "convert",
            ck.to_str().unwrap(),
            "-o",
            dir.path().to_str().unwrap(),
        ],
        "directory",
    );
    fails_with(
        &["convert", ck.to_str().unwrap(), "-o", "/dev/null"],
        "a regular file is expected",
    );
    let gguf = tiny_gguf(dir.path());
    fails_with(
        &[
            "quantize",
            gguf.to_str().unwrap(),
            gguf.to_str().unwrap(),
            "--type",
            "q8_0",
        ],
        "one of the inputs",
    );
}

#[test]
fn a_fifo_or_a_device_where_a_file_is_expected_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let f = fifo.to_str().unwrap();
    fails_with(&["info", f], "FIFO");
    fails_with(
        &["quantize", f, "/tmp/never.gguf", "--type", "q8_0"],
        "FIFO",
    );
    let gguf = tiny_gguf(dir.path());
    let g = gguf.to_str().unwrap();
    fails_with(&["perplexity", g, "-f", "/dev/zero"], "a device");
    fails_with(&["perplexity", g, "-f", f], "FIFO");
    fails_with(&["info", "/dev/zero"], "a device");
}

#[test]
fn out_of_range_flags_are_errors_not_substitutions() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let g = gguf.to_str().unwrap();
    for (flag, value, needle) in [
        ("--top-p", "2", "top_p"),
        ("--temp", "nan", "temp"),
        ("--min-p", "5", "min_p"),
        ("--repeat-penalty", "0", "repeat_penalty"),
        ("--threads", "70000", "between 1 and"),
        ("--top-k=-1", "", "top-k"),
    ] {
        let mut args = vec!["run", g, "hi", flag];
        if !value.is_empty() {
            args.push(value);
        }
        fails_with(&args, needle);
    }
    fails_with(&["bench", g, "-r", "0"], "0");
    fails_with(
        &["perplexity", g, "-f", g, "--chunk-size", "0"],
        "chunk-size",
    );
    fails_with(&["perplexity", g, "-f", g, "--chunks", "0"], "chunks");
    fails_with(
        &[
            "quantize",
            g,
            "/tmp/x.gguf",
            "--type",
            "q8_0",
            "--threads",
            "5000",
        ],
        "between 1 and",
    );
}

#[test]
fn a_huge_vocab_size_is_checked_against_the_tensors_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(common::fixture("lite-tiny"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    let cfg = ck.join("config.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    j["vocab_size"] = serde_json::json!(4294967295u64);
    std::fs::write(&cfg, serde_json::to_vec(&j).unwrap()).unwrap();
    let out = dir.path().join("out.gguf");
    let t = Instant::now();
    fails_with(
        &["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()],
        "embed_tokens",
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn stale_temp_files_of_dead_processes_are_removed_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let out = dir.path().join("out.gguf");
    // A pid far above pid_max: no such process. And one of a live process (ours): kept.
    let stale = dir.path().join(".out.gguf.tmp-2147483000-0");
    let live = dir
        .path()
        .join(format!(".out.gguf.tmp-{}-0", std::process::id()));
    std::fs::write(&stale, "half a model").unwrap();
    std::fs::write(&live, "being written").unwrap();
    let o = common::dscoder()
        .args([
            "quantize",
            gguf.to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            "q8_0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !stale.exists(),
        "the dead writer's temp file is still there"
    );
    assert!(live.exists(), "a live writer's temp file was removed");
}

#[test]
fn a_q8_0_cache_on_heads_that_are_not_whole_blocks_is_explained() {
    // The nano model's cached K head is kv_lora_rank 64 + rope 16 = 80 values.
    let nano = common::converted(&common::repo("nano/model"), "f32");
    fails_with(
        &["run", nano.to_str().unwrap(), "hi", "--cache-type", "q8_0"],
        "multiples of 32",
    );
}

#[test]
fn an_unknown_chat_template_falls_back_to_deepseeks_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let nano = common::converted(&common::repo("nano/model"), "f32");
    let src = dscoder::gguf::GgufFile::open(&nano).unwrap();
    let mut meta = src.metadata.clone();
    meta.set(
        "tokenizer.chat_template",
        "{{ nothing llama.cpp recognises }}",
    );
    let decls: Vec<TensorDecl> = src
        .tensors
        .iter()
        .map(|t| TensorDecl::new(t.name.clone(), t.dims.clone(), t.ty))
        .collect();
    let path = dir.path().join("odd-template.gguf");
    let mut w = GgufWriter::create(&path, &meta, &decls).unwrap();
    for t in &src.tensors {
        w.write_tensor(&t.name, src.tensor_data(t)).unwrap();
    }
    w.finish().unwrap();
    let out = common::dscoder()
        .args([
            "run",
            path.to_str().unwrap(),
            "Write hello world.",
            "-n",
            "4",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("built-in format"), "{err}");
}
