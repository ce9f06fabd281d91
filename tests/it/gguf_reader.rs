//! Integration tests of the GGUF layer: round trips, llama.cpp's own reader as an oracle, and a
//! reader that must survive truncated, corrupted and hand-crafted hostile files without panicking.

use std::fs;
use std::path::{Path, PathBuf};

use dscoder::gguf::{
    self, Array, GgufError, GgufFile, GgufWriter, Metadata, TensorDecl, Value, DEFAULT_ALIGNMENT,
};
use dscoder::llama_sys::{gguf_summary, GgufSummaryKv};
use dscoder_quantize::GgmlType;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Helpers

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(0x6767_7566)
}

/// Metadata with every scalar and every array type (including empty arrays and non-ASCII text).
fn every_value_metadata() -> Metadata {
    let mut m = Metadata::new();
    m.set("general.architecture", "deepseek2")
        .set("t.u8", 200u8)
        .set("t.i8", -100i8)
        .set("t.u16", 60000u16)
        .set("t.i16", -30000i16)
        .set("t.u32", 4_000_000_000u32)
        .set("t.i32", -2_000_000_000i32)
        .set("t.f32", 1.5e-6f32)
        .set("t.bool.true", true)
        .set("t.bool.false", false)
        .set("t.string", "héllo\nwörld ✓")
        .set("t.string.empty", "")
        .set("t.u64", u64::MAX - 1)
        .set("t.i64", i64::MIN + 1)
        .set("t.f64", -2.5e300f64)
        .set("a.u8", vec![0u8, 1, 255])
        .set("a.i8", vec![-128i8, 0, 127])
        .set("a.u16", vec![1u16, 65535])
        .set("a.i16", vec![-32768i16, 32767])
        .set("a.u32", vec![7u32; 5])
        .set("a.i32", vec![-1i32, 1, i32::MAX])
        .set("a.f32", vec![0.0f32, -1.25, f32::INFINITY])
        .set("a.bool", vec![true, false, true])
        .set("a.string", vec!["<s>", "", "ünï", "a b"])
        .set("a.u64", vec![u64::MAX])
        .set("a.i64", vec![i64::MIN, 0])
        .set("a.f64", vec![std::f64::consts::PI])
        .set("a.empty.u32", Vec::<u32>::new())
        .set("a.empty.string", Vec::<String>::new());
    m
}

/// Tensors of several types, shapes and sizes (none a multiple of 32 bytes, to exercise padding).
fn decls() -> Vec<TensorDecl> {
    vec![
        TensorDecl::new("token_embd.weight", vec![8, 3], GgmlType::F32), // 96 bytes
        TensorDecl::new("blk.0.attn_norm.weight", vec![13], GgmlType::F16), // 26
        TensorDecl::new("blk.0.ffn_down.weight", vec![64, 3], GgmlType::Q4_0), // 108
        TensorDecl::new("blk.0.ffn_up_exps.weight", vec![256, 2, 3], GgmlType::Q4_K), // 864
        TensorDecl::new("blk.0.exp_probs_b.bias", vec![1, 2, 3, 5], GgmlType::BF16), // 60
        TensorDecl::new("empty", vec![0, 4], GgmlType::F32),             // 0
        TensorDecl::new("output.weight", vec![32, 1], GgmlType::Q8_0),   // 34
    ]
}

fn random_data(decls: &[TensorDecl]) -> Vec<Vec<u8>> {
    let mut r = rng();
    decls
        .iter()
        .map(|d| (0..d.n_bytes()).map(|_| r.gen()).collect())
        .collect()
}

fn write_file(
    path: &Path,
    meta: &Metadata,
    decls: &[TensorDecl],
    data: &[Vec<u8>],
) -> Result<u64, GgufError> {
    let mut w = GgufWriter::create(path, meta, decls)?;
    for (d, bytes) in decls.iter().zip(data) {
        w.write_tensor(&d.name, bytes)?;
    }
    w.finish()
}

/// The standard test file: every value type, several tensors. Returns its bytes.
fn standard_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("model.gguf");
    let ds = decls();
    write_file(&path, &every_value_metadata(), &ds, &random_data(&ds)).unwrap();
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn err_string(r: Result<GgufFile, GgufError>) -> String {
    match r {
        Ok(f) => panic!("expected an error, got {f:?}"),
        Err(e) => e.to_string(),
    }
}

