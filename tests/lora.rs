//! LoRA and LyCORIS files applied to the tiny SD 1.x model, against the reference stack.
//!
//! Fixtures: `tests/fixtures/lora/`, built by `tools/make_lora_fixtures.py`.
//! - kohya and PEFT files: diffusers itself applies them (`load_lora_weights`, float64 model);
//!   the references are the text encoder's hidden states and a UNet output.
//! - LyCORIS algorithms and several LoRAs at once: `tools/a1111_lora.py`, a float64
//!   re-implementation of A1111's `extensions-builtin/Lora` math; the references are the weight
//!   deltas (patched − original) of every patched parameter.
//!
//! Tolerance: 1e-5 of the reference's largest magnitude, per output or per parameter delta.
//! Float32 against float64 differs by about 1e-6 of it; a wrong scale, axis or order moves a
//! delta by far more (the fixtures' deltas are 0.05–20 × the weights they patch).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use common::{assert_close, fixture, tempdir};
use safetensors::SafeTensors;
use sd_core::adapters::lora::{
    Algorithm, Component, Lora, LoraReport, LoraUse, SkipReason, apply_loras,
};
use sd_core::models::{ClipTextModel, UNet2DConditionModel};
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::weights::{MemorySource, WriteDType, write_safetensors};
use sd_core::{Device, Error, ErrorKind, Result, Tensor};

const TOL: f32 = 1e-5;

fn pipe() -> Pipeline {
    Pipeline::load(fixture("tiny-sd"), &LoadOptions::default()).expect("tiny-sd")
}

fn lora_file(name: &str) -> PathBuf {
    fixture("lora").join(name)
}

fn open(name: &str) -> Arc<Lora> {
    Arc::new(Lora::open(lora_file(name)).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// A reference file of `tests/fixtures/lora/reference/`.
struct RefFile {
    bytes: Vec<u8>,
    name: String,
}

impl RefFile {
    fn open(name: &str) -> Self {
        let path = fixture("lora/reference").join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        RefFile {
            bytes,
            name: name.to_string(),
        }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .view()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        k.sort();
        k
    }

    fn tensor(&self, key: &str) -> Tensor {
        let st = self.view();
        let t = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("{}: {key}: {e}", self.name));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{key}");
        let data = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Tensor::from_vec(data, t.shape().to_vec(), Device::Cpu).expect("tensor")
    }

    fn ids(&self) -> Vec<Vec<u32>> {
        let st = self.view();
        let t = st.tensor("input_ids").expect("input_ids");
        let values: Vec<u32> = t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as u32)
            .collect();
        values.chunks(t.shape()[1]).map(<[u32]>::to_vec).collect()
    }

    fn meta(&self, key: &str) -> String {
        let (_, m) = SafeTensors::read_metadata(&self.bytes).expect("metadata");
        m.metadata()
            .as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_else(|| panic!("{}: no metadata {key}", self.name))
    }

    fn meta_f32(&self, key: &str) -> f32 {
        self.meta(key).parse().expect("number")
    }
}

type Params = BTreeMap<String, Tensor>;

fn params(te: &mut ClipTextModel, unet: &mut UNet2DConditionModel) -> Params {
    let mut out = Params::new();
    let mut take = |name: &str, p: sd_core::models::ParamMut<'_>| -> Result<()> {
        out.insert(name.to_string(), p.value()?);
        Ok(())
    };
    te.visit_parameters(&mut take).expect("text encoder");
    unet.visit_parameters(&mut take).expect("unet");
    out
}

/// Applies `uses` to clones of the tiny model; returns the report and the parameters before
/// and after.
fn apply(pipe: &Pipeline, uses: &[LoraUse]) -> (LoraReport, Params, Params) {
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let before = params(&mut te, &mut unet);
    let report = apply_loras(uses, &mut te, &mut unet).expect("apply");
    let after = params(&mut te, &mut unet);
    (report, before, after)
}

