//! IQ2_XXS and IQ2_XS: groups of eight values on a grid of 256 or 512 points, only with an
//! importance vector (ggml's `quantize_row_iq2_xxs_impl` and `quantize_row_iq2_xs_impl`; ggml
//! asserts that there is one). One search, with the differences [`Grid2`] names.
//!
//! IQ2_XXS (2.0625 bits per weight, 66 bytes per 256 elements, `block_iq2_xxs`): `d` (f16),
//! then per 32-element sub-block two little-endian u32: the first holds the four groups' 8-bit
//! grid indices (group `k` in byte `k`), the second four 7-bit sign fields (one per group; the
//! eighth sign is the parity of the seven, so every group has an even number of negatives) and
//! the 4-bit scale in bits 28..32. Element = `d · (0.5 + scale) · 0.25 · grid[index][i] · ±1`.
//!
//! IQ2_XS (2.3125 bits per weight, 74 bytes, `block_iq2_xs`): `d` (f16), `qs[32]` (u16 per
//! group: the 9-bit grid index and the 7 sign bits above it), `scales[8]` (a 4-bit scale per
//! 16-element sub-block, two per byte, low nibble first); element as IQ2_XXS.
//!
//! Both grids' values are 8, 25 and 43 (`iq2xxs_grid`, `iq2xs_grid`); the search uses their
//! levels 0..3 as `2l + 1`.
//!
//! The search (per sub-block, 32 values for IQ2_XXS, 16 for IQ2_XS): weights `qw · sqrt(σ² +
//! x²)` (σ² = mean(x²) over the super-block, unlike the IQ3 grids' 2·mean), signs split off as
//! IQ3_XXS does ([`split_signs`]), then inverse scales `id = (5 + 0.1·is) / m`, each rounding
//! every magnitude to a level and moving off-grid groups to their nearest grid neighbour
//! (`iq2_find_best_neighbour`; neighbours: the grid points at the two nearest distances). The
//! best `sumqx² / sumq2` wins, then one more round at its scale. IQ2_XXS starts from
//! `make_qp_quants(32, 4)` (m = 3 × that scale; is in -6..=6; the last round redoes every group)
//! and skips a sub-block whose first scale is not positive; IQ2_XS starts from `max / 5` (m =
//! max; is in -9..=9; the last round redoes the groups left off the grid). Both skip a
//! sub-block whose largest magnitude is under 1e-15 (zero bytes, scale 0). The sub-block scales
//! become 4 bits against `max_scale / 31`. Where ggml aborts (no finite neighbour distance, a
//! NaN scale) we refuse the block.
//!
//! The lane kernel is IQ3's ([`crate::iq3`]) with eight-value groups: sixteen sub-blocks per
//! pass, `make_qp_quants` per lane (scalar: a small part of the time), the trials and the sums
//! in lanes, the neighbour searches collected and run back to back over sixteen neighbours at a
//! time.

use std::sync::OnceLock;

use crate::float::{f16_bits_to_f32, f32_to_f16_bits};
use crate::iq3::{split_signs, split_signs_lanes};
use crate::kquants::make_qp_quants_ref;
use crate::simd::{nearest_int, per_backend};
use crate::QK_K;

const K_MAX_Q: i32 = 3;
/// Neighbours of an off-grid code: the points at the two nearest distances.
const NWANT: usize = 2;
const GROUP_MAX_EPS: f32 = 1e-15;
/// ggml's `kmap_size`: the search clamps levels to 0..3, so codes stay below 0xAAAB.
const MAP_SIZE: usize = 43692;
/// The map entry of a code with a level 3, which the search never forms.
const UNREACHABLE: i32 = i32::MIN;

/// What differs between IQ2_XXS and IQ2_XS.
pub(crate) trait Grid2: 'static {
    const BLOCK_BYTES: usize;
    /// Values per sub-block (one scale each): 32 or 16.
    const SUB: usize;
    /// The trials' `is` run over `-TRIALS..=TRIALS`.
    const TRIALS: i32;
    /// IQ2_XXS: the first scale from `make_qp_quants`, the last round over every group.
    const QP_START: bool;
    /// The decoding grid (bytes 8, 25, 43).
    fn grid() -> &'static [u64];
    fn tables() -> &'static Tables;
    fn lane_tables() -> &'static LaneTables;
    /// A super-block's bytes from its `256 / SUB` sub-blocks' outcomes.
    fn pack(subs: &[Option<SubBlock>], y: &mut [u8]);
}

/// IQ2_XXS's format.
pub(crate) struct Xxs;
/// IQ2_XS's format.
pub(crate) struct Xs;

impl Grid2 for Xxs {
    const BLOCK_BYTES: usize = 66;
    const SUB: usize = 32;
    const TRIALS: i32 = 6;
    const QP_START: bool = true;
    fn grid() -> &'static [u64] {
        &XXS_GRID
    }
    fn tables() -> &'static Tables {
        static T: OnceLock<Tables> = OnceLock::new();
        T.get_or_init(build_tables::<Xxs>)
    }
    fn lane_tables() -> &'static LaneTables {
        static T: OnceLock<LaneTables> = OnceLock::new();
        T.get_or_init(build_lane_tables::<Xxs>)
    }
    fn pack(subs: &[Option<SubBlock>], y: &mut [u8]) {
        pack_xxs(subs, y)
    }
}

