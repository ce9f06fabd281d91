//! Computing an importance matrix, the way `llama-imatrix` does.
//!
//! The text is cut into chunks like `perplexity` cuts it (BOS first, each chunk from an empty
//! cache). While the model reads a chunk, ggml's eval callback hands us every matrix
//! multiplication with a weight of a layer (`blk.*`) as an operand: for `MUL_MAT` we add x² of
//! every input row to the weight's column sums (per matrix of a 3-D weight such as MLA's
//! per-head `attn_k_b`), for `MUL_MAT_ID` (the routed experts) to the sums of the expert each
//! token was routed to, counting rows per expert. As in llama-imatrix, plain matmuls of fewer
//! than 16 rows (single-token decoding) are skipped, and `output.weight` is left out.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::file::{Entry, ImportanceMatrix};
use crate::engine::{Engine, EngineError, Session};
use crate::llama_sys::eval_callback::{Node, Observer, Op};

/// Running sums for one weight.
struct Stat {
    sums: Vec<f64>,
    activations: Vec<f64>,
    counts: Vec<u64>,
}

/// Receives ggml's callbacks during a session's decoding and accumulates the sums.
#[derive(Default)]
pub struct Collector {
    stats: Mutex<BTreeMap<String, Stat>>,
    /// The first thing that went wrong inside a callback (reported after the chunk).
    error: Mutex<Option<String>>,
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    /// A session whose decoding feeds this collector.
    pub fn session<'e>(&'e self, engine: &'e Engine) -> Result<Session<'e>, EngineError> {
        engine.session_with_observer(self)
    }

    /// What went wrong in a callback, if anything.
    pub fn take_error(&self) -> Option<String> {
        self.error.lock().ok()?.take()
    }

    /// The sums so far as a matrix (counts per expert for 3-D expert weights).
    pub fn matrix(&self, datasets: Vec<String>, chunks: u32, chunk_size: u32) -> ImportanceMatrix {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let entries = stats
            .iter()
            .map(|(name, s)| {
                let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
                (
                    name.clone(),
                    Entry {
                        sums: f(&s.sums),
                        counts: s.counts.clone(),
                        activations: Some(f(&s.activations)),
                    },
                )
            })
            .collect();
        ImportanceMatrix {
            entries,
            datasets,
            chunk_count: chunks,
            chunk_size,
            legacy: false,
        }
    }

    fn fail(&self, message: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(message);
        }
    }
}

/// The scheduler stops at every matmul with a layer's weight and shows it to us.
impl Observer for Collector {
    /// Whether the scheduler should stop at `node` and show it to us.
    fn wants(&self, node: &Node<'_>) -> bool {
        let (Some(w), Some(x)) = (node.src(0), node.src(1)) else {
            return false;
        };
        match node.op() {
            Op::MulMatId => true,
            Op::MulMat => x.ne()[1] >= 16 && weight_name(w.name()).starts_with("blk."),
            Op::Other => false,
        }
    }

    fn observe(&self, node: &Node<'_>) {
        let (Some(w), Some(x)) = (node.src(0), node.src(1)) else {
            return;
        };
        let name = weight_name(w.name()).to_string();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let (wn, xn) = (w.ne(), x.ne());
        let cols = xn[0];
        match node.op() {
            Op::MulMatId => {
                // x: [cols, n_used or 1, n_tokens]; ids: [n_used, n_tokens] (expert per slot).
                let Some(ids) = node.src(2) else { return };
                let n_expert = wn[2];
                let (n_used, n_tokens) = ids.shape();
                let s = stats.entry(name.clone()).or_insert_with(|| Stat {
                    sums: vec![0.0; cols * n_expert],
                    activations: vec![0.0; cols * n_expert],
                    counts: vec![0; n_expert],
                });
                if s.sums.len() != cols * n_expert {
                    return self.fail(format!("{name}: inconsistent sizes between calls"));
                }
                for slot in 0..n_used {
                    for token in 0..n_tokens {
                        let Some(e) = ids.i32_at(slot, token) else {
                            return self.fail(format!("{name}: expert ids are not readable"));
                        };
                        let e = e as usize;
                        let Some(row) = x.f32_row(slot % xn[1].max(1), token, 0) else {
                            return self.fail(format!("{name}: input rows are not readable"));
                        };
                        if e >= n_expert {
                            return self.fail(format!("{name}: expert id {e} out of range"));
                        }
                        s.counts[e] += 1;
                        accumulate(
                            &mut s.sums[e * cols..(e + 1) * cols],
                            &mut s.activations[e * cols..(e + 1) * cols],
                            row,
                        );
                    }
                }
            }
            Op::MulMat => {
                let n_mat = wn[2].max(1) * wn[3].max(1);
                let s = stats.entry(name.clone()).or_insert_with(|| Stat {
                    sums: vec![0.0; cols * n_mat],
                    activations: vec![0.0; cols * n_mat],
                    counts: vec![0],
                });
                if s.sums.len() != cols * n_mat {
                    return self.fail(format!("{name}: inconsistent sizes between calls"));
                }
                for i3 in 0..xn[3].max(1) {
                    for i2 in 0..xn[2].max(1) {
                        // A 2-D weight applied to 3-D input flattens; a 3-D weight pairs up.
                        let m = (i3 % wn[3].max(1)) * wn[2].max(1) + (i2 % wn[2].max(1));
                        for i1 in 0..xn[1] {
                            let Some(row) = x.f32_row(i1, i2, i3) else {
                                return self.fail(format!("{name}: input rows are not readable"));
                            };
                            accumulate(
                                &mut s.sums[m * cols..(m + 1) * cols],
                                &mut s.activations[m * cols..(m + 1) * cols],
                                row,
                            );
                        }
                    }
                }
                s.counts[0] += (xn[1] * xn[2].max(1) * xn[3].max(1) / n_mat) as u64;
            }
            Op::Other => {}
        }
    }
}

