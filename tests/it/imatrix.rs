//! `dscoder imatrix` against transformers: `nano/imatrix_reference.py` ran
//! `DeepseekV2ForCausalLM` on the GPU machine over the first two 512-token chunks of the shipped
//! calibration text and summed x² per input column of every weight (per expert for the routed
//! ones, with the number of tokens routed to each). Ours must see the same tokens, count the same
//! rows and reach the same sums.

use std::path::Path;

use dscoder::engine::{Engine, EngineSettings};
use dscoder::imatrix::ImportanceMatrix;

use crate::common::{self, dscoder, ids};
use crate::complete::nano_f32;

fn reference() -> (serde_json::Value, Vec<f32>) {
    let index = common::json(&common::repo("nano/imatrix_reference.json"));
    let bytes = std::fs::read(common::repo("nano/imatrix_reference.bin")).unwrap();
    let floats = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (index, floats)
}

fn run_imatrix(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    dscoder()
        .arg("imatrix")
        .arg(model)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn statistics_match_transformers_on_the_nano_model() {
    let (r, floats) = reference();
    let model = nano_f32();
    // The same token ids: the shipped text, BOS first, chunk heads replaced by BOS.
    let engine = Engine::load(&model, EngineSettings::default()).unwrap();
    let text = std::fs::read_to_string(common::repo(r["text"].as_str().unwrap())).unwrap();
    let tokens = engine.tokenize(&text, true);
    let chunks = dscoder::perplexity::chunks(&tokens, 512, engine.bos());
    for (i, want) in r["chunks"].as_array().unwrap().iter().enumerate() {
        assert_eq!(chunks[i], ids(want), "chunk {i} tokens");
    }
    drop(engine);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nano.imatrix");
    let o = run_imatrix(&model, &out, &["--chunks", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = ImportanceMatrix::load(&out).unwrap();
    assert_eq!((m.chunk_count, m.chunk_size), (2, 512));

    let entries = r["entries"].as_object().unwrap();
    let mut checked = 0;
    // The first layer where a routing tie sent a token elsewhere: from there on, that token's
    // hidden state differs a little, and the sums get a looser tolerance.
    let layer = |name: &str| dscoder::model::layer_of(name).unwrap_or(0);
    let diverged = entries
        .iter()
        .filter(|(name, e)| {
            let want: Vec<u64> = e["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .collect();
            m.entries.get(*name).is_some_and(|o| o.counts != want)
        })
        .map(|(name, _)| layer(name))
        .min()
        .unwrap_or(u32::MAX);
    assert!(entries.len() >= 50, "the reference covers every layer");
    for (name, e) in entries {
        let ours = m
            .entries
            .get(name)
            .unwrap_or_else(|| panic!("no entry for {name}"));
        let counts: Vec<u64> = e["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        // Routing can differ on a near-tie of two experts' scores: a token or two may go to
        // another expert (and the layers after it see a slightly different token). The totals
        // agree, and every matrix whose rows agree has the same sums.
        assert_eq!(
            ours.counts.iter().sum::<u64>(),
            counts.iter().sum::<u64>(),
            "{name}: rows"
        );
        let moved: u64 = ours
            .counts
            .iter()
            .zip(&counts)
            .map(|(a, b)| a.abs_diff(*b))
            .sum();
        assert!(
            moved <= 4,
            "{name}: rows per matrix {:?} vs {counts:?}",
            ours.counts
        );
        let off = e["offset"].as_u64().unwrap() as usize;
        let want = &floats[off..off + e["len"].as_u64().unwrap() as usize];
        assert_eq!(ours.sums.len(), want.len(), "{name}: size");
        let cols = want.len() / counts.len();
        for (mat, (a, b)) in ours.sums.chunks(cols).zip(want.chunks(cols)).enumerate() {
            // f32 kernels against float64 sums: relative to the matrix's scale, tight where
            // the same rows were summed, within 5% where a routing tie moved one, 1% in the
            // layers after such a tie.
            let tol = if ours.counts[mat] != counts[mat] {
                5e-2
            } else if layer(name) > diverged {
                1e-2
            } else {
                1e-3
            };
            let scale = b.iter().fold(0f32, |m, &v| m.max(v.abs()));
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= tol * scale,
                    "{name}[{mat}][{j}]: ours {x}, transformers {y} (scale {scale})"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, entries.len());
    // MLA's absorbed projections have no transformers counterpart, but are recorded per head.
    let kb = &m.entries["blk.1.attn_k_b.weight"];
    assert_eq!(kb.counts, vec![1024]);
    assert_eq!(kb.sums.len(), 32 * 8, "32 columns for each of 8 heads");
}

#[test]
fn the_calibration_text_holds_none_of_the_held_out_text() {
    let calibration =
        std::fs::read_to_string(common::repo("src/imatrix/calibration/code.txt")).unwrap();
    let lines: std::collections::HashSet<&str> = calibration.lines().map(str::trim).collect();
    let held = std::fs::read_to_string(common::repo("nano/heldout.py.txt")).unwrap();
    // No held-out file is in it (by name) ...
    for name in held
        .lines()
        .filter_map(|l| l.strip_prefix("# ---- file: Lib/"))
    {
        let name = name.trim_end_matches(" ----");
        assert!(
            !calibration.contains(&format!("# file: {name}\n")),
            "{name}"
        );
    }
    // ... nor its text: long lines in common are only the language's idioms, a handful at most
    // (the training data's rule: a file sharing 8 distinct 40-character lines is held-out text).
    for path in ["nano/heldout.py.txt", "tests/fixtures/heldout.py.txt"] {
        let text = std::fs::read_to_string(common::repo(path)).unwrap();
        let shared: std::collections::HashSet<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.len() >= 40 && lines.contains(l))
            .collect();
        assert!(shared.len() < 8, "{path} shares {shared:?}");
    }
}

#[test]
fn an_imatrix_feeds_quantize_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = nano_f32();
    let imx = dir.path().join("nano.imatrix");
    let o = run_imatrix(&model, &imx, &["--chunks", "1", "--chunk-size", "256"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // It makes the 2-bit types possible, and the result runs.
    let q = dir.path().join("iq2_xs.gguf");
    let o = dscoder()
        .args(["quantize"])
        .arg(&model)
        .arg(&q)
        .args(["--type", "iq2_xs", "--imatrix"])
        .arg(&imx)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = dscoder()
        .arg("run")
        .arg(&q)
        .args(["-n", "8", "--temp", "0", "def add(a, b):"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A truncated or foreign file is one clear error, and nothing is written.
    let bytes = std::fs::read(&imx).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("truncated.imatrix", bytes[..bytes.len() / 2].to_vec()),
        ("empty.dat", Vec::new()),
        (
            "garbage.dat",
            b"\x05\x00\x00\x00\xff\xff\xff\x7fname".to_vec(),
        ),
    ];
    for (name, content) in cases {
        let bad = dir.path().join(name);
        std::fs::write(&bad, content).unwrap();
        let out = dir.path().join(format!("{name}.gguf"));
        let o = dscoder()
            .arg("quantize")
            .arg(&model)
            .arg(&out)
            .args(["--type", "q4_k_m", "--imatrix"])
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(name) && !err.contains("panicked"),
            "{name}: {err}"
        );
        assert!(!out.exists(), "{name}: nothing written");
    }
    // An imatrix of another model is refused by size.
    let other = dir.path().join("other.imatrix");
    let mut m = ImportanceMatrix::load(&imx).unwrap();
    for e in m.entries.values_mut().filter(|e| e.counts.len() == 1) {
        e.sums.push(1.0);
        e.activations = None;
    }
    m.save(&other).unwrap();
    let o = dscoder()
        .arg("quantize")
        .arg(&model)
        .arg(dir.path().join("x.gguf"))
        .args(["--type", "q4_k_m", "--imatrix"])
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("different model"),
        "{err}"
    );
}

#[test]
fn convert_with_an_imatrix_text_equals_the_three_steps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nano = common::repo("nano/model");
    // One command: checkpoint -> temporary BF16 -> importance matrix -> IQ2_XS.
    let one = d.join("one.gguf");
    common::convert_with(
        &nano,
        &one,
        &[
            "--type",
            "iq2_xs",
            "--imatrix-text",
            "--imatrix-chunks",
            "2",
        ],
    );
    // The same by hand.
    let bf16 = d.join("bf16.gguf");
    common::convert(&nano, &bf16, "bf16");
    let imx = d.join("m.imatrix");
    assert!(run_imatrix(&bf16, &imx, &["--chunks", "2"])
        .status
        .success());
    let two = d.join("two.gguf");
    let o = dscoder()
        .arg("quantize")
        .arg(&bf16)
        .arg(&two)
        .args(["--type", "iq2_xs", "--imatrix"])
        .arg(&imx)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (
        dscoder::gguf::GgufFile::open(&one).unwrap(),
        dscoder::gguf::GgufFile::open(&two).unwrap(),
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((&x.name, x.ty), (&y.name, y.ty));
        assert!(a.tensor_data(x) == b.tensor_data(y), "{}", x.name);
    }
    // Only the output is left behind.
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
