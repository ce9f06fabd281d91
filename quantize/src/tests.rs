//! Cross-path tests: every available SIMD backend must equal the scalar reference bytewise.

use crate::*;

/// Small deterministic PRNG (xorshift64*) with a Box–Muller normal.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// Named adversarial inputs, each a multiple of 256 elements long.
pub(crate) fn adversarial(n: usize) -> Vec<(String, Vec<f32>)> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut v: Vec<(String, Vec<f32>)> = vec![
        ("zeros".into(), vec![0.0; n]),
        (
            "neg_zeros".into(),
            (0..n)
                .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
                .collect(),
        ),
        ("const_pos".into(), vec![0.37; n]),
        ("const_neg".into(), vec![-2.5; n]),
        ("max_pos".into(), vec![f32::MAX; n]),
        ("max_neg".into(), vec![-f32::MAX; n]),
        (
            "max_mixed".into(),
            (0..n)
                .map(|i| if (i * 7) % 5 < 2 { -3e38 } else { 3e38 })
                .collect(),
        ),
        (
            "denormals".into(),
            (0..n)
                .map(|i| {
                    f32::from_bits(1 + (i as u32 * 7919) % 0x7f_ffff)
                        * if i % 2 == 0 { 1.0 } else { -1.0 }
                })
                .collect(),
        ),
        (
            "min_denormal".into(),
            (0..n)
                .map(|i| if i % 5 == 0 { f32::from_bits(1) } else { 0.0 })
                .collect(),
        ),
        ("tiny".into(), (0..n).map(|_| r.normal() * 1e-30).collect()),
        (
            "alternating".into(),
            (0..n)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
        ),
        (
            "ties".into(),
            (0..n).map(|i| (i % 33) as f32 * 0.5 - 8.0).collect(),
        ),
        (
            "ints".into(),
            (0..n).map(|i| ((i * 37) % 64) as f32 - 32.0).collect(),
        ),
        (
            "outlier".into(),
            (0..n)
                .map(|i| if i % 97 == 5 { 1e4 } else { r.normal() * 1e-3 })
                .collect(),
        ),
        (
            "huge_outlier".into(),
            (0..n)
                .map(|i| if i % 61 == 3 { 3e38 } else { r.normal() })
                .collect(),
        ),
        (
            "positive".into(),
            (0..n).map(|_| r.uniform() + 0.5).collect(),
        ),
        (
            "negative".into(),
            (0..n).map(|_| -r.uniform() - 0.5).collect(),
        ),
    ];
    for &s in &[1e-3f32, 1.0, 1e3] {
        v.push((
            format!("normal_{s:e}"),
            (0..n).map(|_| r.normal() * s).collect(),
        ));
    }
    // Random magnitudes across the whole exponent range.
    v.push((
        "wild".into(),
        (0..n)
            .map(|_| r.normal() * 2f32.powi((r.next_u64() % 250) as i32 - 125))
            .collect(),
    ));
    // Per-block mixtures of the above, to hit mixed branches inside one super-block.
    let mut mix = Vec::with_capacity(n);
    for i in 0..n {
        let g = (i / 16) % 6;
        mix.push(match g {
            0 => 0.0,
            1 => r.normal() * 1e-20,
            2 => r.normal(),
            3 => 1.0,
            4 => r.normal() * 1e30,
            _ => f32::from_bits(r.next_u64() as u32 & 0x807f_ffff),
        });
    }
    v.push(("mixed".into(), mix));
    v
}

fn quantize_vec(ty: GgmlType, src: &[f32], n: usize, backend: Backend, parallel: bool) -> Vec<u8> {
    quantize_res(ty, src, n, None, backend, parallel).unwrap()
}

/// The bytes, or the first block ggml would abort on (IQ3_S's and IQ3_XXS's `Unencodable`); with `weights`,
/// through `quantize_weighted`.
fn quantize_res(
    ty: GgmlType,
    src: &[f32],
    n: usize,
    weights: Option<&[f32]>,
    backend: Backend,
    parallel: bool,
) -> Result<Vec<u8>, usize> {
    let mut out = vec![0u8; src.len() / n * ty.row_bytes(n).unwrap()];
    let r = match weights {
        Some(w) => quantize_weighted(ty, src, n, w, &mut out, backend),
        None => quantize_with(ty, src, n, &mut out, backend, parallel),
    };
    match r {
        Ok(()) => Ok(out),
        Err(QuantizeError::Unencodable { index, .. }) => Err(index),
        Err(e) => panic!("{ty}: {e}"),
    }
}

