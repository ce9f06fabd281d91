//! `dscoder quantize`: GGUF in, GGUF out, through the same plan → quantize → write path as
//! `convert`.
//!
//! The output mirrors what `llama-quantize` writes for the same input: the same metadata with
//! `general.quantization_version` and `general.file_type` re-set at the end, the tensors in
//! llama.cpp's (layer, name) order, and for each tensor the type [`crate::recipe`] chooses.

use dscoder_quantize::GgmlType;

use crate::gguf::{GgufFile, Metadata, Value};
use crate::model::{keys, ModelShape, ShapeError};
use crate::pipeline::{PlannedTensor, RowSource};
use crate::recipe::{llama_tensor_order, Planner, Recipe, RecipeError, TensorRef};

/// `GGML_QNT_VERSION`.
pub const QUANTIZATION_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RequantizeError {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("{path}: tensor '{tensor}' is already quantized ({ty}); requantizing loses quality, pass --allow-requantize to do it anyway")]
    Requantize {
        path: String,
        tensor: String,
        ty: GgmlType,
    },
    #[error("{path}")]
    Recipe { path: String, source: RecipeError },
    #[error("{path}: tensor '{tensor}' has shape {dims:?}, with no elements to quantize")]
    Empty {
        path: String,
        tensor: String,
        dims: Vec<u64>,
    },
}

/// Rows of a tensor inside a GGUF file's mapping.
pub struct GgufRows<'a> {
    ty: GgmlType,
    row_len: u64,
    data: &'a [u8],
}

impl<'a> GgufRows<'a> {
    pub fn new(ty: GgmlType, row_len: u64, data: &'a [u8]) -> Self {
        GgufRows { ty, row_len, data }
    }

    fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.row_len as usize).unwrap_or(0)
    }
}

impl RowSource for GgufRows<'_> {
    fn stored_type(&self) -> GgmlType {
        self.ty
    }

    fn read_rows(&self, first_row: u64, out: &mut [f32]) -> Result<(), String> {
        let n_rows = out.len() as u64 / self.row_len;
        let raw = self
            .raw_rows(first_row, n_rows)
            .ok_or_else(|| format!("rows {first_row}..{} are out of range", first_row + n_rows))?;
        match dscoder_quantize::dequantize(self.ty, raw, out) {
            // ggml decodes the low-bit types dscoder has no decoder of its own for.
            Err(dscoder_quantize::QuantizeError::Unsupported(ty))
                if crate::llama_sys::ggml_dequantize(ty, raw, out) =>
            {
                Ok(())
            }
            r => r.map_err(|e| e.to_string()),
        }
    }

    fn raw_rows(&self, first_row: u64, n_rows: u64) -> Option<&[u8]> {
        let rb = self.row_bytes();
        let start = usize::try_from(first_row).ok()?.checked_mul(rb)?;
        let len = usize::try_from(n_rows).ok()?.checked_mul(rb)?;
        self.data.get(start..start.checked_add(len)?)
    }
}

/// The output metadata: the input's, with the quantization keys re-set at the end as
/// llama-quantize does.
pub fn output_metadata(input: &Metadata, recipe: &Recipe) -> Metadata {
    let mut m = input.clone();
    m.remove(keys::QUANTIZATION_VERSION);
    m.set(keys::QUANTIZATION_VERSION, Value::U32(QUANTIZATION_VERSION));
    m.remove(keys::FILE_TYPE);
    m.set(keys::FILE_TYPE, Value::U32(recipe.ftype.llama_ftype()));
    m
}

/// Plans every tensor of `file` under `recipe`.
pub fn plan<'a>(
    file: &'a GgufFile,
    recipe: &Recipe,
    allow_requantize: bool,
) -> Result<Vec<PlannedTensor<'a>>, RequantizeError> {
    let path = file.path().display().to_string();
    let shape = ModelShape::from_metadata(&path, &file.metadata)?;
    let mut tensors: Vec<_> = file.tensors.iter().collect();
    tensors.sort_by(|a, b| llama_tensor_order(&a.name, &b.name));
    let mut planner = Planner::new(*recipe, &shape, tensors.iter().map(|t| t.name.as_str()));
    let mut plan = Vec::with_capacity(tensors.len());
    for t in tensors {
        // A legal GGUF may hold a zero-dimensional or empty tensor; no model has one, and rows
        // of nothing cannot be planned.
        if t.dims.is_empty() || t.dims.contains(&0) {
            return Err(RequantizeError::Empty {
                path,
                tensor: t.name.clone(),
                dims: t.dims.clone(),
            });
        }
        let out_type = planner
            .choose(TensorRef {
                name: &t.name,
                dims: &t.dims,
                ty: t.ty,
            })
            .map_err(|source| RequantizeError::Recipe {
                path: path.clone(),
                source,
            })?;
        if t.ty.is_quantized() && out_type != t.ty && !allow_requantize {
            return Err(RequantizeError::Requantize {
                path,
                tensor: t.name.clone(),
                ty: t.ty,
            });
        }
        plan.push(PlannedTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            out_type,
            source: Box::new(GgufRows::new(t.ty, t.dims[0], file.tensor_data(t))),
            importance: None,
        });
    }
    Ok(plan)
}
