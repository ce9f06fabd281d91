//! A CRC-32 beside a file we wrote and will read back (a saved KV cache, the cached bundled
//! model), so a file damaged on disk is noticed and replaced instead of loaded as garbage.
//!
//! The sidecar `FILE.crc32` holds `crc32 length` in decimal. It is written after the file and
//! checked before the file is used.

use std::io::Read;
use std::path::{Path, PathBuf};

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".crc32");
    PathBuf::from(s)
}

/// CRC-32 and length of a file's contents.
fn digest(path: &Path) -> std::io::Result<(u32, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher.finalize(), len))
}

/// Records the checksum of `path` in its sidecar.
pub fn record(path: &Path) -> std::io::Result<()> {
    let (crc, len) = digest(path)?;
    std::fs::write(sidecar(path), format!("{crc} {len}\n"))
}

/// Checks `path` against its sidecar; `Err` says why it cannot be trusted.
pub fn verify(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(sidecar(path)).map_err(|_| {
        "it has no checksum (written by an older dscoder, or cut short)".to_string()
    })?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(crc)), Some(Ok(len))) = (it.next(), it.next()) else {
        return Err("its checksum file is damaged".into());
    };
    let (got_crc, got_len) = digest(path).map_err(|e| e.to_string())?;
    if got_len != len || u64::from(got_crc) != crc {
        return Err(format!(
            "it does not match its checksum ({got_len} bytes, expected {len}): the file is damaged"
        ));
    }
    Ok(())
}

/// Removes a file's sidecar (with the file, or when the file is replaced).
pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(sidecar(path));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_or_unrecorded_file_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state");
        std::fs::write(&f, b"kv cache bytes").unwrap();
        assert!(verify(&f).unwrap_err().contains("no checksum"));
        record(&f).unwrap();
        verify(&f).unwrap();
        std::fs::write(&f, b"kv cache bytez").unwrap();
        assert!(verify(&f).unwrap_err().contains("damaged"));
        forget(&f);
        assert!(verify(&f).is_err());
    }
}
