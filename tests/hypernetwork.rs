//! AUTOMATIC1111 hypernetworks: files load into the module layout their metadata implies, and
//! the UNet with one or several chained hypernetworks matches a PyTorch re-implementation of
//! A1111's hypernetwork code driving diffusers' UNet. Fixtures:
//! `tools/make_hypernetwork_fixtures.py` (with `tools/a1111_hypernetwork.py`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Reference, assert_close, fixture, relative_error};
use sd_core::adapters::hypernetwork::HypernetworkActivation;
use sd_core::adapters::{Hypernetwork, HypernetworkStack};
use sd_core::models::{AttentionContextHook, UNetConfig};
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::{Error, ErrorKind, Result, Tensor};

/// Largest relative error (max |diff| / max |ref|) accepted against the float64 reference.
const TOLERANCE: f32 = 1e-5;

fn open(name: &str) -> Result<Arc<Hypernetwork>> {
    Hypernetwork::open(fixture("hypernetwork").join(format!("{name}.pt"))).map(Arc::new)
}

#[test]
fn unet_with_hypernetworks_matches_a1111() -> Result<()> {
    let r = Reference::open("hypernetwork.safetensors");
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())?;
    let sample = r.tensor("sample");
    let ehs = r.tensor("encoder_hidden_states");
    let t: f64 = r.meta("timestep").parse().expect("timestep");
    let plain_ref = r.tensor("unet_plain");
    // The reference's attention processor without hypernetworks is diffusers' own.
    let plain = pipe.unet().forward(&sample, t, &ehs)?;
    assert_close("unet without hypernetworks", &plain, &plain_ref, TOLERANCE);

    let cases: BTreeMap<String, Vec<(String, f32)>> =
        serde_json::from_str(&r.meta("unet_cases")).expect("unet_cases");
    assert_eq!(cases.len(), 7);
    for (case, chain) in &cases {
        let mut stack = HypernetworkStack::new();
        for (name, strength) in chain {
            stack.push(open(name)?, *strength)?;
        }
        let mut unet = pipe.unet().clone();
        unet.set_attention_context_hook(Some(Arc::new(stack)));
        let got = unet.forward(&sample, t, &ehs)?;
        let want = r.tensor(&format!("unet_{case}"));
        assert_close(
            &format!("unet, hypernetworks {chain:?}"),
            &got,
            &want,
            TOLERANCE,
        );
        // The hypernetworks change the output far beyond the tolerance.
        assert!(
            relative_error(&plain_ref, &want) > 1000.0 * TOLERANCE,
            "{case}"
        );
    }
    // The loaded model itself is untouched.
    let again = pipe.unet().forward(&sample, t, &ehs)?;
    assert_eq!(again.to_vec()?, plain.to_vec()?);
    Ok(())
}

/// `a − b` (the module's contribution when `b` is its input).
fn minus(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.sub(b)
}

#[test]
fn every_module_and_activation_matches_a1111_on_bare_contexts() -> Result<()> {
    let r = Reference::open("hypernetwork.safetensors");
    let strength: f32 = r.meta("context_strength").parse().expect("strength");
    let cases: BTreeMap<String, Vec<usize>> =
        serde_json::from_str(&r.meta("context_cases")).expect("context_cases");
    assert_eq!(cases.len(), 29);
    let mut activations = std::collections::HashSet::new();
    for (name, widths) in &cases {
        let hn = open(name)?;
        assert_eq!(&hn.widths(), widths, "{name}");
        if let Some(a) = hn.settings().activation {
            activations.insert(a);
        }
        let stack = HypernetworkStack::new().with(hn.clone(), strength)?;
        for w in [16, 32] {
            let ctx = r.tensor(&format!("ctx{w}"));
            let out = stack.transform(&ctx)?;
            if !widths.contains(&w) {
                assert!(
                    out.is_none(),
                    "{name}: no module for {w}, context left alone"
                );
                continue;
            }
            let (k, v) = out.expect("a module for this width");
            for (side, got) in [("k", k), ("v", v)] {
                let want = r.tensor(&format!("{side}_{name}_{w}"));
                let what = format!("{name} {w} ({side})");
                assert_close(&what, &got, &want, TOLERANCE);
                // The MLP's contribution alone, against its own scale.
                let delta = format!("{what}, mlp(x) · strength");
                assert_close(&delta, &minus(&got, &ctx)?, &minus(&want, &ctx)?, TOLERANCE);
            }
        }
    }
    // Every activation sd-core computes is exercised.
    assert_eq!(activations.len(), 22, "{activations:?}");
    Ok(())
}

#[test]
fn files_load_with_a1111_defaults_and_metadata() -> Result<()> {
    let relu = open("hn-relu")?;
    assert_eq!(relu.name(), "hn-relu");
    assert_eq!(relu.widths(), [16, 32]);
    let s = relu.settings();
    assert_eq!(s.activation, Some(HypernetworkActivation::Relu));
    assert!(!s.activate_output && !s.layer_norm && !s.use_dropout);
    assert_eq!(relu.info().step, Some(250));
    assert_eq!(relu.info().sd_checkpoint.as_deref(), Some("0123456789"));
    assert_eq!(relu.info().sd_checkpoint_name.as_deref(), Some("tiny-sd"));
    assert_eq!(relu.info().optional_info, None);
    let path = fixture("hypernetwork/hn-relu.pt");
    let sha = sd_core::image::sha256_file(&path)?;
    assert_eq!(relu.sha256(), Some(sha.as_str()));
    assert_eq!(relu.short_hash(), Some(&sha[..10]));

    // NAI-era file: no metadata at all, legacy key names.
    let legacy = open("hn-legacy")?;
    let s = legacy.settings();
    assert_eq!(s.layer_structure, [1.0, 2.0, 1.0]);
    assert_eq!(s.activation, None);
    assert!(
        s.activate_output,
        "A1111 assumes True for files without the key"
    );
    assert_eq!(legacy.stored_name(), None);
    assert_eq!(legacy.info().step, None);

    let derived = open("hn-leaky-derived-dropout")?;
    assert_eq!(derived.settings().dropout_structure, [0.0, 0.3, 0.3, 0.0]);
    assert!(derived.settings().use_dropout && derived.settings().last_layer_dropout);

    let swish = open("hn-swish-norm-dropout")?;
    assert_eq!(
        swish.settings().activation,
        Some(HypernetworkActivation::Hardswish)
    );
    assert_eq!(swish.settings().activation_name.as_deref(), Some("swish"));
    Ok(())
}

