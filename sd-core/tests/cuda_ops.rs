//! CUDA backend against the CPU backend, op by op.
//!
//! Every case runs the same closure on CPU tensors (the reference, in f32, on inputs already
//! rounded to the dtype under test) and on CUDA tensors in f32, f16 and bf16, on random inputs of
//! awkward sizes (odd channel counts, token counts that are not multiples of any block size).
//! Outputs are compared by relative L2 error, ‖gpu − cpu‖ / ‖cpu‖, against a bound per dtype.
//! Every buffer the CUDA pool hands out is first filled with NaN ("poisoned"), so a kernel that
//! leaves an output element unwritten fails the finiteness check.
//!
//! Without a CUDA driver and device every GPU test prints "skipped: …" and passes; on a GPU
//! machine run `cargo test -p sd-core --features cuda --test cuda_ops` (with the CUDA 13
//! libraries on LD_LIBRARY_PATH).
#![cfg(feature = "cuda")]

use sd_core::tensor::{Activation, Conv2dParams};
use sd_core::{DType, Device, ErrorKind, Tensor};

/// Held by each GPU test for its whole run: the tests share one device, its pool and its
/// counters, so they run one at a time whatever `--test-threads` says.
type Serial = std::sync::MutexGuard<'static, ()>;

/// The CUDA device (and the serialising guard), or `None` (with the reason printed) when there
/// is none.
///
/// `SDRS_CUDA_TEST_DEVICE=cpu` runs the harness against the CPU itself (f32 only): a dry run that
/// checks the cases (shapes, closures, comparison) on machines without a GPU.
fn gpu() -> Option<(Device, Serial)> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = || {
        LOCK.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if std::env::var("SDRS_CUDA_TEST_DEVICE").is_ok_and(|v| v == "cpu") {
        return Some((Device::Cpu, serial()));
    }
    if !sd_core::cuda::cuda_available() {
        eprintln!("skipped: no CUDA driver or device");
        return None;
    }
    sd_core::cuda::set_poison_allocations(true);
    Some((Device::Cuda(0), serial()))
}

/// Relative L2 error bound per dtype.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 1e-2,
        DType::BF16 => 1e-2,
    }
}

const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// A small deterministic generator (xorshift64*), seeded per test.
struct Rng(u64);

impl Rng {
    fn new(name: &str) -> Self {
        let seed = name.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Rng(seed | 1)
    }

    /// Uniform in [-2, 2).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    }
}

fn round_to(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => v,
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
    }
}

type Op<'a> = &'a dyn Fn(&[Tensor]) -> sd_core::Result<Tensor>;

