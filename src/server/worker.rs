//! The worker: one thread that owns the model and its one session, and runs jobs from a
//! bounded queue one at a time (mistral.rs's shape: handlers reach the engine only through a
//! channel). Keeping one session across requests is the prompt cache: each job's prompt reuses
//! the longest common token prefix with what the KV cache holds, which is what an editor that
//! re-sends nearly the same file on every keystroke needs.
//!
//! A job carries its own cancel flag and event sender. The worker drops a job whose client has
//! left before it starts, and stops a running one within a token when the flag is set, the
//! receiver is gone, its time limit passes or the server shuts down.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::chat::{Message, ReplyStart};
use crate::engine::{Engine, EngineSettings, GenerateOptions, GenerationStats, Generator, Session};
use crate::prompt::{self, BlockEnd, Dropped, FimInput};

/// What to do.
#[derive(Debug)]
pub enum Work {
    /// A chat turn through the model's template.
    Chat(Vec<Message>),
    /// Raw text, tokenized with BOS; special-token text in it is honoured.
    Text(String),
    /// Fill in the middle.
    Fim(FimInput),
    Tokenize {
        text: String,
        special: bool,
    },
    Detokenize(Vec<i32>),
}

/// A generation request's knobs besides the sampling ones.
#[derive(Debug, Default, Clone)]
pub struct Limits {
    /// Stop at the first line indented less than this (llama.vim's `n_indent`).
    pub n_indent: Option<usize>,
    /// Stop generating after this instant (llama.cpp's `t_max_predict_ms`).
    pub deadline: Option<Instant>,
}

pub struct Job {
    pub work: Work,
    pub options: GenerateOptions,
    pub limits: Limits,
    pub cancel: Arc<AtomicBool>,
    pub events: UnboundedSender<Event>,
    /// Called with the final counts when a generation ends, however it ends (the request
    /// log uses it: a cancelled stream's client is no longer listening).
    pub on_done: Option<OnDone>,
}

/// See [`Job::on_done`].
pub type OnDone = Box<dyn FnOnce(&GenerationStats) + Send>;

/// What a job reports, in order: `Started`, any number of `Text`, then `Done`; or `Failed`
/// at any point; or one `Tokens`/`Detokenized` for the tokenizer jobs.
#[derive(Debug)]
pub enum Event {
    Started {
        prompt_tokens: usize,
        cached_tokens: usize,
        /// The request's token cap, lowered to what the context has room for.
        max_tokens_clamped: Option<usize>,
        dropped: Dropped,
    },
    Text(String),
    Done(GenerationStats),
    Failed(JobError),
    Tokens(Vec<(i32, String)>),
    Detokenized(String),
}

/// A job that cannot run: the request's fault (`BadRequest`) or ours.
#[derive(Debug, Clone, PartialEq)]
pub enum JobError {
    BadRequest(String),
    Internal(String),
}

/// What the HTTP side knows of the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub n_ctx: u32,
    /// The beginning-of-sequence token, when the model adds one.
    pub bos: Option<i32>,
}

/// Loads the model on the calling thread, reports it through `ready`, then serves jobs until
/// every sender is gone.
pub fn run(
    path: PathBuf,
    settings: EngineSettings,
    jobs: std::sync::mpsc::Receiver<Job>,
    ready: std::sync::mpsc::Sender<Result<ModelInfo, String>>,
    shutdown: Arc<AtomicBool>,
) {
    let engine = match Engine::load(&path, settings) {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(crate::error::chain(&e)));
            return;
        }
    };
    let mut session = match engine.session() {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(crate::error::chain(&e)));
            return;
        }
    };
    if let Err(e) = session.warm_up() {
        let _ = ready.send(Err(crate::error::chain(&e)));
        return;
    }
    let info = ModelInfo {
        name: engine.name().to_string(),
        file_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        path,
        n_ctx: engine.ctx_size(),
        bos: engine.bos(),
    };
    if let Some(report) = engine.offload_report() {
        eprintln!("{report}");
    }
    let _ = ready.send(Ok(info));
    for job in jobs {
        // The client left while the job was queued: nothing to do.
        if job.cancel.load(Ordering::Relaxed) || job.events.is_closed() {
            continue;
        }
        let events = job.events.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_job(&engine, &mut session, job, &shutdown)
        }));
        if let Err(panic) = outcome {
            // Never let one request take the server down; the cache may be inconsistent now.
            session.clear();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let _ = events.send(Event::Failed(JobError::Internal(format!(
                "the worker failed on this request: {what}"
            ))));
        }
    }
}

