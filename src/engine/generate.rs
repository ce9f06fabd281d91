//! Step-wise generation: the caller pulls text from a [`Generator`] and decides when to stop.
//!
//! One loop serves every front-end (run, the REPL, the server, completion): the generator owns
//! sampling, the UTF-8 and stop-string hold-back and the counts; the caller owns output and
//! cancellation, which it passes in as a check (a server cancels one request, the REPL one
//! reply, the command line the whole command), never read from a process-wide flag here.

use std::collections::VecDeque;
use std::time::Instant;

use super::draft::{self, DraftMode, DraftPolicy, ShadowDraft};
use super::{EngineError, Sampler, SamplingSettings, Session};

/// Why generation ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    #[default]
    EndOfGeneration,
    /// One of the stop strings appeared (it is not part of the text).
    StopString,
    /// The token cap was reached.
    TokenLimit,
    /// The context is full.
    ContextFull,
    /// The caller's cancel check said so.
    Cancelled,
}

impl StopReason {
    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "eos",
            StopReason::StopString => "stop-string",
            StopReason::TokenLimit => "length",
            StopReason::ContextFull => "context-full",
            StopReason::Cancelled => "cancelled",
        }
    }

    /// OpenAI's `finish_reason`: `stop` for a natural end, `length` for a cut.
    pub fn finish_reason(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration | StopReason::StopString | StopReason::Cancelled => "stop",
            StopReason::TokenLimit | StopReason::ContextFull => "length",
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    pub sampling: SamplingSettings,
    pub max_tokens: usize,
    /// Texts that end generation; matched across token boundaries and never emitted.
    pub stop: Vec<String>,
    /// Prompt-lookup speculation.
    pub draft: DraftMode,
    /// When the context fills: `Some(n_keep)` keeps the first `n_keep` cached tokens (at most
    /// the prompt, at most half the context), drops the older half of the rest and goes on (a
    /// context shift); `None` stops (`ContextFull`).
    pub context_shift: Option<usize>,
}

/// Counts and timings of one generation.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    /// The generated token ids (without the end-of-generation token).
    pub tokens: Vec<i32>,
    /// The prompt's tokens, or those evaluated before a cancel check stopped the prefill.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries were reused from the previous call.
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_seconds: f64,
    pub generation_seconds: f64,
    pub stop_reason: StopReason,
    /// Drafted tokens verified, and how many of them the model accepted (speculation).
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
    /// Decode calls during generation by batch size (`decodes[b]`: calls of `b` tokens), from
    /// which a benchmark can price the same run with another model's measured verify cost.
    pub decodes: Vec<usize>,
    /// Context shifts, and the cached tokens they dropped.
    pub shifts: usize,
    pub dropped_tokens: usize,
}

impl GenerationStats {
    /// Prompt tokens that had to be evaluated.
    pub fn evaluated_tokens(&self) -> usize {
        self.prompt_tokens - self.reused_tokens
    }

    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.evaluated_tokens() as f64 / self.prompt_seconds.max(1e-9)
    }

    pub fn generation_tokens_per_second(&self) -> f64 {
        self.generated_tokens as f64 / self.generation_seconds.max(1e-9)
    }

    /// `, 12/20 drafted tokens accepted` when speculation verified any, else empty: for the
    /// front-ends' stats lines.
    pub fn draft_summary(&self) -> String {
        if self.drafted_tokens == 0 {
            return String::new();
        }
        format!(
            ", {}/{} drafted tokens accepted",
            self.accepted_tokens, self.drafted_tokens
        )
    }
}

/// Generation after a prompt, one piece of text per [`Generator::next_text`] call.
///
/// Tokens are decided (sampled) one step before they are evaluated: the last decided token
/// waits in `pending` until more text is wanted, so a token after which generation ends is
/// never evaluated, and the pending token can be evaluated together with a draft.
pub struct Generator<'s, 'e> {
    session: &'s mut Session<'e>,
    sampler: Sampler,
    cancel: Box<dyn Fn() -> bool + 's>,
    max_tokens: usize,
    utf8: Utf8Stream,
    stops: StopMatcher,
    stats: GenerationStats,
    finished: Option<StopReason>,
    flushed: bool,
    started: Instant,
    /// Decided tokens not yet handed out (more than one after an accepted draft).
    ready: VecDeque<i32>,
    /// The last decided token, not yet in the KV cache.
    pending: Option<i32>,
    policy: DraftPolicy,
    shadow: Option<ShadowDraft>,
    context_shift: Option<usize>,
}