impl Grid2 for Xs {
    const BLOCK_BYTES: usize = 74;
    const SUB: usize = 16;
    const TRIALS: i32 = 9;
    const QP_START: bool = false;
    fn grid() -> &'static [u64] {
        &XS_GRID
    }
    fn tables() -> &'static Tables {
        static T: OnceLock<Tables> = OnceLock::new();
        T.get_or_init(build_tables::<Xs>)
    }
    fn lane_tables() -> &'static LaneTables {
        static T: OnceLock<LaneTables> = OnceLock::new();
        T.get_or_init(build_lane_tables::<Xs>)
    }
    fn pack(subs: &[Option<SubBlock>], y: &mut [u8]) {
        pack_xs(subs, y)
    }
}

/// `iq2xxs_grid` (`ggml-common.h`): 256 points of eight bytes, each 8, 25 or 43 (levels 0, 1,
/// 2). A format constant: the decoder reads it; the search uses its levels (ggml's
/// `kgrid_2bit_256`, sorted by the 16-bit code of two bits per level, as these are).
#[rustfmt::skip]
const XXS_GRID: [u64; 256] = [
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

/// `iq2xs_grid` (`ggml-common.h`): IQ2_XS's 512 points, as [`XXS_GRID`] (the search grid is
/// ggml's `kgrid_2bit_512`).
#[rustfmt::skip]
const XS_GRID: [u64; 512] = [
    0x0808080808080808, 0x080808080808082b, 0x0808080808081919, 0x0808080808082b08,
    0x0808080808082b2b, 0x0808080808190819, 0x0808080808191908, 0x080808080819192b,
    0x0808080808192b19, 0x08080808082b0808, 0x08080808082b082b, 0x08080808082b1919,
    0x08080808082b2b08, 0x0808080819080819, 0x0808080819081908, 0x080808081908192b,
    0x0808080819082b19, 0x0808080819190808, 0x080808081919082b, 0x0808080819191919,
    0x0808080819192b08, 0x08080808192b0819, 0x08080808192b1908, 0x080808082b080808,
    0x080808082b08082b, 0x080808082b081919, 0x080808082b082b08, 0x080808082b190819,
    0x080808082b191908, 0x080808082b192b19, 0x080808082b2b0808, 0x0808081908080819,
    0x0808081908081908, 0x080808190808192b, 0x0808081908082b19, 0x0808081908190808,
    0x080808190819082b, 0x0808081908191919, 0x0808081908192b08, 0x0808081908192b2b,
    0x08080819082b0819, 0x08080819082b1908, 0x0808081919080808, 0x080808191908082b,
    0x0808081919081919, 0x0808081919082b08, 0x0808081919190819, 0x0808081919191908,
    0x08080819192b0808, 0x08080819192b2b08, 0x080808192b080819, 0x080808192b081908,
    0x080808192b190808, 0x0808082b08080808, 0x0808082b0808082b, 0x0808082b08081919,
    0x0808082b08082b08, 0x0808082b08190819, 0x0808082b08191908, 0x0808082b082b0808,
    0x0808082b19080819, 0x0808082b19081908, 0x0808082b19190808, 0x0808082b19191919,
    0x0808082b2b080808, 0x0808082b2b082b2b, 0x0808190808080819, 0x0808190808081908,
    0x080819080808192b, 0x0808190808082b19, 0x0808190808190808, 0x080819080819082b,
    0x0808190808191919, 0x0808190808192b08, 0x08081908082b0819, 0x08081908082b1908,
    0x0808190819080808, 0x080819081908082b, 0x0808190819081919, 0x0808190819082b08,
    0x0808190819190819, 0x0808190819191908, 0x080819081919192b, 0x08081908192b0808,
    0x080819082b080819, 0x080819082b081908, 0x080819082b190808, 0x0808191908080808,
    0x080819190808082b, 0x0808191908081919, 0x0808191908082b08, 0x0808191908190819,
    0x0808191908191908, 0x08081919082b0808, 0x0808191919080819, 0x0808191919081908,
    0x0808191919190808, 0x08081919192b0819, 0x080819192b080808, 0x0808192b08080819,
    0x0808192b08081908, 0x0808192b08190808, 0x0808192b082b192b, 0x0808192b19080808,
    0x0808192b1908082b, 0x0808192b2b081908, 0x08082b0808080808, 0x08082b080808082b,
    0x08082b0808081919, 0x08082b0808082b08, 0x08082b0808082b2b, 0x08082b0808190819,
    0x08082b0808191908, 0x08082b08082b0808, 0x08082b08082b1919, 0x08082b0819080819,
    0x08082b0819081908, 0x08082b0819190808, 0x08082b0819192b08, 0x08082b082b080808,
    0x08082b082b2b0808, 0x08082b082b2b2b2b, 0x08082b1908080819, 0x08082b1908081908,
    0x08082b1908190808, 0x08082b1919080808, 0x08082b192b080819, 0x08082b192b082b19,
    0x08082b2b08080808, 0x08082b2b082b0808, 0x08082b2b082b2b08, 0x08082b2b2b19192b,
    0x08082b2b2b2b0808, 0x0819080808080819, 0x0819080808081908, 0x081908080808192b,
    0x0819080808082b19, 0x0819080808190808, 0x081908080819082b, 0x0819080808191919,
    0x0819080808192b08, 0x08190808082b0819, 0x08190808082b1908, 0x0819080819080808,
    0x081908081908082b, 0x0819080819081919, 0x0819080819082b08, 0x0819080819190819,
    0x0819080819191908, 0x08190808192b0808, 0x08190808192b2b2b, 0x081908082b080819,
    0x081908082b081908, 0x081908082b190808, 0x0819081908080808, 0x081908190808082b,
    0x0819081908081919, 0x0819081908082b08, 0x0819081908190819, 0x0819081908191908,
    0x08190819082b0808, 0x0819081919080819, 0x0819081919081908, 0x0819081919190808,
    0x081908192b080808, 0x081908192b191908, 0x081908192b19192b, 0x0819082b08080819,
    0x0819082b08081908, 0x0819082b0808192b, 0x0819082b08190808, 0x0819082b19080808,
    0x0819082b192b0808, 0x0819190808080808, 0x081919080808082b, 0x0819190808081919,
    0x0819190808082b08, 0x0819190808190819, 0x0819190808191908, 0x08191908082b0808,
    0x0819190819080819, 0x0819190819081908, 0x0819190819082b19, 0x0819190819190808,
    0x08191908192b1908, 0x081919082b080808, 0x0819191908080819, 0x0819191908081908,
    0x0819191908190808, 0x0819191919080808, 0x0819192b08080808, 0x0819192b08191908,
    0x0819192b19082b19, 0x08192b0808080819, 0x08192b0808081908, 0x08192b0808190808,
    0x08192b080819082b, 0x08192b0819080808, 0x08192b0819191908, 0x08192b082b08192b,
    0x08192b1908080808, 0x08192b1908081919, 0x08192b19192b192b, 0x08192b2b19190819,
    0x08192b2b2b2b2b19, 0x082b080808080808, 0x082b08080808082b, 0x082b080808081919,
    0x082b080808082b08, 0x082b080808082b2b, 0x082b080808190819, 0x082b080808191908,
    0x082b0808082b0808, 0x082b080819080819, 0x082b080819081908, 0x082b080819190808,
    0x082b08082b080808, 0x082b08082b2b0808, 0x082b081908080819, 0x082b081908081908,
    0x082b081908190808, 0x082b081919080808, 0x082b081919082b08, 0x082b0819192b1919,
    0x082b082b08080808, 0x082b082b082b082b, 0x082b082b2b080808, 0x082b082b2b2b2b08,
    0x082b190808080819, 0x082b190808081908, 0x082b190808190808, 0x082b1908082b2b19,
    0x082b190819080808, 0x082b191908080808, 0x082b191919080819, 0x082b19191919082b,
    0x082b19192b192b19, 0x082b192b08080819, 0x082b192b08192b2b, 0x082b192b2b2b192b,
    0x082b2b0808080808, 0x082b2b0808082b08, 0x082b2b0808082b2b, 0x082b2b08082b0808,
    0x082b2b0819191919, 0x082b2b082b082b08, 0x082b2b082b2b082b, 0x082b2b19192b2b08,
    0x082b2b192b190808, 0x082b2b2b08082b08, 0x082b2b2b082b0808, 0x082b2b2b2b08082b,
    0x082b2b2b2b082b08, 0x082b2b2b2b082b2b, 0x1908080808080819, 0x1908080808081908,
    0x190808080808192b, 0x1908080808082b19, 0x1908080808190808, 0x190808080819082b,
    0x1908080808191919, 0x1908080808192b08, 0x19080808082b0819, 0x19080808082b1908,
    0x1908080819080808, 0x190808081908082b, 0x1908080819081919, 0x1908080819082b08,
    0x1908080819082b2b, 0x1908080819190819, 0x1908080819191908, 0x19080808192b0808,
    0x19080808192b1919, 0x190808082b080819, 0x190808082b081908, 0x190808082b190808,
    0x1908081908080808, 0x190808190808082b, 0x1908081908081919, 0x1908081908082b08,
    0x1908081908190819, 0x1908081908191908, 0x19080819082b0808, 0x1908081919080819,
    0x1908081919081908, 0x1908081919190808, 0x190808192b080808, 0x190808192b081919,
    0x190808192b2b082b, 0x1908082b08080819, 0x1908082b08081908, 0x1908082b08190808,
    0x1908082b0819082b, 0x1908082b082b2b19, 0x1908082b19080808, 0x1908190808080808,
    0x190819080808082b, 0x1908190808081919, 0x1908190808082b08, 0x1908190808190819,
    0x1908190808191908, 0x1908190808192b19, 0x19081908082b0808, 0x1908190819080819,
    0x1908190819081908, 0x1908190819190808, 0x190819082b080808, 0x190819082b191908,
    0x1908191908080819, 0x1908191908081908, 0x1908191908190808, 0x19081919082b1908,
    0x1908191919080808, 0x190819192b192b2b, 0x1908192b08080808, 0x1908192b08082b2b,
    0x1908192b19081908, 0x1908192b19190808, 0x19082b0808080819, 0x19082b0808081908,
    0x19082b0808190808, 0x19082b0819080808, 0x19082b0819081919, 0x19082b0819191908,
    0x19082b08192b082b, 0x19082b1908080808, 0x19082b1908190819, 0x19082b1919081908,
    0x19082b1919190808, 0x19082b19192b2b19, 0x19082b2b08081908, 0x1919080808080808,
    0x191908080808082b, 0x1919080808081919, 0x1919080808082b08, 0x1919080808190819,
    0x1919080808191908, 0x19190808082b0808, 0x19190808082b2b08, 0x1919080819080819,
    0x1919080819081908, 0x1919080819190808, 0x191908082b080808, 0x1919081908080819,
    0x1919081908081908, 0x1919081908190808, 0x1919081908191919, 0x1919081919080808,
    0x191908191908082b, 0x1919082b08080808, 0x1919082b19081908, 0x1919082b2b2b2b2b,
    0x1919190808080819, 0x1919190808081908, 0x1919190808190808, 0x19191908082b0819,
    0x1919190819080808, 0x19191908192b0808, 0x191919082b080819, 0x191919082b2b0819,
    0x1919191908080808, 0x1919191908082b08, 0x191919192b080808, 0x191919192b082b08,
    0x1919192b082b0819, 0x1919192b192b2b08, 0x1919192b2b2b0819, 0x19192b0808080808,
    0x19192b0808191908, 0x19192b0819080819, 0x19192b0819190808, 0x19192b082b192b19,
    0x19192b1908192b2b, 0x19192b1919080808, 0x19192b191908082b, 0x19192b2b2b081919,
    0x192b080808080819, 0x192b080808081908, 0x192b080808190808, 0x192b080819080808,
    0x192b080819191908, 0x192b0808192b082b, 0x192b08082b08192b, 0x192b08082b2b2b19,
    0x192b081908080808, 0x192b082b082b1908, 0x192b082b19082b2b, 0x192b082b2b19082b,
    0x192b190808080808, 0x192b19080819192b, 0x192b191908190808, 0x192b191919080808,
    0x192b191919081919, 0x192b19192b2b1908, 0x192b2b0808080819, 0x192b2b08192b2b2b,
    0x192b2b19082b1919, 0x192b2b2b0808192b, 0x192b2b2b19191908, 0x192b2b2b192b082b,
    0x2b08080808080808, 0x2b0808080808082b, 0x2b08080808081919, 0x2b08080808082b08,
    0x2b08080808190819, 0x2b08080808191908, 0x2b080808082b0808, 0x2b080808082b2b2b,
    0x2b08080819080819, 0x2b08080819081908, 0x2b08080819190808, 0x2b0808082b080808,
    0x2b0808082b08082b, 0x2b0808082b2b2b08, 0x2b0808082b2b2b2b, 0x2b08081908080819,
    0x2b08081908081908, 0x2b0808190808192b, 0x2b08081908190808, 0x2b08081919080808,
    0x2b08081919190819, 0x2b08081919192b19, 0x2b08082b08080808, 0x2b08082b082b0808,
    0x2b08082b2b080808, 0x2b08082b2b08082b, 0x2b08082b2b2b0808, 0x2b08082b2b2b2b08,
    0x2b08190808080819, 0x2b08190808081908, 0x2b08190808190808, 0x2b0819080819082b,
    0x2b08190808191919, 0x2b08190819080808, 0x2b081908192b0808, 0x2b0819082b082b19,
    0x2b08191908080808, 0x2b08191919081908, 0x2b0819192b2b1919, 0x2b08192b08192b08,
    0x2b08192b192b2b2b, 0x2b082b0808080808, 0x2b082b0808082b08, 0x2b082b08082b1919,
    0x2b082b0819192b2b, 0x2b082b082b080808, 0x2b082b082b08082b, 0x2b082b082b2b2b08,
    0x2b082b190808192b, 0x2b082b2b082b082b, 0x2b082b2b2b080808, 0x2b082b2b2b082b08,
    0x2b082b2b2b19192b, 0x2b082b2b2b2b2b08, 0x2b19080808080819, 0x2b19080808081908,
    0x2b19080808190808, 0x2b19080819080808, 0x2b1908081919192b, 0x2b1908082b081908,
    0x2b19081908080808, 0x2b190819082b082b, 0x2b190819192b1908, 0x2b19082b1919192b,
    0x2b19082b2b082b19, 0x2b19190808080808, 0x2b19190808081919, 0x2b19190819081908,
    0x2b19190819190808, 0x2b19190819192b08, 0x2b191919082b2b19, 0x2b1919192b190808,
    0x2b1919192b19082b, 0x2b19192b19080819, 0x2b192b0819190819, 0x2b192b082b2b192b,
    0x2b192b1919082b19, 0x2b192b2b08191919, 0x2b192b2b192b0808, 0x2b2b080808080808,
    0x2b2b08080808082b, 0x2b2b080808082b08, 0x2b2b080808082b2b, 0x2b2b0808082b0808,
    0x2b2b0808082b2b2b, 0x2b2b08082b2b0808, 0x2b2b081919190819, 0x2b2b081919192b19,
    0x2b2b08192b2b192b, 0x2b2b082b08080808, 0x2b2b082b0808082b, 0x2b2b082b08082b08,
    0x2b2b082b082b2b2b, 0x2b2b082b2b080808, 0x2b2b082b2b2b0808, 0x2b2b190819080808,
    0x2b2b19082b191919, 0x2b2b192b192b1919, 0x2b2b192b2b192b08, 0x2b2b2b0808082b2b,
    0x2b2b2b08082b0808, 0x2b2b2b08082b082b, 0x2b2b2b08082b2b08, 0x2b2b2b082b2b0808,
    0x2b2b2b082b2b2b08, 0x2b2b2b1908081908, 0x2b2b2b192b081908, 0x2b2b2b192b08192b,
    0x2b2b2b2b082b2b08, 0x2b2b2b2b082b2b2b, 0x2b2b2b2b2b190819, 0x2b2b2b2b2b2b2b2b,
];

/// Level (0..3) of value `i` (0..8) of point `j` of grid `G`.
#[inline(always)]
fn level<G: Grid2>(j: usize, i: usize) -> i32 {
    match (G::grid()[j] >> (8 * i)) & 0xff {
        8 => 0,
        25 => 1,
        _ => 2,
    }
}

/// Search-grid value `2l + 1` of value `i` of point `j`.
#[inline(always)]
fn grid_value<G: Grid2>(j: usize, i: usize) -> i32 {
    2 * level::<G>(j, i) + 1
}

/// The 16-bit code of eight levels (two bits each).
#[inline(always)]
fn code(l: &[i8]) -> usize {
    let mut u = 0usize;
    for i in 0..8 {
        u |= (l[i] as usize) << (2 * i);
    }
    u
}

/// `kmap_q2xs` and `kneighbors_q2xs` as `iq2xs_init_impl` builds them, for the codes the
/// search can reach (every level below 3; ggml also lists codes with a level 3, which its
/// search never looks up).
pub(crate) struct Tables {
    /// Grid index, or `-(o + 1)` where `neighbours[o]` is the count and the list follows, or
    /// [`UNREACHABLE`].
    map: Vec<i32>,
    neighbours: Vec<u16>,
}

fn build_tables<G: Grid2>() -> Tables {
    let n_points = G::grid().len();
    let mut map = vec![UNREACHABLE; MAP_SIZE];
    for j in 0..n_points {
        let mut index = 0usize;
        for i in 0..8 {
            index |= (level::<G>(j, i) as usize) << (2 * i);
        }
        map[index] = j as i32;
    }
    let mut neighbours = Vec::new();
    let mut dist2: Vec<(i32, usize)> = Vec::with_capacity(n_points);
    for u in 0..MAP_SIZE {
        let reachable = (0..8).all(|i| (u >> (2 * i)) & 3 < K_MAX_Q as usize);
        if map[u] >= 0 || !reachable {
            continue;
        }
        let pos: [i32; 8] = std::array::from_fn(|i| 2 * ((u >> (2 * i)) & 3) as i32 + 1);
        dist2.clear();
        for j in 0..n_points {
            let mut d2 = 0;
            for i in 0..8 {
                let d = grid_value::<G>(j, i) - pos[i];
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
fn find_best_neighbour<G: Grid2>(
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
    for i in 0..8 {
        l[i] = level::<G>(g, i) as i8;
    }
    Some(g)
}

/// What the search settles for one sub-block (the first `SUB` levels and `SUB / 8` sign bytes).
#[derive(Clone, Copy)]
pub(crate) struct SubBlock {
    l: [i8; 32],
    signs: [u8; 4],
    scale: f32,
}

/// IQ2_XXS's first scale: `make_qp_quants(32, kMaxQ + 1, xval, L, weight)`.
#[inline(always)]
fn first_scale(xval: &[f32; 32], weight: &[f32; 32]) -> f32 {
    let mut l = [0u8; 32];
    make_qp_quants_ref::<32, { K_MAX_Q + 1 }>(xval, &mut l, weight)
}

/// `sumqx`, `sumq2` of levels `l` over the first `n` values.
#[inline(always)]
fn sums(n: usize, weight: &[f32], xval: &[f32; 32], l: &[i8; 32]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// One group's levels at inverse scale `id`, moved to its best neighbour at `scale` if off the
/// grid: whether it was on the grid, or `Err(())` where C aborts.
#[inline(always)]
fn round_group<G: Grid2>(
    xval: &[f32],
    waux: &[f32],
    id: f32,
    scale: f32,
    l: &mut [i8],
) -> Result<bool, ()> {
    for i in 0..8 {
        let li = nearest_int(0.5 * (id * xval[i] - 1.0));
        l[i] = li.clamp(0, K_MAX_Q - 1) as i8;
    }
    match neighbours_of(G::tables(), code(l)) {
        Some(nb) => {
            find_best_neighbour::<G>(nb, xval, waux, scale, l).ok_or(())?;
            Ok(false)
        }
        None => Ok(true),
    }
}

/// One sub-block (`xb`, `weight`: `G::SUB` values) of ggml's search: `Ok(None)` where C skips
/// it, `Err(())` where C aborts.
fn sub_block_ref<G: Grid2>(xb: &[f32], weight: &[f32]) -> Result<Option<SubBlock>, ()> {
    let n = G::SUB;
    let groups = n / 8;
    let mut waux = [0.0f32; 32];
    for i in 0..n {
        waux[i] = weight[i].sqrt();
    }
    let (xval, mut block_signs) = split_signs(xb, weight, true);
    let mut max = xval[0];
    for i in 1..n {
        max = if max > xval[i] { max } else { xval[i] };
    }
    if max < GROUP_MAX_EPS {
        return Ok(None);
    }
    let mut l = [0i8; 32];
    let (mut scale, m) = if G::QP_START {
        let w: &[f32; 32] = weight.try_into().unwrap();
        let scale = first_scale(&xval, w);
        let eff_max = scale * K_MAX_Q as f32;
        if eff_max <= 0.0 {
            return Ok(None);
        }
        (scale, eff_max)
    } else {
        (max / (2 * K_MAX_Q - 1) as f32, max)
    };
    let mut best = 0.0f32;
    let mut is_on_grid = [true; 4];
    let mut laux = [0i8; 32];
    let mut is_on_grid_aux = [true; 4];
    for is in -G::TRIALS..=G::TRIALS {
        let id = ((2 * K_MAX_Q - 1) as f32 + is as f32 * 0.1f32) / m;
        let this_scale = 1.0 / id;
        for k in 0..groups {
            let r = 8 * k..8 * k + 8;
            is_on_grid_aux[k] = round_group::<G>(
                &xval[r.clone()],
                &waux[r.clone()],
                id,
                this_scale,
                &mut laux[r],
            )?;
        }
        let (sumqx, sumq2) = sums(n, weight, &xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
            is_on_grid = is_on_grid_aux;
        }
    }
    // IQ2_XXS redoes every group; IQ2_XS those off the grid, if any.
    let redo = if G::QP_START {
        scale > 0.0
    } else {
        is_on_grid[..groups].iter().any(|&g| !g) && scale > 0.0
    };
    if redo {
        let id = 1.0 / scale;
        for k in 0..groups {
            if !G::QP_START && is_on_grid[k] {
                continue;
            }
            let r = 8 * k..8 * k + 8;
            round_group::<G>(&xval[r.clone()], &waux[r.clone()], id, scale, &mut l[r])?;
        }
        let (sumqx, sumq2) = sums(n, weight, &xval, &l);
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
    // GGML_ASSERT(scale >= 0): only a NaN fails. (IQ2_XXS with a NaN scale aborts one step
    // earlier, on levels off the grid, in GGML_ABORT: an abort as well.)
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

/// `d` and the sub-blocks' 4-bit scales, or `None` where every scale is zero (a zero block).
fn quantized_scales(subs: &[Option<SubBlock>]) -> Option<(f32, [i32; 16])> {
    let mut scales = [0.0f32; 16];
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

/// IQ2_XXS's bytes from its eight sub-blocks.
fn pack_xxs(subs: &[Option<SubBlock>], y: &mut [u8]) {
    let t = Xxs::tables();
    y.fill(0);
    let Some((d, l)) = quantized_scales(subs) else {
        return;
    };
    let mut q2 = [0u32; 16];
    for (ib, sub) in subs.iter().enumerate() {
        if let Some(sub) = sub {
            for k in 0..4 {
                let grid_index = t.map[code(&sub.l[8 * k..8 * k + 8])];
                debug_assert!(grid_index >= 0);
                q2[2 * ib] |= (grid_index as u32) << (8 * k);
                q2[2 * ib + 1] |= ((sub.signs[k] & 127) as u32) << (7 * k);
            }
        }
        q2[2 * ib + 1] |= (l[ib] as u32) << 28;
    }
    y[..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    for (i, w) in q2.iter().enumerate() {
        y[2 + 4 * i..6 + 4 * i].copy_from_slice(&w.to_le_bytes());
    }
}

/// IQ2_XS's bytes from its sixteen sub-blocks.
fn pack_xs(subs: &[Option<SubBlock>], y: &mut [u8]) {
    let t = Xs::tables();
    y.fill(0);
    let Some((d, l)) = quantized_scales(subs) else {
        return;
    };
    for (ib, sub) in subs.iter().enumerate() {
        if let Some(sub) = sub {
            for k in 0..2 {
                let grid_index = t.map[code(&sub.l[8 * k..8 * k + 8])];
                debug_assert!(grid_index >= 0);
                let q = grid_index as u16 | ((sub.signs[k] & 127) as u16) << 9;
                let o = 2 + 2 * (2 * ib + k);
                y[o..o + 2].copy_from_slice(&q.to_le_bytes());
            }
        }
        y[66 + ib / 2] |= (l[ib] << (4 * (ib % 2))) as u8;
    }
    y[..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
}

/// The reference over whole super-blocks of one row with its importance vector `qw`: the index
/// of the first block ggml aborts on, if any.
pub(crate) fn iq2_ref<G: Grid2>(x: &[f32], qw: &[f32], y: &mut [u8]) -> Option<usize> {
    let mut w = [0.0f32; QK_K];
    let n = G::SUB;
    for (b, (xb, yb)) in x
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(G::BLOCK_BYTES))
        .enumerate()
    {
        weights(xb, &qw[QK_K * b..QK_K * (b + 1)], &mut w);
        let mut subs = [None; 16];
        for ib in 0..QK_K / n {
            let r = n * ib..n * ib + n;
            match sub_block_ref::<G>(&xb[r.clone()], &w[r]) {
                Ok(s) => subs[ib] = s,
                Err(()) => return Some(b),
            }
        }
        G::pack(&subs[..QK_K / n], yb);
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

pub(crate) struct LaneTables {
    /// Each off-grid code's first chunk and neighbour count.
    lists: Vec<(u32, u32)>,
    chunks: Vec<Chunk>,
}

fn build_lane_tables<G: Grid2>() -> LaneTables {
    let t = G::tables();
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
                    c.q[i][j] = grid_value::<G>(g as usize, i) as f32;
                    c.code[j] |= (level::<G>(g as usize, i) as u16) << (2 * i);
                }
            }
            chunks.push(c);
        }
    }
    LaneTables { lists, chunks }
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
fn search_lanes<G: Grid2>(u: usize, xv: &[f32; 8], wa: &[f32; 8], scale: f32) -> (u16, bool) {
    let lt = G::lane_tables();
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

/// One round for N sub-blocks of S values: levels at inverse scales `id`, off-grid groups of
/// the lanes in `search` moved to their best neighbour at `scale`; `on[g][lane]`: whether group
/// `g` was on the grid.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn trial_lanes<G: Grid2, const S: usize, const N: usize>(
    xval: &[[f32; N]; S],
    groups: &[[([f32; 8], [f32; 8]); 4]; N],
    id: &[f32; N],
    scale: &[f32; N],
    search: &[bool; N],
    l: &mut [[i32; N]; S],
    on: &mut [[bool; N]; 4],
    fail: &mut [bool; N],
) {
    let t = G::tables();
    for i in 0..S {
        for k in 0..N {
            l[i][k] = nearest_int(0.5 * (id[k] * xval[i][k] - 1.0)).clamp(0, K_MAX_Q - 1);
        }
    }
    let mut todo = [0u32; 4 * 32];
    let mut count = 0;
    for g in 0..S / 8 {
        let mut u = [0i32; N];
        for k in 0..N {
            for i in 0..8 {
                u[k] |= l[8 * g + i][k] << (2 * i);
            }
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
        let (xv, wa) = &groups[k][g];
        let (c, ok) = search_lanes::<G>(u, xv, wa, scale[k]);
        for i in 0..8 {
            l[8 * g + i][k] = ((c >> (2 * i)) & 3) as i32;
        }
        fail[k] |= !ok;
    }
}

/// `sumqx`, `sumq2` of each lane's levels.
#[inline(always)]
fn sums_lanes<const S: usize, const N: usize>(
    weight: &[[f32; N]; S],
    xval: &[[f32; N]; S],
    l: &[[i32; N]; S],
) -> ([f32; N], [f32; N]) {
    let mut sumqx = [0.0f32; N];
    let mut sumq2 = [0.0f32; N];
    for i in 0..S {
        for k in 0..N {
            let q = (2 * l[i][k] + 1) as f32;
            sumqx[k] += weight[i][k] * xval[i][k] * q;
            sumq2[k] += weight[i][k] * q * q;
        }
    }
    (sumqx, sumq2)
}

/// [`sub_block_ref`] for N sub-blocks of S values at once, one per lane. Skipped lanes are
/// `None`.
#[inline(always)]
fn sub_blocks_lanes<G: Grid2, const S: usize, const N: usize>(
    xt: &[[f32; N]; S],
    weight: &[[f32; N]; S],
    fail: &mut [bool; N],
) -> [Option<SubBlock>; N] {
    let mut waux = [[0.0f32; N]; S];
    for i in 0..S {
        for k in 0..N {
            waux[i][k] = weight[i][k].sqrt();
        }
    }
    let (xval, neg) = split_signs_lanes(xt, weight, true);
    let mut max = xval[0];
    for i in 1..S {
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
            if g >= S / 8 {
                return ([0.0; 8], [0.0; 8]);
            }
            (
                std::array::from_fn(|i| xval[8 * g + i][k]),
                std::array::from_fn(|i| waux[8 * g + i][k]),
            )
        })
    });
    let mut active = [false; N];
    let mut scale = [0.0f32; N];
    let mut m = [0.0f32; N];
    for k in 0..N {
        if max[k] < GROUP_MAX_EPS {
            continue;
        }
        if G::QP_START {
            let xv: [f32; 32] = std::array::from_fn(|i| if i < S { xval[i][k] } else { 0.0 });
            let w: [f32; 32] = std::array::from_fn(|i| if i < S { weight[i][k] } else { 0.0 });
            scale[k] = first_scale(&xv, &w);
            m[k] = scale[k] * K_MAX_Q as f32;
            // C's `if (eff_max <= 0) continue;` (a NaN goes on).
            active[k] = m[k] > 0.0 || m[k].is_nan();
        } else {
            scale[k] = max[k] / (2 * K_MAX_Q - 1) as f32;
            m[k] = max[k];
            active[k] = true;
        }
    }
    let mut best = [0.0f32; N];
    let mut l = [[0i32; N]; S];
    let mut on = [[true; N]; 4];
    let mut laux = [[0i32; N]; S];
    let mut on_aux = [[true; N]; 4];
    for is in -G::TRIALS..=G::TRIALS {
        let num = (2 * K_MAX_Q - 1) as f32 + is as f32 * 0.1f32;
        let mut id = [0.0f32; N];
        let mut this_scale = [0.0f32; N];
        for k in 0..N {
            id[k] = num / m[k];
            this_scale[k] = 1.0 / id[k];
        }
        trial_lanes::<G, S, N>(
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
        for i in 0..S {
            for k in 0..N {
                l[i][k] = if better[k] { laux[i][k] } else { l[i][k] };
            }
        }
        for g in 0..S / 8 {
            for k in 0..N {
                on[g][k] = if better[k] { on_aux[g][k] } else { on[g][k] };
            }
        }
    }
    // The last round: IQ2_XXS every group, IQ2_XS those off the grid.
    let mut again = [false; N];
    let mut id = [0.0f32; N];
    for k in 0..N {
        let off = (0..S / 8).any(|g| !on[g][k]);
        again[k] = active[k] & (G::QP_START | off) & (scale[k] > 0.0);
        id[k] = 1.0 / scale[k];
    }
    if again.iter().any(|&a| a) {
        trial_lanes::<G, S, N>(
            &xval,
            &groups,
            &id,
            &scale,
            &again,
            &mut laux,
            &mut on_aux,
            fail,
        );
        for g in 0..S / 8 {
            for k in 0..N {
                let redo = again[k] & (G::QP_START | !on[g][k]);
                for i in 8 * g..8 * g + 8 {
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
        for (b, sb) in signs.iter_mut().enumerate().take(S / 8) {
            for i in 0..8 {
                *sb |= ((neg[8 * b + i][k] != flip) as u8) << i;
            }
        }
        Some(SubBlock {
            l: std::array::from_fn(|i| if i < S { l[i][k] as i8 } else { 0 }),
            signs,
            scale: s,
        })
    })
}

/// Whole super-blocks of one row with N sub-blocks of S values per pass; `bad` gets the first
/// block ggml aborts on, if any.
#[inline(always)]
fn iq2_lanes<G: Grid2, const S: usize, const N: usize>(
    x: &[f32],
    qw: &[f32],
    y: &mut [u8],
    bad: &mut Option<usize>,
) {
    let subs_per_block = QK_K / S;
    let per = N / subs_per_block;
    let nb = x.len() / QK_K;
    let mut w = [0.0f32; QK_K];
    let mut first = 0;
    while first < nb {
        let n = per.min(nb - first);
        // Lanes past the last super-block hold zeros: skipped.
        let mut xt = [[0.0f32; N]; S];
        let mut wt = [[0.0f32; N]; S];
        for s in 0..n {
            let b = first + s;
            let xb = &x[QK_K * b..QK_K * (b + 1)];
            weights(xb, &qw[QK_K * b..QK_K * (b + 1)], &mut w);
            for ib in 0..subs_per_block {
                for i in 0..S {
                    xt[i][subs_per_block * s + ib] = xb[S * ib + i];
                    wt[i][subs_per_block * s + ib] = w[S * ib + i];
                }
            }
        }
        let mut fail = [false; N];
        let subs = sub_blocks_lanes::<G, S, N>(&xt, &wt, &mut fail);
        for s in 0..n {
            let mine = subs_per_block * s..subs_per_block * (s + 1);
            if fail[mine.clone()].iter().any(|&f| f) {
                *bad = Some(first + s);
                return;
            }
            let b = first + s;
            G::pack(
                &subs[mine],
                &mut y[G::BLOCK_BYTES * b..G::BLOCK_BYTES * (b + 1)],
            );
        }
        first += n;
    }
}

fn iq2xxs_16(x: &[f32], qw: &[f32], y: &mut [u8], bad: &mut Option<usize>) {
    iq2_lanes::<Xxs, 32, 16>(x, qw, y, bad)
}

fn iq2xs_16(x: &[f32], qw: &[f32], y: &mut [u8], bad: &mut Option<usize>) {
    iq2_lanes::<Xs, 16, 16>(x, qw, y, bad)
}

per_backend!(iq2xxs_simd, (x: &[f32], qw: &[f32], y: &mut [u8], bad: &mut Option<usize>), avx2 => iq2xxs_16, avx512 => iq2xxs_16, neon => iq2xxs_16);
per_backend!(iq2xs_simd, (x: &[f32], qw: &[f32], y: &mut [u8], bad: &mut Option<usize>), avx2 => iq2xs_16, avx512 => iq2xs_16, neon => iq2xs_16);

/// The sign byte of a 7-bit field: the eighth sign is the parity (ggml's `ksigns_iq2xs`).
#[inline(always)]
fn eight_signs(seven: u32) -> u32 {
    seven | (seven.count_ones() & 1) << 7
}

/// `dequantize_row_iq2_xxs`, one block.
pub(crate) fn dequant_iq2xxs(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    for ib in 0..8 {
        let q = &x[2 + 8 * ib..10 + 8 * ib];
        let aux1 = u32::from_le_bytes(q[4..8].try_into().unwrap());
        let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
        for l in 0..4 {
            let grid = XXS_GRID[q[l] as usize].to_le_bytes();
            let signs = eight_signs((aux1 >> (7 * l)) & 127);
            for j in 0..8 {
                let neg = signs & (1 << j) != 0;
                y[32 * ib + 8 * l + j] = db * grid[j] as f32 * if neg { -1.0 } else { 1.0 };
            }
        }
    }
}

/// `dequantize_row_iq2_xs`, one block.
pub(crate) fn dequant_iq2xs(x: &[u8], y: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
    for ib in 0..8 {
        let sc = x[66 + ib];
        let db = [
            d * (0.5 + (sc & 0xf) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        for l in 0..4 {
            let o = 2 + 2 * (4 * ib + l);
            let q = u16::from_le_bytes([x[o], x[o + 1]]) as u32;
            let grid = XS_GRID[(q & 511) as usize].to_le_bytes();
            let signs = eight_signs(q >> 9);
            for j in 0..8 {
                let neg = signs & (1 << j) != 0;
                y[32 * ib + 8 * l + j] = db[l / 2] * grid[j] as f32 * if neg { -1.0 } else { 1.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each grid's levels are below 3, sorted by their 16-bit code, and the map finds them.
    fn grid_is_sorted_and_mapped<G: Grid2>() {
        let t = G::tables();
        let mut last = None;
        for j in 0..G::grid().len() {
            let l: Vec<i8> = (0..8).map(|i| level::<G>(j, i) as i8).collect();
            for (i, b) in G::grid()[j].to_le_bytes().into_iter().enumerate() {
                assert_eq!(b, [8, 25, 43][l[i] as usize], "point {j}");
            }
            let c = code(&l);
            assert!(last.is_none_or(|p| p < c));
            last = Some(c);
            assert_eq!(t.map[c], j as i32);
        }
    }

    #[test]
    fn grids_are_sorted_and_mapped() {
        grid_is_sorted_and_mapped::<Xxs>();
        grid_is_sorted_and_mapped::<Xs>();
    }

    /// Every reachable off-grid code lists the grid points at its two nearest distances, by
    /// distance then index; the lane search picks C's neighbour, ties and non-finite cases too.
    fn neighbours_and_lane_search<G: Grid2>() {
        let n_points = G::grid().len();
        let t = G::tables();
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
            let d2 = |j: usize| -> i32 {
                (0..8)
                    .map(|i| (grid_value::<G>(j, i) - pos[i]).pow(2))
                    .sum()
            };
            let mut all: Vec<i32> = (0..n_points).map(d2).collect();
            all.sort_unstable();
            all.dedup();
            let mut want: Vec<(i32, usize)> = (0..n_points)
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
                let want = find_best_neighbour::<G>(nb, &xv, &wa, scale, &mut l);
                let (c, ok) = search_lanes::<G>(u, &xv, &wa, scale);
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
        assert_eq!(lists, 6561 - n_points);
        assert!(ties > 0);
    }

    #[test]
    fn neighbours_and_lane_search_on_both_grids() {
        neighbours_and_lane_search::<Xxs>();
        neighbours_and_lane_search::<Xs>();
    }
}
