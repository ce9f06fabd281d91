//! Writing a GGUF file: streaming and atomic.
//!
//! Converted models are tens to hundreds of GB, so the writer takes the full list of tensor
//! *declarations* up front (that fixes every offset, which the header must contain) and then
//! streams the tensors' bytes one at a time in declaration order; it never holds more than the
//! tensor it is given plus a write buffer.
//!
//! A half-written model is worse than none: llama.cpp may load a truncated file's header and fail
//! much later, and a file name that exists looks finished. So the data goes to a temp file next to
//! the destination (same file system, so the final rename is atomic), is fsynced, and is renamed
//! onto the destination only by [`GgufWriter::finish`]. Any error, [`GgufWriter::abort`] or a drop
//! without `finish` deletes the temp file; a destination that already existed is left untouched.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dscoder_quantize::GgmlType;

use super::reader::TensorInfo;
use super::value::{Array, Metadata, Value};
use super::{
    alignment_of, n_bytes, pad, GgufError, GGUF_MAGIC, GGUF_VERSION, MAX_ARRAY_LEN, MAX_DIMS,
    MAX_NAME_LEN, MAX_STRING_LEN,
};

/// A tensor to be written: everything the header needs, no data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDecl {
    pub name: String,
    /// ggml `ne` order (`dims[0]` innermost), 1 to 4 dims.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorDecl {
    pub fn new(name: impl Into<String>, dims: impl Into<Vec<u64>>, ty: GgmlType) -> TensorDecl {
        TensorDecl {
            name: name.into(),
            dims: dims.into(),
            ty,
        }
    }

    /// Bytes of data `write_tensor` expects for this tensor (`u64::MAX` if the shape is invalid,
    /// which [`GgufWriter::create`] rejects).
    pub fn n_bytes(&self) -> u64 {
        n_bytes(&self.dims, self.ty).unwrap_or(u64::MAX)
    }
}

impl From<&TensorInfo> for TensorDecl {
    fn from(t: &TensorInfo) -> TensorDecl {
        TensorDecl::new(t.name.clone(), t.dims.clone(), t.ty)
    }
}

/// Write buffer size: large enough that tensor data goes out in big writes.
const BUF_SIZE: usize = 1 << 20;

