//! Writing outputs without losing anything: the bytes go to a temporary file beside the target
//! (`.<name>.tmp-<pid>-<n>`, the GGUF writer's naming, so its stale-file cleanup applies) and
//! are renamed over it once complete. An interrupted write leaves the old file, never half of a
//! new one; the temporary file is registered for removal on a forced exit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh temporary path beside `dest`.
pub fn temp_path_for(dest: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut name = std::ffi::OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    dir.join(name)
}

/// Writes `bytes` to `dest` through a temporary file renamed over it.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_through_temp(dest, |temp| std::fs::write(temp, bytes))
}

/// Has `write` create the file at a temporary path beside `dest`, then renames it over `dest`;
/// on any failure the temporary file is removed and `dest` is untouched.
pub fn write_through_temp<E: From<std::io::Error>>(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let temp = temp_path_for(dest);
    let guard = crate::interrupt::TempFile::register(&temp);
    let written = write(&temp).and_then(|_| Ok(std::fs::rename(&temp, dest)?));
    drop(guard);
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("s.json");
        std::fs::write(&dest, "old").unwrap();
        write_atomically(&dest, b"new").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A target in a missing folder fails and leaves nothing behind.
        assert!(write_atomically(&dir.path().join("no/such/x.json"), b"x").is_err());
    }
}