fn first_difference(
    ty: GgmlType,
    got: &Result<Vec<u8>, usize>,
    want: &Result<Vec<u8>, usize>,
) -> String {
    match (got, want) {
        (Ok(g), Ok(w)) => {
            let blk = g.iter().zip(w).position(|(a, b)| a != b).unwrap() / ty.type_size();
            format!("first differing block {blk}")
        }
        (g, w) => format!(
            "refused blocks: got {:?}, want {:?}",
            g.as_ref().err(),
            w.as_ref().err()
        ),
    }
}

#[test]
fn every_backend_matches_scalar() {
    let n = 1024;
    for (name, data) in adversarial(n * 4) {
        for ty in GgmlType::QUANTIZABLE {
            let want = quantize_res(ty, &data, n, None, Backend::Scalar, false);
            // Only the IQ3 grids refuse blocks (those ggml aborts on).
            let grid = matches!(ty, GgmlType::IQ3_S | GgmlType::IQ3_XXS | GgmlType::IQ2_S);
            assert!(want.is_ok() || grid, "{ty} '{name}'");
            for b in Backend::available() {
                for par in [false, true] {
                    let got = quantize_res(ty, &data, n, None, b, par);
                    if got != want {
                        let d = first_difference(ty, &got, &want);
                        panic!("{ty} {b} parallel={par} '{name}': {d}");
                    }
                }
            }
        }
    }
}

#[test]
fn weighted_backends_match_scalar() {
    let n = 512;
    let mut r = Rng(99);
    let varied: Vec<f32> = (0..n)
        .map(|i| if i % 23 == 0 { 0.0 } else { r.uniform() * 4.0 })
        .collect();
    for weights in [varied, vec![1.0; n]] {
        for (name, data) in adversarial(n * 4) {
            // IQ2_XXS and IQ2_XS are only quantized with an importance vector.
            let iq2 = [GgmlType::IQ2_XXS, GgmlType::IQ2_XS];
            for ty in GgmlType::QUANTIZABLE.into_iter().chain(iq2) {
                if !has_weighted_quantizer(ty) {
                    continue;
                }
                let want = quantize_res(ty, &data, n, Some(&weights), Backend::Scalar, false);
                for b in Backend::available() {
                    let got = quantize_res(ty, &data, n, Some(&weights), b, true);
                    if got != want {
                        let d = first_difference(ty, &got, &want);
                        panic!("{ty} weighted {b} '{name}': {d}");
                    }
                }
            }
        }
    }
}

#[test]
fn random_blocks_match_scalar() {
    // Many random blocks at assorted scales to reach rare ties and branches.
    let mut r = Rng(12345);
    let n = 256;
    let data: Vec<f32> = (0..n * 600)
        .map(|i| {
            let scale = [1e-3, 1.0, 7.0, 1e3][(i / 256) % 4];
            let v = r.normal() * scale;
            if i % 256 < 40 && (i / 256) % 5 == 0 {
                (v * 4.0).round() / 4.0
            } else {
                v
            }
        })
        .collect();
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::Q3_K,
        GgmlType::IQ3_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ2_S,
    ] {
        let want = quantize_vec(ty, &data, n, Backend::Scalar, false);
        for b in Backend::available() {
            assert!(quantize_vec(ty, &data, n, b, true) == want, "{ty} {b}");
        }
    }
}