fn accumulate(sums: &mut [f64], act: &mut [f64], row: &[f32]) {
    for ((s, a), &v) in sums.iter_mut().zip(act.iter_mut()).zip(row) {
        let v = v as f64;
        *s += v * v;
        *a += v;
    }
}

/// The weight behind a scheduler copy's name (`CPU#blk.0.attn_q.weight#0` → `blk.0.attn_q.weight`).
fn weight_name(name: &str) -> &str {
    match name.split_once('#') {
        Some((_, rest)) => rest.split('#').next().unwrap_or(rest),
        None => name,
    }
}

/// How a computation went.
#[derive(Clone, Debug)]
pub struct Summary {
    pub n_tokens: usize,
    pub chunks: usize,
    pub chunk_size: usize,
    /// Perplexity over the second halves of the chunks (llama-imatrix prints it too).
    pub perplexity: f64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the text has {n_tokens} tokens, fewer than one chunk of {chunk_size}; use a smaller --chunk-size or a longer text")]
    TooShort { n_tokens: usize, chunk_size: usize },
    #[error("collecting the statistics failed: {0}")]
    Collect(String),
    #[error("stopped before the first chunk was done; nothing was written")]
    Interrupted,
}

/// Runs `engine` over `text` in chunks of `chunk_size` tokens (at most `max_chunks`), feeding
/// `collector`. `progress(done, total)` returns false to stop after the current chunk (what
/// was collected so far is kept).
pub fn compute(
    engine: &Engine,
    collector: &Collector,
    text: &str,
    chunk_size: usize,
    max_chunks: Option<usize>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Summary, ComputeError> {
    use crate::perplexity::{chunks, first_scored, log_softmax};
    let started = std::time::Instant::now();
    let tokens = engine.tokenize(text, true);
    let mut work = chunks(&tokens, chunk_size, engine.bos());
    if work.is_empty() {
        return Err(ComputeError::TooShort {
            n_tokens: tokens.len(),
            chunk_size,
        });
    }
    if let Some(m) = max_chunks {
        work.truncate(m.max(1));
    }
    let mut session = collector.session(engine)?;
    let (mut nll, mut scored) = (0.0f64, 0usize);
    let mut done = 0;
    for chunk in &work {
        let first = first_scored(chunk.len());
        session.clear();
        // Logits at every position, as llama-imatrix asks for them: llama.cpp computes the last
        // layer only for the positions whose logits are wanted, and its statistics with them.
        session.eval(
            chunk,
            |_| true,
            |pos, logits| {
                if pos >= first && pos + 1 < chunk.len() {
                    nll -= log_softmax(logits)[chunk[pos + 1] as usize];
                    scored += 1;
                }
            },
            &|| false,
        )?;
        if let Some(e) = collector.take_error() {
            return Err(ComputeError::Collect(e));
        }
        done += 1;
        if !progress(done, work.len()) {
            break;
        }
    }
    if done == 0 {
        return Err(ComputeError::Interrupted);
    }
    Ok(Summary {
        n_tokens: tokens.len(),
        chunks: done,
        chunk_size,
        perplexity: (nll / scored.max(1) as f64).exp(),
        seconds: started.elapsed().as_secs_f64(),
    })
}
