//! Seeded Gaussian noise that reproduces PyTorch's CPU generator value for value.
//!
//! Stable Diffusion front ends seed their initial latents (and the noise of ancestral samplers)
//! with `torch.Generator("cpu").manual_seed(seed)` followed by `torch.randn(shape, generator=g)`.
//! A user who types the same seed here expects the same picture, so [`TorchRng`] reproduces that
//! stream bit for bit rather than approximately:
//!
//! * **Engine.** A 32-bit Mersenne Twister (MT19937). PyTorch stores the full 64-bit seed but
//!   initialises the twister from its low 32 bits only, so seeds that agree modulo 2³² give the
//!   same stream. `random()` is one twister output; `random64()` is two, the first in the high
//!   half.
//! * **`randn` with fewer than 16 elements** runs PyTorch's scalar path: for each element a
//!   double-precision Box–Muller draw from two 53-bit uniforms (each from `random64()`), where
//!   `u1` gives the angle and `u2` the radius through `log1p(-u2)`. The cosine branch is
//!   returned and the sine branch is cached in the generator; the next scalar draw (in this call
//!   or a later one) consumes the cache first. Results are rounded from `f64` to `f32`.
//! * **`randn` with 16 elements or more** runs the vectorised path PyTorch takes for contiguous
//!   `float32` tensors on x86-64 (its AVX2 kernel, which AVX-512 machines use too). First every
//!   element receives a 24-bit uniform from `random()`; then each block of 16 is transformed in
//!   place, lanes `0..8` giving `u1` (radius, as `1 - u`) and lanes `8..16` giving `u2` (angle),
//!   with single-precision Cephes-style `log` and `sincos` polynomials evaluated with fused
//!   multiply-adds exactly where the compiled kernel has them. When the count is not a multiple
//!   of 16, 16 *fresh* uniforms overwrite the last 16 elements and that final block is
//!   transformed again. This path neither reads nor clears the cached scalar sample.
//! * **`rand`** is a 24-bit uniform per element from `random()`, divided by 2²⁴.
//!
//! Everything is computed in portable scalar Rust, so the stream is the same on every platform
//! this crate runs on. It is PyTorch's x86-64 stream: PyTorch builds without AVX2 (for example on
//! ARM) use libm functions for the vectorised case and their large-tensor values differ in the
//! last bits.

use crate::error::{Error, Result};
use crate::tensor::{Device, Shape, Tensor};

/// Something that draws standard-normal noise tensors; schedulers and the pipeline draw all their
/// randomness through it, so a caller can substitute its own source.
pub trait NoiseSource: Send {
    /// A tensor of `shape` on `device` filled with independent standard-normal samples.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] when the element count overflows, or a device error.
    fn randn_tensor(&mut self, shape: &Shape, device: Device) -> Result<Tensor>;
}

/// Number of 32-bit words in the Mersenne Twister state.
const MT_N: usize = 624;
/// The twist offset of MT19937.
const MT_M: usize = 397;

/// The 32-bit Mersenne Twister (MT19937) with the standard 32-bit seeding.
#[derive(Clone)]
struct Mt19937 {
    state: Box<[u32; MT_N]>,
    /// Index of the next state word to temper; `MT_N` means a twist is due.
    index: usize,
}

impl Mt19937 {
    /// Seeds the twister the way `std::mt19937(seed)` does.
    fn new(seed: u32) -> Self {
        let mut state = Box::new([0u32; MT_N]);
        state[0] = seed;
        for i in 1..MT_N {
            let prev = state[i - 1];
            // `i < 624`, so the cast is lossless.
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: MT_N }
    }

    /// Regenerates the whole state block.
    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        let s = &mut self.state;
        for i in 0..MT_N {
            let y = (s[i] & UPPER) | (s[(i + 1) % MT_N] & LOWER);
            let mut v = s[(i + MT_M) % MT_N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            s[i] = v;
        }
        self.index = 0;
    }

