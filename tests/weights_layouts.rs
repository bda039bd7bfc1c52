//! Both layouts of the tiny fixture model expose identical tensors under identical diffusers
//! names: the LDM single file (f16) holds exactly the values of the f32 diffusers folder.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sd_core::pipeline::{GenerateRequest, LoadOptions as PipelineOptions, Pipeline};
use sd_core::weights::{
    Layout, LoadOptions, ModelFiles, ReadMode, WeightStore, WriteDType, write_safetensors,
};
use sd_core::{Device, Result};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn names(store: &WeightStore) -> BTreeSet<String> {
    store.names().map(str::to_string).collect()
}

fn assert_same(component: &str, a: &WeightStore, b: &WeightStore) -> Result<()> {
    let (na, nb) = (names(a), names(b));
    let only_a: Vec<_> = na.difference(&nb).collect();
    let only_b: Vec<_> = nb.difference(&na).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "{component}: only in folder {only_a:?}, only in single file {only_b:?}"
    );
    for name in &na {
        let shape = a
            .shape_of(name)
            .ok_or_else(|| sd_core::Error::Internal(format!("{component}: {name} has no shape")))?;
        let ta = a.get(name, &shape, Device::Cpu)?.to_vec()?;
        let tb = b.get(name, &shape, Device::Cpu)?.to_vec()?;
        // The fixture's values are exactly representable in f16: the match must be exact.
        assert!(
            ta.iter().zip(&tb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{component}: `{name}` differs between layouts"
        );
    }
    Ok(())
}

#[test]
fn tiny_sd_folder_and_single_file_expose_identical_tensors() -> Result<()> {
    let folder = ModelFiles::open(fixtures().join("tiny-sd"), &LoadOptions::default())?;
    let single = ModelFiles::open(
        fixtures().join("tiny-sd.safetensors"),
        &LoadOptions::default(),
    )?;
    assert_eq!(folder.layout, Layout::Diffusers);
    assert_eq!(single.layout, Layout::SingleFile);
    assert!(
        single.unmapped_keys.is_empty(),
        "unmapped: {:?}",
        single.unmapped_keys
    );
    assert!(folder.unet_config.is_some() && folder.vae_config.is_some());
    assert!(folder.text_encoder_config.is_some() && folder.scheduler_config.is_some());
    assert!(
        folder
            .tokenizer_dir
            .as_ref()
            .is_some_and(|d| d.join("vocab.json").is_file())
    );
    assert_same("unet", &folder.unet, &single.unet)?;
    assert_same("vae", &folder.vae, &single.vae)?;
    assert_same("text_encoder", &folder.text_encoder, &single.text_encoder)?;

    // The buffered reader gives the same values.
    let buffered = ModelFiles::open(
        fixtures().join("tiny-sd.safetensors"),
        &LoadOptions {
            read_mode: ReadMode::Buffered,
            ..LoadOptions::default()
        },
    )?;
    assert_same("unet (buffered)", &folder.unet, &buffered.unet)?;
    Ok(())
}

/// Copies a folder tree (the fixture's few small files).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// transformers 5 saves `CLIPTextModel` without the `text_model.` prefix; such a folder loads
/// the same text encoder, and generates the same latents, as the prefixed one.
#[test]
fn diffusers_folder_with_unprefixed_text_encoder_keys() -> Result<()> {
    let original = fixtures().join("tiny-sd");
    let dir = common::tempdir("unprefixed-te");
    let copy = dir.join("tiny-sd");
    copy_tree(&original, &copy);

    let prefixed = ModelFiles::open(&original, &LoadOptions::default())?;
    let mut tensors = Vec::new();
    for name in names(&prefixed.text_encoder) {
        let shape = prefixed
            .text_encoder
            .shape_of(&name)
            .ok_or_else(|| sd_core::Error::Internal(format!("{name} has no shape")))?;
        let values = prefixed
            .text_encoder
            .get(&name, &shape, Device::Cpu)?
            .to_vec()?;
        let stored = name
            .strip_prefix("text_model.")
            .map_or(name.clone(), str::to_string);
        tensors.push((stored, shape.dims().to_vec(), values));
    }
    assert!(
        tensors
            .iter()
            .all(|(n, _, _)| !n.starts_with("text_model."))
    );
    let views: Vec<(&str, &[usize], &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice()))
        .collect();
    write_safetensors(
        copy.join("text_encoder/model.safetensors"),
        &views,
        WriteDType::F32,
        None,
    )?;

    let unprefixed = ModelFiles::open(&copy, &LoadOptions::default())?;
    for name in names(&prefixed.text_encoder) {
        let shape = prefixed.text_encoder.shape_of(&name).expect("shape");
        let want = prefixed
            .text_encoder
            .get(&name, &shape, Device::Cpu)?
            .to_vec()?;
        let got = unprefixed
            .text_encoder
            .get(&name, &shape, Device::Cpu)?
            .to_vec()?;
        assert!(
            want.iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "`{name}` differs"
        );
    }

    let mut request = GenerateRequest::new("a red fox");
    (request.width, request.height, request.steps, request.seed) = (64, 64, 2, 7);
    let run = |path: &Path| -> Result<Vec<f32>> {
        Pipeline::load(path, &PipelineOptions::default())?
            .generate(&request, &mut |_| true)?
            .latents
            .to_vec()
    };
    let (want, got) = (run(&original)?, run(&copy)?);
    assert!(
        want.iter()
            .zip(&got)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "latents differ between the prefixed and unprefixed text encoder"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
