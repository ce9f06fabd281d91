//! The HF → GGUF tensor table for deepseek2, and the row sources that build each output tensor.
//!
//! Read top to bottom, [`plan_tensors`] is the whole model: per layer the attention (MLA, with
//! `kv_b_proj` split into `attn_k_b` and `attn_v_b`), then either the dense FFN or the router,
//! the stacked routed experts and the shared experts. No tensor is permuted except `attn_k_b`,
//! which llama.cpp wants transposed (deepseek2-gguf.md §4.1). Every checkpoint tensor must be
//! used exactly once: an extra or missing one is an error, as llama.cpp would refuse the file.

use std::collections::BTreeSet;
use std::path::Path;

use dscoder_quantize::GgmlType;

use super::checkpoint::{to_f32, Checkpoint, SourceDtype, SourceTensor};
use super::config::HfConfig;
use super::ConvertError;
use crate::pipeline::RowSource;

/// One output tensor before its type is chosen.
pub struct SourcedTensor<'a> {
    pub name: String,
    /// ggml order.
    pub dims: Vec<u64>,
    pub source: Box<dyn RowSource + 'a>,
}

/// Looks tensors up and records which were used.
struct Lookup<'a> {
    ckpt: &'a Checkpoint,
    dir: &'a Path,
    used: BTreeSet<String>,
}

impl<'a> Lookup<'a> {
    fn take(&mut self, name: &str, shape: &[u64]) -> Result<&'a SourceTensor, ConvertError> {
        let t = self.ckpt.get(name).ok_or_else(|| ConvertError::Tensor {
            path: self.dir.to_path_buf(),
            tensor: name.to_string(),
            message: "missing from the checkpoint".into(),
        })?;
        if t.shape != shape {
            return Err(ConvertError::Tensor {
                path: self.ckpt.shard_path(t).to_path_buf(),
                tensor: name.to_string(),
                message: format!(
                    "shape {:?} does not match config.json (expected {:?})",
                    t.shape, shape
                ),
            });
        }
        self.used.insert(name.to_string());
        Ok(t)
    }

    fn has(&self, name: &str) -> bool {
        self.ckpt.get(name).is_some()
    }
}

/// Rows that live in one or more contiguous byte ranges of equal row count (one per expert when
/// experts are stacked, one in all otherwise).
struct PartsRows<'a> {
    ckpt: &'a Checkpoint,
    dtype: SourceDtype,
    parts: Vec<&'a [u8]>,
    rows_per_part: u64,
    row_len: u64,
}

impl PartsRows<'_> {
    fn row_bytes(&self) -> usize {
        self.row_len as usize * self.dtype.size()
    }
}

impl RowSource for PartsRows<'_> {
    fn stored_type(&self) -> GgmlType {
        self.dtype.ggml()
    }

    fn read_rows(&self, first_row: u64, out: &mut [f32]) -> Result<(), String> {
        let rl = self.row_len as usize;
        let mut row = first_row;
        let mut done = 0usize;
        while done < out.len() {
            let part = (row / self.rows_per_part) as usize;
            let in_part = row % self.rows_per_part;
            let n = ((self.rows_per_part - in_part) as usize).min((out.len() - done) / rl);
            let bytes = self.parts.get(part).ok_or("row out of range")?;
            let start = in_part as usize * self.row_bytes();
            let src = bytes
                .get(start..start + n * self.row_bytes())
                .ok_or("row out of range")?;
            to_f32(self.dtype, src, &mut out[done..done + n * rl]);
            done += n * rl;
            row += n as u64;
        }
        Ok(())
    }

    fn raw_rows(&self, first_row: u64, n_rows: u64) -> Option<&[u8]> {
        let part = first_row / self.rows_per_part;
        let in_part = first_row % self.rows_per_part;
        if n_rows == 0 || in_part + n_rows > self.rows_per_part {
            return None;
        }
        let start = in_part as usize * self.row_bytes();
        self.parts
            .get(part as usize)?
            .get(start..start + n_rows as usize * self.row_bytes())
    }

    fn max_chunk_rows(&self) -> u64 {
        self.rows_per_part
    }

    fn release_rows(&self, first_row: u64, n_rows: u64) {
        let mut row = first_row;
        while row < first_row + n_rows {
            let part = (row / self.rows_per_part) as usize;
            let in_part = row % self.rows_per_part;
            let n = (self.rows_per_part - in_part).min(first_row + n_rows - row);
            if let Some(bytes) = self.parts.get(part) {
                let start = in_part as usize * self.row_bytes();
                if let Some(b) = bytes.get(start..start + n as usize * self.row_bytes()) {
                    self.ckpt.release(b);
                }
            }
            row += n;
        }
    }
}