impl<'s, 'e> Generator<'s, 'e> {
    /// Prefills `prompt` (reusing the cached prefix; cancellable between batches) and gets
    /// ready to generate.
    pub fn new(
        session: &'s mut Session<'e>,
        prompt: &[i32],
        options: &GenerateOptions,
        cancel: impl Fn() -> bool + 's,
    ) -> Result<Generator<'s, 'e>, EngineError> {
        let started = Instant::now();
        let prefill = session.prefill(prompt, &cancel)?;
        let stats = GenerationStats {
            // A cancelled prefill got only this far (the cache keeps it).
            prompt_tokens: if prefill.completed {
                prompt.len()
            } else {
                session.cached_tokens().len()
            },
            reused_tokens: prefill.reused,
            prompt_seconds: started.elapsed().as_secs_f64(),
            ..Default::default()
        };
        let sampler = Sampler::new(
            &options.sampling,
            session.engine().n_vocab(),
            session.cached_tokens(),
        );
        Ok(Generator {
            session,
            sampler,
            cancel: Box::new(cancel),
            max_tokens: options.max_tokens,
            utf8: Utf8Stream::default(),
            stops: StopMatcher::new(options.stop.clone()),
            stats,
            finished: (!prefill.completed).then_some(StopReason::Cancelled),
            flushed: false,
            started: Instant::now(),
            ready: VecDeque::new(),
            pending: None,
            policy: DraftPolicy::new(options.draft),
            shadow: None,
            context_shift: options.context_shift,
        })
    }

    /// The next piece of text (valid UTF-8, never part of a stop string), or `None` when
    /// generation has ended; [`Generator::stats`] then says why.
    pub fn next_text(&mut self) -> Result<Option<String>, EngineError> {
        while self.finished.is_none() {
            let text = self.step()?;
            if !text.is_empty() {
                return Ok(Some(text));
            }
        }
        if !self.flushed {
            self.flushed = true;
            self.stats.generation_seconds = self.started.elapsed().as_secs_f64();
            self.stats.stop_reason = self.finished.unwrap_or_default();
            // Drafted tokens evaluated past the end are dropped, so the cache holds the prompt
            // and (a prefix of) what was handed out, as without speculation.
            let keep =
                self.stats.prompt_tokens + self.stats.tokens.len() - self.stats.dropped_tokens;
            self.session.truncate(keep)?;
            // Held-back text is real output unless a stop string claimed it.
            let mut tail = self.utf8.finish();
            if self.stats.stop_reason != StopReason::StopString {
                let (emit, _) = self.stops.push(&tail);
                tail = emit + &self.stops.finish();
                if !tail.is_empty() {
                    return Ok(Some(tail));
                }
            }
        }
        Ok(None)
    }

    /// Stops at the next step, as if the cancel check had said so.
    pub fn cancel(&mut self) {
        self.finished.get_or_insert(StopReason::Cancelled);
    }

    /// One token: take the next decided one (deciding more if needed), hold back what may be
    /// a split character or a stop string.
    fn step(&mut self) -> Result<String, EngineError> {
        if (self.cancel)() {
            self.finished = Some(StopReason::Cancelled);
            return Ok(String::new());
        }
        if self.stats.generated_tokens >= self.max_tokens {
            self.finished = Some(StopReason::TokenLimit);
            return Ok(String::new());
        }
        if self.ready.is_empty() {
            // Deciding evaluates the pending token first, which needs a free position.
            let full = self.session.cached_tokens().len() >= self.session.n_ctx() as usize;
            if full && self.pending.is_some() {
                match self.context_shift {
                    Some(keep) => {
                        self.shift_context(keep)?;
                        if self.finished.is_some() {
                            return Ok(String::new());
                        }
                    }
                    None => {
                        self.finished = Some(StopReason::ContextFull);
                        return Ok(String::new());
                    }
                }
            }
            self.decide()?;
        }
        let Some(token) = self.ready.pop_front() else {
            return Ok(String::new());
        };
        let engine = self.session.engine();
        if engine.is_eog(token) {
            self.finished = Some(StopReason::EndOfGeneration);
            return Ok(String::new());
        }
        self.stats.tokens.push(token);
        self.stats.generated_tokens += 1;
        let mut out = String::new();
        if let Some(text) = self.utf8.push(&engine.token_bytes(token)) {
            let (emit, matched) = self.stops.push(&text);
            out = emit;
            if matched {
                self.finished = Some(StopReason::StopString);
            }
        }
        Ok(out)
    }