/// Runs `op` on CPU and CUDA inputs of `shapes` in `dtype` and compares.
fn run_case(
    name: &str,
    device: Device,
    dtype: DType,
    shapes: &[Vec<usize>],
    op: Op<'_>,
    tol: f64,
) -> Result<(), String> {
    if device.is_cpu() && dtype != DType::F32 {
        return Ok(()); // dry run: the CPU backend has only f32
    }
    let err = |e: sd_core::Error| format!("{name} [{dtype}]: {e}");
    let mut rng = Rng::new(&format!("{name}/{dtype}"));
    let mut cpu_inputs = Vec::new();
    let mut gpu_inputs = Vec::new();
    for shape in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| round_to(dtype, rng.next())).collect();
        let t = Tensor::from_vec(data, shape.clone(), Device::Cpu).map_err(err)?;
        gpu_inputs.push(
            t.to_device(device)
                .and_then(|g| g.to_dtype(dtype))
                .map_err(err)?,
        );
        cpu_inputs.push(t);
    }
    let want = op(&cpu_inputs).map_err(err)?;
    let got = op(&gpu_inputs).map_err(err)?;
    if got.dtype() != dtype || got.device() != device {
        return Err(format!(
            "{name} [{dtype}]: result is {} on {}",
            got.dtype(),
            got.device()
        ));
    }
    if got.dims() != want.dims() {
        return Err(format!(
            "{name} [{dtype}]: shape {:?}, cpu {:?}",
            got.dims(),
            want.dims()
        ));
    }
    let (g, w) = (got.to_vec().map_err(err)?, want.to_vec().map_err(err)?);
    if let Some(i) = g.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{name} [{dtype}]: element {i} is {} (unwritten or overflow), cpu {}",
            g[i], w[i]
        ));
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in g.iter().zip(&w) {
        num += ((a - b) as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    eprintln!("{name} [{dtype}]: relative error {rel:.2e} (bound {tol:.0e})");
    if rel > tol {
        return Err(format!(
            "{name} [{dtype}]: relative error {rel:.3e} above {tol:.0e}"
        ));
    }
    Ok(())
}

/// Declares one test that runs `$body` (a closure body over the input slice `$t`) on CPU and
/// CUDA for each dtype in `$dtypes`, on random inputs of the given shapes.
macro_rules! cuda_test {
    ($name:ident, [$($shape:expr),* $(,)?], $dtypes:expr, |$t:ident| $body:expr) => {
        cuda_test!($name, [$($shape),*], $dtypes, tolerance, |$t| $body);
    };
    ($name:ident, [$($shape:expr),* $(,)?], $dtypes:expr, $tol:expr, |$t:ident| $body:expr) => {
        #[test]
        #[allow(unused_braces)] // the body may itself be a block
        fn $name() -> Result<(), String> {
            let Some((device, _serial)) = gpu() else { return Ok(()) };
            let shapes: Vec<Vec<usize>> = vec![$($shape.to_vec()),*];
            let op = |$t: &[Tensor]| -> sd_core::Result<Tensor> { $body };
            let tol: fn(DType) -> f64 = $tol;
            for dtype in $dtypes {
                run_case(stringify!($name), device, dtype, &shapes, &op, tol(dtype))?;
            }
            Ok(())
        }
    };
}

// --- element-wise -------------------------------------------------------------------------------

cuda_test!(silu, [[3, 37, 13]], ALL, |t| t[0].silu());
cuda_test!(gelu_exact, [[3, 37, 13]], ALL, |t| t[0].gelu());
cuda_test!(quick_gelu, [[5, 77, 3]], ALL, |t| t[0]
    .activate(Activation::QuickGelu));
cuda_test!(exp, [[7, 33]], ALL, |t| t[0].exp());
cuda_test!(affine, [[7, 33]], ALL, |t| t[0].affine(0.18215, -0.5));
cuda_test!(clamp, [[7, 33]], ALL, |t| t[0].clamp(-1.0, 0.75));
cuda_test!(add_broadcast_rows, [[2, 5, 7, 33], [7, 1]], ALL, |t| t[0]
    .add(&t[1]));
cuda_test!(sub_broadcast_both, [[5, 1, 33], [2, 1, 7, 33]], ALL, |t| t
    [0]
.sub(&t[1]));
cuda_test!(mul_bias, [[4, 37], [37]], ALL, |t| t[0].mul(&t[1]));
cuda_test!(mul_same_shape, [[3, 41], [3, 41]], ALL, |t| t[0].mul(&t[1]));
cuda_test!(div_broadcast, [[3, 5, 9], [5, 1]], ALL, |t| t[0]
    .div(&t[1].affine(0.5, 2.0)?));
cuda_test!(
    linear_combination_3,
    [[5, 67], [5, 67], [5, 67]],
    ALL,
    |t| { Tensor::linear_combination(&[(0.5, &t[0]), (-1.25, &t[1]), (2.0, &t[2])]) }
);
cuda_test!(
    linear_combination_11_chains_fp32,
    [
        [3, 29],
        [3, 29],
        [3, 29],
        [3, 29],
        [3, 29],
        [3, 29],
        [3, 29],
        [3, 29],
        [3, 29],
        [3, 29],
        [3, 29]
    ],
    ALL,
    |t| {
        let terms: Vec<(f32, &Tensor)> = t
            .iter()
            .enumerate()
            .map(|(i, x)| (0.1 * i as f32 - 0.4, x))
            .collect();
        Tensor::linear_combination(&terms)
    }
);
cuda_test!(geglu, [[3, 5, 74]], ALL, |t| t[0].geglu());

// --- products ------------------------------------------------------------------------------------

cuda_test!(linear_bias, [[2, 77, 67], [45, 67], [45]], ALL, |t| t[0]
    .linear(&t[1], Some(&t[2])));
cuda_test!(linear_no_bias, [[131, 40], [33, 40]], ALL, |t| t[0]
    .linear(&t[1], None));
cuda_test!(matmul_batched, [[3, 17, 29], [3, 29, 13]], ALL, |t| t[0]
    .matmul(&t[1]));
cuda_test!(matmul_shared_rhs, [[3, 17, 29], [29, 13]], ALL, |t| t[0]
    .matmul(&t[1]));
cuda_test!(
    conv3x3_pad1_bias,
    [[2, 9, 11, 7], [3, 3, 7, 10], [10]],
    ALL,
    |t| { t[0].conv2d(&t[1], Some(&t[2]), Conv2dParams::new(1, 1)) }
);
cuda_test!(
    conv3x3_stride2_asymmetric_pad,
    [[1, 13, 10, 6], [3, 3, 6, 5]],
    ALL,
    |t| {
        let p = Conv2dParams {
            stride: 2,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 1,
            pad_right: 1,
        };
        t[0].conv2d(&t[1], None, p)
    }
);
cuda_test!(
    conv1x1_bias,
    [[2, 5, 7, 12], [1, 1, 12, 9], [9]],
    ALL,
    |t| { t[0].conv2d(&t[1], Some(&t[2]), Conv2dParams::new(1, 0)) }
);

// --- normalisation -------------------------------------------------------------------------------

cuda_test!(
    group_norm_silu_cg10,
    [[2, 9, 7, 40], [40], [40]],
    ALL,
    |t| { t[0].group_norm(4, &t[1], &t[2], 1e-5, Activation::Silu) }
);
cuda_test!(
    group_norm_cg30_many_blocks,
    [[1, 150, 90], [90], [90]],
    ALL,
    |t| { t[0].group_norm(3, &t[1], &t[2], 1e-6, Activation::Identity) }
);
// A large common offset: the shifted statistics must not lose the variance (f32 only; in 16 bits
// the offset itself swamps the signal).
cuda_test!(
    group_norm_offset_f32,
    [[2, 65, 20], [20], [20]],
    [DType::F32],
    |t| {
        t[0].affine(1.0, 30.0)?
            .group_norm(2, &t[1], &t[2], 1e-5, Activation::Identity)
    }
);
cuda_test!(layer_norm, [[2, 77, 45], [45], [45]], ALL, |t| t[0]
    .layer_norm(&t[1], &t[2], 1e-5));
cuda_test!(softmax_short_rows, [[5, 77]], ALL, |t| t[0]
    .softmax_last_dim());
cuda_test!(softmax_long_rows, [[3, 1100]], ALL, |t| t[0]
    .scale(2.0)?
    .softmax_last_dim());

// --- attention -----------------------------------------------------------------------------------

/// Attention bounds: fp16 2e-3, bf16 1e-2 (relative L2), f32 as the other ops.
fn attention_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1e-2,
    }
}