/// Which half of `kv_b_proj` a [`KvBSplit`] produces.
#[derive(Clone, Copy)]
enum KvPart {
    /// `attn_k_b`, ne `[nope, kv_lora, H]`: the k_nope rows of each head, transposed.
    K,
    /// `attn_v_b`, ne `[kv_lora, v, H]`: the v rows of each head as they are.
    V,
}

/// `kv_b_proj` (`(H·(nope+v), kv_lora)`, per head `[k_nope rows, v rows]`) split per head.
/// It is small (a few MB), so it is converted whole.
struct KvBSplit<'a> {
    ckpt: &'a Checkpoint,
    dtype: SourceDtype,
    bytes: &'a [u8],
    n_head: usize,
    nope: usize,
    v: usize,
    kv_lora: usize,
    part: KvPart,
}

impl RowSource for KvBSplit<'_> {
    fn stored_type(&self) -> GgmlType {
        GgmlType::F32
    }

    fn read_rows(&self, first_row: u64, out: &mut [f32]) -> Result<(), String> {
        let (h, nope, v, r) = (self.n_head, self.nope, self.v, self.kv_lora);
        let mut kv = vec![0f32; h * (nope + v) * r];
        to_f32(self.dtype, self.bytes, &mut kv);
        let full: Vec<f32> = match self.part {
            KvPart::K => {
                let mut k = vec![0f32; h * r * nope];
                for hh in 0..h {
                    for j in 0..r {
                        for i in 0..nope {
                            k[(hh * r + j) * nope + i] = kv[(hh * (nope + v) + i) * r + j];
                        }
                    }
                }
                k
            }
            KvPart::V => {
                let mut out = Vec::with_capacity(h * v * r);
                for hh in 0..h {
                    let start = (hh * (nope + v) + nope) * r;
                    out.extend_from_slice(&kv[start..start + v * r]);
                }
                out
            }
        };
        let row_len = match self.part {
            KvPart::K => nope,
            KvPart::V => r,
        };
        let start = first_row as usize * row_len;
        let src = full
            .get(start..start + out.len())
            .ok_or("row out of range")?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn raw_rows(&self, _: u64, _: u64) -> Option<&[u8]> {
        None
    }

    fn release_rows(&self, _: u64, _: u64) {
        self.ckpt.release(self.bytes);
    }
}

/// torch shape → ggml dims.
fn ggml_dims(shape: &[u64]) -> Vec<u64> {
    shape.iter().rev().copied().collect()
}

fn whole<'a>(ckpt: &'a Checkpoint, t: &SourceTensor) -> PartsRows<'a> {
    let row_len = *t.shape.last().unwrap_or(&1);
    PartsRows {
        ckpt,
        dtype: t.dtype,
        parts: vec![ckpt.bytes(t)],
        rows_per_part: (t.n_elements() / row_len.max(1)).max(1),
        row_len,
    }
}

