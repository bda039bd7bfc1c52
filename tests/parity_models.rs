//! Each model against diffusers / transformers (evaluated in float64) on the tiny fixture model,
//! loaded from both layouts.
//!
//! Tolerance: 1e-5 of the reference's largest magnitude per stage. A float32 evaluation differs
//! from float64 by about 1e-6 of it; wiring bugs such as a tanh-approximate GELU or a wrong norm
//! epsilon move it by about 5e-5, so they fail.

mod common;

use common::{Reference, assert_close, fixture};
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::{Result, Tensor};

const STAGE_TOL: f32 = 1e-5;

fn layouts() -> Result<Vec<(&'static str, Pipeline)>> {
    let folder = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())?;
    let single = Pipeline::load(
        fixture("tiny-sd.safetensors"),
        &LoadOptions {
            config_dir: Some(fixture("tiny-sd")),
            ..LoadOptions::default()
        },
    )?;
    Ok(vec![
        ("diffusers folder", folder),
        ("single file f16", single),
    ])
}

#[test]
fn text_encoder_matches_transformers_with_and_without_clip_skip() -> Result<()> {
    let r = Reference::open("text_encoder.safetensors");
    let ids: Vec<Vec<u32>> = r
        .int_rows("input_ids")
        .into_iter()
        .map(|row| row.into_iter().map(|v| v as u32).collect())
        .collect();
    for (layout, pipe) in layouts()? {
        for (skip, key) in [
            (1, "last_hidden_state"),
            (2, "clip_skip_2"),
            (3, "clip_skip_3"),
        ] {
            let got = pipe.text_encoder().forward(&ids, skip)?;
            assert_close(
                &format!("{layout}: text encoder {key}"),
                &got,
                &r.tensor(key),
                STAGE_TOL,
            );
        }
    }
    Ok(())
}

#[test]
fn unet_matches_diffusers_at_several_timesteps() -> Result<()> {
    let r = Reference::open("unet.safetensors");
    let sample = r.tensor("sample");
    let ehs = r.tensor("encoder_hidden_states");
    for (layout, pipe) in layouts()? {
        for t in [999, 541, 1] {
            let got = pipe.unet().forward(&sample, f64::from(t), &ehs)?;
            assert_close(
                &format!("{layout}: unet t={t}"),
                &got,
                &r.tensor(&format!("out_{t}")),
                STAGE_TOL,
            );
        }
        let odd = pipe
            .unet()
            .forward(&r.tensor("sample_odd"), 500.0, &r.tensor("ehs_odd"))?;
        assert_close(
            &format!("{layout}: unet 9x7 latents"),
            &odd,
            &r.tensor("out_odd"),
            STAGE_TOL,
        );
    }
    Ok(())
}

#[test]
fn vae_decode_and_encode_match_diffusers() -> Result<()> {
    let r = Reference::open("vae.safetensors");
    for (layout, pipe) in layouts()? {
        let decoded = pipe.vae().decode(&r.tensor("latents"))?;
        assert_close(
            &format!("{layout}: vae decode"),
            &decoded,
            &r.tensor("decoded"),
            STAGE_TOL,
        );
        let (mean, std) = pipe.vae().encode(&r.tensor("image"))?;
        assert_close(
            &format!("{layout}: vae encode mean"),
            &mean,
            &r.tensor("encoded_mean"),
            STAGE_TOL,
        );
        assert_close(
            &format!("{layout}: vae encode std"),
            &std,
            &r.tensor("encoded_std"),
            STAGE_TOL,
        );
    }
    Ok(())
}

#[test]
fn both_layouts_load_identical_weights() -> Result<()> {
    // The single file is f16 holding exactly the folder's f32 values, so the outputs agree bit
    // for bit: any renaming slip would show here first.
    let r = Reference::open("unet.safetensors");
    let mut outs: Vec<Tensor> = Vec::new();
    for (_, pipe) in layouts()? {
        outs.push(pipe.unet().forward(
            &r.tensor("sample"),
            541.0,
            &r.tensor("encoder_hidden_states"),
        )?);
    }
    assert_eq!(outs[0].to_vec()?, outs[1].to_vec()?);
    Ok(())
}
