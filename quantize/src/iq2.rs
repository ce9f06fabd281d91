//! IQ2_XXS: 2.0625 bits per weight, groups of eight values on a 256-point grid, only with an
//! importance vector (ggml's `quantize_row_iq2_xxs_impl`; ggml asserts that there is one).
//!
//! Format (66 bytes per 256 elements, `block_iq2_xxs`): `d` (f16), then per 32-element
//! sub-block two little-endian u32: the first holds the four groups' 8-bit grid indices (group
//! `k` in byte `k`), the second four 7-bit sign fields (one per group; the eighth sign is the
//! parity of the seven, so every group has an even number of negatives) and the 4-bit scale in
//! bits 28..32. Element = `d · (0.5 + scale) · 0.25 · grid[index][i] · ±1`, the grid's values
//! being 8, 25 and 43 (`iq2xxs_grid`); the search uses levels 0..3 as `2l + 1`.
//!
//! The search (per sub-block): weights `qw · sqrt(σ² + x²)` (σ² = mean(x²) over the super-block,
//! unlike the other grids' 2·mean), signs split off as IQ3_XXS does ([`split_signs`]), a first
//! scale from `make_qp_quants(32, 4)` (`eff_max` = 3 × it), then 13 inverse scales `id = (5 +
//! 0.1·is) / eff_max`, is in -6..=6, each rounding every magnitude to a level and moving
//! off-grid groups to their nearest grid neighbour (`iq2_find_best_neighbour`; neighbours: the
//! grid points at the two nearest distances). The best `sumqx² / sumq2` wins, then one more
//! round of every group at its scale. The eight sub-block scales become 4 bits against
//! `max_scale / 31`. A sub-block whose largest magnitude is under 1e-15, or whose first scale
//! is not positive, is skipped (zero bytes, scale 0). Where ggml aborts (no finite neighbour
//! distance, a NaN scale) we refuse the block.
//!
//! The lane kernel is IQ3's ([`crate::iq3`]) with eight-value groups: sixteen sub-blocks per
//! pass, `make_qp_quants` per lane (scalar: it is a small part), the trials and the sums in
//! lanes, the neighbour searches collected and run back to back over sixteen neighbours at a
//! time.

use std::sync::OnceLock;

use crate::float::{f16_bits_to_f32, f32_to_f16_bits};
use crate::iq3::{split_signs, split_signs_lanes};
use crate::kquants::make_qp_quants_ref;
use crate::simd::{nearest_int, per_backend};
use crate::QK_K;

/// Bytes per block.
const BLOCK_BYTES: usize = 66;
const K_MAX_Q: i32 = 3;
/// Neighbours of an off-grid code: the points at the two nearest distances.
const NWANT: usize = 2;
const GROUP_MAX_EPS: f32 = 1e-15;

