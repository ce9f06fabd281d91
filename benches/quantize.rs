//! Quantization throughput: dscoder-quantize vs ggml's `ggml_quantize_chunk`.
//!
//! `cargo bench --bench quantize` prints a markdown table of input MB/s (f32 bytes) per type:
//! single thread (ours with `Backend::detect()`, `parallel = false`, vs one ggml call) and all
//! threads (ours `quantize`, vs ggml called from rayon over chunks of rows, like llama-quantize).
//! Every timed output is asserted byte-identical to ggml's before its speed is reported.
//! Set `QBENCH_ROWS` to change the row count (default 4096 rows of 2048) and `QBENCH_TYPES`
//! (comma-separated, e.g. `q4_K,q8_0`) to run only some types.

use std::time::{Duration, Instant};

use dscoder::llama_sys::ggml_quantize_into;
use dscoder_quantize::{quantize, quantize_with, Backend, GgmlType};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

const N_PER_ROW: usize = 2048;

/// Best wall time of `f` over repetitions until ~`budget` has elapsed (at least 2 runs).
fn best_time(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 2 || (start.elapsed() < budget && runs < 10) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

fn main() {
    let rows: usize = std::env::var("QBENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096);
    let mut rng = StdRng::seed_from_u64(1);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let data: Vec<f32> = (0..rows * N_PER_ROW)
        .map(|_| normal.sample(&mut rng))
        .collect();
    let backend = Backend::detect();
    let threads = rayon::current_num_threads();
    println!(
        "{rows} rows x {N_PER_ROW} f32 (random normal), backend {backend}, {threads} threads; MB/s of f32 input\n"
    );
    println!("| type | ggml 1T | ours 1T | 1T ratio | ggml {threads}T | ours {threads}T | {threads}T ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");

    let types = [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q3_K,
        GgmlType::IQ3_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ2_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::F16,
        GgmlType::BF16,
    ];
    let only: Option<Vec<GgmlType>> = std::env::var("QBENCH_TYPES").ok().map(|s| {
        s.split(',')
            .map(|t| t.parse().expect("type name"))
            .collect()
    });
    for ty in types {
        if only.as_ref().is_some_and(|o| !o.contains(&ty)) {
            continue;
        }
        let row_bytes = ty.row_bytes(N_PER_ROW).unwrap();
        let mut want = vec![0u8; rows * row_bytes];
        let mut got = vec![0u8; rows * row_bytes];
        // The slow K-quants get a quarter of the rows single-threaded to keep the run short.
        let single_rows = if ty.block_size() == 256 || ty == GgmlType::IQ4_NL {
            rows / 4
        } else {
            rows
        };
        let (s_src, s_len) = (&data[..single_rows * N_PER_ROW], single_rows * row_bytes);
        let budget = Duration::from_millis(1500);

        let t_g1 = best_time(budget, || {
            ggml_quantize_into(ty, s_src, N_PER_ROW, &mut want[..s_len])
        });
        let t_o1 = best_time(budget, || {
            quantize_with(ty, s_src, N_PER_ROW, &mut got[..s_len], backend, false).unwrap()
        });
        assert!(
            got[..s_len] == want[..s_len],
            "{ty}: single-thread bytes differ from ggml"
        );

        let chunk_rows = 16;
        let t_gn = best_time(budget, || {
            data.par_chunks(chunk_rows * N_PER_ROW)
                .zip(want.par_chunks_mut(chunk_rows * row_bytes))
                .for_each(|(s, d)| ggml_quantize_into(ty, s, N_PER_ROW, d));
        });
        got.fill(0);
        let t_on = best_time(budget, || quantize(ty, &data, N_PER_ROW, &mut got).unwrap());
        assert!(got == want, "{ty}: parallel bytes differ from ggml");

        let (sb, nb) = (single_rows * N_PER_ROW * 4, rows * N_PER_ROW * 4);
        let (g1, o1, gn, on) = (
            mbps(sb, t_g1),
            mbps(sb, t_o1),
            mbps(nb, t_gn),
            mbps(nb, t_on),
        );
        println!(
            "| {ty} | {g1:.0} | {o1:.0} | {:.1}x | {gn:.0} | {on:.0} | {:.1}x |",
            o1 / g1,
            on / gn
        );
    }

    // With an importance vector (what `quantize --imatrix` runs), single-threaded.
    let weights: Vec<f32> = (0..N_PER_ROW)
        .map(|i| 0.25 + (i % 13) as f32 * 0.3)
        .collect();
    println!("\nwith an importance vector, 1 thread:\n");
    println!("| type | ggml 1T | ours 1T | ratio |");
    println!("|---|---:|---:|---:|");
    for ty in [
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ3_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ] {
        if only.as_ref().is_some_and(|o| !o.contains(&ty)) {
            continue;
        }
        let n = rows / 4;
        let src = &data[..n * N_PER_ROW];
        let budget = Duration::from_millis(1500);
        let mut want = Vec::new();
        let t_g = best_time(budget, || {
            want = dscoder::llama_sys::ggml_quantize_weighted(ty, src, N_PER_ROW, &weights)
        });
        let mut got = vec![0u8; want.len()];
        // One thread: rayon inside quantize_weighted, so run it in a one-thread pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let t_o = best_time(budget, || {
            pool.install(|| {
                dscoder_quantize::quantize_weighted(ty, src, N_PER_ROW, &weights, &mut got, backend)
                    .unwrap()
            })
        });
        assert!(got == want, "{ty}: weighted bytes differ from ggml");
        let b = n * N_PER_ROW * 4;
        println!(
            "| {ty} | {:.0} | {:.0} | {:.1}x |",
            mbps(b, t_g),
            mbps(b, t_o),
            t_g.as_secs_f64() / t_o.as_secs_f64()
        );
    }
}