#[test]
fn round_trip_error_is_small() {
    let mut r = Rng(7);
    let n = 4096;
    let data: Vec<f32> = (0..n).map(|_| r.normal()).collect();
    // Relative RMS error bounds (generous; typical values are about half).
    let bounds = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 5e-3),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q8_K, 0.01),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_0, 0.06),
        (GgmlType::Q5_1, 0.06),
        (GgmlType::Q5_K, 0.06),
        (GgmlType::Q4_0, 0.12),
        (GgmlType::Q4_1, 0.12),
        (GgmlType::Q4_K, 0.12),
        (GgmlType::IQ4_NL, 0.12),
        (GgmlType::IQ4_XS, 0.12),
        (GgmlType::Q3_K, 0.25),
        (GgmlType::IQ3_S, 0.25),
        (GgmlType::IQ3_XXS, 0.3),
        (GgmlType::IQ2_S, 0.4),
    ];
    for (ty, bound) in bounds {
        let q = quantize_vec(ty, &data, n, Backend::detect(), true);
        let mut back = vec![0.0f32; n];
        dequantize(ty, &q, &mut back).unwrap();
        let err: f64 = data
            .iter()
            .zip(&back)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
        let norm: f64 = data.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
        let rel = (err / norm).sqrt();
        assert!(rel <= bound, "{ty}: relative rms error {rel}");
    }
}

#[test]
fn non_finite_is_reported_with_position() {
    let mut data = vec![1.0f32; 512 * 3];
    data[512 + 5] = f32::NAN;
    data[1400] = f32::INFINITY;
    for par in [false, true] {
        let mut out = vec![0u8; 3 * GgmlType::Q4_K.row_bytes(512).unwrap()];
        let e =
            quantize_with(GgmlType::Q4_K, &data, 512, &mut out, Backend::Scalar, par).unwrap_err();
        match e {
            QuantizeError::NonFinite { index, .. } => assert_eq!(index, 517),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.to_string(), "non-finite value NaN at element 517");
    }
}

#[test]
fn size_errors() {
    let data = vec![0.0f32; 300];
    let mut out = vec![0u8; 1000];
    assert!(matches!(
        quantize(GgmlType::Q4_K, &data, 300, &mut out),
        Err(QuantizeError::RowLength { .. })
    ));
    assert!(matches!(
        quantize(GgmlType::Q8_0, &data[..256], 256, &mut out),
        Err(QuantizeError::BufferSize {
            expected: 272,
            got: 1000
        })
    ));
    let mut f = vec![0.0f32; 33];
    assert!(matches!(
        dequantize(GgmlType::Q8_0, &out[..34], &mut f),
        Err(QuantizeError::RowLength { .. })
    ));
    for b in Backend::ALL {
        if !b.is_available() {
            let e = quantize_with(GgmlType::F16, &data, 300, &mut out[..600], b, false);
            assert!(matches!(e, Err(QuantizeError::BackendUnavailable(_))));
        }
    }
}

/// ggml's `make_qp_quants` keeps its values in `uint8_t`, so a negative sub-block scale wraps;
/// Q4_K packs the wrapped byte (and decodes its low 6 bits), Q5_K first clamps it to 63
/// (`ls = MIN(63, ls)` in `quantize_row_q5_K_impl` only).
#[test]
fn weighted_k_headers_keep_ggmls_uint8_wrap() {
    let scales = [1.0f32, 0.5, -0.25, 0.75, 0.125, 0.25, 0.375, 0.625];
    let mins = [0.5f32; 8];
    let sw = [1.0f32; 8];
    let (mut y4, mut y5) = ([0u8; 144], [0u8; 176]);
    let (d4, _) = kquants::finish_scales_weighted::<4>(&scales, &mins, &sw, &mut y4);
    let (d5, _) = kquants::finish_scales_weighted::<5>(&scales, &mins, &sw, &mut y5);
    // Sub-block 2 (j < 4: the low 6 bits of its byte; the top 2 hold sub-block 6's high bits):
    // the whole wrapped -16 for Q4_K, which decodes as 48; 63 for Q5_K.
    assert_eq!(y4[4 + 2], (-16i8) as u8);
    assert_eq!(y5[4 + 2] & 63, 63);
    assert_eq!(
        d5[2],
        f16_bits_to_f32(u16::from_le_bytes([y5[0], y5[1]])) * 63.0
    );
    assert_eq!(
        d4[2],
        f16_bits_to_f32(u16::from_le_bytes([y4[0], y4[1]])) * 48.0
    );
    // The other sub-blocks agree.
    for j in [0, 1, 3] {
        assert_eq!(y4[4 + j], y5[4 + j], "sub-block {j}");
    }
}