/// `iq2xxs_grid` (`ggml-common.h`): 256 points of eight bytes, each 8, 25 or 43 (levels 0, 1,
/// 2). A format constant: the decoder reads it; the search uses its levels (ggml's
/// `kgrid_2bit_256`, sorted by the 16-bit code of two bits per level, as these are).
#[rustfmt::skip]
const GRID: [u64; 256] = [
    0x0808080808080808, 0x080808080808082b, 0x0808080808081919, 0x0808080808082b08,
    0x0808080808082b2b, 0x0808080808190819, 0x0808080808191908, 0x08080808082b0808,
    0x08080808082b082b, 0x08080808082b2b08, 0x08080808082b2b2b, 0x0808080819080819,
    0x0808080819081908, 0x0808080819190808, 0x0808080819192b08, 0x08080808192b0819,
    0x08080808192b1908, 0x080808082b080808, 0x080808082b08082b, 0x080808082b082b2b,
    0x080808082b2b082b, 0x0808081908080819, 0x0808081908081908, 0x0808081908190808,
    0x0808081908191919, 0x0808081919080808, 0x080808192b081908, 0x080808192b192b08,
    0x0808082b08080808, 0x0808082b0808082b, 0x0808082b082b082b, 0x0808082b2b08082b,
    0x0808190808080819, 0x0808190808081908, 0x0808190808190808, 0x08081908082b0819,
    0x08081908082b1908, 0x0808190819080808, 0x080819081908082b, 0x0808190819082b08,
    0x08081908192b0808, 0x080819082b080819, 0x080819082b081908, 0x080819082b190808,
    0x080819082b2b1908, 0x0808191908080808, 0x080819190808082b, 0x0808191908082b08,
    0x08081919082b0808, 0x080819191908192b, 0x08081919192b2b19, 0x080819192b080808,
    0x080819192b190819, 0x0808192b08082b19, 0x0808192b08190808, 0x0808192b19080808,
    0x0808192b2b081908, 0x0808192b2b2b1908, 0x08082b0808080808, 0x08082b0808081919,
    0x08082b0808082b08, 0x08082b0808191908, 0x08082b08082b2b08, 0x08082b0819080819,
    0x08082b0819081908, 0x08082b0819190808, 0x08082b081919082b, 0x08082b082b082b08,
    0x08082b1908081908, 0x08082b1919080808, 0x08082b2b0808082b, 0x08082b2b08191908,
    0x0819080808080819, 0x0819080808081908, 0x0819080808190808, 0x08190808082b0819,
    0x0819080819080808, 0x08190808192b0808, 0x081908082b081908, 0x081908082b190808,
    0x081908082b191919, 0x0819081908080808, 0x0819081908082b08, 0x08190819082b0808,
    0x0819081919190808, 0x0819081919192b2b, 0x081908192b080808, 0x0819082b082b1908,
    0x0819082b19081919, 0x0819190808080808, 0x0819190808082b08, 0x08191908082b0808,
    0x08191908082b1919, 0x0819190819082b19, 0x081919082b080808, 0x0819191908192b08,
    0x08191919192b082b, 0x0819192b08080808, 0x0819192b0819192b, 0x08192b0808080819,
    0x08192b0808081908, 0x08192b0808190808, 0x08192b0819080808, 0x08192b082b080819,
    0x08192b1908080808, 0x08192b1908081919, 0x08192b192b2b0808, 0x08192b2b19190819,
    0x082b080808080808, 0x082b08080808082b, 0x082b080808082b2b, 0x082b080819081908,
    0x082b0808192b0819, 0x082b08082b080808, 0x082b08082b08082b, 0x082b0819082b2b19,
    0x082b081919082b08, 0x082b082b08080808, 0x082b082b0808082b, 0x082b190808080819,
    0x082b190808081908, 0x082b190808190808, 0x082b190819080808, 0x082b19081919192b,
    0x082b191908080808, 0x082b191919080819, 0x082b1919192b1908, 0x082b192b2b190808,
    0x082b2b0808082b08, 0x082b2b08082b0808, 0x082b2b082b191908, 0x082b2b2b19081908,
    0x1908080808080819, 0x1908080808081908, 0x1908080808190808, 0x1908080808192b08,
    0x19080808082b0819, 0x19080808082b1908, 0x1908080819080808, 0x1908080819082b08,
    0x190808081919192b, 0x19080808192b0808, 0x190808082b080819, 0x190808082b081908,
    0x190808082b190808, 0x1908081908080808, 0x19080819082b0808, 0x19080819192b0819,
    0x190808192b080808, 0x190808192b081919, 0x1908082b08080819, 0x1908082b08190808,
    0x1908082b19082b08, 0x1908082b1919192b, 0x1908082b192b2b08, 0x1908190808080808,
    0x1908190808082b08, 0x19081908082b0808, 0x190819082b080808, 0x190819082b192b19,
    0x190819190819082b, 0x19081919082b1908, 0x1908192b08080808, 0x19082b0808080819,
    0x19082b0808081908, 0x19082b0808190808, 0x19082b0819080808, 0x19082b0819081919,
    0x19082b1908080808, 0x19082b1919192b08, 0x19082b19192b0819, 0x19082b192b08082b,
    0x19082b2b19081919, 0x19082b2b2b190808, 0x1919080808080808, 0x1919080808082b08,
    0x1919080808190819, 0x1919080808192b19, 0x19190808082b0808, 0x191908082b080808,
    0x191908082b082b08, 0x1919081908081908, 0x191908191908082b, 0x191908192b2b1908,
    0x1919082b2b190819, 0x191919082b190808, 0x191919082b19082b, 0x1919191908082b2b,
    0x1919192b08080819, 0x1919192b19191908, 0x19192b0808080808, 0x19192b0808190819,
    0x19192b0808192b19, 0x19192b08192b1908, 0x19192b1919080808, 0x19192b2b08082b08,
    0x192b080808081908, 0x192b080808190808, 0x192b080819080808, 0x192b0808192b2b08,
    0x192b081908080808, 0x192b081919191919, 0x192b082b08192b08, 0x192b082b192b0808,
    0x192b190808080808, 0x192b190808081919, 0x192b191908190808, 0x192b19190819082b,
    0x192b19192b081908, 0x192b2b081908082b, 0x2b08080808080808, 0x2b0808080808082b,
    0x2b08080808082b2b, 0x2b08080819080819, 0x2b0808082b08082b, 0x2b08081908081908,
    0x2b08081908192b08, 0x2b08081919080808, 0x2b08082b08190819, 0x2b08190808080819,
    0x2b08190808081908, 0x2b08190808190808, 0x2b08190808191919, 0x2b08190819080808,
    0x2b081908192b0808, 0x2b08191908080808, 0x2b0819191908192b, 0x2b0819192b191908,
    0x2b08192b08082b19, 0x2b08192b19080808, 0x2b08192b192b0808, 0x2b082b080808082b,
    0x2b082b1908081908, 0x2b082b2b08190819, 0x2b19080808081908, 0x2b19080808190808,
    0x2b190808082b1908, 0x2b19080819080808, 0x2b1908082b2b0819, 0x2b1908190819192b,
    0x2b1908192b080808, 0x2b19082b19081919, 0x2b19190808080808, 0x2b191908082b082b,
    0x2b19190819081908, 0x2b19191919190819, 0x2b192b082b080819, 0x2b192b19082b0808,
    0x2b2b08080808082b, 0x2b2b080819190808, 0x2b2b08082b081919, 0x2b2b081908082b19,
    0x2b2b082b08080808, 0x2b2b190808192b08, 0x2b2b2b0819190808, 0x2b2b2b1908081908,
];

