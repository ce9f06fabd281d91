//! Prompt processing and generation speed, measured as llama-bench measures them.

use super::{EngineError, Session};

/// Prompt processing and generation speed, as llama-bench measures them.
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub pp_tokens: usize,
    pub pp_tokens_per_second: f64,
    pub tg_tokens: usize,
    pub tg_tokens_per_second: f64,
}

impl Session<'_> {
    /// Measures like `llama-bench -p pp -n tg`: prompt processing (`pp` tokens in batches) and
    /// generation (`tg` tokens one at a time) are separate tests, each from an empty cache, and
    /// the clock stops only when the back-end has finished (a GPU runs asynchronously).
    pub fn bench(&mut self, pp: usize, tg: usize) -> Result<BenchResult, EngineError> {
        let n_vocab = self.engine.n_vocab().max(2) as i32;
        let prompt = filler(n_vocab, pp, 0);
        self.clear();
        let t = std::time::Instant::now();
        self.eval(&prompt, |pos| pos + 1 == pp, |_, _| {}, &|| false)?;
        self.ctx.synchronize();
        let pp_s = t.elapsed().as_secs_f64();
        self.clear();
        let t = std::time::Instant::now();
        for i in 0..tg {
            let token = 1 + (i as i32 * 104729) % (n_vocab - 1);
            self.eval(&[token], |_| true, |_, _| {}, &|| false)?;
            self.ctx.synchronize();
        }
        let tg_s = t.elapsed().as_secs_f64();
        self.clear();
        Ok(BenchResult {
            pp_tokens: pp,
            pp_tokens_per_second: pp as f64 / pp_s.max(1e-9),
            tg_tokens: tg,
            tg_tokens_per_second: tg as f64 / tg_s.max(1e-9),
        })
    }
}

/// `n` arbitrary but fixed token ids for timing runs (skipping id 0 in case it is special);
/// another `salt` gives other ids.
fn filler(n_vocab: i32, n: usize, salt: i32) -> Vec<i32> {
    (0..n as i32)
        .map(|i| 1 + (i.wrapping_mul(7919) + salt.wrapping_mul(104729)) % (n_vocab - 1))
        .collect()
}

/// The cost of verifying a draft: one decode of `batch` new tokens (logits at every position)
/// after a context of `depth` tokens.
#[derive(Debug, Clone)]
pub struct VerifyCost {
    pub depth: usize,
    /// (batch size, mean seconds per decode, sample standard deviation), in the order asked.
    pub rows: Vec<(usize, f64, f64)>,
}

impl Session<'_> {
    /// Times decodes of each batch size after a `depth`-token context, `reps` times each
    /// (interleaved, so drift in the machine's speed hits every size alike).
    pub fn verify_cost(
        &mut self,
        depth: usize,
        sizes: &[usize],
        reps: usize,
    ) -> Result<VerifyCost, EngineError> {
        let n_vocab = self.engine.n_vocab().max(2) as i32;
        let ids = |n: usize, salt: i32| filler(n_vocab, n, salt);
        self.clear();
        self.eval(&ids(depth, 0), |pos| pos + 1 == depth, |_, _| {}, &|| false)?;
        let mut times = vec![Vec::new(); sizes.len()];
        for rep in 0..=reps {
            for (i, &b) in sizes.iter().enumerate() {
                let t = std::time::Instant::now();
                self.eval(&ids(b, 1 + rep as i32), |_| true, |_, _| {}, &|| false)?;
                self.ctx.synchronize();
                let s = t.elapsed().as_secs_f64();
                self.truncate(depth)?;
                // The first round warms caches and is not counted.
                if rep > 0 {
                    times[i].push(s);
                }
            }
        }
        self.clear();
        Ok(VerifyCost {
            depth,
            rows: sizes
                .iter()
                .zip(&times)
                .map(|(&b, t)| {
                    let (m, sd) = mean_sd(t);
                    (b, m, sd)
                })
                .collect(),
        })
    }
}

