//! Whole generations with the A1111 prompt path on the tiny fixture model: the two syntaxes agree
//! on plain prompts, prompt editing switches the conditioning at the step A1111 switches it (for
//! txt2img and img2img), `AND` parts are combined as A1111 combines them, and the infotext
//! records what was used; a long prompt and a short negative prompt run in separate passes.

mod common;

use std::sync::Arc;

use common::{assert_close, fixture};
use sd_core::adapters::{AdapterLibrary, Embedding, Lora};
use sd_core::image::{self, GenerationInfo};
use sd_core::noise::TorchRng;
use sd_core::pipeline::conditioning::{CondSchedule, CondSegment, WeightedCond};
use sd_core::pipeline::{Conditioning, GenerateRequest, LoadOptions, Pipeline, PromptSyntax};
use sd_core::prompt::EmphasisMode;
use sd_core::schedulers::{self, SchedulerKind};
use sd_core::{Device, Error, Result, Tensor};

fn pipeline() -> Result<Pipeline> {
    Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())
}

fn request(prompt: &str, steps: usize, scheduler: SchedulerKind) -> GenerateRequest {
    let mut req = GenerateRequest::new(prompt);
    req.width = 64;
    req.height = 64;
    req.steps = steps;
    req.seed = 77;
    req.scheduler = scheduler;
    req
}

/// The single positive and negative tensors of a prompt without schedules.
fn encoded(pipe: &Pipeline, req: &GenerateRequest, prompt: &str) -> Result<(Tensor, Tensor)> {
    let c = pipe.conditioning(&GenerateRequest {
        prompt: prompt.into(),
        ..req.clone()
    })?;
    let cond = c.conds[0].schedule.cond_at(0)?.clone();
    let uncond = c.uncond.as_ref().expect("guided").cond_at(0)?.clone();
    Ok((cond, uncond))
}

