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
        (
            vec![
                "--model",
                model,
                "--prompt",
                "x",
                "--output",
                "/nonexistent-dir/x.png",
            ],
            "the folder /nonexistent-dir does not exist",
        ),
        (
            vec![
                "--model",
                model,
                "--prompt",
                "x",
                "--save-latents",
                "/nonexistent-dir/l.st",
            ],
            "--save-latents /nonexistent-dir/l.st: the folder",
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

/// Runs txt2img on the fixture model with `extra` flags; returns the saved latents, the PNG's
/// infotext and stderr.
fn run_with(tag: &str, r: &Reference, prompt: &str, extra: &[&str]) -> (Tensor, String, String) {
    let dir = tempdir(tag);
    let saved = dir.join("final.safetensors");
    let png = dir.join("out.png");
    let out = txt2img()
        .args(["--model", fixture("tiny-sd").to_str().expect("utf-8 path")])
        .args(["--prompt", prompt])
        .args(["--negative-prompt", &r.meta("negative_prompt")])
        .args([
            "--steps",
            &r.meta("steps"),
            "--guidance",
            &r.meta("guidance"),
        ])
        .args([
            "--scheduler",
            &r.meta("scheduler"),
            "--seed",
            &r.meta("seed"),
        ])
        .args(["--width", "64", "--height", "64"])
        .args(extra)
        .arg("--save-latents")
        .arg(&saved)
        .arg("--output")
        .arg(&png)
        .output()
        .expect("run txt2img");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "txt2img {extra:?} failed: {stderr}");
    let file = SafetensorsFile::open(&saved).expect("saved latents");
    let info = file.tensor_info("latents").expect("tensor `latents`");
    let latents = Tensor::from_vec(
        file.read_f32("latents").expect("read"),
        info.shape,
        Device::Cpu,
    )
    .expect("tensor");
    let text = image::read_png_text(&png).expect("png text");
    let info = text
        .into_iter()
        .find(|(k, _)| k == "parameters")
        .map(|(_, v)| v)
        .expect("parameters chunk");
    let _ = std::fs::remove_dir_all(&dir);
    (latents, info, stderr)
}

#[test]
fn adapter_flags_reproduce_diffusers_and_tags_resolve_from_folders() {
    // diffusers' own runs of the tiny model with a kohya LoRA (text encoder 0.5, UNet 0.8) and
    // a textual inversion (tools/make_adapter_run_fixtures.py), within the whole-run tolerance.
    let r = Reference::open("adapters_run.safetensors");
    let lora = fixture("lora/kohya_locon.safetensors");
    let lora_flag = format!("{}:0.5:0.8", lora.display());
    let ti = fixture("ti/ti-alpha.pt");
    let (flags, info, stderr) = run_with(
        "lora-flags",
        &r,
        &r.meta("prompt_ti"),
        &[
            "--lora",
            &lora_flag,
            "--embedding",
            ti.to_str().expect("utf-8"),
        ],
    );
    assert_close(
        "txt2img --lora --embedding",
        &flags,
        &r.tensor("latents_lora_ti"),
        3e-5,
    );
    assert!(stderr.contains("lora kohya_locon:"), "{stderr}");
    assert!(info.contains("<lora:kohya_locon:0.5:0.8>"), "{info}");
    assert!(info.contains("Lora hashes: \"kohya_locon: "), "{info}");
    assert!(info.contains("TI hashes: \"ti-alpha: "), "{info}");

    // The same LoRA named by a prompt tag and found in --lora-dir: the same run, bit for bit.
    let prompt = format!("{} <lora:kohya_locon:0.5:0.8>", r.meta("prompt_ti"));
    let lora_dir = fixture("lora");
    let (tags, _, _) = run_with(
        "lora-tags",
        &r,
        &prompt,
        &[
            "--lora-dir",
            lora_dir.to_str().expect("utf-8"),
            "--embedding",
            ti.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(tags.to_vec().expect("tags"), flags.to_vec().expect("flags"));

    // A hypernetwork and CLIP skip change the image and are recorded as A1111 records them.
    let hn = fixture("hypernetwork/hn-relu.pt");
    let hn_flag = format!("{}:0.6", hn.display());
    let (with_hn, info, _) = run_with(
        "hn",
        &r,
        &r.meta("prompt_lora"),
        &["--hypernetwork", &hn_flag, "--clip-skip", "2"],
    );
    assert!(info.contains("<hypernet:hn-relu:0.6>"), "{info}");
    assert!(info.contains("Clip skip: 2"), "{info}");
    let (plain, _, _) = run_with("plain", &r, &r.meta("prompt_lora"), &[]);
    assert_ne!(
        with_hn.to_vec().expect("hn"),
        plain.to_vec().expect("plain")
    );
}

#[test]
fn adapter_flag_errors_are_specific() {
    let base = ["--prompt", "a cat <lora:nowhere:1>", "--steps", "1"];
    let out = txt2img().args(base).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("<lora:nowhere>"), "{err}");

    let out = txt2img()
        .args([
            "--prompt",
            "x",
            "--lora",
            "/nonexistent/style.safetensors:0.7",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/style.safetensors"), "{err}");

    for (flag, value) in [
        ("--lora", ":0.5"),
        ("--lora", "x.safetensors:inf"),
        ("--hypernetwork", "h.pt:NaN"),
        ("--clip-skip", "two"),
    ] {
        let out = txt2img()
            .args(["--prompt", "x", flag, value])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
        // The message, with a pointer to --help, not the whole help text.
        assert!(err.lines().count() <= 2, "{flag} {value}: {err}");
    }

    // A mistyped strength after an existing file is named as such, not as a missing file.
    let lora = fixture("lora/kohya_locon.safetensors");
    let out = txt2img()
        .args([
            "--prompt",
            "x",
            "--lora",
            &format!("{}:abc", lora.display()),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--lora: strength `abc`"), "{err}");

    // A full model checkpoint given as a LoRA is refused, saying what it is.
    let model = fixture("tiny-sd.safetensors");
    let out = txt2img()
        .args([
            "--prompt",
            "x",
            "--steps",
            "1",
            "--lora",
            model.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("full model checkpoint"), "{err}");
}
