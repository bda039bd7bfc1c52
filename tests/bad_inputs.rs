//! Bad model files get specific errors that name the file, the tensor and the shapes; never a
//! panic.

mod common;

use std::path::Path;

use common::fixture;
use sd_core::ErrorKind;
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::weights::{SafetensorsFile, TensorSource, WriteDType, write_safetensors};

fn load_err(path: &Path) -> sd_core::Error {
    let options = LoadOptions {
        config_dir: Some(fixture("tiny-sd")),
        ..LoadOptions::default()
    };
    match Pipeline::load(path, &options) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => e,
    }
}

/// Rewrites the single-file fixture with `edit` applied to its tensor list.
fn rewrite(
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> std::path::PathBuf {
    let src = SafetensorsFile::open(fixture("tiny-sd.safetensors")).expect("fixture");
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = src
        .tensor_names()
        .into_iter()
        .filter(|n| src.tensor_info(n).is_some_and(|i| i.dtype.is_float()))
        .map(|n| {
            let info = src.tensor_info(&n).expect("info");
            let data = src.read_f32(&n).expect("read");
            (n, info.shape.dims().to_vec(), data)
        })
        .collect();
    edit(&mut tensors);
    let path = dir.join(name);
    let views: Vec<(&str, &[usize], &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice()))
        .collect();
    write_safetensors(&path, &views, WriteDType::F16, None).expect("write");
    path
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let dir = common::tempdir("bad-inputs-tensors");
    let missing = rewrite(&dir, "missing.safetensors", |t| {
        t.retain(|(n, _, _)| n != "model.diffusion_model.out.2.weight")
    });
    let err = load_err(&missing);
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::InvalidModel, "{msg}");
    assert!(
        msg.contains("conv_out.weight") && msg.contains("missing.safetensors"),
        "{msg}"
    );

    let misshaped = rewrite(&dir, "misshaped.safetensors", |t| {
        for (n, shape, data) in t.iter_mut() {
            if n == "first_stage_model.decoder.conv_in.bias" {
                shape[0] -= 1;
                data.pop();
            }
        }
    });
    let msg = load_err(&misshaped).to_string();
    assert!(
        msg.contains("decoder.conv_in.bias") && msg.contains("[16]") && msg.contains("[15]"),
        "{msg}"
    );
}

#[test]
fn wrong_kinds_of_file_are_refused_with_the_path() {
    let dir = common::tempdir("bad-inputs-kinds");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("text.safetensors", b"this is not a model at all".to_vec()),
        ("empty.safetensors", Vec::new()),
        ("zip.ckpt", b"PK\x03\x04rest-of-a-zip".to_vec()),
        ("pickle.pt", b"\x80\x02}q\x00.".to_vec()),
        ("truncated.safetensors", {
            let bytes = std::fs::read(fixture("tiny-sd.safetensors")).expect("fixture");
            bytes[..bytes.len() / 2].to_vec()
        }),
    ];
    for (name, bytes) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        let err = load_err(&path);
        let msg = err.to_string();
        assert!(
            msg.contains(name),
            "{name}: error does not name the file: {msg}"
        );
        assert!(
            matches!(err.kind(), ErrorKind::InvalidModel | ErrorKind::Unsupported),
            "{name}: {msg}"
        );
    }
    let msg = load_err(&dir.join("empty.safetensors")).to_string();
    assert!(msg.ends_with("an empty file (0 bytes)"), "{msg}");
    let err = load_err(&dir.join("does-not-exist.safetensors"));
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}
