//! K-quants: Q4_K, Q5_K, Q6_K (and the intermediate Q8_K), 256-element super-blocks.
//!
//! Byte layouts (`ggml-common.h`):
//! * **Q4_K** (144 B): `d` f16, `dmin` f16, `scales[12]` (8 six-bit scales + 8 six-bit mins, see
//!   [`pack_scales`]), `qs[128]`: for each 64-element chunk c, byte l = `L[64c+l] | L[64c+l+32]<<4`.
//!   value = d·sc_j·q − dmin·m_j.
//! * **Q5_K** (176 B): `d`, `dmin`, `scales[12]`, `qh[32]` (bit 2c of byte l = bit 4 of `L[64c+l]`,
//!   bit 2c+1 = bit 4 of `L[64c+l+32]`), `qs[128]` (low nibbles as Q4_K).
//! * **Q6_K** (210 B): `ql[128]`, `qh[64]`, `scales[16]` i8, `d` f16 (last). L in 0..63, value =
//!   d·sc·(L−32). Per 128-half h: `ql[64h+l] = L[l]&15 | (L[l+64]&15)<<4`,
//!   `ql[64h+l+32] = L[l+32]&15 | (L[l+96]&15)<<4`, `qh[32h+l]` = the four high 2-bit pairs.
//! * **Q8_K** (292 B): `d` **f32**, `qs[256]` i8, `bsums[16]` i16 (sums of 16 quants).
//!
//! The scalar references (`*_ref`, `make_qkx2_quants_ref`, `make_qx_quants_ref`) are direct ports
//! of ggml's `quantize_row_*_ref`, keeping every float operation in C order.
//!
//! ## With an importance vector
//! ggml's `quantize_q{4,5,6}_K` run `quantize_row_q{4,5,6}_K_impl` when given `quant_weights`
//! (per column of the row); ported as `qk45_weighted_ref` and `q6k_weighted_ref`:
//! * Q4_K/Q5_K: per super-block `sigma2 = 2·Σx²/256`, element weights `qw·sqrt(sigma2 + x²)`,
//!   each 32-element sub-block searched by `make_qkx3_quants` (37 candidate scales from
//!   `nmax − 0.9` in steps of 0.05; values rounded as `v > 0 ? nearest_int(MIN(v, nmax)) : 0`),
//!   then the 8 scales and the 8 mins each quantized to 6 bits by `make_qp_quants` (weights: the
//!   sub-blocks' weight sums), whose results are `d` and `dmin` as they are (not `max/63`). Only
//!   Q5_K clamps the 6-bit values to 63 (`make_qp_quants` keeps `uint8_t`, so a negative one
//!   would wrap; we keep that too).
//! * Q6_K: as without, except that each 16-element search (`make_qx_quants`) weighs by `qw`
//!   itself instead of x².
//!
//! The lane kernels run `make_qkx3_quants` (Q4_K/Q5_K) and `make_qx_quants` (Q6_K) one sub-block
//! per lane as below; the per-block header (`make_qp_quants` over 8 values) stays scalar.
//!
//! ## The lane-parallel kernels
//! The expensive part is the per-sub-block search (`make_qkx2_quants` runs 22 candidate scales over
//! 32 values for each of 8 sub-blocks; `make_qx_quants` 19 candidates over 16 values for each of
//! 16 sub-blocks). Each sub-block's sums are strictly sequential in ggml, so we do not vectorise
//! *within* a sub-block (that would reorder float additions). Instead the super-block is transposed
//! to `[element][sub-block]` and every sub-block becomes one SIMD lane: lane k runs exactly
//! ggml's sequence of operations for sub-block k, and all branches (`cur_error < best_error`,
//! `D > 0`, `this_min > 0`, "all zero", ...) become per-lane selects computed on both sides.
//! Masked-off lanes may compute inf/NaN garbage; it is always discarded by a select.
//!
//! Instead of copying the candidate quants `Laux` into `L` on every improvement we remember the
//! winning `(iscale, min)` per lane and recompute `L` once at the end (the formula is
//! deterministic), and only where the second pass does not overwrite it (`d == 0`).

use crate::float::{f16_bits_to_f32, f32_to_f16_bits, fp16_round_trip};
use crate::simd::{abs_max, abs_max_lanes, nearest_int, per_backend};
use crate::QK_K;

const GROUP_MAX_EPS: f32 = 1e-15;

/// Parameters of `make_qkx2_quants` as Q4_K / Q5_K call it.
#[derive(Clone, Copy)]
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

const fn qkx2_params(bits: u32) -> Qkx2 {
    if bits == 4 {
        Qkx2 {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
        }
    } else {
        Qkx2 {
            nmax: 31,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
        }
    }
}

pub(crate) const fn block_bytes(bits: u32) -> usize {
    if bits == 4 {
        144
    } else {
        176
    }
}

// ================================================================================================
// Scalar reference
// ================================================================================================

