//! Draft-free speculative decoding: prompt lookup, and when a draft pays.
//!
//! A coding assistant's output often repeats its input (an edited function, a renamed variable).
//! Prompt lookup drafts the next tokens by finding the last few tokens earlier in the context and
//! proposing what followed them there; the generator then evaluates the pending token and the
//! draft in one batch and keeps the longest prefix the model itself would have produced.
//!
//! Verifying is not free on a mixture of experts: a batch of k tokens reads the union of the
//! experts they route to, so it costs more than one decode step. [`DraftPolicy`] therefore
//! measures both sides as it runs (the time of each decode by batch size, and how many drafted
//! tokens the model accepts, including drafts it only checked in the shadow, without spending a
//! decode) and drafts only as far as the expected tokens per second improve.

use std::fmt;
use std::str::FromStr;

/// The longest draft verified in one batch.
pub const MAX_DRAFT: usize = 16;

/// The n-gram sizes prompt lookup tries, longest first.
const NGRAM_MAX: usize = 4;
const NGRAM_MIN: usize = 2;

/// `--draft off|auto|N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DraftMode {
    /// Plain decoding.
    Off,
    /// Draft when and as far as the measured cost and acceptance say it pays.
    #[default]
    Auto,
    /// Always verify up to N drafted tokens when the context offers a draft.
    Fixed(usize),
}

impl FromStr for DraftMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "0" => Ok(DraftMode::Off),
            "auto" => Ok(DraftMode::Auto),
            n => match n.parse::<usize>() {
                Ok(n) if (1..=MAX_DRAFT).contains(&n) => Ok(DraftMode::Fixed(n)),
                _ => Err(format!(
                    "'{s}' is not a draft setting (expected off, auto or a length from 1 to {MAX_DRAFT})"
                )),
            },
        }
    }
}

impl fmt::Display for DraftMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DraftMode::Off => f.write_str("off"),
            DraftMode::Auto => f.write_str("auto"),
            DraftMode::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// The tokens that followed the most recent earlier occurrence of the sequence's last n tokens
/// (n from 4 down to 2), at most `max_len` of them; empty when nothing matches. The sequence is
/// `context` followed by `last` (the cached tokens and the pending one), read in place: this runs
/// before every decode, and the context can be the whole KV cache.
pub fn lookup(context: &[i32], last: i32, max_len: usize) -> Vec<i32> {
    let len = context.len() + 1;
    let at = |i: usize| if i < context.len() { context[i] } else { last };
    if max_len == 0 {
        return Vec::new();
    }
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if len <= n {
            continue;
        }
        let tail = len - n;
        // Most recent first: nearby text is the likeliest to be copied next.
        for start in (0..tail).rev() {
            if (0..n).all(|j| at(start + j) == at(tail + j)) {
                let from = start + n;
                return (from..(from + max_len).min(len)).map(at).collect();
            }
        }
    }
    Vec::new()
}

/// How far to draft, from what has been measured so far in this generation.
#[derive(Clone, Debug)]
pub struct DraftPolicy {
    mode: DraftMode,
    /// Decayed counts of drafted tokens the model accepted, and of drafts it cut short: the
    /// geometric model's estimate of the chance that the next drafted token is accepted.
    accepted: f64,
    rejected: f64,
    /// Seconds of a one-token decode (moving average).
    single: Option<f64>,
    /// Extra cost of each additional token in a batch, as a fraction of a one-token decode.
    slope: f64,
}

/// Weight of old observations against a new one.
const DECAY: f64 = 0.9;
/// Before anything is measured: a batch of b costs 1 + 0.3 (b - 1) single decodes, and half of
/// the drafted tokens are accepted; both are replaced by measurements within a few steps.
const PRIOR_SLOPE: f64 = 0.3;
/// A draft must promise this much more speed than plain decoding (noise in the timings
/// should not make the policy flap).
const MARGIN: f64 = 1.05;

impl DraftPolicy {
    pub fn new(mode: DraftMode) -> DraftPolicy {
        DraftPolicy {
            mode,
            accepted: 1.0,
            rejected: 1.0,
            single: None,
            slope: PRIOR_SLOPE,
        }
    }

    pub fn mode(&self) -> DraftMode {
        self.mode
    }

