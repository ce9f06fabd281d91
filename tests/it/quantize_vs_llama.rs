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

/// Same tensors, in the same order, with the same types and bytes; same metadata in the same
/// order; so the same file.
fn assert_same_model(ours: &Path, theirs: &Path, what: &str) {
    assert_same_tensors(ours, theirs, what);
    let keys = |p: &Path| {
        let f = GgufFile::open(p).unwrap();
        f.metadata.keys().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(keys(ours), keys(theirs), "{what}: metadata keys and order");
    // With the same metadata, tensors and layout, the files are the same bytes.
    assert!(
        std::fs::read(ours).unwrap() == std::fs::read(theirs).unwrap(),
        "{what}: files differ"
    );
}

/// `dscoder quantize --type T` and llama.cpp's quantizer write the same file for each type.
fn same_files_as_llama(input: &Path, ftypes: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    for ftype in ftypes {
        let a = dir.path().join(format!("ours-{ftype}.gguf"));
        let b = dir.path().join(format!("llama-{ftype}.gguf"));
        ours(input, &a, ftype, &[]);
        reference(input, &b, ftype, false);
        assert_same_model(&a, &b, ftype);
    }
}

#[test]
fn every_file_type_matches_llama_quantize_byte_for_byte() {
    same_files_as_llama(
        tiny_f32(),
        &[
            "q8_0", "q4_0", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k", "bf16", "f16",
        ],
    );
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

/// A 9-layer variant of the tiny model: deep enough for the per-layer rules (`n_layer / 8`,
/// `use_more_bits`) of the low-bit file types to pick more than one type.
fn deep_f32() -> &'static Path {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PATH
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("deep-f32.gguf");
            let config = SyntheticConfig {
                n_layer: 9,
                ..SyntheticConfig::tiny()
            };
            write_gguf(&path, &config.metadata(), &config.plan()).unwrap();
            (dir, path)
        })
        .1
}

/// Importance vectors for every quantizable weight of `model`: positive, varied, and made
/// here (not by dscoder's loader), one block of columns per expert for 3-D tensors.
fn synthetic_importance(model: &Path) -> Vec<(String, Vec<f32>)> {
    let file = GgufFile::open(model).unwrap();
    let mut out = Vec::new();
    let mut state = 0x9e3779b97f4a7c15u64;
    for t in &file.tensors {
        let n = t.name.as_str();
        if t.dims.len() < 2 || n.contains("norm") || n.contains("gate_inp") {
            continue;
        }
        let len = (t.dims[0] * t.dims.get(2).copied().unwrap_or(1)) as usize;
        let v = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // 0.0625 .. 16, spread over eight octaves; multiples of 1/64 so that ×4 and ÷4
                // are exact in f32.
                (1 + (state >> 33) % 1024) as f32 / 64.0
            })
            .collect();
        out.push((t.name.clone(), v));
    }
    out
}

/// Writes `weights` as llama-imatrix's GGUF format (sums = mean × 4 rows, counts = 4), by
/// hand from the format's description, so the test does not depend on dscoder's writer.
fn write_imatrix_gguf(path: &Path, weights: &[(String, Vec<f32>)], model: &Path) {
    use dscoder::gguf::{Array, GgufWriter, Metadata, TensorDecl, Value};
    use dscoder_quantize::GgmlType;
    let file = GgufFile::open(model).unwrap();
    let mut meta = Metadata::new();
    meta.set("general.type", Value::String("imatrix".into()));
    meta.set(
        "imatrix.datasets",
        Value::Array(Array::String(vec!["synthetic".into()])),
    );
    meta.set("imatrix.chunk_count", Value::U32(1));
    meta.set("imatrix.chunk_size", Value::U32(512));
    let mut decls = Vec::new();
    let mut data = Vec::new();
    for (name, w) in weights {
        let t = file.tensor(name).unwrap();
        let mats = t.dims.get(2).copied().unwrap_or(1);
        decls.push(TensorDecl::new(
            format!("{name}.in_sum2"),
            vec![t.dims[0], mats],
            GgmlType::F32,
        ));
        data.push(
            w.iter()
                .flat_map(|x| (x * 4.0).to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        decls.push(TensorDecl::new(
            format!("{name}.counts"),
            vec![1, mats],
            GgmlType::F32,
        ));
        data.push((0..mats).flat_map(|_| 4.0f32.to_le_bytes()).collect());
    }
    let mut w = GgufWriter::create(path, &meta, &decls).unwrap();
    for (d, bytes) in decls.iter().zip(&data) {
        w.write_tensor(&d.name, bytes).unwrap();
    }
    w.finish().unwrap();
}

/// The same vectors in the legacy `.dat` layout (values = mean × ncall, ncall = 4).
fn write_imatrix_dat(path: &Path, weights: &[(String, Vec<f32>)]) {
    let mut b = Vec::new();
    b.extend((weights.len() as i32).to_le_bytes());
    for (name, w) in weights {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(4i32.to_le_bytes());
        b.extend((w.len() as i32).to_le_bytes());
        b.extend(w.iter().flat_map(|x| (x * 4.0).to_le_bytes()));
    }
    b.extend(1i32.to_le_bytes());
    b.extend(9i32.to_le_bytes());
    b.extend(b"synthetic");
    std::fs::write(path, b).unwrap();
}

fn reference_weighted(input: &Path, output: &Path, ftype: &str, w: &[(String, Vec<f32>)]) {
    let id = ftype.parse::<FileType>().unwrap().llama_ftype();
    dscoder::llama_sys::llama_quantize_file_weighted(input, output, id, false, 2, w).unwrap();
}

/// Tensors (types and bytes) equal; metadata equal but for llama-quantize's own
/// `quantize.imatrix.*` keys, which its command line (not `llama_model_quantize`) adds.
fn assert_same_tensors(ours: &Path, theirs: &Path, what: &str) {
    let a = GgufFile::open(ours).unwrap();
    let b = GgufFile::open(theirs).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len(), "{what}: tensor count");
    for (ta, tb) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(ta.name, tb.name, "{what}: order");
        assert_eq!(ta.ty, tb.ty, "{what}: type of {}", ta.name);
        assert_eq!(ta.dims, tb.dims, "{what}: dims of {}", ta.name);
        assert!(
            a.tensor_data(ta) == b.tensor_data(tb),
            "{what}: bytes of {} ({}) differ",
            ta.name,
            ta.ty
        );
    }
    for (k, v) in b.metadata.iter() {
        if !k.starts_with("quantize.imatrix.") {
            assert_eq!(a.metadata.get(k), Some(v), "{what}: metadata {k}");
        }
    }
    for (k, _) in a.metadata.iter() {
        assert!(
            b.metadata.contains_key(k) || k.starts_with("quantize.imatrix."),
            "{what}: extra key {k}"
        );
    }
}

