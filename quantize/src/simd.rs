//! Run-time backend selection and the macro that compiles one kernel once per instruction set.
//!
//! We do not hand-write intrinsics. Every fast kernel is ordinary Rust over fixed-size lane
//! arrays (`[f32; N]`), written branch-free (selects, no early exits in lane loops) so LLVM
//! auto-vectorises it. [`per_backend!`] wraps such an `#[inline(always)]` generic kernel in
//! `#[target_feature]` functions (AVX2, AVX-512, NEON), so each instantiation is vectorised for
//! its ISA while all of them run exactly the same scalar IEEE operations per lane. LLVM never
//! contracts `a*b+c` into FMA without fast-math flags, and we never enable the `fma` feature,
//! so results are identical on every path (and equal to ggml's x86-64 build, which has no FMA).
//!
//! `Backend::Scalar` runs the readable straight ports of ggml's reference code instead.

use std::fmt;

/// A code path for the quantizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Straight port of ggml's `quantize_row_*_ref`; the executable specification.
    Scalar,
    /// Lane-parallel kernels compiled with AVX2.
    Avx2,
    /// Lane-parallel kernels compiled with AVX-512 F/BW/VL.
    Avx512,
    /// Lane-parallel kernels compiled with NEON (aarch64).
    Neon,
}

impl Backend {
    /// Every backend, best last.
    pub const ALL: [Backend; 4] = [
        Backend::Scalar,
        Backend::Neon,
        Backend::Avx2,
        Backend::Avx512,
    ];

    /// The best backend this CPU can run.
    pub fn detect() -> Backend {
        *Backend::available()
            .last()
            .expect("scalar is always available")
    }

    /// Every backend this CPU can run, worst first (Scalar always).
    pub fn available() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_available())
            .collect()
    }

    /// True if this CPU can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Lower-case name, e.g. `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Neon => "neon",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ggml's `nearest_int`: add 1.5·2^23 and read the mantissa. Round half to even for
