//! IEEE binary16 and bfloat16 conversions, bit-for-bit as ggml does them.
//!
//! ggml's `ggml_compute_fp32_to_fp16` / `ggml_compute_fp16_to_fp32` (`ggml-impl.h`) are
//! branch-free bit tricks (from Maratyszcza/FP16). For every non-NaN input they equal IEEE
//! round-to-nearest-even, but a NaN becomes `0x7E00 | sign` (the `half` crate keeps payload bits),
//! so we reproduce the tricks literally instead of calling `half`. They are written with plain
//! integer/float operations and selects, so the same functions auto-vectorise inside the
//! lane-parallel kernels and also serve as the scalar reference.
//!
//! `ggml_compute_fp32_to_bf16` rounds to nearest even on the raw bits and quiets NaNs with bit 6.

/// `ggml_compute_fp32_to_fp16`: f32 → IEEE half bits (RNE, overflow → ±inf, NaN → 0x7E00|sign).
#[inline(always)]
pub fn f32_to_f16_bits(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 0x1.0p+112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 0x1.0p-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;

    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    // `bias_value + base`, in this operand order as in ggml (addition commutes exactly anyway).
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

/// `ggml_compute_fp16_to_fp32`: IEEE half bits → f32 (exact).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);

    let exp_offset: u32 = 0xE0 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 0x1.0p-112
    let normalized_value = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;

    let magic_mask: u32 = 126 << 23;
    let magic_bias = 0.5f32;
    let denormalized_value = f32::from_bits((two_w >> 17) | magic_mask) - magic_bias;

    let denormalized_cutoff: u32 = 1 << 27;
    let result = sign
        | if two_w < denormalized_cutoff {
            denormalized_value.to_bits()
        } else {
            normalized_value.to_bits()
        };
    f32::from_bits(result)
}

/// `ggml_compute_fp32_to_bf16`: round to nearest even, NaN forced quiet.
#[inline(always)]
pub fn f32_to_bf16_bits(f: f32) -> u16 {
    let i = f.to_bits();
    let rounded = (i.wrapping_add(0x7fff + ((i >> 16) & 1)) >> 16) as u16;
    let nan = ((i >> 16) | 64) as u16;
    if (i & 0x7fff_ffff) > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

/// `ggml_compute_bf16_to_fp32`: exact widening.
#[inline(always)]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Half → f32 through ggml's conversion, for a value stored in a block.
#[inline(always)]
pub(crate) fn fp16_round_trip(f: f32) -> f32 {
    f16_bits_to_f32(f32_to_f16_bits(f))
}

/// Elementwise kernels over whole slices; plain loops that LLVM vectorises per backend.
#[inline(always)]
pub(crate) fn f32_to_f16_slice(src: &[f32], dst: &mut [u8]) {
    for (s, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
        d.copy_from_slice(&f32_to_f16_bits(*s).to_le_bytes());
    }
}

#[inline(always)]
pub(crate) fn f32_to_bf16_slice(src: &[f32], dst: &mut [u8]) {
    for (s, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
        d.copy_from_slice(&f32_to_bf16_bits(*s).to_le_bytes());
    }
}

#[inline(always)]
pub(crate) fn f32_to_f32_slice(src: &[f32], dst: &mut [u8]) {
    for (s, d) in src.iter().zip(dst.chunks_exact_mut(4)) {
        d.copy_from_slice(&s.to_le_bytes());
    }
}

/// Little-endian IEEE half bytes → f32. `dst.len()` elements are read; panics if `src` is shorter.
pub fn f16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    assert!(
        src.len() >= dst.len() * 2,
        "f16_bytes_to_f32: source too short"
    );
    for (s, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *d = f16_bits_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

/// Little-endian bfloat16 bytes → f32. `dst.len()` elements are read; panics if `src` is shorter.
pub fn bf16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    assert!(
        src.len() >= dst.len() * 2,
        "bf16_bytes_to_f32: source too short"
    );
    for (s, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *d = bf16_bits_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_matches_ieee_rne_for_all_non_nan_bits() {
        // Every 2^32 would be slow; a strided sweep plus all halves is plenty.
        let mut i: u64 = 0;
        while i < (1u64 << 32) {
            let f = f32::from_bits(i as u32);
            if !f.is_nan() {
                assert_eq!(
                    f32_to_f16_bits(f),
                    half::f16::from_f32(f).to_bits(),
                    "{f:e}"
                );
            } else {
                assert_eq!(f32_to_f16_bits(f) & 0x7fff, 0x7E00);
            }
            i += 997;
        }
        for h in 0..=u16::MAX {
            let a = f16_bits_to_f32(h);
            let b = half::f16::from_bits(h).to_f32();
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{h:#x}"
            );
        }
    }

    #[test]
    fn bf16_round_trip() {
        for h in 0..=u16::MAX {
            let f = bf16_bits_to_f32(h);
            if !f.is_nan() {
                assert_eq!(f32_to_bf16_bits(f), h);
            }
        }
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie to even
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
    }
}
