//! Parsing and validating a GGUF file.
//!
//! A model file is untrusted input (downloaded, possibly truncated by a failed copy), and it is
//! large, so the reader maps it and hands out borrowed slices of tensor data instead of copying.
//! All validation happens up front in [`GgufFile::open`]: once it returns, every tensor's bytes are
//! known to lie inside the file and [`GgufFile::tensor_data`] is a plain slice.
//!
//! Robustness rules, because every count and length in the header is attacker-controlled:
//! * every read is bounds-checked against the bytes that remain; all arithmetic is checked;
//! * nothing is allocated from a count before the bytes it claims are known to exist (a count of
//!   elements that need at least N bytes each is compared with what is left of the file), and lists
//!   of variable-sized items grow incrementally rather than reserving the claimed count;
//! * the checks are those of ggml's `gguf_init_from_reader`, plus ours: UTF-8 strings, ggml types
//!   dscoder knows, and tensor data (including its trailing padding) inside the file.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use dscoder_quantize::GgmlType;
use memmap2::Mmap;

use super::value::{Array, Metadata, Value, ValueType};
use super::{
    alignment_of, n_bytes, n_elements, pad, GgufError, GGUF_MAGIC, GGUF_VERSION, MAX_ARRAY_LEN,
    MAX_DIMS, MAX_NAME_LEN, MAX_STRING_LEN,
};

/// One tensor's entry in the tensor-info table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml `ne` order: `dims[0]` is the innermost (contiguous) dimension. Dims beyond `len()`
    /// are 1.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Product of the dims.
    pub fn n_elements(&self) -> u64 {
        // Validated when read; saturate rather than panic for hand-made infos.
        n_elements(&self.dims).unwrap_or(u64::MAX)
    }

    /// Bytes of data (without padding).
    pub fn n_bytes(&self) -> u64 {
        n_bytes(&self.dims, self.ty).unwrap_or(u64::MAX)
    }

    /// Elements per row: `dims[0]`.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of all dims but the first.
    pub fn n_rows(&self) -> u64 {
        n_elements(self.dims.get(1..).unwrap_or(&[])).unwrap_or(u64::MAX)
    }
}

/// Where the bytes of an open file live.
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A validated GGUF file, mapped into memory.
pub struct GgufFile {
    pub version: u32,
    pub metadata: Metadata,
    /// In file order, which is also data order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    path: PathBuf,
    data: Backing,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("file_size", &self.file_size())
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and fully validates the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        // A FIFO would block the open forever, a device never ends: regular files only.
        if let Err(e) = crate::input::regular_file(path) {
            return Err(match e {
                crate::input::InputError::Io { source, .. } => GgufError::io(path, "open", source),
                crate::input::InputError::Bad { message, .. } => GgufError::invalid(path, message),
            });
        }
        let file = File::open(path).map_err(|e| GgufError::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| GgufError::io(path, "stat", e))?
            .len();
        let data = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this struct. Like every mmap-based model
            // loader (llama.cpp included) we rely on the file not being truncated or rewritten while
            // it is open; dscoder's writer never modifies a file in place (it renames a new one
            // over it), so this only breaks if another program does.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(path, "mmap", e))?;
            Backing::Mmap(map)
        };
        Self::from_backing(path.to_path_buf(), data)
    }

    /// Parses an in-memory file (copied); errors name the file `<memory>`.
    pub fn parse(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        Self::from_bytes(bytes.to_vec())
    }

    /// Parses an in-memory file, taking ownership of the buffer.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_backing(PathBuf::from("<memory>"), Backing::Owned(bytes))
    }

    fn from_backing(path: PathBuf, data: Backing) -> Result<GgufFile, GgufError> {
        let layout = parse_layout(data.bytes(), &path)?;
        Ok(GgufFile {
            version: layout.version,
            metadata: layout.metadata,
            tensors: layout.tensors,
            alignment: layout.alignment,
            data_offset: layout.data_offset,
            path,
            data,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.data.bytes().len() as u64
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The data of `t`, borrowed from the map.
    ///
    /// # Panics
    /// If `t` does not describe bytes inside this file, which cannot happen for an info from
    /// `self.tensors` (the reader checked it) but can for one from another file or edited by hand.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|start| Some((start, start.checked_add(t.n_bytes())?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range
            .and_then(|r| self.data.bytes().get(r))
            .unwrap_or_else(|| {
                panic!(
                    "tensor '{}' (offset {}, {} bytes) is not inside {}",
                    t.name,
                    t.offset,
                    t.n_bytes(),
                    self.path.display()
                )
            })
    }

    /// The data of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }
}

/// Everything the header says, after validation.
struct Layout {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// A parse error before the file name is attached.
struct Bad {
    offset: u64,
    msg: String,
}

type Res<T> = Result<T, Bad>;

/// Adds "while reading X" context to a low-level error.
trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T> Context<T> for Res<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|b| Bad {
            offset: b.offset,
            msg: format!("{}: {}", what(), b.msg),
        })
    }
}

