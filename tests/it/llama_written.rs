//! GGUFs in the types people download (Q2_K, Q3_K_M, IQ4_XS, IQ3_M, ...), written by llama.cpp's
//! own quantizer (`llama_model_quantize`, what `llama-quantize` runs) from the bundled nano model:
//! dscoder reads them as ggml does, `info` describes them, and `run` generates from them.

use std::path::PathBuf;
use std::sync::OnceLock;

use dscoder::gguf::GgufFile;
use dscoder::llama_sys::{gguf_summary, llama_quantize_file};

use crate::common;

/// llama.cpp's file types (`enum llama_ftype`) that need no importance matrix, with a tensor type
/// each must contain (so the test cannot pass on a file that fell back to other types). The
/// types that need one (IQ3_XXS, IQ2_*, IQ1_*) are read in `gguf_reader`'s every-type file.
const FILE_TYPES: [(&str, u32, &str); 9] = [
    ("Q2_K", 10, "q2_K"),
    ("Q3_K_S", 11, "q3_K"),
    ("Q3_K_M", 12, "q3_K"),
    ("Q3_K_L", 13, "q3_K"),
    ("IQ4_NL", 25, "iq4_nl"),
    ("IQ3_S", 26, "iq3_s"),
    ("IQ3_M", 27, "iq3_s"),
    ("IQ4_XS", 30, "iq4_xs"),
    ("MXFP4_MOE", 38, "mxfp4"),
];

/// The nano model in each of [`FILE_TYPES`], quantized once per test run.
fn quantized() -> &'static [(String, PathBuf)] {
    static FILES: OnceLock<(tempfile::TempDir, Vec<(String, PathBuf)>)> = OnceLock::new();
    &FILES
        .get_or_init(|| {
            let src = common::converted(&common::repo("nano/model"), "bf16");
            let dir = tempfile::tempdir().unwrap();
            let files = FILE_TYPES
                .iter()
                .map(|&(name, ftype, _)| {
                    let out = dir.path().join(format!("nano-{name}.gguf"));
                    llama_quantize_file(&src, &out, ftype, false, 2)
                        .unwrap_or_else(|e| panic!("llama.cpp could not make {name}: {e}"));
                    (name.to_string(), out)
                })
                .collect();
            (dir, files)
        })
        .1
}

#[test]
fn reader_and_info_agree_with_ggml_on_downloaded_types() {
    for ((name, path), (_, _, must_have)) in quantized().iter().zip(FILE_TYPES) {
        let ours = GgufFile::open(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = gguf_summary(path).unwrap();
        assert_eq!(ours.tensors.len(), theirs.tensors.len(), "{name}");
        for (a, b) in ours.tensors.iter().zip(&theirs.tensors) {
            assert_eq!(
                (a.ty.id(), a.offset, a.n_bytes()),
                (b.type_id, b.offset as u64, b.size as u64),
                "{name}: {}",
                a.name
            );
        }
        assert!(
            ours.tensors.iter().any(|t| t.ty.name() == must_have),
            "{name}: no {must_have} tensor"
        );

        let out = common::dscoder().arg("info").arg(path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(must_have), "{name}: info lacks {must_have}");
    }
}

#[test]
fn run_generates_from_downloaded_types() {
    for (name, path) in quantized() {
        let out = common::dscoder()
            .arg("run")
            .arg(path)
            .args(["def fib(n):", "--raw", "--temp", "0", "-n", "8"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains("generated"), "{name}: {stderr}");
    }
}

#[test]
fn downloaded_low_bit_files_requantize_like_llama_quantize() {
    // A Q3_K_M file (Q3_K, Q4_K, Q5_K, Q6_K tensors) to Q4_0: every low-bit source is decoded
    // (ggml's decoder where dscoder has none) and requantized to llama.cpp's bytes.
    let (_, q3) = &quantized()[2];
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours.gguf"), dir.path().join("theirs.gguf"));
    let o = common::dscoder()
        .arg("quantize")
        .arg(q3)
        .arg(&ours)
        .args(["--type", "q4_0", "--allow-requantize"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    llama_quantize_file(q3, &theirs, 2, false, 2).unwrap();
    let (a, b) = (
        GgufFile::open(&ours).unwrap(),
        GgufFile::open(&theirs).unwrap(),
    );
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((&x.name, x.ty), (&y.name, y.ty));
        assert!(a.tensor_data(x) == b.tensor_data(y), "{}", x.name);
    }
}