/// `make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, false)`.
/// Returns `(scale, the_min)`.
fn make_qkx2_quants_ref(x: &[f32], weights: &[f32], l_out: &mut [u8], p: Qkx2) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax;
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = diff * diff;
        best_error += weights[i] * diff;
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 8 six-bit scales and mins into `scales[12]` (inverse of ggml's `get_scale_min_k4`).
#[inline(always)]
fn pack_scales(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    for j in 0..8 {
        if j < 4 {
            out[j] = ls[j];
            out[j + 4] = lm[j];
        } else {
            out[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            out[j - 4] |= (ls[j] >> 4) << 6;
            out[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// ggml's `get_scale_min_k4`.
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Given per-sub-block scales and mins, writes `d`, `dmin` and `scales[12]` of a Q4_K/Q5_K block
/// and returns the decoded `(d_j, dm_j)` for the second pass. Shared by both paths.
#[inline(always)]
fn finish_scales(scales: &[f32; 8], mins: &[f32; 8], y: &mut [u8]) -> ([f32; 8], [f32; 8]) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // `uint8_t ls = nearest_int(...)` wraps, then MIN(63, ls).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let d16 = f32_to_f16_bits(max_scale / 63.0);
    let dmin16 = f32_to_f16_bits(max_min / 63.0);
    y[0..2].copy_from_slice(&d16.to_le_bytes());
    y[2..4].copy_from_slice(&dmin16.to_le_bytes());
    pack_scales(&ls, &lm, &mut y[4..16]);
    let (df, dminf) = (f16_bits_to_f32(d16), f16_bits_to_f32(dmin16));
    let mut dj = [0.0f32; 8];
    let mut dmj = [0.0f32; 8];
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &y[4..16]);
        dj[j] = df * sc as f32;
        dmj[j] = dminf * m as f32;
    }
    (dj, dmj)
}

/// Writes the quants of a Q4_K (`BITS = 4`) or Q5_K block.
#[inline(always)]
fn pack_qk45<const BITS: u32>(l: &[u8; QK_K], y: &mut [u8]) {
    if BITS == 4 {
        let q = &mut y[16..144];
        for c in 0..4 {
            for i in 0..32 {
                q[32 * c + i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
    } else {
        let (qh, ql) = y[16..176].split_at_mut(32);
        qh.fill(0);
        let (mut m1, mut m2) = (1u8, 2u8);
        for c in 0..4 {
            for j in 0..32 {
                let mut l1 = l[64 * c + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[64 * c + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * c + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/// `quantize_row_q4_K_ref` (`BITS = 4`) / `quantize_row_q5_K_ref` (`BITS = 5`) for one block.
pub(crate) fn qk45_ref<const BITS: u32>(x: &[f32], y: &mut [u8]) {
    let p = qkx2_params(BITS);
    let mut l = [0u8; QK_K];
    let mut weights = [0.0f32; 32];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants_ref(xs, &weights, &mut l[32 * j..32 * j + 32], p);
    }
    let (dj, dmj) = finish_scales(&scales, &mins, y);
    for j in 0..8 {
        let d = dj[j];
        if d == 0.0 {
            continue;
        }
        let dm = dmj[j];
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, p.nmax) as u8;
        }
    }
    pack_qk45::<BITS>(&l, y);
}

/// `make_qx_quants(n, nmax=32, x, L, rmse_type=1, NULL)` as Q6_K uses it.
fn make_qx_quants_ref(x: &[f32], l_out: &mut [u8]) -> f32 {
    const NMAX: i32 = 32;
    let n = x.len();
    let (amax, max) = abs_max(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(NMAX as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-NMAX, NMAX - 1);
        l_out[i] = (l + NMAX) as u8;
        let w = x[i] * x[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(NMAX as f32 + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-NMAX, NMAX - 1);
            let w = x[i] * x[i];
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (NMAX + l.clamp(-NMAX, NMAX - 1)) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Given the 16 sub-block scales of a Q6_K block, writes `scales` and `d`; returns the decoded
/// `d_j` for the second pass, or `None` when the block is all zero (then the block is zeroed).
#[inline(always)]
fn finish_q6k(scales: &[f32; 16], y: &mut [u8]) -> Option<[f32; 16]> {
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &s in scales {
        let a = s.abs();
        if a > max_abs_scale {
            max_abs_scale = a;
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y[..210].fill(0);
        y[208..210].copy_from_slice(&f32_to_f16_bits(0.0).to_le_bytes());
        return None;
    }
    let iscale = -128.0f32 / max_scale;
    let d16 = f32_to_f16_bits(1.0 / iscale);
    y[208..210].copy_from_slice(&d16.to_le_bytes());
    let df = f16_bits_to_f32(d16);
    let mut dj = [0.0f32; 16];
    for ib in 0..16 {
        let s = nearest_int(iscale * scales[ib]).min(127) as i8;
        y[192 + ib] = s as u8;
        dj[ib] = df * s as f32;
    }
    Some(dj)
}

#[inline(always)]
fn pack_q6k(l: &[u8; QK_K], y: &mut [u8]) {
    let (ql, rest) = y[..210].split_at_mut(128);
    let qh = &mut rest[..64];
    for h in 0..2 {
        let j = 128 * h;
        for i in 0..32 {
            let q1 = l[j + i] & 0xF;
            let q2 = l[j + i + 32] & 0xF;
            let q3 = l[j + i + 64] & 0xF;
            let q4 = l[j + i + 96] & 0xF;
            ql[64 * h + i] = q1 | (q3 << 4);
            ql[64 * h + i + 32] = q2 | (q4 << 4);
            qh[32 * h + i] = (l[j + i] >> 4)
                | ((l[j + i + 32] >> 4) << 2)
                | ((l[j + i + 64] >> 4) << 4)
                | ((l[j + i + 96] >> 4) << 6);
        }
    }
}

/// `quantize_row_q6_K_ref` for one block.
pub(crate) fn q6k_ref(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    for ib in 0..16 {
        scales[ib] = make_qx_quants_ref(&x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
    }
    let Some(dj) = finish_q6k(&scales, y) else {
        return;
    };
    for j in 0..16 {
        let d = dj[j];
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as u8;
        }
    }
    pack_q6k(&l, y);
}

/// `quantize_row_q8_K_ref` for one block. Where ggml leaves `bsums` untouched (an all-zero block)
/// we write zeros.
pub(crate) fn q8k_ref(x: &[f32], y: &mut [u8]) {
    let (amax, max) = abs_max(&x[..QK_K]);
    if amax == 0.0 {
        y[..292].fill(0);
        return;
    }
    let iscale = -127.0f32 / max;
    for j in 0..QK_K {
        let v = nearest_int(iscale * x[j]);
        y[4 + j] = v.min(127) as i8 as u8;
    }
    for g in 0..16 {
        let mut sum = 0i32;
        for ii in 0..16 {
            sum += y[4 + 16 * g + ii] as i8 as i32;
        }
        y[260 + 2 * g..262 + 2 * g].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    y[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

// ================================================================================================
// Lane-parallel kernels
// ================================================================================================

/// Q4_K/Q5_K for `N / 8` consecutive blocks: lane k = sub-block k (32 values at `x[32k..]`).
#[inline(always)]
fn qk45_lanes<const BITS: u32, const N: usize>(x: &[f32], y: &mut [u8]) {
    let p = qkx2_params(BITS);
    let nmax = p.nmax;
    let nmaxf = nmax as f32;
    // Transpose: xt[i][k] = element i of sub-block k.
    let mut xt = [[0.0f32; N]; 32];
    for k in 0..N {
        let xs: &[f32; 32] = x[32 * k..32 * k + 32].try_into().unwrap();
        for i in 0..32 {
            xt[i][k] = xs[i];
        }
    }
    // Weights: w = sqrt(Σx²/32) + |x|.
    let mut sum_x2 = [0.0f32; N];
    for row in &xt {
        for k in 0..N {
            sum_x2[k] += row[k] * row[k];
        }
    }
    let mut av_x = [0.0f32; N];
    for k in 0..N {
        av_x[k] = (sum_x2[k] / 32.0).sqrt();
    }
    let mut w = [[0.0f32; N]; 32];
    for i in 0..32 {
        for k in 0..N {
            w[i][k] = av_x[k] + xt[i][k].abs();
        }
    }

    // ---- make_qkx2_quants, one sub-block per lane.
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = w[0];
    let mut sum_x = [0.0f32; N];
    for k in 0..N {
        sum_x[k] = sum_w[k] * xt[0][k];
    }
    for i in 1..32 {
        for k in 0..N {
            let v = xt[i][k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            sum_w[k] += w[i][k];
            sum_x[k] += w[i][k] * v;
        }
    }
    let mut degenerate = [false; N];
    let mut iscale = [0.0f32; N];
    let mut scale = [0.0f32; N];
    for k in 0..N {
        min[k] = if min[k] > 0.0 { 0.0 } else { min[k] };
        degenerate[k] = max[k] == min[k];
        iscale[k] = nmaxf / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    let min0 = min;
    // Winning parameters from which L is recomputed at the end.
    let mut best_iscale = iscale;
    let mut best_lmin = min;
    let mut best_error = [0.0f32; N];
    for i in 0..32 {
        for k in 0..N {
            let l = nearest_int(iscale[k] * (xt[i][k] - min[k])).clamp(0, nmax) as f32;
            let diff = scale[k] * l + min[k] - xt[i][k];
            best_error[k] += w[i][k] * (diff * diff);
        }
    }
    let mut laux = [[0.0f32; N]; 32];
    for is in 0..=p.nstep {
        let num = p.rmin + p.rdelta * is as f32 + nmaxf;
        for k in 0..N {
            iscale[k] = num / (max[k] - min[k]);
        }
        let mut sum_l = [0.0f32; N];
        let mut sum_l2 = [0.0f32; N];
        let mut sum_xl = [0.0f32; N];
        for i in 0..32 {
            for k in 0..N {
                let l = nearest_int(iscale[k] * (xt[i][k] - min[k])).clamp(0, nmax) as f32;
                laux[i][k] = l;
                let wl = w[i][k] * l;
                sum_l[k] += wl;
                sum_l2[k] += wl * l;
                sum_xl[k] += wl * xt[i][k];
            }
        }
        let mut this_scale = [0.0f32; N];
        let mut this_min = [0.0f32; N];
        let mut dpos = [false; N];
        for k in 0..N {
            let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            dpos[k] = d > 0.0;
            let ts = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
            let tm = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
            let alt = sum_xl[k] / sum_l2[k];
            let pos = tm > 0.0;
            this_min[k] = if pos { 0.0 } else { tm };
            this_scale[k] = if pos { alt } else { ts };
        }
        let mut cur_error = [0.0f32; N];
        for i in 0..32 {
            for k in 0..N {
                let diff = this_scale[k] * laux[i][k] + this_min[k] - xt[i][k];
                cur_error[k] += w[i][k] * (diff * diff);
            }
        }
        for k in 0..N {
            let better = dpos[k] & (cur_error[k] < best_error[k]);
            best_iscale[k] = if better { iscale[k] } else { best_iscale[k] };
            best_lmin[k] = if better { min[k] } else { best_lmin[k] };
            best_error[k] = if better { cur_error[k] } else { best_error[k] };
            scale[k] = if better { this_scale[k] } else { scale[k] };
            min[k] = if better { this_min[k] } else { min[k] };
        }
    }
    let mut the_min = [0.0f32; N];
    for k in 0..N {
        scale[k] = if degenerate[k] { 0.0 } else { scale[k] };
        the_min[k] = if degenerate[k] { -min0[k] } else { -min[k] };
    }

    // ---- per block: super-block scales (scalar, 8 values), then the second pass on lanes.
    let nb = N / 8;
    let bb = block_bytes(BITS);
    let mut dj = [0.0f32; N];
    let mut dmj = [0.0f32; N];
    for b in 0..nb {
        let sc: &[f32; 8] = scale[8 * b..8 * b + 8].try_into().unwrap();
        let mn: &[f32; 8] = the_min[8 * b..8 * b + 8].try_into().unwrap();
        let (d8, dm8) = finish_scales(sc, mn, &mut y[bb * b..bb * b + bb]);
        dj[8 * b..8 * b + 8].copy_from_slice(&d8);
        dmj[8 * b..8 * b + 8].copy_from_slice(&dm8);
    }
    let mut lt = [[0u8; N]; 32];
    for i in 0..32 {
        for k in 0..N {
            let v = xt[i][k];
            let second = nearest_int((v + dmj[k]) / dj[k]).clamp(0, nmax);
            let first = nearest_int(best_iscale[k] * (v - best_lmin[k])).clamp(0, nmax);
            let first = if degenerate[k] { 0 } else { first };
            lt[i][k] = if dj[k] != 0.0 { second } else { first } as u8;
        }
    }
    for b in 0..nb {
        let mut l = [0u8; QK_K];
        for j in 0..8 {
            for i in 0..32 {
                l[32 * j + i] = lt[i][8 * b + j];
            }
        }
        pack_qk45::<BITS>(&l, &mut y[bb * b..bb * b + bb]);
    }
}

/// `make_qx_quants(16, NMAX, x, L, rmse_type=1, weights)` for N sub-blocks, one per lane
/// (`xt[i][lane]`, weights `wt` likewise; Q6_K passes w = x², Q3_K its importance weights).
/// Returns the scale (0 for an all-zero sub-block), the inverse scale the values are rounded
/// with (`NMAX + nearest_int(best_iscale · x)`), and which lanes were all zero (values 0).
#[inline(always)]
pub(crate) fn make_qx_lanes<const N: usize, const NMAX: i32>(
    xt: &[[f32; N]; 16],
    wt: &[[f32; N]; 16],
) -> ([f32; N], [f32; N], [bool; N]) {
    let (amax, max) = abs_max_lanes(xt);
    let sums = |iscale: &[f32; N]| {
        let mut sumlx = [0.0f32; N];
        let mut suml2 = [0.0f32; N];
        for i in 0..16 {
            for k in 0..N {
                let l = nearest_int(iscale[k] * xt[i][k]).clamp(-NMAX, NMAX - 1) as f32;
                sumlx[k] += wt[i][k] * xt[i][k] * l;
                suml2[k] += wt[i][k] * l * l;
            }
        }
        (sumlx, suml2)
    };
    let mut iscale = [0.0f32; N];
    for k in 0..N {
        iscale[k] = -(NMAX as f32) / max[k];
    }
    let (sumlx, suml2) = sums(&iscale);
    let mut scale = [0.0f32; N];
    let mut best = [0.0f32; N];
    for k in 0..N {
        scale[k] = if suml2[k] != 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
        best[k] = scale[k] * sumlx[k];
    }
    let mut best_iscale = iscale;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let num = -(NMAX as f32 + 0.1f32 * is as f32);
        for k in 0..N {
            iscale[k] = num / max[k];
        }
        let (sumlx, suml2) = sums(&iscale);
        for k in 0..N {
            let better = (suml2[k] > 0.0) & (sumlx[k] * sumlx[k] > best[k] * suml2[k]);
            let s = sumlx[k] / suml2[k];
            best_iscale[k] = if better { iscale[k] } else { best_iscale[k] };
            scale[k] = if better { s } else { scale[k] };
            best[k] = if better { s * sumlx[k] } else { best[k] };
        }
    }
    let mut zero = [false; N];
    for k in 0..N {
        zero[k] = amax[k] < GROUP_MAX_EPS;
        scale[k] = if zero[k] { 0.0 } else { scale[k] };
    }
    (scale, best_iscale, zero)
}

/// Q6_K for `N / 16` consecutive blocks: lane k = sub-block k (16 values at `x[16k..]`).
#[inline(always)]
fn q6k_lanes<const N: usize>(x: &[f32], y: &mut [u8]) {
    q6k_lanes_with::<N>(x, None, y)
}

/// [`q6k_lanes`], or with an importance vector `qw` (the blocks' own 16·N values) the search
/// weighs by it instead of x² (`quantize_row_q6_K_impl`; the rest is the same).
#[inline(always)]
fn q6k_lanes_with<const N: usize>(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    const NMAX: i32 = 32;
    let mut xt = [[0.0f32; N]; 16];
    for k in 0..N {
        let xs: &[f32; 16] = x[16 * k..16 * k + 16].try_into().unwrap();
        for i in 0..16 {
            xt[i][k] = xs[i];
        }
    }
    let mut w = [[0.0f32; N]; 16];
    match qw {
        Some(qw) => {
            for k in 0..N {
                let ws: &[f32; 16] = qw[16 * k..16 * k + 16].try_into().unwrap();
                for i in 0..16 {
                    w[i][k] = ws[i];
                }
            }
        }
        // rmse_type 1: w = x²
        None => {
            for i in 0..16 {
                for k in 0..N {
                    w[i][k] = xt[i][k] * xt[i][k];
                }
            }
        }
    }
    let (scale, best_iscale, zero) = make_qx_lanes::<N, NMAX>(&xt, &w);

    // ---- per block: scales and d (scalar), then the second pass on lanes.
    let nb = N / 16;
    let mut dj = [0.0f32; N];
    let mut live = [true; 4]; // N / 16 <= 4 blocks per group
    for b in 0..nb {
        let sc: &[f32; 16] = scale[16 * b..16 * b + 16].try_into().unwrap();
        match finish_q6k(sc, &mut y[210 * b..210 * b + 210]) {
            Some(d) => dj[16 * b..16 * b + 16].copy_from_slice(&d),
            None => live[b] = false,
        }
    }
    let mut lt = [[0u8; N]; 16];
    for i in 0..16 {
        for k in 0..N {
            let v = xt[i][k];
            let second = nearest_int(v / dj[k]).clamp(-32, 31) + 32;
            let first = nearest_int(best_iscale[k] * v).clamp(-NMAX, NMAX - 1) + NMAX;
            let first = if zero[k] { 0 } else { first };
            lt[i][k] = if dj[k] != 0.0 { second } else { first } as u8;
        }
    }
    for b in 0..nb {
        if !live[b] {
            continue;
        }
        let mut l = [0u8; QK_K];
        for j in 0..16 {
            for i in 0..16 {
                l[16 * j + i] = lt[i][16 * b + j];
            }
        }
        pack_q6k(&l, &mut y[210 * b..210 * b + 210]);
    }
}

/// Q8_K, vectorised within the block (max |x| is order-independent; the signed winner is the
/// first element attaining it, as in ggml).
#[inline(always)]
fn q8k_lanes(x: &[f32], y: &mut [u8]) {
    let x: &[f32; QK_K] = x[..QK_K].try_into().unwrap();
    let mut a = [0.0f32; QK_K];
    for j in 0..QK_K {
        a[j] = x[j].abs();
    }
    let mut n = QK_K;
    let mut t = a;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            t[j] = if t[j] > t[j + n] { t[j] } else { t[j + n] };
        }
    }
    let amax = t[0];
    if amax == 0.0 {
        y[..292].fill(0);
        return;
    }
    let max = crate::legacy::signed_max(x, &a, amax);
    let iscale = -127.0f32 / max;
    let mut q = [0i8; QK_K];
    for j in 0..QK_K {
        q[j] = nearest_int(iscale * x[j]).min(127) as i8;
    }
    for j in 0..QK_K {
        y[4 + j] = q[j] as u8;
    }
    for g in 0..16 {
        let mut sum = 0i32;
        for ii in 0..16 {
            sum += q[16 * g + ii] as i32;
        }
        y[260 + 2 * g..262 + 2 * g].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    y[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// Runs a group kernel over as many whole groups of `$gb` blocks as fit, then single blocks with
/// `$one`. A macro so the kernels inline into each `#[target_feature]` wrapper (a closure
/// parameter would go through a `Fn::call` shim compiled for the baseline ISA).
macro_rules! grouped {
    ($src:expr, $dst:expr, $gb:expr, $bb:expr, $group:expr, $one:expr) => {{
        let (src, dst, gb, bb): (&[f32], &mut [u8], usize, usize) = ($src, $dst, $gb, $bb);
        let ng = src.len() / QK_K / gb;
        let (gs, rs) = src.split_at(ng * gb * QK_K);
        let (gd, rd) = dst.split_at_mut(ng * gb * bb);
        for (x, y) in gs.chunks_exact(gb * QK_K).zip(gd.chunks_exact_mut(gb * bb)) {
            $group(x, y);
        }
        for (x, y) in rs.chunks_exact(QK_K).zip(rd.chunks_exact_mut(bb)) {
            $one(x, y);
        }
    }};
}

#[inline(always)]
fn q4k_rows<const N: usize>(src: &[f32], dst: &mut [u8]) {
    grouped!(src, dst, N / 8, 144, qk45_lanes::<4, N>, qk45_lanes::<4, 8>);
}
#[inline(always)]
fn q5k_rows<const N: usize>(src: &[f32], dst: &mut [u8]) {
    grouped!(src, dst, N / 8, 176, qk45_lanes::<5, N>, qk45_lanes::<5, 8>);
}
#[inline(always)]
fn q6k_rows<const N: usize>(src: &[f32], dst: &mut [u8]) {
    grouped!(src, dst, N / 16, 210, q6k_lanes::<N>, q6k_lanes::<16>);
}
#[inline(always)]
fn q8k_rows(src: &[f32], dst: &mut [u8]) {
    grouped!(src, dst, 1, 292, q8k_lanes, q8k_lanes);
}

per_backend!(q4k_simd, (src: &[f32], dst: &mut [u8]), avx2 => q4k_rows::<16>, avx512 => q4k_rows::<32>, neon => q4k_rows::<8>);
per_backend!(q5k_simd, (src: &[f32], dst: &mut [u8]), avx2 => q5k_rows::<16>, avx512 => q5k_rows::<32>, neon => q5k_rows::<8>);
per_backend!(q6k_simd, (src: &[f32], dst: &mut [u8]), avx2 => q6k_rows::<16>, avx512 => q6k_rows::<32>, neon => q6k_rows::<16>);
per_backend!(q8k_simd, (src: &[f32], dst: &mut [u8]), avx2 => q8k_rows, avx512 => q8k_rows, neon => q8k_rows);

// ================================================================================================
// With an importance vector: `quantize_row_q4_K_impl`, `quantize_row_q5_K_impl`,
// `quantize_row_q6_K_impl` (what `quantize_q*_K` run when `quant_weights` is not NULL).
// ================================================================================================

/// `make_qkx3_quants` as Q4_K / Q5_K call it with weights: `rmin = -0.9`, `rdelta = 0.05`,
/// `nstep = 36`, `use_mad = false`.
const QKX3_RMIN: f32 = -0.9;
const QKX3_RDELTA: f32 = 0.05;
const QKX3_NSTEP: i32 = 36;

/// `make_qkx3_quants(32, nmax, x, weights, L, &the_min, Laux, -0.9f, 0.05f, 36, false)`.
/// Returns `(scale, the_min)`.
fn make_qkx3_quants_ref(x: &[f32], weights: &[f32], l_out: &mut [u8], nmax: i32) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = diff * diff;
        best_mad += weights[i] * diff;
    }
    for is in 0..=QKX3_NSTEP {
        iscale = (QKX3_RMIN + QKX3_RDELTA * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            // C: `v > 0 ? nearest_int(MIN(v, nmax)) : 0` (v may be inf or NaN).
            let v = iscale * (x[i] - min);
            let l = if v > 0.0 {
                nearest_int(if v < nmaxf { v } else { nmaxf })
            } else {
                0
            };
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = diff * diff;
                mad += weights[i] * diff;
            }
            if mad < best_mad {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qp_quants(N, NMAX, x, L, quant_weights)`: a scale for N values, levels 0..=NMAX (the
/// K-quants' super-block scale over 8 sub-block scales or mins; IQ2_XXS's first guess for a
/// sub-block). `L` is `uint8_t` in C, so a negative value wraps; we keep that.
pub(crate) fn make_qp_quants_ref<const N: usize, const NMAX: i32>(
    x: &[f32; N],
    l_out: &mut [u8; N],
    qw: &[f32; N],
) -> f32 {
    let n = N;
    let mut max = 0.0f32;
    for i in 0..n {
        // MAX(max, x[i])
        max = if max > x[i] { max } else { x[i] };
    }
    if max < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let mut iscale = NMAX as f32 / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        let w = qw[i];
        best_mse += w * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + NMAX as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(NMAX);
            let diff = x[i] - scale_is * l as f32;
            let w = qw[i];
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(NMAX);
        l_out[i] = l as u8;
        let w = qw[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(NMAX);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// One super-block's per-element weights `qw · sqrt(sigma2 + x²)` (`sigma2 = 2·Σx²/256`) and
/// their sums per 32-element sub-block (`sw`), in C order.
#[inline(always)]
fn qk45_weights(x: &[f32], qw: &[f32], w: &mut [f32; QK_K], sw: &mut [f32; 8]) {
    let mut sum_x2 = 0.0f32;
    for &v in &x[..QK_K] {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for j in 0..8 {
        for l in 0..32 {
            let e = 32 * j + l;
            w[e] = qw[e] * (sigma2 + x[e] * x[e]).sqrt();
        }
        let mut sumw = 0.0f32;
        for l in 0..32 {
            sumw += w[32 * j + l];
        }
        sw[j] = sumw;
    }
}

/// The weighted header of a Q4_K/Q5_K block: both 6-bit scale sets by `make_qp_quants` against
/// `sw`, then `d`, `dmin`; returns the decoded `(d_j, dm_j)` for the second pass.
#[inline(always)]
pub(crate) fn finish_scales_weighted<const BITS: u32>(
    scales: &[f32; 8],
    mins: &[f32; 8],
    sw: &[f32; 8],
    y: &mut [u8],
) -> ([f32; 8], [f32; 8]) {
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants_ref::<8, 63>(scales, &mut ls, sw);
    let m_block = make_qp_quants_ref::<8, 63>(mins, &mut lm, sw);
    if BITS == 5 {
        // Only Q5_K clamps: `ls = MIN(63, ls)`.
        for j in 0..8 {
            ls[j] = ls[j].min(63);
            lm[j] = lm[j].min(63);
        }
    }
    pack_scales(&ls, &lm, &mut y[4..16]);
    let d16 = f32_to_f16_bits(d_block);
    let dmin16 = f32_to_f16_bits(m_block);
    y[0..2].copy_from_slice(&d16.to_le_bytes());
    y[2..4].copy_from_slice(&dmin16.to_le_bytes());
    let (df, dminf) = (f16_bits_to_f32(d16), f16_bits_to_f32(dmin16));
    let mut dj = [0.0f32; 8];
    let mut dmj = [0.0f32; 8];
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &y[4..16]);
        dj[j] = df * sc as f32;
        dmj[j] = dminf * m as f32;
    }
    (dj, dmj)
}

/// `quantize_row_q4_K_impl` (`BITS = 4`) / `quantize_row_q5_K_impl` (`BITS = 5`) for one block;
/// `qw` is the block's 256 importance values.
pub(crate) fn qk45_weighted_ref<const BITS: u32>(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let nmax = qkx2_params(BITS).nmax;
    let (mut w, mut sw) = ([0.0f32; QK_K], [0.0f32; 8]);
    qk45_weights(x, qw, &mut w, &mut sw);
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for j in 0..8 {
        let r = 32 * j..32 * j + 32;
        (scales[j], mins[j]) = make_qkx3_quants_ref(&x[r.clone()], &w[r.clone()], &mut l[r], nmax);
    }
    let (dj, dmj) = finish_scales_weighted::<BITS>(&scales, &mins, &sw, y);
    for j in 0..8 {
        let d = dj[j];
        if d == 0.0 {
            continue;
        }
        let dm = dmj[j];
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
    pack_qk45::<BITS>(&l, y);
}

/// `quantize_row_q6_K_impl` for one block: as [`q6k_ref`], but each sub-block's search weighs
/// its values by the importance vector itself (`make_qx_quants(16, 32, x, L, 1, qw)`).
pub(crate) fn q6k_weighted_ref(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    for ib in 0..16 {
        let r = 16 * ib..16 * ib + 16;
        scales[ib] = crate::q3k::make_qx_weighted(&x[r.clone()], 32, &qw[r.clone()], &mut l[r]);
    }
    let Some(dj) = finish_q6k(&scales, y) else {
        return;
    };
    for j in 0..16 {
        let d = dj[j];
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as u8;
        }
    }
    pack_q6k(&l, y);
}

/// Weighted Q4_K/Q5_K for `N / 8` consecutive blocks of one row (`qw`: their importance values):
/// `make_qkx3_quants` with lane k = sub-block k, as [`qk45_lanes`] does `make_qkx2_quants`.
#[inline(always)]
fn qk45_weighted_lanes<const BITS: u32, const N: usize>(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let nmax = qkx2_params(BITS).nmax;
    let nmaxf = nmax as f32;
    let nb = N / 8;
    let mut sw = [[0.0f32; 8]; 4]; // N / 8 <= 4 blocks per group
    let mut xt = [[0.0f32; N]; 32];
    let mut w = [[0.0f32; N]; 32];
    for b in 0..nb {
        let mut wb = [0.0f32; QK_K];
        let r = QK_K * b..QK_K * (b + 1);
        qk45_weights(&x[r.clone()], &qw[r.clone()], &mut wb, &mut sw[b]);
        for j in 0..8 {
            let k = 8 * b + j;
            let xs: &[f32; 32] = x[32 * k..32 * k + 32].try_into().unwrap();
            for i in 0..32 {
                xt[i][k] = xs[i];
                w[i][k] = wb[32 * j + i];
            }
        }
    }

    // ---- make_qkx3_quants, one sub-block per lane.
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = w[0];
    let mut sum_x = [0.0f32; N];
    for k in 0..N {
        sum_x[k] = sum_w[k] * xt[0][k];
    }
    for i in 1..32 {
        for k in 0..N {
            let v = xt[i][k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            sum_w[k] += w[i][k];
            sum_x[k] += w[i][k] * v;
        }
    }
    let mut degenerate = [false; N];
    let mut iscale = [0.0f32; N];
    let mut scale = [0.0f32; N];
    for k in 0..N {
        min[k] = if min[k] > 0.0 { 0.0 } else { min[k] };
        degenerate[k] = max[k] <= min[k];
        iscale[k] = nmaxf / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    let min0 = min;
    // The winning (iscale, min) from which L is recomputed at the end, and whether it came from
    // the search loop (whose rounding differs from the first pass's on inf/NaN/out of range).
    let mut best_iscale = iscale;
    let mut best_lmin = min;
    let mut from_loop = [false; N];
    let mut best_mad = [0.0f32; N];
    for i in 0..32 {
        for k in 0..N {
            let l = nearest_int(iscale[k] * (xt[i][k] - min[k])).clamp(0, nmax) as f32;
            let diff = scale[k] * l + min[k] - xt[i][k];
            best_mad[k] += w[i][k] * (diff * diff);
        }
    }
    let mut laux = [[0.0f32; N]; 32];
    for is in 0..=QKX3_NSTEP {
        let num = QKX3_RMIN + QKX3_RDELTA * is as f32 + nmaxf;
        for k in 0..N {
            iscale[k] = num / (max[k] - min[k]);
        }
        let mut sum_l = [0.0f32; N];
        let mut sum_l2 = [0.0f32; N];
        let mut sum_xl = [0.0f32; N];
        for i in 0..32 {
            for k in 0..N {
                let v = iscale[k] * (xt[i][k] - min[k]);
                let c = if v < nmaxf { v } else { nmaxf };
                let l = if v > 0.0 { nearest_int(c) } else { 0 };
                let l = l as f32;
                laux[i][k] = l;
                let wl = w[i][k] * l;
                sum_l[k] += wl;
                sum_l2[k] += wl * l;
                sum_xl[k] += wl * xt[i][k];
            }
        }
        let mut this_scale = [0.0f32; N];
        let mut this_min = [0.0f32; N];
        let mut dpos = [false; N];
        for k in 0..N {
            let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            dpos[k] = d > 0.0;
            let ts = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
            let tm = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
            let alt = sum_xl[k] / sum_l2[k];
            let pos = tm > 0.0;
            this_min[k] = if pos { 0.0 } else { tm };
            this_scale[k] = if pos { alt } else { ts };
        }
        let mut mad = [0.0f32; N];
        for i in 0..32 {
            for k in 0..N {
                let diff = this_scale[k] * laux[i][k] + this_min[k] - xt[i][k];
                mad[k] += w[i][k] * (diff * diff);
            }
        }
        for k in 0..N {
            let better = dpos[k] & (mad[k] < best_mad[k]);
            best_iscale[k] = if better { iscale[k] } else { best_iscale[k] };
            best_lmin[k] = if better { min[k] } else { best_lmin[k] };
            from_loop[k] |= better;
            best_mad[k] = if better { mad[k] } else { best_mad[k] };
            scale[k] = if better { this_scale[k] } else { scale[k] };
            min[k] = if better { this_min[k] } else { min[k] };
        }
    }
    let mut the_min = [0.0f32; N];
    for k in 0..N {
        scale[k] = if degenerate[k] { 0.0 } else { scale[k] };
        the_min[k] = if degenerate[k] { -min0[k] } else { -min[k] };
    }

    // ---- per block: super-block scales (scalar, 8 values), then the second pass on lanes.
    let bb = block_bytes(BITS);
    let mut dj = [0.0f32; N];
    let mut dmj = [0.0f32; N];
    for b in 0..nb {
        let sc: &[f32; 8] = scale[8 * b..8 * b + 8].try_into().unwrap();
        let mn: &[f32; 8] = the_min[8 * b..8 * b + 8].try_into().unwrap();
        let (d8, dm8) = finish_scales_weighted::<BITS>(sc, mn, &sw[b], &mut y[bb * b..bb * b + bb]);
        dj[8 * b..8 * b + 8].copy_from_slice(&d8);
        dmj[8 * b..8 * b + 8].copy_from_slice(&dm8);
    }
    let mut lt = [[0u8; N]; 32];
    for i in 0..32 {
        for k in 0..N {
            let x = xt[i][k];
            let second = nearest_int((x + dmj[k]) / dj[k]).clamp(0, nmax);
            let v = best_iscale[k] * (x - best_lmin[k]);
            let c = if v < nmaxf { v } else { nmaxf };
            let looped = if v > 0.0 { nearest_int(c) } else { 0 };
            let first = nearest_int(v).clamp(0, nmax);
            let first = if from_loop[k] { looped } else { first };
            let first = if degenerate[k] { 0 } else { first };
            lt[i][k] = if dj[k] != 0.0 { second } else { first } as u8;
        }
    }
    for b in 0..nb {
        let mut l = [0u8; QK_K];
        for j in 0..8 {
            for i in 0..32 {
                l[32 * j + i] = lt[i][8 * b + j];
            }
        }
        pack_qk45::<BITS>(&l, &mut y[bb * b..bb * b + bb]);
    }
}

/// One row with an importance vector: whole groups of `gb` blocks through `$group`, the rest one
/// block at a time through `$one` (a macro for the reason [`grouped!`] is one).
macro_rules! grouped_weighted {
    ($x:expr, $qw:expr, $y:expr, $gb:expr, $bb:expr, $group:expr, $one:expr) => {{
        let (x, qw, y, gb, bb): (&[f32], &[f32], &mut [u8], usize, usize) = ($x, $qw, $y, $gb, $bb);
        let ng = x.len() / QK_K / gb;
        let (gx, rx) = x.split_at(ng * gb * QK_K);
        let (gw, rw) = qw.split_at(ng * gb * QK_K);
        let (gy, ry) = y.split_at_mut(ng * gb * bb);
        for ((x, w), y) in gx
            .chunks_exact(gb * QK_K)
            .zip(gw.chunks_exact(gb * QK_K))
            .zip(gy.chunks_exact_mut(gb * bb))
        {
            $group(x, w, y);
        }
        for ((x, w), y) in rx
            .chunks_exact(QK_K)
            .zip(rw.chunks_exact(QK_K))
            .zip(ry.chunks_exact_mut(bb))
        {
            $one(x, w, y);
        }
    }};
}

#[inline(always)]
fn q4k_weighted_rows<const N: usize>(x: &[f32], qw: &[f32], y: &mut [u8]) {
    grouped_weighted!(
        x,
        qw,
        y,
        N / 8,
        144,
        qk45_weighted_lanes::<4, N>,
        qk45_weighted_lanes::<4, 8>
    );
}
#[inline(always)]
fn q5k_weighted_rows<const N: usize>(x: &[f32], qw: &[f32], y: &mut [u8]) {
    grouped_weighted!(
        x,
        qw,
        y,
        N / 8,
        176,
        qk45_weighted_lanes::<5, N>,
        qk45_weighted_lanes::<5, 8>
    );
}
#[inline(always)]
fn q6k_weighted_rows<const N: usize>(x: &[f32], qw: &[f32], y: &mut [u8]) {
    grouped_weighted!(
        x,
        qw,
        y,
        N / 16,
        210,
        |x, w, y| q6k_lanes_with::<N>(x, Some(w), y),
        |x, w, y| q6k_lanes_with::<16>(x, Some(w), y)
    );
}

per_backend!(q4k_weighted_simd, (x: &[f32], qw: &[f32], y: &mut [u8]), avx2 => q4k_weighted_rows::<16>, avx512 => q4k_weighted_rows::<32>, neon => q4k_weighted_rows::<8>);
per_backend!(q5k_weighted_simd, (x: &[f32], qw: &[f32], y: &mut [u8]), avx2 => q5k_weighted_rows::<16>, avx512 => q5k_weighted_rows::<32>, neon => q5k_weighted_rows::<8>);
per_backend!(q6k_weighted_simd, (x: &[f32], qw: &[f32], y: &mut [u8]), avx2 => q6k_weighted_rows::<16>, avx512 => q6k_weighted_rows::<32>, neon => q6k_weighted_rows::<16>);

/// One row of Q4_K, Q5_K or Q6_K with its importance vector `qw` (`ty` one of those three;
/// `backend` available).
pub(crate) fn weighted_row(
    ty: crate::GgmlType,
    backend: crate::Backend,
    x: &[f32],
    qw: &[f32],
    y: &mut [u8],
) {
    use crate::GgmlType::*;
    if backend != crate::Backend::Scalar {
        // SAFETY: the caller checked that `backend` is available.
        unsafe {
            match ty {
                Q4_K => q4k_weighted_simd::run(backend, x, qw, y),
                Q5_K => q5k_weighted_simd::run(backend, x, qw, y),
                Q6_K => q6k_weighted_simd::run(backend, x, qw, y),
                _ => unreachable!("weighted_row: {ty}"),
            }
        }
        return;
    }
    type BlockFn = fn(&[f32], &[f32], &mut [u8]);
    let (f, bb): (BlockFn, usize) = match ty {
        Q4_K => (qk45_weighted_ref::<4>, 144),
        Q5_K => (qk45_weighted_ref::<5>, 176),
        Q6_K => (q6k_weighted_ref, 210),
        _ => unreachable!("weighted_row: {ty}"),
    };
    for ((xb, wb), yb) in x
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(y.chunks_exact_mut(bb))
    {
        f(xb, wb, yb);
    }
}

// ================================================================================================
// Dequantisation (`dequantize_row_q*_K`), same operation order as ggml.
// ================================================================================================

pub(crate) fn dequant_qk45<const BITS: u32>(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    let min = f16_bits_to_f32(u16::from_le_bytes([x[2], x[3]]));
    let scales = &x[4..16];
    let (qh, ql) = if BITS == 4 {
        (&x[0..0], &x[16..144])
    } else {
        (&x[16..48], &x[48..176])
    };
    for c in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * c, scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            let q = ql[32 * c + l];
            let (mut lo, mut hi) = ((q & 0xF) as i32, (q >> 4) as i32);
            if BITS == 5 {
                lo += if qh[l] & (1 << (2 * c)) != 0 { 16 } else { 0 };
                hi += if qh[l] & (2 << (2 * c)) != 0 { 16 } else { 0 };
            }
            y[64 * c + l] = d1 * lo as f32 - m1;
            y[64 * c + 32 + l] = d2 * hi as f32 - m2;
        }
    }
}

pub(crate) fn dequant_q6k(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[208], x[209]]));
    for h in 0..2 {
        let ql = &x[64 * h..64 * h + 64];
        let qh = &x[128 + 32 * h..128 + 32 * h + 32];
        let sc = &x[192 + 8 * h..192 + 8 * h + 8];
        let y = &mut y[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8 as f32) * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
        }
    }
}

pub(crate) fn dequant_q8k(x: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    for j in 0..QK_K {
        y[j] = d * (x[4 + j] as i8 as f32);
    }
}

#[allow(dead_code)]
pub(crate) fn fp16(x: f32) -> f32 {
    fp16_round_trip(x)
}