/// Level (0..3) of value `i` (0..8) of grid point `j`.
#[inline(always)]
fn level(j: usize, i: usize) -> i32 {
    match (GRID[j] >> (8 * i)) & 0xff {
        8 => 0,
        25 => 1,
        _ => 2,
    }
}

/// Search-grid value `2l + 1` of value `i` of point `j`.
#[inline(always)]
fn grid_value(j: usize, i: usize) -> i32 {
    2 * level(j, i) + 1
}

/// The 16-bit code of eight levels (two bits each). The search clamps levels to 0..3, so codes
/// stay below 0xAAAB (ggml's `kmap_size` of 43692).
#[inline(always)]
fn code(l: &[i8]) -> usize {
    let mut u = 0usize;
    for i in 0..8 {
        u |= (l[i] as usize) << (2 * i);
    }
    u
}

const MAP_SIZE: usize = 43692;
/// The map entry of a code with a level 3, which the search never forms.
const UNREACHABLE: i32 = i32::MIN;

/// `kmap_q2xs` and `kneighbors_q2xs` as `iq2xs_init_impl(GGML_TYPE_IQ2_XXS)` builds them, for
/// the codes the search can reach (every level below 3; ggml also lists codes with a level 3,
/// which its search never looks up).
struct Tables {
    /// Grid index, or `-(o + 1)` where `neighbours[o]` is the count and the list follows, or
    /// [`UNREACHABLE`].
    map: Vec<i32>,
    neighbours: Vec<u16>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut map = vec![UNREACHABLE; MAP_SIZE];
        for j in 0..GRID.len() {
            let mut index = 0usize;
            for i in 0..8 {
                index |= (level(j, i) as usize) << (2 * i);
            }
            map[index] = j as i32;
        }
        let mut neighbours = Vec::new();
        let mut dist2: Vec<(i32, usize)> = Vec::with_capacity(GRID.len());
        for u in 0..MAP_SIZE {
            let reachable = (0..8).all(|i| (u >> (2 * i)) & 3 < K_MAX_Q as usize);
            if map[u] >= 0 || !reachable {
                // (a grid point's levels are below 3 too)
                continue;
            }
            let pos: [i32; 8] = std::array::from_fn(|i| 2 * ((u >> (2 * i)) & 3) as i32 + 1);
            dist2.clear();
            for j in 0..GRID.len() {
                let mut d2 = 0;
                for i in 0..8 {
                    let d = grid_value(j, i) - pos[i];
                    d2 += d * d;
                }
                dist2.push((d2, j));
            }
            // By distance, then index: iq2_compare_func, a total order.
            dist2.sort_unstable();
            map[u] = -(neighbours.len() as i32 + 1);
            let start = neighbours.len();
            neighbours.push(0);
            let (mut d2, mut nhave) = (dist2[0].0, 1);
            for &(d, j) in &dist2 {
                if d > d2 {
                    if nhave == NWANT {
                        break;
                    }
                    d2 = d;
                    nhave += 1;
                }
                neighbours.push(j as u16);
            }
            neighbours[start] = (neighbours.len() - start - 1) as u16;
        }
        Tables { map, neighbours }
    })
}

/// The off-grid neighbour list of `code` (count first), or `None` on the grid (or out of the
/// search's reach).
#[inline(always)]
fn neighbours_of(t: &Tables, code: usize) -> Option<&[u16]> {
    let m = t.map[code];
    (m < 0 && m != UNREACHABLE).then(|| &t.neighbours[(-m - 1) as usize..])
}

