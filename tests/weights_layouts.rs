//! Both layouts of the tiny fixture model expose identical tensors under identical diffusers
//! names: the LDM single file (f16) holds exactly the values of the f32 diffusers folder.

use std::collections::BTreeSet;
use std::path::PathBuf;

use sd_core::weights::{Layout, LoadOptions, ModelFiles, ReadMode, WeightStore};
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