impl VerifyCost {
    /// A markdown table: time per decode, relative to one token, and the break-even
    /// acceptance (drafted tokens per verify needed to beat plain decoding).
    pub fn render(&self, model: &str) -> String {
        let single = self
            .rows
            .iter()
            .find(|r| r.0 == 1)
            .map(|r| r.1)
            .unwrap_or(f64::NAN);
        let mut out = format!(
            "verify cost of {model} after {} tokens\n| batch | ms per decode | × one token | drafted tokens to break even |\n|---:|---:|---:|---:|\n",
            self.depth
        );
        for &(b, m, sd) in &self.rows {
            let ratio = m / single;
            // A verify of b tokens yields accepted + 1 tokens; plain decoding yields `ratio`
            // tokens in the same time, so it pays once accepted > ratio - 1.
            let _ = std::fmt::Write::write_fmt(
                &mut out,
                format_args!(
                    "| {b} | {:.2} ± {:.2} | {ratio:.2} | {:.2} |\n",
                    m * 1e3,
                    sd * 1e3,
                    (ratio - 1.0).max(0.0)
                ),
            );
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "depth": self.depth,
            "rows": self.rows.iter().map(|&(b, m, sd)| serde_json::json!({"batch": b, "seconds": m, "sd": sd})).collect::<Vec<_>>(),
        })
    }
}

/// Repeated bench runs summarised as llama-bench reports them: mean and sample standard
/// deviation of each test's tokens per second.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub model: String,
    pub pp_tokens: usize,
    pub tg_tokens: usize,
    /// (mean, sd) tokens per second.
    pub pp: (f64, f64),
    pub tg: (f64, f64),
    pub runs: usize,
}

/// Mean and sample standard deviation (llama-bench's).
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let sd =
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64).sqrt();
    (mean, sd)
}

impl BenchReport {
    pub fn of(model: &str, runs: &[BenchResult]) -> BenchReport {
        let pp: Vec<f64> = runs.iter().map(|r| r.pp_tokens_per_second).collect();
        let tg: Vec<f64> = runs.iter().map(|r| r.tg_tokens_per_second).collect();
        BenchReport {
            model: model.to_string(),
            pp_tokens: runs.first().map_or(0, |r| r.pp_tokens),
            tg_tokens: runs.first().map_or(0, |r| r.tg_tokens),
            pp: mean_sd(&pp),
            tg: mean_sd(&tg),
            runs: runs.len(),
        }
    }

    /// llama-bench's markdown table.
    pub fn render(&self) -> String {
        format!(
            "| model | test | t/s |\n|---|---|---:|\n| {m} | pp{} | {:.2} ± {:.2} |\n| {m} | tg{} | {:.2} ± {:.2} |\n",
            self.pp_tokens,
            self.pp.0,
            self.pp.1,
            self.tg_tokens,
            self.tg.0,
            self.tg.1,
            m = self.model
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "runs": self.runs,
            "pp": { "tokens": self.pp_tokens, "tokens_per_second": self.pp.0, "sd": self.pp.1 },
            "tg": { "tokens": self.tg_tokens, "tokens_per_second": self.tg.0, "sd": self.tg.1 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_mean_and_sample_sd() {
        let r = |pp, tg| BenchResult {
            pp_tokens: 512,
            pp_tokens_per_second: pp,
            tg_tokens: 128,
            tg_tokens_per_second: tg,
        };
        let report = BenchReport::of("m", &[r(10.0, 1.0), r(20.0, 3.0)]);
        assert_eq!(report.pp.0, 15.0);
        assert!((report.pp.1 - 50f64.sqrt()).abs() < 1e-12);
        assert_eq!(report.tg, (2.0, 2f64.sqrt()));
        assert!(report.render().contains("| m | pp512 | 15.00 ± 7.07 |"));
        assert_eq!(report.to_json()["tg"]["tokens"], 128);
    }
}
