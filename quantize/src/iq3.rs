//! IQ3_S and IQ3_XXS: groups of four values on a grid of 512 or 256 points, with and without an
//! importance vector (ggml's `quantize_row_iq3_s_impl` and `quantize_row_iq3_xxs_impl`, one
//! search with a few differences, which [`Grid`] names).
//!
//! IQ3_S (3.4375 bits per weight, 110 bytes per 256 elements, `block_iq3_s`): `d` (f16),
//! `qs[64]` (low 8 bits of each group's 9-bit grid index), `qh[8]` (bit `k` of byte `ib`: bit 8
//! of group `k` of sub-block `ib`), `signs[32]` (one bit per element, set for a negative
//! value), `scales[4]` (a 4-bit scale per 32-element sub-block, two per byte, low nibble
//! first). Element = `d · (1 + 2·scale) · grid[index][i] · ±1`; grid values are the odd
//! numbers 1..15.
//!
//! IQ3_XXS (3.0625 bits per weight, 98 bytes, `block_iq3_xxs`): `d` (f16), `qs[64]` (each
//! group's 8-bit grid index), then per sub-block a little-endian u32: four 7-bit sign fields
//! (one per eight values; the eighth sign is the parity of the seven, so every eight values
//! have an even number of negatives) and the 4-bit scale in bits 28..32. Element = `d · (0.5 +
//! scale) · 0.5 · grid[index][i] · ±1`, from a decoding grid whose values are 4·(2l + 1) except
//! that the top level is 62, not 60 (`iq3xxs_grid`); the search uses the levels' 2l + 1.
//!
//! The search (per 32-element sub-block): weights `w = x²` (or `qw · sqrt(σ² + x²)` with an
//! importance vector, σ² = 2·mean(x²) over the super-block), signs split off (IQ3_XXS: where
//! eight values have an odd number of negatives, the one with the smallest `w·x²` keeps its
//! sign in the magnitude, so it is searched as a negative value), then inverse scales `id =
//! (15 + 0.2·is) / max` (is in -9..=9; IQ3_XXS: -15..=15): each rounds every |x| to a level `l`
//! in 0..8 (value `2l + 1`); a group of four levels that is not a grid point goes to the
//! nearest of its precomputed grid neighbours (`iq3_find_best_neighbour`, distance weighted by
//! `sqrt(w)`). The trial with the largest `sumqx² / sumq2` wins; if it left groups off the
//! grid, one more round at its own scale (IQ3_S redoes every group, IQ3_XXS only those off the
//! grid). The eight sub-block scales are then quantized to 4 bits against `max_scale / 31`.
//!
//! ggml's quirks, kept for identical bytes: in IQ3_S, an all-zero sub-block skips the loop
//! body before the `qs` and `signs` write positions advance, so the following sub-blocks'
//! groups and signs land one slot early (and the last slots stay zero); the stored `d` carries
//! a fudge factor (1.033, IQ3_XXS 1.0125); IQ3_XXS treats a sub-block whose largest magnitude is
//! under 1e-8 as zero. Where ggml aborts (a neighbour search in which every distance is
//! infinite or NaN, or a NaN scale: for values so large that `w·diff²` overflows, or negative
//! importance weights, whose square roots are NaN), we refuse the block instead of writing
//! bytes ggml never would.
//!
//! The neighbour lists are built at first use exactly as `iq3xs_init_impl` builds them: every
//! 12-bit level code off the grid gets the grid points of its `nwant` nearest (integer)
//! distances (three for 512 points, two for 256), sorted by distance, then index.
//!
//! The scalar reference is the C, line by line. The lane kernel runs the search for N
//! sub-blocks at once, one per lane: levels, sums and the choice of trial are vector operations
//! in the C's order per lane. Most of the time goes to the neighbour searches (about 70% of
//! groups are off the grid, with 11 neighbours on average for IQ3_S), so a trial's searches are
//! collected branch-free and run back to back (independent, they overlap in the CPU), each over
//! 16 neighbours at once: the distances in lanes, then the smallest and its first lane, which
//! is the C's sequential scan. Tests check the bytes against the reference and ggml.

use std::sync::OnceLock;

use crate::float::{f16_bits_to_f32, f32_to_f16_bits};
use crate::grid_lanes::{sums_lanes, LaneTables};
use crate::simd::{nearest_int, per_backend};
use crate::QK_K;

const K_MAX_Q: i32 = 8;

/// What differs between IQ3_S and IQ3_XXS. The search tables are built once per format.
pub(crate) trait Grid: 'static {
    /// Bytes per 256-element block.
    const BLOCK_BYTES: usize;
    /// Neighbours of an off-grid code: the points at this many nearest distances.
    const NWANT: usize;
    /// The trials' `is` run over `-TRIALS..=TRIALS`.
    const TRIALS: i32;
    /// An even number of negatives per eight values (IQ3_XXS's 7-bit sign fields).
    const EVEN_SIGNS: bool;
    /// `is_on_grid`'s start value, before any trial wins (IQ3_S: false, so a sub-block no
    /// trial improves gets the final round at `max / 15`; IQ3_XXS: true, so it does not).
    const ON_GRID_BEFORE_TRIALS: bool;
    /// The search grid: point `j`'s value `i` (odd, 1..15) in byte `i`.
    fn points() -> &'static [u32];
    fn tables() -> &'static Tables;
    fn lane_tables() -> &'static LaneTables<4>;
    /// Whether a sub-block with this largest magnitude is skipped as all zero.
    fn skipped(max: f32) -> bool;
    /// A super-block's bytes from its sub-blocks' outcomes.
    fn pack(subs: &[Option<SubBlock>; 8], y: &mut [u8]);
}

/// IQ3_S's format.
pub(crate) struct S;
/// IQ3_XXS's format.
pub(crate) struct Xxs;

impl Grid for S {
    const BLOCK_BYTES: usize = 110;
    const NWANT: usize = 3;
    const TRIALS: i32 = 9;
    const EVEN_SIGNS: bool = false;
    const ON_GRID_BEFORE_TRIALS: bool = false;
    fn points() -> &'static [u32] {
        &GRID
    }
    fn tables() -> &'static Tables {
        static T: OnceLock<Tables> = OnceLock::new();
        T.get_or_init(build_tables::<S>)
    }
    fn lane_tables() -> &'static LaneTables<4> {
        static T: OnceLock<LaneTables<4>> = OnceLock::new();
        T.get_or_init(build_lane_tables::<S>)
    }
    fn skipped(max: f32) -> bool {
        max == 0.0
    }
    fn pack(subs: &[Option<SubBlock>; 8], y: &mut [u8]) {
        pack_s(subs, y)
    }
}

impl Grid for Xxs {
    const BLOCK_BYTES: usize = 98;
    const NWANT: usize = 2;
    const TRIALS: i32 = 15;
    const EVEN_SIGNS: bool = true;
    const ON_GRID_BEFORE_TRIALS: bool = true;
    fn points() -> &'static [u32] {
        static P: OnceLock<[u32; 256]> = OnceLock::new();
        // The decoding grid's bytes are 4·(2l + 1) (62 for l = 7): byte / 8 is the level.
        P.get_or_init(|| {
            XXS_GRID.map(|g| u32::from_le_bytes(g.to_le_bytes().map(|b| 2 * (b / 8) + 1)))
        })
    }
    fn tables() -> &'static Tables {
        static T: OnceLock<Tables> = OnceLock::new();
        T.get_or_init(build_tables::<Xxs>)
    }
    fn lane_tables() -> &'static LaneTables<4> {
        static T: OnceLock<LaneTables<4>> = OnceLock::new();
        T.get_or_init(build_lane_tables::<Xxs>)
    }
    fn skipped(max: f32) -> bool {
        // GROUP_MAX_EPS_IQ3_XXS.
        max < 1e-8
    }
    fn pack(subs: &[Option<SubBlock>; 8], y: &mut [u8]) {
        pack_xxs(subs, y)
    }
}