/// Every output tensor of the model, in llama.cpp's order, with where its rows come from.
pub fn plan_tensors<'a>(
    cfg: &HfConfig,
    ckpt: &'a Checkpoint,
    dir: &'a Path,
) -> Result<Vec<SourcedTensor<'a>>, ConvertError> {
    let mut lk = Lookup {
        ckpt,
        dir,
        used: BTreeSet::new(),
    };
    let mut out: Vec<SourcedTensor<'a>> = Vec::new();
    let h = cfg.hidden_size as u64;
    let vocab = cfg.vocab_size as u64;
    let n_head = cfg.num_attention_heads as u64;
    let (nope, rope, v) = (
        cfg.qk_nope_head_dim as u64,
        cfg.qk_rope_head_dim as u64,
        cfg.v_head_dim as u64,
    );
    let kv_lora = cfg.kv_lora_rank as u64;
    let ff = cfg.moe_intermediate_size as u64;
    let n_exp = cfg.n_routed_experts as u64;

    // A plain tensor: same bytes, reversed shape.
    macro_rules! direct {
        ($gguf:expr, $hf:expr, $shape:expr) => {{
            let hf_name: String = $hf.into();
            let t = lk.take(&hf_name, &$shape)?;
            out.push(SourcedTensor {
                name: $gguf.to_string(),
                dims: ggml_dims(&t.shape),
                source: Box::new(whole(ckpt, t)),
            });
        }};
    }

    direct!("token_embd.weight", "model.embed_tokens.weight", [vocab, h]);
    direct!("output_norm.weight", "model.norm.weight", [h]);
    if !cfg.tie_word_embeddings || lk.has("lm_head.weight") {
        direct!("output.weight", "lm_head.weight", [vocab, h]);
    }

    for l in 0..cfg.num_hidden_layers {
        let hf = |s: &str| format!("model.layers.{l}.{s}");
        let gg = |s: &str| format!("blk.{l}.{s}");

        direct!(gg("attn_norm.weight"), hf("input_layernorm.weight"), [h]);
        match cfg.q_lora_rank {
            None => direct!(
                gg("attn_q.weight"),
                hf("self_attn.q_proj.weight"),
                [n_head * (nope + rope), h]
            ),
            Some(q_lora) => {
                let q_lora = q_lora as u64;
                direct!(
                    gg("attn_q_a.weight"),
                    hf("self_attn.q_a_proj.weight"),
                    [q_lora, h]
                );
                direct!(
                    gg("attn_q_a_norm.weight"),
                    hf("self_attn.q_a_layernorm.weight"),
                    [q_lora]
                );
                direct!(
                    gg("attn_q_b.weight"),
                    hf("self_attn.q_b_proj.weight"),
                    [n_head * (nope + rope), q_lora]
                );
            }
        }
        direct!(
            gg("attn_kv_a_mqa.weight"),
            hf("self_attn.kv_a_proj_with_mqa.weight"),
            [kv_lora + rope, h]
        );
        direct!(
            gg("attn_kv_a_norm.weight"),
            hf("self_attn.kv_a_layernorm.weight"),
            [kv_lora]
        );
        let kv_b = lk.take(
            &hf("self_attn.kv_b_proj.weight"),
            &[n_head * (nope + v), kv_lora],
        )?;
        for (part, name, dims) in [
            (KvPart::K, "attn_k_b.weight", vec![nope, kv_lora, n_head]),
            (KvPart::V, "attn_v_b.weight", vec![kv_lora, v, n_head]),
        ] {
            out.push(SourcedTensor {
                name: gg(name),
                dims,
                source: Box::new(KvBSplit {
                    ckpt,
                    dtype: kv_b.dtype,
                    bytes: ckpt.bytes(kv_b),
                    n_head: n_head as usize,
                    nope: nope as usize,
                    v: v as usize,
                    kv_lora: kv_lora as usize,
                    part,
                }),
            });
        }
        direct!(
            gg("attn_output.weight"),
            hf("self_attn.o_proj.weight"),
            [h, n_head * v]
        );
        direct!(
            gg("ffn_norm.weight"),
            hf("post_attention_layernorm.weight"),
            [h]
        );

        if !cfg.is_moe_layer(l) {
            let dff = cfg.intermediate_size as u64;
            direct!(gg("ffn_gate.weight"), hf("mlp.gate_proj.weight"), [dff, h]);
            direct!(gg("ffn_up.weight"), hf("mlp.up_proj.weight"), [dff, h]);
            direct!(gg("ffn_down.weight"), hf("mlp.down_proj.weight"), [h, dff]);
            continue;
        }

        direct!(gg("ffn_gate_inp.weight"), hf("mlp.gate.weight"), [n_exp, h]);
        if lk.has(&hf("mlp.experts.gate_up_proj")) {
            fused_experts(&mut lk, &mut out, l, cfg)?;
        } else {
            for (proj, name, shape) in [
                ("gate_proj", "ffn_gate_exps.weight", [ff, h]),
                ("up_proj", "ffn_up_exps.weight", [ff, h]),
                ("down_proj", "ffn_down_exps.weight", [h, ff]),
            ] {
                let mut parts = Vec::with_capacity(n_exp as usize);
                let mut dtype = None;
                for e in 0..n_exp {
                    let t = lk.take(&hf(&format!("mlp.experts.{e}.{proj}.weight")), &shape)?;
                    if *dtype.get_or_insert(t.dtype) != t.dtype {
                        return Err(ConvertError::Tensor {
                            path: ckpt.shard_path(t).to_path_buf(),
                            tensor: hf(&format!("mlp.experts.{e}.{proj}.weight")),
                            message: "experts of one layer have different dtypes".into(),
                        });
                    }
                    parts.push(ckpt.bytes(t));
                }
                out.push(SourcedTensor {
                    name: gg(name),
                    dims: vec![shape[1], shape[0], n_exp],
                    source: Box::new(PartsRows {
                        ckpt,
                        dtype: dtype.unwrap_or(SourceDtype::F32),
                        parts,
                        rows_per_part: shape[0],
                        row_len: shape[1],
                    }),
                });
            }
        }
        if cfg.n_shared_experts > 0 {
            let sff = ff * cfg.n_shared_experts as u64;
            direct!(
                gg("ffn_gate_shexp.weight"),
                hf("mlp.shared_experts.gate_proj.weight"),
                [sff, h]
            );
            direct!(
                gg("ffn_up_shexp.weight"),
                hf("mlp.shared_experts.up_proj.weight"),
                [sff, h]
            );
            direct!(
                gg("ffn_down_shexp.weight"),
                hf("mlp.shared_experts.down_proj.weight"),
                [h, sff]
            );
        }
    }

    if let Some(extra) = ckpt.names().find(|n| !lk.used.contains(*n)) {
        let t = ckpt.get(extra).expect("listed");
        return Err(ConvertError::Tensor {
            path: ckpt.shard_path(t).to_path_buf(),
            tensor: extra.to_string(),
            message: "is not part of a DeepSeek-V2 model with this config.json (unexpected tensor)"
                .into(),
        });
    }
    out.sort_by(|a, b| crate::recipe::llama_tensor_order(&a.name, &b.name));
    Ok(out)
}

