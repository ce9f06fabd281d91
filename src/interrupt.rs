//! Ctrl-C (and SIGTERM, SIGHUP, SIGQUIT) as a flag, so long jobs stop between chunks and clean up
//! after themselves.
//!
//! Ctrl-C (SIGINT) stops the work at hand; a second one during cleanup stops the process, after
//! removing the temp files still registered, except in the chat REPL ([`keep_alive`]), where
//! Ctrl-C never ends a conversation. The termination signals (SIGTERM, SIGHUP, SIGQUIT) also stop
//! the work gracefully; a second one, or the first in the REPL, ends the process, again after
//! removing temp files. Signal handlers only set atomics; one watcher thread does the exiting.
//!
//! Killing the process outright on SIGINT would skip the destructors that delete a half-written
//! output file. Instead the handler only sets a flag. Only front-ends read it: they pass
//! [`requested`] to the library as the cancel check (the pipeline asks it between chunks, the
//! generator before every token), the library returns an error with
//! [`crate::error::Interrupted`] as its cause, and the writer's `Drop` removes its temporary
//! file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();
/// Termination signals received (SIGTERM, SIGHUP, SIGQUIT).
static TERMINATIONS: AtomicUsize = AtomicUsize::new(0);
/// The REPL: Ctrl-C never exits, a termination signal exits at once.
static KEEP_ALIVE: AtomicBool = AtomicBool::new(false);
/// Temporary files being written, removed on a forced exit (see [`TempFile`]).
static TEMP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Installs the handler for Ctrl-C, SIGTERM and SIGHUP (once per process; later calls do
/// nothing). ctrlc runs it on its own thread, not in signal context, so it may take locks.
pub fn install() {
    INSTALL.call_once(|| {
        // A second signal while we are still cleaning up means "really stop now": the temp
        // files still registered are removed first, so even a quick double Ctrl-C loses nothing.
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) && !KEEP_ALIVE.load(Ordering::SeqCst) {
                remove_temp_files();
                std::process::exit(130);
            }
        });
        // Installed after ctrlc's, so these replace its SIGTERM/SIGHUP handling.
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            // SAFETY: the handler only touches atomics, which is async-signal-safe.
            unsafe {
                libc::signal(sig, on_termination as *const () as libc::sighandler_t);
            }
        }
        std::thread::spawn(|| loop {
            let n = TERMINATIONS.load(Ordering::SeqCst);
            if n >= 2 || (n >= 1 && KEEP_ALIVE.load(Ordering::SeqCst)) {
                remove_temp_files();
                std::process::exit(143);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
    });
}

extern "C" fn on_termination(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    TERMINATIONS.fetch_add(1, Ordering::SeqCst);
}

/// True once a termination signal (SIGTERM, SIGHUP, SIGQUIT) ended the chat REPL. (Other
/// commands stop gracefully on the first one: an interrupted job exits 130, a server that shut
/// down cleanly 0.)
pub fn repl_terminated() -> bool {
    KEEP_ALIVE.load(Ordering::SeqCst) && TERMINATIONS.load(Ordering::SeqCst) > 0
}

/// For the chat REPL: Ctrl-C stops a step (a reply, a prefill) but never the program, however
/// often it is pressed; a termination signal ends it at once.
pub fn keep_alive() {
    KEEP_ALIVE.store(true, Ordering::SeqCst);
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