/// Every parameter's change against the reference's `delta.<name>`; parameters without one
/// must be untouched (bit for bit).
fn check_deltas(what: &str, r: &RefFile, before: &Params, after: &Params) {
    let refs: BTreeMap<String, String> = r
        .keys()
        .into_iter()
        .filter_map(|k| Some((k.strip_prefix("delta.")?.to_string(), k)))
        .collect();
    assert!(!refs.is_empty(), "{what}: empty reference");
    for (name, b) in before {
        let a = &after[name];
        match refs.get(name) {
            Some(key) => {
                let delta = a.sub(b).expect("delta");
                assert_close(&format!("{what}: {name}"), &delta, &r.tensor(key), TOL);
            }
            None => assert_eq!(
                a.to_vec().expect("after"),
                b.to_vec().expect("before"),
                "{what}: {name} changed but the reference leaves it alone"
            ),
        }
    }
    for name in refs.keys() {
        assert!(
            before.contains_key(name),
            "{what}: reference names unknown {name}"
        );
    }
}

fn unet_and_te_outputs(r: &RefFile, te: &ClipTextModel, unet: &UNet2DConditionModel, what: &str) {
    let hidden = te.forward(&r.ids(), 1).expect("text encoder");
    assert_close(
        &format!("{what}: text encoder"),
        &hidden,
        &r.tensor("te_out"),
        TOL,
    );
    let t = r.meta_f32("timestep");
    let out = unet
        .forward(
            &r.tensor("sample"),
            f64::from(t),
            &r.tensor("encoder_hidden_states"),
        )
        .expect("unet");
    assert_close(&format!("{what}: unet"), &out, &r.tensor("unet_out"), TOL);
}

/// (a) and (b): files diffusers itself applies.
fn check_against_diffusers(file: &str) -> LoraReport {
    let pipe = pipe();
    let r = RefFile::open(file);
    let lora = open(file);
    let uses = [LoraUse::with_strengths(
        lora.clone(),
        r.meta_f32("text_encoder_strength"),
        r.meta_f32("unet_strength"),
    )];
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let report = apply_loras(&uses, &mut te, &mut unet).expect("apply");
    assert!(
        report.is_complete(),
        "{file}: {:?}",
        report.loras[0].skipped
    );
    let modules: usize = r.meta("patched_modules").parse().expect("count");
    assert_eq!(
        report.loras[0].applied.len(),
        modules,
        "{file}: modules applied"
    );
    assert_eq!(lora.modules().len(), modules);
    unet_and_te_outputs(&r, &te, &unet, file);
    assert_eq!(
        lora.hash().expect("hash"),
        r.meta("addnet_hash"),
        "{file}: A1111 hash"
    );
    report
}

#[test]
fn kohya_locon_matches_diffusers() {
    let report = check_against_diffusers("kohya_locon.safetensors");
    let lora = open("kohya_locon.safetensors");
    assert_eq!(lora.alias(), "tiny_kohya_style");
    assert_eq!(lora.metadata()["ss_network_module"], "networks.lora");
    assert_eq!(lora.short_hash().map(str::len), Some(12));
    let applied = &report.loras[0].applied;
    assert!(applied.iter().all(|m| m.algorithm == Algorithm::Lora));
    let te = applied
        .iter()
        .filter(|m| m.component == Component::TextEncoder)
        .count();
    assert_eq!(te, 24, "text-encoder modules");
    assert!(
        applied
            .iter()
            .any(|m| m.module == "lora_unet_down_blocks_0_resnets_0_conv1"
                && m.target == "down_blocks.0.resnets.0.conv1")
    );
}

#[test]
fn kohya_ldm_names_in_a_pickle_patch_the_same_weights() {
    let pipe = pipe();
    let r = RefFile::open("kohya_locon.safetensors");
    let (te, unet) = (
        r.meta_f32("text_encoder_strength"),
        r.meta_f32("unet_strength"),
    );
    let st = open("kohya_locon.safetensors");
    let pt = open("kohya_ldm.pt");
    assert_eq!(pt.hash(), Some(r.meta("kohya_ldm_pt_sha256").as_str()));
    let (rs, _, a) = apply(&pipe, &[LoraUse::with_strengths(st, te, unet)]);
    let (rp, _, b) = apply(&pipe, &[LoraUse::with_strengths(pt, te, unet)]);
    assert!(rp.is_complete(), "{:?}", rp.loras[0].skipped);
    assert_eq!(rs.loras[0].applied.len(), rp.loras[0].applied.len());
    assert!(
        rp.loras[0]
            .applied
            .iter()
            .any(|m| m.module == "lora_unet_input_blocks_1_0_in_layers_2"
                && m.target == "down_blocks.0.resnets.0.conv1")
    );
    for (name, t) in &a {
        assert_eq!(
            t.to_vec().expect("a"),
            b[name].to_vec().expect("b"),
            "{name} differs between the diffusers-named and the LDM-named file"
        );
    }
}

