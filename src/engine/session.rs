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
        }
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
        crate::checksum::forget(path);
        self.ctx
            .state_save_file(path, &tokens)
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
    }

    /// Keeps the first `n` cached tokens and drops the rest from the KV cache: how a rejected
    /// speculative draft, or a prompt that diverges from the cache, is undone.
    pub fn truncate(&mut self, n: usize) -> Result<(), EngineError> {
        if n >= self.cached.len() {
            return Ok(());
        }
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(n as u32), None)
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
        mut on_logits: impl FnMut(usize, &[f32]),
        cancel: &dyn Fn() -> bool,
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
                    .add(LlamaToken(t), (first + j) as i32, &[0], want)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
                if want {
                    self.outputs.push(j as i32);
                }
            }
            if let Err(e) = self.ctx.decode(&mut batch) {
                // A failed batch leaves no trustworthy entries past the cached ones.
                let _ = self
                    .ctx
                    .clear_kv_cache_seq(Some(0), Some(first as u32), None);
                self.outputs.clear();
                return Err(EngineError::Decode(e.to_string()));
            }
            self.cached.extend_from_slice(chunk);
            for &j in &self.outputs {
                on_logits(first + j as usize, self.ctx.get_logits_ith(j));
            }
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
        let completed = self.eval(&tokens[keep..], |pos| pos + 1 == n, |_, _| {}, cancel)?;
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
