//! Q3_K without an importance vector (ggml's `quantize_row_q3_K_ref`).
//!
//! Format (110 bytes per 256 elements, `block_q3_K`): `hmask[32]` (bit 2 of each 3-bit value:
//! element `j`'s bit is bit `j / 32` of byte `j % 32`), `qs[64]` (bits 0-1: byte `32·h + l` holds
//! elements `128·h + l + 32·s` in bits `2s`), `scales[12]` (16 six-bit scales: low nibbles in
//! bytes 0-7, two per byte, high 2 bits in bytes 8-11), `d` (f16). Element = `d · (scale - 32) ·
//! (q - 4)`.
//!
//! Each 16-element sub-block gets a scale from `make_q3_quants` (rmse search): round at
//! `-4/max`, then up to five passes of coordinate descent that move one value at a time when
//! it improves `sumlx² / suml2` (weights x²). The 16 scales are then quantized to 6 bits
//! against `-32/max_scale`, and every value is re-rounded with its final scale.
//!
//! The lane kernel runs `make_q3_quants` for N sub-blocks at once, one per lane, with the same
//! float operations in the same order. A pass that changes nothing leaves the state as it was,
//! so running all five passes on every lane gives the C's early exit's result.

use crate::float::{f16_bits_to_f32, f32_to_f16_bits};
use crate::kquants::make_qx_lanes;
use crate::simd::{abs_max, abs_max_lanes, nearest_int, per_backend};
use crate::QK_K;

const GROUP_MAX_EPS: f32 = 1e-15;
const NMAX: i32 = 4;

