//! Oracle test: `dscoder_quantize` must produce exactly ggml's bytes, for every type and every
//! backend this CPU can run, over adversarial and random rows.
//!
//! ggml's `ggml_quantize_chunk` covers F32, F16, BF16 and the block types; it has no Q8_K case,
//! so Q8_K is compared against `quantize_row_q8_K_ref`, which the statically linked ggml-base
//! exports (declared below).

use dscoder::llama_sys::ggml_quantize;
use dscoder_quantize::{dequantize, quantize_with, Backend, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

extern "C" {
    /// `ggml-quants.h`: `void quantize_row_q8_K_ref(const float * x, block_q8_K * y, int64_t k)`.
    fn quantize_row_q8_K_ref(x: *const f32, y: *mut std::ffi::c_void, k: i64);
}

fn ggml_bytes(ty: GgmlType, src: &[f32], n_per_row: usize) -> Vec<u8> {
    if ty != GgmlType::Q8_K {
        return ggml_quantize(ty, src, n_per_row);
    }
    let mut out = vec![0u8; src.len() / 256 * 292];
    // SAFETY: src is whole Q8_K blocks and out holds exactly their bytes.
    unsafe { quantize_row_q8_K_ref(src.as_ptr(), out.as_mut_ptr().cast(), src.len() as i64) };
    out
}

/// Adversarial and random rows; every row set is a multiple of `n` elements.
fn row_sets(n: usize, rows: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
    let len = n * rows;
    let mut r = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let mut sets: Vec<(String, Vec<f32>)> = vec![
        ("zeros".into(), vec![0.0; len]),
        (
            "signed_zeros".into(),
            (0..len)
                .map(|i| if i % 3 == 1 { -0.0 } else { 0.0 })
                .collect(),
        ),
        ("const_pos".into(), vec![0.37; len]),
        ("const_neg".into(), vec![-2.5; len]),
        ("const_one".into(), vec![1.0; len]),
        ("max_pos".into(), vec![f32::MAX; len]),
        ("max_neg".into(), vec![-f32::MAX; len]),
        (
            "max_mixed".into(),
            (0..len)
                .map(|i| if (i * 7) % 5 < 2 { -3e38 } else { 3e38 })
                .collect(),
        ),
        (
            "max_and_small".into(),
            (0..len)
                .map(|i| {
                    if i % 17 == 0 {
                        -f32::MAX
                    } else {
                        normal.sample(&mut r)
                    }
                })
                .collect(),
        ),
        (
            "outlier".into(),
            (0..len)
                .map(|i| {
                    if i % 97 == 5 {
                        1e4
                    } else {
                        normal.sample(&mut r) * 1e-3
                    }
                })
                .collect(),
        ),
        (
            "huge_outlier".into(),
            (0..len)
                .map(|i| {
                    if i % 61 == 3 {
                        3e38
                    } else {
                        normal.sample(&mut r)
                    }
                })
                .collect(),
        ),
        (
            "denormals".into(),
            (0..len)
                .map(|i| {
                    f32::from_bits(1 + (i as u32 * 7919) % 0x7f_ffff)
                        * if i % 2 == 0 { 1.0 } else { -1.0 }
                })
                .collect(),
        ),
        (
            "min_denormal".into(),
            (0..len)
                .map(|i| if i % 5 == 0 { f32::from_bits(1) } else { 0.0 })
                .collect(),
        ),
        (
            "denormal_mix".into(),
            (0..len)
                .map(|_| f32::from_bits(r.gen::<u32>() & 0x803f_ffff))
                .collect(),
        ),
        (
            "tiny".into(),
            (0..len).map(|_| normal.sample(&mut r) * 1e-30).collect(),
        ),
        (
            "alternating".into(),
            (0..len)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
        ),
        (
            "ties_halves".into(),
            (0..len).map(|i| (i % 33) as f32 * 0.5 - 8.0).collect(),
        ),
        (
            "ties_ints".into(),
            (0..len).map(|i| ((i * 37) % 64) as f32 - 32.0).collect(),
        ),
        (
            "ties_q8".into(),
            (0..len).map(|i| ((i % 255) as f32 - 127.0) * 0.5).collect(),
        ),
        (
            "positive".into(),
            (0..len).map(|_| r.gen::<f32>() + 0.5).collect(),
        ),
        (
            "negative".into(),
            (0..len).map(|_| -r.gen::<f32>() - 0.5).collect(),
        ),
        (
            "wild".into(),
            (0..len)
                .map(|_| normal.sample(&mut r) * 2f32.powi(r.gen_range(-140..127)))
                .collect(),
        ),
        (
            "quarter_grid".into(),
            (0..len)
                .map(|_| (normal.sample(&mut r) * 8.0).round() / 4.0)
                .collect(),
        ),
    ];
    for s in [1e-3f32, 1.0, 1e3] {
        sets.push((
            format!("normal_{s:e}"),
            (0..len).map(|_| normal.sample(&mut r) * s).collect(),
        ));
    }
    // Per-16 mixtures so one super-block holds zero, tiny, normal, constant and huge groups.
    sets.push((
        "mixed_groups".into(),
        (0..len)
            .map(|i| match (i / 16 + i / 256) % 6 {
                0 => 0.0,
                1 => normal.sample(&mut r) * 1e-20,
                2 => normal.sample(&mut r),
                3 => 1.0,
                4 => normal.sample(&mut r) * 1e30,
                _ => f32::from_bits(r.gen::<u32>() & 0x807f_ffff),
            })
            .collect(),
    ));
    sets
}

fn check(ty: GgmlType, n: usize, sets: &[(String, Vec<f32>)]) {
    for (kind, data) in sets {
        let want = ggml_bytes(ty, data, n);
        for backend in Backend::available() {
            for parallel in [false, true] {
                let mut got = vec![0u8; want.len()];
                quantize_with(ty, data, n, &mut got, backend, parallel).unwrap();
                if got != want {
                    let ts = ty.type_size();
                    let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                    let blk = i / ts;
                    panic!(
                        "{ty} backend={backend} parallel={parallel} rows='{kind}' n_per_row={n}: first differing \
                         block {blk} (byte {} in block)\n ours: {:02x?}\n ggml: {:02x?}\n input: {:?}",
                        i % ts,
                        &got[blk * ts..(blk + 1) * ts],
                        &want[blk * ts..(blk + 1) * ts],
                        &data[blk * ty.block_size()..(blk + 1) * ty.block_size()],
                    );
                }
            }
        }
    }
}

#[test]
fn float_types_match_ggml() {
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for n in [32, 256, 2816] {
            check(ty, n, &row_sets(n, 4, 1));
        }
    }
}

