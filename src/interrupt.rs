//! Ctrl-C (and SIGTERM, SIGHUP) as a flag, so long jobs stop between chunks and clean up after
//! themselves.
//!
//! Killing the process outright on SIGINT would skip the destructors that delete a half-written
//! output file. Instead the handler only sets a flag. Only front-ends read it: they pass
//! [`requested`] to the library as the cancel check (the pipeline asks it between chunks, the
//! generator before every token), the library returns an error with
//! [`crate::error::Interrupted`] as its cause, and the writer's `Drop` removes its temporary
//! file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the Ctrl-C handler (once per process; later calls do nothing).
pub fn install() {
    INSTALL.call_once(|| {
        // A second Ctrl-C while we are still cleaning up means "really stop now".
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    });
}

/// True once the user pressed Ctrl-C.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Clears the flag (the REPL uses Ctrl-C to stop one reply, not the program).
pub fn reset() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}
