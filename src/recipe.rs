//! Which type each tensor gets: llama-quantize's rules for deepseek2, then ours.
//!
//! This is pure policy. It looks only at tensor names, shapes and the user's choices, never at
//! data, so it is tested with tables. The base rules mirror `llama_tensor_get_type` in the vendored
//! `src/llama-quant.cpp` (no imatrix), so `dscoder quantize --type q4_k_m` picks the same type for
//! every tensor as `llama-quantize ... Q4_K_M`. The expert-aware overrides (`--experts`, `--attn`,
//! ...) apply after those rules, and the row-size fallback (`tensor_type_fallback`) runs last so
//! every choice is a type the tensor's row length can hold.

use std::fmt;
use std::str::FromStr;

use dscoder_quantize::GgmlType;

use crate::model::{layer_of, ModelShape, TensorClass};

/// A whole-file quantization choice: llama.cpp's `enum llama_ftype`, for the types we write.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl FileType {
    pub const ALL: [FileType; 13] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
    ];

    /// llama-quantize's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "f32",
            FileType::F16 => "f16",
            FileType::BF16 => "bf16",
            FileType::Q8_0 => "q8_0",
            FileType::Q4_0 => "q4_0",
            FileType::Q4_1 => "q4_1",
            FileType::Q5_0 => "q5_0",
            FileType::Q5_1 => "q5_1",
            FileType::Q4_K_S => "q4_k_s",
            FileType::Q4_K_M => "q4_k_m",
            FileType::Q5_K_S => "q5_k_s",
            FileType::Q5_K_M => "q5_k_m",
            FileType::Q6_K => "q6_k",
        }
    }

    /// The `general.file_type` value (`enum llama_ftype`).
    pub fn llama_ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::BF16 => 32,
        }
    }

    /// `llama_ftype_get_default_type`.
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
        }
    }
}

impl clap::ValueEnum for FileType {
    fn value_variants<'a>() -> &'a [Self] {
        &FileType::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// A type a tensor may be stored as in a file we write (every writable type but Q8_K, which
/// only exists as a dot-product partner): the values of the per-class override flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorType(pub GgmlType);

impl TensorType {
    pub const ALL: [TensorType; 11] = [
        TensorType(GgmlType::F32),
        TensorType(GgmlType::F16),
        TensorType(GgmlType::BF16),
        TensorType(GgmlType::Q8_0),
        TensorType(GgmlType::Q4_0),
        TensorType(GgmlType::Q4_1),
        TensorType(GgmlType::Q5_0),
        TensorType(GgmlType::Q5_1),
        TensorType(GgmlType::Q4_K),
        TensorType(GgmlType::Q5_K),
        TensorType(GgmlType::Q6_K),
    ];

    /// The flag's spelling: ggml's name in lower case.
    pub fn name(self) -> &'static str {
        match self.0 {
            GgmlType::Q4_K => "q4_k",
            GgmlType::Q5_K => "q5_k",
            GgmlType::Q6_K => "q6_k",
            GgmlType::Q8_K => "q8_k",
            t => t.name(),
        }
    }
}

impl clap::ValueEnum for TensorType {
    fn value_variants<'a>() -> &'a [Self] {
        &TensorType::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// `a, b, c` from a table's names.
fn name_list<T>(all: &[T], name: impl Fn(&T) -> String) -> String {
    all.iter().map(name).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error("unknown file type '{0}' (expected one of {list})", list = name_list(&FileType::ALL, |t| t.name().to_string()))]
    UnknownFileType(String),
    #[error("'{0}' is not a tensor type dscoder writes (expected one of {list})", list = name_list(&TensorType::ALL, |t| t.name().to_string()))]
    UnknownTensorType(String),
    #[error("tensor '{0}': cannot tell its layer from the name (expected 'blk.N.')")]
    NoLayer(String),
    #[error("tensor '{name}': layer {layer} is out of range; the model has {n_layer} layers")]
    BadLayer {
        name: String,
        layer: u32,
        n_layer: u32,
    },
    #[error("tensor '{name}': no type can hold rows of {ncols} elements as {ty}")]
    NoFallback {
        name: String,
        ty: GgmlType,
        ncols: u64,
    },
}

impl FromStr for FileType {
    type Err = RecipeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| RecipeError::UnknownFileType(s.to_string()))
    }
}