/// Checks a successfully parsed file for internal consistency: every tensor's data is in the file.
fn assert_consistent(f: &GgufFile) {
    assert!(f.alignment.is_power_of_two());
    for t in &f.tensors {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes());
        assert_eq!(t.offset % f.alignment, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips

fn check_round_trip(meta: &Metadata, expect_align: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.gguf");
    let ds = decls();
    let data = random_data(&ds);
    let size = write_file(&path, meta, &ds, &data).unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.file_size(), size);
    assert_eq!(fs::metadata(&path).unwrap().len(), size);
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, expect_align);
    assert_eq!(&f.metadata, meta);
    assert_eq!(f.path(), path);
    assert_eq!(f.data_offset % expect_align, 0);

    let mut expected_offset = 0;
    for ((d, bytes), t) in ds.iter().zip(&data).zip(&f.tensors) {
        assert_eq!(t.name, d.name);
        assert_eq!(t.dims, d.dims);
        assert_eq!(t.ty, d.ty);
        assert_eq!(t.offset, expected_offset);
        assert_eq!(t.offset % expect_align, 0);
        assert_eq!(f.tensor_data(t), &bytes[..]);
        assert_eq!(f.tensor_bytes(&d.name), Some(&bytes[..]));
        expected_offset += t.n_bytes().div_ceil(expect_align) * expect_align;
        // Padding after each tensor is zeros.
        let end = (f.data_offset + t.offset + t.n_bytes()) as usize;
        let padded = (f.data_offset + expected_offset) as usize;
        assert!(f.bytes()[end..padded].iter().all(|&b| b == 0));
    }
    assert_eq!(f.tensors.len(), ds.len());
    assert_eq!(f.data_offset + expected_offset, size);

    let q4k = f.tensor("blk.0.ffn_up_exps.weight").unwrap();
    assert_eq!((q4k.n_elements(), q4k.n_bytes()), (1536, 864));
    assert_eq!((q4k.row_len(), q4k.n_rows()), (256, 6));
    assert!(f.tensor("nope").is_none());

    // The in-memory parser sees the same thing.
    let g = GgufFile::parse(f.bytes()).unwrap();
    assert_eq!(g.metadata, f.metadata);
    assert_eq!(g.tensors, f.tensors);
    assert_eq!(g.data_offset, f.data_offset);
}

#[test]
fn round_trip_every_value_and_tensor_type() {
    check_round_trip(&every_value_metadata(), DEFAULT_ALIGNMENT);
}

#[test]
fn round_trip_with_non_default_alignment() {
    for align in [1u32, 8, 64, 4096] {
        let mut meta = every_value_metadata();
        meta.insert("general.alignment", align);
        check_round_trip(&meta, u64::from(align));
    }
}

#[test]
fn file_without_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.gguf");
    let size = write_file(&path, &every_value_metadata(), &[], &[]).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert!(f.tensors.is_empty());
    assert_eq!(size % 32, 0);
    assert_eq!(f.metadata, every_value_metadata());
    let s = gguf_summary(&path).unwrap();
    assert_eq!(s.n_tensors, 0);
}

#[test]
fn version_2_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut bytes) = standard_file(dir.path());
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufFile::parse(&bytes).unwrap().version, 2);
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's reader as the oracle

/// Encodes one of our values the way `gguf_summary` reports ggml's view of it.
fn expected_kv(key: &str, v: &Value) -> GgufSummaryKv {
    fn le(v: &Value) -> Vec<u8> {
        match v {
            Value::U8(x) => vec![*x],
            Value::I8(x) => x.to_le_bytes().to_vec(),
            Value::U16(x) => x.to_le_bytes().to_vec(),
            Value::I16(x) => x.to_le_bytes().to_vec(),
            Value::U32(x) => x.to_le_bytes().to_vec(),
            Value::I32(x) => x.to_le_bytes().to_vec(),
            Value::F32(x) => x.to_le_bytes().to_vec(),
            Value::Bool(x) => vec![u8::from(*x)],
            Value::U64(x) => x.to_le_bytes().to_vec(),
            Value::I64(x) => x.to_le_bytes().to_vec(),
            Value::F64(x) => x.to_le_bytes().to_vec(),
            Value::String(_) | Value::Array(_) => unreachable!(),
        }
    }
    let mut kv = GgufSummaryKv {
        key: key.to_string(),
        type_id: v.value_type().id(),
        arr_type_id: None,
        n: 1,
        data: Vec::new(),
        strings: Vec::new(),
    };
    match v {
        Value::String(s) => kv.strings = vec![s.clone()],
        Value::Array(a) => {
            kv.arr_type_id = Some(a.elem_type().id());
            kv.n = a.len();
            let elems: Vec<Value> = match a {
                Array::U8(x) => x.iter().map(|&e| e.into()).collect(),
                Array::I8(x) => x.iter().map(|&e| e.into()).collect(),
                Array::U16(x) => x.iter().map(|&e| e.into()).collect(),
                Array::I16(x) => x.iter().map(|&e| e.into()).collect(),
                Array::U32(x) => x.iter().map(|&e| e.into()).collect(),
                Array::I32(x) => x.iter().map(|&e| e.into()).collect(),
                Array::F32(x) => x.iter().map(|&e| e.into()).collect(),
                Array::Bool(x) => x.iter().map(|&e| e.into()).collect(),
                Array::U64(x) => x.iter().map(|&e| e.into()).collect(),
                Array::I64(x) => x.iter().map(|&e| e.into()).collect(),
                Array::F64(x) => x.iter().map(|&e| e.into()).collect(),
                Array::String(x) => {
                    kv.strings = x.clone();
                    vec![]
                }
            };
            kv.data = elems.iter().flat_map(le).collect();
        }
        v => kv.data = le(v),
    }
    kv
}