/// Bounds-checked little-endian reads over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn bad<T>(&self, msg: impl Into<String>) -> Res<T> {
        Err(Bad {
            offset: self.pos as u64,
            msg: msg.into(),
        })
    }

    fn take(&mut self, n: u64) -> Res<&'a [u8]> {
        if n > self.remaining() as u64 {
            return self.bad(format!(
                "unexpected end of file: need {n} bytes, {} left",
                self.remaining()
            ));
        }
        let n = n as usize;
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Res<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Res<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Res<i64> {
        self.array().map(i64::from_le_bytes)
    }

    /// A `u64`-length-prefixed UTF-8 string.
    fn string(&mut self) -> Res<String> {
        let start = self.pos;
        let len = self.u64()?;
        if len > MAX_STRING_LEN {
            return self.bad(format!(
                "string length {len} exceeds the maximum of {MAX_STRING_LEN}"
            ));
        }
        if len > self.remaining() as u64 {
            return self.bad(format!(
                "string length {len} exceeds the {} bytes left in the file",
                self.remaining()
            ));
        }
        let raw = self.take(len)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(Bad {
                offset: start as u64,
                msg: format!("string is not valid UTF-8 ({e})"),
            }),
        }
    }

    /// A value type id.
    fn value_type(&mut self) -> Res<ValueType> {
        let id = self.u32()?;
        ValueType::from_id(id).map_or_else(|| self.bad(format!("unknown value type {id}")), Ok)
    }

    fn scalar(&mut self, ty: ValueType) -> Res<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array()?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array()?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            // ggml reads a bool as an int8 and treats any nonzero byte as true.
            ValueType::Bool => Value::Bool(self.array::<1>()?[0] != 0),
            ValueType::String => Value::String(self.string()?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(self.i64()?),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Array => return self.array_value(),
        })
    }

    /// The body of an ARRAY value: element type, count, elements.
    fn array_value(&mut self) -> Res<Value> {
        let elem = self.value_type().ctx(|| "array element type".into())?;
        let n = self.u64()?;
        if n > MAX_ARRAY_LEN {
            return self.bad(format!(
                "array of {n} elements exceeds the maximum of {MAX_ARRAY_LEN}"
            ));
        }
        // Every element needs at least this many bytes (a string at least its length prefix), so
        // a count the file cannot hold is rejected before anything is allocated.
        let min = match elem {
            ValueType::Array => return self.bad("nested arrays are not allowed"),
            ValueType::String => 8,
            t => t.fixed_size().unwrap_or(1) as u64,
        };
        if n.saturating_mul(min) > self.remaining() as u64 {
            return self.bad(format!(
                "array of {n} {} elements needs at least {} bytes, {} left",
                elem.name(),
                n.saturating_mul(min),
                self.remaining()
            ));
        }
        let n = n as usize;
        // Fixed-size elements: one bounds check for the whole block, then decode chunks.
        macro_rules! fixed {
            ($variant:ident, $ty:ty) => {{
                let raw = self.take((n * std::mem::size_of::<$ty>()) as u64)?;
                Array::$variant(
                    raw.chunks_exact(std::mem::size_of::<$ty>())
                        .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        let arr = match elem {
            ValueType::U8 => Array::U8(self.take(n as u64)?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::Bool => Array::Bool(self.take(n as u64)?.iter().map(|&b| b != 0).collect()),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::String => {
                // n * 8 <= remaining, but a Vec<String> costs 24 bytes per element: cap the
                // up-front reservation and let it grow.
                let mut v = Vec::with_capacity(n.min(1 << 16));
                for i in 0..n {
                    v.push(self.string().ctx(|| format!("element {i}"))?);
                }
                Array::String(v)
            }
            ValueType::Array => unreachable!("rejected above"),
        };
        Ok(Value::Array(arr))
    }
}

/// Parses the header of `bytes` (a whole file) and checks that the data section fits.
fn parse_layout(bytes: &[u8], path: &Path) -> Result<Layout, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };

    if bytes.len() < GGUF_MAGIC.len() {
        return Err(GgufError::Malformed {
            path: path.to_path_buf(),
            offset: 0,
            msg: format!(
                "file is {} bytes, too short for the GGUF magic",
                bytes.len()
            ),
        });
    }
    let magic = &bytes[..GGUF_MAGIC.len()];
    c.pos = GGUF_MAGIC.len();
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            found: magic.to_vec(),
        });
    }

    let version = c
        .u32()
        .ctx(|| "version".into())
        .map_err(|b| malformed(path, b))?;
    let bad_version = |reason| GgufError::BadVersion {
        path: path.to_path_buf(),
        version,
        reason,
    };
    match version {
        // ggml's test: a v3 file written on the other endianness reads as 0x03000000.
        v if v & 0xFFFF == 0 => {
            return Err(bad_version(
                "the file looks byte-swapped (big-endian); only little-endian files are supported",
            ))
        }
        1 => return Err(bad_version("GGUF v1 is no longer supported")),
        2 | GGUF_VERSION => {}
        _ => return Err(bad_version("only versions 2 and 3 are supported")),
    }

    parse_body(&mut c, version).map_err(|b| malformed(path, b))
}

