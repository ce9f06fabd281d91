//! `dscoder info`: what is inside a GGUF file, for people (a table) and machines (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dscoder_quantize::GgmlType;
use serde_json::{json, Value as Json};

use crate::gguf::{Array, GgufFile, Value};
use crate::pipeline::PlannedTensor;
use crate::units::{bits_per_weight, human_bytes, printable};

/// Arrays longer than this are shown as their length and first few elements.
const ARRAY_PREVIEW: usize = 8;

/// Per-type totals: tensor count, elements, bytes.
fn totals_by_type(file: &GgufFile) -> BTreeMap<GgmlType, (usize, u64, u64)> {
    let mut totals = BTreeMap::new();
    for t in &file.tensors {
        let e = totals.entry(t.ty).or_insert((0usize, 0u64, 0u64));
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.n_bytes();
    }
    totals
}

fn shape(dims: &[u64]) -> String {
    let parts: Vec<String> = dims.iter().map(u64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// The human-readable report.
pub fn render(file: &GgufFile) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}",
        file.path().display(),
        file.version,
        file.metadata.len(),
        file.tensors.len(),
        file.alignment
    );
    let _ = writeln!(out, "\nmetadata:");
    for (key, value) in file.metadata.iter() {
        let _ = writeln!(
            out,
            "  {:<48} {:<8} {value}",
            printable(key),
            value.type_name()
        );
    }
    let _ = writeln!(out, "\ntensors:");
    let _ = writeln!(
        out,
        "  {:<40} {:<7} {:<24} {:>12}",
        "name", "type", "shape", "bytes"
    );
    for t in &file.tensors {
        let _ = writeln!(
            out,
            "  {:<40} {:<7} {:<24} {:>12}",
            printable(&t.name),
            t.ty.name(),
            shape(&t.dims),
            t.n_bytes()
        );
    }
    let _ = writeln!(out, "\ntotals by type:");
    let (mut n, mut elements, mut bytes) = (0, 0, 0);
    for (ty, (count, e, b)) in totals_by_type(file) {
        let _ = writeln!(
            out,
            "  {:<7} {:>5} tensors {:>14} weights {:>12} {:>7.3} bpw",
            ty.name(),
            count,
            e,
            human_bytes(b),
            bits_per_weight(b, e)
        );
        n += count;
        elements += e;
        bytes += b;
    }
    let _ = writeln!(
        out,
        "  {:<7} {:>5} tensors {:>14} weights {:>12} {:>7.3} bpw",
        "all",
        n,
        elements,
        human_bytes(bytes),
        bits_per_weight(bytes, elements)
    );
    out
}

fn scalar_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Array(a) => array_json(a, usize::MAX),
    }
}

fn array_json(a: &Array, limit: usize) -> Json {
    fn take<T: serde::Serialize>(v: &[T], limit: usize) -> Json {
        json!(&v[..v.len().min(limit)])
    }
    match a {
        Array::U8(v) => take(v, limit),
        Array::I8(v) => take(v, limit),
        Array::U16(v) => take(v, limit),
        Array::I16(v) => take(v, limit),
        Array::U32(v) => take(v, limit),
        Array::I32(v) => take(v, limit),
        Array::F32(v) => take(v, limit),
        Array::Bool(v) => take(v, limit),
        Array::String(v) => take(v, limit),
        Array::U64(v) => take(v, limit),
        Array::I64(v) => take(v, limit),
        Array::F64(v) => take(v, limit),
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Array(a) if a.len() > ARRAY_PREVIEW => json!({
            "type": "array",
            "element_type": a.type_name(),
            "len": a.len(),
            "head": array_json(a, ARRAY_PREVIEW),
        }),
        Value::Array(a) => json!({
            "type": "array",
            "element_type": a.type_name(),
            "len": a.len(),
            "value": array_json(a, usize::MAX),
        }),
        _ => json!({ "type": v.type_name(), "value": scalar_json(v) }),
    }
}

/// The same report as JSON (long arrays summarised by length and head).
pub fn to_json(file: &GgufFile) -> Json {
    let metadata: serde_json::Map<String, Json> = file
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), value_json(v)))
        .collect();
    let tensors: Vec<Json> = file
        .tensors
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ty.name(),
                "shape": t.dims,
                "elements": t.n_elements(),
                "bytes": t.n_bytes(),
                "offset": file.data_offset + t.offset,
            })
        })
        .collect();
    let totals: serde_json::Map<String, Json> = totals_by_type(file)
        .into_iter()
        .map(|(ty, (count, e, b))| {
            (
                ty.name().to_string(),
                json!({ "tensors": count, "elements": e, "bytes": b, "bpw": bits_per_weight(b, e) }),
            )
        })
        .collect();
    let elements: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    let bytes: u64 = file.tensors.iter().map(|t| t.n_bytes()).sum();
    json!({
        "path": file.path().display().to_string(),
        "version": file.version,
        "alignment": file.alignment,
        "metadata": metadata,
        "tensors": tensors,
        "totals_by_type": totals,
        "total": { "tensors": file.tensors.len(), "elements": elements, "bytes": bytes, "bpw": bits_per_weight(bytes, elements) },
    })
}

/// A plan as a table: tensor, shape, type, bytes (for `--dry-run`).
pub fn plan_table(plan: &[PlannedTensor<'_>]) -> String {
    let mut out = format!(
        "{:<40} {:<24} {:<6} -> {:<6} {:>12}\n",
        "tensor", "shape", "from", "to", "bytes"
    );
    for t in plan {
        let _ = writeln!(
            out,
            "{:<40} {:<24} {:<6} -> {:<6} {:>12}",
            t.name,
            shape(&t.dims),
            t.source.stored_type().name(),
            t.out_type.name(),
            t.out_bytes()
        );
    }
    out
}
