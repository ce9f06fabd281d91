//! The prompt-processing display: a long `/file` or a piped file means seconds to minutes of
//! prefill before the first token, and a silent terminal looks frozen.
//!
//! The engine only reports ([`Session::set_prefill_progress`]); this draws it on stderr, and
//! only when the prefill has run for a while (a second: short prompts stay quiet) and stderr is a
//! terminal (indicatif's stderr target hides itself otherwise). A thread shows the bar on time
//! even while the first batch is still being evaluated, and its spinner and clock keep moving.
//! `DSCODER_PROGRESS_AFTER_MS` changes the delay (the tests set 0).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{PrefillProgress, Session};

/// Shows prefill progress for `session` on stderr, from now on.
pub fn show_prefill(session: &mut Session<'_>) {
    let delay = std::env::var("DSCODER_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis);
    let mut current: Option<Display> = None;
    session.set_prefill_progress(move |p: PrefillProgress| {
        if p.done == 0 && !p.over {
            current = Some(Display::start(p.total, delay));
        }
        if let Some(display) = &current {
            display.bar.set_position(p.done as u64);
        }
        if p.over {
            if let Some(display) = current.take() {
                display.end();
            }
        }
    });
}

/// A hidden bar that a thread reveals after the delay unless the prefill is over by then.
struct Display {
    bar: ProgressBar,
    /// Set once the prefill is over; the lock orders the reveal against the end.
    over: Arc<Mutex<bool>>,
}

impl Display {
    fn start(total: usize, delay: Duration) -> Display {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} prompt {pos}/{len} tokens [{elapsed}] {wide_bar} ETA {eta} (Ctrl-C stops)",
            )
            .expect("static template"),
        );
        let over = Arc::new(Mutex::new(false));
        let reveal = |bar: &ProgressBar| {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
        };
        if delay.is_zero() {
            reveal(&bar);
        } else {
            let (bar, over) = (bar.clone(), over.clone());
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let over = over.lock().unwrap_or_else(|e| e.into_inner());
                if !*over {
                    reveal(&bar);
                }
            });
        }
        Display { bar, over }
    }

    fn end(self) {
        let mut over = self.over.lock().unwrap_or_else(|e| e.into_inner());
        *over = true;
        self.bar.finish_and_clear();
    }
}