fn malformed(path: &Path, b: Bad) -> GgufError {
    GgufError::Malformed {
        path: path.to_path_buf(),
        offset: b.offset,
        // Key and tensor names come from the file: no escape sequence reaches the terminal.
        msg: crate::units::printable(&b.msg).into_owned(),
    }
}

/// Smallest possible encodings, used to bound counts by the bytes left.
const MIN_KV_BYTES: u64 = 8 + 4 + 1; // empty key is invalid, but bound loosely
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8; // name len, n_dims = 0, type, offset

/// Reads a signed header count and bounds it by what the rest of the file can hold.
fn count(c: &mut Cursor, what: &str, min_bytes: u64) -> Res<u64> {
    let n = c.i64().ctx(|| what.to_string())?;
    if n < 0 {
        return c.bad(format!("{what} is negative ({n})"));
    }
    let n = n as u64;
    if n.saturating_mul(min_bytes) > c.remaining() as u64 {
        return c.bad(format!(
            "{what} {n} cannot fit in the {} bytes left in the file",
            c.remaining()
        ));
    }
    Ok(n)
}

fn parse_body(c: &mut Cursor, version: u32) -> Res<Layout> {
    let n_tensors = count(c, "tensor count", MIN_TENSOR_INFO_BYTES)?;
    let n_kv = count(c, "key-value count", MIN_KV_BYTES)?;

    let mut metadata = Metadata::new();
    let mut seen = HashSet::new();
    for i in 0..n_kv {
        let key_at = c.pos as u64;
        let key = c.string().ctx(|| format!("key of key-value pair {i}"))?;
        if key.is_empty() {
            return Err(Bad {
                offset: key_at,
                msg: format!("key of key-value pair {i} is empty"),
            });
        }
        if !seen.insert(key.clone()) {
            return Err(Bad {
                offset: key_at,
                msg: format!("duplicate key '{key}'"),
            });
        }
        let value = c
            .value_type()
            .and_then(|t| c.scalar(t))
            .ctx(|| format!("value of key '{key}'"))?;
        metadata.push_unchecked(key, value);
    }
    let alignment = alignment_of(&metadata).map_err(|msg| Bad {
        offset: c.pos as u64,
        msg,
    })?;

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity((n_tensors as usize).min(1 << 12));
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let at = c.pos as u64;
        let name = c.string().ctx(|| format!("name of tensor {i}"))?;
        if name.len() >= MAX_NAME_LEN {
            return Err(Bad {
                offset: at,
                msg: format!(
                    "name of tensor {i} ('{name}') is {} bytes, the limit is {}",
                    name.len(),
                    MAX_NAME_LEN - 1
                ),
            });
        }
        if !names.insert(name.clone()) {
            return Err(Bad {
                offset: at,
                msg: format!("duplicate tensor name '{name}'"),
            });
        }
        let t = tensor_info_rest(c, name)?;
        tensors.push(t);
    }

    // Like ggml: the data section is aligned only when there is data.
    let mut data_offset = c.pos as u64;
    if n_tensors > 0 {
        data_offset = pad(data_offset, alignment).unwrap_or(u64::MAX);
        if data_offset > c.bytes.len() as u64 {
            return c.bad(format!(
                "data section would start at {data_offset} (alignment {alignment}), past the end of the file ({} bytes)",
                c.bytes.len()
            ));
        }
    }

    let file_len = c.bytes.len() as u64;
    let mut expected = 0u64;
    for t in &tensors {
        let too_big = || Bad {
            offset: data_offset,
            msg: format!("tensor '{}' is too large", t.name),
        };
        if t.offset != expected {
            return Err(Bad {
                offset: data_offset,
                msg: format!(
                    "tensor '{}' has offset {}, expected {expected} (tensors must be contiguous, in order, each padded to {alignment})",
                    t.name, t.offset
                ),
            });
        }
        let nbytes = t.n_bytes();
        let end = pad(nbytes, alignment)
            .and_then(|p| expected.checked_add(p))
            .ok_or_else(too_big)?;
        if data_offset.saturating_add(end) > file_len {
            return Err(Bad {
                offset: data_offset.saturating_add(t.offset),
                msg: format!(
                    "data of tensor '{}' ({nbytes} bytes plus padding at data offset {}) runs past the end of the file ({file_len} bytes)",
                    t.name, t.offset
                ),
            });
        }
        expected = end;
    }

    Ok(Layout {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// The part of a tensor info after its name: dims, type, offset.
fn tensor_info_rest(c: &mut Cursor, name: String) -> Res<TensorInfo> {
    let at = c.pos as u64;
    let bad = |offset: u64, msg: String| Bad {
        offset,
        msg: format!("tensor '{name}': {msg}"),
    };
    let n_dims = c.u32().ctx(|| format!("tensor '{name}': n_dims"))?;
    if n_dims as usize > MAX_DIMS {
        return Err(bad(
            at,
            format!("{n_dims} dimensions, the maximum is {MAX_DIMS}"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims {
        let d_at = c.pos as u64;
        let d = c.i64().ctx(|| format!("tensor '{name}': dimension {j}"))?;
        if d < 0 {
            return Err(bad(d_at, format!("dimension {j} is negative ({d})")));
        }
        dims.push(d as u64);
    }
    if n_elements(&dims).is_none() {
        return Err(bad(
            at,
            format!("shape {dims:?} has more than i64::MAX elements"),
        ));
    }
    let ty_at = c.pos as u64;
    let ty_id = c.u32().ctx(|| format!("tensor '{name}': type"))?;
    let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
        bad(
            ty_at,
            format!("unknown or unsupported ggml type id {ty_id}"),
        )
    })?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % ty.block_size() as u64 != 0 {
        return Err(bad(
            at,
            format!(
                "{ne0} elements per row is not a multiple of the {} block size {}",
                ty.name(),
                ty.block_size()
            ),
        ));
    }
    if n_bytes(&dims, ty).is_none() {
        return Err(bad(
            at,
            format!("size in bytes of shape {dims:?} overflows"),
        ));
    }
    let offset = c.u64().ctx(|| format!("tensor '{name}': offset"))?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
    })
}