fn check_ggml_agrees(meta: &Metadata) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oracle.gguf");
    let ds = decls();
    write_file(&path, meta, &ds, &random_data(&ds)).unwrap();
    let ours = GgufFile::open(&path).unwrap();
    let s = gguf_summary(&path).expect("ggml rejects our file");

    assert_eq!(s.version, 3);
    assert_eq!(s.alignment as u64, ours.alignment);
    assert_eq!(s.data_offset as u64, ours.data_offset);
    assert_eq!(s.n_kv as usize, meta.len());
    let expected: Vec<GgufSummaryKv> = meta.iter().map(|(k, v)| expected_kv(k, v)).collect();
    assert_eq!(s.kvs, expected);

    assert_eq!(s.n_tensors as usize, ds.len());
    for (st, t) in s.tensors.iter().zip(&ours.tensors) {
        assert_eq!(st.name, t.name);
        assert_eq!(st.offset as u64, t.offset);
        assert_eq!(st.type_id, t.ty.id());
        assert_eq!(st.size as u64, t.n_bytes(), "{}", t.name);
        for j in 0..4 {
            assert_eq!(st.ne[j] as u64, t.dims.get(j).copied().unwrap_or(1));
        }
    }
}

#[test]
fn ggml_reads_exactly_what_we_wrote() {
    check_ggml_agrees(&every_value_metadata());
}

#[test]
fn ggml_reads_exactly_what_we_wrote_with_alignment_64() {
    let mut meta = every_value_metadata();
    meta.insert("general.alignment", 64u32);
    check_ggml_agrees(&meta);
}

// ---------------------------------------------------------------------------------------------
// Truncation and corruption

#[test]
fn every_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = standard_file(dir.path());
    assert!(bytes.len() < 8192, "keep the test file small");
    for len in 0..bytes.len() {
        let r = GgufFile::parse(&bytes[..len]);
        assert!(r.is_err(), "prefix of {len} bytes was accepted");
    }
    assert!(GgufFile::parse(&bytes).is_ok());
}

/// Parses a mutated file. Rejection is fine; acceptance must give a consistent file, and since
/// our rules are a superset of ggml's, ggml must accept it too and see the same tensor layout.
/// Returns whether the mutant was accepted.
fn check_mutant(bytes: &[u8], scratch: &Path, what: &str) -> bool {
    match GgufFile::parse(bytes) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("<memory>: "), "{what}: {msg}");
            false
        }
        Ok(f) => {
            assert_consistent(&f);
            fs::write(scratch, bytes).unwrap();
            let s = gguf_summary(scratch)
                .unwrap_or_else(|e| panic!("{what}: we accept, ggml rejects: {e}"));
            assert_eq!(s.n_tensors as usize, f.tensors.len(), "{what}");
            assert_eq!(s.n_kv as usize, f.metadata.len(), "{what}");
            assert_eq!(s.data_offset as u64, f.data_offset, "{what}");
            for (st, t) in s.tensors.iter().zip(&f.tensors) {
                assert_eq!(
                    (st.offset as u64, st.type_id),
                    (t.offset, t.ty.id()),
                    "{what}"
                );
            }
            true
        }
    }
}