/// `iq3s_grid` (`ggml-common.h`): the 512 grid points, four bytes each (byte `i`, little-endian,
/// is value `i`, an odd number 1..15). A format constant: the decoder reads it, and the
/// quantizer's code map and neighbour lists are derived from it (ggml derives the same points
/// from `kgrid_512`, three bits per value, sorted by that 12-bit code).
const GRID: [u32; 512] = [
    0x01010101, 0x01010103, 0x01010105, 0x0101010b, 0x0101010f, 0x01010301, 0x01010303, 0x01010305,
    0x01010309, 0x0101030d, 0x01010501, 0x01010503, 0x0101050b, 0x01010707, 0x01010901, 0x01010905,
    0x0101090b, 0x0101090f, 0x01010b03, 0x01010b07, 0x01010d01, 0x01010d05, 0x01010f03, 0x01010f09,
    0x01010f0f, 0x01030101, 0x01030103, 0x01030105, 0x01030109, 0x01030301, 0x01030303, 0x0103030b,
    0x01030501, 0x01030507, 0x0103050f, 0x01030703, 0x0103070b, 0x01030909, 0x01030d03, 0x01030d0b,
    0x01030f05, 0x01050101, 0x01050103, 0x0105010b, 0x0105010f, 0x01050301, 0x01050307, 0x0105030d,
    0x01050503, 0x0105050b, 0x01050701, 0x01050709, 0x01050905, 0x0105090b, 0x0105090f, 0x01050b03,
    0x01050b07, 0x01050f01, 0x01050f07, 0x01070107, 0x01070303, 0x0107030b, 0x01070501, 0x01070505,
    0x01070703, 0x01070707, 0x0107070d, 0x01070909, 0x01070b01, 0x01070b05, 0x01070d0f, 0x01070f03,
    0x01070f0b, 0x01090101, 0x01090307, 0x0109030f, 0x01090503, 0x01090509, 0x01090705, 0x01090901,
    0x01090907, 0x01090b03, 0x01090f01, 0x010b0105, 0x010b0109, 0x010b0501, 0x010b0505, 0x010b050d,
    0x010b0707, 0x010b0903, 0x010b090b, 0x010b090f, 0x010b0d0d, 0x010b0f07, 0x010d010d, 0x010d0303,
    0x010d0307, 0x010d0703, 0x010d0b05, 0x010d0f03, 0x010f0101, 0x010f0105, 0x010f0109, 0x010f0501,
    0x010f0505, 0x010f050d, 0x010f0707, 0x010f0b01, 0x010f0b09, 0x03010101, 0x03010103, 0x03010105,
    0x03010109, 0x03010301, 0x03010303, 0x03010307, 0x0301030b, 0x0301030f, 0x03010501, 0x03010505,
    0x03010703, 0x03010709, 0x0301070d, 0x03010b09, 0x03010b0d, 0x03010d03, 0x03010f05, 0x03030101,
    0x03030103, 0x03030107, 0x0303010d, 0x03030301, 0x03030309, 0x03030503, 0x03030701, 0x03030707,
    0x03030903, 0x03030b01, 0x03030b05, 0x03030f01, 0x03030f0d, 0x03050101, 0x03050305, 0x0305030b,
    0x0305030f, 0x03050501, 0x03050509, 0x03050705, 0x03050901, 0x03050907, 0x03050b0b, 0x03050d01,
    0x03050f05, 0x03070103, 0x03070109, 0x0307010f, 0x03070301, 0x03070307, 0x03070503, 0x0307050f,
    0x03070701, 0x03070709, 0x03070903, 0x03070d05, 0x03070f01, 0x03090107, 0x0309010b, 0x03090305,
    0x03090309, 0x03090703, 0x03090707, 0x03090905, 0x0309090d, 0x03090b01, 0x03090b09, 0x030b0103,
    0x030b0301, 0x030b0307, 0x030b0503, 0x030b0701, 0x030b0705, 0x030b0b03, 0x030d0501, 0x030d0509,
    0x030d050f, 0x030d0909, 0x030d090d, 0x030f0103, 0x030f0107, 0x030f0301, 0x030f0305, 0x030f0503,
    0x030f070b, 0x030f0903, 0x030f0d05, 0x030f0f01, 0x05010101, 0x05010103, 0x05010107, 0x0501010b,
    0x0501010f, 0x05010301, 0x05010305, 0x05010309, 0x0501030d, 0x05010503, 0x05010507, 0x0501050f,
    0x05010701, 0x05010705, 0x05010903, 0x05010907, 0x0501090b, 0x05010b01, 0x05010b05, 0x05010d0f,
    0x05010f01, 0x05010f07, 0x05010f0b, 0x05030101, 0x05030105, 0x05030301, 0x05030307, 0x0503030f,
    0x05030505, 0x0503050b, 0x05030703, 0x05030709, 0x05030905, 0x05030b03, 0x05050103, 0x05050109,
    0x0505010f, 0x05050503, 0x05050507, 0x05050701, 0x0505070f, 0x05050903, 0x05050b07, 0x05050b0f,
    0x05050f03, 0x05050f09, 0x05070101, 0x05070105, 0x0507010b, 0x05070303, 0x05070505, 0x05070509,
    0x05070703, 0x05070707, 0x05070905, 0x05070b01, 0x05070d0d, 0x05090103, 0x0509010f, 0x05090501,
    0x05090507, 0x05090705, 0x0509070b, 0x05090903, 0x05090f05, 0x05090f0b, 0x050b0109, 0x050b0303,
    0x050b0505, 0x050b070f, 0x050b0901, 0x050b0b07, 0x050b0f01, 0x050d0101, 0x050d0105, 0x050d010f,
    0x050d0503, 0x050d0b0b, 0x050d0d03, 0x050f010b, 0x050f0303, 0x050f050d, 0x050f0701, 0x050f0907,
    0x050f0b01, 0x07010105, 0x07010303, 0x07010307, 0x0701030b, 0x0701030f, 0x07010505, 0x07010703,
    0x07010707, 0x0701070b, 0x07010905, 0x07010909, 0x0701090f, 0x07010b03, 0x07010d07, 0x07010f03,
    0x07030103, 0x07030107, 0x0703010b, 0x07030309, 0x07030503, 0x07030507, 0x07030901, 0x07030d01,
    0x07030f05, 0x07030f0d, 0x07050101, 0x07050305, 0x07050501, 0x07050705, 0x07050709, 0x07050b01,
    0x07070103, 0x07070301, 0x07070309, 0x07070503, 0x07070507, 0x0707050f, 0x07070701, 0x07070903,
    0x07070907, 0x0707090f, 0x07070b0b, 0x07070f07, 0x07090107, 0x07090303, 0x0709030d, 0x07090505,
    0x07090703, 0x07090b05, 0x07090d01, 0x07090d09, 0x070b0103, 0x070b0301, 0x070b0305, 0x070b050b,
    0x070b0705, 0x070b0909, 0x070b0b0d, 0x070b0f07, 0x070d030d, 0x070d0903, 0x070f0103, 0x070f0107,
    0x070f0501, 0x070f0505, 0x070f070b, 0x09010101, 0x09010109, 0x09010305, 0x09010501, 0x09010509,
    0x0901050f, 0x09010705, 0x09010903, 0x09010b01, 0x09010f01, 0x09030105, 0x0903010f, 0x09030303,
    0x09030307, 0x09030505, 0x09030701, 0x0903070b, 0x09030907, 0x09030b03, 0x09030b0b, 0x09050103,
    0x09050107, 0x09050301, 0x0905030b, 0x09050503, 0x09050707, 0x09050901, 0x09050b0f, 0x09050d05,
    0x09050f01, 0x09070109, 0x09070303, 0x09070307, 0x09070501, 0x09070505, 0x09070703, 0x0907070b,
    0x09090101, 0x09090105, 0x09090509, 0x0909070f, 0x09090901, 0x09090f03, 0x090b010b, 0x090b010f,
    0x090b0503, 0x090b0d05, 0x090d0307, 0x090d0709, 0x090d0d01, 0x090f0301, 0x090f030b, 0x090f0701,
    0x090f0907, 0x090f0b03, 0x0b010105, 0x0b010301, 0x0b010309, 0x0b010505, 0x0b010901, 0x0b010909,
    0x0b01090f, 0x0b010b05, 0x0b010d0d, 0x0b010f09, 0x0b030103, 0x0b030107, 0x0b03010b, 0x0b030305,
    0x0b030503, 0x0b030705, 0x0b030f05, 0x0b050101, 0x0b050303, 0x0b050507, 0x0b050701, 0x0b05070d,
    0x0b050b07, 0x0b070105, 0x0b07010f, 0x0b070301, 0x0b07050f, 0x0b070909, 0x0b070b03, 0x0b070d0b,
    0x0b070f07, 0x0b090103, 0x0b090109, 0x0b090501, 0x0b090705, 0x0b09090d, 0x0b0b0305, 0x0b0b050d,
    0x0b0b0b03, 0x0b0b0b07, 0x0b0d0905, 0x0b0f0105, 0x0b0f0109, 0x0b0f0505, 0x0d010303, 0x0d010307,
    0x0d01030b, 0x0d010703, 0x0d010707, 0x0d010d01, 0x0d030101, 0x0d030501, 0x0d03050f, 0x0d030d09,
    0x0d050305, 0x0d050709, 0x0d050905, 0x0d050b0b, 0x0d050d05, 0x0d050f01, 0x0d070101, 0x0d070309,
    0x0d070503, 0x0d070901, 0x0d09050b, 0x0d090907, 0x0d090d05, 0x0d0b0101, 0x0d0b0107, 0x0d0b0709,
    0x0d0b0d01, 0x0d0d010b, 0x0d0d0901, 0x0d0f0303, 0x0d0f0307, 0x0f010101, 0x0f010109, 0x0f01010f,
    0x0f010501, 0x0f010505, 0x0f01070d, 0x0f010901, 0x0f010b09, 0x0f010d05, 0x0f030105, 0x0f030303,
    0x0f030509, 0x0f030907, 0x0f03090b, 0x0f050103, 0x0f050109, 0x0f050301, 0x0f05030d, 0x0f050503,
    0x0f050701, 0x0f050b03, 0x0f070105, 0x0f070705, 0x0f07070b, 0x0f070b07, 0x0f090103, 0x0f09010b,
    0x0f090307, 0x0f090501, 0x0f090b01, 0x0f0b0505, 0x0f0b0905, 0x0f0d0105, 0x0f0d0703, 0x0f0f0101,
];

