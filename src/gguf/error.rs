//! The error type of the GGUF layer.
//!
//! Every variant names the file, because a converter juggles several of them (input shards, the
//! output, a temp file) and "unexpected end of file" alone is useless. Parse errors also carry the
//! byte offset where the problem was found and say which key or tensor was being read.

use std::io;
use std::path::PathBuf;

/// Anything that can go wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An operating-system error on `path`; `action` says what we were doing ("open", "rename"...).
    #[error("{}: cannot {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    /// The file does not start with `GGUF`.
    #[error("{}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")", path.display())]
    BadMagic { path: PathBuf, found: Vec<u8> },

    /// A version we cannot read (v1, newer than v3, or a byte-swapped file).
    #[error("{}: unsupported GGUF version {version}: {reason}", path.display())]
    BadVersion {
        path: PathBuf,
        version: u32,
        reason: &'static str,
    },

    /// The file is truncated or violates a GGUF rule at byte `offset`.
    #[error("{}: invalid GGUF at byte {offset}: {msg}", path.display())]
    Malformed {
        path: PathBuf,
        offset: u64,
        msg: String,
    },

    /// The writer was asked to produce something GGUF (or ggml) does not allow, or was fed tensor
    /// data that does not match what it declared.
    #[error("{}: cannot write GGUF: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        GgufError::Io {
            path: path.into(),
            action,
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        GgufError::Invalid {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