#[test]
fn legacy_types_match_ggml() {
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        for n in [32, 64, 256, 1408, 2816] {
            check(ty, n, &row_sets(n, 8, 2 + n as u64));
        }
    }
}

#[test]
fn k_quants_match_ggml() {
    for ty in [
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        for n in [256, 512, 2816] {
            check(ty, n, &row_sets(n, 6, 3 + n as u64));
        }
    }
}

/// Thousands of random blocks per type, to reach rare ties and branch cases.
#[test]
fn many_random_blocks_match_ggml() {
    let n = 2048;
    let mut r = StdRng::seed_from_u64(42);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let data: Vec<f32> = (0..n * 512)
        .map(|i| {
            let block = i / 256;
            let scale = [1e-3f32, 1.0, 3.0, 1e3][block % 4];
            let v = normal.sample(&mut r) * scale;
            // Some blocks snapped to a coarse grid (exact ties after scaling).
            if block % 7 == 3 {
                (v * 4.0).round() / 4.0
            } else {
                v
            }
        })
        .collect();
    let sets = vec![("random_mix".to_string(), data)];
    for ty in [
        GgmlType::Q3_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        check(ty, n, &sets);
    }
}

/// Our dequantizers agree with a plain decode of ggml's bytes (sanity on the shared layout).
#[test]
fn dequantize_of_ggml_bytes_is_close() {
    let n = 1024;
    let mut r = StdRng::seed_from_u64(9);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let data: Vec<f32> = (0..n * 4).map(|_| normal.sample(&mut r)).collect();
    for ty in GgmlType::QUANTIZABLE {
        let q = ggml_bytes(ty, &data, n);
        let mut back = vec![0.0f32; data.len()];
        dequantize(ty, &q, &mut back).unwrap();
        let err = data
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / data.len() as f32;
        // 3 bits per weight leave ~0.15 of unit variance; the others are under 0.12.
        let bound = if ty == GgmlType::Q3_K { 0.2 } else { 0.15 };
        assert!(err.sqrt() < bound, "{ty}: rms error {}", err.sqrt());
    }
}

#[test]
fn iq4_types_match_ggml() {
    for (ty, sizes) in [
        (GgmlType::IQ4_NL, &[32usize, 256, 1408][..]),
        (GgmlType::IQ4_XS, &[256, 2816][..]),
    ] {
        for &n in sizes {
            check(ty, n, &row_sets(n, 6, 5 + n as u64));
        }
    }
}

/// With an importance vector (ggml's `quant_weights`): positive, varied over eight octaves, with
/// some exact zeros (columns never used), and one vector of all ones.
#[test]
fn weighted_kernels_match_ggml_with_an_importance_vector() {
    use dscoder::llama_sys::ggml_quantize_weighted;
    use dscoder_quantize::quantize_weighted;
    let mut r = StdRng::seed_from_u64(7);
    for (ty, n) in [
        (GgmlType::IQ4_NL, 1408),
        (GgmlType::IQ4_XS, 2816),
        (GgmlType::IQ4_XS, 256),
        (GgmlType::Q3_K, 2816),
        (GgmlType::Q3_K, 256),
    ] {
        let varied: Vec<f32> = (0..n)
            .map(|i| {
                if i % 29 == 0 {
                    0.0
                } else {
                    2f32.powi(r.gen_range(-4..4)) * r.gen::<f32>()
                }
            })
            .collect();
        for weights in [varied, vec![1.0; n]] {
            for (kind, data) in row_sets(n, 4, 11 + n as u64) {
                let want = ggml_quantize_weighted(ty, &data, n, &weights);
                for backend in Backend::available() {
                    let mut got = vec![0u8; want.len()];
                    quantize_weighted(ty, &data, n, &weights, &mut got, backend).unwrap();
                    if got != want {
                        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                        panic!("{ty} weighted, {backend}, rows '{kind}', n {n}: first difference at byte {i}");
                    }
                }
            }
        }
    }
}

#[test]
fn iq4_and_q3k_decoding_matches_ggml() {
    let mut r = StdRng::seed_from_u64(9);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let data: Vec<f32> = (0..2816 * 4).map(|_| normal.sample(&mut r)).collect();
    for ty in [GgmlType::IQ4_NL, GgmlType::IQ4_XS, GgmlType::Q3_K] {
        let q = ggml_quantize(ty, &data, 2816);
        let (mut ours, mut theirs) = (vec![0f32; data.len()], vec![0f32; data.len()]);
        dequantize(ty, &q, &mut ours).unwrap();
        assert!(dscoder::llama_sys::ggml_dequantize(ty, &q, &mut theirs));
        assert!(
            ours.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ty}"
        );
    }
}