macro_rules! attention_test {
    ($name:ident, b = $b:expr, tq = $tq:expr, tk = $tk:expr, heads = $h:expr, d = $d:expr, causal = $causal:expr, gain = $gain:expr) => {
        cuda_test!(
            $name,
            [[$b, $tq, $h * $d], [$b, $tk, $h * $d], [$b, $tk, $h * $d]],
            ALL,
            attention_tolerance,
            |t| {
                let q = t[0].scale($gain)?;
                Tensor::attention(&q, &t[1], &t[2], $h, 1.0 / ($d as f32).sqrt(), $causal)
            }
        );
    };
}

attention_test!(
    attention_d40_cross77,
    b = 2,
    tq = 100,
    tk = 77,
    heads = 2,
    d = 40,
    causal = false,
    gain = 1.0
);
attention_test!(
    attention_d40_self130,
    b = 1,
    tq = 130,
    tk = 130,
    heads = 3,
    d = 40,
    causal = false,
    gain = 1.0
);
attention_test!(
    attention_d64_causal77,
    b = 2,
    tq = 77,
    tk = 77,
    heads = 2,
    d = 64,
    causal = true,
    gain = 1.0
);
attention_test!(
    attention_d80_tk65,
    b = 1,
    tq = 65,
    tk = 65,
    heads = 2,
    d = 80,
    causal = false,
    gain = 1.0
);
attention_test!(
    attention_d160_tk64,
    b = 2,
    tq = 33,
    tk = 64,
    heads = 1,
    d = 160,
    causal = false,
    gain = 1.0
);
// Scores scaled up (large exponents, near one-hot rows). Gains and scales in these tests are
// powers of two, so scaling an f16/bf16 input on the GPU is exact, as it is on the CPU.
attention_test!(
    attention_d40_sharp,
    b = 1,
    tq = 70,
    tk = 77,
    heads = 2,
    d = 40,
    causal = false,
    gain = 4.0
);
// A head size with no flash kernel (the GEMM path in every dtype), like the VAE's single head.
attention_test!(
    attention_d24_gemm_path,
    b = 2,
    tq = 37,
    tk = 51,
    heads = 2,
    d = 24,
    causal = false,
    gain = 1.0
);

