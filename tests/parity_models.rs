//! Each model against diffusers / transformers (evaluated in float64) on the tiny fixture model,
//! loaded from both layouts.
//!
//! Tolerance: 1e-5 of the reference's largest magnitude per stage. A float32 evaluation differs
//! from float64 by about 1e-6 of it; wiring bugs such as a tanh-approximate GELU or a wrong norm
//! epsilon move it by about 5e-5, so they fail.

mod common;

use common::{Reference, assert_close, fixture};
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::weights::{SafetensorsFile, TensorSource, WriteDType, write_safetensors};
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

/// Writes the single-file fixture again with `dtype`, optionally adding EMA copies of the UNet
/// (stored as original checkpoints do: `model_ema.` + the key without dots) whose values differ,
/// so that reading the wrong copy cannot go unnoticed.
fn single_file_variant(dtype: WriteDType, with_ema: bool, name: &str) -> std::path::PathBuf {
    let src = SafetensorsFile::open(fixture("tiny-sd.safetensors")).expect("fixture");
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for n in src.tensor_names() {
        let info = src.tensor_info(&n).expect("info");
        if !info.dtype.is_float() {
            continue;
        }
        let data = src.read_f32(&n).expect("read");
        if with_ema && let Some(rest) = n.strip_prefix("model.diffusion_model.") {
            let ema: Vec<f32> = data.iter().map(|v| v * 0.5).collect();
            tensors.push((
                format!("model_ema.diffusion_model{}", rest.replace('.', "")),
                info.shape.dims().to_vec(),
                ema,
            ));
        }
        tensors.push((n, info.shape.dims().to_vec(), data));
    }
    let dir = std::env::temp_dir().join(format!("sdrs-variants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    let views: Vec<(&str, &[usize], &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice()))
        .collect();
    write_safetensors(&path, &views, dtype, None).expect("write variant");
    path
}

#[test]
fn bf16_and_ema_single_files_load_the_right_weights() -> Result<()> {
    let r = Reference::open("unet.safetensors");
    let (sample, ehs) = (r.tensor("sample"), r.tensor("encoder_hidden_states"));
    let options = |prefer_ema| LoadOptions {
        config_dir: Some(fixture("tiny-sd")),
        prefer_ema,
        ..LoadOptions::default()
    };
    // Every fixture value is exact in bf16, so a bf16 file gives the f32 folder's outputs.
    let bf16 = Pipeline::load(
        single_file_variant(WriteDType::BF16, false, "bf16.safetensors"),
        &options(false),
    )?;
    assert_close(
        "bf16 single file: unet t=541",
        &bf16.unet().forward(&sample, 541.0, &ehs)?,
        &r.tensor("out_541"),
        STAGE_TOL,
    );
    // With EMA copies present, the regular weights are used unless EMA is asked for.
    let ema_file = single_file_variant(WriteDType::F32, true, "ema.safetensors");
    let regular = Pipeline::load(&ema_file, &options(false))?;
    assert_close(
        "ema file, regular weights: unet t=541",
        &regular.unet().forward(&sample, 541.0, &ehs)?,
        &r.tensor("out_541"),
        STAGE_TOL,
    );
    let ema = Pipeline::load(&ema_file, &options(true))?;
    let diff = common::relative_error(
        &ema.unet().forward(&sample, 541.0, &ehs)?,
        &r.tensor("out_541"),
    );
    assert!(
        diff > 1e-2,
        "prefer_ema did not change the UNet weights (relative difference {diff:.2e})"
    );
    Ok(())
}