/// The fused expert layout transformers 5 can write: `experts.gate_up_proj` `(E, 2·ff, hidden)`
/// (gate rows first) and `experts.down_proj` `(E, hidden, ff)`.
fn fused_experts<'a>(
    lk: &mut Lookup<'a>,
    out: &mut Vec<SourcedTensor<'a>>,
    l: u32,
    cfg: &HfConfig,
) -> Result<(), ConvertError> {
    let (h, ff, e) = (
        cfg.hidden_size as u64,
        cfg.moe_intermediate_size as u64,
        cfg.n_routed_experts as u64,
    );
    let ckpt = lk.ckpt;
    let gate_up = lk.take(
        &format!("model.layers.{l}.mlp.experts.gate_up_proj"),
        &[e, 2 * ff, h],
    )?;
    let down = lk.take(
        &format!("model.layers.{l}.mlp.experts.down_proj"),
        &[e, h, ff],
    )?;
    let gu = ckpt.bytes(gate_up);
    let expert_bytes = (2 * ff * h) as usize * gate_up.dtype.size();
    let half = expert_bytes / 2;
    for (name, offset) in [("ffn_gate_exps.weight", 0), ("ffn_up_exps.weight", half)] {
        let parts = (0..e as usize)
            .map(|i| &gu[i * expert_bytes + offset..i * expert_bytes + offset + half])
            .collect();
        out.push(SourcedTensor {
            name: format!("blk.{l}.{name}"),
            dims: vec![h, ff, e],
            source: Box::new(PartsRows {
                ckpt,
                dtype: gate_up.dtype,
                parts,
                rows_per_part: ff,
                row_len: h,
            }),
        });
    }
    let d = ckpt.bytes(down);
    let per = (h * ff) as usize * down.dtype.size();
    out.push(SourcedTensor {
        name: format!("blk.{l}.ffn_down_exps.weight"),
        dims: vec![ff, h, e],
        source: Box::new(PartsRows {
            ckpt,
            dtype: down.dtype,
            parts: (0..e as usize)
                .map(|i| &d[i * per..(i + 1) * per])
                .collect(),
            rows_per_part: h,
            row_len: ff,
        }),
    });
    Ok(())
}
