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

/// The number of cases and the seeded generator of a mutation test: `DSCODER_FUZZ_CASES` and
/// `DSCODER_FUZZ_SEED` when set, else the defaults.
fn fuzz_settings(cases: usize, seed: u64) -> (usize, u64, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    let seed = env("DSCODER_FUZZ_SEED").unwrap_or(seed);
    (
        env("DSCODER_FUZZ_CASES").map_or(cases, |v: u64| v as usize),
        seed,
        rand::rngs::StdRng::seed_from_u64(seed),
    )
}

/// The nano model with its metadata or tensors edited, written to `dir`.
fn edited(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut dscoder::gguf::Metadata, &mut Vec<(TensorDecl, Vec<u8>)>),
) -> std::path::PathBuf {
    try_edited(dir, name, edit).unwrap()
}

/// Like [`edited`]; `Err` when our GGUF writer refuses the edit (it is not a legal GGUF).
fn try_edited(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut dscoder::gguf::Metadata, &mut Vec<(TensorDecl, Vec<u8>)>),
) -> Result<std::path::PathBuf, dscoder::gguf::GgufError> {
    let nano = common::converted(&common::repo("nano/model"), "f32");
    let src = dscoder::gguf::GgufFile::open(&nano).unwrap();
    let mut meta = src.metadata.clone();
    let mut tensors: Vec<(TensorDecl, Vec<u8>)> = src
        .tensors
        .iter()
        .map(|t| {
            (
                TensorDecl::new(t.name.clone(), t.dims.clone(), t.ty),
                src.tensor_data(t).to_vec(),
            )
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let path = dir.join(format!("{name}.gguf"));
    let decls: Vec<TensorDecl> = tensors.iter().map(|t| t.0.clone()).collect();
    let mut w = GgufWriter::create(&path, &meta, &decls)?;
    for (d, bytes) in &tensors {
        w.write_tensor(&d.name, bytes)?;
    }
    w.finish()?;
    Ok(path)
}

/// One-field edits of a valid model that made llama.cpp abort (SIGABRT/SIGSEGV, or a C++
/// exception crossing the FFI) are refused before it loads them, naming the field.
#[test]
fn values_that_would_abort_llama_cpp_are_refused_by_name() {
    use dscoder::gguf::{Array, Value};
    let dir = tempfile::tempdir().unwrap();
    type Edit = Box<dyn FnOnce(&mut dscoder::gguf::Metadata, &mut Vec<(TensorDecl, Vec<u8>)>)>;
    let set = |key: &'static str, v: Value| -> Edit {
        Box::new(move |m, _| {
            m.set(key, v);
        })
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "layers0",
            set("deepseek2.block_count", Value::U32(0)),
            "block_count",
        ),
        (
            "experts0",
            set("deepseek2.expert_count", Value::U32(0)),
            "expert_count",
        ),
        (
            "experts-max",
            set("deepseek2.expert_count", Value::U32(5000)),
            "expert_count",
        ),
        (
            "used0",
            set("deepseek2.expert_used_count", Value::U32(0)),
            "expert_used_count",
        ),
        (
            "used9",
            set("deepseek2.expert_used_count", Value::U32(9)),
            "expert_used_count",
        ),
        (
            "rope",
            set("deepseek2.rope.dimension_count", Value::U32(48)),
            "rope.dimension_count",
        ),
        (
            "keylen",
            set("deepseek2.attention.key_length", Value::U32(100)),
            "key_length",
        ),
        (
            "eps-nan",
            set(
                "deepseek2.attention.layer_norm_rms_epsilon",
                Value::F32(f32::NAN),
            ),
            "layer_norm_rms_epsilon",
        ),
        (
            "align1",
            set("general.alignment", Value::U32(1)),
            "alignment",
        ),
        (
            "tok-none",
            set("tokenizer.ggml.model", Value::String("none".into())),
            "tokenizer.ggml.model",
        ),
        (
            "tok-llama",
            set("tokenizer.ggml.model", Value::String("llama".into())),
            "tokenizer.ggml.model",
        ),
        (
            "dup-token",
            Box::new(|m, _| {
                let mut toks = m
                    .get("tokenizer.ggml.tokens")
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.as_strings())
                    .unwrap()
                    .to_vec();
                toks[300] = toks[301].clone();
                m.set("tokenizer.ggml.tokens", Value::Array(Array::String(toks)));
            }),
            "appears twice",
        ),
        (
            "q8k",
            Box::new(|_, t| {
                let (d, bytes) = t
                    .iter_mut()
                    .find(|(d, _)| d.name == "token_embd.weight")
                    .unwrap();
                *d = TensorDecl::new(d.name.clone(), d.dims.clone(), GgmlType::Q8_K);
                *bytes = vec![0u8; d.n_bytes() as usize];
            }),
            "cannot multiply",
        ),
    ];
    for (name, edit, needle) in cases {
        let path = edited(dir.path(), name, edit);
        let out = common::dscoder()
            .args(["run", path.to_str().unwrap(), "hi", "-n", "2"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {:?} {err}", out.status);
        assert!(err.contains(needle), "{name}: expected '{needle}' in {err}");
    }
    // The unedited copy runs: the checks refuse faults, not models.
    let same = edited(dir.path(), "same", |_, _| {});
    let out = common::dscoder()
        .args(["run", same.to_str().unwrap(), "hi", "-n", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seeded mutation fuzzing of the property that matters: every file the validator accepts loads
/// and evaluates in llama.cpp without an abort (run as a separate process, so an abort is seen as
/// a signal). Each case edits one metadata value of the nano model (a hyper-parameter, a
/// tokenizer field, the alignment) or one tensor's type, with values chosen to hit edges (0, 1,
/// the maximum, off by one, NaN, huge). `DSCODER_FUZZ_CASES` sets the number of cases (40 in CI;
/// the long run is in BENCHMARKS.md) and `DSCODER_FUZZ_SEED` the seed.
#[test]
fn mutated_models_never_abort_llama_cpp() {
    use dscoder::gguf::Value;
    use rand::Rng;
    let (cases, seed, mut rng) = fuzz_settings(40, 0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let int_keys = [
        "deepseek2.block_count",
        "deepseek2.expert_count",
        "deepseek2.expert_used_count",
        "deepseek2.expert_shared_count",
        "deepseek2.leading_dense_block_count",
        "deepseek2.expert_group_count",
        "deepseek2.expert_group_used_count",
        "deepseek2.expert_gating_func",
        "deepseek2.rope.dimension_count",
        "deepseek2.attention.key_length",
        "deepseek2.attention.value_length",
        "deepseek2.attention.key_length_mla",
        "deepseek2.attention.value_length_mla",
        "deepseek2.attention.kv_lora_rank",
        "deepseek2.attention.head_count",
        "deepseek2.attention.head_count_kv",
        "deepseek2.embedding_length",
        "deepseek2.feed_forward_length",
        "deepseek2.expert_feed_forward_length",
        "deepseek2.context_length",
        "deepseek2.nextn_predict_layers",
        "general.alignment",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ];
    let float_keys = [
        "deepseek2.attention.layer_norm_rms_epsilon",
        "deepseek2.rope.freq_base",
        "deepseek2.rope.scaling.factor",
        "deepseek2.expert_weights_scale",
        "deepseek2.rope.scaling.yarn_log_multiplier",
    ];
    let types = GgmlType::ALL;
    let (mut accepted, mut refused, mut unwritable) = (0, 0, 0);
    for case in 0..cases {
        let kind = rng.gen_range(0..10);
        let ints = [
            0u32,
            1,
            2,
            3,
            7,
            8,
            9,
            16,
            31,
            32,
            33,
            48,
            63,
            64,
            80,
            256,
            511,
            512,
            513,
            1024,
            1025,
            4096,
            u32::MAX,
        ];
        let floats = [
            0.0f32,
            -1.0,
            1e-30,
            1e30,
            f32::NAN,
            f32::INFINITY,
            1e-6,
            2.0,
        ];
        let (what, path) = if kind < 6 {
            let key = int_keys[rng.gen_range(0..int_keys.len())];
            let v = ints[rng.gen_range(0..ints.len())];
            let what = format!("{key} = {v}");
            let p = try_edited(dir.path(), &format!("case{case}"), move |m, _| {
                m.set(key, Value::U32(v));
            });
            (what, p)
        } else if kind < 8 {
            let key = float_keys[rng.gen_range(0..float_keys.len())];
            let v = floats[rng.gen_range(0..floats.len())];
            let what = format!("{key} = {v}");
            let p = try_edited(dir.path(), &format!("case{case}"), move |m, _| {
                m.set(key, Value::F32(v));
            });
            (what, p)
        } else {
            let ty = types[rng.gen_range(0..types.len())];
            let pick: usize = rng.gen();
            let mut what = String::new();
            let p = try_edited(dir.path(), &format!("case{case}"), |_, t| {
                // A tensor whose rows hold whole blocks of the new type; zeros as data.
                let fits: Vec<usize> = (0..t.len())
                    .filter(|&i| t[i].0.dims[0] % ty.block_size() as u64 == 0)
                    .collect();
                if let Some(&i) = fits.get(pick % fits.len().max(1)) {
                    let d = &t[i].0;
                    what = format!("{} as {ty}", d.name);
                    let nd = TensorDecl::new(d.name.clone(), d.dims.clone(), ty);
                    t[i].1 = vec![0u8; nd.n_bytes() as usize];
                    t[i].0 = nd;
                }
            });
            (what, p)
        };
        // Not a legal GGUF (e.g. an alignment that is not a power of two): our writer refuses it,
        // and the reader tests cover such files.
        let Ok(path) = path else {
            unwritable += 1;
            continue;
        };
        let out = common::dscoder()
            .args([
                "run",
                path.to_str().unwrap(),
                "def f(x):",
                "--raw",
                "-n",
                "3",
                "-c",
                "256",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => accepted += 1,
            Some(1) => refused += 1,
            _ => panic!("case {case} ({what}): {:?}\n{err}", out.status),
        }
        std::fs::remove_file(&path).unwrap();
    }
    eprintln!(
        "fuzz: {cases} cases, {accepted} ran, {refused} refused, {unwritable} not legal GGUF, 0 aborts (seed {seed})"
    );
}

/// Names and text from a file never reach the terminal as escape sequences or raw newlines.
#[test]
fn names_from_a_file_are_printed_escaped() {
    use dscoder::gguf::Value;
    let dir = tempfile::tempdir().unwrap();
    let evil = "\u{1b}[2J\u{1b}[31mowned\nfake line";
    let path = edited(dir.path(), "evil", |m, t| {
        m.set(format!("x.{evil}"), Value::String(evil.to_string()));
        m.set("tokenizer.ggml.model", Value::String(evil.to_string()));
        let (d, _) = t
            .iter_mut()
            .find(|(d, _)| d.name == "output_norm.weight")
            .unwrap();
        *d = TensorDecl::new(format!("n{}", &evil[..9]), d.dims.clone(), d.ty);
    });
    for args in [vec!["info"], vec!["run"]] {
        let mut cmd = common::dscoder();
        cmd.args(&args).arg(&path);
        if args[0] == "run" {
            cmd.args(["hi", "-n", "1"]);
        }
        let out = cmd.output().unwrap();
        for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !bytes.contains(&0x1b),
                "{args:?} {what} has an escape byte: {}",
                String::from_utf8_lossy(bytes)
            );
            assert!(
                !String::from_utf8_lossy(bytes).contains("owned\nfake"),
                "{args:?} {what} has the raw newline"
            );
        }
    }
}

/// A saved KV cache that was damaged on disk is refused (the conversation is re-evaluated
/// instead of continuing from garbage), and a damaged cached bundled model is converted again.
#[test]
fn damaged_state_files_and_cached_models_are_detected() {
    use dscoder::engine::{Engine, EngineSettings};
    let dir = tempfile::tempdir().unwrap();
    let nano = common::converted(&common::repo("nano/model"), "f32");
    let engine = Engine::load(&nano, EngineSettings::default()).unwrap();
    let mut s = engine.session().unwrap();
    let tokens = engine.tokenize("def add(a, b):\n    return a + b\n", true);
    s.eval(&tokens, |_| false, |_, _| {}, &|| false).unwrap();
    let state = dir.path().join("chat.state");
    s.save_state(&state).unwrap();
    let mut fresh = engine.session().unwrap();
    assert_eq!(fresh.load_state(&state).unwrap(), tokens.len());
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    let err = fresh.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("damaged"), "{err}");
    assert!(fresh.cached_tokens().is_empty());

    // The bundled model in a private cache: converted, then damaged, then converted again.
    let cache = dir.path().join("cache");
    let run = || {
        common::dscoder()
            .env("XDG_CACHE_HOME", &cache)
            .args(["run", "--raw", "--temp", "0", "-n", "4", "def f():"])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let gguf = std::fs::read_dir(cache.join("dscoder"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "gguf"))
        .unwrap();
    let mut bytes = std::fs::read(&gguf).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0xff;
    std::fs::write(&gguf, &bytes).unwrap();
    let second = run();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(err.contains("converting it again"), "{err}");
    assert_eq!(second.stdout, first.stdout);
}

/// A missing or misshapen tensor is named, instead of llama.cpp's "cannot load".
#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = edited(dir.path(), "missing", |_, t| {
        t.retain(|(d, _)| d.name != "blk.2.ffn_down_exps.weight");
    });
    fails_with(
        &["run", missing.to_str().unwrap(), "hi"],
        "tensor 'blk.2.ffn_down_exps.weight' is missing",
    );
    let misshapen = edited(dir.path(), "misshapen", |_, t| {
        let (d, bytes) = t
            .iter_mut()
            .find(|(d, _)| d.name == "blk.1.ffn_gate_inp.weight")
            .unwrap();
        let dims = vec![d.dims[0], d.dims[1] - 1];
        *d = TensorDecl::new(d.name.clone(), dims, d.ty);
        bytes.truncate(d.n_bytes() as usize);
    });
    fails_with(
        &["run", misshapen.to_str().unwrap(), "hi"],
        "tensor 'blk.1.ffn_gate_inp.weight' has shape",
    );
    // Attention tensors too: the MLA per-head key projection with one head too few.
    let attention = edited(dir.path(), "attention", |_, t| {
        let (d, bytes) = t
            .iter_mut()
            .find(|(d, _)| d.name == "blk.3.attn_k_b.weight")
            .unwrap();
        let dims = vec![d.dims[0], d.dims[1], d.dims[2] - 1];
        *d = TensorDecl::new(d.name.clone(), dims, d.ty);
        bytes.truncate(d.n_bytes() as usize);
    });
    fails_with(
        &["run", attention.to_str().unwrap(), "hi"],
        "tensor 'blk.3.attn_k_b.weight' has shape",
    );
    let no_query = edited(dir.path(), "no-query", |_, t| {
        t.retain(|(d, _)| d.name != "blk.0.attn_q.weight");
    });
    fails_with(
        &["run", no_query.to_str().unwrap(), "hi"],
        "tensor 'blk.0.attn_q.weight' is missing",
    );
}

/// The checkpoint readers under mutation: each case copies the lite-tiny checkpoint, damages one
/// thing (a `config.json` value set to an edge, a key removed, the JSON cut short or a byte of it
/// flipped; a safetensors header byte flipped, its length field changed, or the shard cut short)
/// and converts it. Every case ends in a clean exit, success or one error naming the problem:
/// never a panic (101) or a signal, and never an output file or temporary file left by a
/// failure. `DSCODER_FUZZ_CASES` (30 in CI) and `DSCODER_FUZZ_SEED` as above.
#[test]
fn mutated_checkpoints_convert_or_fail_cleanly() {
    use rand::Rng;
    let (cases, seed, mut rng) = fuzz_settings(30, 0xc0ffee);
    let src = common::fixture("lite-tiny");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    let keys: Vec<String> = config.as_object().unwrap().keys().cloned().collect();
    let edges = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1),
        serde_json::json!(4294967295u64),
        serde_json::json!(1e300),
        serde_json::json!("seven"),
        serde_json::json!(null),
        serde_json::json!([]),
    ];
    let shards = [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ];
    let (mut ok, mut refused) = (0, 0);
    for case in 0..cases {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        std::fs::create_dir(&ckpt).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), ckpt.join(e.file_name())).unwrap();
        }
        let what = match rng.gen_range(0..7) {
            0 => {
                let key = &keys[rng.gen_range(0..keys.len())];
                let value = edges[rng.gen_range(0..edges.len())].clone();
                let mut c = config.clone();
                c[key] = value.clone();
                std::fs::write(ckpt.join("config.json"), c.to_string()).unwrap();
                format!("config {key} = {value}")
            }
            1 => {
                let key = &keys[rng.gen_range(0..keys.len())];
                let mut c = config.clone();
                c.as_object_mut().unwrap().remove(key);
                std::fs::write(ckpt.join("config.json"), c.to_string()).unwrap();
                format!("config without {key}")
            }
            2 | 3 => {
                let path = ckpt.join("config.json");
                let mut bytes = std::fs::read(&path).unwrap();
                let at = rng.gen_range(0..bytes.len());
                if rng.gen_bool(0.5) {
                    bytes.truncate(at);
                } else {
                    bytes[at] ^= 1 << rng.gen_range(0..8);
                }
                std::fs::write(&path, bytes).unwrap();
                format!("config.json damaged at byte {at}")
            }
            kind => {
                let shard = shards[rng.gen_range(0..shards.len())];
                let path = ckpt.join(shard);
                let mut bytes = std::fs::read(&path).unwrap();
                let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                match kind {
                    4 => {
                        let at = rng.gen_range(8..8 + header);
                        bytes[at] ^= 1 << rng.gen_range(0..8);
                    }
                    5 => {
                        let len = [0u64, 1, header as u64 - 1, header as u64 + 1, u64::MAX]
                            [rng.gen_range(0..5)];
                        bytes[..8].copy_from_slice(&len.to_le_bytes());
                    }
                    _ => bytes.truncate(rng.gen_range(0..bytes.len())),
                }
                std::fs::write(&path, bytes).unwrap();
                format!("{shard} damaged ({kind})")
            }
        };
        let out = dir.path().join("out.gguf");
        let o = common::dscoder()
            .arg("convert")
            .arg(&ckpt)
            .arg("-o")
            .arg(&out)
            .args(["--type", "q8_0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) => ok += 1,
            Some(1) => {
                refused += 1;
                assert!(err.contains("error"), "case {case} ({what}): {err}");
                assert!(
                    !out.exists(),
                    "case {case} ({what}): an output after a failure"
                );
            }
            code => panic!("case {case} ({what}): exit {code:?}\n{err}"),
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "case {case} ({what}): temp files left"
        );
    }
    eprintln!("{cases} mutated checkpoints: {ok} converted, {refused} refused (seed {seed})");
}
