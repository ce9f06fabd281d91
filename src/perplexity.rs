//! Perplexity and KL divergence over a text, measured the way llama.cpp's `llama-perplexity`
//! measures them, so our numbers can be set beside the ones people publish.
//!
//! The procedure (llama-perplexity's): the text is tokenized with a leading BOS, cut into
//! chunks of `n_ctx` tokens, and each chunk's first token is replaced by BOS. Every chunk is
//! evaluated from an empty cache and only its second half is scored, so each scored token sees
//! at least `n_ctx / 2` tokens of context: position `j` in `n_ctx/2 .. n_ctx-1` predicts token
//! `j + 1`. Perplexity is `exp(mean negative log-likelihood)`.
//!
//! With a base model, its log-probabilities at the same positions are the reference:
//! KL(base ‖ model) per position, then the mean, the 99th percentile and how often both agree
//! on the most likely token. Only one model is in memory at a time: the base runs first and
//! its rows go to a temporary file, which the second pass reads back chunk by chunk.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::engine::{Engine, EngineError};
use crate::error::Interrupted;

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the text has {n_tokens} tokens, fewer than one chunk of {n_ctx}; use a smaller --chunk-size or a longer file")]
    TooShort { n_tokens: usize, n_ctx: usize },
    #[error("--kl-base: the base model has {base} vocabulary entries and the model {model}; they must be the same tokenizer")]
    VocabMismatch { base: usize, model: usize },
    #[error("--kl-base: the base model tokenizes the text differently from the model")]
    TokenMismatch,
    #[error("--kl-base: {base} and {model} have different tokenizers ('{key}' differs); KL divergence needs the same vocabulary")]
    TokenizerMismatch {
        base: String,
        model: String,
        key: &'static str,
    },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("temporary file {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("scoring stopped")]
    Interrupted(#[source] Interrupted),
}

/// Cuts `tokens` into llama-perplexity's chunks: `n_ctx` tokens each (a partial tail is
/// dropped), the first token of each replaced by `bos` when the model uses one.
pub fn chunks(tokens: &[i32], n_ctx: usize, bos: Option<i32>) -> Vec<Vec<i32>> {
    tokens
        .chunks_exact(n_ctx)
        .map(|c| {
            let mut c = c.to_vec();
            if let Some(b) = bos {
                c[0] = b;
            }
            c
        })
        .collect()
}

/// The first scored position of a chunk.
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2
}

/// `log_softmax(logits)` in f64: scoring sums many small terms.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&l| l as f64 - log_z).collect()
}

/// KL(p ‖ q) from log-probabilities.
pub fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| lp.exp() * (lp - lq))
        .sum::<f64>()
        .max(0.0)
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Negative log-likelihoods of the scored tokens, and the sums they make.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    pub nll: Vec<f64>,
}

impl Scores {
    pub fn count(&self) -> usize {
        self.nll.len()
    }

    pub fn mean_nll(&self) -> f64 {
        self.nll.iter().sum::<f64>() / self.count().max(1) as f64
    }

    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }

    /// One standard error of the perplexity (from that of the mean NLL, as llama-perplexity).
    pub fn perplexity_error(&self) -> f64 {
        let n = self.count() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let mean = self.mean_nll();
        let var = self.nll.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        self.perplexity() * (var / n).sqrt()
    }
}

/// How far a model's distributions are from a base model's at the scored positions.
#[derive(Debug, Clone, Default)]
pub struct KlStats {
    pub kl: Vec<f64>,
    pub same_top1: usize,
}

impl KlStats {
    pub fn mean(&self) -> f64 {
        self.kl.iter().sum::<f64>() / self.kl.len().max(1) as f64
    }

    /// The `q`-quantile (0..=1), nearest rank.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.kl.is_empty() {
            return 0.0;
        }
        let mut v = self.kl.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    pub fn max(&self) -> f64 {
        self.kl.iter().copied().fold(0.0, f64::max)
    }

    pub fn top1_agreement(&self) -> f64 {
        self.same_top1 as f64 / self.kl.len().max(1) as f64
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub n_ctx: usize,
    pub n_chunks: usize,
    pub n_tokens: usize,
    pub scores: Scores,
    /// The base model's scores and the divergence from it, with `--kl-base`.
    pub base: Option<(Scores, KlStats)>,
}

/// Called after each evaluated chunk with (done, total); return `false` to stop.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

/// Tokens of `text` as llama-perplexity takes them (with a leading BOS where the model uses one).
pub fn tokenize(engine: &Engine, text: &str) -> Vec<i32> {
    engine.tokenize(text, true)
}