#[test]
fn peft_matches_diffusers() {
    let report = check_against_diffusers("peft.safetensors");
    assert!(
        report.loras[0]
            .applied
            .iter()
            .any(|m| m.component == Component::TextEncoder)
    );
}

#[test]
fn peft_dora_matches_diffusers() {
    check_against_diffusers("peft_dora.safetensors");
}

/// (c): one LyCORIS file at its reference strengths.
fn check_lycoris(file: &str) -> LoraReport {
    let pipe = pipe();
    let r = RefFile::open(file);
    let lora = open(file);
    let use_ = LoraUse::with_strengths(
        lora.clone(),
        r.meta_f32("text_encoder_strength"),
        r.meta_f32("unet_strength"),
    );
    let (report, before, after) = apply(&pipe, &[use_]);
    check_deltas(file, &r, &before, &after);
    assert_eq!(
        report.loras[0].applied.len(),
        lora.modules().len(),
        "{file}"
    );
    report
}

fn algorithms(report: &LoraReport) -> Vec<Algorithm> {
    let mut a: Vec<Algorithm> = report.loras[0]
        .applied
        .iter()
        .map(|m| m.algorithm)
        .collect();
    a.dedup();
    a
}

#[test]
fn loha_plain_flat_4d_and_tucker() {
    let report = check_lycoris("loha.safetensors");
    assert!(report.is_complete());
    assert_eq!(algorithms(&report), vec![Algorithm::LoHa]);
}

#[test]
fn lokr_full_factorized_conv_and_tucker() {
    let report = check_lycoris("lokr.safetensors");
    assert!(report.is_complete());
    assert_eq!(algorithms(&report), vec![Algorithm::LoKr]);
}

#[test]
fn ia3_on_outputs_and_inputs() {
    let report = check_lycoris("ia3.safetensors");
    assert!(report.is_complete());
    assert_eq!(algorithms(&report), vec![Algorithm::Ia3]);
}

#[test]
fn full_diff_and_norm_with_bias_differences() {
    let report = check_lycoris("full_norm.safetensors");
    assert!(report.is_complete(), "{:?}", report.loras[0].skipped);
}

#[test]
fn glora() {
    let report = check_lycoris("glora.safetensors");
    assert!(report.is_complete());
    assert_eq!(algorithms(&report), vec![Algorithm::GLoRA]);
}

#[test]
fn cp_decomposition_scale_and_bias_tensors() {
    let report = check_lycoris("locon_cp.safetensors");
    // The SDXL embedding bundled beside the SD 1.x one is reported, not used.
    let skipped = &report.loras[0].skipped;
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    for s in skipped {
        assert!(s.key.starts_with("bundle_emb.xlstyle."), "{}", s.key);
        assert!(matches!(s.reason, SkipReason::UnusableEmbedding { .. }));
    }
}

#[test]
fn dora_both_conventions() {
    let report = check_lycoris("dora.safetensors");
    assert!(report.is_complete());
}

#[test]
fn bundled_embedding_is_exposed() {
    let lora = open("locon_cp.safetensors");
    let [emb] = lora.embeddings() else {
        panic!("expected one embedding, got {:?}", lora.embeddings());
    };
    assert_eq!(emb.name(), "tinystyle");
    assert_eq!((emb.vector_count(), emb.width()), (2, 16));
    let bytes = std::fs::read(lora_file("locon_cp.safetensors")).expect("file");
    let st = SafeTensors::deserialize(&bytes).expect("st");
    let t = st
        .tensor("bundle_emb.tinystyle.string_to_param.*")
        .expect("emb");
    let want: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(emb.vectors().to_vec().expect("vectors"), want);
}

