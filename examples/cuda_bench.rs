//! Times SD 1.5 on a CUDA device at real size on random weights built in-process: one UNet step
//! (batch 2, 64x64 latents, 77x768 context), one VAE decode (64x64 latents to 512x512), and a
//! 20-step image (20 UNet steps with a scheduler-style update, then the VAE decode). Prints the
//! medians as JSON on the last line, for `benches/cuda_side_by_side.py`.
//!
//! Usage (on a machine with an NVIDIA GPU and the CUDA 13 libraries on LD_LIBRARY_PATH):
//!   cargo build --release --features cuda --example cuda_bench
//!   target/release/examples/cuda_bench [--runs N] [--steps 20] [--device cuda:0] [--only unet|vae|image]
//!
//! The weights are f32 (the parity mode): the model loaders produce f32 tensors, and the dtype
//! option of the pipeline is not part of this example. Every timed region ends with a copy of the
//! result to the host, which waits for the GPU, so the wall-clock times are complete.

use std::sync::Arc;
use std::time::Instant;

use sd_core::models::{AutoencoderKL, UNet2DConditionModel, UNetConfig, VaeConfig};
use sd_core::weights::WeightStore;
use sd_core::{Device, Result, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_runs(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?; // warm-up: compiles and loads kernel modules, builds cuBLASLt plans, fills the pool
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = arg(&args, "--runs").unwrap_or(5);
    let steps: usize = arg(&args, "--steps").unwrap_or(20);
    let device = Device::parse(&arg::<String>(&args, "--device").unwrap_or("cuda:0".into()))?;
    let only: Option<String> = arg(&args, "--only");
    let want = |what: &str| only.as_deref().is_none_or(|o| o == what);

    if let Device::Cuda(ordinal) = device {
        // Compile (or read from the disk cache) and load every kernel before any timing.
        let t0 = Instant::now();
        let kernels = sd_core::cuda::warm_up(ordinal)?;
        eprintln!(
            "{} kernels loaded in {:.2} s",
            kernels.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    let store = Arc::new(WeightStore::synthetic(0));
    let w = store.view(device);
    let mut report = Vec::new();
    let unet = UNet2DConditionModel::new(&w.pp("unet"), &UNetConfig::sd_v1_5())?;
    let vae = AutoencoderKL::new(&w.pp("vae"), &VaeConfig::sd_v1_5())?;
    let x = Tensor::full(0.3, [2, 4, 64, 64], device)?;
    let ctx = Tensor::full(0.1, [2, 77, 768], device)?;
    let z = Tensor::full(0.3, [1, 4, 64, 64], device)?;

    if want("unet") {
        let t = time_runs(runs, || unet.forward(&x, 500.0, &ctx)?.to_vec().map(|_| ()))?;
        eprintln!("unet step b2 64x64 on {device}: {t:?}");
        report.push(format!("\"unet_step_s\": {:.5}", median(t)));
    }
    if want("vae") {
        let t = time_runs(runs, || vae.decode(&z)?.to_vec().map(|_| ()))?;
        eprintln!("vae decode 64x64 on {device}: {t:?}");
        report.push(format!("\"vae_decode_s\": {:.5}", median(t)));
    }
    if want("image") {
        let t = time_runs(runs.min(3), || {
            // Classifier-free guidance on a batch of 2 and an Euler-style update per step: the
            // same kernels and shapes as a real 20-step image, minus CLIP (run once per prompt,
            // well under 1 % of the time).
            let mut latent = Tensor::full(0.3, [1, 4, 64, 64], device)?;
            for i in 0..steps {
                let t = 999.0 * (1.0 - i as f64 / steps as f64);
                let both = Tensor::cat(&[&latent, &latent], 0)?;
                let eps = unet.forward(&both, t, &ctx)?;
                let parts = eps.chunk(2, 0)?;
                let guided = Tensor::linear_combination(&[(-6.5, &parts[0]), (7.5, &parts[1])])?;
                latent = Tensor::linear_combination(&[(1.0, &latent), (-0.05, &guided)])?;
            }
            vae.decode(&latent.scale(1.0 / 0.18215)?)?
                .to_vec()
                .map(|_| ())
        })?;
        eprintln!("{steps}-step image on {device}: {t:?}");
        report.push(format!("\"image_s\": {:.5}", median(t)));
    }
    println!("{{{}}}", report.join(", "));
    Ok(())
}