// --- layout --------------------------------------------------------------------------------------

cuda_test!(permute_nhwc_to_nchw, [[2, 3, 5, 7]], ALL, |t| t[0]
    .permute(&[0, 3, 1, 2]));
cuda_test!(permute_rank5, [[2, 3, 4, 5, 3]], ALL, |t| t[0]
    .permute(&[4, 2, 0, 3, 1]));
cuda_test!(narrow_middle, [[3, 11, 7]], ALL, |t| t[0].narrow(1, 3, 5));
cuda_test!(chunk_last, [[3, 5, 14]], ALL, |t| Ok(t[0]
    .chunk(2, 2)?
    .remove(1)));
cuda_test!(
    cat_channels,
    [[2, 3, 5, 7], [2, 3, 5, 4], [2, 3, 5, 1]],
    ALL,
    |t| { Tensor::cat(&[&t[0], &t[1], &t[2]], 3) }
);
cuda_test!(cat_rows, [[2, 3, 5], [2, 4, 5]], ALL, |t| Tensor::cat(
    &[&t[0], &t[1]],
    1
));
cuda_test!(upsample_nearest2x, [[2, 5, 7, 3]], ALL, |t| t[0]
    .upsample_nearest2x());
cuda_test!(upsample_nearest_fractional, [[1, 5, 7, 3]], ALL, |t| t[0]
    .upsample_nearest(13, 9));
cuda_test!(gather_rows, [[50, 33]], ALL, |t| t[0]
    .gather_rows(&[3, 0, 49, 3, 17]));

// --- whole models (tiny configurations, f32) -----------------------------------------------------

/// Relative L2 error of `got` against `want`.
fn rel_error(got: &Tensor, want: &Tensor) -> Result<f64, String> {
    let (g, w) = (
        got.to_vec().map_err(|e| e.to_string())?,
        want.to_vec().map_err(|e| e.to_string())?,
    );
    if g.len() != w.len() || g.iter().any(|v| !v.is_finite()) {
        return Err(format!("{} values vs {}, or non-finite", g.len(), w.len()));
    }
    let num: f64 = g
        .iter()
        .zip(&w)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
    Ok((num / den.max(f64::MIN_POSITIVE)).sqrt())
}

