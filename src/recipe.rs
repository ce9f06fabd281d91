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
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    IQ3_XXS,
    IQ3_XS,
    IQ3_S,
    IQ3_M,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ2_M,
    IQ1_S,
    IQ1_M,
}

/// `(file type, llama-quantize's name, enum llama_ftype value, llama_ftype_get_default_type)`.
const FILE_TYPES: [(FileType, &str, u32, GgmlType); 30] = {
    use FileType as F;
    use GgmlType as G;
    [
        (F::F32, "f32", 0, G::F32),
        (F::F16, "f16", 1, G::F16),
        (F::BF16, "bf16", 32, G::BF16),
        (F::Q8_0, "q8_0", 7, G::Q8_0),
        (F::Q4_0, "q4_0", 2, G::Q4_0),
        (F::Q4_1, "q4_1", 3, G::Q4_1),
        (F::Q5_0, "q5_0", 8, G::Q5_0),
        (F::Q5_1, "q5_1", 9, G::Q5_1),
        (F::Q2_K, "q2_k", 10, G::Q2_K),
        (F::Q2_K_S, "q2_k_s", 21, G::Q2_K),
        (F::Q3_K_S, "q3_k_s", 11, G::Q3_K),
        (F::Q3_K_M, "q3_k_m", 12, G::Q3_K),
        (F::Q3_K_L, "q3_k_l", 13, G::Q3_K),
        (F::Q4_K_S, "q4_k_s", 14, G::Q4_K),
        (F::Q4_K_M, "q4_k_m", 15, G::Q4_K),
        (F::Q5_K_S, "q5_k_s", 16, G::Q5_K),
        (F::Q5_K_M, "q5_k_m", 17, G::Q5_K),
        (F::Q6_K, "q6_k", 18, G::Q6_K),
        (F::IQ4_NL, "iq4_nl", 25, G::IQ4_NL),
        (F::IQ4_XS, "iq4_xs", 30, G::IQ4_XS),
        (F::IQ3_XXS, "iq3_xxs", 23, G::IQ3_XXS),
        (F::IQ3_XS, "iq3_xs", 22, G::IQ3_S),
        (F::IQ3_S, "iq3_s", 26, G::IQ3_S),
        (F::IQ3_M, "iq3_m", 27, G::IQ3_S),
        (F::IQ2_XXS, "iq2_xxs", 19, G::IQ2_XXS),
        (F::IQ2_XS, "iq2_xs", 20, G::IQ2_XS),
        (F::IQ2_S, "iq2_s", 28, G::IQ2_XS),
        (F::IQ2_M, "iq2_m", 29, G::IQ2_S),
        (F::IQ1_S, "iq1_s", 24, G::IQ1_S),
        (F::IQ1_M, "iq1_m", 31, G::IQ1_M),
    ]
};

