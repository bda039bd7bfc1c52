//! Whole generations against diffusers' pipelines on the tiny fixture model: same seed, same
//! CPU generator semantics, every scheduler, batch, caller-supplied latents, a non-square size,
//! and img2img.
//!
//! Tolerance on the final latents: 3e-5 of the reference's largest magnitude (ten steps of
//! float32 round-off stay near 1e-6; a wrong scheduler coefficient or noise draw moves the
//! result by orders of magnitude more). Decoded 8-bit images may differ by one level where the
//! float value sits on a rounding boundary.

mod common;

use common::{Reference, assert_close, fixture};
use sd_core::image;
use sd_core::pipeline::{GenerateRequest, LoadOptions, Pipeline};
use sd_core::schedulers::SchedulerKind;
use sd_core::{Result, Tensor};

const RUN_TOL: f32 = 3e-5;

fn request_from(r: &Reference) -> GenerateRequest {
    let mut req = GenerateRequest::new(r.meta("prompt"));
    req.negative_prompt = r.meta("negative_prompt");
    req.seed = r.meta("seed").parse().expect("seed");
    req.steps = r.meta("steps").parse().expect("steps");
    req.guidance_scale = r.meta("guidance").parse().expect("guidance");
    req.width = r.meta("width").parse().expect("width");
    req.height = r.meta("height").parse().expect("height");
    req.scheduler = r
        .meta("scheduler")
        .parse::<SchedulerKind>()
        .expect("scheduler name");
    req
}

fn check_images(what: &str, images: &[image::RgbImage], reference: &Tensor) {
    let want = reference.to_vec().expect("values");
    let (b, h, w) = (
        reference.dims()[0],
        reference.dims()[2],
        reference.dims()[3],
    );
    assert_eq!(images.len(), b, "{what}: image count");
    let mut worst = 0i32;
    for (i, img) in images.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let r = (want[((i * 3 + c) * h + y) * w + x] * 255.0).round() as i32;
                    let g = i32::from(img.data[(y * w + x) * 3 + c]);
                    worst = worst.max((r - g).abs());
                }
            }
        }
    }
    eprintln!("{what}: largest 8-bit difference {worst}");
    assert!(worst <= 1, "{what}: 8-bit images differ by {worst} levels");
}

fn run(pipe: &Pipeline, req: &GenerateRequest, reference: &str) -> Result<()> {
    let r = Reference::open(reference);
    let out = pipe.generate(req, &mut |_| true)?;
    assert_close(
        &format!("{reference}: latents"),
        &out.latents,
        &r.tensor("latents"),
        RUN_TOL,
    );
    check_images(reference, &out.images, &r.tensor("image"));
    Ok(())
}

fn pipeline() -> Result<Pipeline> {
    Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())
}

#[test]
fn txt2img_matches_diffusers_for_every_scheduler() -> Result<()> {
    let pipe = pipeline()?;
    for name in [
        "ddim",
        "pndm",
        "euler",
        "euler-a",
        "lms",
        "dpmpp-2m",
        "dpmpp-2m-karras",
    ] {
        let file = format!("txt2img_{name}.safetensors");
        let req = request_from(&Reference::open(&file));
        run(&pipe, &req, &file)?;
    }
    Ok(())
}

#[test]
fn txt2img_batch_and_non_square_match_diffusers() -> Result<()> {
    let pipe = pipeline()?;
    let r = Reference::open("txt2img_batch2.safetensors");
    let mut req = request_from(&r);
    req.batch_size = 2;
    run(&pipe, &req, "txt2img_batch2.safetensors")?;
    let req = request_from(&Reference::open("txt2img_72x56.safetensors"));
    run(&pipe, &req, "txt2img_72x56.safetensors")
}

#[test]
fn caller_supplied_latents_match_diffusers() -> Result<()> {
    let pipe = pipeline()?;
    let r = Reference::open("txt2img_latents_in.safetensors");
    let mut req = request_from(&r);
    req.initial_latents = Some(r.tensor("init_latents"));
    run(&pipe, &req, "txt2img_latents_in.safetensors")
}

