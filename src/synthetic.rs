//! Synthetic deepseek2 GGUF models with random weights, for tests, demos and benchmarks.
//!
//! No real weights can be downloaded where dscoder is tested, so the GGUF-side tests need a
//! model built here. It has the real architecture (MLA attention, a leading dense layer, routed
//! plus shared experts, YaRN rope keys) at any size, with a byte-level BPE vocabulary that
//! llama.cpp loads. Weights are generated row by row from a seed, so a model of any size streams
//! through the same pipeline as a real one and is identical on every run.

use dscoder_quantize::GgmlType;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::gguf::{Array, Metadata, Value};
use crate::model::ModelShape;
use crate::pipeline::{PlannedTensor, RowSource};
use crate::recipe::{llama_tensor_order, Planner, Recipe, TensorRef};

/// Shape of a synthetic model, in HF config terms.
#[derive(Clone, Debug)]
pub struct SyntheticConfig {
    pub name: String,
    pub n_layer: u32,
    pub hidden: u64,
    pub n_head: u64,
    /// 0 means Lite-style (`attn_q`), otherwise `attn_q_a`/`attn_q_b`.
    pub q_lora_rank: u64,
    pub kv_lora_rank: u64,
    pub qk_nope: u64,
    pub qk_rope: u64,
    pub v_head: u64,
    pub dense_ff: u64,
    pub expert_ff: u64,
    pub n_expert: u64,
    pub n_expert_used: u32,
    pub n_shared: u64,
    pub n_dense_layers: u32,
    /// Real tokens in the vocabulary: 256 byte tokens, merges and specials come first; the rest,
    /// up to this count, are `[PADn]` like the real model's unused ids.
    pub n_vocab: u64,
    pub seed: u64,
}

impl SyntheticConfig {
    /// A tiny model (a few MB in F32) whose row lengths hit the same 256-divisibility cases as
    /// DeepSeek-Coder-V2-Lite: hidden a multiple of 256, expert and dense widths multiples of 32
    /// but not of 256, `attn_k_b` rows of 32.
    pub fn tiny() -> Self {
        SyntheticConfig {
            name: "dscoder-synthetic-tiny".into(),
            n_layer: 4,
            hidden: 256,
            n_head: 4,
            q_lora_rank: 0,
            kv_lora_rank: 256,
            qk_nope: 32,
            qk_rope: 32,
            v_head: 32,
            dense_ff: 352,
            expert_ff: 96,
            n_expert: 16,
            n_expert_used: 4,
            n_shared: 2,
            n_dense_layers: 1,
            n_vocab: 384,
            seed: 0x5eed,
        }
    }

    /// DeepSeek-Coder-V2-Lite's exact shapes, cut to `n_layer` layers (27 is the real depth).
    pub fn lite(n_layer: u32) -> Self {
        SyntheticConfig {
            name: format!("dscoder-synthetic-lite-{n_layer}L"),
            n_layer,
            hidden: 2048,
            n_head: 16,
            q_lora_rank: 0,
            kv_lora_rank: 512,
            qk_nope: 128,
            qk_rope: 64,
            v_head: 128,
            dense_ff: 10944,
            expert_ff: 1408,
            n_expert: 64,
            n_expert_used: 6,
            n_shared: 2,
            n_dense_layers: 1,
            n_vocab: 102400,
            seed: 0x11fe,
        }
    }

    /// Every tensor: GGUF name, ggml dims, and the scale of its random values (`None` for a norm,
    /// which is drawn around 1).
    pub fn tensors(&self) -> Vec<(String, Vec<u64>, Option<f32>)> {
        let w = |fan_in: u64| Some(1.0 / (fan_in as f32).sqrt());
        let h = self.hidden;
        let mut v = vec![
            (
                "token_embd.weight".to_string(),
                vec![h, self.n_vocab],
                Some(1.0),
            ),
            ("output_norm.weight".to_string(), vec![h], None),
            ("output.weight".to_string(), vec![h, self.n_vocab], w(h)),
        ];
        let k_mla = self.qk_nope + self.qk_rope;
        for i in 0..self.n_layer {
            let b = |n: &str| format!("blk.{i}.{n}.weight");
            v.push((b("attn_norm"), vec![h], None));
            if self.q_lora_rank == 0 {
                v.push((b("attn_q"), vec![h, self.n_head * k_mla], w(h)));
            } else {
                v.push((b("attn_q_a"), vec![h, self.q_lora_rank], w(h)));
                v.push((b("attn_q_a_norm"), vec![self.q_lora_rank], None));
                v.push((
                    b("attn_q_b"),
                    vec![self.q_lora_rank, self.n_head * k_mla],
                    w(self.q_lora_rank),
                ));
            }
            v.push((
                b("attn_kv_a_mqa"),
                vec![h, self.kv_lora_rank + self.qk_rope],
                w(h),
            ));
            v.push((b("attn_kv_a_norm"), vec![self.kv_lora_rank], None));
            v.push((
                b("attn_k_b"),
                vec![self.qk_nope, self.kv_lora_rank, self.n_head],
                w(self.kv_lora_rank),
            ));
            v.push((
                b("attn_v_b"),
                vec![self.kv_lora_rank, self.v_head, self.n_head],
                w(self.kv_lora_rank),
            ));
            v.push((
                b("attn_output"),
                vec![self.n_head * self.v_head, h],
                w(self.n_head * self.v_head),
            ));
            v.push((b("ffn_norm"), vec![h], None));
            if i < self.n_dense_layers {
                v.push((b("ffn_gate"), vec![h, self.dense_ff], w(h)));
                v.push((b("ffn_up"), vec![h, self.dense_ff], w(h)));
                v.push((b("ffn_down"), vec![self.dense_ff, h], w(self.dense_ff)));
            } else {
                let e = self.n_expert;
                let ff = self.expert_ff;
                let sh = ff * self.n_shared;
                v.push((b("ffn_gate_inp"), vec![h, e], w(h)));
                v.push((b("ffn_gate_exps"), vec![h, ff, e], w(h)));
                v.push((b("ffn_up_exps"), vec![h, ff, e], w(h)));
                v.push((b("ffn_down_exps"), vec![ff, h, e], w(ff)));
                v.push((b("ffn_gate_shexp"), vec![h, sh], w(h)));
                v.push((b("ffn_up_shexp"), vec![h, sh], w(h)));
                v.push((b("ffn_down_shexp"), vec![sh, h], w(sh)));
            }
        }
        v
    }