/// `iq3xxs_grid` (`ggml-common.h`): IQ3_XXS's decoding grid, 256 points of four bytes, each
/// 4·(2l + 1) for a level l in 0..8, except 62 for l = 7. A format constant: the decoder reads
/// it, and the search grid ([`Xxs::points`]) is its levels (ggml's `kgrid_256`, sorted by the
/// 12-bit code, as these are).
#[rustfmt::skip]
const XXS_GRID: [u32; 256] = [
    0x04040404, 0x04040414, 0x04040424, 0x04040c0c, 0x04040c1c, 0x04040c3e, 0x04041404, 0x04041414,
    0x04041c0c, 0x04042414, 0x04043e1c, 0x04043e2c, 0x040c040c, 0x040c041c, 0x040c0c04, 0x040c0c14,
    0x040c140c, 0x040c142c, 0x040c1c04, 0x040c1c14, 0x040c240c, 0x040c2c24, 0x040c3e04, 0x04140404,
    0x04140414, 0x04140424, 0x04140c0c, 0x04141404, 0x04141414, 0x04141c0c, 0x04141c1c, 0x04141c3e,
    0x04142c0c, 0x04142c3e, 0x04143e2c, 0x041c040c, 0x041c043e, 0x041c0c04, 0x041c0c14, 0x041c142c,
    0x041c3e04, 0x04240c1c, 0x04241c3e, 0x04242424, 0x04242c3e, 0x04243e1c, 0x04243e2c, 0x042c040c,
    0x042c043e, 0x042c1c14, 0x042c2c14, 0x04341c2c, 0x04343424, 0x043e0c04, 0x043e0c24, 0x043e0c34,
    0x043e241c, 0x043e340c, 0x0c04040c, 0x0c04041c, 0x0c040c04, 0x0c040c14, 0x0c04140c, 0x0c04141c,
    0x0c041c04, 0x0c041c14, 0x0c041c24, 0x0c04243e, 0x0c042c04, 0x0c0c0404, 0x0c0c0414, 0x0c0c0c0c,
    0x0c0c1404, 0x0c0c1414, 0x0c14040c, 0x0c14041c, 0x0c140c04, 0x0c140c14, 0x0c14140c, 0x0c141c04,
    0x0c143e14, 0x0c1c0404, 0x0c1c0414, 0x0c1c1404, 0x0c1c1c0c, 0x0c1c2434, 0x0c1c3434, 0x0c24040c,
    0x0c24042c, 0x0c242c04, 0x0c2c1404, 0x0c2c1424, 0x0c2c2434, 0x0c2c3e0c, 0x0c34042c, 0x0c3e1414,
    0x0c3e2404, 0x14040404, 0x14040414, 0x14040c0c, 0x14040c1c, 0x14041404, 0x14041414, 0x14041434,
    0x14041c0c, 0x14042414, 0x140c040c, 0x140c041c, 0x140c042c, 0x140c0c04, 0x140c0c14, 0x140c140c,
    0x140c1c04, 0x140c341c, 0x140c343e, 0x140c3e04, 0x14140404, 0x14140414, 0x14140c0c, 0x14140c3e,
    0x14141404, 0x14141414, 0x14141c3e, 0x14142404, 0x14142c2c, 0x141c040c, 0x141c0c04, 0x141c0c24,
    0x141c3e04, 0x141c3e24, 0x14241c2c, 0x14242c1c, 0x142c041c, 0x142c143e, 0x142c240c, 0x142c3e24,
    0x143e040c, 0x143e041c, 0x143e0c34, 0x143e242c, 0x1c04040c, 0x1c040c04, 0x1c040c14, 0x1c04140c,
    0x1c04141c, 0x1c042c04, 0x1c04342c, 0x1c043e14, 0x1c0c0404, 0x1c0c0414, 0x1c0c1404, 0x1c0c1c0c,
    0x1c0c2424, 0x1c0c2434, 0x1c14040c, 0x1c14041c, 0x1c140c04, 0x1c14142c, 0x1c142c14, 0x1c143e14,
    0x1c1c0c0c, 0x1c1c1c1c, 0x1c241c04, 0x1c24243e, 0x1c243e14, 0x1c2c0404, 0x1c2c0434, 0x1c2c1414,
    0x1c2c2c2c, 0x1c340c24, 0x1c341c34, 0x1c34341c, 0x1c3e1c1c, 0x1c3e3404, 0x24040424, 0x24040c3e,
    0x24041c2c, 0x24041c3e, 0x24042c1c, 0x24042c3e, 0x240c3e24, 0x24141404, 0x24141c3e, 0x24142404,
    0x24143404, 0x24143434, 0x241c043e, 0x241c242c, 0x24240424, 0x24242c0c, 0x24243424, 0x242c142c,
    0x242c241c, 0x242c3e04, 0x243e042c, 0x243e0c04, 0x243e0c14, 0x243e1c04, 0x2c040c14, 0x2c04240c,
    0x2c043e04, 0x2c0c0404, 0x2c0c0434, 0x2c0c1434, 0x2c0c2c2c, 0x2c140c24, 0x2c141c14, 0x2c143e14,
    0x2c1c0414, 0x2c1c2c1c, 0x2c240c04, 0x2c24141c, 0x2c24143e, 0x2c243e14, 0x2c2c0414, 0x2c2c1c0c,
    0x2c342c04, 0x2c3e1424, 0x2c3e2414, 0x34041424, 0x34042424, 0x34042434, 0x34043424, 0x340c140c,
    0x340c340c, 0x34140c3e, 0x34143424, 0x341c1c04, 0x341c1c34, 0x34242424, 0x342c042c, 0x342c2c14,
    0x34341c1c, 0x343e041c, 0x343e140c, 0x3e04041c, 0x3e04042c, 0x3e04043e, 0x3e040c04, 0x3e041c14,
    0x3e042c14, 0x3e0c1434, 0x3e0c2404, 0x3e140c14, 0x3e14242c, 0x3e142c14, 0x3e1c0404, 0x3e1c0c2c,
    0x3e1c1c1c, 0x3e1c3404, 0x3e24140c, 0x3e24240c, 0x3e2c0404, 0x3e2c0414, 0x3e2c1424, 0x3e341c04,
];