    /// The next tempered 32-bit output.
    fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A seeded random generator whose `randn` and `rand` streams equal those of
/// `torch.Generator("cpu").manual_seed(seed)` with `torch.randn(..., dtype=torch.float32)` and
/// `torch.rand(...)`, including across successive calls on the same generator.
///
/// Cloning forks the stream: the clone continues exactly where the original stood, cached normal
/// sample included.
///
/// ```
/// use sd_core::noise::TorchRng;
/// let mut a = TorchRng::new(42);
/// let mut b = a.clone();
/// assert_eq!(a.randn(20), b.randn(20));
/// ```
#[derive(Clone, Debug)]
pub struct TorchRng {
    seed: u64,
    engine: Mt19937,
    /// The sine branch of the last scalar Box–Muller draw, not yet returned.
    next_double_normal: Option<f64>,
}

impl TorchRng {
    /// A generator in the state `torch.Generator("cpu").manual_seed(seed)` leaves.
    ///
    /// Every `u64` is accepted, as PyTorch accepts every value in `0..2⁶⁴`; only the low 32 bits
    /// reach the twister. (PyTorch maps a negative Python seed `s` to `s + 2⁶⁴`; pass that.)
    pub fn new(seed: u64) -> Self {
        TorchRng {
            seed,
            // Truncation to the low 32 bits is PyTorch's seeding rule.
            engine: Mt19937::new(seed as u32),
            next_double_normal: None,
        }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// PyTorch's `random()`: one 32-bit twister output.
    fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// PyTorch's `random64()`: two twister outputs, the first one in the high half.
    fn random64(&mut self) -> u64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        (hi << 32) | lo
    }