#[test]
fn corrupting_any_header_byte_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = standard_file(dir.path());
    let scratch = dir.path().join("mutant.gguf");
    let header_len = GgufFile::parse(&bytes).unwrap().data_offset as usize;
    let mut r = rng();
    let (mut accepted, mut total) = (0, 0);
    for pos in 0..header_len {
        let mut values = vec![0x00, 0xFF, bytes[pos] ^ 0x80, bytes[pos].wrapping_add(1)];
        values.extend((0..2).map(|_| r.gen::<u8>()));
        for v in values {
            let mut m = bytes.clone();
            m[pos] = v;
            accepted += usize::from(check_mutant(&m, &scratch, &format!("byte {pos} := {v:#x}")));
            total += 1;
        }
    }
    // Both outcomes must have been exercised (e.g. string contents vs. counts).
    assert!(
        accepted > 100 && accepted < total / 2,
        "{accepted} of {total} accepted"
    );
}

#[test]
fn huge_values_in_any_header_field_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = standard_file(dir.path());
    let scratch = dir.path().join("mutant.gguf");
    let header_len = GgufFile::parse(&bytes).unwrap().data_offset as usize;
    let patterns: [&[u8]; 7] = [
        &u64::MAX.to_le_bytes(),
        &(i64::MAX as u64).to_le_bytes(),
        &(1u64 << 63).to_le_bytes(),
        &(1u64 << 30).to_le_bytes(),
        &((1u64 << 30) + 1).to_le_bytes(),
        &u32::MAX.to_le_bytes(),
        &(bytes.len() as u64).to_le_bytes(),
    ];
    for pos in 0..header_len {
        for p in patterns {
            let mut m = bytes.clone();
            let end = (pos + p.len()).min(m.len());
            m[pos..end].copy_from_slice(&p[..end - pos]);
            check_mutant(&m, &scratch, &format!("{p:x?} at {pos}"));
        }
    }
}

#[test]
fn changes_inside_tensor_data_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut bytes) = standard_file(dir.path());
    let f = GgufFile::parse(&bytes).unwrap();
    let t = f.tensor("blk.0.ffn_up_exps.weight").unwrap().clone();
    let at = (f.data_offset + t.offset + 5) as usize;
    bytes[at] ^= 0xFF;
    let g = GgufFile::parse(&bytes).unwrap();
    assert_eq!(g.tensor_data(&t)[5], bytes[at]);
}

// ---------------------------------------------------------------------------------------------
// Hand-built hostile files

