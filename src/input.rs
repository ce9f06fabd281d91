//! Reading what the user hands us: only regular files, and never more than a stated limit.
//!
//! A FIFO given where a file is expected blocks `open` until someone writes to it (forever, and
//! Ctrl-C cannot interrupt a blocked `open`); a device like `/dev/zero` never ends. So every path
//! is checked to be a regular file (after following symlinks) before it is opened, and every
//! read is bounded: the error says which limit and which file.

use std::fs::Metadata;
use std::io::Read;
use std::path::Path;

/// Prompts, attached files, texts to score: far beyond any context, far below any memory.
pub const TEXT_LIMIT: u64 = 256 << 20;
/// `config.json`, `tokenizer.json`, saved chat sessions.
pub const JSON_LIMIT: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {message}")]
    Bad { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The file's metadata when `path` is a regular file (symlinks followed); otherwise an error
/// that says what it is instead.
pub fn regular_file(path: &Path) -> Result<Metadata, InputError> {
    let meta = std::fs::metadata(path).map_err(|source| InputError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if meta.is_file() {
        return Ok(meta);
    }
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    let what = if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a pipe (FIFO)"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(InputError::Bad {
        path: path.display().to_string(),
        message: format!("is {what}; a regular file is expected here"),
    })
}

/// The bytes of a regular file of at most `limit` bytes.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    let meta = regular_file(path)?;
    let too_big = || InputError::Bad {
        path: path.display().to_string(),
        message: format!("larger than the {} limit for this input", human(limit)),
    };
    if meta.len() > limit {
        return Err(too_big());
    }
    let io = |source| InputError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the check and the read (a log being written): bound the read too.
    std::fs::File::open(path)
        .map_err(io)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// A regular file of at most `limit` bytes as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, InputError> {
    String::from_utf8(read_file(path, limit)?).map_err(|e| InputError::Bad {
        path: path.display().to_string(),
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// Standard input as UTF-8 text, at most `limit` bytes.
pub fn read_stdin(limit: u64) -> Result<String, InputError> {
    let io = |source| InputError::Io {
        path: "stdin".into(),
        source,
    };
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(InputError::Bad {
            path: "stdin".into(),
            message: format!("more than the {} limit for this input", human(limit)),
        });
    }
    String::from_utf8(bytes).map_err(|_| InputError::Bad {
        path: "stdin".into(),
        message: "not UTF-8 text".into(),
    })
}

/// Checks an output path before any work: it must not be one of `inputs` (the same file by
/// device and inode, whatever the spelling), nor an existing directory, device, FIFO, socket or
/// symlink. A missing file or an existing regular file (replaced at the end) is fine. A folder
/// among `inputs` stands for every file directly inside it.
pub fn check_output(dest: &Path, inputs: &[&Path]) -> Result<(), InputError> {
    use std::os::unix::fs::MetadataExt;
    let bad = |message: String| InputError::Bad {
        path: dest.display().to_string(),
        message,
    };
    let meta = match std::fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(InputError::Io {
                path: dest.display().to_string(),
                source,
            })
        }
    };
    if meta.file_type().is_symlink() {
        return Err(bad(
            "is a symlink; name the file it points to, or another output".into(),
        ));
    }
    if !meta.is_file() {
        regular_file(dest)?;
    }
    let same = |m: &Metadata| m.dev() == meta.dev() && m.ino() == meta.ino();
    for input in inputs {
        let Ok(im) = std::fs::metadata(input) else {
            continue;
        };
        let clash = if im.is_dir() {
            std::fs::read_dir(input)
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| same(&m)))
                })
                .unwrap_or(false)
        } else {
            same(&im)
        };
        if clash {
            return Err(bad(format!(
                "is one of the inputs ({}); writing it would destroy what is being read",
                input.display()
            )));
        }
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    crate::units::human_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "héllo").unwrap();
        assert_eq!(read_text(&f, 100).unwrap(), "héllo");
        let e = read_text(&f, 3).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = read_text(dir.path(), 100).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let e = read_file(Path::new("/dev/zero"), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a device"), "{e}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        // Refused without opening it (opening would block: no writer).
        let e = read_file(&fifo, 100).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(read_text(&f, 100)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
        assert!(read_file(&dir.path().join("missing"), 10).is_err());
    }

    #[test]
    fn outputs_that_are_inputs_or_not_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.safetensors");
        std::fs::write(&input, "x").unwrap();
        let other = dir.path().join("out.gguf");
        assert!(check_output(&other, &[dir.path()]).is_ok());
        std::fs::write(&other, "old").unwrap();
        assert!(
            check_output(&other, &[&input]).is_ok(),
            "an old output is replaced"
        );
        // The same file through the folder, another spelling, or a hard link.
        let e = check_output(&input, &[dir.path()]).unwrap_err().to_string();
        assert!(e.contains("one of the inputs"), "{e}");
        let spelled = dir.path().join(".").join("model.safetensors");
        assert!(check_output(&spelled, &[&input]).is_err());
        let link = dir.path().join("hard");
        std::fs::hard_link(&input, &link).unwrap();
        assert!(check_output(&link, &[&input]).is_err());
        // Not a file.
        let e = check_output(dir.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        assert!(check_output(Path::new("/dev/null"), &[]).is_err());
        let sym = dir.path().join("sym");
        std::os::unix::fs::symlink(&other, &sym).unwrap();
        assert!(check_output(&sym, &[])
            .unwrap_err()
            .to_string()
            .contains("symlink"));
    }
}