/// Makes temp file names unique within the process (the pid makes them unique across processes).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes `.<name>.tmp-<pid>-<n>` files in `dir` left by processes that no longer exist (killed
/// with SIGKILL, or a crash): a later write of the same output cleans up after them.
fn remove_stale_temp_files(dir: &Path, file_name: &std::ffi::OsStr) {
    let prefix = format!(".{}.tmp-", file_name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() {
            continue;
        }
        // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A GGUF file being written. See the module docs for the protocol.
#[derive(Debug)]
pub struct GgufWriter {
    dest: PathBuf,
    tmp: PathBuf,
    /// `None` once the writer has failed (the temp file is then already gone) or finished.
    out: Option<BufWriter<File>>,
    decls: DeclSizes,
    next: usize,
    /// Bytes of tensor `next` written so far by [`GgufWriter::write_tensor_chunk`].
    in_tensor: u64,
    pos: u64,
    alignment: u64,
    data_offset: u64,
    renamed: bool,
    /// Removes the temp file on a forced exit (a second Ctrl-C) while writing.
    _guard: crate::interrupt::TempFile,
}

impl GgufWriter {
    /// Validates the metadata and declarations, creates `<dest dir>/.<dest name>.tmp-<pid>-<n>` and
    /// writes the header: KVs, tensor infos with their offsets (each tensor's data padded to the
    /// alignment), and padding up to the data section.
    pub fn create(
        dest: &Path,
        metadata: &Metadata,
        tensors: &[TensorDecl],
    ) -> Result<GgufWriter, GgufError> {
        let invalid = |msg: String| GgufError::invalid(dest, msg);
        let alignment = alignment_of(metadata).map_err(invalid)?;
        let (header, decls) = encode_header(metadata, tensors, alignment).map_err(invalid)?;

        let file_name = dest
            .file_name()
            .ok_or_else(|| invalid("destination has no file name".into()))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        remove_stale_temp_files(dir, file_name);
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
        let tmp = dir.join(tmp_name);

        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| GgufError::io(&tmp, "create temp file", e))?;
        let mut w = GgufWriter {
            dest: dest.to_path_buf(),
            _guard: crate::interrupt::TempFile::register(&tmp),
            tmp,
            out: Some(BufWriter::with_capacity(BUF_SIZE, file)),
            decls,
            next: 0,
            in_tensor: 0,
            pos: 0,
            alignment,
            data_offset: header.len() as u64,
            renamed: false,
        };
        w.write_raw(&header)?;
        Ok(w)
    }

    /// Appends the data of the next declared tensor and pads it. `name` must be the next name in
    /// declaration order and `data` exactly its byte size; on any error the temp file is deleted
    /// and the writer is unusable.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        let len = self.expect_next(name)?;
        if len != data.len() as u64 || self.in_tensor != 0 {
            let msg = format!(
                "tensor '{name}' is declared as {len} bytes but {} bytes were given",
                data.len() as u64 + self.in_tensor
            );
            return self.fail(msg);
        }
        self.write_raw(data)?;
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Appends part of the next declared tensor's data, so a large tensor can be streamed without
    /// being held whole. The tensor is complete (and padded) once its declared size has been
    /// given; more than that is an error, as in [`GgufWriter::write_tensor`].
    pub fn write_tensor_chunk(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        let len = self.expect_next(name)?;
        if self.in_tensor + data.len() as u64 > len {
            let msg = format!(
                "tensor '{name}' is declared as {len} bytes but {} bytes were given",
                self.in_tensor + data.len() as u64
            );
            return self.fail(msg);
        }
        self.write_raw(data)?;
        self.in_tensor += data.len() as u64;
        if self.in_tensor == len {
            self.pad()?;
            self.next += 1;
            self.in_tensor = 0;
        }
        Ok(())
    }

    /// Checks that the writer is usable and `name` is the next declared tensor; returns its size.
    fn expect_next(&mut self, name: &str) -> Result<u64, GgufError> {
        if self.out.is_none() {
            return Err(self.invalid("the writer already failed".into()));
        }
        let Some((want, len)) = self.decls.get(self.next) else {
            let n = self.decls.len();
            return self.fail(format!(
                "tensor '{name}' written after all {n} declared tensors"
            ));
        };
        if want != name {
            let msg = format!(
                "expected tensor '{want}' (number {} in declaration order), got '{name}'",
                self.next
            );
            return self.fail(msg);
        }
        Ok(*len)
    }

    /// Checks that every declared tensor was written, flushes and fsyncs the temp file and renames
    /// it onto the destination (replacing any existing file atomically). Returns the file size.
    pub fn finish(mut self) -> Result<u64, GgufError> {
        if self.out.is_none() {
            return Err(self.invalid("the writer already failed".into()));
        }
        if let Some((missing, _)) = self.decls.get(self.next) {
            let msg = format!(
                "only {} of {} declared tensors were written; next missing: '{missing}'",
                self.next,
                self.decls.len()
            );
            return self.fail(msg);
        }
        let out = self.out.take().expect("checked above");
        let file = match out.into_inner() {
            Ok(f) => f,
            Err(e) => return Err(self.cleanup(GgufError::io(&self.tmp, "write", e.into_error()))),
        };
        if let Err(e) = file.sync_all() {
            return Err(self.cleanup(GgufError::io(&self.tmp, "fsync", e)));
        }
        drop(file);
        if let Err(e) = fs::rename(&self.tmp, &self.dest) {
            return Err(self.cleanup(GgufError::io(&self.dest, "rename the temp file onto", e)));
        }
        self.renamed = true;
        // Make the rename itself durable. Best effort: not every platform can fsync a directory.
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.pos)
    }

    /// Gives up: deletes the temp file. Dropping the writer does the same.
    pub fn abort(self) {}

    /// Where the file will end up.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temp file being written.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn invalid(&self, msg: String) -> GgufError {
        GgufError::invalid(&self.dest, msg)
    }

    /// Deletes the temp file and returns `err`.
    fn cleanup(&mut self, err: GgufError) -> GgufError {
        self.out = None;
        let _ = fs::remove_file(&self.tmp);
        err
    }

    fn fail<T>(&mut self, msg: String) -> Result<T, GgufError> {
        let e = self.invalid(msg);
        Err(self.cleanup(e))
    }

    fn write_raw(&mut self, data: &[u8]) -> Result<(), GgufError> {
        let res = match self.out.as_mut() {
            Some(out) => out.write_all(data),
            None => return Err(self.invalid("the writer already failed".into())),
        };
        match res {
            Ok(()) => {
                self.pos += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                let e = GgufError::io(&self.tmp, "write", e);
                Err(self.cleanup(e))
            }
        }
    }

    /// Zero bytes up to the next multiple of the alignment.
    fn pad(&mut self) -> Result<(), GgufError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut left = pad(self.pos, self.alignment).expect("file size fits u64") - self.pos;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            self.write_raw(&ZEROS[..n as usize])?;
            left -= n;
        }
        Ok(())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.renamed {
            self.out = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Name and data size of each declared tensor, in order.
type DeclSizes = Vec<(String, u64)>;

/// Validates and encodes everything before the data section, including its padding. Returns the
/// bytes and, per tensor, its name and data size.
fn encode_header(
    metadata: &Metadata,
    tensors: &[TensorDecl],
    alignment: u64,
) -> Result<(Vec<u8>, DeclSizes), String> {
    let mut h = Vec::new();
    h.extend_from_slice(&GGUF_MAGIC);
    h.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as i64).to_le_bytes());
    h.extend_from_slice(&(metadata.len() as i64).to_le_bytes());

    let mut keys = HashSet::new();
    for (key, value) in metadata.iter() {
        if key.is_empty() {
            return Err("metadata has an empty key".into());
        }
        if !keys.insert(key) {
            return Err(format!("duplicate metadata key '{key}'"));
        }
        put_str(&mut h, key).map_err(|e| format!("key '{key}': {e}"))?;
        h.extend_from_slice(&value.value_type().id().to_le_bytes());
        put_value(&mut h, value).map_err(|e| format!("value of key '{key}': {e}"))?;
    }

    let mut names = HashSet::new();
    let mut decls = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        let name = &t.name;
        if name.is_empty() {
            return Err("a tensor has an empty name".into());
        }
        if name.len() >= MAX_NAME_LEN {
            return Err(format!(
                "tensor name '{name}' is {} bytes, the limit is {}",
                name.len(),
                MAX_NAME_LEN - 1
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!("duplicate tensor name '{name}'"));
        }
        if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
            return Err(format!(
                "tensor '{name}' has {} dims, must be 1 to {MAX_DIMS}",
                t.dims.len()
            ));
        }
        if t.dims[0] % t.ty.block_size() as u64 != 0 {
            return Err(format!(
                "tensor '{name}': {} elements per row is not a multiple of the {} block size {}",
                t.dims[0],
                t.ty.name(),
                t.ty.block_size()
            ));
        }
        if t.dims.iter().any(|&d| d > i64::MAX as u64) {
            return Err(format!("tensor '{name}': dims {:?} overflow i64", t.dims));
        }
        let nbytes = n_bytes(&t.dims, t.ty)
            .ok_or_else(|| format!("tensor '{name}': shape {:?} is too large", t.dims))?;

        put_str(&mut h, name)?;
        h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for &d in &t.dims {
            h.extend_from_slice(&(d as i64).to_le_bytes());
        }
        h.extend_from_slice(&t.ty.id().to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        offset = pad(nbytes, alignment)
            .and_then(|p| offset.checked_add(p))
            .ok_or_else(|| format!("tensor '{name}': total data size overflows"))?;
        decls.push((name.clone(), nbytes));
    }

    // ggml pads the header even when there are no tensors; so do we.
    let padded = pad(h.len() as u64, alignment).ok_or("header size overflows")?;
    h.resize(padded as usize, 0);
    Ok((h, decls))
}

fn put_str(h: &mut Vec<u8>, s: &str) -> Result<(), String> {
    if s.len() as u64 > MAX_STRING_LEN {
        return Err(format!(
            "string of {} bytes exceeds the maximum of {MAX_STRING_LEN}",
            s.len()
        ));
    }
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_value(h: &mut Vec<u8>, v: &Value) -> Result<(), String> {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::String(s) => put_str(h, s)?,
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(h, a)?,
    }
    Ok(())
}

fn put_array(h: &mut Vec<u8>, a: &Array) -> Result<(), String> {
    if a.len() as u64 > MAX_ARRAY_LEN {
        return Err(format!(
            "array of {} elements exceeds the maximum of {MAX_ARRAY_LEN}",
            a.len()
        ));
    }
    h.extend_from_slice(&a.elem_type().id().to_le_bytes());
    h.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                h.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => h.extend_from_slice(v),
        Array::I8(v) => le!(v),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::Bool(v) => h.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => {
            for (i, s) in v.iter().enumerate() {
                put_str(h, s).map_err(|e| format!("element {i}: {e}"))?;
            }
        }
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F64(v) => le!(v),
    }
    Ok(())
}