    /// The metadata of an F32 file (`general.file_type` 0), with the keys of
    /// deepseek2-gguf.md §3 and a byte-level BPE vocabulary.
    pub fn metadata(&self) -> Metadata {
        let a = |k: &str| format!("deepseek2.{k}");
        let mut m = Metadata::new();
        m.set("general.architecture", Value::String("deepseek2".into()));
        m.set("general.type", Value::String("model".into()));
        m.set("general.name", Value::String(self.name.clone()));
        m.set(a("block_count"), Value::U32(self.n_layer));
        m.set(a("context_length"), Value::U32(4096));
        m.set(a("embedding_length"), Value::U32(self.hidden as u32));
        m.set(a("feed_forward_length"), Value::U32(self.dense_ff as u32));
        m.set(a("attention.head_count"), Value::U32(self.n_head as u32));
        m.set(a("attention.head_count_kv"), Value::U32(1));
        m.set(a("rope.freq_base"), Value::F32(10000.0));
        m.set(a("attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
        m.set(a("expert_used_count"), Value::U32(self.n_expert_used));
        m.set(a("expert_group_count"), Value::U32(1));
        m.set(a("expert_group_used_count"), Value::U32(1));
        m.set(a("expert_gating_func"), Value::U32(1));
        m.set(a("rope.scaling.type"), Value::String("yarn".into()));
        m.set(a("rope.scaling.factor"), Value::F32(40.0));
        m.set(a("rope.scaling.original_context_length"), Value::U32(4096));
        m.set(a("rope.scaling.yarn_log_multiplier"), Value::F32(0.0707));
        m.set(
            a("leading_dense_block_count"),
            Value::U32(self.n_dense_layers),
        );
        m.set(a("vocab_size"), Value::U32(self.n_vocab as u32));
        m.set(
            a("attention.q_lora_rank"),
            Value::U32(self.q_lora_rank as u32),
        );
        m.set(
            a("attention.kv_lora_rank"),
            Value::U32(self.kv_lora_rank as u32),
        );
        m.set(
            a("attention.key_length"),
            Value::U32((self.kv_lora_rank + self.qk_rope) as u32),
        );
        m.set(
            a("attention.value_length"),
            Value::U32(self.kv_lora_rank as u32),
        );
        m.set(
            a("attention.key_length_mla"),
            Value::U32((self.qk_nope + self.qk_rope) as u32),
        );
        m.set(
            a("attention.value_length_mla"),
            Value::U32(self.v_head as u32),
        );
        m.set(
            a("expert_feed_forward_length"),
            Value::U32(self.expert_ff as u32),
        );
        m.set(a("expert_count"), Value::U32(self.n_expert as u32));
        m.set(a("expert_shared_count"), Value::U32(self.n_shared as u32));
        m.set(a("expert_weights_scale"), Value::F32(1.0));
        m.set(a("rope.dimension_count"), Value::U32(self.qk_rope as u32));
        m.set("general.file_type", Value::U32(0));
        let (tokens, types, merges, bos, eos) = byte_level_vocab(self.n_vocab as usize);
        m.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        m.set("tokenizer.ggml.pre", Value::String("deepseek-llm".into()));
        m.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
        m.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
        m.set("tokenizer.ggml.merges", Value::Array(Array::String(merges)));
        m.set("tokenizer.ggml.bos_token_id", Value::U32(bos));
        m.set("tokenizer.ggml.eos_token_id", Value::U32(eos));
        m.set("tokenizer.ggml.padding_token_id", Value::U32(eos));
        m.set("tokenizer.ggml.add_bos_token", Value::Bool(true));
        m.set("tokenizer.ggml.add_eos_token", Value::Bool(false));
        m.set("general.quantization_version", Value::U32(2));
        m
    }

    /// The whole model as a plan of F32 tensors, ready for [`crate::pipeline::write_gguf`].
    pub fn plan(&self) -> Vec<PlannedTensor<'static>> {
        self.tensors()
            .into_iter()
            .enumerate()
            .map(|(i, (name, dims, scale))| PlannedTensor {
                name,
                out_type: GgmlType::F32,
                source: Box::new(RandomRows {
                    row_len: dims[0],
                    seed: self.seed ^ ((i as u64 + 1) << 32),
                    scale,
                }),
                importance: None,
                dims,
            })
            .collect()
    }
}

impl SyntheticConfig {
    /// The model as a plan quantized by `recipe`, with llama-quantize's rules (for a Lite-shaped
    /// Q4_K_M without a 31 GB checkpoint in between).
    pub fn plan_with(
        &self,
        recipe: Recipe,
    ) -> Result<Vec<PlannedTensor<'static>>, crate::recipe::RecipeError> {
        let mut plan = self.plan();
        plan.sort_by(|a, b| llama_tensor_order(&a.name, &b.name));
        let shape = ModelShape {
            n_layer: self.n_layer,
            n_expert: self.n_expert as u32,
            ..Default::default()
        };
        let names: Vec<String> = plan.iter().map(|t| t.name.clone()).collect();
        let mut planner = Planner::new(recipe, &shape, names.iter().map(String::as_str));
        for t in &mut plan {
            t.out_type = planner.choose(TensorRef {
                name: &t.name,
                dims: &t.dims,
                ty: GgmlType::F32,
            })?;
        }
        Ok(plan)
    }
}