fn run_job(engine: &Engine, session: &mut Session<'_>, job: Job, shutdown: &AtomicBool) {
    let events = &job.events;
    let fail = |e: JobError| {
        let _ = events.send(Event::Failed(e));
    };
    let n_ctx = engine.ctx_size() as usize;
    let mut dropped = Dropped::default();
    let is_chat = matches!(job.work, Work::Chat(_));
    let tokens = match job.work {
        Work::Tokenize { text, special } => {
            let ids = if special {
                engine.tokenize(&text, false)
            } else {
                engine.tokenize_text(&text)
            };
            let pieces = ids
                .iter()
                .map(|&t| {
                    (
                        t,
                        String::from_utf8_lossy(&engine.token_bytes(t)).into_owned(),
                    )
                })
                .collect();
            let _ = events.send(Event::Tokens(pieces));
            return;
        }
        Work::Detokenize(ids) => {
            if let Some(bad) = ids
                .iter()
                .find(|&&t| t < 0 || t as usize >= engine.n_vocab())
            {
                return fail(JobError::BadRequest(format!(
                    "tokens: {bad} is not a token id (the vocabulary has {} entries)",
                    engine.n_vocab()
                )));
            }
            let _ = events.send(Event::Detokenized(engine.detokenize(&ids)));
            return;
        }
        Work::Chat(messages) => match prompt::chat_tokens(engine, &messages) {
            Ok(t) => t,
            Err(e) => return fail(JobError::BadRequest(crate::error::chain(&e))),
        },
        Work::Text(text) => engine.tokenize(&text, true),
        Work::Fim(input) => match prompt::fim_tokens(engine, &input, job.options.max_tokens) {
            Ok(p) => {
                dropped = p.dropped;
                p.tokens
            }
            Err(e) => return fail(JobError::BadRequest(crate::error::chain(&e))),
        },
    };
    if tokens.is_empty() {
        return fail(JobError::BadRequest("the prompt is empty".into()));
    }
    if tokens.len() >= n_ctx {
        return fail(JobError::BadRequest(format!(
            "the prompt is {} tokens but the context holds {n_ctx}; shorten it or start the server with a larger --ctx-size",
            tokens.len()
        )));
    }
    let mut options = job.options;
    let room = n_ctx - tokens.len();
    let max_tokens_clamped = (options.max_tokens > room).then_some(room);
    options.max_tokens = options.max_tokens.min(room);
    let cancel_flag = job.cancel.clone();
    let deadline = job.limits.deadline;
    let closed = job.events.clone();
    let cancel = move || {
        cancel_flag.load(Ordering::Relaxed)
            || closed.is_closed()
            || shutdown.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| Instant::now() >= d)
    };
    let mut generator = match Generator::new(session, &tokens, &options, cancel) {
        Ok(g) => g,
        Err(e) => return fail(JobError::Internal(crate::error::chain(&e))),
    };
    let _ = events.send(Event::Started {
        prompt_tokens: tokens.len(),
        cached_tokens: generator.stats().reused_tokens,
        max_tokens_clamped,
        dropped,
    });
    let mut block = job.limits.n_indent.map(BlockEnd::new);
    let mut reply_start = is_chat.then(ReplyStart::default);
    loop {
        let text = match generator.next_text() {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(e) => return fail(JobError::Internal(crate::error::chain(&e))),
        };
        let text = match reply_start.as_mut() {
            Some(r) => r.piece(&text).to_string(),
            None => text,
        };
        let text = BlockEnd::apply(block.as_mut(), text, &mut generator);
        if !text.is_empty() && events.send(Event::Text(text)).is_err() {
            generator.cancel();
        }
    }
    if let Some(rest) = block.as_mut().map(BlockEnd::finish) {
        if !rest.is_empty() {
            let _ = events.send(Event::Text(rest));
        }
    }
    let stats = generator.stats().clone();
    if let Some(f) = job.on_done {
        f(&stats);
    }
    let _ = events.send(Event::Done(stats));
}
