//! Ctrl-C (and SIGTERM, SIGHUP) as a flag, so long jobs stop between chunks and clean up after
//! themselves.
//!
//! Killing the process outright on SIGINT would skip the destructors that delete a half-written
//! output file. Instead the handler only sets a flag. Only front-ends read it: they pass
//! [`requested`] to the library as the cancel check (the pipeline asks it between chunks, the
//! generator before every token), the library returns an error with
//! [`crate::error::Interrupted`] as its cause, and the writer's `Drop` removes its temporary
//! file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();
/// Temporary files being written, removed on a forced exit (see [`TempFile`]).
static TEMP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Installs the handler for Ctrl-C, SIGTERM and SIGHUP (once per process; later calls do
/// nothing). ctrlc runs it on its own thread, not in signal context, so it may take locks.
pub fn install() {
    INSTALL.call_once(|| {
        // A second signal while we are still cleaning up means "really stop now": the temp
        // files still registered are removed first, so even a quick double Ctrl-C loses nothing.
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                remove_temp_files();
                std::process::exit(130);
            }
        });
    });
}

fn remove_temp_files() {
    let files = TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
    for f in files.iter() {
        let _ = std::fs::remove_file(f);
    }
}

/// Registers a temporary file for removal on a forced exit while the guard lives; the owner still
/// removes or renames it itself in the normal course.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn register(path: &Path) -> TempFile {
        TEMP_FILES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.to_path_buf());
        TempFile(path.to_path_buf())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let mut files = TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = files.iter().position(|f| *f == self.0) {
            files.swap_remove(i);
        }
    }
}

/// True once the user pressed Ctrl-C.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Clears the flag (the REPL uses Ctrl-C to stop one reply, not the program).
pub fn reset() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}
