//! IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear table, with and without an importance
//! vector (ggml's `quantize_iq4_nl`, `quantize_iq4_xs`, both `quantize_row_iq4_nl_impl`).
//!
//! Format (`ggml-common.h`):
//! * IQ4_NL, 32 elements, 18 bytes: `d` (f16), then 16 bytes of index pairs: byte `j` holds
//!   element `j` in its low nibble and element `j + 16` in its high nibble. Element = `d ·
//!   KVALUES[index]`.
//! * IQ4_XS, 256 elements, 136 bytes: `d` (f16), `scales_h` (u16: 2 high bits of each of the 8
//!   sub-block scales), `scales_l` (4 bytes: the 4 low bits, two per byte), then the 8
//!   sub-blocks' indices packed as IQ4_NL's. Sub-block `ib` has scale `d · (ls - 32)`, `ls` the
//!   6-bit value.
//!
//! The search (per 32-element sub-block): weights `w = x²` (or `qw · sqrt(σ² + x²)` with an
//! importance vector, σ² = 2·mean(x²) over the super-block); start from `d = -max/KVALUES[0]`,
//! then try the 15 scales `id = (t + KVALUES[0]) / max`, t in -7..=7, keeping the weighted
//! least-squares scale that maximises `sumqx² / sumq2`. IQ4_XS then quantizes the 8 scales to 6
//! bits against `d = -max_scale/32` and re-picks every index with the final scale.
//!
//! The scalar reference is the C, line by line. The lane kernel runs the search for N
//! sub-blocks at once, one per lane, with the same float operations in the same order, and a
//! branch-free `best_index_int8` (count the table entries ≤ x, then the same tie rule), so the
//! bytes are identical; tests check that against the reference and ggml.

use crate::float::f32_to_f16_bits;
use crate::simd::{abs_max, abs_max_lanes, nearest_int, per_backend};

/// `kvalues_iq4nl`.
pub(crate) const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];
const GROUP_MAX_EPS: f32 = 1e-15;
const NTRY: i32 = 7;

/// `best_index_int8(16, KVALUES, x)`: binary search, then the nearer neighbour (ties up).
#[inline(always)]
fn best_index(x: f32) -> usize {
    let val = |i: usize| KVALUES[i] as f32;
    if x <= val(0) {
        return 0;
    }
    if x >= val(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val(mav) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - val(mu - 1) < val(mu) - x {
        mu - 1
    } else {
        mu
    }
}

/// The per-element weights of one super-block (`weight[j]` in the C, for all sub-blocks).
#[inline(always)]
fn weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
    match qw {
        Some(qw) => {
            let mut sigma2 = 0.0f32;
            for &v in x {
                sigma2 += v * v;
            }
            sigma2 *= 2.0f32 / x.len() as f32;
            for ((w, &q), &v) in w.iter_mut().zip(qw).zip(x) {
                *w = q * (sigma2 + v * v).sqrt();
            }
        }
        None => {
            for (w, &v) in w.iter_mut().zip(x) {
                *w = v * v;
            }
        }
    }
}