#[test]
fn img2img_matches_diffusers() -> Result<()> {
    let pipe = pipeline()?;
    let init = image::load_image(fixture("init.png"))?;
    for name in ["ddim", "euler-a"] {
        let file = format!("img2img_{name}.safetensors");
        let r = Reference::open(&file);
        let mut req = request_from(&r);
        req.init_image = Some(init.clone());
        req.strength = r.meta("strength").parse().expect("strength");
        run(&pipe, &req, &file)?;
    }
    Ok(())
}

#[test]
fn a_generation_can_be_cancelled_and_two_can_run_at_once() -> Result<()> {
    let pipe = pipeline()?;
    let mut req = GenerateRequest::new("a cat");
    req.width = 64;
    req.height = 64;
    req.steps = 4;
    let mut calls = 0;
    let err = pipe.generate(&req, &mut |p| {
        calls += 1;
        p.step < 2
    });
    assert!(
        matches!(err, Err(sd_core::Error::Cancelled { step: 2 })),
        "{err:?}"
    );
    assert_eq!(calls, 2);

    let pipe = std::sync::Arc::new(pipe);
    let handles: Vec<_> = [1u64, 2]
        .into_iter()
        .map(|seed| {
            let pipe = std::sync::Arc::clone(&pipe);
            let mut req = req.clone();
            req.seed = seed;
            std::thread::spawn(move || pipe.generate(&req, &mut |_| true).map(|g| g.latents))
        })
        .collect();
    let results: Vec<Tensor> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect::<Result<_>>()?;
    for (seed, got) in [1u64, 2].into_iter().zip(&results) {
        let mut req = req.clone();
        req.seed = seed;
        let alone = pipe.generate(&req, &mut |_| true)?;
        assert_eq!(
            got.to_vec()?,
            alone.latents.to_vec()?,
            "seed {seed}: concurrent run differs"
        );
    }
    Ok(())
}

#[test]
fn bad_requests_get_specific_errors() -> Result<()> {
    let pipe = pipeline()?;
    let base = || {
        let mut r = GenerateRequest::new("x");
        r.width = 64;
        r.height = 64;
        r.steps = 2;
        r
    };
    let grey = image::RgbImage {
        width: 64,
        height: 64,
        data: vec![128; 64 * 64 * 3],
    };
    let mut values = vec![0.5f32; 4 * 8 * 8];
    values[37] = f32::NAN;
    let nan_latents = Tensor::from_vec(values, [1, 4, 8, 8], sd_core::Device::Cpu)?;
    let cases: Vec<(&str, GenerateRequest)> = vec![
        (
            "width",
            GenerateRequest {
                width: 60,
                ..base()
            },
        ),
        (
            "height",
            GenerateRequest {
                height: 0,
                ..base()
            },
        ),
        ("steps", GenerateRequest { steps: 0, ..base() }),
        (
            "guidance_scale",
            GenerateRequest {
                guidance_scale: f64::NAN,
                ..base()
            },
        ),
        (
            "batch_size",
            GenerateRequest {
                batch_size: 0,
                ..base()
            },
        ),
        (
            "clip_skip",
            GenerateRequest {
                clip_skip: 99,
                ..base()
            },
        ),
        (
            "strength",
            GenerateRequest {
                init_image: Some(grey.clone()),
                strength: 0.0,
                ..base()
            },
        ),
        (
            "strength",
            GenerateRequest {
                init_image: Some(grey.clone()),
                strength: 0.2,
                ..base()
            },
        ),
        (
            "initial_latents",
            GenerateRequest {
                initial_latents: Some(nan_latents),
                ..base()
            },
        ),
    ];
    for (field, req) in cases {
        let err = pipe
            .generate(&req, &mut |_| true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(field),
            "expected an error naming `{field}`, got `{err}`"
        );
    }
    Ok(())
}