/// Little-endian byte builder for hand-made files.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: i64, n_kv: i64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).i64(n_tensors).i64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A `u32` KV.
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Raw {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, dims: &[i64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.i64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad_to(&mut self, align: usize) -> &mut Raw {
        let n = self.0.len().div_ceil(align) * align;
        self.0.resize(n, 0);
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::parse(&self.0)
    }
}

fn assert_err_contains(r: &Raw, needles: &[&str]) {
    let msg = err_string(r.parse());
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut r = Raw(b"GGUS".to_vec());
    r.u32(3).i64(0).i64(0);
    assert!(matches!(r.parse(), Err(GgufError::BadMagic { .. })));
    assert_err_contains(&Raw(b"GG".to_vec()), &["too short"]);
    assert_err_contains(&Raw(Vec::new()), &["too short"]);
    for (v, why) in [
        (0u32, "byte-swapped"),
        (1, "v1"),
        (4, "only versions"),
        (0x0300_0000, "byte-swapped"),
        (u32::MAX, "only versions"),
    ] {
        let r = Raw::header(v, 0, 0);
        assert!(matches!(r.parse(), Err(GgufError::BadVersion { version, .. }) if version == v));
        assert_err_contains(&r, &[why]);
    }
    assert!(Raw::header(3, 0, 0).parse().is_ok());
}

#[test]
fn huge_or_negative_counts() {
    assert_err_contains(&Raw::header(3, i64::MAX, 0), &["tensor count"]);
    assert_err_contains(&Raw::header(3, -1, 0), &["tensor count", "negative"]);
    assert_err_contains(&Raw::header(3, 0, i64::MAX), &["key-value count"]);
    assert_err_contains(
        &Raw::header(3, 0, i64::MIN),
        &["key-value count", "negative"],
    );
    assert_err_contains(&Raw::header(3, 0, 1), &["key-value count 1 cannot fit"]);
    let mut r = Raw::header(3, 0, 1);
    r.zeros(13);
    assert_err_contains(&r, &["key of key-value pair 0", "empty"]);
    assert_err_contains(&Raw::header(3, 1, 0), &["tensor count"]);
}

#[test]
fn huge_string_lengths() {
    for len in [u64::MAX, 1 << 40, (1 << 30) + 1, 100] {
        let mut r = Raw::header(3, 0, 1);
        r.u64(len).bytes(b"key").zeros(8);
        assert_err_contains(&r, &["key of key-value pair 0", "string length"]);
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(8).u64(len).bytes(b"abc");
        assert_err_contains(&r, &["value of key 'k'", "string length"]);
    }
}

#[test]
fn huge_array_counts() {
    for (elem, n) in [
        (0u32, u64::MAX),
        (8, u64::MAX),
        (12, 1 << 40),
        (8, 1 << 20),
        (4, 3),
    ] {
        let mut r = Raw::header(3, 0, 1);
        r.str("arr").u32(9).u32(elem).u64(n).bytes(&[0; 8]);
        assert_err_contains(&r, &["value of key 'arr'", "array"]);
    }
}

#[test]
fn bad_value_types() {
    let mut r = Raw::header(3, 0, 1);
    r.str("nested").u32(9).u32(9).u64(1).u32(4).u64(1).u32(0);
    assert_err_contains(&r, &["'nested'", "nested arrays"]);
    for ty in [13u32, u32::MAX] {
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(ty).u32(0);
        assert_err_contains(&r, &["'k'", "unknown value type"]);
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(9).u32(ty).u64(0);
        assert_err_contains(&r, &["'k'", "unknown value type"]);
    }
}

#[test]
fn bad_keys_and_strings() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a", 1).kv_u32("a", 2);
    assert_err_contains(&r, &["duplicate key 'a'"]);
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("", 1);
    assert_err_contains(&r, &["empty"]);
    let mut r = Raw::header(3, 0, 1);
    r.str("bad.utf8").u32(8).u64(2).bytes(&[0xC3, 0x28]);
    assert_err_contains(&r, &["'bad.utf8'", "UTF-8"]);
    let mut r = Raw::header(3, 0, 1);
    r.str("bad.utf8.arr")
        .u32(9)
        .u32(8)
        .u64(2)
        .str("ok")
        .u64(1)
        .bytes(&[0xFF]);
    assert_err_contains(&r, &["'bad.utf8.arr'", "element 1", "UTF-8"]);
    let mut r = Raw::header(3, 0, 1);
    r.u64(1).bytes(&[0xFF]).u32(4).u32(0);
    assert_err_contains(&r, &["key of key-value pair 0", "UTF-8"]);
}

#[test]
fn bad_alignment_values() {
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(10).u64(32);
    assert_err_contains(&r, &["general.alignment", "u32", "u64"]);
    for a in [0u32, 48, u32::MAX] {
        let mut r = Raw::header(3, 0, 1);
        r.kv_u32("general.alignment", a);
        assert_err_contains(&r, &["general.alignment", "power of two"]);
    }
}

/// A valid file with two F32 tensors `a` [4] and `b` [8], so tests can break one thing at a time.
fn two_tensors(b_offset: u64, b_dims: &[i64], b_type: u32, data: usize) -> Raw {
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[4], 0, 0)
        .tensor("b", b_dims, b_type, b_offset)
        .pad_to(32)
        .zeros(data);
    r
}

#[test]
fn tensor_layout_rules() {
    assert!(two_tensors(32, &[8], 0, 64).parse().is_ok());
    assert_err_contains(
        &two_tensors(16, &[8], 0, 64),
        &["'b'", "offset 16, expected 32"],
    );
    assert_err_contains(
        &two_tensors(64, &[8], 0, 128),
        &["'b'", "offset 64, expected 32"],
    );
    // b's data (32 bytes at data offset 32) runs past the end.
    assert_err_contains(&two_tensors(32, &[8], 0, 63), &["'b'", "past the end"]);
    let mut r = Raw::header(3, 1, 0);
    r.tensor("a", &[4], 0, 0);
    assert_err_contains(&r, &["data section"]);
}