impl FileType {
    pub const ALL: [FileType; 30] = {
        let mut all = [FileType::F32; 30];
        let mut i = 0;
        while i < 30 {
            all[i] = FILE_TYPES[i].0;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static (FileType, &'static str, u32, GgmlType) {
        FILE_TYPES
            .iter()
            .find(|r| r.0 == self)
            .expect("every file type has a row")
    }

    /// llama-quantize's name, lower case.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// The `general.file_type` value (`enum llama_ftype`).
    pub fn llama_ftype(self) -> u32 {
        self.row().2
    }

    /// `llama_ftype_get_default_type`.
    pub fn default_type(self) -> GgmlType {
        self.row().3
    }
}

/// `tensor_requires_imatrix`: whether writing tensor `name` as `ty` in a file of `ftype` needs
/// an importance matrix (ggml's 1- to 3-bit grid quantizers cannot place points without one).
pub fn requires_imatrix(name: &str, ty: GgmlType, ftype: FileType) -> bool {
    if matches!(Category::of(name), Category::Output | Category::TokenEmbd) {
        return false;
    }
    match ty {
        GgmlType::IQ3_XXS
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ1_M
        | GgmlType::IQ1_S => true,
        GgmlType::Q2_K => ftype == FileType::Q2_K_S,
        _ => false,
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
    pub const ALL: [TensorType; 22] = [
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
        TensorType(GgmlType::Q2_K),
        TensorType(GgmlType::Q3_K),
        TensorType(GgmlType::IQ4_NL),
        TensorType(GgmlType::IQ4_XS),
        TensorType(GgmlType::IQ3_S),
        TensorType(GgmlType::IQ3_XXS),
        TensorType(GgmlType::IQ2_S),
        TensorType(GgmlType::IQ2_XS),
        TensorType(GgmlType::IQ2_XXS),
        TensorType(GgmlType::IQ1_M),
        TensorType(GgmlType::IQ1_S),
    ];

    /// The flag's spelling: ggml's name in lower case.
    pub fn name(self) -> &'static str {
        match self.0 {
            GgmlType::Q2_K => "q2_k",
            GgmlType::Q3_K => "q3_k",
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
    #[error(
        "tensor '{name}' as {ty} needs an importance matrix (ggml cannot quantize it to so few \
         bits without one): make one with `dscoder imatrix MODEL -f TEXT -o model.imatrix` and \
         pass `--imatrix model.imatrix`, or choose a type of 3 bits or more (q3_k_m, iq3_s, \
         iq4_xs)"
    )]
    NeedsImatrix { name: String, ty: GgmlType },
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
    /// An importance matrix will be used: some rules (IQ3_XXS, IQ4_*, Q4_0/Q5_0) depend on it.
    pub imatrix: bool,
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
        GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        GgmlType::Q2_0 | GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::TQ1_0 | GgmlType::TQ2_0 => {
            GgmlType::Q4_0
        }
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
    /// `hparams.n_gqa()`: query heads per KV head (the MLA layout stores one KV head).
    n_gqa: u32,
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
            n_gqa: shape.n_head.checked_div(shape.n_head_kv).unwrap_or(0),
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
        if !self.recipe.imatrix && requires_imatrix(t.name, ty, self.recipe.ftype) {
            return Err(RecipeError::NeedsImatrix {
                name: t.name.to_string(),
                ty,
            });
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

    /// `llama_tensor_get_type_impl`, for the file types above and deepseek2 (not Falcon, not a
    /// 70B Llama: those branches are left out).
    fn base_rules(&mut self, t: TensorRef<'_>, mut ty: GgmlType) -> Result<GgmlType, RecipeError> {
        use FileType as F;
        use GgmlType as G;
        let ftype = self.recipe.ftype;
        let imatrix = self.recipe.imatrix;
        let cat = Category::of(t.name);
        let eight_experts = self.n_expert == 8;
        let gqa4 = self.n_gqa >= 4;
        let n_layer = self.n_layer as i64;
        let iq2_family = matches!(
            ftype,
            F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
        );
        let iq2_s_m = matches!(ftype, F::IQ2_S | F::IQ2_M);

        if cat == Category::Output || (!self.has_output && cat == Category::TokenEmbd) {
            if !t.dims[0].is_multiple_of(ty.block_size() as u64) {
                ty = G::Q8_0;
            } else if iq2_family || ftype == F::IQ3_XXS {
                ty = G::Q5_K;
            } else if ty != G::Q8_0 {
                ty = G::Q6_K;
            }
        } else if cat == Category::TokenEmbd {
            match ftype {
                F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ1_M => ty = G::Q2_K,
                F::IQ2_S | F::IQ2_M | F::IQ3_XXS => ty = G::IQ3_S,
                _ => {}
            }
        } else if iq2_family {
            if cat.is_attn_v() {
                ty = if gqa4 || self.n_expert >= 4 {
                    G::Q4_K
                } else if iq2_s_m {
                    G::IQ3_S
                } else {
                    G::Q2_K
                };
                self.i_attention_wv += 1;
            } else if eight_experts && cat == Category::AttentionK {
                ty = G::Q4_K;
            } else if cat == Category::FfnDown {
                if self.i_ffn_down < n_layer / 8 {
                    ty = if iq2_s_m { G::IQ3_S } else { G::Q2_K };
                }
                self.i_ffn_down += 1;
            } else if cat == Category::AttentionOutput {
                if eight_experts {
                    ty = G::Q5_K;
                } else if matches!(ftype, F::IQ1_S | F::IQ1_M) {
                    ty = G::IQ2_XXS;
                } else if iq2_s_m {
                    ty = G::IQ3_S;
                }
            }
        } else if cat.is_attn_v() {
            match ftype {
                F::Q2_K => ty = if gqa4 { G::Q4_K } else { G::Q3_K },
                F::Q2_K_S if gqa4 => ty = G::Q4_K,
                F::IQ3_XXS => {
                    ty = if gqa4 {
                        G::Q4_K
                    } else if !imatrix {
                        G::IQ3_S
                    } else {
                        G::IQ3_XXS
                    }
                }
                F::IQ3_XS | F::IQ3_S if gqa4 => ty = G::Q4_K,
                F::IQ3_M => ty = G::Q4_K,
                F::Q3_K_M => {
                    ty = if self.i_attention_wv < 2 {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    }
                }
                F::Q3_K_L => ty = G::Q5_K,
                F::IQ4_NL | F::IQ4_XS if gqa4 => ty = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M
                    if use_more_bits(self.i_attention_wv, self.n_attention_wv) =>
                {
                    ty = G::Q6_K
                }
                F::Q4_K_S if self.i_attention_wv < 4 => ty = G::Q5_K,
                _ => {}
            }
            if eight_experts {
                ty = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttentionK {
            if eight_experts {
                ty = G::Q8_0;
            } else if ftype == F::IQ3_XS {
                ty = G::IQ3_XXS;
            } else if ftype == F::IQ3_XXS {
                ty = G::IQ2_S;
            }
        } else if cat == Category::AttentionQ {
            if ftype == F::IQ3_XS {
                ty = G::IQ3_XXS;
            } else if ftype == F::IQ3_XXS {
                ty = G::IQ2_S;
            }
        } else if cat == Category::FfnDown {
            let (i_layer, n_layer) = self.layer_info(t.name, self.i_ffn_down)?;
            let first_eighth = i_layer < n_layer / 8;
            match ftype {
                F::Q2_K => ty = G::Q3_K,
                // Each file type matches one arm (the guards fall through to `_` only).
                F::Q2_K_S if first_eighth => ty = G::Q4_K,
                F::IQ3_XXS if !imatrix => ty = if first_eighth { G::Q4_K } else { G::Q3_K },
                F::Q3_K_M => {
                    ty = if i_layer < n_layer / 16 {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    }
                }
                F::IQ3_M if first_eighth || (eight_experts && use_more_bits(i_layer, n_layer)) => {
                    ty = G::Q4_K
                }
                F::Q3_K_L => ty = G::Q5_K,
                F::Q4_K_M if use_more_bits(i_layer, n_layer) => ty = G::Q6_K,
                F::IQ4_NL | F::IQ4_XS if first_eighth && !imatrix => ty = G::Q5_K,
                F::Q5_K_M if use_more_bits(i_layer, n_layer) => ty = G::Q6_K,
                F::Q4_K_S if first_eighth => ty = G::Q5_K,
                F::Q4_0 if imatrix && first_eighth => ty = G::Q4_1,
                F::Q5_0 if imatrix && first_eighth => ty = G::Q5_1,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttentionOutput {
            if eight_experts {
                if matches!(
                    ftype,
                    F::Q2_K
                        | F::IQ3_XS
                        | F::IQ3_XXS
                        | F::Q3_K_S
                        | F::Q3_K_M
                        | F::IQ4_NL
                        | F::Q4_K_S
                        | F::Q4_K_M
                        | F::IQ3_S
                        | F::IQ3_M
                        | F::IQ4_XS
                ) {
                    ty = G::Q5_K;
                }
            } else {
                match ftype {
                    F::Q2_K => ty = G::Q3_K,
                    F::IQ3_XXS => ty = G::IQ3_S,
                    F::Q3_K_M | F::IQ3_M => ty = G::Q4_K,
                    F::Q3_K_L => ty = G::Q5_K,
                    _ => {}
                }
            }
        } else if cat == Category::FfnGate || cat == Category::FfnUp {
            let counter = if cat == Category::FfnGate {
                &mut self.i_ffn_gate
            } else {
                &mut self.i_ffn_up
            };
            let i = *counter;
            *counter += 1;
            let (i_layer, n_layer) = self.layer_info(t.name, i)?;
            if ftype == F::IQ3_XS && i_layer >= n_layer / 8 && i_layer < 7 * n_layer / 8 {
                ty = G::IQ3_XXS;
            }
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
            imatrix: false,
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
            imatrix: false,
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
            imatrix: false,
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
        assert_eq!("IQ3_M".parse::<FileType>().unwrap(), FileType::IQ3_M);
        assert!("q3_k_x".parse::<FileType>().is_err());
        assert_eq!(parse_tensor_type("Q6_K").unwrap(), GgmlType::Q6_K);
        assert!(parse_tensor_type("q8_k").is_err());
    }
}