/// Parses a per-tensor type for the overrides: a type a tensor in a file may be stored as.
pub fn parse_tensor_type(s: &str) -> Result<GgmlType, RecipeError> {
    TensorType::ALL
        .into_iter()
        .find(|t| t.0.name().eq_ignore_ascii_case(s))
        .map(|t| t.0)
        .ok_or_else(|| RecipeError::UnknownTensorType(s.to_string()))
}

/// Expert-aware choices that win over the base rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Routed experts `ffn_{gate,up,down}_exps`.
    pub experts: Option<GgmlType>,
    /// Shared experts `ffn_*_shexp` and the dense FFN layers.
    pub shared: Option<GgmlType>,
    /// Attention projections.
    pub attn: Option<GgmlType>,
    /// `token_embd.weight`.
    pub embed: Option<GgmlType>,
    /// `output.weight`.
    pub output: Option<GgmlType>,
}

impl Overrides {
    fn for_class(&self, class: TensorClass) -> Option<GgmlType> {
        match class {
            TensorClass::RoutedExperts => self.experts,
            TensorClass::SharedFfn => self.shared,
            TensorClass::Attention => self.attn,
            TensorClass::Embedding => self.embed,
            TensorClass::Output => self.output,
            TensorClass::Router | TensorClass::Norm | TensorClass::Other => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

/// The user's whole quantization choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipe {
    pub ftype: FileType,
    /// llama-quantize's `--pure`: every quantizable tensor gets the default type.
    pub pure: bool,
    pub overrides: Overrides,
}

/// A tensor as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    /// ggml order: `dims[0]` is the row length.
    pub dims: &'a [u64],
    /// The type it is stored as now.
    pub ty: GgmlType,
}

/// llama-quant.cpp's `tensor_get_category`: broad categories by substring, in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttentionQkv,
    AttentionKvB,
    AttentionV,
    AttentionK,
    AttentionQ,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl Category {
    fn of(name: &str) -> Category {
        if name == "output.weight" {
            Category::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Category::TokenEmbd
        } else if name.contains("attn_qkv.weight") {
            Category::AttentionQkv
        } else if name.contains("attn_kv_b.weight") {
            Category::AttentionKvB
        } else if name.contains("attn_v.weight") {
            Category::AttentionV
        } else if name.contains("attn_k.weight") {
            Category::AttentionK
        } else if name.contains("attn_q.weight") {
            Category::AttentionQ
        } else if name.contains("attn_output.weight") {
            Category::AttentionOutput
        } else if name.contains("ffn_up") {
            Category::FfnUp
        } else if name.contains("ffn_gate") {
            Category::FfnGate
        } else if name.contains("ffn_down") {
            Category::FfnDown
        } else {
            Category::Other
        }
    }

    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB
        )
    }
}

/// `tensor_allows_quantization` for the tensors a deepseek2 file can hold: 2-D and up weights,
/// except norms and the router.
pub fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    let n_dims = dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// `use_more_bits`: the layers llama.cpp's *_M mixes give extra bits.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// `tensor_type_fallback`: a type whose block fits the row length.
fn fallback(name: &str, ncols: u64, ty: GgmlType) -> Result<GgmlType, RecipeError> {
    if ncols.is_multiple_of(ty.block_size() as u64) {
        return Ok(ty);
    }
    let next = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        t if t.block_size() <= 32 => t,
        _ => {
            return Err(RecipeError::NoFallback {
                name: name.to_string(),
                ty,
                ncols,
            })
        }
    };
    if !ncols.is_multiple_of(next.block_size() as u64) {
        return Ok(GgmlType::F16);
    }
    Ok(next)
}

/// Chooses output types for a whole file. Tensors must be given in the order they will be
/// written, because llama.cpp's rules count some categories as they go.
pub struct Planner {
    recipe: Recipe,
    /// `{arch}.block_count` and `{arch}.expert_count`: all the rules read of the model.
    n_layer: u32,
    n_expert: u32,
    has_output: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
}

impl Planner {
    /// `names` is every tensor name in the file (for the counts llama.cpp takes up front).
    pub fn new<'a>(
        recipe: Recipe,
        shape: &ModelShape,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Planner {
        let mut has_output = false;
        let mut n_attention_wv = 0;
        for name in names {
            let cat = Category::of(name);
            if cat.is_attn_v() {
                n_attention_wv += 1;
            }
            has_output |= cat == Category::Output;
        }
        Planner {
            recipe,
            n_layer: shape.n_layer,
            n_expert: shape.n_expert,
            has_output,
            n_attention_wv,
            i_attention_wv: 0,
            i_ffn_down: 0,
            i_ffn_gate: 0,
            i_ffn_up: 0,
        }
    }

