//! A [`Session`]: one llama.cpp context and the tokens its KV cache holds.
//!
//! Every evaluation goes through one batched decode ([`Session::eval`]): prefill, generation,
//! perplexity, bench and speculative verification differ only in which positions they want
//! logits for. Knowing the cached tokens makes prompt reuse exact: a prompt that starts with
//! them only evaluates the rest.

use std::path::Path;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::{Engine, EngineError};

/// One context and the tokens its KV cache holds.
pub struct Session<'e> {
    pub(super) engine: &'e Engine,
    pub(super) ctx: LlamaContext<'e>,
    cached: Vec<i32>,
    batch: usize,
    /// Batch indices with logits from the last decode call, in order.
    outputs: Vec<i32>,
    /// The position of `cached[0]`: 0, unless the whole cache was moved ([`Session::start_at`]).
    base: u32,
    /// Told how a multi-batch prefill is going (the front-end draws it; the engine prints nothing).
    progress: Option<Box<dyn FnMut(PrefillProgress)>>,
}

/// How far a prefill of more than one batch has got, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillProgress {
    /// Prompt tokens evaluated so far in this prefill (0 before the first batch).
    pub done: usize,
    /// Prompt tokens this prefill evaluates (the reused prefix is not counted).
    pub total: usize,
    /// The last report of this prefill: it completed, was cancelled or failed.
    pub over: bool,
}

/// What [`Session::prefill`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefill {
    /// Prompt tokens whose KV entries were already there.
    pub reused: usize,
    /// False when the cancel check stopped it between batches (the cache keeps what was done).
    pub completed: bool,
}

impl<'e> Session<'e> {
    pub(super) fn new(engine: &'e Engine, ctx: LlamaContext<'e>, batch: usize) -> Self {
        Session {
            engine,
            ctx,
            cached: Vec::new(),
            batch,
            outputs: Vec::new(),
            base: 0,
            progress: None,
        }
    }

    /// Calls `report` before and after each batch of a prefill that takes more than one batch,
    /// and once more with `over` set when it ends (completed, cancelled or failed).
    pub fn set_prefill_progress(&mut self, report: impl FnMut(PrefillProgress) + 'static) {
        self.progress = Some(Box::new(report));
    }

