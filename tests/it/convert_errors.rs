//! Bad checkpoints get one clear error naming the file and the key or tensor, a non-zero exit,
//! and nothing written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixture() -> PathBuf {
    crate::common::fixture("lite-tiny")
}

/// A writable copy of the Lite-style fixture.
fn copy_fixture(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn convert(dir: &Path, out_dir: &Path) -> Output {
    crate::common::dscoder()
        .arg("convert")
        .arg(dir)
        .arg("-o")
        .arg(out_dir.join("out.gguf"))
        .args(["--type", "q4_k_m"])
        .output()
        .unwrap()
}

/// Which shard holds `tensor`, from the index.
fn shard_of(dir: &Path, tensor: &str) -> PathBuf {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    dir.join(index["weight_map"][tensor].as_str().unwrap())
}

/// Rewrites the shard holding `tensor` with `edit` applied to its tensors, and the index to match.
fn edit_shard(
    dir: &Path,
    tensor: &str,
    edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = shard_of(dir, tensor);
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let index_path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let file = path.file_name().unwrap().to_str().unwrap().to_string();
    let map = index["weight_map"].as_object_mut().unwrap();
    map.retain(|_, f| f.as_str() != Some(&file));
    for (n, ..) in &tensors {
        map.insert(n.clone(), file.clone().into());
    }
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Runs one broken checkpoint and checks the error.
fn expect_error(name: &str, breakage: impl FnOnce(&Path), must_mention: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    copy_fixture(&dir);
    breakage(&dir);
    let o = convert(&dir, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{name}: exit code; stderr: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{name}: one error line: {err}");
    for m in must_mention {
        assert!(errors[0].contains(m), "{name}: '{m}' not in: {}", errors[0]);
    }
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{name}: output folder not empty");
}

#[test]
fn every_bad_input_gets_one_clear_error_and_writes_nothing() {
    expect_error(
        "missing config key",
        |d| {
            edit_json(&d.join("config.json"), |v| {
                drop(v.as_object_mut().unwrap().remove("hidden_size"))
            })
        },
        &["config.json", "hidden_size"],
    );
    expect_error(
        "unsupported model_type",
        |d| edit_json(&d.join("config.json"), |v| v["model_type"] = "llama".into()),
        &["config.json", "model_type", "llama"],
    );
    expect_error(
        "bad config value",
        |d| {
            edit_json(&d.join("config.json"), |v| {
                v["num_experts_per_tok"] = "four".into()
            })
        },
        &["config.json", "num_experts_per_tok"],
    );
    expect_error(
        "missing config.json",
        |d| std::fs::remove_file(d.join("config.json")).unwrap(),
        &["config.json"],
    );
    expect_error(
        "missing tokenizer",
        |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
        &["tokenizer.json"],
    );
    let t = "model.layers.1.mlp.experts.3.up_proj.weight";
    expect_error(
        "missing tensor",
        |d| edit_shard(d, t, |ts| ts.retain(|x| x.0 != t)),
        &[t, "missing"],
    );
    expect_error(
        "extra tensor",
        |d| {
            edit_shard(d, t, |ts| {
                ts.push((
                    "model.layers.1.mlp.surprise.weight".into(),
                    Dtype::BF16,
                    vec![4, 4],
                    vec![0; 32],
                ))
            })
        },
        &["model.layers.1.mlp.surprise.weight", "model-0000"],
    );
    let norm = "model.layers.0.self_attn.kv_a_layernorm.weight";
    expect_error(
        "shape mismatch",
        |d| {
            edit_shard(d, norm, |ts| {
                let x = ts.iter_mut().find(|x| x.0 == norm).unwrap();
                x.2 = vec![128, 2];
            })
        },
        &[norm, "shape"],
    );
    expect_error(
        "unsupported dtype",
        |d| {
            edit_shard(d, norm, |ts| {
                let x = ts.iter_mut().find(|x| x.0 == norm).unwrap();
                x.1 = Dtype::I16;
            })
        },
        &[norm, "I16"],
    );
    expect_error(
        "truncated shard",
        |d| {
            let p = shard_of(d, t);
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        },
        &["model-0000", "safetensors"],
    );
    expect_error(
        "unknown pre-tokenizer",
        |d| {
            edit_json(
                &d.join("tokenizer.json"),
                |v| v["pre_tokenizer"] = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            )
        },
        &["tokenizer.json", "pre_tokenizer", "--pre"],
    );
}

#[test]
fn fused_expert_layout_converts_to_the_same_file() {
    // transformers 5 can write experts fused: gate_up_proj (E, 2F, H), gate rows first, and
    // down_proj (E, H, F). Build that layout from the per-expert fixture and compare outputs.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fused");
    copy_fixture(&dir);
    for layer in 1..3 {
        let first = format!("model.layers.{layer}.mlp.experts.0.gate_proj.weight");
        // Gather this layer's experts from every shard.
        let mut per: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = HashMap::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("safetensors") {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (n, v) in st.tensors() {
                if n.starts_with(&format!("model.layers.{layer}.mlp.experts.")) {
                    per.insert(n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()));
                }
            }
        }
        let n_exp = per.len() / 3;
        let mut gate_up = Vec::new();
        let mut down = Vec::new();
        let (ff, h) = (per[&first].1[0], per[&first].1[1]);
        for e in 0..n_exp {
            let g = |p: &str| {
                per[&format!("model.layers.{layer}.mlp.experts.{e}.{p}.weight")]
                    .2
                    .clone()
            };
            gate_up.extend(g("gate_proj"));
            gate_up.extend(g("up_proj"));
            down.extend(g("down_proj"));
        }
        // Remove the per-expert tensors from every shard, then add the fused pair to the first.
        let shards: Vec<PathBuf> = {
            let mut v: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("safetensors"))
                .collect();
            v.sort();
            v
        };
        for (i, shard) in shards.iter().enumerate() {
            let any = {
                let bytes = std::fs::read(shard).unwrap();
                let st = SafeTensors::deserialize(&bytes).unwrap();
                st.names().into_iter().next().unwrap().to_string()
            };
            let prefix = format!("model.layers.{layer}.mlp.experts.");
            let (gu, dn) = (gate_up.clone(), down.clone());
            edit_shard(&dir, &any, |ts| {
                ts.retain(|x| !x.0.starts_with(&prefix));
                if i == 0 {
                    ts.push((
                        format!("{prefix}gate_up_proj"),
                        Dtype::BF16,
                        vec![n_exp, 2 * ff, h],
                        gu,
                    ));
                    ts.push((
                        format!("{prefix}down_proj"),
                        Dtype::BF16,
                        vec![n_exp, h, ff],
                        dn,
                    ));
                }
            });
        }
    }
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let a = convert(&dir, &out);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let out2 = tmp.path().join("out2");
    std::fs::create_dir_all(&out2).unwrap();
    let b = convert(&fixture(), &out2);
    assert!(b.status.success());
    // general.name comes from the folder name; everything else must be identical.
    let fa = dscoder::gguf::GgufFile::open(&out.join("out.gguf")).unwrap();
    let fb = dscoder::gguf::GgufFile::open(&out2.join("out.gguf")).unwrap();
    assert_eq!(fa.tensors.len(), fb.tensors.len());
    for (x, y) in fa.tensors.iter().zip(&fb.tensors) {
        assert_eq!((&x.name, x.ty, &x.dims), (&y.name, y.ty, &y.dims));
        assert!(fa.tensor_data(x) == fb.tensor_data(y), "{}", x.name);
    }
}

/// `convert` proves the tokenizer before writing weights: llama.cpp reading the new file must
/// tokenize a sample as Hugging Face's `tokenizers` does with the checkpoint's tokenizer.json.
/// A wrong `--pre` (llama.cpp's default GPT-2-style rules instead of DeepSeek-V2's) and a
/// normalizer that
/// llama.cpp does not apply are both caught, naming the text; nothing is written unless
/// `--skip-tokenizer-check` asks for it.
#[test]
fn a_tokenizer_that_llama_cpp_would_read_differently_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let run = |src: &Path, extra: &[&str]| {
        crate::common::dscoder()
            .arg("convert")
            .arg(src)
            .arg("-o")
            .arg(out.join("out.gguf"))
            .args(["--type", "q8_0"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = |o: &Output, what: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("tokenizes as") && err.contains("with the checkpoint's tokenizer.json"),
            "{what}: {err}"
        );
        assert!(err.contains("--skip-tokenizer-check"), "{what}: {err}");
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
    };

    let o = run(&fixture(), &["--pre", "default"]);
    refused(&o, "--pre default");
    assert!(String::from_utf8_lossy(&o.stderr).contains("(default)"));
    // A name llama.cpp does not know is named as such.
    let o = run(&fixture(), &["--pre", "no-such-pre"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("pre-tokenizer 'no-such-pre'"), "{err}");

    let lower = dir.path().join("lowercase");
    copy_fixture(&lower);
    edit_json(&lower.join("tokenizer.json"), |t| {
        t["normalizer"] = serde_json::json!({"type": "Lowercase"});
    });
    refused(&run(&lower, &[]), "a Lowercase normalizer");

    let o = run(&fixture(), &["--pre", "default", "--skip-tokenizer-check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("out.gguf").is_file());
}