/// (d): several LoRAs in order, each with its own strengths.
#[test]
fn several_loras_in_order_with_their_own_strengths() {
    let pipe = pipe();
    let r = RefFile::open("multi.safetensors");
    let uses: Vec<(String, f32, f32)> = serde_json::from_str(&r.meta("uses")).expect("uses");
    assert!(uses.len() >= 4);
    let uses: Vec<LoraUse> = uses
        .iter()
        .map(|(name, te, unet)| LoraUse::with_strengths(open(name), *te, *unet))
        .collect();
    let (report, before, after) = apply(&pipe, &uses);
    assert_eq!(report.loras.len(), uses.len());
    check_deltas("multi", &r, &before, &after);
    // The order matters: DoRA and IA3 read the weight the earlier LoRAs left.
    let reversed: Vec<LoraUse> = uses.iter().rev().cloned().collect();
    let (_, _, swapped) = apply(&pipe, &reversed);
    let moved = after
        .iter()
        .any(|(k, v)| v.max_abs_diff(&swapped[k]).expect("diff") > 1e-4);
    assert!(moved, "applying in reverse order changed nothing");
}

#[test]
fn zero_strength_changes_nothing_and_is_reported() {
    let pipe = pipe();
    let lora = open("kohya_locon.safetensors");
    let (report, before, after) = apply(&pipe, &[LoraUse::with_strengths(lora, 0.0, 1.0)]);
    for (name, b) in &before {
        if name.starts_with("text_model.") {
            assert_eq!(after[name].to_vec().ok(), b.to_vec().ok(), "{name}");
        }
    }
    let skipped = &report.loras[0].skipped;
    assert!(!skipped.is_empty());
    assert!(
        skipped
            .iter()
            .all(|s| s.reason == SkipReason::ZeroStrength && s.key.starts_with("lora_te_"))
    );
    // The report's text counts them on one line rather than listing each.
    let count = skipped.len();
    let text = sd_core::pipeline::AdapterReport {
        loras: report,
        ..Default::default()
    }
    .to_string();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains(&format!(
            "  not applied: {count} keys of a part at strength 0"
        )),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// (e) bad inputs

fn memory_lora(name: &str, tensors: &[(&str, &[usize], Vec<f32>)]) -> Result<Lora> {
    let mut src = MemorySource::new(format!("{name}.safetensors"));
    for (k, shape, data) in tensors {
        src.insert(*k, shape.to_vec(), data.clone())?;
    }
    Lora::from_source(name, Arc::new(src))
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i % 7) as f32 - 3.0) * scale).collect()
}

const Q: &str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";

#[test]
fn nan_in_a_file_is_refused_naming_the_tensor() {
    let dir = tempdir("lora-nan");
    let path = dir.join("nan.safetensors");
    let mut up = ramp(16 * 2, 0.1);
    up[5] = f32::NAN;
    let down = ramp(2 * 16, 0.1);
    let up_key = format!("{Q}.lora_up.weight");
    let down_key = format!("{Q}.lora_down.weight");
    write_safetensors(
        &path,
        &[
            (up_key.as_str(), &[16, 2], &up),
            (down_key.as_str(), &[2, 16], &down),
        ],
        WriteDType::F16,
        None,
    )
    .expect("write");
    let err = Lora::open(&path).expect_err("NaN");
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::InvalidModel, "{msg}");
    assert!(msg.contains(&up_key) && msg.contains("NaN"), "{msg}");
    assert!(msg.contains("nan.safetensors"), "{msg}");
}