    /// The estimated chance that a drafted token is accepted, given the ones before it were.
    pub fn acceptance(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    /// Expected tokens per second of verifying `k` drafted tokens, relative to plain decoding.
    pub fn expected_gain(&self, k: usize) -> f64 {
        let a = self.acceptance().min(0.999);
        let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
        tokens / (1.0 + self.slope * k as f64)
    }

    /// How many of `available` drafted tokens to verify now; 0 means decode plainly.
    pub fn length(&self, available: usize) -> usize {
        let available = available.min(MAX_DRAFT);
        match self.mode {
            DraftMode::Off => 0,
            DraftMode::Fixed(n) => n.min(available),
            DraftMode::Auto => {
                let mut best = (0, MARGIN);
                for k in 1..=available {
                    let g = self.expected_gain(k);
                    if g > best.1 {
                        best = (k, g);
                    }
                }
                best.0
            }
        }
    }

    /// A decode of `n_tokens` took `seconds`.
    pub fn observe_decode(&mut self, n_tokens: usize, seconds: f64) {
        if n_tokens == 0 || !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        if n_tokens == 1 {
            self.single = Some(match self.single {
                Some(s) => DECAY * s + (1.0 - DECAY) * seconds,
                None => seconds,
            });
            return;
        }
        if let Some(single) = self.single {
            let slope = ((seconds / single - 1.0) / (n_tokens - 1) as f64).max(0.0);
            self.slope = DECAY * self.slope + (1.0 - DECAY) * slope;
        }
    }

    /// Of `offered` drafted tokens, the model accepted the first `accepted`.
    pub fn observe_draft(&mut self, offered: usize, accepted: usize) {
        if offered == 0 {
            return;
        }
        self.accepted = DECAY * self.accepted + accepted as f64;
        self.rejected = DECAY * self.rejected + f64::from(u8::from(accepted < offered));
    }
}

/// A draft that was not verified, checked against the tokens the model then produced: how
/// `auto` keeps measuring acceptance while drafting does not pay, at no cost.
#[derive(Clone, Debug, Default)]
pub struct ShadowDraft {
    tokens: Vec<i32>,
    matched: usize,
}

impl ShadowDraft {
    pub fn new(tokens: &[i32]) -> ShadowDraft {
        ShadowDraft {
            tokens: tokens.to_vec(),
            matched: 0,
        }
    }

    /// The next generated token; returns `(offered, accepted)` once the draft is settled.
    pub fn push(&mut self, token: i32) -> Option<(usize, usize)> {
        if self.tokens.get(self.matched) == Some(&token) {
            self.matched += 1;
            (self.matched == self.tokens.len()).then_some((self.tokens.len(), self.matched))
        } else {
            Some((self.tokens.len(), self.matched))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lookup` over a whole sequence, split as the generator splits it.
    fn look(h: &[i32], max_len: usize) -> Vec<i32> {
        lookup(&h[..h.len() - 1], h[h.len() - 1], max_len)
    }

    #[test]
    fn lookup_finds_the_most_recent_longest_match() {
        // ... 1 2 3 [4 5] ... 1 2 3 [9 9] ... 1 2 3 → the most recent 3-gram match wins.
        let h = [1, 2, 3, 4, 5, 0, 1, 2, 3, 9, 9, 7, 1, 2, 3];
        assert_eq!(look(&h, 2), [9, 9]);
        assert_eq!(look(&h, 10), [9, 9, 7, 1, 2, 3]);
        // A longer n-gram is preferred over a more recent shorter one.
        let h = [5, 6, 7, 8, 1, 6, 7, 2, 5, 6, 7];
        assert_eq!(look(&h, 1), [8]);
        // Nothing repeats: no draft; a zero budget: no draft; one token: no draft.
        assert!(look(&[1, 2, 3, 4], 4).is_empty());
        assert!(look(&[1, 2, 1, 2], 0).is_empty());
        assert!(lookup(&[], 4, 4).is_empty());
    }

    #[test]
    fn draft_modes_parse() {
        assert_eq!("off".parse(), Ok(DraftMode::Off));
        assert_eq!("AUTO".parse(), Ok(DraftMode::Auto));
        assert_eq!("8".parse(), Ok(DraftMode::Fixed(8)));
        assert_eq!("0".parse(), Ok(DraftMode::Off));
        for bad in ["17", "-1", "x", ""] {
            assert!(bad.parse::<DraftMode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_drafts_only_while_it_pays() {
        let mut p = DraftPolicy::new(DraftMode::Auto);
        // Verification nearly free, everything accepted: draft as far as offered.
        p.observe_decode(1, 0.010);
        for _ in 0..40 {
            p.observe_decode(9, 0.011);
            p.observe_draft(8, 8);
        }
        assert_eq!(p.length(8), 8);
        // Verification as dear as decoding each token: never worth it.
        for _ in 0..80 {
            p.observe_decode(9, 0.090);
        }
        assert_eq!(p.length(8), 0);
        // Cheap again but nothing accepted: off.
        for _ in 0..80 {
            p.observe_decode(9, 0.011);
            p.observe_draft(8, 0);
        }
        assert_eq!(p.length(8), 0);
        assert_eq!(DraftPolicy::new(DraftMode::Off).length(8), 0);
        assert_eq!(DraftPolicy::new(DraftMode::Fixed(4)).length(8), 4);
        assert_eq!(DraftPolicy::new(DraftMode::Fixed(4)).length(2), 2);
    }

    #[test]
    fn shadow_drafts_settle_on_the_first_miss_or_the_end() {
        let mut s = ShadowDraft::new(&[1, 2, 3]);
        assert_eq!(s.push(1), None);
        assert_eq!(s.push(9), Some((3, 1)));
        let mut s = ShadowDraft::new(&[1, 2]);
        assert_eq!(s.push(1), None);
        assert_eq!(s.push(2), Some((2, 2)));
    }
}
