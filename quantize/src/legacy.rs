//! The 32-element "legacy" block formats: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Each format has a scalar reference (`*_ref`, a line-by-line port of ggml's
//! `quantize_row_*_ref`, the executable spec) and a lane-parallel kernel. The lane kernels
//! vectorise *within* a block: per-element work is independent, and the only reductions are
//! max/min, which are exact in any order for finite inputs. The one order-sensitive detail, which
//! element wins a tie (ggml keeps the first with strict `<`/`>`), matters only for the signed
//! max of Q4_0/Q5_0 and for the sign of a zero min/max in Q4_1/Q5_1; both are resolved by a
//! first-match scan after the tree reduction. So the lane kernels are bitwise equal to the
//! references.
//!
//! Float → integer casts follow x86-64 C (`cvttss2si`, see [`c_f32_to_i32`]): ggml's
//! `(int8_t)(x*id + 8.5f)` on a NaN/inf (possible when `1/d` overflows for denormal blocks) yields
//! the low byte of `0x80000000`, i.e. 0.

use crate::float::{f16_bits_to_f32, f32_to_f16_bits};
use crate::simd::{c_f32_to_i32, per_backend, round_away};

pub(crate) const QK: usize = 32;

// ------------------------------------------------------------------------------------------------
// Q8_0: `d` f16 LE (bytes 0..2); `qs[32]` i8 (bytes 2..34). value = d·q.