#[test]
fn tensor_info_rules() {
    // Shapes and types.
    assert_err_contains(
        &two_tensors(32, &[1, 1, 1, 1, 8], 0, 64),
        &["'b'", "5 dimensions"],
    );
    assert_err_contains(&two_tensors(32, &[8, -1], 0, 64), &["'b'", "negative"]);
    assert_err_contains(
        &two_tensors(32, &[i64::MAX, 2], 0, 64),
        &["'b'", "i64::MAX"],
    );
    assert_err_contains(&two_tensors(32, &[1 << 62], 0, 64), &["'b'", "overflows"]);
    // Ids ggml removed (4, 5, the old repacked 31-33 and 36-38) and ids it never had.
    for ty in [4u32, 5, 31, 33, 36, 38, 43, 99, u32::MAX] {
        assert_err_contains(
            &two_tensors(32, &[8], ty, 64),
            &["'b'", &format!("type id {ty}")],
        );
    }
    assert_err_contains(&two_tensors(32, &[33], 2, 64), &["'b'", "block size 32"]);
    // Zero-sized and zero-dimensional tensors are legal (ggml accepts them).
    let f = two_tensors(32, &[0, 5], 2, 32).parse().unwrap();
    assert_eq!(f.tensors[1].n_bytes(), 0);
    let f = two_tensors(32, &[], 0, 64).parse().unwrap();
    assert_eq!((f.tensors[1].n_elements(), f.tensors[1].n_bytes()), (1, 4));

    // Names.
    let long = "x".repeat(64);
    let mut r = Raw::header(3, 1, 0);
    r.tensor(&long, &[4], 0, 0).pad_to(32).zeros(32);
    assert_err_contains(&r, &["name of tensor 0", "64 bytes"]);
    let ok = "x".repeat(63);
    let mut r = Raw::header(3, 1, 0);
    r.tensor(&ok, &[4], 0, 0).pad_to(32).zeros(32);
    assert!(r.parse().is_ok());
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[4], 0, 0)
        .tensor("a", &[4], 0, 32)
        .pad_to(32)
        .zeros(64);
    assert_err_contains(&r, &["duplicate tensor name 'a'"]);
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    let e = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(e.to_string().contains("missing.gguf"));

    let empty = dir.path().join("empty.gguf");
    fs::write(&empty, b"").unwrap();
    assert!(err_string(GgufFile::open(&empty)).contains("empty.gguf"));

    let bad = dir.path().join("bad.gguf");
    fs::write(&bad, &two_tensors(16, &[8], 0, 64).0).unwrap();
    let msg = err_string(GgufFile::open(&bad));
    assert!(
        msg.contains("bad.gguf") && msg.contains("tensor 'b'"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Writer

#[test]
fn finish_renames_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.gguf");
    let ds = decls();
    let data = random_data(&ds);
    let mut w = GgufWriter::create(&dest, &every_value_metadata(), &ds).unwrap();
    let tmp = w.temp_path().to_path_buf();
    assert_eq!(tmp.parent(), Some(dir.path()));
    let tmp_name = tmp.file_name().unwrap().to_string_lossy().into_owned();
    assert!(tmp_name.starts_with(".out.gguf.tmp-"), "{tmp_name}");
    for (d, b) in ds.iter().zip(&data) {
        w.write_tensor(&d.name, b).unwrap();
        assert!(!dest.exists());
    }
    assert_eq!(dir_entries(dir.path()), [tmp_name]);
    let size = w.finish().unwrap();
    assert_eq!(dir_entries(dir.path()), ["out.gguf"]);
    assert_eq!(fs::metadata(&dest).unwrap().len(), size);
}

#[test]
fn drop_or_abort_without_finish_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.gguf");
    let ds = decls();
    let data = random_data(&ds);
    {
        let mut w = GgufWriter::create(&dest, &Metadata::new(), &ds).unwrap();
        w.write_tensor(&ds[0].name, &data[0]).unwrap();
        assert_eq!(dir_entries(dir.path()).len(), 1);
    }
    assert!(dir_entries(dir.path()).is_empty());
    let w = GgufWriter::create(&dest, &Metadata::new(), &ds).unwrap();
    w.abort();
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn failed_writes_leave_nothing_and_keep_an_existing_dest() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.gguf");
    fs::write(&dest, b"old").unwrap();
    let ds = decls();
    let data = random_data(&ds);
    let meta = every_value_metadata();

    type Step = fn(&mut GgufWriter, &[TensorDecl], &[Vec<u8>]) -> Result<(), GgufError>;
    let cases: [(&str, Step); 4] = [
        ("wrong name", |w, ds, data| {
            w.write_tensor(&ds[1].name, &data[1])
        }),
        ("short data", |w, ds, data| {
            w.write_tensor(&ds[0].name, &data[0][1..])
        }),
        ("long data", |w, ds, _| {
            w.write_tensor(&ds[0].name, &vec![0; 1 + ds[0].n_bytes() as usize])
        }),
        ("extra tensor", |w, ds, data| {
            for (d, b) in ds.iter().zip(data) {
                w.write_tensor(&d.name, b)?;
            }
            w.write_tensor("extra", &[])
        }),
    ];
    for (what, step) in cases {
        let mut w = GgufWriter::create(&dest, &meta, &ds).unwrap();
        let e = step(&mut w, &ds, &data).expect_err(what);
        assert!(matches!(e, GgufError::Invalid { .. }), "{what}: {e}");
        assert_eq!(dir_entries(dir.path()), ["out.gguf"], "{what}");
        // The writer is poisoned.
        assert!(w.write_tensor(&ds[0].name, &data[0]).is_err(), "{what}");
        assert!(w.finish().is_err(), "{what}");
        assert_eq!(fs::read(&dest).unwrap(), b"old", "{what}");
    }

    // finish() with a tensor missing.
    let mut w = GgufWriter::create(&dest, &meta, &ds).unwrap();
    w.write_tensor(&ds[0].name, &data[0]).unwrap();
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains(&format!("'{}'", ds[1].name)), "{e}");
    assert_eq!(dir_entries(dir.path()), ["out.gguf"]);
    assert_eq!(fs::read(&dest).unwrap(), b"old");

    // A successful write replaces the old file.
    write_file(&dest, &meta, &ds, &data).unwrap();
    assert!(GgufFile::open(&dest).is_ok());
    assert_eq!(dir_entries(dir.path()), ["out.gguf"]);
}