/// The tiny UNet, VAE and CLIP of `model_shapes.rs` on synthetic weights: every layer's ops in
/// sequence on CUDA (f32) against the CPU. Bound 1e-4: dozens of chained ops, each within 1e-5.
#[test]
fn tiny_models_match_the_cpu() -> Result<(), String> {
    use sd_core::models::{
        AutoencoderKL, ClipConfig, ClipTextModel, UNet2DConditionModel, UNetBlockKind, UNetConfig,
        VaeConfig,
    };
    use sd_core::weights::WeightStore;
    use std::sync::Arc;
    let Some((device, _serial)) = gpu() else {
        return Ok(());
    };
    let e = |e: sd_core::Error| e.to_string();
    let store = Arc::new(WeightStore::synthetic(7));
    let (wc, wg) = (store.view(Device::Cpu), store.view(device));

    use UNetBlockKind::{CrossAttention, Plain};
    let unet_cfg = UNetConfig {
        block_out_channels: vec![16, 32, 32],
        down_blocks: vec![CrossAttention, CrossAttention, Plain],
        up_blocks: vec![Plain, CrossAttention, CrossAttention],
        attention_heads: vec![8; 3],
        cross_attention_dim: 16,
        norm_num_groups: 4,
        ..UNetConfig::sd_v1_5()
    };
    let mut rng = Rng::new("tiny_models");
    let x: Vec<f32> = (0..2 * 4 * 9 * 7).map(|_| rng.next()).collect();
    let ctx: Vec<f32> = (0..2 * 77 * 16).map(|_| rng.next()).collect();
    let run_unet = |w: &sd_core::weights::Weights, dev: Device| -> sd_core::Result<Tensor> {
        let unet = UNet2DConditionModel::new(&w.pp("unet"), &unet_cfg)?;
        let x = Tensor::from_vec(x.clone(), [2, 4, 9, 7], dev)?;
        let ctx = Tensor::from_vec(ctx.clone(), [2, 77, 16], dev)?;
        unet.forward(&x, 321.0, &ctx)
    };
    let rel = rel_error(
        &run_unet(&wg, device).map_err(e)?,
        &run_unet(&wc, Device::Cpu).map_err(e)?,
    )?;
    eprintln!("tiny unet: relative error {rel:.2e}");
    assert!(rel < 1e-4, "tiny unet: {rel:.3e}");

    let vae_cfg = VaeConfig {
        block_out_channels: vec![8, 16, 16, 16],
        norm_num_groups: 4,
        ..VaeConfig::sd_v1_5()
    };
    let img: Vec<f32> = (0..3 * 40 * 24).map(|_| rng.next() * 0.5).collect();
    let run_vae = |w: &sd_core::weights::Weights, dev: Device| -> sd_core::Result<Tensor> {
        let vae = AutoencoderKL::new(&w.pp("vae"), &vae_cfg)?;
        let (mean, _) = vae.encode(&Tensor::from_vec(img.clone(), [1, 3, 40, 24], dev)?)?;
        vae.decode(&mean)
    };
    let rel = rel_error(
        &run_vae(&wg, device).map_err(e)?,
        &run_vae(&wc, Device::Cpu).map_err(e)?,
    )?;
    eprintln!("tiny vae encode+decode: relative error {rel:.2e}");
    assert!(rel < 1e-4, "tiny vae: {rel:.3e}");

    let clip_cfg = ClipConfig {
        hidden_size: 16,
        intermediate_size: 37,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        ..ClipConfig::sd_v1_5()
    };
    let ids = vec![vec![49406, 320, 1125, 49407, 49407]; 2];
    let run_clip = |w: &sd_core::weights::Weights| -> sd_core::Result<Tensor> {
        ClipTextModel::new(&w.pp("clip"), &clip_cfg)?.forward(&ids, 1)
    };
    let rel = rel_error(&run_clip(&wg).map_err(e)?, &run_clip(&wc).map_err(e)?)?;
    eprintln!("tiny clip: relative error {rel:.2e}");
    assert!(rel < 1e-4, "tiny clip: {rel:.3e}");
    Ok(())
}

// --- kernel loading ----------------------------------------------------------------------------