/// GPT-2's byte-to-unicode map: printable bytes stand for themselves, the others are moved to
/// U+0100 and up, so every byte has a visible character.
pub fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    map
}

/// A byte-level BPE vocabulary: the 256 byte tokens, a few merges, DeepSeek's BOS/EOS and FIM
/// specials, then `[PADn]` up to `n_vocab`. Returns (tokens, types, merges, bos, eos).
fn byte_level_vocab(n_vocab: usize) -> (Vec<String>, Vec<i32>, Vec<String>, u32, u32) {
    const NORMAL: i32 = 1;
    const CONTROL: i32 = 3;
    const UNUSED: i32 = 5;
    let map = byte_to_unicode();
    let mut tokens: Vec<String> = map.iter().map(|c| c.to_string()).collect();
    let mut types = vec![NORMAL; 256];
    let sp = map[b' ' as usize];
    let pairs = [
        (format!("{sp}"), "t".to_string()),
        ("i".into(), "n".into()),
        ("e".into(), "r".into()),
        (format!("{sp}"), "a".to_string()),
        ("o".into(), "n".into()),
        (format!("{sp}t"), "h".to_string()),
        ("d".into(), "e".into()),
        (format!("{sp}"), "f".to_string()),
    ];
    let mut merges = Vec::new();
    for (l, r) in pairs {
        merges.push(format!("{l} {r}"));
        tokens.push(format!("{l}{r}"));
        types.push(NORMAL);
    }
    let specials = [
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁begin｜>",
        "<｜fim▁end｜>",
    ];
    let bos = tokens.len() as u32;
    for s in specials {
        tokens.push(s.to_string());
        types.push(CONTROL);
    }
    let eos = bos + 1;
    while tokens.len() < n_vocab {
        tokens.push(format!("[PAD{}]", tokens.len()));
        types.push(UNUSED);
    }
    tokens.truncate(n_vocab.max(bos as usize + specials.len()));
    types.truncate(tokens.len());
    (tokens, types, merges, bos, eos)
}

/// Rows of normal random values (or norms around 1), the same whatever the chunking.
struct RandomRows {
    row_len: u64,
    seed: u64,
    scale: Option<f32>,
}

impl RowSource for RandomRows {
    fn stored_type(&self) -> GgmlType {
        GgmlType::F32
    }

    fn read_rows(&self, first_row: u64, out: &mut [f32]) -> Result<(), String> {
        use rayon::prelude::*;
        out.par_chunks_mut(self.row_len as usize)
            .enumerate()
            .for_each(|(i, row)| {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(
                    self.seed
                        .wrapping_add((first_row + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                );
                match self.scale {
                    Some(s) => {
                        let n = Normal::new(0.0f32, s).expect("finite scale");
                        row.iter_mut().for_each(|x| *x = n.sample(&mut rng));
                    }
                    None => row
                        .iter_mut()
                        .for_each(|x| *x = 1.0 + 0.1 * (rng.gen::<f32>() - 0.5)),
                }
            });
        Ok(())
    }

    fn raw_rows(&self, _first_row: u64, _n_rows: u64) -> Option<&[u8]> {
        None
    }
}