#[test]
fn a_shape_that_does_not_fit_names_key_layer_and_shapes() {
    let pipe = pipe();
    let up_key = format!("{Q}.lora_up.weight");
    let lora = memory_lora(
        "wide",
        &[
            (up_key.as_str(), &[17, 2], ramp(34, 0.1)),
            (&format!("{Q}.lora_down.weight"), &[2, 16], ramp(32, 0.1)),
        ],
    )
    .expect("lora");
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let err =
        apply_loras(&[LoraUse::new(Arc::new(lora), 1.0)], &mut te, &mut unet).expect_err("shape");
    let msg = err.to_string();
    assert!(matches!(err, Error::WeightShape { .. }), "{msg}");
    assert!(msg.contains(&up_key), "{msg}");
    assert!(
        msg.contains("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("[17, 16]") && msg.contains("[16, 16]"),
        "{msg}"
    );
}

#[test]
fn mismatched_ranks_inside_a_file_are_refused() {
    let pipe = pipe();
    let lora = memory_lora(
        "ranks",
        &[
            (&format!("{Q}.lora_up.weight"), &[16, 3], ramp(48, 0.1)),
            (&format!("{Q}.lora_down.weight"), &[2, 16], ramp(32, 0.1)),
        ],
    )
    .expect("lora");
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let err =
        apply_loras(&[LoraUse::new(Arc::new(lora), 1.0)], &mut te, &mut unet).expect_err("ranks");
    assert!(err.to_string().contains("[16, 3]"), "{err}");
}

#[test]
fn sdxl_and_sd2_files_are_refused_with_the_evidence() {
    let pipe = pipe();
    let te1 = "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight";
    let sdxl = memory_lora("xl", &[(te1, &[16, 2], ramp(32, 0.1))]).expect("lora");
    let family = sdxl.other_family().expect("family").clone();
    assert_eq!(family.family, "SDXL");
    assert!(family.evidence.contains(te1));
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let err =
        apply_loras(&[LoraUse::new(Arc::new(sdxl), 1.0)], &mut te, &mut unet).expect_err("sdxl");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let msg = err.to_string();
    assert!(msg.contains("SDXL") && msg.contains(te1), "{msg}");

    // SD 2.x by metadata, in a file.
    let dir = tempdir("lora-sd2");
    let path = dir.join("sd2.safetensors");
    let meta = HashMap::from([("ss_v2".to_string(), "True".to_string())]);
    let key = format!("{Q}.lora_up.weight");
    write_safetensors(
        &path,
        &[(key.as_str(), &[16, 2], &ramp(32, 0.1))],
        WriteDType::F32,
        Some(&meta),
    )
    .expect("write");
    let sd2 = Lora::open(&path).expect("open");
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let err =
        apply_loras(&[LoraUse::new(Arc::new(sd2), 1.0)], &mut te, &mut unet).expect_err("sd2");
    assert!(err.to_string().contains("SD 2.x") && err.to_string().contains("ss_v2"));
}

#[test]
fn unknown_and_unsupported_keys_are_reported_by_name() {
    let pipe = pipe();
    let unknown = "lora_unet_down_blocks_7_attentions_0_proj_in";
    let oft = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k";
    let lora = memory_lora(
        "mixed",
        &[
            (&format!("{Q}.lora_up.weight"), &[16, 2], ramp(32, 0.1)),
            (&format!("{Q}.lora_down.weight"), &[2, 16], ramp(32, 0.1)),
            (&format!("{Q}.hada_w1_a"), &[16, 2], ramp(32, 0.1)),
            (
                &format!("{unknown}.lora_up.weight"),
                &[16, 2],
                ramp(32, 0.1),
            ),
            (
                &format!("{unknown}.lora_down.weight"),
                &[2, 16],
                ramp(32, 0.1),
            ),
            (&format!("{oft}.oft_blocks"), &[4, 4, 4], ramp(64, 0.1)),
            (&format!("{oft}.alpha"), &[], vec![1.0]),
            ("optimizer_step", &[1], vec![3.0]),
        ],
    )
    .expect("lora");
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let report =
        apply_loras(&[LoraUse::new(Arc::new(lora), 1.0)], &mut te, &mut unet).expect("apply");
    let l = &report.loras[0];
    assert_eq!(l.applied.len(), 1);
    let reason = |key: &str| {
        l.skipped
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{key} not reported: {:?}", l.skipped))
    };
    assert_eq!(
        reason(&format!("{Q}.hada_w1_a")),
        SkipReason::UnusedPart {
            algorithm: Algorithm::Lora
        }
    );
    assert_eq!(
        reason(&format!("{unknown}.lora_up.weight")),
        SkipReason::UnknownModule
    );
    assert_eq!(
        reason(&format!("{unknown}.lora_down.weight")),
        SkipReason::UnknownModule
    );
    for key in [format!("{oft}.oft_blocks"), format!("{oft}.alpha")] {
        assert!(
            matches!(reason(&key), SkipReason::UnsupportedAlgorithm { parts } if parts.contains(&"oft_blocks".to_string())),
            "{key}"
        );
    }
    assert_eq!(reason("optimizer_step"), SkipReason::UnrecognisedKey);
    assert_eq!(l.skipped.len(), 6, "{:?}", l.skipped);
    assert!(!report.is_complete());
}

#[test]
fn non_finite_strengths_are_refused() {
    let pipe = pipe();
    let lora = open("ia3.safetensors");
    for (te, unet) in [(f32::NAN, 1.0), (1.0, f32::INFINITY)] {
        let (mut t, mut u) = (pipe.text_encoder().clone(), pipe.unet().clone());
        let err = apply_loras(
            &[LoraUse::with_strengths(lora.clone(), te, unet)],
            &mut t,
            &mut u,
        )
        .expect_err("strength");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("ia3"), "{err}");
    }
}