#[test]
fn low_bit_file_types_match_llama_quantize_byte_for_byte() {
    same_files_as_llama(
        deep_f32(),
        &[
            "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "iq4_nl", "iq4_xs", "iq3_s", "iq3_m",
        ],
    );
}

#[test]
fn an_importance_matrix_gives_llama_quantizes_bytes_in_both_file_formats() {
    let dir = tempfile::tempdir().unwrap();
    let input = deep_f32();
    let weights = synthetic_importance(input);
    let gguf = dir.path().join("m.imatrix.gguf");
    let dat = dir.path().join("m.imatrix.dat");
    write_imatrix_gguf(&gguf, &weights, input);
    write_imatrix_dat(&dat, &weights);
    for ftype in [
        "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "q2_k_s", "iq1_s", "iq1_m", "q2_k",
        "q3_k_m", "q4_k_m", "q4_0", "q5_0", "q5_k_m", "q6_k", "iq4_xs", "iq3_xs", "iq3_s",
    ] {
        let a = dir.path().join(format!("ours-{ftype}.gguf"));
        let b = dir.path().join(format!("llama-{ftype}.gguf"));
        ours(input, &a, ftype, &["--imatrix", gguf.to_str().unwrap()]);
        reference_weighted(input, &b, ftype, &weights);
        assert_same_tensors(&a, &b, &format!("{ftype} with an imatrix"));
    }
    // The legacy file gives the same bytes as the GGUF one.
    let (a, b) = (dir.path().join("dat.gguf"), dir.path().join("gguf.gguf"));
    ours(input, &a, "iq2_xs", &["--imatrix", dat.to_str().unwrap()]);
    ours(input, &b, "iq2_xs", &["--imatrix", gguf.to_str().unwrap()]);
    assert_same_tensors(&a, &b, "legacy .dat vs GGUF imatrix");
    // The importance matrix changes the bytes (it is not ignored).
    let plain = dir.path().join("plain.gguf");
    ours(input, &plain, "q4_k_m", &[]);
    let weighted = GgufFile::open(&dir.path().join("ours-q4_k_m.gguf")).unwrap();
    let plain = GgufFile::open(&plain).unwrap();
    let t = plain.tensor("blk.1.ffn_gate_exps.weight").unwrap();
    let u = weighted.tensor("blk.1.ffn_gate_exps.weight").unwrap();
    assert_ne!(plain.tensor_data(t), weighted.tensor_data(u));
}

#[test]
fn types_that_need_an_importance_matrix_are_refused_without_one_like_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    for ftype in ["iq2_xxs", "iq1_s", "q2_k_s", "iq3_xxs", "iq3_xs"] {
        let out = dir.path().join(format!("{ftype}.gguf"));
        let r = dscoder(&[
            "quantize",
            deep_f32().to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            ftype,
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{ftype} without an imatrix succeeded");
        assert!(
            err.contains("importance matrix") && err.contains("dscoder imatrix"),
            "{err}"
        );
        assert!(!out.exists(), "nothing is written");
        let id = ftype.parse::<FileType>().unwrap().llama_ftype();
        let theirs = dir.path().join(format!("llama-{ftype}.gguf"));
        assert!(
            llama_quantize_file(deep_f32(), &theirs, id, false, 2).is_err(),
            "llama.cpp refuses {ftype} without an imatrix too"
        );
    }
}