/// Every kernel loads on the device, and the hot ones use no local memory (no spills), as the
/// compile-time check promises.
#[test]
fn every_kernel_loads_without_local_memory() -> Result<(), String> {
    let Some((device, _serial)) = gpu().filter(|(d, _)| !d.is_cpu()) else {
        return Ok(());
    };
    let Device::Cuda(ordinal) = device else {
        return Ok(());
    };
    let infos = sd_core::cuda::warm_up(ordinal).map_err(|e| e.to_string())?;
    let mut bad = Vec::new();
    for k in &infos {
        eprintln!(
            "{:12} {:24} {:3} regs, {:3} B local, <= {} threads",
            k.module, k.name, k.registers, k.local_bytes, k.max_threads_per_block
        );
        let hot = ["flash_fwd_", "im2col_", "gn_", "layer_norm_"];
        if hot.iter().any(|p| k.name.starts_with(p)) && k.local_bytes > 0 {
            bad.push(format!("{}: {} B local memory", k.name, k.local_bytes));
        }
        let block = if k.name.starts_with("flash_fwd_") {
            128
        } else {
            256
        };
        if k.max_threads_per_block < block {
            bad.push(format!(
                "{}: at most {} threads",
                k.name, k.max_threads_per_block
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}

/// The same work repeated reuses pooled buffers: after a warm-up round, a round of ops of the
/// same shapes needs no new driver allocation.
#[test]
fn steady_state_needs_no_allocation() -> Result<(), String> {
    let Some((Device::Cuda(ordinal), _serial)) = gpu() else {
        return Ok(());
    };
    let e = |e: sd_core::Error| e.to_string();
    let device = Device::Cuda(ordinal);
    let x = Tensor::full(0.5, [2, 16, 16, 64], device).map_err(e)?;
    let w = Tensor::full(0.01, [3, 3, 64, 64], device).map_err(e)?;
    let g = Tensor::full(1.0, [64], device).map_err(e)?;
    let round = || -> sd_core::Result<()> {
        let h = x.group_norm(8, &g, &g, 1e-5, Activation::Silu)?;
        let h = h.conv2d(&w, Some(&g), Conv2dParams::new(1, 1))?;
        let t = h.reshape([2, 256, 64])?;
        let a = Tensor::attention(&t, &t, &t, 2, 0.125, false)?;
        Tensor::linear_combination(&[(1.0, &a), (0.5, &t)])?
            .to_vec()
            .map(|_| ())
    };
    round().map_err(e)?;
    let before = sd_core::cuda::pool_stats(ordinal).map_err(e)?;
    round().map_err(e)?;
    let after = sd_core::cuda::pool_stats(ordinal).map_err(e)?;
    eprintln!("pool before {before:?}, after {after:?}");
    if after.driver_allocations != before.driver_allocations {
        return Err(format!(
            "a steady-state round allocated: {before:?} -> {after:?}"
        ));
    }
    if after.reuses <= before.reuses {
        return Err("a round served nothing from the pool".into());
    }
    Ok(())
}

// --- conversions and errors ----------------------------------------------------------------------

#[test]
fn casts_round_to_nearest_even_like_half() -> Result<(), String> {
    let Some((device, _serial)) = gpu().filter(|(d, _)| !d.is_cpu()) else {
        return Ok(());
    };
    let mut rng = Rng::new("casts");
    let mut data: Vec<f32> = (0..1001).map(|_| rng.next() * 1000.0).collect();
    data.extend([0.0, -0.0, 65504.0, 1e-8, 3.0e38]);
    let t = Tensor::from_vec(data.clone(), [data.len()], device).map_err(|e| e.to_string())?;
    for dtype in [DType::F16, DType::BF16] {
        let back = t
            .to_dtype(dtype)
            .and_then(|x| x.to_dtype(DType::F32))
            .and_then(|x| x.to_vec())
            .map_err(|e| e.to_string())?;
        for (i, (&got, &x)) in back.iter().zip(&data).enumerate() {
            let want = round_to(dtype, x);
            if got.to_bits() != want.to_bits() && !(got.is_nan() && want.is_nan()) {
                return Err(format!(
                    "{dtype} cast of {x} (#{i}): {got}, expected {want}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn half_bits_upload_matches_values() -> Result<(), String> {
    let Some((device, _serial)) = gpu().filter(|(d, _)| !d.is_cpu()) else {
        return Ok(());
    };
    let values = [0.5f32, -1.25, 3.0, 1024.0];
    let bits: Vec<u16> = values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect();
    let t = Tensor::from_half_bits(&bits, DType::F16, [4], device).map_err(|e| e.to_string())?;
    assert_eq!(t.dtype(), DType::F16);
    assert_eq!(t.to_vec().map_err(|e| e.to_string())?, values);
    Ok(())
}

#[test]
fn mixed_dtypes_are_an_error_not_a_conversion() -> Result<(), String> {
    let Some((device, _serial)) = gpu().filter(|(d, _)| !d.is_cpu()) else {
        return Ok(());
    };
    let a = Tensor::zeros([4], device).map_err(|e| e.to_string())?;
    let b = a.to_dtype(DType::F16).map_err(|e| e.to_string())?;
    let e = a.add(&b).err().ok_or("f32 + f16 succeeded")?;
    assert_eq!(e.kind(), ErrorKind::Device, "{e}");
    Ok(())
}

/// Runs everywhere: without a driver or device, creating a CUDA tensor is a clean
/// `DeviceUnavailable` (never a panic); with one, it works.
#[test]
fn cuda_tensor_without_device_is_a_clean_error() {
    match Tensor::zeros([2, 3], Device::Cuda(0)) {
        Ok(t) => assert_eq!(t.device(), Device::Cuda(0)),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Device, "{e}");
            eprintln!("no CUDA here: {e}");
        }
    }
    let far = Tensor::zeros([2], Device::Cuda(4096));
    assert!(far.is_err_and(|e| e.kind() == ErrorKind::Device));
}

#[test]
fn tensors_stay_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tensor>();
}
