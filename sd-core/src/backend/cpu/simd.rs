//! Runtime selection of wider vector instructions for the hand-written kernels.
//!
//! The crate is built for the baseline x86-64 target (SSE2), which every machine runs. The loops
//! in the element-wise kernels are written so the compiler can vectorise them; [`vectorized`]
//! runs such a loop compiled again with AVX-512 (16 lanes) or AVX2 and FMA (8 lanes) enabled,
//! whichever the processor has (the `gemm` crate makes the same choice internally).

/// Runs `f`, compiled for AVX-512 or for AVX2 + FMA when the processor supports them.
///
/// `f` should be a closure whose body does the work directly (helpers it calls should be
/// `#[inline(always)]`), so that the body is inlined into the wider copy and vectorised there.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: `with_avx512` only requires the AVX-512 subsets it enables (and AVX2 and
            // FMA, which every AVX-512 processor has), just checked at run time.
            return unsafe { with_avx512(f) };
        }
        if has_avx2_fma() {
            // SAFETY: `with_avx2` only requires that the processor supports AVX2 and FMA, which
            // was just checked at run time.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

/// Whether the processor supports AVX2 and FMA (cached by the standard library).
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the processor supports the AVX-512 subsets of the x86-64-v4 level (foundation,
/// vector-length, double/quad-word and byte/word), plus AVX2 and FMA (cached by the standard
/// library).
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Calls `f` from a function compiled with AVX-512, so that `f`, once inlined, is too.
///
/// # Safety
/// The processor must support everything [`has_avx512`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
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

/// The error function, branch-free so loops over it vectorise; within 3 ulp of the correctly
/// rounded result (checked in the tests against a float64 reference).
///
/// `|x| < 1`: `x·P(x²)`, a degree-6 least-squares fit of `erf(a)/a` in `a²`. Otherwise
/// `1 - e^(-x²)·Q(t)`, `Q` a degree-11 fit of the scaled complementary error function
/// `erfcx(a) = e^(a²)·erfc(a)` in `t = (a - 2.5) / 1.5` over `[1, 4]`; beyond 4 the result is
/// 1 in f32. The rounding of `x²` moves `e^(-x²)` by at most half an ulp of `x²` relative,
/// which `erfc ≤ 0.16` shrinks below 1e-8 absolute.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const SMALL: [f32; 7] = [
        7.882_5e-5,
        -8.018_859e-4,
        5.189_312_6e-3,
        -2.685_432_9e-2,
        0.112_835_97,
        -0.376_126_26,
        std::f32::consts::FRAC_2_SQRT_PI,
    ];
    const LARGE: [f32; 12] = [
        -3.692_937_4e-5,
        9.640_63e-5,
        -1.439_469_8e-4,
        3.678_646_8e-4,
        -1.017_119_3e-3,
        2.425_888_3e-3,
        -5.567_332_3e-3,
        1.248_403_5e-2,
        -2.700_572_5e-2,
        5.611_096e-2,
        -0.111_521,
        0.210_806_35,
    ];
    let a = x.abs();
    let u = a * a;
    let mut p = SMALL[0];
    for c in &SMALL[1..] {
        p = p * u + c;
    }
    let small = a * p;
    let ac = if a > 4.0 { 4.0 } else { a };
    let t = (ac - 2.5) * (1.0 / 1.5);
    let mut q = LARGE[0];
    for c in &LARGE[1..] {
        q = q * t + c;
    }
    let large = 1.0 - exp_nonpositive(-(ac * ac)) * q;
    // NaN fails `a < 1` and propagates through the exp.
    let r = if a < 1.0 { small } else { large };
    r.copysign(x)
}

/// Replaces every `v` of `row` by `e^(v·scale - shift)` (0 where `v` is `-inf`, a masked entry)
/// and returns their sum. `v·scale - shift` should be `≤ 0` (`shift` is the row maximum).
pub(crate) fn exp_row(row: &mut [f32], scale: f32, shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: AVX-512 support was just checked at run time.
            return unsafe { avx512::exp_row(row, scale, shift) };
        }
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA support was just checked at run time.
            return unsafe { avx2::exp_row(row, scale, shift) };
        }
    }
    exp_row_scalar(row, scale, shift)
}

/// SiLU, `x · sigmoid(x)`, in place (AVX-512 or AVX2 when available; the exp is within 2 ulp).
pub(crate) fn silu_inplace(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: AVX-512 support was just checked at run time.
            return unsafe { avx512::silu_inplace(xs) };
        }
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA support was just checked at run time.
            return unsafe { avx2::silu_inplace(xs) };
        }
    }
    xs.iter_mut().for_each(|v| *v = silu_scalar(*v));
}

