//! The bundled nano model: a small DeepSeek-V2 code model trained for dscoder
//! (`nano/train_nano.py`), carried inside the binary so that `dscoder chat` works on a fresh
//! machine with no download and from any directory.
//!
//! The binary holds the Hugging Face checkpoint (bf16, ~15 MB) rather than a GGUF: it is the
//! file transformers' reference outputs were computed from, and converting it is what dscoder is
//! for. On first use it is converted to a BF16 GGUF in the cache folder
//! (`$XDG_CACHE_HOME/dscoder`, else `~/.cache/dscoder`), named by a hash of its bytes, and
//! reused from then on.

use std::path::{Path, PathBuf};

use crate::convert::{ConvertError, Source};
use crate::gguf::Value;
use crate::pipeline::{write_gguf, PipelineError};
use crate::recipe::{FileType, Recipe};

/// What `dscoder chat` says it is running.
pub const NAME: &str = "dscoder-nano";

const FILES: [(&str, &[u8]); 5] = [
    ("config.json", include_bytes!("../nano/model/config.json")),
    (
        "generation_config.json",
        include_bytes!("../nano/model/generation_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../nano/model/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../nano/model/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../nano/model/tokenizer_config.json"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum BundledError {
    #[error("no cache folder for the bundled model (set XDG_CACHE_HOME)")]
    NoCacheDir,
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("converting the bundled model")]
    Convert(#[from] ConvertError),
    #[error("converting the bundled model")]
    Write(#[from] PipelineError),
}

/// FNV-1a over every bundled file: a new model gets a new cache entry.
fn fingerprint() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in FILES {
        for &b in name.as_bytes().iter().chain(bytes) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The platform's cache folder (`dirs`: `$XDG_CACHE_HOME`, else `~/.cache` on Linux),
/// `dscoder` in it.
fn cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("dscoder"))
}

/// The bundled model's GGUF, converting it on first use.
pub fn gguf() -> Result<PathBuf, BundledError> {
    let dir = cache_dir().ok_or(BundledError::NoCacheDir)?;
    let out = dir.join(format!("{NAME}-{:016x}.bf16.gguf", fingerprint()));
    if out.is_file() {
        match crate::checksum::verify(&out) {
            Ok(()) => return Ok(out),
            Err(why) => eprintln!(
                "note: the cached bundled model {}: {why}; converting it again",
                out.display()
            ),
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundledError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // The checkpoint goes to a private folder next to the output, removed whatever happens.
    let hf = dir.join(format!(".{NAME}-hf-{}", std::process::id()));
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(&hf);
    std::fs::create_dir_all(&hf).map_err(io(&hf))?;
    for (name, bytes) in FILES {
        let p = hf.join(name);
        std::fs::write(&p, bytes).map_err(io(&p))?;
    }
    let source = Source::open(&hf, None)?;
    let recipe = Recipe {
        ftype: FileType::BF16,
        pure: false,
        imatrix: false,
        overrides: Default::default(),
    };
    let plan = source.plan(&recipe)?;
    let n_params = plan.iter().map(|t| t.n_elements()).sum();
    let mut metadata = source.metadata(&recipe, n_params);
    metadata.set("general.name", Value::String(NAME.into()));
    crate::checksum::forget(&out);
    write_gguf(&out, &metadata, &plan)?;
    crate::checksum::record(&out).map_err(io(&out))?;
    Ok(out)
}
