//! Criterion benchmarks of whole SD 1.5 model passes at real size on random weights built
//! in-process from the config (no files): one UNet step with guidance (batch 2, 64x64 latents)
//! and one VAE decode (64x64 latents to 512x512). Each sample takes seconds on two cores; the
//! group runs the minimum criterion allows.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sd_core::models::{AutoencoderKL, UNet2DConditionModel, UNetConfig, VaeConfig};
use sd_core::weights::WeightStore;
use sd_core::{Device, Tensor};

fn models(c: &mut Criterion) {
    let store = Arc::new(WeightStore::synthetic(0));
    let w = store.view(Device::Cpu);
    let mut g = c.benchmark_group("sd15");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(60))
        .warm_up_time(Duration::from_secs(1));

    let unet = UNet2DConditionModel::new(&w.pp("unet"), &UNetConfig::sd_v1_5()).expect("unet");
    let x = Tensor::full(0.3, [2, 4, 64, 64], Device::Cpu).expect("latents");
    let ctx = Tensor::full(0.1, [2, 77, 768], Device::Cpu).expect("context");
    g.bench_function("unet step b2 64x64", |b| {
        b.iter(|| unet.forward(&x, 500.0, &ctx).expect("unet"))
    });
    drop(unet);

    let vae = AutoencoderKL::new(&w.pp("vae"), &VaeConfig::sd_v1_5()).expect("vae");
    let z = Tensor::full(0.3, [1, 4, 64, 64], Device::Cpu).expect("latents");
    g.bench_function("vae decode 64x64", |b| {
        b.iter(|| vae.decode(&z).expect("decode"))
    });
    g.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