#[test]
fn the_loaded_model_is_never_modified() {
    let pipe = pipe();
    let (mut te0, mut unet0) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let before = params(&mut te0, &mut unet0);
    let _ = apply(&pipe, &[LoraUse::new(open("lokr.safetensors"), 1.0)]);
    let (mut te1, mut unet1) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let again = params(&mut te1, &mut unet1);
    for (k, v) in &before {
        assert_eq!(v.to_vec().ok(), again[k].to_vec().ok(), "{k}");
    }
}

#[test]
fn factors_that_would_make_a_huge_delta_are_refused_before_allocating() {
    let pipe = pipe();
    let n = 100_000;
    let k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k";
    let lora = memory_lora(
        "huge",
        &[
            (&format!("{Q}.lora_up.weight"), &[n, 1], ramp(n, 0.1)),
            (&format!("{Q}.lora_down.weight"), &[1, n], ramp(n, 0.1)),
            (&format!("{k}.lokr_w1"), &[300, 300], ramp(90_000, 0.1)),
            (&format!("{k}.lokr_w2"), &[300, 300], ramp(90_000, 0.1)),
        ],
    )
    .expect("lora");
    // Modules apply in the model's parameter order: to_q (the LoRA) comes first.
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let err =
        apply_loras(&[LoraUse::new(Arc::new(lora), 1.0)], &mut te, &mut unet).expect_err("huge");
    assert!(matches!(err, Error::WeightShape { .. }), "{err}");
    assert!(err.to_string().contains("lora_up"), "{err}");
    // The LoKr module alone.
    let lokr = memory_lora(
        "huge_kron",
        &[
            (&format!("{k}.lokr_w1"), &[300, 300], ramp(90_000, 0.1)),
            (&format!("{k}.lokr_w2"), &[300, 300], ramp(90_000, 0.1)),
        ],
    )
    .expect("lora");
    let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
    let err =
        apply_loras(&[LoraUse::new(Arc::new(lokr), 1.0)], &mut te, &mut unet).expect_err("kron");
    assert!(matches!(err, Error::WeightShape { .. }), "{err}");
    assert!(err.to_string().contains("lokr_w1"), "{err}");
}

#[test]
fn loras_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Lora>();
    shareable::<LoraUse>();
    shareable::<LoraReport>();
}