/// |f| ≤ 4194303; outside that range (or for inf/NaN) it returns whatever the bits say, exactly
/// like the C code compiled with `NDEBUG`, so we reproduce the trick rather than `round_ties_even`.
#[inline(always)]
pub(crate) fn nearest_int(f: f32) -> i32 {
    let val = f + 12582912.0f32;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// ggml's recurring "largest magnitude" scan: `(amax, max)`, the largest |x| and the value that
/// has it (the first one on ties, as the C's strict `>` keeps).
#[inline(always)]
pub(crate) fn abs_max(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// [`abs_max`] per lane over element-major rows (`rows[i][lane]`), branch-free.
#[inline(always)]
pub(crate) fn abs_max_lanes<const N: usize>(rows: &[[f32; N]]) -> ([f32; N], [f32; N]) {
    let mut amax = [0.0f32; N];
    let mut max = [0.0f32; N];
    for row in rows {
        for k in 0..N {
            let ax = row[k].abs();
            let gt = ax > amax[k];
            amax[k] = if gt { ax } else { amax[k] };
            max[k] = if gt { row[k] } else { max[k] };
        }
    }
    (amax, max)
}

/// C `roundf` (half away from zero), built from `trunc` so it vectorises (`f32::round` lowers to
/// a libm call on x86). `x - trunc(x)` is exact, so the comparison with 0.5 is too; inf stays inf
/// (inf − inf is NaN and both comparisons fail).
#[inline(always)]
pub(crate) fn round_away(x: f32) -> f32 {
    let t = x.trunc();
    let d = x - t;
    let up = if d >= 0.5 { t + 1.0 } else { t };
    if d <= -0.5 {
        t - 1.0
    } else {
        up
    }
}

/// C's float → int conversion as x86-64 executes it (`cvttss2si`): truncation toward zero, and
/// the "integer indefinite" value `i32::MIN` for NaN or anything outside the i32 range. (Rust's
/// `as` saturates instead.) ggml's `(int8_t)(x + 8.5f)` is this followed by keeping the low byte.
#[inline(always)]
pub(crate) fn c_f32_to_i32(v: f32) -> i32 {
    let in_range = (-2147483648.0f32..2147483648.0f32).contains(&v);
    let safe = if in_range { v } else { 0.0 };
    // SAFETY: `safe` is finite and within i32 range (NaN fails both comparisons). Unlike the
    // saturating `as`, this lowers to a plain (vectorisable) `cvttps2dq`.
    let t: i32 = unsafe { safe.to_int_unchecked() };
    if in_range {
        t
    } else {
        i32::MIN
    }
}

/// Compiles a lane-parallel kernel once per backend and dispatches to it.
///
/// `per_backend!(name, (args), avx2 => expr, avx512 => expr, neon => expr)` defines a module
/// `name` with `unsafe fn run(backend, args)`. Callers must have checked that the backend is
/// available on this CPU; `Scalar` runs the AVX2 expression's generic code without features
/// (never used for output, handy for debugging).
macro_rules! per_backend {
    ($name:ident, ($($arg:ident : $ty:ty),* $(,)?), avx2 => $avx2:expr, avx512 => $avx512:expr, neon => $neon:expr $(,)?) => {
        pub(crate) mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) {
                ($avx2)($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            unsafe fn avx512($($arg: $ty),*) {
                ($avx512)($($arg),*)
            }

            #[cfg(target_arch = "aarch64")]
            #[target_feature(enable = "neon")]
            unsafe fn neon($($arg: $ty),*) {
                ($neon)($($arg),*)
            }

            /// # Safety
            /// `backend` must be available on this CPU ([`crate::Backend::is_available`]).
            #[allow(unreachable_patterns)]
            pub(crate) unsafe fn run(backend: $crate::Backend, $($arg: $ty),*) {
                match backend {
                    #[cfg(target_arch = "x86_64")]
                    $crate::Backend::Avx2 => unsafe { avx2($($arg),*) },
                    #[cfg(target_arch = "x86_64")]
                    $crate::Backend::Avx512 => unsafe { avx512($($arg),*) },
                    #[cfg(target_arch = "aarch64")]
                    $crate::Backend::Neon => unsafe { neon($($arg),*) },
                    _ => ($avx2)($($arg),*),
                }
            }
        }
    };
}
pub(crate) use per_backend;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-3.5), -4);
        assert_eq!(nearest_int(4194303.0), 4194303);
    }

    #[test]
    fn round_away_is_roundf() {
        for v in [
            0.5f32,
            -0.5,
            1.5,
            2.5,
            -2.5,
            0.49999997,
            -0.49999997,
            8388607.5,
            1e30,
            -0.0,
            f32::INFINITY,
        ] {
            assert_eq!(round_away(v).to_bits(), v.round().to_bits(), "{v}");
        }
        let mut b = 0u32;
        while b < u32::MAX - 10007 {
            let v = f32::from_bits(b);
            if !v.is_nan() {
                assert_eq!(round_away(v).to_bits(), v.round().to_bits(), "{v}");
            }
            b += 10007;
        }
    }

    #[test]
    fn c_conversion_is_x86_indefinite() {
        assert_eq!(c_f32_to_i32(f32::NAN), i32::MIN);
        assert_eq!(c_f32_to_i32(f32::INFINITY), i32::MIN);
        assert_eq!(c_f32_to_i32(3e9), i32::MIN);
        assert_eq!(c_f32_to_i32(-2147483648.0), i32::MIN);
        assert_eq!(c_f32_to_i32(-8.7), -8);
        assert_eq!(c_f32_to_i32(8.7), 8);
    }

    #[test]
    fn scalar_always_available() {
        assert!(Backend::available().contains(&Backend::Scalar));
        assert!(Backend::detect().is_available());
    }
}
