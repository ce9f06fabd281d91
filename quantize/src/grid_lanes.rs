//! The lane-parallel pieces that the IQ3 and IQ2 grid searches share: the neighbour lists laid
//! out for a search over `W` neighbours at once, that search, and the per-lane sums of a trial.
//!
//! A search (ggml's `iq3_find_best_neighbour` / `iq2_find_best_neighbour`) scans an off-grid
//! code's neighbours for the first smallest weighted distance. Here each chunk of `W`
//! neighbours is one pass: the distances in lanes, then the smallest and its first lane as one
//! u64 minimum; a later chunk wins only if strictly smaller. That is the C's sequential scan.
//! The points have D values (4 for IQ3, 8 for IQ2).

/// Neighbours per chunk of the lane search (one or two vectors; most lists fit one chunk).
pub(crate) const W: usize = 16;

/// One chunk of a neighbour list: value-major (`q[i][j]`: value `i` of neighbour `j`, as f32;
/// NaN past the end of the list, so a padding lane's distance is NaN and never wins), with the
/// neighbours' level codes.
struct Chunk<const D: usize> {
    q: [[f32; W]; D],
    code: [u16; W],
}

/// Every off-grid code's neighbour list in chunks.
pub(crate) struct LaneTables<const D: usize> {
    /// Each code's first chunk and neighbour count (zero on the grid).
    lists: Vec<(u32, u32)>,
    chunks: Vec<Chunk<D>>,
}

impl<const D: usize> LaneTables<D> {
    /// From `n_codes` codes' neighbour lists (`list(u)`: grid indices, `None` on the grid) and
    /// each grid point's values and level code (`point(g)`).
    pub(crate) fn build<'a>(
        n_codes: usize,
        list: impl Fn(usize) -> Option<&'a [u16]>,
        point: impl Fn(usize) -> ([f32; D], u16),
    ) -> Self {
        let mut lists = vec![(0u32, 0u32); n_codes];
        let mut chunks = Vec::new();
        for (u, entry) in lists.iter_mut().enumerate() {
            let Some(list) = list(u) else {
                continue;
            };
            *entry = (chunks.len() as u32, list.len() as u32);
            for part in list.chunks(W) {
                let mut c = Chunk {
                    q: [[f32::NAN; W]; D],
                    code: [0; W],
                };
                for (j, &g) in part.iter().enumerate() {
                    let (values, code) = point(g as usize);
                    for i in 0..D {
                        c.q[i][j] = values[i];
                    }
                    c.code[j] = code;
                }
                chunks.push(c);
            }
        }
        LaneTables { lists, chunks }
    }

    /// The neighbour of off-grid code `u` nearest to `xv` at `scale` (distance weights `wa`; the
    /// first of equals): its level code, and false where C aborts (no distance below
    /// `FLT_MAX`).
    #[inline(always)]
    pub(crate) fn search(&self, u: usize, xv: &[f32; D], wa: &[f32; D], scale: f32) -> (u16, bool) {
        let (start, n) = self.lists[u];
        let end = (start + n.div_ceil(W as u32)) as usize;
        let chunks = &self.chunks[start as usize..end];
        let (mut best, mut code) = chunk_min(&chunks[0], xv, wa, scale);
        // Most lists fit one chunk.
        for chunk in &chunks[1..] {
            let (m, c) = chunk_min(chunk, xv, wa, scale);
            code = if m < best { c } else { code };
            best = if m < best { m } else { best };
        }
        (code, best < f32::MAX)
    }
}

/// One chunk of a neighbour search: the smallest distance below `FLT_MAX` (else `FLT_MAX`) and
/// the level code of its first lane. Branch-free.
#[inline(always)]
fn chunk_min<const D: usize>(
    chunk: &Chunk<D>,
    xv: &[f32; D],
    wa: &[f32; D],
    scale: f32,
) -> (f32, u16) {
    let mut d2 = [0.0f32; W];
    for i in 0..D {
        for j in 0..W {
            let diff = scale * chunk.q[i][j] - xv[i];
            d2[j] += wa[i] * diff * diff;
        }
    }
    // NaN (and padding) and FLT_MAX or more never win: C's `d2 < best_d2` from FLT_MAX. No NaN
    // is left and no -0 (a distance starts at +0), so a distance's bits order as its value:
    // one u64 minimum of (bits, lane) gives the smallest and its first lane.
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

/// `sumqx`, `sumq2` of each lane's levels (`q = 2l + 1`), over sub-blocks of V values.
#[inline(always)]
pub(crate) fn sums_lanes<const V: usize, const N: usize>(
    weight: &[[f32; N]; V],
    xval: &[[f32; N]; V],
    l: &[[i32; N]; V],
) -> ([f32; N], [f32; N]) {
    let mut sumqx = [0.0f32; N];
    let mut sumq2 = [0.0f32; N];
    for i in 0..V {
        for k in 0..N {
            let q = (2 * l[i][k] + 1) as f32;
            sumqx[k] += weight[i][k] * xval[i][k] * q;
            sumq2[k] += weight[i][k] * q * q;
        }
    }
    (sumqx, sumq2)
}
