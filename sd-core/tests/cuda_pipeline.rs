//! Whole generations on a CUDA device against the CPU backend, on the tiny fixture model:
//! text-to-image with guidance and a batch, an ancestral sampler (noise drawn every step),
//! image-to-image, CLIP skip, and adapters (a LoRA patching weights on the device, a
//! hypernetwork hooked into attention, a textual inversion). The latents are compared by
//! relative L2 error.
//!
//! Without a CUDA driver and device every test prints "skipped: …" and passes; on a GPU
//! machine run `cargo test -p sd-core --features cuda --test cuda_pipeline` with the CUDA 13
//! libraries on LD_LIBRARY_PATH.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::sync::Arc;

use sd_core::adapters::{Embedding, Hypernetwork, Lora, LoraUse};
use sd_core::image::RgbImage;
use sd_core::pipeline::{GenerateRequest, HypernetworkUse, LoadOptions, Pipeline};
use sd_core::schedulers::SchedulerKind;
use sd_core::{Device, Tensor};

/// Relative L2 bound on the final latents. The CUDA backend runs f32 with f32 accumulation
/// (no TF32), so the two backends differ only by summation order: ~1e-6 per op, growing over a
/// few denoising steps; a wrong kernel moves it by 1e-2 or more.
const LATENT_BOUND: f64 = 1e-4;

/// A fixture: beside this crate, or (for a test binary copied to another machine) under the
/// working directory.
fn fixture(rel: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel);
    if built.exists() {
        built
    } else {
        PathBuf::from("tests/fixtures").join(rel)
    }
}

fn model_dir() -> PathBuf {
    fixture("tiny-sd")
}

/// The CUDA device, or `None` (with the reason printed) when there is none.
/// `SDRS_CUDA_TEST_DEVICE=cpu` runs the cases against the CPU itself: a dry run of the test on
/// machines without a GPU.
fn gpu() -> Option<Device> {
    if std::env::var("SDRS_CUDA_TEST_DEVICE").is_ok_and(|v| v == "cpu") {
        return Some(Device::Cpu);
    }
    if !sd_core::cuda::cuda_available() {
        eprintln!("skipped: no CUDA driver or device");
        return None;
    }
    Some(Device::Cuda(0))
}

fn rel_error(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (
        got.to_vec().expect("gpu latents"),
        want.to_vec().expect("cpu latents"),
    );
    assert_eq!(got.dims(), want.dims());
    assert!(g.iter().all(|v| v.is_finite()), "non-finite GPU latents");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in g.iter().zip(&w) {
        num += f64::from(a - b).powi(2);
        den += f64::from(*b).powi(2);
    }
    (num / den).sqrt()
}

fn base_request() -> GenerateRequest {
    let mut r = GenerateRequest::new("a red lighthouse on a cliff at dusk");
    r.negative_prompt = "blurry, low quality".into();
    r.width = 64;
    r.height = 48;
    r.steps = 6;
    r.seed = 1234;
    r
}

#[test]
fn generations_match_the_cpu() {
    let Some(device) = gpu() else {
        return;
    };
    let cpu = Pipeline::load(model_dir(), &LoadOptions::default()).expect("cpu load");
    let cuda = Pipeline::load(
        model_dir(),
        &LoadOptions {
            device,
            ..LoadOptions::default()
        },
    )
    .expect("cuda load");
    assert_eq!(cuda.device(), device);

    let mut cases: Vec<(&str, GenerateRequest)> = Vec::new();
    let mut r = base_request();
    r.batch_size = 2;
    r.scheduler = SchedulerKind::DpmPp2mKarras;
    cases.push(("txt2img dpm++ 2m karras, batch 2", r));
    let mut r = base_request();
    r.scheduler = SchedulerKind::EulerAncestral;
    r.clip_skip = 2;
    cases.push(("txt2img euler ancestral, clip skip 2", r));
    let mut r = base_request();
    r.scheduler = SchedulerKind::Pndm;
    r.guidance_scale = 1.0;
    cases.push(("txt2img pndm, no guidance", r));
    let mut r = base_request();
    r.scheduler = SchedulerKind::Ddim;
    let pixels: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 7 % 251) as u8).collect();
    r.init_image = Some(RgbImage::new(64, 48, pixels).expect("image"));
    r.strength = 0.7;
    cases.push(("img2img ddim", r));
    let mut r = base_request();
    r.prompt = "a red lighthouse in the style of ti-alpha".into();
    r.scheduler = SchedulerKind::Euler;
    let lora = Lora::open(fixture("lora/kohya_locon.safetensors")).expect("lora");
    r.loras = vec![LoraUse::with_strengths(Arc::new(lora), 0.5, 0.8)];
    let hn = Hypernetwork::open(fixture("hypernetwork/hn-relu.pt")).expect("hypernetwork");
    r.hypernetworks = vec![HypernetworkUse::new(Arc::new(hn), 0.6)];
    let ti = Embedding::open(fixture("ti/ti-alpha.pt")).expect("embedding");
    r.embeddings = vec![Arc::new(ti)];
    cases.push(("LoRA + hypernetwork + textual inversion", r));

    for (name, request) in &cases {
        let want = cpu.generate(request, &mut |_| true).expect("cpu generate");
        let got = cuda
            .generate(request, &mut |_| true)
            .expect("cuda generate");
        let rel = rel_error(&got.latents, &want.latents);
        eprintln!("{name}: latents relative error {rel:.2e} (bound {LATENT_BOUND:.0e})");
        assert!(rel < LATENT_BOUND, "{name}: {rel:.3e}");
        let worst = got
            .images
            .iter()
            .zip(&want.images)
            .flat_map(|(a, b)| a.data.iter().zip(&b.data))
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        assert!(
            worst <= 2,
            "{name}: 8-bit images differ by up to {worst} levels"
        );
        assert_eq!(got.infotexts, want.infotexts, "{name}: infotexts");
    }
}
