//! Runtime selection of wider vector instructions for the hand-written kernels.
//!
//! The crate is built for the baseline x86-64 target (SSE2), which every machine runs. The loops
//! in the element-wise kernels are written so the compiler can vectorise them; [`vectorized`]
//! runs such a loop compiled a second time with AVX2 and FMA enabled when the processor has
//! them, which doubles the vector width (the `gemm` crate makes the same choice internally).

/// Runs `f`, compiled for AVX2 + FMA when the processor supports them.
///
/// `f` should be a closure whose body does the work directly (helpers it calls should be
/// `#[inline(always)]`), so that the body is inlined into the AVX2 copy and vectorised there.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: `with_avx2` only requires that the processor supports AVX2 and FMA, which
            // was just checked at run time.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Calls `f` from a function compiled with AVX2 and FMA, so that `f`, once inlined, is too.
///
/// # Safety
/// The processor must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `e^x` for `x ≤ 0` (the softmax range), branch-free so loops over it vectorise.
///
/// Range reduction `x = n ln2 + r` with `|r| ≤ ln2 / 2` (Cody-Waite, two-part `ln2`), then a
/// degree-6 polynomial for `e^r` and an exponent-field scale by `2^n`. Inputs below -87.3 flush
/// to 0 (as `f32::exp` underflows there too, up to the denormal range); `-inf` gives 0. The error
/// is within 2 ulp of the correctly rounded result over the whole range (checked in the tests).
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Below this the result is under f32's smallest normal number; return 0.
    const LOWEST: f32 = -87.33;
    // NaN stays NaN through the comparison below, so it propagates like `f32::exp`.
    let xc = if x < LOWEST { LOWEST } else { x };
    // Round-to-nearest of x·log2(e) by the 1.5·2^23 trick: after the add, the low mantissa bits
    // of `t` hold n as an integer.
    const MAGIC: f32 = 12_582_912.0;
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // e^r = 1 + r + r²·q(r), q the Taylor series of (e^r - 1 - r) / r² to r⁵ (|r| ≤ 0.347, so
    // the truncation error is ~1e-9); adding the small terms first keeps the rounding error low.
    let q = 1.0 / 5040.0;
    let q = q * r + 1.0 / 720.0;
    let q = q * r + 1.0 / 120.0;
    let q = q * r + 1.0 / 24.0;
    let q = q * r + 1.0 / 6.0;
    let q = q * r + 0.5;
    let p = 1.0 + (r + (r * r) * q);
    // 2^n through the exponent field; n is in [-126, 0] after the clamp.
    let n_bits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = p * scale;
    if x < LOWEST { 0.0 } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_two_ulp() {
        let mut worst = 0u32;
        let mut x = 0.0f32;
        while x > -87.0 {
            let want = x.exp();
            let got = exp_nonpositive(x);
            let ulps = want.to_bits().abs_diff(got.to_bits());
            worst = worst.max(ulps);
            x -= 0.000_37;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-200.0), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn vectorized_runs_the_closure() {
        let v: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let s = vectorized(|| v.iter().map(|x| x * 2.0).sum::<f32>());
        assert_eq!(s, 9900.0);
    }
}