#[test]
fn writer_validates_declarations_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.gguf");
    let t = |name: &str, dims: Vec<u64>, ty| vec![TensorDecl::new(name, dims, ty)];
    let long = "n".repeat(64);
    let bad_decls: Vec<(Vec<TensorDecl>, &str)> = vec![
        (t(&long, vec![4], GgmlType::F32), "64 bytes"),
        (t("", vec![4], GgmlType::F32), "empty name"),
        (t("a", vec![], GgmlType::F32), "0 dims"),
        (t("a", vec![1, 1, 1, 1, 1], GgmlType::F32), "5 dims"),
        (t("a", vec![100], GgmlType::Q4_K), "block size 256"),
        (t("a", vec![u64::MAX], GgmlType::F32), "overflow"),
        (t("a", vec![1 << 40, 1 << 40], GgmlType::F32), "too large"),
        (
            [
                t("a", vec![4], GgmlType::F32),
                t("a", vec![4], GgmlType::F32),
            ]
            .concat(),
            "duplicate tensor name 'a'",
        ),
    ];
    for (decls, needle) in bad_decls {
        let e = GgufWriter::create(&dest, &Metadata::new(), &decls).unwrap_err();
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
        assert!(e.to_string().contains("out.gguf"), "{e}");
    }
    let metas: Vec<(Metadata, &str)> = vec![
        ([("", Value::U32(1))].into_iter().collect(), "empty key"),
        (
            [("general.alignment", Value::U32(48))]
                .into_iter()
                .collect(),
            "power of two",
        ),
        (
            [("general.alignment", Value::U32(0))].into_iter().collect(),
            "power of two",
        ),
        (
            [("general.alignment", Value::U64(32))]
                .into_iter()
                .collect(),
            "u32",
        ),
    ];
    for (meta, needle) in metas {
        let e = GgufWriter::create(&dest, &meta, &[]).unwrap_err();
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    }
    assert!(dir_entries(dir.path()).is_empty());
    let e = GgufWriter::create(Path::new("/"), &Metadata::new(), &[]).unwrap_err();
    assert!(e.to_string().contains("no file name"), "{e}");
    // A missing directory is an I/O error naming the temp file.
    let e = GgufWriter::create(&dir.path().join("no/such/dir.gguf"), &Metadata::new(), &[])
        .unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
}

