//! What every command's errors share: the [`Interrupted`] cause that maps to exit code 130,
//! and the one-line rendering of an error with its causes.
//!
//! Library errors name what failed and keep the underlying error as their `#[source]`, never
//! pasted into their own message; [`chain`] joins the links, so each cause prints once.

use std::error::Error;

/// The user asked to stop (Ctrl-C, SIGTERM) and the work stopped cleanly. Library errors carry
/// it as their source; the command line exits with 130 when it is anywhere in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// `error: cause: cause of the cause`, on one line.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        next = cause.source();
    }
    line
}

/// True when [`Interrupted`] is the error or one of its causes.
pub fn is_interrupted(e: &(dyn Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(cause) = next {
        if cause.is::<Interrupted>() {
            return true;
        }
        next = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing out.gguf")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("no output was written")]
    struct Middle(#[source] Interrupted);

    #[test]
    fn chain_prints_each_cause_once_and_finds_the_interruption() {
        let e = Outer(Middle(Interrupted));
        assert_eq!(
            chain(&e),
            "writing out.gguf: no output was written: interrupted"
        );
        assert!(is_interrupted(&e));
        let io = std::io::Error::other("disk full");
        assert!(!is_interrupted(&io));
        assert_eq!(chain(&io), "disk full");
    }
}