    /// The type `t` is written as. Call once per tensor, in file order.
    pub fn choose(&mut self, t: TensorRef<'_>) -> Result<GgmlType, RecipeError> {
        if !allows_quantization(t.name, t.dims) {
            return Ok(t.ty);
        }
        let default = self.recipe.ftype.default_type();
        let mut ty = default;
        if default.is_quantized() {
            if !self.recipe.pure {
                ty = self.base_rules(t, ty)?;
            }
            ty = fallback(t.name, t.dims[0], ty)?;
        }
        if let Some(user) = self.recipe.overrides.for_class(TensorClass::of(t.name)) {
            ty = fallback(t.name, t.dims[0], user)?;
        }
        Ok(ty)
    }

    /// The layer a per-layer rule applies to (`layer_info`): from the name for MoE models,
    /// otherwise the running count.
    fn layer_info(&self, name: &str, counter: i64) -> Result<(i64, i64), RecipeError> {
        let n_layer = self.n_layer as i64;
        if self.n_expert.max(1) > 1 {
            let layer = layer_of(name).ok_or_else(|| RecipeError::NoLayer(name.to_string()))?;
            if layer as i64 >= n_layer {
                return Err(RecipeError::BadLayer {
                    name: name.to_string(),
                    layer,
                    n_layer: self.n_layer,
                });
            }
            Ok((layer as i64, n_layer))
        } else {
            Ok((counter, n_layer))
        }
    }