#[test]
fn display_of_values_for_info() {
    let f = {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = standard_file(dir.path());
        GgufFile::open(&path).unwrap()
    };
    let shown: Vec<String> = f
        .metadata
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    assert!(shown.contains(&r#"a.string = [str; 4] ["<s>", "", "ünï", "a b"]"#.to_string()));
    assert!(shown.contains(&"t.u32 = 4000000000".to_string()));
    assert_eq!(gguf::pad(33, 32), Some(64));
}

#[test]
fn chunked_writes_give_the_same_file_and_overflow_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let meta = every_value_metadata();
    let decls = decls();
    let data = random_data(&decls);
    let whole = dir.path().join("whole.gguf");
    write_file(&whole, &meta, &decls, &data).unwrap();
    let chunked_path = dir.path().join("chunked.gguf");
    let mut w = GgufWriter::create(&chunked_path, &meta, &decls).unwrap();
    for (d, bytes) in decls.iter().zip(&data) {
        if bytes.is_empty() {
            // An empty tensor is complete with its first (empty) chunk.
            w.write_tensor_chunk(&d.name, bytes).unwrap();
            continue;
        }
        // Uneven pieces, including an empty one.
        let cut1 = bytes.len() / 3;
        let cut2 = bytes.len() / 2;
        for piece in [
            &bytes[..cut1],
            &bytes[cut1..cut1],
            &bytes[cut1..cut2],
            &bytes[cut2..],
        ] {
            w.write_tensor_chunk(&d.name, piece).unwrap();
        }
    }
    w.finish().unwrap();
    assert_eq!(fs::read(&whole).unwrap(), fs::read(&chunked_path).unwrap());

    let over = dir.path().join("over.gguf");
    let mut w = GgufWriter::create(&over, &meta, &decls).unwrap();
    let first = &data[0];
    w.write_tensor_chunk(&decls[0].name, &first[1..]).unwrap();
    let err = w
        .write_tensor_chunk(&decls[0].name, &[0u8; 2])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&decls[0].name) && err.contains("declared"),
        "{err}"
    );
    drop(w);
    assert!(!over.exists());
    assert_eq!(
        dir_entries(dir.path()).len(),
        2,
        "only whole.gguf and chunked.gguf remain"
    );
}

// ---------------------------------------------------------------------------------------------
// Every ggml type

/// Every type id of the linked ggml is one we read, with ggml's name, block size and block bytes;
/// the ids ggml removed or never had are not.
#[test]
fn type_table_matches_the_linked_ggml() {
    for id in 0..64u32 {
        let ours = GgmlType::from_id(id);
        match dscoder::llama_sys::ggml_type_traits(id) {
            None => assert!(ours.is_none(), "id {id}: not a ggml type, but we accept it"),
            Some((name, block, size)) => {
                let t = ours.unwrap_or_else(|| panic!("id {id} ({name}) is a ggml type we refuse"));
                assert_eq!(
                    (t.name(), t.block_size(), t.type_size()),
                    (name.as_str(), block, size),
                    "id {id}"
                );
            }
        }
    }
}

/// A file holding one tensor of every type, its data made by ggml's own quantizer wherever ggml
/// has one: our reader places and sizes every tensor exactly as ggml's reader does, and `info`
/// lists every type.
#[test]
fn a_file_with_every_type_reads_as_ggml_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("every-type.gguf");
    // 512 columns: a whole number of blocks of every type (32, 64, 128, 256).
    let (cols, rows) = (512usize, 3usize);
    let mut r = rng();
    let src: Vec<f32> = (0..cols * rows)
        .map(|_| r.gen_range(-1.0f32..1.0))
        .collect();
    let importance = vec![1.0f32; cols];
    let no_ggml_quantizer = [
        GgmlType::Q8_1,
        GgmlType::Q8_K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
    ];
    let mut decls = Vec::new();
    let mut data = Vec::new();
    for ty in GgmlType::ALL {
        let decl = TensorDecl::new(
            format!("t.{}", ty.name()),
            vec![cols as u64, rows as u64],
            ty,
        );
        let bytes = if no_ggml_quantizer.contains(&ty) {
            (0..decl.n_bytes()).map(|_| r.gen::<u8>()).collect()
        } else {
            dscoder::llama_sys::ggml_quantize_weighted(ty, &src, cols, &importance)
        };
        assert_eq!(bytes.len() as u64, decl.n_bytes(), "{ty}");
        decls.push(decl);
        data.push(bytes);
    }
    let mut meta = Metadata::new();
    meta.set("general.architecture", "deepseek2");
    write_file(&path, &meta, &decls, &data).unwrap();

    let ours = GgufFile::open(&path).unwrap();
    let theirs = gguf_summary(&path).unwrap();
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for (a, b) in ours.tensors.iter().zip(&theirs.tensors) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.ty.id(), b.type_id, "{}", a.name);
        assert_eq!(a.offset, b.offset as u64, "{}", a.name);
        assert_eq!(a.n_bytes(), b.size as u64, "{}", a.name);
    }
    for (t, want) in ours.tensors.iter().zip(&data) {
        assert_eq!(ours.tensor_data(t), &want[..], "{}", t.name);
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dscoder"))
        .arg("info")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "info failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ty in GgmlType::ALL {
        assert!(
            stdout.contains(&format!("t.{}", ty.name())) && stdout.contains(ty.name()),
            "info does not list {ty}:\n{stdout}"
        );
    }
}
