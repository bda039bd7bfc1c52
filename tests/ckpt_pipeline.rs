//! A pickle checkpoint (`tiny-sd.ckpt`, torch zip format, weights nested under `state_dict`
//! beside `global_step`) loads exactly like the same weights in `.safetensors`: same tensor
//! names and bytes, same metadata route, and a seeded generation gives bitwise identical
//! latents. Both files hold the same float16 values, so any difference at all is a defect in
//! the checkpoint path; the comparison is exact (no tolerance).

mod common;

use common::fixture;
use sd_core::Result;
use sd_core::pipeline::{GenerateRequest, LoadOptions, Pipeline};
use sd_core::weights::ckpt::{Access, CkptFile};
use sd_core::weights::pickle::Limits;
use sd_core::weights::{self, Layout, ModelFiles, ReadMode, SafetensorsFile};

fn weight_opts(read_mode: ReadMode) -> weights::LoadOptions {
    weights::LoadOptions {
        read_mode,
        ..weights::LoadOptions::default()
    }
}

#[test]
fn ckpt_and_safetensors_expose_the_same_stored_tensors() -> Result<()> {
    let st = weights::open_tensor_source(&fixture("tiny-sd.safetensors"), ReadMode::Mmap)?;
    let st_raw = SafetensorsFile::open(fixture("tiny-sd.safetensors"))?;
    for (mode, access) in [
        (ReadMode::Mmap, Access::Mmap),
        (ReadMode::Buffered, Access::Read),
    ] {
        let ck = weights::open_tensor_source(&fixture("tiny-sd.ckpt"), mode)?;
        let ck_raw = CkptFile::open_with(fixture("tiny-sd.ckpt"), &Limits::default(), access)?;
        let mut a = st.tensor_names();
        let mut b = ck.tensor_names();
        a.sort();
        b.sort();
        assert_eq!(a.len(), 807);
        assert_eq!(a, b, "tensor names differ");
        for name in &a {
            let (ia, ib) = (st.tensor_info(name), ck.tensor_info(name));
            assert_eq!(ia, ib, "`{name}`: dtype/shape differ");
            let id = ck_raw.tensor_id(name).expect("listed name has an id");
            assert!(
                st_raw.read_bytes(name)? == ck_raw.read_bytes(id)?,
                "`{name}`: stored bytes differ"
            );
            if ia.is_some_and(|i| i.dtype.is_float()) {
                let (va, vb) = (st.read_f32(name)?, ck.read_f32(name)?);
                assert!(
                    va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "`{name}`: values differ"
                );
            } else {
                // Integer tensors (position_ids) are refused as weights by both, alike.
                assert!(st.read_f32(name).is_err() && ck.read_f32(name).is_err());
            }
        }
        let meta = ck.metadata();
        assert_eq!(meta.get("global_step").map(String::as_str), Some("470000"));
        assert_eq!(meta.get("epoch").map(String::as_str), Some("6"));
    }
    Ok(())
}

#[test]
fn ckpt_single_file_maps_like_safetensors() -> Result<()> {
    let st = ModelFiles::open(fixture("tiny-sd.safetensors"), &weight_opts(ReadMode::Mmap))?;
    let ck = ModelFiles::open(fixture("tiny-sd.ckpt"), &weight_opts(ReadMode::Buffered))?;
    assert_eq!(ck.layout, Layout::SingleFile);
    assert_eq!(ck.unmapped_keys, st.unmapped_keys);
    assert_eq!(ck.ignored_keys, st.ignored_keys);
    assert_eq!(ck.uses_ema, st.uses_ema);
    for (what, a, b) in [
        ("unet", &st.unet, &ck.unet),
        ("vae", &st.vae, &ck.vae),
        ("text_encoder", &st.text_encoder, &ck.text_encoder),
    ] {
        let mut na: Vec<_> = a.names().collect();
        let mut nb: Vec<_> = b.names().collect();
        na.sort_unstable();
        nb.sort_unstable();
        assert_eq!(na, nb, "{what}: mapped names differ");
    }
    assert_eq!(
        ck.metadata.get("global_step").map(String::as_str),
        Some("470000")
    );
    Ok(())
}

#[test]
fn ckpt_and_safetensors_generate_bitwise_identical_latents() -> Result<()> {
    let opts = LoadOptions {
        config_dir: Some(fixture("tiny-sd")),
        ..LoadOptions::default()
    };
    let mut req = GenerateRequest::new("a photo of a red fox");
    req.negative_prompt = "blurry".to_string();
    req.width = 64;
    req.height = 64;
    req.steps = 3;
    req.seed = 42;
    let run = |file: &str| -> Result<Vec<f32>> {
        let pipe = Pipeline::load(fixture(file), &opts)?;
        pipe.generate(&req, &mut |_| true)?.latents.to_vec()
    };
    let a = run("tiny-sd.safetensors")?;
    let b = run("tiny-sd.ckpt")?;
    assert!(!a.is_empty() && a.iter().all(|v| v.is_finite()));
    let differing = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert!(
        a.len() == b.len() && differing == 0,
        "{differing} of {} latent values differ between .ckpt and .safetensors",
        a.len()
    );
    Ok(())
}

/// The txt2img example.
fn txt2img() -> std::process::Command {
    common::example("txt2img")
}

#[test]
fn txt2img_accepts_a_ckpt_model_and_matches_safetensors() {
    let dir = std::env::temp_dir().join(format!("sdrs-ckpt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = fixture("tiny-sd");
    let mut saved = Vec::new();
    for file in ["tiny-sd.ckpt", "tiny-sd.safetensors"] {
        let latents = dir.join(format!("{file}.latents.safetensors"));
        let out = txt2img()
            .arg("--model")
            .arg(fixture(file))
            .arg("--config-dir")
            .arg(&config)
            .args(["--prompt", "a red fox", "--steps", "2", "--seed", "7"])
            .args(["--width", "64", "--height", "64", "--scheduler", "euler"])
            .arg("--save-latents")
            .arg(&latents)
            .arg("--output")
            .arg(dir.join(format!("{file}.png")))
            .output()
            .expect("run txt2img");
        assert!(
            out.status.success(),
            "txt2img --model {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        saved.push(std::fs::read(&latents).expect("saved latents"));
    }
    assert!(
        saved[0] == saved[1],
        "latents from .ckpt and .safetensors differ"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