/// `iq2_find_best_neighbour`: the first nearest neighbour (weights `w`, at `scale`); `l` gets
/// its levels. `None` where C's `GGML_ASSERT(grid_index >= 0)` fires.
fn find_best_neighbour(
    neighbours: &[u16],
    xval: &[f32],
    w: &[f32],
    scale: f32,
    l: &mut [i8],
) -> Option<usize> {
    let n = neighbours[0] as usize;
    let mut best_d2 = f32::MAX;
    let mut grid_index = None;
    for &j in &neighbours[1..=n] {
        let mut d2 = 0.0f32;
        for i in 0..8 {
            let q = grid_value(j as usize, i) as f32;
            let diff = scale * q - xval[i];
            d2 += w[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            grid_index = Some(j as usize);
        }
    }
    let g = grid_index?;
    for i in 0..8 {
        l[i] = level(g, i) as i8;
    }
    Some(g)
}

/// What the search settles for one sub-block.
#[derive(Clone, Copy)]
struct SubBlock {
    l: [i8; 32],
    signs: [u8; 4],
    scale: f32,
}

/// The search's first scale: `make_qp_quants(32, kMaxQ + 1, xval, L, weight)`.
#[inline(always)]
fn first_scale(xval: &[f32; 32], weight: &[f32; 32]) -> f32 {
    let mut l = [0u8; 32];
    make_qp_quants_ref::<32, { K_MAX_Q + 1 }>(xval, &mut l, weight)
}

/// One sub-block of `quantize_row_iq2_xxs_impl`: `Ok(None)` where C skips it, `Err(())` where
/// C aborts.
fn sub_block_ref(xb: &[f32], weight: &[f32; 32]) -> Result<Option<SubBlock>, ()> {
    let t = tables();
    let waux = weight.map(f32::sqrt);
    let (xval, mut block_signs) = split_signs(xb, weight, true);
    let mut max = xval[0];
    for i in 1..32 {
        max = if max > xval[i] { max } else { xval[i] };
    }
    if max < GROUP_MAX_EPS {
        return Ok(None);
    }
    let mut l = [0i8; 32];
    let mut scale = first_scale(&xval, weight);
    let eff_max = scale * K_MAX_Q as f32;
    if eff_max <= 0.0 {
        return Ok(None);
    }
    let mut best = 0.0f32;
    let mut laux = [0i8; 32];
    for is in -6i32..=6 {
        let id = ((2 * K_MAX_Q - 1) as f32 + is as f32 * 0.1f32) / eff_max;
        let this_scale = 1.0 / id;
        for k in 0..4 {
            for i in 0..8 {
                let li = nearest_int(0.5 * (id * xval[8 * k + i] - 1.0));
                laux[8 * k + i] = li.clamp(0, K_MAX_Q - 1) as i8;
            }
            let u = code(&laux[8 * k..8 * k + 8]);
            if let Some(nb) = neighbours_of(t, u) {
                let r = 8 * k..8 * k + 8;
                let (xv, wa) = (&xval[r.clone()], &waux[r.clone()]);
                find_best_neighbour(nb, xv, wa, this_scale, &mut laux[r]).ok_or(())?;
            }
        }
        let (sumqx, sumq2) = sums(weight, &xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
        }
    }
    if scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..4 {
            let mut lk = [0i8; 8];
            for i in 0..8 {
                let li = nearest_int(0.5 * (id * xval[8 * k + i] - 1.0));
                lk[i] = li.clamp(0, K_MAX_Q - 1) as i8;
            }
            let u = code(&lk);
            let mut grid_index = t.map[u];
            if let Some(nb) = neighbours_of(t, u) {
                let r = 8 * k..8 * k + 8;
                let (xv, wa) = (&xval[r.clone()], &waux[r.clone()]);
                grid_index = find_best_neighbour(nb, xv, wa, scale, &mut l[r]).ok_or(())? as i32;
            }
            for i in 0..8 {
                l[8 * k + i] = level(grid_index as usize, i) as i8;
            }
        }
        let (sumqx, sumq2) = sums(weight, &xval, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        // "This should never happen" (C's comment): flip the scale and the signs.
        scale = -scale;
        for s in &mut block_signs {
            *s = !*s;
        }
    }
    // GGML_ASSERT(scale >= 0): only a NaN fails.
    if scale >= 0.0 {
        Ok(Some(SubBlock {
            l,
            signs: block_signs,
            scale,
        }))
    } else {
        Err(())
    }
}

/// `sumqx`, `sumq2` of levels `l`.
#[inline(always)]
fn sums(weight: &[f32; 32], xval: &[f32; 32], l: &[i8; 32]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..32 {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// One super-block's weights `qw · sqrt(σ² + x²)`, σ² = Σx² / 256.
#[inline(always)]
fn weights(x: &[f32], qw: &[f32], w: &mut [f32; QK_K]) {
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    for i in 0..QK_K {
        w[i] = qw[i] * (sigma2 + x[i] * x[i]).sqrt();
    }
}

/// A super-block's bytes from its sub-blocks' outcomes.
fn pack(subs: &[Option<SubBlock>; 8], y: &mut [u8]) {
    let t = tables();
    y.fill(0);
    let mut q2 = [0u32; 16];
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    for (ib, sub) in subs.iter().enumerate() {
        let Some(sub) = sub else { continue };
        for k in 0..4 {
            let grid_index = t.map[code(&sub.l[8 * k..8 * k + 8])];
            debug_assert!(grid_index >= 0);
            q2[2 * ib] |= (grid_index as u32) << (8 * k);
            q2[2 * ib + 1] |= ((sub.signs[k] & 127) as u32) << (7 * k);
        }
        scales[ib] = sub.scale;
        max_scale = if max_scale > sub.scale {
            max_scale
        } else {
            sub.scale
        };
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    y[..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    let id = 1.0 / d;
    for ib in 0..8 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
        q2[2 * ib + 1] |= (l as u32) << 28;
    }
    for (i, w) in q2.iter().enumerate() {
        y[2 + 4 * i..6 + 4 * i].copy_from_slice(&w.to_le_bytes());
    }
}

/// The reference over whole super-blocks of one row with its importance vector `qw`: the index
/// of the first block ggml aborts on, if any.
pub(crate) fn iq2xxs_ref(x: &[f32], qw: &[f32], y: &mut [u8]) -> Option<usize> {
    let mut w = [0.0f32; QK_K];
    for (b, (xb, yb)) in x
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        weights(xb, &qw[QK_K * b..QK_K * (b + 1)], &mut w);
        let mut subs = [None; 8];
        for ib in 0..8 {
            let r = 32 * ib..32 * ib + 32;
            match sub_block_ref(&xb[r.clone()], w[r].try_into().unwrap()) {
                Ok(s) => subs[ib] = s,
                Err(()) => return Some(b),
            }
        }
        pack(&subs, yb);
    }
    None
}

// ---- The lane kernel.

/// Neighbours per chunk of the lane search.
const W: usize = 16;

/// The neighbour lists laid out for the lane search (as IQ3's): value-major, NaN padding.
struct Chunk {
    q: [[f32; W]; 8],
    code: [u16; W],
}

struct LaneTables {
    /// Each off-grid code's first chunk and neighbour count.
    lists: Vec<(u32, u32)>,
    chunks: Vec<Chunk>,
}

fn lane_tables() -> &'static LaneTables {
    static T: OnceLock<LaneTables> = OnceLock::new();
    T.get_or_init(|| {
        let t = tables();
        let mut lists = vec![(0u32, 0u32); t.map.len()];
        let mut chunks = Vec::new();
        for u in 0..t.map.len() {
            let Some(nb) = neighbours_of(t, u) else {
                continue;
            };
            let list = &nb[1..=nb[0] as usize];
            lists[u] = (chunks.len() as u32, list.len() as u32);
            for part in list.chunks(W) {
                let mut c = Chunk {
                    q: [[f32::NAN; W]; 8],
                    code: [0; W],
                };
                for (j, &g) in part.iter().enumerate() {
                    for i in 0..8 {
                        c.q[i][j] = grid_value(g as usize, i) as f32;
                        c.code[j] |= (level(g as usize, i) as u16) << (2 * i);
                    }
                }
                chunks.push(c);
            }
        }
        LaneTables { lists, chunks }
    })
}

/// One chunk of a neighbour search: the smallest distance below `FLT_MAX` (else `FLT_MAX`) and
/// the code of its first lane, by one u64 minimum of `bits << 32 | lane` (distances are never
/// negative, so their bits order as their values).
#[inline(always)]
fn chunk_min(chunk: &Chunk, xv: &[f32; 8], wa: &[f32; 8], scale: f32) -> (f32, u16) {
    let mut d2 = [0.0f32; W];
    for i in 0..8 {
        for j in 0..W {
            let diff = scale * chunk.q[i][j] - xv[i];
            d2[j] += wa[i] * diff * diff;
        }
    }
    let mut key = [0u64; W];
    for j in 0..W {
        let v = if d2[j] < f32::MAX { d2[j] } else { f32::MAX };
        key[j] = (v.to_bits() as u64) << 32 | j as u64;
    }
    let mut half = W / 2;
    while half > 0 {
        for j in 0..half {
            key[j] = key[j].min(key[j + half]);
        }
        half /= 2;
    }
    (
        f32::from_bits((key[0] >> 32) as u32),
        chunk.code[(key[0] as usize) & (W - 1)],
    )
}

/// [`find_best_neighbour`] over the chunks of code `u`: the winner's code, and false where C
/// aborts.
#[inline(always)]
fn search_lanes(u: usize, xv: &[f32; 8], wa: &[f32; 8], scale: f32) -> (u16, bool) {
    let lt = lane_tables();
    let (start, n) = lt.lists[u];
    let end = (start + n.div_ceil(W as u32)) as usize;
    let chunks = &lt.chunks[start as usize..end];
    let (mut best, mut code) = chunk_min(&chunks[0], xv, wa, scale);
    for chunk in &chunks[1..] {
        let (m, c) = chunk_min(chunk, xv, wa, scale);
        code = if m < best { c } else { code };
        best = if m < best { m } else { best };
    }
    (code, best < f32::MAX)
}

/// One round for N sub-blocks: levels at inverse scales `id`, off-grid groups of the lanes in
/// `search` moved to their best neighbour at `scale`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn trial_lanes<const N: usize>(
    xval: &[[f32; N]; 32],
    groups: &[[([f32; 8], [f32; 8]); 4]; N],
    id: &[f32; N],
    scale: &[f32; N],
    search: &[bool; N],
    l: &mut [[i32; N]; 32],
    fail: &mut [bool; N],
) {
    let t = tables();
    for i in 0..32 {
        for k in 0..N {
            l[i][k] = nearest_int(0.5 * (id[k] * xval[i][k] - 1.0)).clamp(0, K_MAX_Q - 1);
        }
    }
    let mut todo = [0u32; 4 * 32];
    let mut count = 0;
    for g in 0..4 {
        let mut u = [0i32; N];
        for k in 0..N {
            for i in 0..8 {
                u[k] |= l[8 * g + i][k] << (2 * i);
            }
        }
        for k in 0..N {
            let off = t.map[u[k] as usize] < 0;
            todo[count] = (u[k] as u32) << 16 | (g as u32) << 8 | k as u32;
            count += (off & search[k]) as usize;
        }
    }
    for &e in &todo[..count] {
        let (u, g, k) = (
            (e >> 16) as usize,
            (e >> 8) as usize & 0xff,
            e as usize & 0xff,
        );
        let (xv, wa) = &groups[k][g];
        let (c, ok) = search_lanes(u, xv, wa, scale[k]);
        for i in 0..8 {
            l[8 * g + i][k] = ((c >> (2 * i)) & 3) as i32;
        }
        fail[k] |= !ok;
    }
}

/// `sumqx`, `sumq2` of each lane's levels.
#[inline(always)]
fn sums_lanes<const N: usize>(
    weight: &[[f32; N]; 32],
    xval: &[[f32; N]; 32],
    l: &[[i32; N]; 32],
) -> ([f32; N], [f32; N]) {
    let mut sumqx = [0.0f32; N];
    let mut sumq2 = [0.0f32; N];
    for i in 0..32 {
        for k in 0..N {
            let q = (2 * l[i][k] + 1) as f32;
            sumqx[k] += weight[i][k] * xval[i][k] * q;
            sumq2[k] += weight[i][k] * q * q;
        }
    }
    (sumqx, sumq2)
}

/// [`sub_block_ref`] for N sub-blocks at once, one per lane. Skipped lanes are `None`.
#[inline(always)]
fn sub_blocks_lanes<const N: usize>(
    xt: &[[f32; N]; 32],
    weight: &[[f32; N]; 32],
    fail: &mut [bool; N],
) -> [Option<SubBlock>; N] {
    let mut waux = [[0.0f32; N]; 32];
    for i in 0..32 {
        for k in 0..N {
            waux[i][k] = weight[i][k].sqrt();
        }
    }
    let (xval, neg) = split_signs_lanes(xt, weight, true);
    let mut max = xval[0];
    for i in 1..32 {
        for k in 0..N {
            max[k] = if max[k] > xval[i][k] {
                max[k]
            } else {
                xval[i][k]
            };
        }
    }
    let groups: [[([f32; 8], [f32; 8]); 4]; N] = std::array::from_fn(|k| {
        std::array::from_fn(|g| {
            (
                std::array::from_fn(|i| xval[8 * g + i][k]),
                std::array::from_fn(|i| waux[8 * g + i][k]),
            )
        })
    });
    let mut active = [false; N];
    let mut scale = [0.0f32; N];
    let mut eff_max = [0.0f32; N];
    for k in 0..N {
        if max[k] < GROUP_MAX_EPS {
            continue;
        }
        let xv: [f32; 32] = std::array::from_fn(|i| xval[i][k]);
        let w: [f32; 32] = std::array::from_fn(|i| weight[i][k]);
        scale[k] = first_scale(&xv, &w);
        eff_max[k] = scale[k] * K_MAX_Q as f32;
        // C's `if (eff_max <= 0) continue;` (a NaN goes on).
        active[k] = eff_max[k] > 0.0 || eff_max[k].is_nan();
    }
    let mut best = [0.0f32; N];
    let mut l = [[0i32; N]; 32];
    let mut laux = [[0i32; N]; 32];
    for is in -6i32..=6 {
        let num = (2 * K_MAX_Q - 1) as f32 + is as f32 * 0.1f32;
        let mut id = [0.0f32; N];
        let mut this_scale = [0.0f32; N];
        for k in 0..N {
            id[k] = num / eff_max[k];
            this_scale[k] = 1.0 / id[k];
        }
        trial_lanes(&xval, &groups, &id, &this_scale, &active, &mut laux, fail);
        let (sumqx, sumq2) = sums_lanes(weight, &xval, &laux);
        let mut better = [false; N];
        for k in 0..N {
            better[k] = (sumq2[k] > 0.0) & (sumqx[k] * sumqx[k] > best[k] * sumq2[k]);
            let s = sumqx[k] / sumq2[k];
            scale[k] = if better[k] { s } else { scale[k] };
            best[k] = if better[k] { s * sumqx[k] } else { best[k] };
        }
        for i in 0..32 {
            for k in 0..N {
                l[i][k] = if better[k] { laux[i][k] } else { l[i][k] };
            }
        }
    }
    // One more round of every group at the chosen scale.
    let mut again = [false; N];
    let mut id = [0.0f32; N];
    for k in 0..N {
        again[k] = active[k] & (scale[k] > 0.0);
        id[k] = 1.0 / scale[k];
    }
    if again.iter().any(|&a| a) {
        trial_lanes(&xval, &groups, &id, &scale, &again, &mut laux, fail);
        for i in 0..32 {
            for k in 0..N {
                l[i][k] = if again[k] { laux[i][k] } else { l[i][k] };
            }
        }
        let (sumqx, sumq2) = sums_lanes(weight, &xval, &l);
        for k in 0..N {
            let s = sumqx[k] / sumq2[k];
            scale[k] = if again[k] & (sumq2[k] > 0.0) {
                s
            } else {
                scale[k]
            };
        }
    }
    std::array::from_fn(|k| {
        if !active[k] {
            return None;
        }
        let flip = scale[k] < 0.0;
        let s = if flip { -scale[k] } else { scale[k] };
        // GGML_ASSERT(scale >= 0).
        let ok = s >= 0.0;
        fail[k] |= !ok;
        let mut signs = [0u8; 4];
        for (b, sb) in signs.iter_mut().enumerate() {
            for i in 0..8 {
                *sb |= ((neg[8 * b + i][k] != flip) as u8) << i;
            }
        }
        Some(SubBlock {
            l: std::array::from_fn(|i| l[i][k] as i8),
            signs,
            scale: s,
        })
    })
}

/// Whole super-blocks of one row with N sub-blocks per pass; `bad` gets the first block ggml
/// aborts on, if any.
#[inline(always)]
fn iq2xxs_lanes<const N: usize>(x: &[f32], qw: &[f32], y: &mut [u8], bad: &mut Option<usize>) {
    let per = N / 8;
    let nb = x.len() / QK_K;
    let mut w = [0.0f32; QK_K];
    let mut first = 0;
    while first < nb {
        let n = per.min(nb - first);
        // Lanes past the last super-block hold zeros: skipped.
        let mut xt = [[0.0f32; N]; 32];
        let mut wt = [[0.0f32; N]; 32];
        for s in 0..n {
            let b = first + s;
            let xb = &x[QK_K * b..QK_K * (b + 1)];
            weights(xb, &qw[QK_K * b..QK_K * (b + 1)], &mut w);
            for ib in 0..8 {
                for i in 0..32 {
                    xt[i][8 * s + ib] = xb[32 * ib + i];
                    wt[i][8 * s + ib] = w[32 * ib + i];
                }
            }
        }
        let mut fail = [false; N];
        let subs = sub_blocks_lanes::<N>(&xt, &wt, &mut fail);
        for s in 0..n {
            if fail[8 * s..8 * s + 8].iter().any(|&f| f) {
                *bad = Some(first + s);
                return;
            }
            let sb: &[Option<SubBlock>; 8] = subs[8 * s..8 * s + 8].try_into().unwrap();
            let b = first + s;
            pack(sb, &mut y[BLOCK_BYTES * b..BLOCK_BYTES * (b + 1)]);
        }
        first += n;
    }
}

fn iq2xxs_16(x: &[f32], qw: &[f32], y: &mut [u8], bad: &mut Option<usize>) {
    iq2xxs_lanes::<16>(x, qw, y, bad)
}

per_backend!(iq2xxs_simd, (x: &[f32], qw: &[f32], y: &mut [u8], bad: &mut Option<usize>), avx2 => iq2xxs_16, avx512 => iq2xxs_16, neon => iq2xxs_16);

/// `dequantize_row_iq2_xxs`, one block.
pub(crate) fn dequant_iq2xxs(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    for ib in 0..8 {
        let q = &x[2 + 8 * ib..10 + 8 * ib];
        let aux1 = u32::from_le_bytes(q[4..8].try_into().unwrap());
        let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
        for l in 0..4 {
            let grid = GRID[q[l] as usize].to_le_bytes();
            let seven = (aux1 >> (7 * l)) & 127;
            let signs = seven | (seven.count_ones() & 1) << 7;
            for j in 0..8 {
                let neg = signs & (1 << j) != 0;
                y[32 * ib + 8 * l + j] = db * grid[j] as f32 * if neg { -1.0 } else { 1.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grid's levels are below 3, sorted by their 16-bit code, and the map finds them.
    #[test]
    fn grid_is_sorted_and_mapped() {
        let t = tables();
        let mut last = None;
        for j in 0..GRID.len() {
            let l: Vec<i8> = (0..8).map(|i| level(j, i) as i8).collect();
            for (i, b) in GRID[j].to_le_bytes().into_iter().enumerate() {
                assert_eq!(b, [8, 25, 43][l[i] as usize], "point {j}");
            }
            let c = code(&l);
            assert!(last.is_none_or(|p| p < c));
            last = Some(c);
            assert_eq!(t.map[c], j as i32);
        }
    }

    /// Every reachable off-grid code lists the grid points at its two nearest distances, by
    /// distance then index; the lane search picks C's neighbour, ties and non-finite cases too.
    #[test]
    fn neighbours_and_lane_search() {
        let t = tables();
        let mut seed = 0x9e37_79b9u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specials = [0.0f32, 1.0, 0.5, 1e19, f32::MAX, f32::INFINITY, f32::NAN];
        let mut lists = 0;
        let mut ties = 0;
        for u in 0..MAP_SIZE {
            if (0..8).any(|i| (u >> (2 * i)) & 3 == 3) {
                assert_eq!(t.map[u], UNREACHABLE);
                continue;
            }
            let Some(nb) = neighbours_of(t, u) else {
                assert!(t.map[u] >= 0);
                continue;
            };
            lists += 1;
            let pos: Vec<i32> = (0..8)
                .map(|i| 2 * ((u >> (2 * i)) & 3) as i32 + 1)
                .collect();
            let d2 = |j: usize| -> i32 { (0..8).map(|i| (grid_value(j, i) - pos[i]).pow(2)).sum() };
            let mut all: Vec<i32> = (0..GRID.len()).map(d2).collect();
            all.sort_unstable();
            all.dedup();
            let mut want: Vec<(i32, usize)> = (0..GRID.len())
                .filter(|&j| d2(j) <= all[NWANT - 1])
                .map(|j| (d2(j), j))
                .collect();
            want.sort_unstable();
            let list: Vec<(i32, usize)> = nb[1..=nb[0] as usize]
                .iter()
                .map(|&j| (d2(j as usize), j as usize))
                .collect();
            assert_eq!(list, want, "code {u}");
            if u % 7 != 0 {
                continue;
            }
            for trial in 0..6 {
                let pick = |r: u64| specials[r as usize % specials.len()];
                let (xv, wa, scale): ([f32; 8], [f32; 8], f32) = match trial {
                    0 => (std::array::from_fn(|i| pos[i] as f32), [1.0; 8], 1.0),
                    1 | 2 => (
                        std::array::from_fn(|_| (next() % 800) as f32 / 100.0),
                        std::array::from_fn(|_| (next() % 5) as f32 * 0.5),
                        (next() % 300) as f32 / 100.0,
                    ),
                    _ => (
                        std::array::from_fn(|_| pick(next())),
                        std::array::from_fn(|_| pick(next())),
                        pick(next()),
                    ),
                };
                let mut l = [0i8; 8];
                let want = find_best_neighbour(nb, &xv, &wa, scale, &mut l);
                let (c, ok) = search_lanes(u, &xv, &wa, scale);
                assert_eq!(ok, want.is_some(), "code {u} {xv:?} {wa:?} {scale}");
                if let Some(g) = want {
                    assert_eq!(
                        t.map[c as usize], g as i32,
                        "code {u} {xv:?} {wa:?} {scale}"
                    );
                    if trial == 0 {
                        ties += (list.iter().filter(|&&(d, _)| d == d2(g)).count() > 1) as usize;
                    }
                }
            }
        }
        assert_eq!(lists, 6561 - 256);
        assert!(ties > 0);
    }
}