/// The search for one 32-element sub-block: its scale `d` (0 for an all-zero block).
fn search_ref(xb: &[f32], w: &[f32]) -> f32 {
    let (amax, max) = abs_max(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = KVALUES[0] as f32;
    let mut d = -max / v0;
    let mut id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for j in 0..32 {
        let q = KVALUES[best_index(id * xb[j])] as f32;
        sumqx += w[j] * q * xb[j];
        sumq2 += w[j] * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        id = (itry + KVALUES[0] as i32) as f32 / max;
        sumqx = 0.0;
        sumq2 = 0.0;
        for j in 0..32 {
            let q = KVALUES[best_index(id * xb[j])] as f32;
            sumqx += w[j] * q * xb[j];
            sumq2 += w[j] * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// The block header and indices from the sub-block scales (the C after the search loop).
fn finish(x: &[f32], scales: &[f32], y: &mut [u8]) {
    let sb = x.len();
    let mut l = [0u8; 256];
    if sb == 32 {
        y[0..2].copy_from_slice(&f32_to_f16_bits(scales[0]).to_le_bytes());
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for j in 0..32 {
            l[j] = best_index(id * x[j]) as u8;
        }
        pack(&l[..32], &mut y[2..18]);
        return;
    }
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for &s in scales {
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = s;
        }
    }
    let d = -max_scale / 32.0;
    y[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; 4];
    for (ib, &s) in scales.iter().enumerate() {
        let li = nearest_int(id * s).clamp(-32, 31);
        let dl = d * li as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for j in 0..32 {
            l[32 * ib + j] = best_index(idl * x[32 * ib + j]) as u8;
        }
        let ls = (li + 32) as u8;
        if ib % 2 == 0 {
            scales_l[ib / 2] = ls & 0xf;
        } else {
            scales_l[ib / 2] |= (ls & 0xf) << 4;
        }
        scales_h |= ((ls >> 4) as u16) << (2 * (ib % 8));
    }
    y[2..4].copy_from_slice(&scales_h.to_le_bytes());
    y[4..8].copy_from_slice(&scales_l);
    pack(&l, &mut y[8..136]);
}

/// Two indices per byte: element `j` low, element `j + 16` high, per 32 elements.
fn pack(l: &[u8], q4: &mut [u8]) {
    for i in 0..l.len() / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

/// The reference: whole super-blocks of `SB` (32: IQ4_NL, 256: IQ4_XS) of one row, with the
/// row's importance vector if any.
pub(crate) fn iq4_ref<const SB: usize>(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let bytes = if SB == 32 { 18 } else { 136 };
    let mut w = [0.0f32; 256];
    let mut scales = [0.0f32; 8];
    for (s, (xs, ys)) in x
        .chunks_exact(SB)
        .zip(y.chunks_exact_mut(bytes))
        .enumerate()
    {
        let q = qw.map(|q| &q[s * SB..(s + 1) * SB]);
        weights(xs, q, &mut w[..SB]);
        for ib in 0..SB / 32 {
            scales[ib] = search_ref(&xs[32 * ib..32 * ib + 32], &w[32 * ib..32 * ib + 32]);
        }
        finish(xs, &scales[..SB / 32], ys);
    }
}

/// `best_index_int8` for N lanes, branch-free: returns (index, table value) per lane.
#[inline(always)]
fn best_index_lanes<const N: usize>(x: &[f32; N]) -> ([u8; N], [f32; N]) {
    let mut count = [0u8; N];
    let mut lo = [f32::NEG_INFINITY; N];
    let mut hi = [f32::INFINITY; N];
    for &v in &KVALUES {
        let v = v as f32;
        for k in 0..N {
            let le = v <= x[k];
            count[k] += le as u8;
            lo[k] = if le { v } else { lo[k] };
            hi[k] = if le { hi[k] } else { hi[k].min(v) };
        }
    }
    let (first, last) = (KVALUES[0] as f32, KVALUES[15] as f32);
    let mut idx = [0u8; N];
    let mut q = [0.0f32; N];
    for k in 0..N {
        // Interior: mu = entries <= x (1..=15), lo = KVALUES[mu-1], hi = KVALUES[mu].
        let down = x[k] - lo[k] < hi[k] - x[k];
        let mut i = if down {
            count[k].wrapping_sub(1)
        } else {
            count[k]
        };
        let mut v = if down { lo[k] } else { hi[k] };
        let bottom = x[k] <= first;
        let top = x[k] >= last;
        i = if bottom { 0 } else { i };
        v = if bottom { first } else { v };
        // NaN (only in an all-zero block, whose result is discarded): the C search ends at 15.
        let top = top | x[k].is_nan();
        i = if top { 15 } else { i };
        v = if top { last } else { v };
        idx[k] = i;
        q[k] = v;
    }
    (idx, q)
}

/// `sumqx`, `sumq2` over one sub-block per lane at inverse scales `id`.
#[inline(always)]
fn sums_lanes<const N: usize>(
    xt: &[[f32; N]; 32],
    wt: &[[f32; N]; 32],
    id: &[f32; N],
) -> ([f32; N], [f32; N]) {
    let mut sumqx = [0.0f32; N];
    let mut sumq2 = [0.0f32; N];
    for j in 0..32 {
        let mut al = [0.0f32; N];
        for k in 0..N {
            al[k] = id[k] * xt[j][k];
        }
        let (_, q) = best_index_lanes(&al);
        for k in 0..N {
            sumqx[k] += wt[j][k] * q[k] * xt[j][k];
            sumq2[k] += wt[j][k] * q[k] * q[k];
        }
    }
    (sumqx, sumq2)
}

/// [`search_ref`] for N sub-blocks at once (element-major `[j][lane]` arrays).
#[inline(always)]
fn search_lanes<const N: usize>(xt: &[[f32; N]; 32], wt: &[[f32; N]; 32]) -> [f32; N] {
    let (amax, max) = abs_max_lanes(xt);
    let v0 = KVALUES[0] as f32;
    let mut id = [0.0f32; N];
    for k in 0..N {
        id[k] = 1.0 / (-max[k] / v0);
    }
    let (sumqx, sumq2) = sums_lanes(xt, wt, &id);
    let mut d = [0.0f32; N];
    let mut best = [0.0f32; N];
    for k in 0..N {
        d[k] = if sumq2[k] > 0.0 {
            sumqx[k] / sumq2[k]
        } else {
            0.0
        };
        best[k] = d[k] * sumqx[k];
    }
    for itry in -NTRY..=NTRY {
        let num = (itry + KVALUES[0] as i32) as f32;
        for k in 0..N {
            id[k] = num / max[k];
        }
        let (sumqx, sumq2) = sums_lanes(xt, wt, &id);
        for k in 0..N {
            let better = (sumq2[k] > 0.0) & (sumqx[k] * sumqx[k] > best[k] * sumq2[k]);
            let s = sumqx[k] / sumq2[k];
            d[k] = if better { s } else { d[k] };
            best[k] = if better { s * sumqx[k] } else { best[k] };
        }
    }
    for k in 0..N {
        d[k] = if amax[k] < GROUP_MAX_EPS { 0.0 } else { d[k] };
    }
    d
}

/// One row (or any run of whole super-blocks) with the lane kernel: N sub-blocks per search.
#[inline(always)]
fn iq4_lanes<const SB: usize, const N: usize>(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let bytes = if SB == 32 { 18 } else { 136 };
    let n_sub = x.len() / 32;
    let mut w = vec![0.0f32; x.len()];
    for (s, (xs, ws)) in x.chunks_exact(SB).zip(w.chunks_exact_mut(SB)).enumerate() {
        weights(xs, qw.map(|q| &q[s * SB..(s + 1) * SB]), ws);
    }
    let mut scales = vec![0.0f32; n_sub];
    let mut xt = [[0.0f32; N]; 32];
    let mut wt = [[0.0f32; N]; 32];
    let mut first = 0;
    while first < n_sub {
        let n = N.min(n_sub - first);
        for k in 0..N {
            // Lanes past the end hold zeros (scale 0, ignored).
            let live = k < n;
            for j in 0..32 {
                let e = 32 * (first + k) + j;
                xt[j][k] = if live { x[e] } else { 0.0 };
                wt[j][k] = if live { w[e] } else { 0.0 };
            }
        }
        let d = search_lanes(&xt, &wt);
        scales[first..first + n].copy_from_slice(&d[..n]);
        first += n;
    }
    for (s, (xs, ys)) in x
        .chunks_exact(SB)
        .zip(y.chunks_exact_mut(bytes))
        .enumerate()
    {
        finish(xs, &scales[s * SB / 32..(s + 1) * SB / 32], ys);
    }
}

fn iq4nl_16(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    iq4_lanes::<32, 16>(x, qw, y)
}
fn iq4nl_32(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    iq4_lanes::<32, 32>(x, qw, y)
}
fn iq4xs_16(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    iq4_lanes::<256, 16>(x, qw, y)
}
fn iq4xs_32(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    iq4_lanes::<256, 32>(x, qw, y)
}

per_backend!(iq4nl_simd, (x: &[f32], qw: Option<&[f32]>, y: &mut [u8]), avx2 => iq4nl_16, avx512 => iq4nl_32, neon => iq4nl_16);
per_backend!(iq4xs_simd, (x: &[f32], qw: Option<&[f32]>, y: &mut [u8]), avx2 => iq4xs_16, avx512 => iq4xs_32, neon => iq4xs_16);

/// `dequantize_row_iq4_nl` / `dequantize_row_iq4_xs`, one block.
pub(crate) fn dequant_iq4<const SB: usize>(x: &[u8], y: &mut [f32]) {
    let d = crate::float::f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    if SB == 32 {
        for j in 0..16 {
            y[j] = d * KVALUES[(x[2 + j] & 0xf) as usize] as f32;
            y[j + 16] = d * KVALUES[(x[2 + j] >> 4) as usize] as f32;
        }
        return;
    }
    let scales_h = u16::from_le_bytes([x[2], x[3]]);
    for ib in 0..8 {
        let ls = ((x[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) as i32
            | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &x[8 + 16 * ib..8 + 16 * ib + 16];
        for j in 0..16 {
            y[32 * ib + j] = dl * KVALUES[(qs[j] & 0xf) as usize] as f32;
            y[32 * ib + j + 16] = dl * KVALUES[(qs[j] >> 4) as usize] as f32;
        }
    }
}
