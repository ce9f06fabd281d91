//! Sampling settings and the llama.cpp sampler chain they build.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::Session;

/// A sampler chain with its state (penalty history, random generator).
pub struct Sampler {
    chain: LlamaSampler,
}

impl Sampler {
    /// The chain for `settings`; `history` seeds the repeat penalty with the tokens already in
    /// the context.
    pub fn new(settings: &SamplingSettings, n_vocab: usize, history: &[i32]) -> Sampler {
        Sampler {
            chain: settings.sampler(n_vocab as i32, history),
        }
    }

    /// Draws a token from the logits at batch index `i` of the session's last decode (`None`:
    /// the last row), and records it in the chain's history.
    pub fn sample(&mut self, session: &Session<'_>, i: Option<usize>) -> i32 {
        let idx = i.map_or_else(|| session.last_output().unwrap_or(-1), |i| i as i32);
        self.chain.sample(&session.ctx, idx).0
    }
}

/// The range each float knob accepts, one table for the command line and the REPL's `/set` (the
/// HTTP API keeps OpenAI's narrower temperature range): `name` as the flag spells it, without
/// dashes (`temp`, `top_p`, `min_p`, `repeat_penalty`). NaN and infinities are refused.
pub fn check_knob(name: &str, v: f32) -> Result<f32, String> {
    // (low, high, low end excluded)
    let (lo, hi, open) = match name {
        "temp" | "temperature" => (0.0, 5.0, false),
        "top_p" => (0.0, 1.0, false),
        "min_p" => (0.0, 1.0, false),
        "repeat_penalty" => (0.0, 10.0, true),
        _ => return Ok(v),
    };
    let ok = v.is_finite() && v <= hi && if open { v > lo } else { v >= lo };
    if ok {
        Ok(v)
    } else {
        let low = if open {
            format!("above {lo}")
        } else {
            format!("{lo}")
        };
        Err(format!("{name}: {v} is outside the range {low} to {hi}"))
    }
}

/// The usual knobs, with llama.cpp's defaults. `temperature <= 0` is greedy and deterministic.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingSettings {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: i32,
    pub seed: u32,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        SamplingSettings {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x00D5_C0DE,
        }
    }
}

impl SamplingSettings {
    pub fn greedy() -> Self {
        SamplingSettings {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// The chain: repeat penalty, then greedy, or top-k → top-p → min-p → temperature → draw.
    /// `history` seeds the penalty with the tokens already in the context.
    fn sampler(&self, n_vocab: i32, history: &[i32]) -> LlamaSampler {
        let mut chain = Vec::new();
        if self.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(
                n_vocab,
                self.repeat_last_n,
                self.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        if self.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if self.top_k > 0 {
                chain.push(LlamaSampler::top_k(self.top_k));
            }
            if self.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(self.min_p, 1));
            }
            chain.push(LlamaSampler::temp(self.temperature));
            chain.push(LlamaSampler::dist(self.seed));
        }
        let mut s = LlamaSampler::chain_simple(chain);
        let start = history
            .len()
            .saturating_sub(self.repeat_last_n.max(0) as usize);
        s.accept_many(history[start..].iter().map(|&t| LlamaToken(t)));
        s
    }
}
