//! Helpers shared by the integration tests: the binary, paths, fixtures converted once per run.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// The `dscoder` binary under test, with no config file and an empty models folder (see
/// [`isolate`]).
pub fn dscoder() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dscoder"));
    isolate(&mut cmd);
    cmd
}

/// Points `cmd` at a config file and a models folder of its own (neither exists), so the user's
/// config and models never change what a test sees. A test that wants them sets the same
/// variables after this.
pub fn isolate(cmd: &mut Command) -> &mut Command {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    cmd.env("DSCODER_MODELS", dir.path().join("models"))
        .env("DSCODER_CONFIG", dir.path().join("config.toml"))
}

/// Runs `cmd` with `input` on its stdin and collects its output.
pub fn output_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropping stdin after the write closes it, so the program sees the end of input.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A path under the repository root.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A committed fixture folder (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    repo("tests/fixtures").join(name)
}

/// A JSON file, parsed.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `dscoder convert SRC -o OUT ARGS...`, which must succeed.
pub fn convert_with(src: &Path, out: &Path, args: &[&str]) {
    let o = dscoder()
        .arg("convert")
        .arg(src)
        .arg("-o")
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "convert {} {args:?}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `dscoder convert SRC -o OUT --type TY`, which must succeed.
pub fn convert(src: &Path, out: &Path, ty: &str) {
    convert_with(src, out, &["--type", ty]);
}

/// `src` (a checkpoint folder) converted to `ty`, once per test run and shared by every test
/// that asks for the same pair. Tests must not write next to it.
pub fn converted(src: &Path, ty: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static DONE: OnceLock<Mutex<HashMap<(PathBuf, String), PathBuf>>> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    // One lock for all conversions: they are quick, and two of the same would collide.
    let mut done = DONE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (src.to_path_buf(), ty.to_string());
    if let Some(p) = done.get(&key) {
        return p.clone();
    }
    let name = src.file_name().unwrap().to_string_lossy();
    let out = dir.path().join(format!("{name}-{ty}-{}.gguf", done.len()));
    convert(src, &out, ty);
    done.insert(key, out.clone());
    out
}

/// Token ids from a reference JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect()
}