/// A conditioning that uses `per_step[k]` at model evaluation `k`, written out step by step.
fn forced(per_step: &[&Tensor], uncond: &Tensor) -> Conditioning {
    let segments = per_step
        .iter()
        .enumerate()
        .map(|(k, t)| CondSegment {
            end_at_step: k,
            cond: (*t).clone(),
        })
        .collect();
    Conditioning {
        conds: vec![WeightedCond {
            schedule: CondSchedule { segments },
            weight: 1.0,
        }],
        uncond: Some(CondSchedule::constant(uncond.clone())),
        empty: None,
        extra_networks: Vec::new(),
        embeddings_used: Vec::new(),
        infotext: Vec::new(),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.max_abs_diff(b).expect("same shapes")
}

#[test]
fn plain_and_a1111_agree_on_a_plain_prompt() -> Result<()> {
    let pipe = pipeline()?;
    let mut req = request("a red fox in the snow", 3, SchedulerKind::EulerAncestral);
    req.negative_prompt = "blurry, low quality".into();
    req.batch_size = 2;
    let a1111 = pipe.generate(&req, &mut |_| true)?;
    req.prompt_syntax = PromptSyntax::Plain;
    let plain = pipe.generate(&req, &mut |_| true)?;
    assert_eq!(max_diff(&a1111.latents, &plain.latents), 0.0, "latents");
    assert_eq!(a1111.images, plain.images);
    // The syntax matters once the prompt uses it.
    req.prompt = "a (red:1.5) fox in the snow".into();
    let plain = pipe.generate(&req, &mut |_| true)?;
    req.prompt_syntax = PromptSyntax::A1111;
    let weighted = pipe.generate(&req, &mut |_| true)?;
    assert!(max_diff(&weighted.latents, &plain.latents) > 1e-3);
    Ok(())
}

#[test]
fn prompt_editing_switches_at_the_a1111_step() -> Result<()> {
    let pipe = pipeline()?;
    // [cat:dog:2] over 5 steps: A1111 uses "cat" while its 0-based step counter is <= 2, so for
    // the first three model evaluations, and "dog" for the last two.
    let req = request("a [cat:dog:2] on a sofa", 5, SchedulerKind::Euler);
    let edited = pipe.generate(&req, &mut |_| true)?;
    let (cat, uncond) = encoded(&pipe, &req, "a cat on a sofa")?;
    let (dog, _) = encoded(&pipe, &req, "a dog on a sofa")?;
    let run = |per_step: &[&Tensor]| {
        pipe.generate_with_conditioning(&req, &forced(per_step, &uncond), &mut |_| true)
    };
    let a1111 = run(&[&cat, &cat, &cat, &dog, &dog])?;
    assert_eq!(max_diff(&edited.latents, &a1111.latents), 0.0);
    for (what, per_step) in [
        ("one step early", [&cat, &cat, &dog, &dog, &dog]),
        ("one step late", [&cat, &cat, &cat, &cat, &dog]),
    ] {
        let other = run(&per_step)?;
        let d = max_diff(&edited.latents, &other.latents);
        assert!(d > 1e-3, "switching {what} gives the same latents ({d})");
    }
    Ok(())
}

#[test]
fn img2img_counts_edit_steps_from_the_first_step_run() -> Result<()> {
    let pipe = pipeline()?;
    // 6 steps at strength 0.5 run the last 3; the schedule is over all 6 and A1111 starts its
    // counter at 0 on the first step run: [cat:dog:1] gives cat, cat, dog.
    let mut req = request("a [cat:dog:1] on a sofa", 6, SchedulerKind::Ddim);
    req.init_image = Some(image::load_image(fixture("init.png"))?);
    req.strength = 0.5;
    let mut steps_run = 0;
    let edited = pipe.generate(&req, &mut |p| {
        steps_run = p.total_steps;
        true
    })?;
    assert_eq!(steps_run, 3);
    let (cat, uncond) = encoded(&pipe, &req, "a cat on a sofa")?;
    let (dog, _) = encoded(&pipe, &req, "a dog on a sofa")?;
    let forced_run = |per_step: &[&Tensor]| {
        pipe.generate_with_conditioning(&req, &forced(per_step, &uncond), &mut |_| true)
    };
    let a1111 = forced_run(&[&cat, &cat, &dog])?;
    assert_eq!(max_diff(&edited.latents, &a1111.latents), 0.0);
    let late = forced_run(&[&cat, &cat, &cat])?;
    assert!(max_diff(&edited.latents, &late.latents) > 1e-3);
    Ok(())
}

#[test]
fn and_parts_are_combined_as_a1111_does() -> Result<()> {
    let pipe = pipeline()?;
    let mut req = request("a red fox", 4, SchedulerKind::Euler);
    req.negative_prompt = "blurry".into();
    req.batch_size = 2;
    let single = pipe.generate(&req, &mut |_| true)?;
    // A part of weight 0 adds nothing: any mix-up of the batch blocks would show. (Not bit for
    // bit: the UNet's float32 results shift by a few ulps with its batch size, here 6 rows
    // instead of 4, hence the tolerance of 1e-5 of max |latents|.)
    req.prompt = "a red fox AND a blue cat:0".into();
    let zero = pipe.generate(&req, &mut |_| true)?;
    assert_close("weight 0 part", &zero.latents, &single.latents, 1e-5);
    // Two halves of the same part: the same sum, up to float32 rounding (same tolerance; a
    // weight ignored or applied twice changes the result by half of it).
    req.prompt = "a red fox:0.5 AND a red fox:0.5".into();
    let halves = pipe.generate(&req, &mut |_| true)?;
    assert_close("two halves", &halves.latents, &single.latents, 1e-5);
    req.prompt = "a red fox:0.5".into();
    let half = pipe.generate(&req, &mut |_| true)?;
    assert!(max_diff(&half.latents, &single.latents) > 1e-2);
    Ok(())
}

#[test]
fn large_and_batches_run_block_by_block() -> Result<()> {
    let pipe = pipeline()?;
    // 64 images × (negative + 2 parts) = 192 rows: over the one-pass limit, so each block of 64
    // runs on its own. The first image must match a run of one image (same seed, same draws).
    let mut req = request("a red fox AND a blue cat:0.5", 2, SchedulerKind::Euler);
    req.negative_prompt = "blurry".into();
    let one = pipe.generate(&req, &mut |_| true)?;
    req.batch_size = 64;
    let many = pipe.generate(&req, &mut |_| true)?;
    let first = many.latents.narrow(0, 0, 1)?;
    assert_close("first of 64", &first, &one.latents, 1e-5);
    Ok(())
}

#[test]
fn infotext_records_prompt_embeddings_and_options() -> Result<()> {
    let pipe = pipeline()?;
    let vectors = Tensor::from_vec(
        (0..32).map(|i| (i as f32 * 0.37).sin()).collect(),
        vec![2, 16],
        Device::Cpu,
    )?;
    let style = Embedding::new("neonstyle", vectors)?.with_hash("0123456789ab");
    let prompt = "a <lora:kohya_locon:0.5> photo in neonstyle, (red:1.2) fox";
    let mut req = request(prompt, 2, SchedulerKind::Euler);
    req.negative_prompt = "blurry, ".repeat(40);
    req.emphasis = EmphasisMode::NoNorm;
    req.embeddings = vec![Arc::new(style)];
    req.adapter_library = Some(Arc::new(
        AdapterLibrary::new().with_lora_dir(fixture("lora")),
    ));
    // Without A1111's padding option the long negative prompt runs in its own pass and nothing
    // is recorded; with it, `Pad conds: True`.
    let unpadded = pipe.generate(&req, &mut |_| true)?;
    assert!(!unpadded.infotexts[0].contains("Pad conds"));
    req.pad_cond_uncond = true;
    let out = pipe.generate(&req, &mut |_| true)?;
    assert_eq!(out.embeddings_used.len(), 1);
    assert_eq!(out.embeddings_used[0].name, "neonstyle");
    assert_eq!(out.extra_networks.len(), 1);
    assert_eq!(out.extra_networks[0].args, ["kohya_locon", "0.5"]);
    let text = &out.infotexts[0];
    assert!(
        text.starts_with(&format!("{prompt}\nNegative prompt: ")),
        "{text}"
    );
    let params = text.lines().last().unwrap_or_default();
    assert!(
        params.ends_with(&format!(
            "TI hashes: \"neonstyle: 0123456789ab\", Emphasis: No norm, Pad conds: True, Lora hashes: \"kohya_locon: {}\", Version: sdrs {}",
            lora_hash(),
            env!("CARGO_PKG_VERSION")
        )),
        "{params}"
    );
    let info = GenerationInfo::from_infotext(text)?;
    assert_eq!(info.prompt, prompt);
    assert!(
        info.extra
            .contains(&("TI hashes".into(), "neonstyle: 0123456789ab".into()))
    );

    req.prompt_syntax = PromptSyntax::Plain;
    req.embeddings.clear();
    req.adapter_library = None;
    let plain = pipe.generate(&req, &mut |_| true)?;
    assert!(plain.infotexts[0].contains("Prompt syntax: plain"));
    assert!(!plain.infotexts[0].contains("Emphasis"));
    Ok(())
}

#[test]
fn bad_prompts_name_their_field() -> Result<()> {
    let pipe = pipeline()?;
    let field = |req: &GenerateRequest| match pipe.generate(req, &mut |_| true) {
        Err(Error::InvalidArgument { name, .. }) => name,
        other => panic!("expected an invalid argument, got {other:?}"),
    };
    let mut req = request("a fox", 1, SchedulerKind::Euler);
    req.negative_prompt = "(bad:1.2.3)".into();
    assert_eq!(field(&req), "negative_prompt");
    req.negative_prompt.clear();
    req.prompt = "x ".repeat(40_000);
    assert_eq!(field(&req), "prompt");
    req.prompt = "cat ".repeat(75 * 33);
    assert_eq!(field(&req), "prompt");
    // 300 edits over 300 steps: 301 distinct texts, more text-encoder passes than allowed.
    req.steps = 300;
    req.prompt = (1..=300).map(|i| format!("[x:{i}]")).collect();
    let started = std::time::Instant::now();
    assert_eq!(field(&req), "prompt");
    assert!(started.elapsed().as_secs() < 10, "refused too slowly");
    req.steps = 1;
    req.prompt = "a fox".into();
    req.prompt_syntax = PromptSyntax::Plain;
    let vectors = Tensor::full(0.5, [1, 16], Device::Cpu)?;
    req.embeddings = vec![Arc::new(Embedding::new("x", vectors)?)];
    assert_eq!(field(&req), "embeddings");
    Ok(())
}

fn lora_hash() -> String {
    Lora::open(fixture("lora/kohya_locon.safetensors"))
        .ok()
        .and_then(|l| l.short_hash().map(str::to_string))
        .unwrap_or_default()
}

/// A prompt longer than 75 tokens with a short negative prompt: by default (A1111's) the two
/// run in separate UNet passes with their own token counts, which this test reproduces with a
/// loop written out against the public model and scheduler API, bit for bit; A1111's padding
/// option gives a different image.
#[test]
fn long_prompt_and_short_negative_run_in_separate_passes() -> Result<()> {
    let pipe = pipeline()?;
    let mut req = request(
        &"a red fox in deep snow, ".repeat(16),
        3,
        SchedulerKind::Euler,
    );
    req.negative_prompt = "blurry".into();
    let split = pipe.generate(&req, &mut |_| true)?;

    let c = pipe.conditioning(&req)?;
    let cond = c.conds[0].schedule.cond_at(0)?.clone();
    let uncond = c.uncond.as_ref().expect("guided").cond_at(0)?.clone();
    assert_eq!(cond.dims()[1], 154, "a two-chunk prompt");
    assert_eq!(uncond.dims()[1], 77, "a one-chunk negative prompt");
    let mut scheduler = schedulers::build(req.scheduler, pipe.scheduler_config(), req.steps)?;
    let mut rng = TorchRng::new(req.seed);
    let mut x = rng
        .randn_tensor([1, 4, 8, 8], Device::Cpu)?
        .scale(scheduler.init_noise_sigma() as f32)?;
    let timesteps = scheduler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let x_in = scheduler.scale_model_input(&x, i)?;
        let u = pipe.unet().forward(&x_in, t, &uncond)?;
        let k = pipe.unet().forward(&x_in, t, &cond)?;
        let noise = u.add(&k.sub(&u)?.scale(req.guidance_scale as f32)?)?;
        x = scheduler.step(&noise, i, &x, None)?;
    }
    assert_eq!(
        max_diff(&split.latents, &x),
        0.0,
        "split passes differ from the loop"
    );

    req.pad_cond_uncond = true;
    let padded = pipe.generate(&req, &mut |_| true)?;
    assert!(max_diff(&padded.latents, &split.latents) > 1e-4);
    assert!(padded.infotexts[0].contains("Pad conds: True"));
    Ok(())
}