#[test]
fn report_says_what_the_hypernetworks_touch() -> Result<()> {
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())?;
    let stack = HypernetworkStack::new()
        .with(open("hn-relu")?, 1.0)?
        .with(open("hn-leaky-derived-dropout")?, 0.5)?;
    let report = stack.report(pipe.unet().config());
    let [relu, leaky] = report.hypernetworks.as_slice() else {
        panic!("two entries");
    };
    assert!(relu.cross_attention && relu.warnings.is_empty());
    assert_eq!(relu.self_attention_widths, [16, 32]);
    assert!(!leaky.cross_attention);
    assert_eq!(leaky.self_attention_widths, [32]);
    assert_eq!(report.warnings.len(), 1);
    assert!(report.warnings[0].contains("no module for this model's text conditioning (width 16"));

    // On SD 1.5 the tiny model's widths hit nothing.
    let sd15 = HypernetworkStack::new()
        .with(open("hn-relu")?, 1.0)?
        .report(&UNetConfig::sd_v1_5());
    assert_eq!(sd15.hypernetworks[0].unused_widths, [16, 32]);
    assert_eq!(sd15.warnings.len(), 2, "{:?}", sd15.warnings);
    assert!(sd15.warnings[0].contains("width 768"));
    Ok(())
}

fn refusal(name: &str) -> Error {
    Hypernetwork::open(fixture("hypernetwork/bad").join(format!("{name}.pt")))
        .expect_err(&format!("{name} must be refused"))
}

#[test]
fn bad_files_are_refused_with_specific_errors() {
    let cases = [
        ("unknown-activation", "unknown activation `swishy`"),
        (
            "softmax-activation",
            "activation `softmax` is not supported",
        ),
        (
            "wrong-shape",
            "module 16 (k): `linear.2.weight` has shape [16, 31]; a Linear 32 → 16 needs [16, 32]",
        ),
        (
            "missing-key",
            "module 16 (v): `linear.2.bias` is missing; the layout has a Linear 32 → 16 there",
        ),
        (
            "unexpected-key",
            "module 16 (k): unexpected `linear.1.weight` in the state dict; the layout has the \
             activation relu at index 1",
        ),
        (
            "nan",
            "module 16 (v): `linear.0.weight` holds NaN at element 50",
        ),
        (
            "layer-structure",
            "layer_structure [2.0, 1.0] must start and end with 1",
        ),
        (
            "dropout-probability",
            "has the probability 1.5, which must be below 1",
        ),
        (
            "norm-as-linear",
            "`linear.2.weight` has shape [32] (1-D, as a LayerNorm's, where the layout has a \
             Linear)",
        ),
        ("no-layers", "no int-keyed hypernetwork layers"),
    ];
    for (name, needle) in cases {
        let err = refusal(name);
        let msg = err.to_string();
        assert!(msg.contains(needle), "{name}: {msg}");
        assert!(
            msg.contains(&format!("{name}.pt")),
            "{name}: names the file: {msg}"
        );
        assert_eq!(err.kind(), ErrorKind::InvalidModel, "{name}: {msg}");
    }
    let err = Hypernetwork::open(fixture("ckpt/hypernet.safetensors")).expect_err("safetensors");
    assert!(err.to_string().contains("a safetensors file"), "{err}");
    let err = Hypernetwork::open(fixture("ti/ti-alpha.pt")).expect_err("an embedding");
    assert!(err.to_string().contains("hypernetwork"), "{err}");
    let empty = common::tempdir("hypernetwork-empty").join("empty.pt");
    std::fs::write(&empty, b"").expect("write");
    let err = Hypernetwork::open(&empty).expect_err("empty");
    assert!(
        err.to_string()
            .ends_with("empty.pt: an empty file (0 bytes)"),
        "{err}"
    );
}

#[test]
fn strengths_must_be_finite() -> Result<()> {
    let hn = open("hn-relu")?;
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let err = HypernetworkStack::new()
            .with(hn.clone(), bad)
            .expect_err("non-finite strength");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let ctx = Tensor::full(0.5, [1, 3, 16], sd_core::Device::Cpu)?;
        assert!(hn.apply(&ctx, &ctx, bad).is_err());
    }
    // Strength 0 leaves the context as it is.
    let ctx = Tensor::full(0.5, [1, 3, 16], sd_core::Device::Cpu)?;
    let (k, v) = hn.apply(&ctx, &ctx, 0.0)?.expect("16-wide module");
    assert_eq!(k.to_vec()?, ctx.to_vec()?);
    assert_eq!(v.to_vec()?, ctx.to_vec()?);
    Ok(())
}