/// `quantize_row_q8_0_ref` for one block.
pub(crate) fn q8_0_ref(x: &[f32], y: &mut [u8]) {
    let mut amax = 0.0f32;
    for &v in x.iter().take(QK) {
        let a = v.abs();
        amax = if amax > a { amax } else { a }; // MAX(amax, fabsf(v))
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    for j in 0..QK {
        let x0 = x[j] * id;
        y[2 + j] = c_f32_to_i32(x0.round()) as u8; // roundf, then (int8_t)
    }
}

#[inline(always)]
fn q8_0_lanes(x: &[f32; QK], y: &mut [u8; 34]) {
    let mut a = [0.0f32; QK];
    for j in 0..QK {
        a[j] = x[j].abs();
    }
    let amax = tree_max(a);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    let mut q = [0u8; QK];
    for j in 0..QK {
        q[j] = c_f32_to_i32(round_away(x[j] * id)) as u8;
    }
    y[2..].copy_from_slice(&q);
}

// ------------------------------------------------------------------------------------------------
// Q4_0: `d` f16; `qs[16]`: byte j = q[j] | q[j+16] << 4. value = d·(q − 8).
// Q5_0: `d` f16; `qh` u32 LE (bit j = bit 4 of q[j]); `qs[16]` low nibbles. value = d·(q − 16).

/// `quantize_row_q4_0_ref` (`NMAX = 8`, 16-byte `qs`) and `quantize_row_q5_0_ref` (`NMAX = 16`,
/// plus `qh`) for one block.
pub(crate) fn qx_0_ref<const BITS: u32>(x: &[f32], y: &mut [u8]) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x.iter().take(QK) {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let (div, bias, top) = if BITS == 4 {
        (-8.0f32, 8.5f32, 15u8)
    } else {
        (-16.0, 16.5, 31)
    };
    let d = max / div;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    let mut qh = 0u32;
    let qs_at = if BITS == 4 { 2 } else { 6 };
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = (c_f32_to_i32(x0 + bias) as i8 as i32).min(top as i32) as u8;
        let xi1 = (c_f32_to_i32(x1 + bias) as i8 as i32).min(top as i32) as u8;
        if BITS == 4 {
            y[qs_at + j] = xi0 | (xi1 << 4);
        } else {
            y[qs_at + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
    }
    if BITS == 5 {
        y[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

#[inline(always)]
fn qx_0_lanes<const BITS: u32, const SIZE: usize>(x: &[f32; QK], y: &mut [u8; SIZE]) {
    let mut a = [0.0f32; QK];
    for j in 0..QK {
        a[j] = x[j].abs();
    }
    let amax = tree_max(a);
    let max = signed_max(x, &a, amax);
    let (div, bias, top) = if BITS == 4 {
        (-8.0f32, 8.5f32, 15i32)
    } else {
        (-16.0, 16.5, 31)
    };
    let d = max / div;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    let mut q = [0u8; QK];
    for j in 0..QK {
        q[j] = (c_f32_to_i32(x[j] * id + bias) as i8 as i32).min(top) as u8;
    }
    pack_nibbles::<BITS, SIZE>(&q, y);
}

// ------------------------------------------------------------------------------------------------
// Q4_1: `d` f16, `m` f16; `qs[16]` as Q4_0. value = d·q + m.
// Q5_1: `d` f16, `m` f16; `qh` u32 LE; `qs[16]`. value = d·q + m.

/// `quantize_row_q4_1_ref` / `quantize_row_q5_1_ref` for one block.
pub(crate) fn qx_1_ref<const BITS: u32>(x: &[f32], y: &mut [u8]) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x.iter().take(QK) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / if BITS == 4 { 15.0 } else { 31.0 };
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    y[2..4].copy_from_slice(&f32_to_f16_bits(min).to_le_bytes());
    let mut qh = 0u32;
    let qs_at = if BITS == 4 { 4 } else { 8 };
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        if BITS == 4 {
            let xi0 = (c_f32_to_i32(x0 + 0.5) as i8 as i32).min(15) as u8;
            let xi1 = (c_f32_to_i32(x1 + 0.5) as i8 as i32).min(15) as u8;
            y[qs_at + j] = xi0 | (xi1 << 4);
        } else {
            let xi0 = c_f32_to_i32(x0 + 0.5) as u8;
            let xi1 = c_f32_to_i32(x1 + 0.5) as u8;
            y[qs_at + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
    }
    if BITS == 5 {
        y[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

#[inline(always)]
fn qx_1_lanes<const BITS: u32, const SIZE: usize>(x: &[f32; QK], y: &mut [u8; SIZE]) {
    let mut min = tree_min(*x);
    let mut max = tree_max(*x);
    // Tree reductions are exact except for which zero (+0/−0) wins a tie; ggml keeps the first.
    if min == 0.0 {
        min = first_zero(x);
    }
    if max == 0.0 {
        max = first_zero(x);
    }
    let d = (max - min) / if BITS == 4 { 15.0 } else { 31.0 };
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    y[2..4].copy_from_slice(&f32_to_f16_bits(min).to_le_bytes());
    let mut q = [0u8; QK];
    for j in 0..QK {
        let v = c_f32_to_i32((x[j] - min) * id + 0.5);
        q[j] = if BITS == 4 {
            (v as i8 as i32).min(15) as u8
        } else {
            v as u8
        };
    }
    pack_nibbles::<BITS, SIZE>(&q, y);
}

// ------------------------------------------------------------------------------------------------
// Shared helpers for the lane kernels.

/// Writes `qs` (and `qh` for 5-bit formats) after the header (2 bytes for *_0, 4 for *_1).
#[inline(always)]
fn pack_nibbles<const BITS: u32, const SIZE: usize>(q: &[u8; QK], y: &mut [u8; SIZE]) {
    let qs_at = SIZE - QK / 2;
    let mut qs = [0u8; QK / 2];
    for j in 0..QK / 2 {
        qs[j] = if BITS == 4 {
            q[j] | (q[QK / 2 + j] << 4)
        } else {
            (q[j] & 0x0F) | ((q[QK / 2 + j] & 0x0F) << 4)
        };
    }
    y[qs_at..].copy_from_slice(&qs);
    if BITS == 5 {
        let mut qh = 0u32;
        for (j, &v) in q.iter().enumerate() {
            qh |= (((v & 0x10) >> 4) as u32) << j;
        }
        y[qs_at - 4..qs_at].copy_from_slice(&qh.to_le_bytes());
    }
}

#[inline(always)]
fn tree_max<const N: usize>(mut a: [f32; N]) -> f32 {
    let mut n = N;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            a[j] = if a[j] > a[j + n] { a[j] } else { a[j + n] };
        }
    }
    a[0]
}

#[inline(always)]
fn tree_min<const N: usize>(mut a: [f32; N]) -> f32 {
    let mut n = N;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            a[j] = if a[j] < a[j + n] { a[j] } else { a[j + n] };
        }
    }
    a[0]
}

/// The first element whose magnitude is `amax` (ggml's strict `amax < |v|` scan), or +0 when
/// `amax == 0`. Only its sign is unknown; a vectorised any() settles it unless both signs occur.
#[inline(always)]
pub(crate) fn signed_max<const N: usize>(x: &[f32; N], a: &[f32; N], amax: f32) -> f32 {
    if amax == 0.0 {
        return 0.0;
    }
    let (mut pos, mut neg) = (false, false);
    for j in 0..N {
        pos |= x[j] == amax;
        neg |= x[j] == -amax;
    }
    if pos != neg {
        return if pos { amax } else { -amax };
    }
    for j in 0..N {
        if a[j] == amax {
            return x[j];
        }
    }
    0.0
}

#[inline(always)]
fn first_zero(x: &[f32; QK]) -> f32 {
    x.iter().copied().find(|&v| v == 0.0).unwrap_or(0.0)
}

/// Runs a per-block lane kernel over whole blocks. A macro rather than a function taking a
/// closure: the kernel must be inlined into each `#[target_feature]` wrapper, and a `Fn::call`
/// shim would be compiled for the baseline ISA instead.
macro_rules! each_block {
    ($src:expr, $dst:expr, $size:literal, $kernel:expr) => {
        for (x, y) in $src.chunks_exact(QK).zip($dst.chunks_exact_mut($size)) {
            $kernel(x.try_into().unwrap(), y.try_into().unwrap());
        }
    };
}

#[inline(always)]
fn q8_0_rows(src: &[f32], dst: &mut [u8]) {
    each_block!(src, dst, 34, q8_0_lanes);
}
#[inline(always)]
fn q4_0_rows(src: &[f32], dst: &mut [u8]) {
    each_block!(src, dst, 18, qx_0_lanes::<4, 18>);
}
#[inline(always)]
fn q5_0_rows(src: &[f32], dst: &mut [u8]) {
    each_block!(src, dst, 22, qx_0_lanes::<5, 22>);
}
#[inline(always)]
fn q4_1_rows(src: &[f32], dst: &mut [u8]) {
    each_block!(src, dst, 20, qx_1_lanes::<4, 20>);
}
#[inline(always)]
fn q5_1_rows(src: &[f32], dst: &mut [u8]) {
    each_block!(src, dst, 24, qx_1_lanes::<5, 24>);
}

per_backend!(q8_0_simd, (src: &[f32], dst: &mut [u8]), avx2 => q8_0_rows, avx512 => q8_0_rows, neon => q8_0_rows);
per_backend!(q4_0_simd, (src: &[f32], dst: &mut [u8]), avx2 => q4_0_rows, avx512 => q4_0_rows, neon => q4_0_rows);
per_backend!(q5_0_simd, (src: &[f32], dst: &mut [u8]), avx2 => q5_0_rows, avx512 => q5_0_rows, neon => q5_0_rows);
per_backend!(q4_1_simd, (src: &[f32], dst: &mut [u8]), avx2 => q4_1_rows, avx512 => q4_1_rows, neon => q4_1_rows);
per_backend!(q5_1_simd, (src: &[f32], dst: &mut [u8]), avx2 => q5_1_rows, avx512 => q5_1_rows, neon => q5_1_rows);

// ------------------------------------------------------------------------------------------------
// Dequantisation (`dequantize_row_*`), same operation order as ggml.

pub(crate) fn dequant_q8_0(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    for j in 0..QK {
        y[j] = (x[2 + j] as i8 as f32) * d;
    }
}

pub(crate) fn dequant_qx_0<const BITS: u32>(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    let (qh, qs) = if BITS == 4 {
        (0u32, &x[2..18])
    } else {
        (u32::from_le_bytes([x[2], x[3], x[4], x[5]]), &x[6..22])
    };
    let off = if BITS == 4 { 8 } else { 16 };
    for j in 0..QK / 2 {
        let xh0 = (((qh >> j) << 4) & 0x10) as i32;
        let xh1 = ((qh >> (j + 12)) & 0x10) as i32;
        let x0 = ((qs[j] & 0x0F) as i32 | xh0) - off;
        let x1 = ((qs[j] >> 4) as i32 | xh1) - off;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

pub(crate) fn dequant_qx_1<const BITS: u32>(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    let m = f16_bits_to_f32(u16::from_le_bytes([x[2], x[3]]));
    let (qh, qs) = if BITS == 4 {
        (0u32, &x[4..20])
    } else {
        (u32::from_le_bytes([x[4], x[5], x[6], x[7]]), &x[8..24])
    };
    for j in 0..QK / 2 {
        let xh0 = (((qh >> j) << 4) & 0x10) as i32;
        let xh1 = ((qh >> (j + 12)) & 0x10) as i32;
        let x0 = (qs[j] & 0x0F) as i32 | xh0;
        let x1 = (qs[j] >> 4) as i32 | xh1;
        y[j] = x0 as f32 * d + m;
        y[j + QK / 2] = x1 as f32 * d + m;
    }
}