    /// Makes room in a full context: keeps the first `keep` cached tokens, drops the older half
    /// of the rest, and moves the newer half back (see [`Session::shift`]); where the cache
    /// cannot be moved, the kept tokens are evaluated again.
    fn shift_context(&mut self, keep: usize) -> Result<(), EngineError> {
        let cached = self.session.cached_tokens();
        let n = cached.len();
        let keep = keep.min(self.stats.prompt_tokens).min(n / 2);
        let discard = ((n - keep) / 2).max(1);
        let again = (!self.session.can_shift()).then(|| {
            let mut kept = cached[..keep].to_vec();
            kept.extend_from_slice(&cached[keep + discard..]);
            kept
        });
        match again {
            None => {
                self.session.shift(keep, discard)?;
            }
            Some(kept) => {
                if !self.session.prefill(&kept, &*self.cancel)?.completed {
                    self.finished = Some(StopReason::Cancelled);
                }
            }
        }
        self.stats.shifts += 1;
        self.stats.dropped_tokens += discard;
        Ok(())
    }

    /// Decides at least one more token: evaluates the pending token (with a draft when the
    /// policy says it pays) and samples from the resulting logits.
    fn decide(&mut self) -> Result<(), EngineError> {
        let Some(pending) = self.pending.take() else {
            // Right after the prompt: its last logits are ready.
            let token = self.sampler.sample(self.session, None);
            self.decided(token);
            return Ok(());
        };
        let base = self.session.cached_tokens().len();
        // Room for drafted tokens: the context, the batch, and the tokens still wanted (a
        // draft beyond the cap could never be handed out).
        let wanted = self
            .max_tokens
            .saturating_sub(self.stats.generated_tokens + 1);
        let room = (self.session.n_ctx() as usize)
            .saturating_sub(base + 1)
            .min(self.session.batch_size().saturating_sub(1))
            .min(wanted)
            .min(draft::MAX_DRAFT);
        let draft = if self.policy.mode() == DraftMode::Off {
            Vec::new()
        } else {
            draft::lookup(self.session.cached_tokens(), pending, room)
        };
        let k = self.policy.length(draft.len());
        if k == 0 && !draft.is_empty() && self.shadow.is_none() {
            self.shadow = Some(ShadowDraft::new(&draft));
        }
        if k > 0 {
            self.shadow = None;
        }
        // The pending token and k drafted ones in one batch (k = 0: a plain decode); row i
        // predicts the token after batch token i. Each row is sampled from the model's own
        // distribution, so the output is what plain decoding would give (token for token at
        // temperature 0), and drafted tokens are kept only as far as the samples agree.
        let mut batch = Vec::with_capacity(k + 1);
        batch.push(pending);
        batch.extend_from_slice(&draft[..k]);
        let t = Instant::now();
        self.session.decode_all(&batch)?;
        self.policy
            .observe_decode(batch.len(), t.elapsed().as_secs_f64());
        self.count_decode(batch.len());
        if k == 0 {
            let token = self.sampler.sample(self.session, Some(0));
            self.decided(token);
            return Ok(());
        }
        let mut accepted = 0;
        for i in 0..=k {
            let token = self.sampler.sample(self.session, Some(i));
            self.ready.push_back(token);
            if i < k && token == batch[i + 1] && !self.session.engine().is_eog(token) {
                accepted += 1;
            } else {
                self.pending = Some(token);
                break;
            }
        }
        self.session.truncate(base + 1 + accepted)?;
        self.policy.observe_draft(k, accepted);
        self.stats.drafted_tokens += k;
        self.stats.accepted_tokens += accepted;
        Ok(())
    }

    fn count_decode(&mut self, n_tokens: usize) {
        let d = &mut self.stats.decodes;
        if d.len() <= n_tokens {
            d.resize(n_tokens + 1, 0);
        }
        d[n_tokens] += 1;
    }

    /// `token` was sampled after the cache's last token: hand it out and evaluate it next.
    fn decided(&mut self, token: i32) {
        if let Some(shadow) = self.shadow.as_mut() {
            if let Some((offered, accepted)) = shadow.push(token) {
                self.policy.observe_draft(offered, accepted);
                self.shadow = None;
            }
        }
        self.ready.push_back(token);
        self.pending = Some(token);
    }

