//! Times one SD 1.5 UNet step (batch 2, 64x64 latents) and one VAE decode (64x64 latents to
//! 512x512) at real size on random weights built in-process, and prints the medians as JSON.
//! `benches/side_by_side.py` runs it beside diffusers + torch and prints the ratios.
//!
//! Usage: `cargo run --release --example bench_models -- [--runs N] [--only unet|vae]`

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
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let store = Arc::new(WeightStore::synthetic(0));
    let w = store.view(Device::Cpu);
    let mut report = Vec::new();
    if only.as_deref() != Some("vae") {
        let unet = UNet2DConditionModel::new(&w.pp("unet"), &UNetConfig::sd_v1_5())?;
        let x = Tensor::full(0.3, [2, 4, 64, 64], Device::Cpu)?;
        let ctx = Tensor::full(0.1, [2, 77, 768], Device::Cpu)?;
        unet.forward(&x, 500.0, &ctx)?; // warm-up
        let t = time_runs(runs, || unet.forward(&x, 500.0, &ctx).map(|_| ()))?;
        eprintln!("unet step b2 64x64: {t:?}");
        report.push(format!("\"unet_step_s\": {:.4}", median(t)));
    }
    if only.as_deref() != Some("unet") {
        let vae = AutoencoderKL::new(&w.pp("vae"), &VaeConfig::sd_v1_5())?;
        let z = Tensor::full(0.3, [1, 4, 64, 64], Device::Cpu)?;
        vae.decode(&z)?;
        let t = time_runs(runs, || vae.decode(&z).map(|_| ()))?;
        eprintln!("vae decode 64x64: {t:?}");
        report.push(format!("\"vae_decode_s\": {:.4}", median(t)));
    }
    println!("{{{}}}", report.join(", "));
    Ok(())
}