    /// `llama_tensor_get_type_impl`, for the file types above and deepseek2.
    fn base_rules(&mut self, t: TensorRef<'_>, mut ty: GgmlType) -> Result<GgmlType, RecipeError> {
        use FileType as F;
        let ftype = self.recipe.ftype;
        let cat = Category::of(t.name);
        let eight_experts = self.n_expert == 8;

        if cat == Category::Output || (!self.has_output && cat == Category::TokenEmbd) {
            if !t.dims[0].is_multiple_of(ty.block_size() as u64) {
                ty = GgmlType::Q8_0;
            } else if ty != GgmlType::Q8_0 {
                ty = GgmlType::Q6_K;
            }
        } else if cat == Category::TokenEmbd {
            // Unchanged for every file type we write.
        } else if cat.is_attn_v() {
            if matches!(ftype, F::Q4_K_M | F::Q5_K_M)
                && use_more_bits(self.i_attention_wv, self.n_attention_wv)
            {
                ty = GgmlType::Q6_K;
            } else if ftype == F::Q4_K_S && self.i_attention_wv < 4 {
                ty = GgmlType::Q5_K;
            }
            if eight_experts {
                ty = GgmlType::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttentionK {
            if eight_experts {
                ty = GgmlType::Q8_0;
            }
        } else if cat == Category::FfnDown {
            let (i_layer, n_layer) = self.layer_info(t.name, self.i_ffn_down)?;
            match ftype {
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i_layer, n_layer) => ty = GgmlType::Q6_K,
                F::Q4_K_S if i_layer < n_layer / 8 => ty = GgmlType::Q5_K,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttentionOutput {
            if eight_experts && matches!(ftype, F::Q4_K_S | F::Q4_K_M) {
                ty = GgmlType::Q5_K;
            }
        } else if cat == Category::FfnGate {
            self.layer_info(t.name, self.i_ffn_gate)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer_info(t.name, self.i_ffn_up)?;
            self.i_ffn_up += 1;
        }
        Ok(ty)
    }
}

/// llama-quantize's output order: non-layer tensors first, then by layer, each group by name.
pub fn llama_tensor_order(a: &str, b: &str) -> std::cmp::Ordering {
    let layer = |n: &str| layer_of(n).map_or(-1, |l| l as i64);
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensors of DeepSeek-Coder-V2-Lite (27 layers, MLA layout) with their `ne`.
    fn lite_tensors() -> Vec<(String, Vec<u64>, GgmlType)> {
        let f = GgmlType::F32;
        let mut v = vec![
            ("token_embd.weight".to_string(), vec![2048, 102400], f),
            ("output.weight".to_string(), vec![2048, 102400], f),
            ("output_norm.weight".to_string(), vec![2048], f),
        ];
        for i in 0..27 {
            let b = |n: &str| format!("blk.{i}.{n}.weight");
            v.push((b("attn_norm"), vec![2048], f));
            v.push((b("attn_q"), vec![2048, 3072], f));
            v.push((b("attn_kv_a_mqa"), vec![2048, 576], f));
            v.push((b("attn_kv_a_norm"), vec![512], f));
            v.push((b("attn_k_b"), vec![128, 512, 16], f));
            v.push((b("attn_v_b"), vec![512, 128, 16], f));
            v.push((b("attn_output"), vec![2048, 2048], f));
            v.push((b("ffn_norm"), vec![2048], f));
            if i == 0 {
                v.push((b("ffn_gate"), vec![2048, 10944], f));
                v.push((b("ffn_up"), vec![2048, 10944], f));
                v.push((b("ffn_down"), vec![10944, 2048], f));
            } else {
                v.push((b("ffn_gate_inp"), vec![2048, 64], f));
                v.push((b("ffn_gate_exps"), vec![2048, 1408, 64], f));
                v.push((b("ffn_up_exps"), vec![2048, 1408, 64], f));
                v.push((b("ffn_down_exps"), vec![1408, 2048, 64], f));
                v.push((b("ffn_gate_shexp"), vec![2048, 2816], f));
                v.push((b("ffn_up_shexp"), vec![2048, 2816], f));
                v.push((b("ffn_down_shexp"), vec![2816, 2048], f));
            }
        }
        v.sort_by(|a, b| llama_tensor_order(&a.0, &b.0));
        v
    }

    fn plan(recipe: Recipe) -> Vec<(String, GgmlType)> {
        let tensors = lite_tensors();
        let shape = ModelShape {
            n_layer: 27,
            n_expert: 64,
            ..Default::default()
        };
        let mut p = Planner::new(recipe, &shape, tensors.iter().map(|t| t.0.as_str()));
        tensors
            .iter()
            .map(|(n, d, t)| {
                let r = TensorRef {
                    name: n,
                    dims: d,
                    ty: *t,
                };
                (n.clone(), p.choose(r).unwrap())
            })
            .collect()
    }

    fn recipe(ftype: FileType) -> Recipe {
        Recipe {
            ftype,
            pure: false,
            overrides: Overrides::default(),
        }
    }

    fn type_of(plan: &[(String, GgmlType)], name: &str) -> GgmlType {
        plan.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn counts(plan: &[(String, GgmlType)]) -> Vec<(GgmlType, usize)> {
        let mut c = std::collections::BTreeMap::new();
        for (_, t) in plan {
            *c.entry(*t).or_insert(0) += 1;
        }
        c.into_iter().collect()
    }

    /// The worked Q4_K_M example of deepseek2-gguf.md §10.6: F32 108, Q8_0 13, Q6_K 13,
    /// Q5_0 41, Q4_K 229.
    #[test]
    fn lite_q4_k_m_matches_the_documented_counts() {
        let p = plan(recipe(FileType::Q4_K_M));
        use GgmlType::*;
        assert_eq!(
            counts(&p),
            vec![(F32, 108), (Q5_0, 41), (Q8_0, 13), (Q4_K, 229), (Q6_K, 13)]
        );
        assert_eq!(type_of(&p, "output.weight"), Q6_K);
        assert_eq!(type_of(&p, "token_embd.weight"), Q4_K);
        assert_eq!(type_of(&p, "blk.0.ffn_down.weight"), Q8_0);
        assert_eq!(type_of(&p, "blk.5.ffn_down_exps.weight"), Q8_0);
        assert_eq!(type_of(&p, "blk.6.ffn_down_exps.weight"), Q5_0);
        assert_eq!(type_of(&p, "blk.5.ffn_down_shexp.weight"), Q6_K);
        assert_eq!(type_of(&p, "blk.6.ffn_down_shexp.weight"), Q4_K);
        assert_eq!(type_of(&p, "blk.6.attn_k_b.weight"), Q5_0);
        assert_eq!(type_of(&p, "blk.6.ffn_gate_inp.weight"), F32);
    }

    /// The other columns of the §10.6 table.
    #[test]
    fn lite_other_file_types_match_the_documented_table() {
        use GgmlType::*;
        let rows: [(FileType, [GgmlType; 9]); 5] = [
            // output, attn_q, attn_k_b, dense down, exps down (layer 1, 6), shexp down (1, 6), embd
            (
                FileType::Q4_K_S,
                [Q6_K, Q4_K, Q5_0, Q5_1, Q5_1, Q5_0, Q5_K, Q4_K, Q4_K],
            ),
            (
                FileType::Q5_K_M,
                [Q6_K, Q5_K, Q5_1, Q8_0, Q8_0, Q5_1, Q6_K, Q5_K, Q5_K],
            ),
            (
                FileType::Q6_K,
                [Q6_K, Q6_K, Q8_0, Q8_0, Q8_0, Q8_0, Q6_K, Q6_K, Q6_K],
            ),
            (
                FileType::Q8_0,
                [Q8_0, Q8_0, Q8_0, Q8_0, Q8_0, Q8_0, Q8_0, Q8_0, Q8_0],
            ),
            (
                FileType::Q4_0,
                [Q6_K, Q4_0, Q4_0, Q4_0, Q4_0, Q4_0, Q4_0, Q4_0, Q4_0],
            ),
        ];
        for (ftype, want) in rows {
            let p = plan(recipe(ftype));
            let got = [
                "output.weight",
                "blk.3.attn_q.weight",
                "blk.3.attn_k_b.weight",
                "blk.0.ffn_down.weight",
                "blk.1.ffn_down_exps.weight",
                "blk.6.ffn_down_exps.weight",
                "blk.1.ffn_down_shexp.weight",
                "blk.6.ffn_down_shexp.weight",
                "token_embd.weight",
            ]
            .map(|n| type_of(&p, n));
            assert_eq!(got, want, "{ftype}");
        }
    }

    #[test]
    fn pure_and_float_types_skip_the_mixture_rules() {
        use GgmlType::*;
        let p = plan(Recipe {
            pure: true,
            ..recipe(FileType::Q4_K_M)
        });
        assert_eq!(type_of(&p, "output.weight"), Q4_K);
        assert_eq!(type_of(&p, "blk.5.ffn_down_exps.weight"), Q5_0); // row-size fallback still applies
        assert_eq!(type_of(&p, "blk.5.ffn_down_shexp.weight"), Q4_K);
        let p = plan(recipe(FileType::BF16));
        assert_eq!(type_of(&p, "output.weight"), BF16);
        assert_eq!(type_of(&p, "blk.5.ffn_down_exps.weight"), BF16);
        assert_eq!(type_of(&p, "blk.5.attn_norm.weight"), F32);
    }

    #[test]
    fn expert_aware_overrides_apply_after_the_rules_and_before_the_fallback() {
        use GgmlType::*;
        let p = plan(Recipe {
            ftype: FileType::Q4_K_M,
            pure: false,
            overrides: Overrides {
                experts: Some(Q4_K),
                attn: Some(Q8_0),
                shared: Some(Q6_K),
                embed: Some(Q8_0),
                output: Some(BF16),
            },
        });
        assert_eq!(type_of(&p, "blk.5.ffn_gate_exps.weight"), Q4_K);
        assert_eq!(type_of(&p, "blk.5.ffn_down_exps.weight"), Q5_0); // 1408 is not a multiple of 256
        assert_eq!(type_of(&p, "blk.5.attn_k_b.weight"), Q8_0);
        assert_eq!(type_of(&p, "blk.5.attn_q.weight"), Q8_0);
        assert_eq!(type_of(&p, "blk.6.ffn_down_shexp.weight"), Q6_K);
        assert_eq!(type_of(&p, "blk.0.ffn_down.weight"), Q8_0); // 10944: Q6_K falls back to Q8_0
        assert_eq!(type_of(&p, "token_embd.weight"), Q8_0);
        assert_eq!(type_of(&p, "output.weight"), BF16);
        assert_eq!(type_of(&p, "blk.5.ffn_gate_inp.weight"), F32);
        assert_eq!(type_of(&p, "blk.5.ffn_norm.weight"), F32);
    }

    #[test]
    fn fallback_table() {
        use GgmlType::*;
        assert_eq!(fallback("t", 1408, Q4_K).unwrap(), Q5_0);
        assert_eq!(fallback("t", 1408, Q5_K).unwrap(), Q5_1);
        assert_eq!(fallback("t", 128, Q6_K).unwrap(), Q8_0);
        assert_eq!(fallback("t", 100, Q6_K).unwrap(), F16);
        assert_eq!(fallback("t", 100, Q4_0).unwrap(), F16);
        assert_eq!(fallback("t", 512, Q4_K).unwrap(), Q4_K);
    }

    #[test]
    fn names_parse_any_case() {
        assert_eq!("Q4_K_M".parse::<FileType>().unwrap(), FileType::Q4_K_M);
        assert!("q3_k_m".parse::<FileType>().is_err());
        assert_eq!(parse_tensor_type("Q6_K").unwrap(), GgmlType::Q6_K);
        assert!(parse_tensor_type("q8_k").is_err());
    }
}
