//! `dscoder quantize` against llama.cpp's own `llama_model_quantize`, in process, on a small
//! deepseek2 model: every output tensor must have the same type and the same bytes, and the
//! files must load and run in llama.cpp.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use dscoder::gguf::GgufFile;
use dscoder::llama_sys::llama_quantize_file;
use dscoder::pipeline::write_gguf;
use dscoder::recipe::FileType;
use dscoder::synthetic::SyntheticConfig;

/// The tiny synthetic F32 model, written once per test binary.
fn tiny_f32() -> &'static Path {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PATH
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tiny-f32.gguf");
            let config = SyntheticConfig::tiny();
            write_gguf(&path, &config.metadata(), &config.plan()).unwrap();
            (dir, path)
        })
        .1
}

fn dscoder(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dscoder"))
        .args(args)
        .output()
        .expect("run dscoder")
}

fn ours(input: &Path, output: &Path, ftype: &str, extra: &[&str]) {
    let mut args = vec![
        "quantize",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--type",
        ftype,
    ];
    args.extend_from_slice(extra);
    let out = dscoder(&args);
    assert!(
        out.status.success(),
        "dscoder quantize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn reference(input: &Path, output: &Path, ftype: &str, pure: bool) {
    let id = ftype.parse::<FileType>().unwrap().llama_ftype();
    llama_quantize_file(input, output, id, pure, 2).unwrap();
}

/// Same tensors, in the same order, with the same types and bytes; same metadata.
fn assert_same_model(ours: &Path, theirs: &Path, what: &str) {
    let a = GgufFile::open(ours).unwrap();
    let b = GgufFile::open(theirs).unwrap();
    let names = |f: &GgufFile| f.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "{what}: tensor order");
    for (ta, tb) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(ta.ty, tb.ty, "{what}: type of {}", ta.name);
        assert_eq!(ta.dims, tb.dims, "{what}: dims of {}", ta.name);
        assert!(
            a.tensor_data(ta) == b.tensor_data(tb),
            "{what}: bytes of {} ({}) differ",
            ta.name,
            ta.ty
        );
    }
    let keys = |f: &GgufFile| f.metadata.keys().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b), "{what}: metadata keys and order");
    for (k, v) in b.metadata.iter() {
        assert_eq!(a.metadata.get(k), Some(v), "{what}: metadata {k}");
    }
    // With the same metadata, tensors and layout, the files are the same bytes.
    assert!(
        std::fs::read(ours).unwrap() == std::fs::read(theirs).unwrap(),
        "{what}: files differ"
    );
}

#[test]
fn every_file_type_matches_llama_quantize_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let input = tiny_f32();
    for ftype in [
        "q8_0", "q4_0", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k", "bf16", "f16",
    ] {
        let a = dir.path().join(format!("ours-{ftype}.gguf"));
        let b = dir.path().join(format!("llama-{ftype}.gguf"));
        ours(input, &a, ftype, &[]);
        reference(input, &b, ftype, false);
        assert_same_model(&a, &b, ftype);
    }
}

#[test]
fn pure_matches_llama_quantize_pure() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    ours(tiny_f32(), &a, "q4_k_m", &["--pure"]);
    reference(tiny_f32(), &b, "q4_k_m", true);
    assert_same_model(&a, &b, "q4_k_m --pure");
}

#[test]
fn bf16_input_matches_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let bf16 = dir.path().join("bf16.gguf");
    reference(tiny_f32(), &bf16, "bf16", false);
    for ftype in ["q4_k_m", "q6_k"] {
        let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
        ours(&bf16, &a, ftype, &[]);
        reference(&bf16, &b, ftype, false);
        assert_same_model(&a, &b, &format!("bf16 -> {ftype}"));
    }
}

#[test]
fn expert_overrides_change_only_their_class() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("mix.gguf"), dir.path().join("base.gguf"));
    ours(
        tiny_f32(),
        &a,
        "q4_k_m",
        &[
            "--experts",
            "q4_0",
            "--attn",
            "q8_0",
            "--shared",
            "q6_k",
            "--output",
            "q8_0",
        ],
    );
    ours(tiny_f32(), &b, "q4_k_m", &[]);
    let mix = GgufFile::open(&a).unwrap();
    let base = GgufFile::open(&b).unwrap();
    for (t, u) in mix.tensors.iter().zip(&base.tensors) {
        let n = t.name.as_str();
        let want = if n.contains("_exps") {
            dscoder_quantize::GgmlType::Q4_0
        } else if n.contains(".attn_") && !n.contains("norm") {
            dscoder_quantize::GgmlType::Q8_0
        } else if n.contains("_shexp")
            || (n.contains(".ffn_") && n.starts_with("blk.0.") && !n.contains("norm"))
        {
            // The down projections' rows (192, 352) are not multiples of 256: Q6_K falls back to Q8_0.
            if t.dims[0] % 256 == 0 {
                dscoder_quantize::GgmlType::Q6_K
            } else {
                dscoder_quantize::GgmlType::Q8_0
            }
        } else if n == "output.weight" {
            dscoder_quantize::GgmlType::Q8_0
        } else {
            u.ty
        };
        assert_eq!(t.ty, want, "{n}");
        if t.ty == u.ty {
            assert!(
                mix.tensor_data(t) == base.tensor_data(u),
                "{n}: same type, same bytes"
            );
        }
    }
}

#[test]
fn quantized_files_load_and_run_in_llama_cpp() {
    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::LlamaModel;

    let dir = tempfile::tempdir().unwrap();
    let backend = dscoder::engine::backend();
    let mut files = vec![tiny_f32().to_path_buf()];
    for ftype in ["q4_k_m", "q8_0"] {
        let p = dir.path().join(format!("{ftype}.gguf"));
        ours(tiny_f32(), &p, ftype, &[]);
        files.push(p);
    }
    for path in files {
        let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        assert_eq!(model.n_vocab(), 384);
        let ctx_params = LlamaContextParams::default().with_n_ctx(std::num::NonZeroU32::new(64));
        let mut ctx = model.new_context(backend, ctx_params).unwrap();
        let tokens = model
            .vocab()
            .tokenize(b"def fib(n):\n\treturn n", true, false);
        assert_eq!(tokens[0], model.vocab().bos(), "BOS is added");
        let mut batch = LlamaBatch::new(64, 1);
        batch.add_sequence(&tokens, 0, false).unwrap();
        ctx.decode(&mut batch).unwrap();
        let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
        assert_eq!(logits.len(), 384);
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "{}: logits",
            path.display()
        );
    }
}