/// The kohya file's LoRA tensors (without alpha) under other spellings: the old diffusers
/// attention-processor keys, PEFT's `.lora_A.default.weight`, `.lora.down.weight`, PEFT's own
/// `base_model.model.` prefix, the text encoder without `text_model.`. Every spelling must
/// patch exactly what the kohya names patch.
#[test]
fn other_key_spellings_patch_the_same_weights() {
    use sd_core::weights::{SafetensorsFile, TensorSource};
    let pipe = pipe();
    let kohya = open("kohya_locon.safetensors");
    let (report, _, _) = apply(&pipe, &[LoraUse::new(kohya, 1.0)]);
    let targets: HashMap<String, String> = report.loras[0]
        .applied
        .iter()
        .map(|m| (m.module.clone(), m.target.clone()))
        .collect();
    let file = SafetensorsFile::open(lora_file("kohya_locon.safetensors")).expect("file");
    let mut plain = MemorySource::new("plain");
    let mut spelled = MemorySource::new("spelled");
    let mut styles = [0usize; 5];
    for (i, (module, target)) in targets.iter().enumerate() {
        for (part, short) in [("lora_down.weight", "down"), ("lora_up.weight", "up")] {
            let key = format!("{module}.{part}");
            let info = file.tensor_info(&key).expect("info");
            let data = file.read_f32(&key).expect("read");
            let shape = info.shape.dims().to_vec();
            plain
                .insert(key, shape.clone(), data.clone())
                .expect("insert");
            let attn = ["to_q", "to_k", "to_v", "to_out.0"]
                .iter()
                .find_map(|p| target.strip_suffix(&format!(".{p}")).map(|b| (b, *p)));
            let (style, new_key) = if let Some((base, proj)) = attn {
                let proj = proj.strip_suffix(".0").unwrap_or(proj);
                (
                    0,
                    format!("unet.{base}.processor.{proj}_lora.{short}.weight"),
                )
            } else if let Some(rest) = target.strip_prefix("text_model.") {
                let ab = if short == "down" { "A" } else { "B" };
                if i % 2 == 0 {
                    (1, format!("text_encoder.{rest}.lora_{ab}.weight"))
                } else {
                    (
                        2,
                        format!("text_encoder.text_model.{rest}.lora_linear_layer.{short}.weight"),
                    )
                }
            } else if i % 2 == 0 {
                let ab = if short == "down" { "A" } else { "B" };
                (
                    3,
                    format!("base_model.model.{target}.lora_{ab}.default.weight"),
                )
            } else {
                (4, format!("unet.{target}.lora.{short}.weight"))
            };
            styles[style] += 1;
            spelled.insert(new_key, shape, data).expect("insert");
        }
    }
    assert!(
        styles.iter().all(|&n| n > 0),
        "every spelling used: {styles:?}"
    );
    let plain = Arc::new(Lora::from_source("plain", Arc::new(plain)).expect("plain"));
    let spelled = Arc::new(Lora::from_source("spelled", Arc::new(spelled)).expect("spelled"));
    let (rp, _, a) = apply(&pipe, &[LoraUse::with_strengths(plain, 0.7, 1.1)]);
    let (rs, _, b) = apply(&pipe, &[LoraUse::with_strengths(spelled, 0.7, 1.1)]);
    assert!(
        rp.is_complete() && rs.is_complete(),
        "{:?}",
        rs.loras[0].skipped
    );
    assert_eq!(rs.loras[0].applied.len(), targets.len());
    for (name, t) in &a {
        assert_eq!(t.to_vec().ok(), b[name].to_vec().ok(), "{name}");
    }
}

#[test]
fn a_file_without_lora_tensors_is_refused_saying_what_it_is() {
    // A full model checkpoint given as a LoRA: every key is a model weight.
    let err = memory_lora(
        "model",
        &[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[4],
                ramp(4, 0.1),
            ),
            ("first_stage_model.decoder.conv_in.bias", &[4], ramp(4, 0.1)),
            (
                "model.diffusion_model.time_embed.0.bias",
                &[4],
                ramp(4, 0.1),
            ),
        ],
    )
    .expect_err("a full checkpoint is no LoRA");
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::InvalidModel, "{msg}");
    assert!(
        msg.contains("model.safetensors")
            && msg.contains("no LoRA or LyCORIS tensors")
            && msg.contains("none of its 3 keys")
            && msg.contains("full model checkpoint"),
        "{msg}"
    );
    // Other tensors only: no guess at what the file is.
    let err = memory_lora("stray", &[("optimizer_step", &[1], vec![3.0])]).expect_err("stray");
    let msg = err.to_string();
    assert!(msg.contains("`optimizer_step`"), "{msg}");
    assert!(!msg.contains("full model"), "{msg}");
    // No tensors at all.
    let err = memory_lora("empty", &[]).expect_err("empty");
    assert!(err.to_string().contains("holds no tensors"), "{err}");
}