    /// Counts so far; complete once [`Generator::next_text`] has returned `None`.
    pub fn stats(&self) -> &GenerationStats {
        &self.stats
    }

    /// Runs to the end, calling `on_text` with each piece; `on_text` returning false cancels.
    pub fn drive(
        mut self,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, EngineError> {
        while let Some(text) = self.next_text()? {
            if !on_text(&text) {
                self.cancel();
            }
        }
        Ok(self.stats)
    }
}

impl Session<'_> {
    /// Generates after `prompt` with no stop strings and no cancel check other than `on_text`
    /// returning false: the whole [`Generator`] loop in one call.
    pub fn generate(
        &mut self,
        prompt: &[i32],
        sampling: &SamplingSettings,
        max_tokens: usize,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, EngineError> {
        let options = GenerateOptions {
            sampling: sampling.clone(),
            max_tokens,
            stop: Vec::new(),
            draft: DraftMode::Off,
            context_shift: None,
        };
        Generator::new(self, prompt, &options, || false)?.drive(on_text)
    }
}

/// Holds back text that may be the start of a stop string, so a stop string split across
/// tokens is still found and never shown.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what is safe to emit and whether a stop string was found (then the
    /// text from it on is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return (emit, true);
        }
        // Keep the longest tail that a stop string starts with.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep_from);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// What is still held back when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Turns token bytes into text without ever splitting a UTF-8 character.
#[derive(Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the next token; an invalid one is
            // replaced, as it will never complete.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return Some(s);
            }
        };
        if valid == 0 {
            return None;
        }
        let rest = self.pending.split_off(valid);
        let text = String::from_utf8(std::mem::replace(&mut self.pending, rest)).expect("checked");
        Some(text)
    }

    pub(crate) fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_holds_back_split_characters() {
        let mut s = Utf8Stream::default();
        let bytes = "é世".as_bytes();
        assert_eq!(s.push(&bytes[..1]), None);
        assert_eq!(s.push(&bytes[1..3]).as_deref(), Some("é"));
        assert_eq!(s.push(&bytes[3..]).as_deref(), Some("世"));
        assert_eq!(s.push(&[0xff]).as_deref(), Some("\u{fffd}"));
        assert_eq!(s.finish(), "");
    }

    /// Feeds `text` in pieces and returns what was emitted and whether a stop matched.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (emit, hit) = m.push(p);
            out += &emit;
            if hit {
                return (out, true);
            }
        }
        (out + &m.finish(), false)
    }

    #[test]
    fn stop_strings_match_across_token_boundaries_and_are_never_emitted() {
        let text = "def f():\n    return 1\n\nclass A:";
        let stop = "\n\nclass";
        // Every way of cutting the text into pieces of 1..4 characters finds the stop.
        for width in 1..=4 {
            let chars: Vec<char> = text.chars().collect();
            let pieces: Vec<String> = chars.chunks(width).map(|c| c.iter().collect()).collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(
                run(&[stop], &refs),
                ("def f():\n    return 1".to_string(), true),
                "pieces of {width}"
            );
        }
    }

    #[test]
    fn held_back_text_is_released_when_it_stops_matching() {
        let mut m = StopMatcher::new(vec!["</s>".into()]);
        assert_eq!(m.push("a <"), ("a ".to_string(), false));
        assert_eq!(m.push("/"), (String::new(), false));
        assert_eq!(m.push("x>"), ("</x>".to_string(), false));
        assert_eq!(m.push("<"), (String::new(), false));
        assert_eq!(m.finish(), "<");
        // No stops: everything passes straight through.
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
        // The earliest of several stops wins, with multi-byte text around it.
        assert_eq!(
            run(&["世界", "b"], &["é世", "界b"]),
            ("é".to_string(), true)
        );
        // An empty stop string matches nothing.
        assert_eq!(run(&[""], &["x"]), ("x".to_string(), false));
    }

    #[test]
    fn finish_reasons_follow_openai() {
        assert_eq!(StopReason::EndOfGeneration.finish_reason(), "stop");
        assert_eq!(StopReason::StopString.finish_reason(), "stop");
        assert_eq!(StopReason::TokenLimit.finish_reason(), "length");
        assert_eq!(StopReason::ContextFull.finish_reason(), "length");
    }
}
