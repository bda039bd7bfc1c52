//! The A1111 prompt path on the CUDA backend against the CPU: the per-step conditioning (emphasis,
//! editing, an embedding, `AND`, negative-prompt padding) and a whole run with it. Without a CUDA
//! driver and device the test prints "skipped" and passes; on a GPU machine run
//! `cargo test --features cuda --test cuda_prompt` with the CUDA 13 libraries on
//! `LD_LIBRARY_PATH`.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use common::{assert_close, fixture};
use sd_core::adapters::Embedding;
use sd_core::pipeline::{GenerateRequest, LoadOptions, Pipeline, PromptSyntax};
use sd_core::schedulers::SchedulerKind;
use sd_core::{Device, Result, Tensor};

/// Conditioning tolerance: 1e-5 of max |cpu| (the text encoder's f32 results on both backends).
const COND_TOL: f32 = 1e-5;
/// Whole-run tolerance, as the CPU parity runs use against diffusers: 3e-5 of max |latents|.
const RUN_TOL: f32 = 3e-5;

fn on_cpu(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu).expect("copy to the CPU")
}

#[test]
fn a1111_conditioning_on_cuda_matches_the_cpu() -> Result<()> {
    if !sd_core::cuda::cuda_available() {
        eprintln!("skipped: no CUDA driver or device");
        return Ok(());
    }
    let cpu = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())?;
    let gpu = Pipeline::load(
        fixture("tiny-sd"),
        &LoadOptions {
            device: Device::Cuda(0),
            ..LoadOptions::default()
        },
    )?;
    let vectors = Tensor::from_vec(
        (0..32).map(|i| (i as f32 * 0.61).cos()).collect(),
        vec![2, 16],
        Device::Cpu,
    )?;
    let style = Arc::new(Embedding::new("neonstyle", vectors)?);
    let mut req = GenerateRequest::new("a (red:1.3) [cat:dog:1] in neonstyle AND a fox:0.5");
    req.negative_prompt = "blurry, ".repeat(40);
    req.embeddings = vec![style];
    req.width = 64;
    req.height = 64;
    req.steps = 3;
    req.batch_size = 2;
    req.scheduler = SchedulerKind::EulerAncestral;
    req.seed = 9;

    let (c_cpu, c_gpu) = (cpu.conditioning(&req)?, gpu.conditioning(&req)?);
    for k in 0..req.steps {
        let (a, b) = (c_cpu.at_step(k)?, c_gpu.at_step(k)?);
        assert_eq!(a.padded, b.padded);
        for (i, (x, y)) in a.conds.iter().zip(&b.conds).enumerate() {
            assert_close(&format!("step {k} part {i}"), &on_cpu(y), x, COND_TOL);
        }
        let (x, y) = (a.uncond.expect("uncond"), b.uncond.expect("uncond"));
        assert_close(&format!("step {k} negative"), &on_cpu(&y), &x, COND_TOL);
    }

    let run_cpu = cpu.generate(&req, &mut |_| true)?;
    let run_gpu = gpu.generate(&req, &mut |_| true)?;
    assert_close(
        "latents, A1111 prompt",
        &on_cpu(&run_gpu.latents),
        &run_cpu.latents,
        RUN_TOL,
    );
    assert_eq!(run_cpu.infotexts, run_gpu.infotexts);

    // A plain prompt and negative prompt: both syntaxes give the same GPU latents, bit for bit.
    req.prompt = "a red fox in the snow".into();
    req.negative_prompt = "blurry".into();
    req.embeddings.clear();
    let a1111 = gpu.generate(&req, &mut |_| true)?;
    req.prompt_syntax = PromptSyntax::Plain;
    let plain = gpu.generate(&req, &mut |_| true)?;
    assert_eq!(
        on_cpu(&a1111.latents).max_abs_diff(&on_cpu(&plain.latents))?,
        0.0
    );
    Ok(())
}