    /// A single-precision uniform in `[0, 1)` from the low 24 bits of `random()`.
    fn uniform_f32(&mut self) -> f32 {
        // 24 bits convert exactly, and the scaling by a power of two is exact.
        (self.random() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// A double-precision uniform in `[0, 1)` from the low 53 bits of `random64()`.
    fn uniform_f64(&mut self) -> f64 {
        // 53 bits convert exactly, and the scaling by a power of two is exact.
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One standard-normal sample from PyTorch's scalar double-precision path.
    fn normal_f64(&mut self) -> f64 {
        let sample = match self.next_double_normal.take() {
            Some(cached) => cached,
            None => {
                let u1 = self.uniform_f64();
                let u2 = self.uniform_f64();
                let radius = (-2.0 * (-u2).ln_1p()).sqrt();
                let theta = 2.0 * std::f64::consts::PI * u1;
                self.next_double_normal = Some(radius * theta.sin());
                radius * theta.cos()
            }
        };
        // PyTorch applies `x * std + mean` with std 1 and mean 0; kept for the sign of zero.
        sample * 1.0 + 0.0
    }

    /// `count` standard-normal samples, equal to `torch.randn(count, generator=g)` as `float32`.
    ///
    /// The result depends only on the element count, not on how it is shaped, just as in
    /// PyTorch, so a latent of shape `[2, 4, 64, 64]` is `randn(32768)` reshaped.
    pub fn randn(&mut self, count: usize) -> Vec<f32> {
        if count < 16 {
            // Rounding the double sample to single precision is PyTorch's cast.
            return (0..count).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..count).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !count.is_multiple_of(16) {
            let tail = &mut data[count - 16..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }

    /// `count` uniform samples in `[0, 1)`, equal to `torch.rand(count, generator=g)`.
    pub fn rand(&mut self, count: usize) -> Vec<f32> {
        (0..count).map(|_| self.uniform_f32()).collect()
    }

    /// A tensor of standard-normal samples, equal to `torch.randn(shape, generator=g)`.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] when the element count overflows `usize`, or a device error.
    pub fn randn_tensor(&mut self, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let count = checked_count(&shape, "randn_tensor")?;
        let data = self.randn(count);
        Tensor::from_vec(data, shape, device)
    }

    /// A tensor of uniform samples in `[0, 1)`, equal to `torch.rand(shape, generator=g)`.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] when the element count overflows `usize`, or a device error.
    pub fn rand_tensor(&mut self, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let count = checked_count(&shape, "rand_tensor")?;
        let data = self.rand(count);
        Tensor::from_vec(data, shape, device)
    }
}

impl NoiseSource for TorchRng {
    fn randn_tensor(&mut self, shape: &Shape, device: Device) -> Result<Tensor> {
        TorchRng::randn_tensor(self, shape.clone(), device)
    }
}

/// The element count of `shape`, or an error naming `op` when it overflows.
fn checked_count(shape: &Shape, op: &'static str) -> Result<usize> {
    shape
        .checked_elem_count()
        .ok_or_else(|| Error::InvalidShape {
            op,
            shape: shape.clone(),
            reason: "element count overflows usize".to_string(),
        })
}

/// Turns 16 uniforms into 16 normals in place, as PyTorch's AVX2 kernel does: lane `j < 8`
/// pairs `1 - block[j]` (radius) with `block[j + 8]` (angle) and yields the cosine branch in
/// `block[j]` and the sine branch in `block[j + 8]`.
fn box_muller_16(block: &mut [f32]) {
    // `2π` is formed in double precision and rounded once to single.
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0 * log_cephes(u1)).sqrt();
        let theta = two_pi * u2;
        let (sin, cos) = sincos_cephes(theta);
        // The kernel ends with `fma(n, std, mean)`, std 1 and mean 0.
        block[j] = (radius * cos).mul_add(1.0, 0.0);
        block[j + 8] = (radius * sin).mul_add(1.0, 0.0);
    }
}

/// Rounds a double-precision literal to single precision the way a C `float` initialiser does.
macro_rules! c_f32 {
    ($value:expr) => {
        $value as f32
    };
}

/// Single-precision natural logarithm with the Cephes polynomial PyTorch's vectorised kernel uses
/// (NaN for `x <= 0`), including its fused multiply-adds.
fn log_cephes(x: f32) -> f32 {
    let sqrt_half: f32 = c_f32!(std::f64::consts::FRAC_1_SQRT_2);
    let p: [f32; 9] = [
        c_f32!(7.0376836292E-2_f64),
        c_f32!(-1.1514610310E-1_f64),
        c_f32!(1.1676998740E-1_f64),
        c_f32!(-1.2420140846E-1_f64),
        c_f32!(1.4249322787E-1_f64),
        c_f32!(-1.6668057665E-1_f64),
        c_f32!(2.0000714765E-1_f64),
        c_f32!(-2.4999993993E-1_f64),
        c_f32!(3.3333331174E-1_f64),
    ];
    let q1: f32 = c_f32!(-2.12194440e-4_f64);
    let q2: f32 = c_f32!(0.693359375_f64);

    let invalid = x <= 0.0;
    // Flush to the smallest normal number: the exponent trick below needs a normal input.
    let x = x.max(f32::from_bits(0x0080_0000));
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    // Keep the mantissa, with the exponent of 0.5: m in [0.5, 1).
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = m < sqrt_half;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    m += tmp;

    let z = m * m;
    let mut y = p[0];
    for &coefficient in &p[1..] {
        y = y.mul_add(m, coefficient);
    }
    y *= m;
    // The compiled kernel fuses `y·z` (not `e·q1`) into this add; the reference test tells the
    // two apart.
    y = y.mul_add(z, e * q1);
    y -= z * 0.5;
    let result = e.mul_add(q2, m + y);
    if invalid { f32::NAN } else { result }
}

/// Single-precision sine and cosine with the Cephes polynomials PyTorch's vectorised kernel uses,
/// including its fused multiply-adds. Returns `(sin x, cos x)`.
// The reduction constants are written with all the digits Cephes gives them.
#[allow(clippy::excessive_precision)]
fn sincos_cephes(x: f32) -> (f32, f32) {
    let four_over_pi: f32 = c_f32!(1.27323954473516_f64);
    let minus_dp1: f32 = c_f32!(-0.78515625_f64);
    let minus_dp2: f32 = c_f32!(-2.4187564849853515625e-4_f64);
    let minus_dp3: f32 = c_f32!(-3.77489497744594108e-8_f64);
    let sincof: [f32; 3] = [
        c_f32!(-1.9515295891E-4_f64),
        c_f32!(8.3321608736E-3_f64),
        c_f32!(-1.6666654611E-1_f64),
    ];
    let coscof: [f32; 3] = [
        c_f32!(2.443315711809948E-005_f64),
        c_f32!(-1.388731625493765E-003_f64),
        c_f32!(4.166664568298827E-002_f64),
    ];
    const SIGN: u32 = 0x8000_0000;

    let mut sign_sin = x.to_bits() & SIGN;
    let mut x = x.abs();
    // Octant index, rounded up to even; truncation as in `cvttps2dq`.
    let octant = (((x * four_over_pi) as i32).wrapping_add(1)) & !1;
    let y = octant as f32;
    let swap_sign_sin = ((octant & 4) as u32) << 29;
    let use_first_poly = octant & 2 == 0;
    // Extended-precision reduction x - y·π/4 in three steps.
    x = y.mul_add(minus_dp1, x);
    x = y.mul_add(minus_dp2, x);
    x = y.mul_add(minus_dp3, x);
    let sign_cos = ((!(octant.wrapping_sub(2)) & 4) as u32) << 29;
    sign_sin ^= swap_sign_sin;

    let z = x * x;
    // Cosine polynomial on [0, π/4].
    let mut c = coscof[0];
    c = c.mul_add(z, coscof[1]);
    c = c.mul_add(z, coscof[2]);
    c *= z;
    // Fused as `c·z - (z·0.5)`, as compiled; an unfused subtraction fails the reference test.
    c = c.mul_add(z, -(z * 0.5));
    c += 1.0;
    // Sine polynomial on [0, π/4].
    let mut s = sincof[0];
    s = s.mul_add(z, sincof[1]);
    s = s.mul_add(z, sincof[2]);
    s *= z;
    s = s.mul_add(x, x);

    // Select with the kernel's arithmetic (adds of zero), which fixes the sign of zero results.
    let (sin_first, sin_second) = if use_first_poly { (0.0, s) } else { (c, 0.0) };
    let cos_first = c - sin_first;
    let cos_second = s - sin_second;
    let sin = sin_first + sin_second;
    let cos = cos_first + cos_second;
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twister_matches_the_standard_reference_output() {
        // The C++ standard requires the 10000th output of a default-seeded mt19937 to be this.
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn only_the_low_32_bits_of_the_seed_matter() {
        let mut a = TorchRng::new(5);
        let mut b = TorchRng::new((1u64 << 32) + 5);
        assert_eq!(a.randn(40), b.randn(40));
        assert_eq!(b.seed(), (1u64 << 32) + 5);
    }

    #[test]
    fn cephes_functions_are_accurate() {
        for i in 1..=1000 {
            let x = i as f32 / 1000.0;
            let err = (log_cephes(x) as f64 - (x as f64).ln()).abs();
            assert!(err < 1e-6, "log({x}) off by {err}");
            let t = x * 6.2831855;
            let (s, c) = sincos_cephes(t);
            assert!((s as f64 - (t as f64).sin()).abs() < 1e-6, "sin({t})");
            assert!((c as f64 - (t as f64).cos()).abs() < 1e-6, "cos({t})");
        }
        assert!(log_cephes(0.0).is_nan());
    }

    #[test]
    fn samples_look_standard_normal() {
        let mut rng = TorchRng::new(7);
        for count in [15usize, 4096] {
            let v = rng.randn(count);
            assert_eq!(v.len(), count);
            assert!(v.iter().all(|x| x.is_finite()));
        }
        let v = rng.randn(1 << 16);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        let u = rng.rand(1000);
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn randn_tensor_has_the_shape_and_stream_of_randn() -> Result<()> {
        let mut a = TorchRng::new(3);
        let mut b = a.clone();
        let t = a.randn_tensor([1, 4, 3, 5], Device::Cpu)?;
        assert_eq!(t.dims(), &[1, 4, 3, 5]);
        assert_eq!(t.to_vec()?, b.randn(60));
        let source: &mut dyn NoiseSource = &mut a;
        let t = source.randn_tensor(&Shape::new([2, 3]), Device::Cpu)?;
        assert_eq!(t.to_vec()?, b.randn(6));
        Ok(())
    }
}