/// Scores `engine` on `text`; with `base`, also the base model (evaluated first, then dropped)
/// and the divergence between them. `max_chunks` limits the work.
pub fn measure(
    engine_for: &mut dyn FnMut(&Path) -> Result<Engine, EngineError>,
    model: &Path,
    base: Option<&Path>,
    text: &str,
    n_ctx: usize,
    max_chunks: Option<usize>,
    progress: Progress<'_>,
) -> Result<Report, PerplexityError> {
    if let Some(base_path) = base {
        same_tokenizer(base_path, model)?;
    }
    let base_pass = match base {
        Some(base_path) => {
            let engine = engine_for(base_path)?;
            let tokens = tokenize(&engine, text);
            let work = Work::new(&engine, &tokens, n_ctx, max_chunks)?;
            let mut spill = Spill::create()?;
            let total = work.chunks.len() * 2;
            let scores = work.run(&engine, &mut |row| spill.write(row), &mut |done| {
                progress(done, total)
            })?;
            spill.finish()?;
            Some((tokens, engine.n_vocab(), scores, spill, total))
        }
        None => None,
    };

    let engine = engine_for(model)?;
    let tokens = tokenize(&engine, text);
    let work = Work::new(&engine, &tokens, n_ctx, max_chunks)?;
    let report = |scores, base| Report {
        n_ctx,
        n_chunks: work.chunks.len(),
        n_tokens: tokens.len(),
        scores,
        base,
    };
    let Some((base_tokens, base_vocab, base_scores, spill, total)) = base_pass else {
        let total = work.chunks.len();
        let scores = work.run(&engine, &mut |_| Ok(()), &mut |done| progress(done, total))?;
        return Ok(report(scores, None));
    };
    if base_vocab != engine.n_vocab() {
        return Err(PerplexityError::VocabMismatch {
            base: base_vocab,
            model: engine.n_vocab(),
        });
    }
    if base_tokens != tokens {
        return Err(PerplexityError::TokenMismatch);
    }
    let mut reader = spill.reader(engine.n_vocab())?;
    let mut kl = KlStats::default();
    let offset = work.chunks.len();
    let scores = work.run(
        &engine,
        &mut |row| {
            let base_row = reader.next_row()?;
            kl.kl.push(kl_divergence(base_row, row));
            kl.same_top1 += usize::from(argmax(base_row) == argmax(row));
            Ok(())
        },
        &mut |done| progress(offset + done, total),
    )?;
    Ok(report(scores, Some((base_scores, kl))))
}

/// Checks, from the two GGUF headers and before any scoring, that a base model and a model
/// share their tokenizer (the same vocabulary, merges, type and pre-tokenizer).
fn same_tokenizer(base: &Path, model: &Path) -> Result<(), PerplexityError> {
    let (a, b) = (
        crate::gguf::GgufFile::open(base)?,
        crate::gguf::GgufFile::open(model)?,
    );
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ] {
        if a.metadata.get(key) != b.metadata.get(key) {
            return Err(PerplexityError::TokenizerMismatch {
                base: base.display().to_string(),
                model: model.display().to_string(),
                key,
            });
        }
    }
    Ok(())
}

/// Receives each scored row of log-probabilities, in order.
type RowSink<'a> = &'a mut dyn FnMut(&[f64]) -> Result<(), PerplexityError>;

/// The chunks of one pass.
struct Work {
    chunks: Vec<Vec<i32>>,
}

impl Work {
    fn new(
        engine: &Engine,
        tokens: &[i32],
        n_ctx: usize,
        max_chunks: Option<usize>,
    ) -> Result<Work, PerplexityError> {
        let mut chunks = chunks(tokens, n_ctx, engine.bos());
        if chunks.is_empty() {
            return Err(PerplexityError::TooShort {
                n_tokens: tokens.len(),
                n_ctx,
            });
        }
        if let Some(m) = max_chunks {
            chunks.truncate(m.max(1));
        }
        Ok(Work { chunks })
    }

