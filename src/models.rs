//! The models folder: GGUF files known by name, as ollama users expect (`dscoder chat lite`
//! from any folder, `dscoder list`, `dscoder rm`).
//!
//! A model's name is its file name without `.gguf`. The folder is `$DSCODER_MODELS`, else the
//! platform's data folder (`dirs`: `$XDG_DATA_HOME/dscoder/models` or `~/.local/share/...` on
//! Linux, Application Support on macOS, AppData on Windows). `convert` writes there unless
//! `-o` is given, so the newest file in it is "the last converted", the default model when
//! neither the command line nor the config file names one.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::gguf::GgufFile;

/// Why a name did not resolve, or the folder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("no data folder for the models (set DSCODER_MODELS or XDG_DATA_HOME)")]
    NoFolder,
    #[error("no file or model named '{name}'{}", list_known(.known))]
    NotFound { name: String, known: Vec<String> },
    #[error("'{0}' is not a model name (letters, digits, '-', '_' and '.'; not a path)")]
    BadName(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn list_known(names: &[String]) -> String {
    match names.len() {
        0 => "; the models folder is empty (dscoder convert puts models there)".to_string(),
        _ => format!("; the models folder has: {}", names.join(", ")),
    }
}

/// The models folder (it may not exist yet).
pub fn dir() -> Result<PathBuf, ModelsError> {
    if let Some(d) = std::env::var_os("DSCODER_MODELS").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    Ok(dirs::data_dir()
        .ok_or(ModelsError::NoFolder)?
        .join("dscoder")
        .join("models"))
}

/// A model in the folder, as `dscoder list` shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub modified: SystemTime,
    /// From the file's metadata; `None` when it cannot be read (the file is listed anyway, so
    /// it can be removed).
    pub details: Option<Details>,
}

#[derive(Debug, Clone)]
pub struct Details {
    /// llama-quantize's name for `general.file_type`.
    pub file_type: String,
    pub parameters: u64,
    /// The trained context (`deepseek2.context_length`).
    pub context: Option<u64>,
}

fn details(path: &Path) -> Option<Details> {
    let file = GgufFile::open(path).ok()?;
    let ftype = file
        .metadata
        .get(crate::model::keys::FILE_TYPE)
        .and_then(|v| v.as_integer())
        .and_then(|v| {
            crate::recipe::FileType::ALL
                .into_iter()
                .find(|f| f.llama_ftype() as i128 == v)
        })
        .map_or("?".to_string(), |f| f.name().to_string());
    let arch = file
        .metadata
        .get(crate::model::keys::ARCHITECTURE)
        .and_then(|v| v.as_str())
        .unwrap_or("deepseek2")
        .to_string();
    Some(Details {
        file_type: ftype,
        parameters: file.tensors.iter().map(|t| t.n_elements()).sum(),
        context: file
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.as_integer())
            .and_then(|v| u64::try_from(v).ok()),
    })
}

/// The `.gguf` files in the folder, newest first. An absent folder has none.
pub fn list() -> Result<Vec<Entry>, ModelsError> {
    let dir = dir()?;
    let mut found = Vec::new();
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(source) => {
            return Err(ModelsError::Io {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    for entry in read.flatten() {
        let path = entry.path();
        let (Some(name), Some("gguf")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        // Temporary files of a conversion in progress are not models yet.
        if name.starts_with('.') {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        found.push(Entry {
            name: name.to_string(),
            size: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            details: None,
            path,
        });
    }
    found.sort_by(|a, b| b.modified.cmp(&a.modified).then(a.name.cmp(&b.name)));
    Ok(found)
}

/// [`list`] with each file's metadata read.
pub fn list_with_details() -> Result<Vec<Entry>, ModelsError> {
    let mut all = list()?;
    for e in &mut all {
        e.details = details(&e.path);
    }
    Ok(all)
}

/// The newest model in the folder: the last one converted.
pub fn newest() -> Option<PathBuf> {
    list().ok()?.into_iter().next().map(|e| e.path)
}

fn check_name(name: &str) -> Result<&str, ModelsError> {
    let name = name.strip_suffix(".gguf").unwrap_or(name);
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(ModelsError::BadName(name.to_string()))
    }
}

/// A model argument: an existing path as it is, else a name in the models folder (with or
/// without `.gguf`).
pub fn resolve(arg: &str) -> Result<PathBuf, ModelsError> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let not_found = || ModelsError::NotFound {
        name: arg.to_string(),
        known: list()
            .map(|l| l.into_iter().map(|e| e.name).collect())
            .unwrap_or_default(),
    };
    let Ok(name) = check_name(arg) else {
        return Err(not_found());
    };
    let candidate = dir()?.join(format!("{name}.gguf"));
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(not_found())
    }
}

/// Whether `arg` names a model in the folder (not a file path).
pub fn is_name(arg: &str) -> bool {
    !Path::new(arg).exists() && resolve(arg).is_ok()
}

/// The file of model `name` in the folder (a name, never a path).
pub fn find(name: &str) -> Result<PathBuf, ModelsError> {
    let name = check_name(name)?;
    let path = dir()?.join(format!("{name}.gguf"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelsError::NotFound {
            name: name.to_string(),
            known: list()
                .map(|l| l.into_iter().map(|e| e.name).collect())
                .unwrap_or_default(),
        })
    }
}

/// Deletes model `name` from the folder; returns its path and size.
pub fn remove(name: &str) -> Result<(PathBuf, u64), ModelsError> {
    let path = find(name)?;
    let io = |source| ModelsError::Io {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(&path).map_err(io)?.len();
    std::fs::remove_file(&path).map_err(io)?;
    // Its checksum file, if one was written.
    crate::checksum::forget(&path);
    Ok((path, size))
}

/// The name `convert` gives a checkpoint folder's model of file type `ftype`:
/// `DeepSeek-Coder-V2-Lite-Instruct` and q4_k_m → `DeepSeek-Coder-V2-Lite-Instruct-q4_k_m`.
pub fn name_for(checkpoint: &Path, ftype: &str) -> String {
    let base = std::fs::canonicalize(checkpoint)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            checkpoint
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "model".to_string());
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let base = base.trim_start_matches('.');
    format!("{}-{ftype}", if base.is_empty() { "model" } else { base })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_checkpoint_folders() {
        assert_eq!(
            name_for(
                Path::new("/nonexistent/DeepSeek-Coder-V2-Lite-Instruct"),
                "q4_k_m"
            ),
            "DeepSeek-Coder-V2-Lite-Instruct-q4_k_m"
        );
        assert_eq!(
            name_for(Path::new("/x/my model (v2)"), "q8_0"),
            "my-model--v2--q8_0"
        );
        assert!(check_name("../etc/passwd").is_err());
        assert!(check_name(".hidden").is_err());
        assert_eq!(check_name("lite-q4_k_m.gguf").unwrap(), "lite-q4_k_m");
    }
}
