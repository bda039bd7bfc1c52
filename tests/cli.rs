//! The command-line front as scripts use it: the documented flags, `--init-latents` and
//! `--save-latents` round-tripping diffusers' `latents=` behaviour, the PNG infotext, and exit
//! codes on bad input.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Reference, assert_close, fixture};
use sd_core::image;
use sd_core::weights::{SafetensorsFile, TensorSource, WriteDType, write_safetensors};
use sd_core::{Device, Tensor};

/// The txt2img example.
fn txt2img() -> Command {
    common::example("txt2img")
}

fn tempdir(tag: &str) -> PathBuf {
    common::tempdir(&format!("cli-{tag}"))
}

#[test]
fn init_latents_and_save_latents_reproduce_diffusers() {
    let r = Reference::open("txt2img_latents_in.safetensors");
    let dir = tempdir("latents");
    let init = r.tensor("init_latents");
    let init_path = dir.join("init.safetensors");
    let values = init.to_vec().expect("values");
    write_safetensors(
        &init_path,
        &[("latents", init.dims(), &values)],
        WriteDType::F32,
        None,
    )
    .expect("write");
    let saved = dir.join("final.safetensors");
    let png = dir.join("out.png");
    let status = txt2img()
        .args(["--model", fixture("tiny-sd").to_str().expect("utf-8 path")])
        .args([
            "--prompt",
            &r.meta("prompt"),
            "--negative-prompt",
            &r.meta("negative_prompt"),
        ])
        .args([
            "--steps",
            &r.meta("steps"),
            "--guidance",
            &r.meta("guidance"),
            "--scheduler",
            &r.meta("scheduler"),
        ])
        .args([
            "--width",
            &r.meta("width"),
            "--height",
            &r.meta("height"),
            "--seed",
            &r.meta("seed"),
        ])
        .arg("--init-latents")
        .arg(&init_path)
        .arg("--save-latents")
        .arg(&saved)
        .arg("--output")
        .arg(&png)
        .status()
        .expect("run txt2img");
    assert!(status.success(), "txt2img failed: {status}");
    let file = SafetensorsFile::open(&saved).expect("saved latents");
    let info = file.tensor_info("latents").expect("tensor `latents`");
    let got = Tensor::from_vec(
        file.read_f32("latents").expect("read"),
        info.shape,
        Device::Cpu,
    )
    .expect("tensor");
    assert_close("cli saved latents", &got, &r.tensor("latents"), 3e-5);
    let text = image::read_png_text(&png).expect("png text");
    let params = text
        .iter()
        .find(|(k, _)| k == "parameters")
        .map(|(_, v)| v.clone())
        .expect("parameters chunk");
    assert!(params.starts_with(&r.meta("prompt")), "{params}");
    assert!(
        params.contains("Steps: 10, Sampler: DDIM, CFG scale: 7.5, Seed: 1234, Size: 64x64"),
        "{params}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_arguments_fail_with_a_message_and_nonzero_status() {
    let dir = tempdir("bad");
    let model = fixture("tiny-sd");
    let model = model.to_str().expect("utf-8 path");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--model", model, "--prompt", "x", "--width", "60"],
            "width",
        ),
        (
            vec!["--model", model, "--prompt", "x", "--steps", "0"],
            "steps",
        ),
        (
            vec!["--model", model, "--prompt", "x", "--guidance", "NaN"],
            "guidance",
        ),
        (
            vec!["--model", model, "--prompt", "x", "--scheduler", "heun"],
            "--scheduler",
        ),
        (
            vec!["--model", "/nonexistent/model.safetensors", "--prompt", "x"],
            "/nonexistent/model.safetensors",
        ),
        (
            vec!["--model", model, "--prompt", "x", "--prompt-syntax", "lpw"],
            "--prompt-syntax",
        ),
        (vec!["--prompt"], "--prompt needs a value"),
        (vec!["--bogus"], "unknown argument"),
    ];
    for (args, needle) in cases {
        let out = txt2img()
            .arg("--output")
            .arg(dir.join("x.png"))
            .args(&args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr lacks `{needle}`: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn prompt_syntax_flag_selects_the_reading() {
    let dir = tempdir("syntax");
    let model = fixture("tiny-sd");
    let run = |syntax: &str, prompt: &str| {
        let png = dir.join(format!("{syntax}.png"));
        let status = txt2img()
            .args(["--model", model.to_str().expect("utf-8 path")])
            .args(["--prompt", prompt, "--prompt-syntax", syntax])
            .args([
                "--steps", "2", "--seed", "5", "--width", "64", "--height", "64",
            ])
            .arg("--output")
            .arg(&png)
            .status()
            .expect("run txt2img");
        assert!(
            status.success(),
            "txt2img --prompt-syntax {syntax} failed: {status}"
        );
        let text = image::read_png_text(&png).expect("png text");
        let params = text
            .into_iter()
            .find(|(k, _)| k == "parameters")
            .map(|(_, v)| v)
            .expect("parameters chunk");
        let pixels = image::load_image(&png).expect("png").data;
        (params, pixels)
    };
    // A plain prompt reads the same either way; the infotext says which syntax was used.
    let (a1111_text, a1111_pixels) = run("a1111", "a red fox");
    let (plain_text, plain_pixels) = run("plain", "a red fox");
    assert_eq!(a1111_pixels, plain_pixels);
    assert!(!a1111_text.contains("Prompt syntax"), "{a1111_text}");
    assert!(plain_text.contains("Prompt syntax: plain"), "{plain_text}");
    // Emphasis is read only by the A1111 syntax.
    let (_, weighted) = run("a1111", "a (red:1.5) fox");
    let (_, literal) = run("plain", "a (red:1.5) fox");
    assert_ne!(weighted, literal);
    let _ = std::fs::remove_dir_all(dir);
}