/// Value `i` (0..4) of search-grid point `j`.
#[inline(always)]
fn grid_value<G: Grid>(j: usize, i: usize) -> i32 {
    ((G::points()[j] >> (8 * i)) & 0xff) as i32
}

/// `kmap_q3xs` and `kneighbors_q3xs` as `iq3xs_init_impl` builds them.
pub(crate) struct Tables {
    /// For each 12-bit level code (level `i` in bits `3i..3i+3`): its grid index, or, for a code
    /// off the grid, `-(o + 1)` where `neighbours[o]` is its neighbour count and the neighbours'
    /// grid indices follow.
    map: Vec<i32>,
    neighbours: Vec<u16>,
}

fn build_tables<G: Grid>() -> Tables {
    let n_points = G::points().len();
    let mut map = vec![-1i32; 4096];
    for j in 0..n_points {
        let mut index = 0usize;
        for i in 0..4 {
            index |= (((grid_value::<G>(j, i) - 1) / 2) as usize) << (3 * i);
        }
        map[index] = j as i32;
    }
    // C fills the lists in parallel into offsets counted in code order; sequential pushes give
    // the same layout.
    let mut neighbours = Vec::new();
    let mut dist2: Vec<(i32, usize)> = Vec::with_capacity(n_points);
    for code in 0..4096 {
        if map[code] >= 0 {
            continue;
        }
        let pos: [i32; 4] = std::array::from_fn(|i| 2 * ((code >> (3 * i)) & 7) as i32 + 1);
        dist2.clear();
        for j in 0..n_points {
            let mut d2 = 0;
            for i in 0..4 {
                let d = grid_value::<G>(j, i) - pos[i];
                d2 += d * d;
            }
            dist2.push((d2, j));
        }
        // qsort with iq3_compare_func: by distance, then index. A total order, so any sort
        // gives C's list.
        dist2.sort_unstable();
        map[code] = -(neighbours.len() as i32 + 1);
        let start = neighbours.len();
        neighbours.push(0);
        let (mut d2, mut nhave) = (dist2[0].0, 1);
        for &(d, j) in &dist2 {
            if d > d2 {
                if nhave == G::NWANT {
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
}

/// The 12-bit code of four levels.
#[inline(always)]
fn code(l: &[i8]) -> usize {
    let mut u = 0usize;
    for i in 0..4 {
        u |= (l[i] as usize) << (3 * i);
    }
    u
}

/// `iq3_find_best_neighbour`: the neighbour of an off-grid code nearest to `xval` at `scale`
/// (weights `w`; the first of equal distances); `l` gets its levels. `None` where C's
/// `GGML_ASSERT(grid_index >= 0)` fires: no distance below `FLT_MAX`.
fn find_best_neighbour<G: Grid>(
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
        for i in 0..4 {
            let q = grid_value::<G>(j as usize, i) as f32;
            let diff = scale * q - xval[i];
            d2 += w[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            grid_index = Some(j as usize);
        }
    }
    let g = grid_index?;
    for i in 0..4 {
        l[i] = ((grid_value::<G>(g, i) - 1) / 2) as i8;
    }
    Some(g)
}

/// The off-grid neighbour list of `code` (count first), or `None` on the grid.
#[inline(always)]
fn neighbours_of(t: &Tables, code: usize) -> Option<&[u16]> {
    let m = t.map[code];
    (m < 0).then(|| &t.neighbours[(-m - 1) as usize..])
}

/// One sub-block's magnitudes and sign bytes (bit `i` of byte `k`: value `8k + i` is negative),
/// for a sub-block of 32 values or fewer (IQ2_XS: 16).
/// With `even` (IQ3_XXS, IQ2_XXS: seven stored signs per eight values, the eighth is their
/// parity), eight values with an odd number of negatives give the one with the smallest `w·x²`
/// (the first of equals) the other sign, so it is searched as a negative magnitude.
pub(crate) fn split_signs(xb: &[f32], weight: &[f32], even: bool) -> ([f32; 32], [u8; 4]) {
    let mut xval = [0.0f32; 32];
    let mut block_signs = [0u8; 4];
    for k in 0..xb.len() / 8 {
        let mut s = 0u8;
        let mut nflip = 0;
        for i in 0..8 {
            if xb[8 * k + i] >= 0.0 {
                xval[8 * k + i] = xb[8 * k + i];
            } else {
                xval[8 * k + i] = -xb[8 * k + i];
                nflip += 1;
                s |= 1 << i;
            }
        }
        if even && nflip % 2 == 1 {
            let mut imin = 0;
            let mut min = weight[8 * k] * xb[8 * k] * xb[8 * k];
            for i in 1..8 {
                let ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                if ax < min {
                    min = ax;
                    imin = i;
                }
            }
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= 1 << imin;
        }
        block_signs[k] = s;
    }
    (xval, block_signs)
}

/// [`split_signs`] for N sub-blocks at once, one per lane (element-major `[i][lane]`): the
/// magnitudes and whether each value's stored sign is negative.
#[inline(always)]
pub(crate) fn split_signs_lanes<const S: usize, const N: usize>(
    xt: &[[f32; N]; S],
    weight: &[[f32; N]; S],
    even: bool,
) -> ([[f32; N]; S], [[bool; N]; S]) {
    let mut xval = [[0.0f32; N]; S];
    let mut neg = [[false; N]; S];
    for i in 0..S {
        for k in 0..N {
            let x = xt[i][k];
            let pos = x >= 0.0;
            neg[i][k] = !pos;
            xval[i][k] = if pos { x } else { -x };
        }
    }
    if even {
        for b in 0..S / 8 {
            let mut odd = [false; N];
            let mut min = [0.0f32; N];
            let mut imin = [0usize; N];
            for k in 0..N {
                min[k] = weight[8 * b][k] * xt[8 * b][k] * xt[8 * b][k];
            }
            for i in 0..8 {
                for k in 0..N {
                    odd[k] ^= neg[8 * b + i][k];
                }
            }
            for i in 1..8 {
                for k in 0..N {
                    let ax = weight[8 * b + i][k] * xt[8 * b + i][k] * xt[8 * b + i][k];
                    let lower = ax < min[k];
                    min[k] = if lower { ax } else { min[k] };
                    imin[k] = if lower { i } else { imin[k] };
                }
            }
            for i in 0..8 {
                for k in 0..N {
                    let flip = odd[k] & (imin[k] == i);
                    let v = xval[8 * b + i][k];
                    xval[8 * b + i][k] = if flip { -v } else { v };
                    neg[8 * b + i][k] ^= flip;
                }
            }
        }
    }
    (xval, neg)
}

/// What the search settles for one sub-block: its levels (0..8 per value), sign bytes (one
/// bit per value, set for a stored negative; IQ3_XXS stores the low seven) and scale.
#[derive(Clone, Copy)]
pub(crate) struct SubBlock {
    l: [i8; 32],
    signs: [u8; 4],
    scale: f32,
}

/// The inner loop body of ggml's search for one 32-element sub-block, `weight` its weights:
/// `Ok(None)` for a skipped (all-zero) sub-block (C's `continue`), `Err(())` where C aborts.
fn sub_block_ref<G: Grid>(xb: &[f32], weight: &[f32; 32]) -> Result<Option<SubBlock>, ()> {
    let t = G::tables();
    let waux = weight.map(f32::sqrt);
    let (xval, mut block_signs) = split_signs(xb, weight, G::EVEN_SIGNS);
    let mut max = xval[0];
    for i in 1..32 {
        max = if max > xval[i] { max } else { xval[i] };
    }
    let mut l = [0i8; 32];
    if G::skipped(max) {
        return Ok(None);
    }
    let mut best = 0.0f32;
    let mut scale = max / (2 * K_MAX_Q - 1) as f32;
    let mut is_on_grid = [G::ON_GRID_BEFORE_TRIALS; 8];
    let mut laux = [0i8; 32];
    let mut is_on_grid_aux = [false; 8];
    for is in -G::TRIALS..=G::TRIALS {
        let id = ((2 * K_MAX_Q - 1) as f32 + is as f32 * 0.2f32) / max;
        let this_scale = 1.0 / id;
        for k in 0..8 {
            for i in 0..4 {
                let li = nearest_int(0.5 * (id * xval[4 * k + i] - 1.0));
                laux[4 * k + i] = li.clamp(0, K_MAX_Q - 1) as i8;
            }
            let u = code(&laux[4 * k..4 * k + 4]);
            is_on_grid_aux[k] = true;
            if let Some(nb) = neighbours_of(t, u) {
                is_on_grid_aux[k] = false;
                let r = 4 * k..4 * k + 4;
                let (xv, wa) = (&xval[r.clone()], &waux[r.clone()]);
                find_best_neighbour::<G>(nb, xv, wa, this_scale, &mut laux[r]).ok_or(())?;
            }
        }
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for i in 0..32 {
            let w = weight[i];
            let q = (2 * laux[i] as i32 + 1) as f32;
            sumqx += w * xval[i] * q;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
            is_on_grid = is_on_grid_aux;
        }
    }
    let n_not_ongrid = is_on_grid.iter().filter(|&&g| !g).count();
    if n_not_ongrid > 0 && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..8 {
            // IQ3_S redoes every group (C's `//if (is_on_grid[k]) continue;`).
            if G::EVEN_SIGNS && is_on_grid[k] {
                continue;
            }
            let mut lk = [0i8; 4];
            for i in 0..4 {
                let li = nearest_int(0.5 * (id * xval[4 * k + i] - 1.0));
                lk[i] = li.clamp(0, K_MAX_Q - 1) as i8;
            }
            let u = code(&lk);
            let mut grid_index = t.map[u];
            if let Some(nb) = neighbours_of(t, u) {
                let r = 4 * k..4 * k + 4;
                let (xv, wa) = (&xval[r.clone()], &waux[r.clone()]);
                grid_index =
                    find_best_neighbour::<G>(nb, xv, wa, scale, &mut l[r]).ok_or(())? as i32;
            }
            for i in 0..4 {
                l[4 * k + i] = ((grid_value::<G>(grid_index as usize, i) - 1) / 2) as i8;
            }
        }
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for i in 0..32 {
            let w = weight[i];
            let q = (2 * l[i] as i32 + 1) as f32;
            sumqx += w * xval[i] * q;
            sumq2 += w * q * q;
        }
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
    // C checks that every group is a grid point (it is) and then `GGML_ASSERT(scale >= 0)`,
    // which only a NaN fails.
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

/// The weights of one super-block (`weight[]` in the C, for all eight sub-blocks).
#[inline(always)]
fn weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
    match qw {
        Some(qw) => {
            let mut sumx2 = 0.0f32;
            for &v in x {
                sumx2 += v * v;
            }
            let sigma2 = 2.0 * sumx2 / QK_K as f32;
            for i in 0..QK_K {
                w[i] = qw[i] * (sigma2 + x[i] * x[i]).sqrt();
            }
        }
        None => {
            for i in 0..QK_K {
                w[i] = x[i] * x[i];
            }
        }
    }
}

/// The super-block scale `d` (before the fudge factor) and the sub-blocks' 4-bit scales, or
/// `None` where every scale is zero (C then writes a zero block).
fn quantized_scales(subs: &[Option<SubBlock>; 8]) -> Option<(f32, [i32; 8])> {
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    for (ib, sub) in subs.iter().enumerate() {
        let Some(sub) = sub else { continue };
        scales[ib] = sub.scale;
        max_scale = if max_scale > sub.scale {
            max_scale
        } else {
            sub.scale
        };
    }
    if max_scale == 0.0 {
        return None;
    }
    let d = max_scale / 31.0;
    let id = 1.0 / d;
    Some((
        d,
        scales.map(|s| nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15)),
    ))
}

/// IQ3_S's bytes from its sub-blocks' outcomes (the writes in C's loop and after it). An
/// all-zero sub-block writes nothing and, as in C, the later sub-blocks' `qs` and `signs` move
/// up one slot into its place.
fn pack_s(subs: &[Option<SubBlock>; 8], y: &mut [u8]) {
    let t = S::tables();
    y.fill(0);
    let (d_bytes, rest) = y.split_at_mut(2);
    let (qs, rest) = rest.split_at_mut(QK_K / 4);
    let (qh, rest) = rest.split_at_mut(QK_K / 32);
    let (signs, scales_out) = rest.split_at_mut(QK_K / 8);
    let mut pos = 0;
    for (ib, sub) in subs.iter().enumerate() {
        let Some(sub) = sub else { continue };
        for k in 0..8 {
            let grid_index = t.map[code(&sub.l[4 * k..4 * k + 4])];
            debug_assert!(grid_index >= 0);
            qs[8 * pos + k] = grid_index as u8;
            qh[ib] |= ((grid_index >> 8) as u8) << k;
        }
        signs[4 * pos..4 * pos + 4].copy_from_slice(&sub.signs);
        pos += 1;
    }
    // C keeps the groups and signs of a block whose scales are all zero (`d` stays 0).
    let Some((d, l)) = quantized_scales(subs) else {
        return;
    };
    d_bytes.copy_from_slice(&f32_to_f16_bits(d * 1.033f32).to_le_bytes());
    for ib in (0..8).step_by(2) {
        scales_out[ib / 2] = (l[ib] | (l[ib + 1] << 4)) as u8;
    }
}

/// IQ3_XXS's bytes from its sub-blocks' outcomes; a skipped sub-block stays zero.
fn pack_xxs(subs: &[Option<SubBlock>; 8], y: &mut [u8]) {
    let t = Xxs::tables();
    y.fill(0);
    let (d_bytes, rest) = y.split_at_mut(2);
    let (qs, sas) = rest.split_at_mut(QK_K / 4);
    let Some((d, l)) = quantized_scales(subs) else {
        return;
    };
    for (ib, sub) in subs.iter().enumerate() {
        let mut word = (l[ib] as u32) << 28;
        if let Some(sub) = sub {
            for k in 0..8 {
                let grid_index = t.map[code(&sub.l[4 * k..4 * k + 4])];
                debug_assert!(grid_index >= 0);
                qs[8 * ib + k] = grid_index as u8;
            }
            for (k, &s) in sub.signs.iter().enumerate() {
                word |= ((s & 127) as u32) << (7 * k);
            }
        }
        sas[4 * ib..4 * ib + 4].copy_from_slice(&word.to_le_bytes());
    }
    d_bytes.copy_from_slice(&f32_to_f16_bits(d * 1.0125f32).to_le_bytes());
}

/// The reference over whole super-blocks of one row (`qw`: the row's importance vector): the
/// index of the first block ggml aborts on, if any (then `y` is unspecified from that block on).
pub(crate) fn iq3_ref<G: Grid>(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) -> Option<usize> {
    let mut w = [0.0f32; QK_K];
    for (b, (xb, yb)) in x
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(G::BLOCK_BYTES))
        .enumerate()
    {
        weights(xb, qw.map(|q| &q[QK_K * b..QK_K * (b + 1)]), &mut w);
        let mut subs = [None; 8];
        for ib in 0..8 {
            let r = 32 * ib..32 * ib + 32;
            match sub_block_ref::<G>(&xb[r.clone()], w[r].try_into().unwrap()) {
                Ok(s) => subs[ib] = s,
                Err(()) => return Some(b),
            }
        }
        G::pack(&subs, yb);
    }
    None
}

// ---- The lane kernel.

fn build_lane_tables<G: Grid>() -> LaneTables<4> {
    let t = G::tables();
    LaneTables::build(
        t.map.len(),
        |u| neighbours_of(t, u).map(|nb| &nb[1..=nb[0] as usize]),
        |g| {
            let values = std::array::from_fn(|i| grid_value::<G>(g, i) as f32);
            let code = (0..4)
                .map(|i| (((grid_value::<G>(g, i) - 1) / 2) as u16) << (3 * i))
                .sum();
            (values, code)
        },
    )
}

/// One trial for N sub-blocks: levels at inverse scales `id` (element-major `[i][lane]`), each
/// off-grid group of a lane in `search` moved to its best neighbour at `scale` (`groups[k][g]`:
/// lane `k`'s group `g` values and distance weights); `on[g][lane]`: whether group `g` was on
/// the grid. A search ggml would abort on sets `fail`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn trial_lanes<G: Grid, const N: usize>(
    xval: &[[f32; N]; 32],
    groups: &[[([f32; 4], [f32; 4]); 8]; N],
    id: &[f32; N],
    scale: &[f32; N],
    search: &[bool; N],
    l: &mut [[i32; N]; 32],
    on: &mut [[bool; N]; 8],
    fail: &mut [bool; N],
) {
    let t = G::tables();
    for i in 0..32 {
        for k in 0..N {
            l[i][k] = nearest_int(0.5 * (id[k] * xval[i][k] - 1.0)).clamp(0, K_MAX_Q - 1);
        }
    }
    // The searches to run, collected branch-free (code << 16 | group << 8 | lane), then run
    // back to back, so independent searches overlap in the CPU.
    let mut todo = [0u32; 8 * 32];
    let mut count = 0;
    for g in 0..8 {
        let mut u = [0i32; N];
        for k in 0..N {
            u[k] = l[4 * g][k] | l[4 * g + 1][k] << 3 | l[4 * g + 2][k] << 6 | l[4 * g + 3][k] << 9;
        }
        for k in 0..N {
            let off = t.map[u[k] as usize] < 0;
            on[g][k] = !off;
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
        let (xv, wa) = groups[k][g];
        let (c, ok) = G::lane_tables().search(u, &xv, &wa, scale[k]);
        for i in 0..4 {
            l[4 * g + i][k] = ((c >> (3 * i)) & 7) as i32;
        }
        fail[k] |= !ok;
    }
}

/// [`sub_block_ref`] for N sub-blocks at once, one per lane (element-major `[i][lane]` values
/// and weights). Skipped lanes (all zero, and padding) are `None`.
#[inline(always)]
fn sub_blocks_lanes<G: Grid, const N: usize>(
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
    let (xval, neg) = split_signs_lanes(xt, weight, G::EVEN_SIGNS);
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
    let groups: [[([f32; 4], [f32; 4]); 8]; N] = std::array::from_fn(|k| {
        std::array::from_fn(|g| {
            (
                std::array::from_fn(|i| xval[4 * g + i][k]),
                std::array::from_fn(|i| waux[4 * g + i][k]),
            )
        })
    });
    let mut active = [false; N];
    let mut scale = [0.0f32; N];
    for k in 0..N {
        active[k] = !G::skipped(max[k]);
        scale[k] = max[k] / (2 * K_MAX_Q - 1) as f32;
    }
    let mut best = [0.0f32; N];
    let mut l = [[0i32; N]; 32];
    let mut on = [[G::ON_GRID_BEFORE_TRIALS; N]; 8];
    let mut laux = [[0i32; N]; 32];
    let mut on_aux = [[false; N]; 8];
    for is in -G::TRIALS..=G::TRIALS {
        let num = (2 * K_MAX_Q - 1) as f32 + is as f32 * 0.2f32;
        let mut id = [0.0f32; N];
        let mut this_scale = [0.0f32; N];
        for k in 0..N {
            id[k] = num / max[k];
            this_scale[k] = 1.0 / id[k];
        }
        trial_lanes::<G, N>(
            &xval,
            &groups,
            &id,
            &this_scale,
            &active,
            &mut laux,
            &mut on_aux,
            fail,
        );
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
        for g in 0..8 {
            for k in 0..N {
                on[g][k] = if better[k] { on_aux[g][k] } else { on[g][k] };
            }
        }
    }
    // One more round at the chosen scale where groups were left off the grid (IQ3_XXS keeps
    // the groups that were on it).
    let mut again = [false; N];
    let mut id = [0.0f32; N];
    for k in 0..N {
        let off = (0..8).any(|g| !on[g][k]);
        again[k] = active[k] & off & (scale[k] > 0.0);
        id[k] = 1.0 / scale[k];
    }
    if again.iter().any(|&a| a) {
        trial_lanes::<G, N>(
            &xval,
            &groups,
            &id,
            &scale,
            &again,
            &mut laux,
            &mut on_aux,
            fail,
        );
        for g in 0..8 {
            for k in 0..N {
                let redo = again[k] & !(G::EVEN_SIGNS & on[g][k]);
                for i in 4 * g..4 * g + 4 {
                    l[i][k] = if redo { laux[i][k] } else { l[i][k] };
                }
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

/// Whole super-blocks of one row (`qw`: its importance vector) with N sub-blocks (N/8
/// super-blocks) per lane pass; `bad` gets the first block ggml aborts on, if any.
#[inline(always)]
fn iq3_lanes<G: Grid, const N: usize>(
    x: &[f32],
    qw: Option<&[f32]>,
    y: &mut [u8],
    bad: &mut Option<usize>,
) {
    let per = N / 8;
    let nb = x.len() / QK_K;
    let mut w = [0.0f32; QK_K];
    let mut first = 0;
    while first < nb {
        let n = per.min(nb - first);
        // Lanes past the last super-block hold zeros: all-zero sub-blocks, inactive.
        let mut xt = [[0.0f32; N]; 32];
        let mut wt = [[0.0f32; N]; 32];
        for s in 0..n {
            let b = first + s;
            let xb = &x[QK_K * b..QK_K * (b + 1)];
            weights(xb, qw.map(|q| &q[QK_K * b..QK_K * (b + 1)]), &mut w);
            for ib in 0..8 {
                for i in 0..32 {
                    xt[i][8 * s + ib] = xb[32 * ib + i];
                    wt[i][8 * s + ib] = w[32 * ib + i];
                }
            }
        }
        let mut fail = [false; N];
        let subs = sub_blocks_lanes::<G, N>(&xt, &wt, &mut fail);
        for s in 0..n {
            if fail[8 * s..8 * s + 8].iter().any(|&f| f) {
                *bad = Some(first + s);
                return;
            }
            let sb: &[Option<SubBlock>; 8] = subs[8 * s..8 * s + 8].try_into().unwrap();
            let b = first + s;
            G::pack(sb, &mut y[G::BLOCK_BYTES * b..G::BLOCK_BYTES * (b + 1)]);
        }
        first += n;
    }
}

fn iq3s_16(x: &[f32], qw: Option<&[f32]>, y: &mut [u8], bad: &mut Option<usize>) {
    iq3_lanes::<S, 16>(x, qw, y, bad)
}

fn iq3xxs_16(x: &[f32], qw: Option<&[f32]>, y: &mut [u8], bad: &mut Option<usize>) {
    iq3_lanes::<Xxs, 16>(x, qw, y, bad)
}

per_backend!(iq3s_simd, (x: &[f32], qw: Option<&[f32]>, y: &mut [u8], bad: &mut Option<usize>), avx2 => iq3s_16, avx512 => iq3s_16, neon => iq3s_16);
per_backend!(iq3xxs_simd, (x: &[f32], qw: Option<&[f32]>, y: &mut [u8], bad: &mut Option<usize>), avx2 => iq3xxs_16, avx512 => iq3xxs_16, neon => iq3xxs_16);

/// `dequantize_row_iq3_s`, one block.
pub(crate) fn dequant_iq3s(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    let (qs, qh, signs, scales) = (&x[2..66], &x[66..74], &x[74..106], &x[106..110]);
    for ib in 0..8 {
        let db = d * (1 + 2 * ((scales[ib / 2] >> (4 * (ib % 2))) & 0xf) as i32) as f32;
        for g in 0..8 {
            let index = qs[8 * ib + g] as usize | (((qh[ib] >> g) & 1) as usize) << 8;
            let s = signs[4 * ib + g / 2];
            for j in 0..4 {
                let neg = s & (1 << (4 * (g % 2) + j)) != 0;
                y[32 * ib + 4 * g + j] =
                    db * grid_value::<S>(index, j) as f32 * if neg { -1.0 } else { 1.0 };
            }
        }
    }
}

/// `dequantize_row_iq3_xxs`, one block: each 7-bit sign field gets its parity as the eighth
/// sign (ggml's `ksigns_iq2xs`).
pub(crate) fn dequant_iq3xxs(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    let (qs, sas) = (&x[2..66], &x[66..98]);
    for ib in 0..8 {
        let aux = u32::from_le_bytes(sas[4 * ib..4 * ib + 4].try_into().unwrap());
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let seven = (aux >> (7 * l)) & 127;
            let signs = seven | (seven.count_ones() & 1) << 7;
            for (h, &index) in qs[8 * ib + 2 * l..8 * ib + 2 * l + 2].iter().enumerate() {
                let grid = XXS_GRID[index as usize].to_le_bytes();
                for j in 0..4 {
                    let neg = signs & (1 << (4 * h + j)) != 0;
                    y[32 * ib + 8 * l + 4 * h + j] =
                        db * grid[j] as f32 * if neg { -1.0 } else { 1.0 };
                }
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Each grid's points are odd values 1..15, sorted by their 12-bit code (as ggml's
    /// `kgrid_512` and `kgrid_256`), and the code map finds them.
    fn grid_is_sorted_odd_levels<G: Grid>() {
        let codes: Vec<usize> = (0..G::points().len())
            .map(|j| {
                (0..4)
                    .map(|i| {
                        let v = grid_value::<G>(j, i);
                        assert!(v % 2 == 1 && (1..=15).contains(&v), "point {j}");
                        (((v - 1) / 2) as usize) << (3 * i)
                    })
                    .sum()
            })
            .collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
        let t = G::tables();
        for (j, &c) in codes.iter().enumerate() {
            assert_eq!(t.map[c], j as i32);
        }
    }

    #[test]
    fn grids_are_sorted_odd_levels() {
        grid_is_sorted_odd_levels::<S>();
        grid_is_sorted_odd_levels::<Xxs>();
        // IQ3_XXS's search grid is its decoding grid's levels: 4·(2l + 1), 62 at the top.
        for (j, &g) in XXS_GRID.iter().enumerate() {
            for (i, b) in g.to_le_bytes().into_iter().enumerate() {
                let l = (grid_value::<Xxs>(j, i) - 1) / 2;
                assert_eq!(b as i32, if l == 7 { 62 } else { 4 * (2 * l + 1) });
            }
        }
    }

    /// Every off-grid code lists exactly the grid points at its `NWANT` nearest distances, by
    /// distance then index; the lists are packed in code order (`iq3xs_init_impl`'s offsets).
    fn neighbour_lists_are_the_nearest_shells<G: Grid>() {
        let n_points = G::points().len();
        let t = G::tables();
        let mut next = 0usize;
        let mut off_grid = 0;
        for code in 0..4096 {
            let m = t.map[code];
            if m >= 0 {
                continue;
            }
            off_grid += 1;
            let o = (-m - 1) as usize;
            assert_eq!(o, next, "code {code}");
            let n = t.neighbours[o] as usize;
            next = o + 1 + n;
            let pos: Vec<i32> = (0..4)
                .map(|i| 2 * ((code >> (3 * i)) & 7) as i32 + 1)
                .collect();
            let d2 = |j: usize| -> i32 {
                (0..4)
                    .map(|i| (grid_value::<G>(j, i) - pos[i]).pow(2))
                    .sum()
            };
            let mut all: Vec<i32> = (0..n_points).map(d2).collect();
            all.sort_unstable();
            all.dedup();
            let list: Vec<(i32, usize)> = t.neighbours[o + 1..o + 1 + n]
                .iter()
                .map(|&j| (d2(j as usize), j as usize))
                .collect();
            assert!(list.windows(2).all(|w| w[0] < w[1]), "code {code}");
            let want: Vec<(i32, usize)> = (0..n_points)
                .filter(|&j| d2(j) <= all[G::NWANT - 1])
                .map(|j| (d2(j), j))
                .collect();
            let mut want = want;
            want.sort_unstable();
            assert_eq!(list, want, "code {code}");
        }
        assert_eq!(off_grid, 4096 - n_points);
        assert_eq!(next, t.neighbours.len());
    }

    #[test]
    fn neighbour_lists_are_the_nearest_shells_of_both_grids() {
        neighbour_lists_are_the_nearest_shells::<S>();
        neighbour_lists_are_the_nearest_shells::<Xxs>();
    }

    /// The lane search picks C's neighbour: the first of equal distances (grid points
    /// themselves give integer distances, so ties are common), none when every distance is
    /// infinite or NaN, at ordinary, huge, zero and NaN weights and scales.
    fn lane_search_is_find_best_neighbour<G: Grid>() {
        let t = G::tables();
        let mut seed = 0x2545_f491u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specials = [
            0.0f32,
            1.0,
            0.5,
            3e19,
            1e30,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
        ];
        let mut ties = 0;
        for u in 0..4096 {
            let Some(nb) = neighbours_of(t, u) else {
                continue;
            };
            for trial in 0..13 {
                let pick = |r: u64| specials[r as usize % specials.len()];
                let (xv, wa, scale): ([f32; 4], [f32; 4], f32) = match trial {
                    // The point itself at scale 1, weights 1: integer distances.
                    0 => (
                        std::array::from_fn(|i| (2 * ((u >> (3 * i)) & 7) + 1) as f32),
                        [1.0; 4],
                        1.0,
                    ),
                    // Zero weights at a scale where only values 15 and 13 overflow: distances
                    // 0 and NaN in one list.
                    1 => ([0.0; 4], [0.0; 4], 3e37),
                    2..=5 => (
                        std::array::from_fn(|_| (next() % 1600) as f32 / 100.0),
                        std::array::from_fn(|_| (next() % 5) as f32 * 0.5),
                        (next() % 300) as f32 / 100.0,
                    ),
                    _ => (
                        std::array::from_fn(|_| pick(next())),
                        std::array::from_fn(|_| pick(next())),
                        pick(next()),
                    ),
                };
                let mut l = [0i8; 4];
                let want = find_best_neighbour::<G>(nb, &xv, &wa, scale, &mut l);
                let (code, ok) = G::lane_tables().search(u, &xv, &wa, scale);
                assert_eq!(ok, want.is_some(), "code {u} {xv:?} {wa:?} {scale}");
                if let Some(g) = want {
                    assert_eq!(
                        t.map[code as usize], g as i32,
                        "code {u} {xv:?} {wa:?} {scale}"
                    );
                    if trial == 0 {
                        // Neighbours at the winner's distance: more than one is a tie.
                        let d2 = |j: u16| -> i32 {
                            (0..4)
                                .map(|i| (grid_value::<G>(j as usize, i) - xv[i] as i32).pow(2))
                                .sum()
                        };
                        let list = &nb[1..=nb[0] as usize];
                        let dmin = d2(g as u16);
                        ties += (list.iter().filter(|&&j| d2(j) == dmin).count() > 1) as usize;
                    }
                }
            }
        }
        assert!(ties > 0);
    }

    #[test]
    fn lane_search_is_find_best_neighbour_on_both_grids() {
        lane_search_is_find_best_neighbour::<S>();
        lane_search_is_find_best_neighbour::<Xxs>();
    }

    /// ggml's quirk: an all-zero sub-block takes no `qs`/`signs` slot; the next one moves up.
    #[test]
    fn zero_sub_block_shifts_the_rest() {
        let mut x = [0.0f32; QK_K];
        for (i, v) in x.iter_mut().enumerate() {
            *v = ((i * 37 % 19) as f32 - 9.0) * 0.25;
        }
        let mut y = [0u8; 110];
        assert_eq!(iq3_ref::<S>(&x, None, &mut y), None);
        let mut z = x;
        z[64..96].fill(0.0);
        let mut yz = [0u8; 110];
        assert_eq!(iq3_ref::<S>(&z, None, &mut yz), None);
        // Sub-block 3's groups and signs sit in slot 2; the last slot stays empty.
        assert_eq!(&yz[2 + 16..2 + 24], &y[2 + 24..2 + 32]);
        assert_eq!(&yz[74 + 8..74 + 12], &y[74 + 12..74 + 16]);
        assert!(yz[2 + 56..2 + 64].iter().all(|&b| b == 0));
        assert!(yz[74 + 28..74 + 32].iter().all(|&b| b == 0));
    }

    /// IQ3_XXS stores seven signs per eight values: where eight values have an odd number of
    /// negatives, the one with the smallest |x| (unweighted: w = x²) is decoded with the wrong
    /// sign, and the decoded block has an even number of negatives per eight.
    #[test]
    fn xxs_signs_have_even_parity() {
        let mut x = [0.0f32; QK_K];
        for (i, v) in x.iter_mut().enumerate() {
            *v = 1.0 + (i % 8) as f32 * 0.5;
        }
        // One negative in the first eight (odd), the smallest in the second eight negative.
        x[3] = -x[3];
        x[8] = -0.25;
        let mut y = [0u8; 98];
        assert_eq!(iq3_ref::<Xxs>(&x, None, &mut y), None);
        let mut back = [0.0f32; QK_K];
        dequant_iq3xxs(&y, &mut back);
        for (i, (&a, &b)) in x.iter().zip(&back).enumerate() {
            // Value 0 is the smallest of the first eight, value 8 of the second: they flip.
            let flipped = i == 0 || i == 8;
            assert_eq!(a.signum() != b.signum(), flipped, "value {i}: {a} -> {b}");
        }
        for eight in back.chunks(8) {
            assert_eq!(eight.iter().filter(|v| **v < 0.0).count() % 2, 0);
        }
    }
}