    /// Evaluates every chunk, scores its second half and hands each scored row of
    /// log-probabilities to `on_row`.
    fn run(
        &self,
        engine: &Engine,
        on_row: RowSink<'_>,
        progress: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Scores, PerplexityError> {
        let mut session = engine.session()?;
        let mut scores = Scores::default();
        for (c, chunk) in self.chunks.iter().enumerate() {
            let n = chunk.len();
            let first = first_scored(n);
            let mut failure = None;
            session.logits(&chunk[..n - 1], first, |pos, logits| {
                if failure.is_some() {
                    return;
                }
                let lp = log_softmax(logits);
                scores.nll.push(-lp[chunk[pos + 1] as usize]);
                if let Err(e) = on_row(&lp) {
                    failure = Some(e);
                }
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            if !progress(c + 1) {
                return Err(PerplexityError::Interrupted(Interrupted));
            }
        }
        Ok(scores)
    }
}

/// The base model's log-probabilities, one f32 row per scored position, in a temporary file
/// that is removed when dropped.
struct Spill {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl Spill {
    fn create() -> Result<Spill, PerplexityError> {
        let path = std::env::temp_dir().join(format!("dscoder-kl-base-{}.f32", std::process::id()));
        let file = File::create(&path).map_err(|source| PerplexityError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Spill {
            path,
            writer: Some(BufWriter::new(file)),
        })
    }

    fn io(&self, source: std::io::Error) -> PerplexityError {
        PerplexityError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn write(&mut self, row: &[f64]) -> Result<(), PerplexityError> {
        let bytes: Vec<u8> = row.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
        let written = self
            .writer
            .as_mut()
            .expect("written before finish")
            .write_all(&bytes);
        written.map_err(|e| self.io(e))
    }

    fn finish(&mut self) -> Result<(), PerplexityError> {
        if let Some(mut w) = self.writer.take() {
            w.flush().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    fn reader(&self, n_vocab: usize) -> Result<SpillReader<'_>, PerplexityError> {
        let file = File::open(&self.path).map_err(|e| self.io(e))?;
        Ok(SpillReader {
            spill: self,
            reader: BufReader::new(file),
            bytes: vec![0; n_vocab * 4],
            row: vec![0.0; n_vocab],
        })
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.writer.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

struct SpillReader<'s> {
    spill: &'s Spill,
    reader: BufReader<File>,
    bytes: Vec<u8>,
    row: Vec<f64>,
}

impl SpillReader<'_> {
    fn next_row(&mut self) -> Result<&[f64], PerplexityError> {
        self.reader
            .read_exact(&mut self.bytes)
            .map_err(|e| self.spill.io(e))?;
        for (x, b) in self.row.iter_mut().zip(self.bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64;
        }
        Ok(&self.row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_replace_the_first_token_and_drop_the_tail() {
        let t: Vec<i32> = (10..21).collect();
        assert_eq!(
            chunks(&t, 4, Some(1)),
            vec![vec![1, 11, 12, 13], vec![1, 15, 16, 17]]
        );
        assert_eq!(chunks(&t, 4, None)[1], vec![14, 15, 16, 17]);
        assert!(chunks(&t[..3], 4, Some(1)).is_empty());
    }

    #[test]
    fn log_softmax_normalises_and_survives_large_logits() {
        let lp = log_softmax(&[1000.0, 1000.0, f32::NEG_INFINITY]);
        assert!((lp[0] - (0.5f64).ln()).abs() < 1e-12);
        assert_eq!(lp[2], f64::NEG_INFINITY);
        let total: f64 = log_softmax(&[0.3, -2.0, 5.5, 1.0])
            .iter()
            .map(|x| x.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn kl_is_zero_for_equal_and_matches_a_hand_value() {
        let p = [0.5f64.ln(), 0.5f64.ln()];
        assert_eq!(kl_divergence(&p, &p), 0.0);
        let q = [0.25f64.ln(), 0.75f64.ln()];
        let expected = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((kl_divergence(&p, &q) - expected).abs() < 1e-15);
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let s = KlStats {
            kl: (1..=100).map(|x| x as f64).collect(),
            same_top1: 50,
        };
        assert_eq!(s.quantile(0.99), 99.0);
        assert_eq!(s.quantile(1.0), 100.0);
        assert_eq!(s.max(), 100.0);
        assert_eq!(s.top1_agreement(), 0.5);
    }
}

/// What a report names: the files and the models' `general.name`s.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub model_path: String,
    pub model_name: String,
    pub text_path: String,
    pub base_path: Option<String>,
    pub base_name: String,
}

impl Report {
    /// The human-readable report, llama-perplexity's figures in a few lines.
    pub fn render(&self, l: &Labels) -> String {
        let mut out = format!(
            "{}: perplexity {:.4} ± {:.4} ({} chunks of {} tokens, {} tokens scored)\n",
            l.model_name,
            self.scores.perplexity(),
            self.scores.perplexity_error(),
            self.n_chunks,
            self.n_ctx,
            self.scores.count()
        );
        if let Some((base, kl)) = &self.base {
            out += &format!(
                "{}: perplexity {:.4} ± {:.4} (base)\n",
                l.base_name,
                base.perplexity(),
                base.perplexity_error()
            );
            out += &format!(
                "KL divergence from the base: mean {:.6}, 99th percentile {:.6}, max {:.6}; same top token {:.2}%\n",
                kl.mean(),
                kl.quantile(0.99),
                kl.max(),
                100.0 * kl.top1_agreement()
            );
        }
        out
    }

    pub fn to_json(&self, l: &Labels) -> serde_json::Value {
        let mut j = serde_json::json!({
            "model": l.model_path,
            "name": l.model_name,
            "file": l.text_path,
            "n_ctx": self.n_ctx,
            "n_chunks": self.n_chunks,
            "n_tokens": self.n_tokens,
            "n_scored": self.scores.count(),
            "mean_nll": self.scores.mean_nll(),
            "perplexity": self.scores.perplexity(),
            "perplexity_error": self.scores.perplexity_error(),
        });
        if let (Some((base, kl)), Some(path)) = (&self.base, &l.base_path) {
            j["base"] = serde_json::json!({
                "model": path,
                "name": l.base_name,
                "mean_nll": base.mean_nll(),
                "perplexity": base.perplexity(),
                "perplexity_error": base.perplexity_error(),
            });
            j["kl"] = serde_json::json!({
                "mean": kl.mean(),
                "p99": kl.quantile(0.99),
                "max": kl.max(),
                "top1_agreement": kl.top1_agreement(),
            });
        }
        j
    }
}