    pub fn engine(&self) -> &'e Engine {
        self.engine
    }

    pub fn n_ctx(&self) -> u32 {
        self.ctx.n_ctx()
    }

    /// The most tokens one decode call takes.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Tokens currently held in the KV cache, in position order.
    pub fn cached_tokens(&self) -> &[i32] {
        &self.cached
    }

    /// Saves the KV cache and the tokens it holds (llama.cpp's state file), with a checksum
    /// beside it so a damaged file is refused when loaded.
    pub fn save_state(&self, path: &Path) -> Result<(), EngineError> {
        let err = |message: String| EngineError::State {
            what: "saving",
            path: path.display().to_string(),
            message,
        };
        let tokens: Vec<LlamaToken> = self.cached.iter().map(|&t| LlamaToken(t)).collect();
        // Written beside the target and renamed over it: an interrupted save leaves the old
        // state (or none), never half a file. The old checksum goes just before the rename, so
        // a failed save keeps the old state usable.
        crate::output::write_through_temp(path, |temp| {
            self.ctx
                .state_save_file(temp, &tokens)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            crate::checksum::forget(path);
            Ok::<(), std::io::Error>(())
        })
        .map_err(|e| err(e.to_string()))?;
        crate::checksum::record(path).map_err(|e| err(e.to_string()))
    }

    /// Restores a state saved by [`Session::save_state`]; the next prefill then reuses it as
    /// far as its prompt agrees. On failure the cache is emptied (everything is re-evaluated).
    pub fn load_state(&mut self, path: &Path) -> Result<usize, EngineError> {
        let max = self.n_ctx() as usize;
        self.outputs.clear();
        // llama.cpp restores whatever bytes it finds: a damaged file would be garbage KV.
        if let Err(message) = crate::checksum::verify(path) {
            self.clear();
            return Err(EngineError::State {
                what: "loading",
                path: path.display().to_string(),
                message,
            });
        }
        match self.ctx.state_load_file(path, max) {
            Ok(tokens) => {
                self.cached = tokens.into_iter().map(|t| t.0).collect();
                self.base = 0;
                Ok(self.cached.len())
            }
            Err(e) => {
                self.clear();
                Err(EngineError::State {
                    what: "loading",
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// Runs one small batch and empties the cache again, as llama.cpp's tools do before their
    /// first real work: the weights are paged in (and the kernels' buffers allocated) at start-up
    /// instead of during the first request.
    pub fn warm_up(&mut self) -> Result<(), EngineError> {
        let bos = self.engine.bos().unwrap_or(0);
        self.clear();
        self.eval(&[bos, bos], |pos| pos == 1, |_, _| {}, &|| false)?;
        self.ctx.synchronize();
        self.clear();
        Ok(())
    }

    /// Empties the KV cache.
    pub fn clear(&mut self) {
        self.ctx.clear_kv_cache();
        self.cached.clear();
        self.outputs.clear();
        self.base = 0;
    }

    /// Drops the `discard` cached tokens after the first `keep` and moves the later ones back
    /// by `discard` positions, so the cache stays one run of positions with room at the end: a
    /// context shift. llama.cpp rotates the moved keys' RoPE part (its "K-shift"; for deepseek2's
    /// MLA cache only the rope slice of each key) before the next decode; the values are not
    /// positional. `tests/it/context_shift.rs` checks the rotation against fresh evaluations.
    ///
    /// Refused (`Ok(false)`, nothing changed) with a quantized cache: the vendored llama.cpp's
    /// K-shift of a q8_0 MLA cache crashes (a segfault, found by that test); callers evaluate
    /// the kept tokens again instead.
    pub fn shift(&mut self, keep: usize, discard: usize) -> Result<bool, EngineError> {
        if !self.can_shift() {
            return Ok(false);
        }
        let n = self.cached.len();
        let keep = keep.min(n);
        let discard = discard.min(n - keep);
        if discard == 0 {
            return Ok(true);
        }
        let (from, to) = (self.pos(keep), self.pos(keep + discard));
        let err = |e: String| EngineError::Decode(format!("context shift: {e}"));
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(from), Some(to))
            .map_err(|e| err(e.to_string()))?;
        self.ctx
            .kv_cache_seq_add(0, Some(to), None, -(discard as i32))
            .map_err(|e| err(e.to_string()))?;
        self.cached.drain(keep..keep + discard);
        self.outputs.clear();
        Ok(true)
    }

    /// Prepares the cache for a prompt that is what it holds with one span taken out (a chat
    /// whose oldest exchanges were dropped): shifts that span out, so the next prefill reuses
    /// the rest instead of evaluating it again. Returns the tokens dropped (0: no such span, or
    /// a cache that cannot be moved; prefill then evaluates from the first difference).
    pub fn shift_to_match(&mut self, tokens: &[i32]) -> Result<usize, EngineError> {
        let cached = &self.cached;
        let p = cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        if p == cached.len() || p == tokens.len() || !self.can_shift() {
            return Ok(0);
        }
        // The span start is p; its length d is where the cache's rest lines up with the
        // prompt's rest for the longest run (a whole tail ends the search).
        let mut best = (0, 0);
        for d in 1..cached.len() - p {
            let tail = &cached[p + d..];
            let run = tail
                .iter()
                .zip(&tokens[p..])
                .take_while(|(a, b)| a == b)
                .count();
            if run > best.1 {
                best = (d, run);
                if run == tail.len() {
                    break;
                }
            }
        }
        let (d, run) = best;
        // Moving a handful of tokens saves less than it risks; evaluate them instead.
        if run < 16 {
            return Ok(0);
        }
        self.shift(p, d)?;
        Ok(d)
    }

    /// Whether [`Session::shift`] can move cached keys (an F16 cache).
    pub fn can_shift(&self) -> bool {
        self.engine.cache_type() == super::CacheType::F16
    }

    /// Moves every cached token by `delta` positions (the cache keeps its contents). With
    /// [`Session::start_at`], what the K-shift test needs: the same tokens evaluated at one set
    /// of positions and moved to another must give the logits of evaluating them there.
    pub fn move_all(&mut self, delta: i32) -> Result<(), EngineError> {
        if !self.can_shift() {
            return Err(EngineError::Decode(
                "a quantized KV cache cannot be moved".into(),
            ));
        }
        let base = self.base as i64 + delta as i64;
        if base < 0 || base + self.cached.len() as i64 > i32::MAX as i64 {
            return Err(EngineError::Decode(format!(
                "cannot move the cache by {delta} positions"
            )));
        }
        self.ctx
            .kv_cache_seq_add(0, None, None, delta)
            .map_err(|e| EngineError::Decode(format!("context shift: {e}")))?;
        self.base = base as u32;
        self.outputs.clear();
        Ok(())
    }

    /// Empties the cache and makes the next token go to position `pos` instead of 0.
    pub fn start_at(&mut self, pos: u32) {
        self.clear();
        self.base = pos;
    }

    /// The position of `cached[i]`.
    fn pos(&self, i: usize) -> u32 {
        self.base + i as u32
    }

    /// Keeps the first `n` cached tokens and drops the rest from the KV cache: how a rejected
    /// speculative draft, or a prompt that diverges from the cache, is undone.
    pub fn truncate(&mut self, n: usize) -> Result<(), EngineError> {
        if n >= self.cached.len() {
            return Ok(());
        }
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(self.pos(n)), None)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
        self.cached.truncate(n);
        self.outputs.clear();
        Ok(())
    }

    /// Evaluates `tokens` at the positions after the cached ones, in batches, appending them
    /// to the cache, and hands `on_logits(position, row)` the logits of each position `wants`
    /// selects. `cancel` is asked between batches; returns false when it stopped the work.
    pub fn eval(
        &mut self,
        tokens: &[i32],
        wants: impl Fn(usize) -> bool,
        on_logits: impl FnMut(usize, &[f32]),
        cancel: &dyn Fn() -> bool,
    ) -> Result<bool, EngineError> {
        self.eval_reporting(tokens, wants, on_logits, cancel, &mut |_| {})
    }

    /// [`Session::eval`], calling `evaluated(n)` after each batch of `n` tokens.
    fn eval_reporting(
        &mut self,
        tokens: &[i32],
        wants: impl Fn(usize) -> bool,
        mut on_logits: impl FnMut(usize, &[f32]),
        cancel: &dyn Fn() -> bool,
        evaluated: &mut dyn FnMut(usize),
    ) -> Result<bool, EngineError> {
        let n_ctx = self.n_ctx() as usize;
        if self.cached.len() + tokens.len() > n_ctx {
            return Err(EngineError::PromptTooLong {
                n_prompt: self.cached.len() + tokens.len(),
                n_ctx: n_ctx as u32,
            });
        }
        let mut batch = LlamaBatch::new(self.batch.min(tokens.len()).max(1), 1);
        for chunk in tokens.chunks(self.batch) {
            if cancel() {
                return Ok(false);
            }
            let first = self.cached.len();
            batch.clear();
            self.outputs.clear();
            for (j, &t) in chunk.iter().enumerate() {
                let want = wants(first + j);
                batch
                    .add(LlamaToken(t), self.pos(first + j) as i32, &[0], want)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
                if want {
                    self.outputs.push(j as i32);
                }
            }
            if let Err(e) = self.ctx.decode(&mut batch) {
                // A failed batch leaves no trustworthy entries past the cached ones.
                let first_pos = self.pos(first);
                let _ = self.ctx.clear_kv_cache_seq(Some(0), Some(first_pos), None);
                self.outputs.clear();
                return Err(EngineError::Decode(e.to_string()));
            }
            self.cached.extend_from_slice(chunk);
            for &j in &self.outputs {
                on_logits(first + j as usize, self.ctx.get_logits_ith(j));
            }
            evaluated(chunk.len());
        }
        Ok(true)
    }

    /// Makes the KV cache hold exactly `tokens`, evaluating only what differs from what it
    /// held, and leaves the logits of the last token ready for sampling.
    pub fn prefill(
        &mut self,
        tokens: &[i32],
        cancel: &dyn Fn() -> bool,
    ) -> Result<Prefill, EngineError> {
        let n_ctx = self.n_ctx() as usize;
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if tokens.len() >= n_ctx {
            return Err(EngineError::PromptTooLong {
                n_prompt: tokens.len(),
                n_ctx: n_ctx as u32,
            });
        }
        let common = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // The last prompt token is always evaluated again, so its logits are fresh.
        let keep = common.min(tokens.len() - 1);
        self.truncate(keep)?;
        let n = tokens.len();
        let todo = &tokens[keep..];
        let mut progress = (todo.len() > self.batch)
            .then(|| self.progress.take())
            .flatten();
        let mut done = 0;
        let mut report = |evaluated: usize, over: bool| {
            if let Some(p) = progress.as_mut() {
                done += evaluated;
                p(PrefillProgress {
                    done,
                    total: todo.len(),
                    over,
                });
            }
        };
        report(0, false);
        let result = self.eval_reporting(todo, |pos| pos + 1 == n, |_, _| {}, cancel, &mut |k| {
            report(k, false)
        });
        report(0, true);
        if progress.is_some() {
            self.progress = progress;
        }
        let completed = result?;
        Ok(Prefill {
            reused: keep,
            completed,
        })
    }

    /// Appends `tokens` in one decode call with logits at every position, for verifying a
    /// draft: read row `i` (the `i`-th of these tokens) with [`Session::logits_at`] or sample
    /// it with [`super::Sampler::sample`]. At most the batch size.
    pub fn decode_all(&mut self, tokens: &[i32]) -> Result<(), EngineError> {
        if tokens.len() > self.batch {
            return Err(EngineError::Decode(format!(
                "{} tokens in one decode, but the batch holds {}",
                tokens.len(),
                self.batch
            )));
        }
        self.eval(tokens, |_| true, |_, _| {}, &|| false)?;
        Ok(())
    }

    /// The logits row at batch index `i` of the last decode, if that decode produced it.
    pub fn logits_at(&self, i: usize) -> Option<&[f32]> {
        self.outputs
            .contains(&(i as i32))
            .then(|| self.ctx.get_logits_ith(i as i32))
    }

    /// The batch index of the last logits row the last decode produced.
    pub(super) fn last_output(&self) -> Option<i32> {
        self.outputs.last().copied()
    }

    /// Evaluates `tokens` from an empty cache and calls `on_logits(position, row)` for each
    /// position from `from` on, in order: the rows perplexity scoring needs, without holding
    /// them all (a 100K-entry row per position adds up).
    pub fn logits(
        &mut self,
        tokens: &[i32],
        from: usize,
        on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        self.clear();
        self.eval(tokens, |pos| pos >= from, on_logits, &|| false)?;
        Ok(())
    }
}