/// `make_q3_quants(16, 4, x, L, true)`: the sub-block's scale; `l` gets values in 0..8 (0 for
/// an all-zero sub-block).
fn make_q3_quants_ref(x: &[f32], l: &mut [i8]) -> f32 {
    let (amax, max) = abs_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(NMAX as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..16 {
        let li = nearest_int(iscale * x[i]).clamp(-NMAX, NMAX - 1);
        l[i] = li as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * li as f32;
        suml2 += w * li as f32 * li as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..16 {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-NMAX, NMAX - 1);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
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
    for v in l.iter_mut() {
        *v += NMAX as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Packs 16 six-bit scales (0..64) as `block_q3_K.scales`.
fn pack_scales(ls: &[u8; 16]) -> [u8; 12] {
    let mut sc = [0u8; 12];
    for (j, &v) in ls.iter().enumerate() {
        if j < 8 {
            sc[j] = v & 0xf;
        } else {
            sc[j - 8] |= (v & 0xf) << 4;
        }
        sc[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
    }
    sc
}

/// The reference's block header: the 16 scales against `-32/max_scale`, and `d`.
fn header(scales: &[f32; 16]) -> ([u8; 12], u16) {
    let (_, max_scale) = abs_max(scales);
    if max_scale == 0.0 {
        return ([0; 12], f32_to_f16_bits(0.0));
    }
    let iscale = -32.0f32 / max_scale;
    // C: `int8_t l = nearest_int(...)`, clamped, + 32 (the int8 truncation comes first).
    let ls = scales.map(|s| ((nearest_int(iscale * s) as i8 as i32).clamp(-32, 31) + 32) as u8);
    (pack_scales(&ls), f32_to_f16_bits(1.0 / iscale))
}

/// Everything after the header: the final values (0..8) and the packing. `l` holds the sub-block
/// searches' values, kept for sub-blocks whose final scale is 0 (as in C).
#[inline(always)]
fn finish_q3k(x: &[f32], sc: [u8; 12], d_bits: u16, l: &mut [i32; QK_K], y: &mut [u8]) {
    let dd = f16_bits_to_f32(d_bits);
    let mut dj = [0.0f32; 16];
    for (j, d) in dj.iter_mut().enumerate() {
        let lo = if j < 8 { sc[j] & 0xf } else { sc[j - 8] >> 4 };
        let s = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        *d = dd * s as f32;
    }
    // Branch-free so it vectorises: a sub-block whose scale is 0 keeps its values (the C skips it).
    for j in 0..16 {
        let d = dj[j];
        for ii in 0..16 {
            let e = 16 * j + ii;
            let v = nearest_int(x[e] / d).clamp(-4, 3) + 4;
            l[e] = if d == 0.0 { l[e] } else { v };
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    // Element e's bit 2 goes to bit e / 32 of byte e % 32.
    let mut hm = [0i32; 32];
    for r in 0..8 {
        for c in 0..32 {
            let e = 32 * r + c;
            let high = (l[e] > 3) as i32;
            hm[c] |= high << r;
            l[e] -= 4 * high;
        }
    }
    for c in 0..32 {
        hmask[c] = hm[c] as u8;
    }
    for h in 0..2 {
        for i in 0..32 {
            let j = 128 * h + i;
            qs[32 * h + i] = (l[j] | (l[j + 32] << 2) | (l[j + 64] << 4) | (l[j + 96] << 6)) as u8;
        }
    }
    rest[..12].copy_from_slice(&sc);
    rest[12..14].copy_from_slice(&d_bits.to_le_bytes());
}

/// The reference, one super-block.
pub(crate) fn q3k_ref(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    for j in 0..16 {
        scales[j] = make_q3_quants_ref(&x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
    }
    let (sc, d) = header(&scales);
    finish_q3k(x, sc, d, &mut l.map(i32::from), y);
}

/// `make_q3_quants` for N sub-blocks (one per lane): scales, and values in `lt[i][lane]`.
#[inline(always)]
fn make_q3_lanes<const N: usize>(xt: &[[f32; N]; 16], lt: &mut [[i32; N]; 16]) -> [f32; N] {
    let (amax, max) = abs_max_lanes(xt);
    let mut iscale = [0.0f32; N];
    for k in 0..N {
        iscale[k] = -(NMAX as f32) / max[k];
    }
    let mut sumlx = [0.0f32; N];
    let mut suml2 = [0.0f32; N];
    for i in 0..16 {
        for k in 0..N {
            let li = nearest_int(iscale[k] * xt[i][k]).clamp(-NMAX, NMAX - 1);
            lt[i][k] = li;
            let w = xt[i][k] * xt[i][k];
            sumlx[k] += w * xt[i][k] * li as f32;
            suml2[k] += w * li as f32 * li as f32;
        }
    }
    for _ in 0..5 {
        let mut changed = [false; N];
        for i in 0..16 {
            for k in 0..N {
                let x = xt[i][k];
                let w = x * x;
                let li = lt[i][k] as f32;
                let slx0 = sumlx[k] - w * x * li;
                let sl20 = suml2[k] - w * li * li;
                let new_l = nearest_int(x * sl20 / slx0).clamp(-NMAX, NMAX - 1);
                let slx = slx0 + w * x * new_l as f32;
                let sl2 = sl20 + w * new_l as f32 * new_l as f32;
                let take = (slx0 > 0.0)
                    & (new_l != lt[i][k])
                    & (sl2 > 0.0)
                    & (slx * slx * suml2[k] > sumlx[k] * sumlx[k] * sl2);
                lt[i][k] = if take { new_l } else { lt[i][k] };
                sumlx[k] = if take { slx } else { sumlx[k] };
                suml2[k] = if take { sl2 } else { suml2[k] };
                changed[k] |= take;
            }
        }
        // A pass that changed no lane would change none the next time either.
        if !changed.iter().any(|&c| c) {
            break;
        }
    }
    let mut scale = [0.0f32; N];
    for k in 0..N {
        let zero = amax[k] < GROUP_MAX_EPS;
        scale[k] = if suml2[k] > 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
        scale[k] = if zero { 0.0 } else { scale[k] };
        for row in lt.iter_mut() {
            row[k] = if zero { 0 } else { row[k] + NMAX };
        }
    }
    scale
}

/// N/16 super-blocks: their 16·(N/16) sub-block searches on lanes, then each one's finish.
#[inline(always)]
fn q3k_lanes<const N: usize>(x: &[f32], y: &mut [u8]) {
    let mut xt = [[0.0f32; N]; 16];
    for k in 0..N {
        for i in 0..16 {
            xt[i][k] = x[16 * k + i];
        }
    }
    let mut lt = [[0i32; N]; 16];
    let scales = make_q3_lanes(&xt, &mut lt);
    for b in 0..N / 16 {
        let mut l = [0i32; QK_K];
        for s in 0..16 {
            for i in 0..16 {
                l[16 * s + i] = lt[i][16 * b + s];
            }
        }
        let sb: &[f32; 16] = scales[16 * b..16 * b + 16].try_into().unwrap();
        let (sc, d) = header(sb);
        finish_q3k(
            &x[QK_K * b..QK_K * (b + 1)],
            sc,
            d,
            &mut l,
            &mut y[110 * b..110 * (b + 1)],
        );
    }
}

#[inline(always)]
fn q3k_rows<const N: usize>(src: &[f32], dst: &mut [u8]) {
    let g = N / 16;
    let ng = src.len() / QK_K / g;
    let (gs, rs) = src.split_at(ng * g * QK_K);
    let (gd, rd) = dst.split_at_mut(ng * g * 110);
    for (x, y) in gs.chunks_exact(g * QK_K).zip(gd.chunks_exact_mut(g * 110)) {
        q3k_lanes::<N>(x, y);
    }
    for (x, y) in rs.chunks_exact(QK_K).zip(rd.chunks_exact_mut(110)) {
        q3k_lanes::<16>(x, y);
    }
}

per_backend!(q3k_simd, (src: &[f32], dst: &mut [u8]), avx2 => q3k_rows::<16>, avx512 => q3k_rows::<32>, neon => q3k_rows::<16>);

// ---- With an importance vector: `quantize_row_q3_K_impl`.

/// `make_qx_quants(n, nmax, x, L, 1, qw)`: weighted search over 19 scales; `l` gets 0..2·nmax.
pub(crate) fn make_qx_weighted(x: &[f32], nmax: i32, qw: &[f32], l: &mut [u8]) -> f32 {
    let (amax, max) = abs_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for (&v, &w) in x.iter().zip(qw) {
            let li = quant(iscale, v) as f32;
            sumlx += w * v * li;
            suml2 += w * li * li;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    let mut best_iscale = iscale;
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            best_iscale = iscale;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    for (o, &v) in l.iter_mut().zip(x) {
        *o = (nmax + quant(best_iscale, v)) as u8;
    }
    scale
}

/// The weights of one super-block's sub-blocks (`weight[]` in the C) and their sums (`sw`).
fn q3k_weights(x: &[f32], qw: &[f32], w: &mut [f32; QK_K], sw: &mut [f32; 16]) {
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    for j in 0..16 {
        let mut sumw = 0.0f32;
        for i in 16 * j..16 * j + 16 {
            w[i] = qw[i] * (sigma2 + x[i] * x[i]).sqrt();
            sumw += w[i];
        }
        sw[j] = sumw;
    }
}

/// The weighted header: the 16 scales quantized by the same weighted search (weights `sw`).
fn header_weighted(scales: &[f32; 16], sw: &[f32; 16]) -> ([u8; 12], u16) {
    let mut ls = [0u8; 16];
    let d_block = make_qx_weighted(scales, 32, sw, &mut ls);
    (pack_scales(&ls), f32_to_f16_bits(d_block))
}

/// The reference with an importance vector: one super-block, `qw` its 256 weights.
pub(crate) fn q3k_weighted_ref(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let (mut w, mut sw) = ([0.0f32; QK_K], [0.0f32; 16]);
    q3k_weights(x, qw, &mut w, &mut sw);
    let mut l8 = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    for j in 0..16 {
        let r = 16 * j..16 * j + 16;
        scales[j] = make_qx_weighted(&x[r.clone()], 4, &w[r.clone()], &mut l8[r]);
    }
    let (sc, d) = header_weighted(&scales, &sw);
    finish_q3k(x, sc, d, &mut l8.map(i32::from), y);
}

/// One row with an importance vector: N/16 super-blocks per lane search.
#[inline(always)]
fn q3k_weighted_rows<const N: usize>(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let nb = x.len() / QK_K;
    let g = N / 16;
    let mut first = 0;
    while first < nb {
        let n = g.min(nb - first);
        let mut w = [[0.0f32; QK_K]; 4];
        let mut sw = [[0.0f32; 16]; 4];
        let mut xt = [[0.0f32; N]; 16];
        let mut wt = [[0.0f32; N]; 16];
        for b in 0..n {
            let r = QK_K * (first + b)..QK_K * (first + b + 1);
            q3k_weights(&x[r.clone()], &qw[r.clone()], &mut w[b], &mut sw[b]);
            for s in 0..16 {
                for i in 0..16 {
                    xt[i][16 * b + s] = x[r.start + 16 * s + i];
                    wt[i][16 * b + s] = w[b][16 * s + i];
                }
            }
        }
        let (scales, best_iscale, zero) = make_qx_lanes::<N, NMAX>(&xt, &wt);
        let mut lt = [[0i32; N]; 16];
        for i in 0..16 {
            for k in 0..N {
                let v = NMAX + nearest_int(best_iscale[k] * xt[i][k]).clamp(-NMAX, NMAX - 1);
                lt[i][k] = if zero[k] { 0 } else { v };
            }
        }
        for b in 0..n {
            let mut l = [0i32; QK_K];
            for s in 0..16 {
                for i in 0..16 {
                    l[16 * s + i] = lt[i][16 * b + s];
                }
            }
            let sb: &[f32; 16] = scales[16 * b..16 * b + 16].try_into().unwrap();
            let (sc, d) = header_weighted(sb, &sw[b]);
            let blk = first + b;
            finish_q3k(
                &x[QK_K * blk..QK_K * (blk + 1)],
                sc,
                d,
                &mut l,
                &mut y[110 * blk..110 * (blk + 1)],
            );
        }
        first += n;
    }
}

fn q3k_weighted_16(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    q3k_weighted_rows::<16>(x, qw.expect("weighted"), y)
}
fn q3k_weighted_32(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    q3k_weighted_rows::<32>(x, qw.expect("weighted"), y)
}

per_backend!(q3k_weighted_simd, (x: &[f32], qw: Option<&[f32]>, y: &mut [u8]), avx2 => q3k_weighted_16, avx512 => q3k_weighted_32, neon => q3k_weighted_16);

/// `dequantize_row_q3_K`, one block.
pub(crate) fn dequant_q3k(x: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&x[0..32], &x[32..96], &x[96..108]);
    let d_all = f16_bits_to_f32(u16::from_le_bytes([x[108], x[109]]));
    for j in 0..16 {
        let lo = if j < 8 { sc[j] & 0xf } else { sc[j - 8] >> 4 };
        let s = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        let dl = d_all * s as f32;
        for i in 0..16 {
            let e = 16 * j + i;
            let (h, l) = (e / 128, e % 128);
            let q = ((qs[32 * h + l % 32] >> (2 * (l / 32))) & 3) as i32;
            let high = hmask[e % 32] & (1 << (e / 32)) != 0;
            y[e] = dl * (q - if high { 0 } else { 4 }) as f32;
        }
    }
}