#[inline(always)]
fn silu_scalar(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[inline(always)]
fn exp_row_scalar(row: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = if *v == f32::NEG_INFINITY {
            0.0
        } else {
            exp_nonpositive(*v * scale - shift)
        };
        sum += *v;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Eight lanes of [`super::exp_nonpositive`], with fused multiply-adds.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let lowest = _mm256_set1_ps(-87.33);
        // max(lowest, x) returns x when x is NaN, so NaN propagates; above 88 the result would
        // overflow, so the argument is capped there (e^88 ≈ 1.65e38).
        let xc = _mm256_min_ps(_mm256_max_ps(lowest, x), _mm256_set1_ps(88.0));
        let magic = _mm256_set1_ps(12_582_912.0);
        let t = _mm256_fmadd_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
        let n = _mm256_sub_ps(t, magic);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut q = _mm256_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
            q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(c));
        }
        let p = _mm256_add_ps(
            _mm256_set1_ps(1.0),
            _mm256_fmadd_ps(_mm256_mul_ps(r, r), q, r),
        );
        let n_bits = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(12_582_912.0f32.to_bits() as i32),
        );
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n_bits,
            _mm256_set1_epi32(127),
        )));
        let y = _mm256_mul_ps(p, scale);
        // Zero below the normal range.
        _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, lowest), y)
    }

    /// AVX2 version of [`super::silu_inplace`].
    ///
    /// # Safety
    /// The processor must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_inplace(xs: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` is exactly 8 contiguous f32 values; unaligned loads and stores are
            // allowed.
            unsafe {
                let x = _mm256_loadu_ps(c.as_ptr());
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_div_ps(x, _mm256_add_ps(one, e)));
            }
        }
        for v in chunks.into_remainder() {
            *v = super::silu_scalar(*v);
        }
    }

    /// AVX2 version of [`super::exp_row`].
    ///
    /// # Safety
    /// The processor must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_row(row: &mut [f32], scale: f32, shift: f32) -> f32 {
        let vscale = _mm256_set1_ps(scale);
        let vshift = _mm256_set1_ps(shift);
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` is exactly 8 contiguous f32 values; unaligned loads and stores are
            // allowed.
            unsafe {
                let x = _mm256_loadu_ps(c.as_ptr());
                let masked = _mm256_cmp_ps::<_CMP_EQ_OQ>(x, neg_inf);
                let e = _mm256_andnot_ps(masked, exp8(_mm256_fmsub_ps(x, vscale, vshift)));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 f32 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().sum::<f32>() + super::exp_row_scalar(chunks.into_remainder(), scale, shift)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Sixteen lanes of [`super::exp_nonpositive`], with fused multiply-adds.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    fn exp16(x: __m512) -> __m512 {
        let lowest = _mm512_set1_ps(-87.33);
        // max(lowest, x) returns x when x is NaN, so NaN propagates; above 88 the result would
        // overflow, so the argument is capped there (e^88 ≈ 1.65e38).
        let xc = _mm512_min_ps(_mm512_max_ps(lowest, x), _mm512_set1_ps(88.0));
        let magic = _mm512_set1_ps(12_582_912.0);
        let t = _mm512_fmadd_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E), magic);
        let n = _mm512_sub_ps(t, magic);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut q = _mm512_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
            q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(c));
        }
        let p = _mm512_add_ps(
            _mm512_set1_ps(1.0),
            _mm512_fmadd_ps(_mm512_mul_ps(r, r), q, r),
        );
        let n_bits = _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(12_582_912.0f32.to_bits() as i32),
        );
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            n_bits,
            _mm512_set1_epi32(127),
        )));
        let y = _mm512_mul_ps(p, scale);
        // Zero below the normal range.
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lowest);
        _mm512_mask_mov_ps(y, below, _mm512_setzero_ps())
    }

    /// AVX-512 version of [`super::silu_inplace`].
    ///
    /// # Safety
    /// The processor must support what [`super::has_avx512`] checks.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    pub(super) unsafe fn silu_inplace(xs: &mut [f32]) {
        let one = _mm512_set1_ps(1.0);
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: `c` is exactly 16 contiguous f32 values; unaligned loads and stores are
            // allowed.
            unsafe {
                let x = _mm512_loadu_ps(c.as_ptr());
                let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
                _mm512_storeu_ps(c.as_mut_ptr(), _mm512_div_ps(x, _mm512_add_ps(one, e)));
            }
        }
        for v in chunks.into_remainder() {
            *v = super::silu_scalar(*v);
        }
    }

    /// AVX-512 version of [`super::exp_row`].
    ///
    /// # Safety
    /// The processor must support what [`super::has_avx512`] checks.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    pub(super) unsafe fn exp_row(row: &mut [f32], scale: f32, shift: f32) -> f32 {
        let vscale = _mm512_set1_ps(scale);
        let vshift = _mm512_set1_ps(shift);
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut acc = _mm512_setzero_ps();
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: `c` is exactly 16 contiguous f32 values; unaligned loads and stores are
            // allowed.
            unsafe {
                let x = _mm512_loadu_ps(c.as_ptr());
                let masked = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x, neg_inf);
                let e = _mm512_mask_mov_ps(
                    exp16(_mm512_fmsub_ps(x, vscale, vshift)),
                    masked,
                    _mm512_setzero_ps(),
                );
                _mm512_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm512_add_ps(acc, e);
            }
        }
        let mut lanes = [0.0f32; 16];
        // SAFETY: `lanes` holds 16 f32 values.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().sum::<f32>() + super::exp_row_scalar(chunks.into_remainder(), scale, shift)
    }
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

    type ExpRow = fn(&mut [f32], f32, f32) -> f32;
    type Silu = fn(&mut [f32]);

    /// Every implementation this processor can run, so that each is tested, not only the one
    /// the dispatcher picks.
    fn exp_row_paths() -> Vec<(&'static str, ExpRow)> {
        let mut paths: Vec<(&'static str, ExpRow)> = vec![("scalar", exp_row_scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                // SAFETY: AVX2 and FMA support was just checked.
                paths.push(("avx2", |r, s, m| unsafe { avx2::exp_row(r, s, m) }));
            }
            if has_avx512() {
                // SAFETY: AVX-512 support was just checked.
                paths.push(("avx512", |r, s, m| unsafe { avx512::exp_row(r, s, m) }));
            }
        }
        paths
    }

    fn silu_paths() -> Vec<(&'static str, Silu)> {
        let mut paths: Vec<(&'static str, Silu)> = vec![("scalar", |xs| {
            xs.iter_mut().for_each(|v| *v = silu_scalar(*v))
        })];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                // SAFETY: AVX2 and FMA support was just checked.
                paths.push(("avx2", |xs| unsafe { avx2::silu_inplace(xs) }));
            }
            if has_avx512() {
                // SAFETY: AVX-512 support was just checked.
                paths.push(("avx512", |xs| unsafe { avx512::silu_inplace(xs) }));
            }
        }
        paths
    }

    #[test]
    fn exp_row_matches_libm_on_every_path() {
        for (name, exp_row) in exp_row_paths() {
            // 37 values: two 16-lane blocks (four 8-lane ones) and a tail; masked entries give 0.
            let mut row: Vec<f32> = (0..37).map(|i| -0.37 * i as f32).collect();
            row[3] = f32::NEG_INFINITY;
            row[20] = f32::NEG_INFINITY;
            let want: Vec<f64> = row
                .iter()
                .map(|&v| {
                    if v == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (f64::from(v) * 1.5 - 0.25).exp()
                    }
                })
                .collect();
            let sum = exp_row(&mut row, 1.5, 0.25);
            for (g, w) in row.iter().zip(&want) {
                // The argument v·1.5 - 0.25 rounds in f32 (up to ~5e-7 relative here).
                assert!((f64::from(*g) - w).abs() <= 2e-6 * w, "{name}: {g} vs {w}");
            }
            let want_sum: f64 = want.iter().sum();
            assert!(
                (f64::from(sum) - want_sum).abs() <= 1e-6 * want_sum,
                "{name}: sum {sum} vs {want_sum}"
            );
            assert!(exp_row(&mut [f32::NAN; 17], 1.0, 0.0).is_nan(), "{name}");
        }
    }

    #[test]
    fn silu_matches_f64_reference_on_every_path() {
        for (name, silu) in silu_paths() {
            // Vector blocks and a tail, both signs, and arguments past the exp range.
            let mut xs: Vec<f32> = (0..43).map(|i| (i as f32 - 21.0) * 0.73).collect();
            xs.extend([-100.0, 95.0, -88.5, 0.0]);
            let want: Vec<f64> = xs
                .iter()
                .map(|&x| f64::from(x) / (1.0 + (-f64::from(x)).exp()))
                .collect();
            silu(&mut xs);
            for (g, w) in xs.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1e-30),
                    "{name}: {g} vs {w}"
                );
            }
        }
    }

    /// `erf` in float64 (Abramowitz and Stegun 7.1.5 series below 3, continued fraction
    /// 7.1.14 above), accurate far beyond f32.
    fn erf_f64(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let mut term = a;
            let mut sum = a;
            for n in 1..200 {
                term *= -a * a / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = e^(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
        };
        r.copysign(x)
    }

    #[test]
    fn erf_is_within_three_ulp_everywhere() {
        let mut worst = (0u64, 0.0f32);
        let mut x = -6.0f32;
        while x <= 6.0 {
            let want = erf_f64(f64::from(x)) as f32;
            let got = erf(x);
            let ulps = u64::from(want.to_bits().abs_diff(got.to_bits()));
            let ulps = if want.signum() == got.signum() || want == 0.0 {
                ulps
            } else {
                u64::MAX
            };
            if ulps > worst.0 {
                worst = (ulps, x);
            }
            x += 1.7e-5;
        }
        assert!(worst.0 <= 3, "erf off by {} ulp at {}", worst.0, worst.1);
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(f32::NAN).is_nan());
        // The vectorised loop gives the same values as the scalar one.
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.011).collect();
        let scalar: Vec<f32> = xs.iter().map(|&x| erf(x)).collect();
        let vector = vectorized(|| xs.iter().map(|&x| erf(x)).collect::<Vec<f32>>());
        assert_eq!(scalar, vector);
    }

    #[test]
    fn vectorized_runs_the_closure() {
        let v: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let s = vectorized(|| v.iter().map(|x| x * 2.0).sum::<f32>());
        assert_eq!(s, 9900.0);
    }
}
