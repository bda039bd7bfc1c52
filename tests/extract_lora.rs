//! LoRA extraction on a fine-tune made here: the tiny fixture model plus known differences (ΔW
//! with chosen singular values on some layers, a small full-rank perturbation on one, a bias
//! change), written as a diffusers folder. The extracted file is read back with the
//! `safetensors` crate, independently of the writer, and its factors are checked against the ΔW
//! that was put in. The `extract_lora` example is checked for its exit codes and messages, and
//! the committed LoRA that diffusers read (tools/check_extract_diffusers.py) is applied here and
//! compared with diffusers' outputs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use common::{Reference, assert_close, fixture};
use safetensors::{Dtype, SafeTensors};
use sd_core::ErrorKind;
use sd_core::adapters::extract::{
    ExtractOptions, ExtractedLora, FactorSplit, RankRule, SkipReason, extract_lora,
};
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::weights::{
    RawTensor, SafetensorsFile, StoredDType, TensorSource, WriteDType, write_safetensors_raw,
};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// The fine-tune

/// Deterministic values uniform in [-1, 1) (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// `k` orthonormal random vectors of length `n` (modified Gram–Schmidt).
fn orthonormal(rng: &mut Rng, n: usize, k: usize) -> Vec<Vec<f64>> {
    let mut basis: Vec<Vec<f64>> = Vec::new();
    while basis.len() < k {
        let mut v: Vec<f64> = (0..n).map(|_| rng.next()).collect();
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        basis.push(v);
    }
    basis
}

/// A `[rows, cols]` matrix whose singular values are exactly `sigma` (the rest zero).
fn low_rank(seed: u64, rows: usize, cols: usize, sigma: &[f64]) -> Vec<f64> {
    let mut rng = Rng(seed);
    let a = orthonormal(&mut rng, rows, sigma.len());
    let b = orthonormal(&mut rng, cols, sigma.len());
    let mut m = vec![0.0; rows * cols];
    for (k, s) in sigma.iter().enumerate() {
        for i in 0..rows {
            for j in 0..cols {
                m[i * cols + j] += s * a[k][i] * b[k][j];
            }
        }
    }
    m
}

/// A difference put into the fine-tune.
#[derive(Clone)]
struct Edit {
    /// `unet` or `text_encoder`.
    component: &'static str,
    /// The parameter.
    name: &'static str,
    /// Singular values of a low-rank ΔW, or empty for a full-rank one.
    sigma: &'static [f64],
    /// The kohya name, for weights.
    kohya: &'static str,
}

/// Low-rank differences on linear, 1x1-conv and 3x3-conv layers of both networks.
const LOW_RANK: &[Edit] = &[
    Edit {
        component: "unet",
        name: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        sigma: &[0.4, 0.2, 0.1],
        kohya: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    },
    Edit {
        component: "unet",
        name: "up_blocks.2.attentions.1.proj_in.weight",
        sigma: &[0.3, 0.05],
        kohya: "lora_unet_up_blocks_2_attentions_1_proj_in",
    },
    Edit {
        component: "unet",
        name: "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        sigma: &[0.5, 0.25, 0.125, 0.0625],
        kohya: "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
    },
    Edit {
        component: "unet",
        name: "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        sigma: &[0.2],
        kohya: "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
    },
    Edit {
        component: "unet",
        name: "down_blocks.1.resnets.0.conv1.weight",
        sigma: &[0.3, 0.15],
        kohya: "lora_unet_down_blocks_1_resnets_0_conv1",
    },
    Edit {
        component: "unet",
        name: "down_blocks.0.downsamplers.0.conv.weight",
        sigma: &[0.2, 0.1, 0.05],
        kohya: "lora_unet_down_blocks_0_downsamplers_0_conv",
    },
    Edit {
        component: "unet",
        name: "down_blocks.0.resnets.1.time_emb_proj.weight",
        sigma: &[0.1],
        kohya: "lora_unet_down_blocks_0_resnets_1_time_emb_proj",
    },
    Edit {
        component: "text_encoder",
        name: "text_model.encoder.layers.1.mlp.fc1.weight",
        sigma: &[0.3, 0.12],
        kohya: "lora_te_text_model_encoder_layers_1_mlp_fc1",
    },
    Edit {
        component: "text_encoder",
        name: "text_model.encoder.layers.2.self_attn.v_proj.weight",
        sigma: &[0.2, 0.15, 0.1],
        kohya: "lora_te_text_model_encoder_layers_2_self_attn_v_proj",
    },
];

/// A small full-rank difference (uniform in ±1e-3).
const FULL_RANK: Edit = Edit {
    component: "unet",
    name: "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v.weight",
    sigma: &[],
    kohya: "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v",
};

/// A bias change, which no LoRA carries.
const CHANGED_BIAS: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.bias";

fn component_file(dir: &Path, component: &str) -> PathBuf {
    match component {
        "unet" => dir.join("unet/diffusion_pytorch_model.safetensors"),
        _ => dir.join("text_encoder/model.safetensors"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// What to do to one tensor of a safetensors file.
enum Change {
    /// New values, stored as f32.
    F32(Vec<f32>),
    /// New values, stored as f16 (rounded).
    F16(Vec<f32>),
    /// Another shape and values, f32.
    Reshape(Vec<usize>, Vec<f32>),
    /// Drop it.
    Remove,
    /// A new tensor with this shape.
    Add(Vec<usize>),
}

/// Rewrites `file` with `changes` applied; every other tensor keeps its bytes and dtype.
fn rewrite(file: &Path, changes: HashMap<String, Change>) {
    let src = SafetensorsFile::open(file).expect("open");
    let mut tensors = Vec::new();
    let mut names = src.tensor_names();
    names.sort();
    let f32_tensor = |name: &str, shape: Vec<usize>, v: &[f32]| RawTensor {
        name: name.to_string(),
        dtype: StoredDType::F32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    for name in &names {
        let info = src.tensor_info(name).expect("info");
        let shape = info.shape.dims().to_vec();
        match changes.get(name) {
            None => tensors.push(RawTensor {
                name: name.clone(),
                dtype: info.dtype,
                shape,
                data: src.read_bytes(name).expect("bytes"),
            }),
            Some(Change::F32(v)) => tensors.push(f32_tensor(name, shape, v)),
            Some(Change::F16(v)) => tensors.push(RawTensor {
                name: name.clone(),
                dtype: StoredDType::F16,
                shape,
                data: v
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
            }),
            Some(Change::Reshape(s, v)) => tensors.push(f32_tensor(name, s.clone(), v)),
            Some(Change::Remove) | Some(Change::Add(_)) => {}
        }
    }
    for (name, change) in &changes {
        if let Change::Add(shape) = change {
            let n: usize = shape.iter().product();
            tensors.push(f32_tensor(name, shape.clone(), &vec![0.25; n]));
        }
    }
    let meta = src.metadata();
    drop(src);
    write_safetensors_raw(file, &tensors, Some(&meta)).expect("write");
}

fn read_f32(file: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let src = SafetensorsFile::open(file).expect("open");
    let info = src.tensor_info(name).expect("tensor");
    (
        info.shape.dims().to_vec(),
        src.read_f32(name).expect("values"),
    )
}

/// The fine-tune: `tiny-sd` with the edits applied, as an f32 diffusers folder.
struct Tuned {
    dir: PathBuf,
    /// Per edited parameter: the ΔW put in (f64, exact) and the stored W_tuned − W_base (the
    /// same plus the f32 rounding of W_tuned), both `[rows, cols]`.
    deltas: BTreeMap<&'static str, (Vec<f64>, Vec<f64>)>,
}

fn make_tuned(tag: &str) -> Tuned {
    let dir = common::tempdir(&format!("extract-{tag}")).join("tuned");
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixture("tiny-sd"), &dir);
    let mut deltas = BTreeMap::new();
    let mut changes: HashMap<&str, HashMap<String, Change>> = HashMap::new();
    for (i, edit) in LOW_RANK.iter().chain([&FULL_RANK]).enumerate() {
        let (shape, base) = read_f32(&component_file(&dir, edit.component), edit.name);
        let rows = shape[0];
        let cols = base.len() / rows;
        let delta = if edit.sigma.is_empty() {
            let mut rng = Rng(100 + i as u64);
            (0..rows * cols).map(|_| 1e-3 * rng.next()).collect()
        } else {
            low_rank(10 + i as u64, rows, cols, edit.sigma)
        };
        let tuned: Vec<f32> = base
            .iter()
            .zip(&delta)
            .map(|(&w, d)| (f64::from(w) + d) as f32)
            .collect();
        let stored: Vec<f64> = base
            .iter()
            .zip(&tuned)
            .map(|(&w, &t)| f64::from(t) - f64::from(w))
            .collect();
        deltas.insert(edit.name, (delta, stored));
        changes
            .entry(edit.component)
            .or_default()
            .insert(edit.name.to_string(), Change::F32(tuned));
    }
    let unet = component_file(&dir, "unet");
    let (_, bias) = read_f32(&unet, CHANGED_BIAS);
    changes.entry("unet").or_default().insert(
        CHANGED_BIAS.to_string(),
        Change::F32(bias.iter().map(|b| b + 0.01).collect()),
    );
    for (component, c) in changes {
        rewrite(&component_file(&dir, component), c);
    }
    Tuned { dir, deltas }
}

// ---------------------------------------------------------------------------------------------
// Reading the LoRA file

/// `(dtype, shape, values)` of every tensor, and the metadata.
struct LoraFile {
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<f32>)>,
    metadata: HashMap<String, String>,
    bytes: Vec<u8>,
}

fn read_lora(path: &Path) -> LoraFile {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let values = match v.dtype() {
                Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (v.dtype(), v.shape().to_vec(), values))
        })
        .collect();
    LoraFile {
        tensors,
        metadata,
        bytes,
    }
}

impl LoraFile {
    /// `(rank, alpha, up [out, r], down [r, cols])` of a layer, checking the shape layout.
    fn layer(&self, kohya: &str, weight_shape: &[usize]) -> (usize, f32, Vec<f32>, Vec<f32>) {
        let get = |suffix: &str| {
            self.tensors
                .get(&format!("{kohya}.{suffix}"))
                .unwrap_or_else(|| panic!("{kohya}.{suffix} missing"))
        };
        let (_, down_shape, down) = get("lora_down.weight");
        let (_, up_shape, up) = get("lora_up.weight");
        let (_, alpha_shape, alpha) = get("alpha");
        let r = down_shape[0];
        assert_eq!(alpha_shape, &Vec::<usize>::new(), "{kohya}: alpha is 0-dim");
        let mut want_down = weight_shape.to_vec();
        want_down[0] = r;
        assert_eq!(down_shape, &want_down, "{kohya}: down shape");
        let want_up = if weight_shape.len() == 4 {
            vec![weight_shape[0], r, 1, 1]
        } else {
            vec![weight_shape[0], r]
        };
        assert_eq!(up_shape, &want_up, "{kohya}: up shape");
        (r, alpha[0], up.clone(), down.clone())
    }

    /// sha256 of the bytes after the header, as `sshs_model_hash` should be.
    fn data_sha256(&self) -> String {
        let mut n = [0u8; 8];
        n.copy_from_slice(&self.bytes[..8]);
        let header = u64::from_le_bytes(n) as usize;
        Sha256::digest(&self.bytes[8 + header..])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The largest ratio of |scale·up·down − ΔW| to its bound, element by element (must be ≤ 1).
///
/// Bound: the LoRA approximates the stored difference ΔW' = ΔW + e, where e is the f32 rounding
/// of W_tuned (|e_ij| ≤ 2⁻²⁴·|W_tuned,ij|, known exactly here). With a rank at least ΔW's, the
/// best approximation is within σ_{r+1}(ΔW') ≤ ‖e‖₂ ≤ ‖e‖_F of ΔW' in the spectral norm (Weyl),
/// which bounds each element; so |approx − ΔW| ≤ ‖e‖_F + |e_ij|. Rounding the factors to their
/// stored dtype (unit roundoff u: 2⁻²⁴ for f32, 2⁻¹¹ for f16) moves each product term
/// `up_ik·down_kj` by at most (2u + u²)·|up_ik·down_kj|. The f64 SVD adds ~1e-15·‖ΔW‖
/// (allowed: 1e-12 of max |ΔW|).
fn error_to_bound(
    up: &[f32],
    down: &[f32],
    rank: usize,
    scale: f64,
    delta: &[f64],
    stored: &[f64],
    unit_roundoff: f64,
) -> f64 {
    let cols = delta.len() / (up.len() / rank);
    let e: Vec<f64> = stored.iter().zip(delta).map(|(s, d)| s - d).collect();
    let e_frob = e.iter().map(|x| x * x).sum::<f64>().sqrt();
    let max_delta = delta.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut worst: f64 = 0.0;
    for (idx, (&d, e_ij)) in delta.iter().zip(&e).enumerate() {
        let (i, j) = (idx / cols, idx % cols);
        let (mut p, mut magnitude) = (0.0f64, 0.0f64);
        for k in 0..rank {
            let term = f64::from(up[i * rank + k]) * f64::from(down[k * cols + j]) * scale;
            p += term;
            magnitude += term.abs();
        }
        let bound = e_frob
            + e_ij.abs()
            + (2.0 * unit_roundoff + unit_roundoff * unit_roundoff) * magnitude * 1.0001
            + 1e-12 * max_delta;
        worst = worst.max((p - d).abs() / bound);
    }
    worst
}

fn extract(base: &Path, tuned: &Path, options: &ExtractOptions) -> ExtractedLora {
    extract_lora(base, tuned, options, &mut |_| true).expect("extract")
}

fn out_dir(tag: &str) -> PathBuf {
    common::tempdir(&format!("extract-{tag}"))
}

fn fixed(rank: usize) -> ExtractOptions {
    ExtractOptions {
        rank: RankRule::Fixed(rank),
        conv_rank: Some(RankRule::Fixed(rank)),
        ..ExtractOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Library

#[test]
fn factors_reproduce_each_difference_to_rounding_when_the_rank_suffices() {
    let tuned = make_tuned("fixed");
    let lora = extract(&fixture("tiny-sd"), &tuned.dir, &fixed(4));
    for (dtype, unit_roundoff, tag) in [
        (WriteDType::F32, 2f64.powi(-24), "f32"),
        (WriteDType::F16, 2f64.powi(-11), "f16"),
    ] {
        let path = out_dir("fixed").join(format!("lora-{tag}.safetensors"));
        let written = lora.save(&path, dtype).expect("save");
        let file = read_lora(&path);
        for edit in LOW_RANK {
            let shape = &lora
                .layers
                .iter()
                .find(|l| l.name() == edit.kohya)
                .unwrap_or_else(|| panic!("{} not extracted", edit.kohya))
                .weight_shape;
            let (r, alpha, up, down) = file.layer(edit.kohya, shape);
            assert_eq!(r, 4.min(shape[0]), "{}", edit.kohya);
            assert_eq!(alpha, r as f32, "{}: alpha = rank", edit.kohya);
            let (delta, stored) = &tuned.deltas[edit.name];
            let worst = error_to_bound(
                &up,
                &down,
                r,
                f64::from(alpha) / r as f64,
                delta,
                stored,
                unit_roundoff,
            );
            eprintln!("{tag} {}: error/bound {worst:.3}", edit.kohya);
            assert!(worst <= 1.0, "{tag} {}: error exceeds bound", edit.kohya);
        }
        // Metadata as kohya writes it and A1111 reads it; the addnet hash of the tensor bytes.
        let m = &file.metadata;
        assert_eq!(&written.into_iter().collect::<HashMap<_, _>>(), m);
        for (key, want) in [
            ("ss_network_module", "networks.lora"),
            ("ss_network_dim", "4"),
            ("ss_network_alpha", "4.0"),
            ("ss_network_args", r#"{"conv_alpha":"4.0","conv_dim":"4"}"#),
            ("ss_base_model_version", "sd_v1"),
            ("ss_v2", "False"),
            ("ss_output_name", &format!("lora-{tag}")),
            ("ss_sd_model_name", "tiny-sd"),
            ("modelspec.architecture", "stable-diffusion-v1/lora"),
        ] {
            assert_eq!(m.get(key).map(String::as_str), Some(want), "{key}");
        }
        assert_eq!(m["sshs_model_hash"], file.data_sha256());
        let expected_dtype = if tag == "f32" { Dtype::F32 } else { Dtype::F16 };
        assert!(file.tensors.values().all(|t| t.0 == expected_dtype));
        assert_eq!(file.tensors.len(), 3 * lora.layers.len());
    }

    // The full-rank difference keeps its four largest singular directions: the residual is
    // what the dropped singular values say (Eckart–Young), up to the f32 rounding of the
    // factors (bounded as above, summed in quadrature: below 1e-6 of ‖ΔW‖ here).
    let layer = lora
        .layers
        .iter()
        .find(|l| l.name() == FULL_RANK.kohya)
        .expect("full-rank layer");
    assert_eq!(layer.rank(), 4);
    let (_, stored) = &tuned.deltas[FULL_RANK.name];
    let f = &layer.factors;
    let residual = stored
        .iter()
        .enumerate()
        .map(|(idx, d)| {
            let (i, j) = (idx / f.cols, idx % f.cols);
            let p: f64 = (0..4)
                .map(|k| f64::from(f.up[i * 4 + k]) * f64::from(f.down[k * f.cols + j]))
                .sum();
            (d - p).powi(2)
        })
        .sum::<f64>()
        .sqrt();
    let norm = stored.iter().map(|x| x * x).sum::<f64>().sqrt();
    eprintln!(
        "full-rank layer: residual {residual:.6e}, dropped singular values {:.6e}, kept energy {:.4}",
        f.residual_norm(),
        f.kept_energy()
    );
    assert!((residual - f.residual_norm()).abs() <= 1e-6 * norm);
    assert!(
        f.kept_energy() < 0.5,
        "32 similar directions: 4 keep far less than half"
    );

    // Every other LoRA layer is identical and reported so; the bias is reported as not carried.
    assert_eq!(lora.layers.len(), LOW_RANK.len() + 1);
    assert!(!lora.skipped.is_empty());
    assert!(
        lora.skipped
            .iter()
            .all(|s| s.reason == SkipReason::Identical)
    );
    let uncovered: Vec<_> = lora.uncovered.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(uncovered, [CHANGED_BIAS]);
    assert!((lora.uncovered[0].max_abs_diff - 0.01).abs() < 1e-6);
    let _ = std::fs::remove_dir_all(tuned.dir.parent().expect("dir"));
}

/// The smallest rank whose squared singular values reach `fraction` of their sum.
fn energy_rank(sigma: &[f64], fraction: f64) -> usize {
    let total: f64 = sigma.iter().map(|s| s * s).sum();
    let mut kept = 0.0;
    for (i, s) in sigma.iter().enumerate() {
        kept += s * s;
        if kept >= fraction * total {
            return i + 1;
        }
    }
    sigma.len()
}

#[test]
fn energy_rule_picks_the_rank_the_singular_values_call_for() {
    let tuned = make_tuned("energy");
    // 0.9 lies between cumulative fractions of every edit (none closer than 0.04); at
    // 1 − 1e-6 every component counts (the smallest carries 2.7% of its layer) while the f32
    // rounding of W_tuned carries about 1e-10.
    for fraction in [0.9, 1.0 - 1e-6] {
        let rule = RankRule::Energy {
            fraction,
            max_rank: 16,
        };
        let options = ExtractOptions {
            rank: rule,
            conv_rank: Some(rule),
            ..ExtractOptions::default()
        };
        let lora = extract(&fixture("tiny-sd"), &tuned.dir, &options);
        for edit in LOW_RANK {
            let layer = lora
                .layers
                .iter()
                .find(|l| l.name() == edit.kohya)
                .expect("layer");
            let want = energy_rank(edit.sigma, fraction);
            assert_eq!(layer.rank(), want, "{} at {fraction}", edit.kohya);
            let exact = edit.sigma[..want].iter().map(|s| s * s).sum::<f64>()
                / edit.sigma.iter().map(|s| s * s).sum::<f64>();
            // f32 storage of W_tuned perturbs the energy by about 1e-10.
            assert!((layer.factors.kept_energy() - exact).abs() < 1e-8);
        }
        let full = lora
            .layers
            .iter()
            .find(|l| l.name() == FULL_RANK.kohya)
            .expect("layer");
        assert!(full.factors.kept_energy() >= fraction || full.rank() == 16);
        let path = out_dir("energy").join("lora.safetensors");
        lora.save(&path, WriteDType::F32).expect("save");
        let file = read_lora(&path);
        assert_eq!(file.metadata["ss_network_dim"], "Dynamic");
        assert_eq!(file.metadata["ss_network_alpha"], "Dynamic");
        for layer in &lora.layers {
            let (r, alpha, _, _) = file.layer(&layer.name(), &layer.weight_shape);
            assert_eq!((r, alpha), (layer.rank(), layer.rank() as f32));
        }
    }
    let _ = std::fs::remove_dir_all(tuned.dir.parent().expect("dir"));
}

/// `up·down` of every layer, by name.
fn products(lora: &ExtractedLora) -> BTreeMap<String, Vec<f64>> {
    lora.layers
        .iter()
        .map(|l| {
            let f = &l.factors;
            let mut p = vec![0.0; f.rows * f.cols];
            for i in 0..f.rows {
                for k in 0..f.rank {
                    let u = f64::from(f.up[i * f.rank + k]);
                    for j in 0..f.cols {
                        p[i * f.cols + j] += u * f64::from(f.down[k * f.cols + j]);
                    }
                }
            }
            (l.name(), p)
        })
        .collect()
}

#[test]
fn every_layout_gives_the_same_lora() {
    // The fixture's single files hold the folder's values exactly (f16 and pickle), so the
    // differences, and the LoRA, are the same whichever base layout is read. The balanced split
    // and a UNet-only extraction change the factors, not the products.
    let tuned = make_tuned("layouts");
    let want = products(&extract(&fixture("tiny-sd"), &tuned.dir, &fixed(4)));
    for base in ["tiny-sd.safetensors", "tiny-sd.ckpt"] {
        let got = products(&extract(&fixture(base), &tuned.dir, &fixed(4)));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (name, p) in &got {
            let d = p
                .iter()
                .zip(&want[name])
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            // Same inputs, so the same decomposition but for the order of parallel sums.
            assert!(d <= 1e-7, "{base}: {name} differs by {d}");
        }
    }
    let balanced = ExtractOptions {
        split: FactorSplit::Balanced,
        text_encoder: false,
        ..fixed(4)
    };
    let lora = extract(&fixture("tiny-sd"), &tuned.dir, &balanced);
    assert!(
        lora.layers
            .iter()
            .all(|l| l.name().starts_with("lora_unet_"))
    );
    let te_uncovered = lora
        .uncovered
        .iter()
        .filter(|u| u.name.starts_with("text_model."))
        .count();
    assert_eq!(
        te_uncovered, 2,
        "the skipped text encoder's differences are reported"
    );
    for (name, p) in products(&lora) {
        let d = p
            .iter()
            .zip(&want[&name])
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        // Both products are ΔW to f32 rounding of the factors (|ΔW| ≤ 0.5 here).
        assert!(d <= 1e-6, "balanced: {name} differs by {d}");
    }
    let _ = std::fs::remove_dir_all(tuned.dir.parent().expect("dir"));
}

#[test]
fn negligible_differences_are_skipped_with_their_reason() {
    // Base: tiny-sd with one layer moved by amounts f16 cannot represent. Fine-tune: that layer
    // stored in f16 (as a half-precision save of the base would), one layer moved by at most
    // 1e-3, one by a rank-1 difference.
    let root = out_dir("negligible");
    let base = root.join("base");
    let _ = std::fs::remove_dir_all(&base);
    copy_dir(&fixture("tiny-sd"), &base);
    let rounded = "text_model.encoder.layers.0.mlp.fc2.weight";
    let small = "text_model.encoder.layers.3.self_attn.k_proj.weight";
    let te = component_file(&base, "text_encoder");
    let (_, w) = read_f32(&te, rounded);
    let mut rng = Rng(7);
    let moved: Vec<f32> = w
        .iter()
        .map(|&v| v * (1.0 + 1e-5 * rng.next() as f32))
        .collect();
    assert!(moved.iter().any(|&v| half::f16::from_f32(v).to_f32() != v));
    rewrite(
        &te,
        HashMap::from([(rounded.to_string(), Change::F32(moved.clone()))]),
    );
    let tuned = make_tuned("negligible");
    let (_, k) = read_f32(&component_file(&tuned.dir, "text_encoder"), small);
    rewrite(
        &component_file(&tuned.dir, "text_encoder"),
        HashMap::from([
            (rounded.to_string(), Change::F16(moved)),
            (
                small.to_string(),
                Change::F32(k.iter().map(|v| v + 1e-3 * rng.next() as f32).collect()),
            ),
        ]),
    );
    let options = ExtractOptions {
        min_diff: 2e-3,
        ..fixed(4)
    };
    let lora = extract(&base, &tuned.dir, &options);
    let reason = |name: &str| {
        lora.skipped
            .iter()
            .find(|s| s.target.weight_name() == name)
            .map(|s| s.reason)
    };
    assert_eq!(
        reason(rounded),
        Some(SkipReason::EqualAtPrecision {
            dtype: StoredDType::F16
        })
    );
    assert!(matches!(
        reason(small),
        Some(SkipReason::BelowMinDiff { max_abs_diff }) if max_abs_diff > 0.0 && max_abs_diff <= 1e-3
    ));
    assert_eq!(
        reason("text_model.encoder.layers.0.self_attn.q_proj.weight"),
        Some(SkipReason::Identical)
    );
    // The full-rank edit (at most 1e-3) is within --min-diff too; the low-rank ones are not.
    assert!(matches!(
        reason(FULL_RANK.name),
        Some(SkipReason::BelowMinDiff { .. })
    ));
    assert_eq!(lora.layers.len(), LOW_RANK.len());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn models_that_do_not_match_are_refused_naming_the_tensors() {
    let tuned = make_tuned("mismatch");
    let te = component_file(&tuned.dir, "text_encoder");
    rewrite(
        &te,
        HashMap::from([
            (
                "text_model.encoder.layers.0.self_attn.q_proj.weight".to_string(),
                Change::Reshape(vec![16, 8], vec![0.5; 128]),
            ),
            (
                "text_model.encoder.layers.3.mlp.fc2.weight".to_string(),
                Change::Remove,
            ),
        ]),
    );
    let err = extract_lora(fixture("tiny-sd"), &tuned.dir, &fixed(4), &mut |_| true)
        .expect_err("refused");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert_eq!(err.kind(), ErrorKind::InvalidModel);
    for part in [
        "does not match the base model",
        "2 differences",
        "text_model.encoder.layers.0.self_attn.q_proj.weight` is [16, 16] in the base and [16, 8] here",
        "text_model.encoder.layers.3.mlp.fc2.weight` [16, 37] is missing",
        tuned.dir.to_str().expect("utf-8"),
    ] {
        assert!(msg.contains(part), "`{part}` not in: {msg}");
    }

    // SDXL (an added-conditioning embedding in the UNet) is refused as unsupported.
    let sdxl = make_tuned("sdxl");
    rewrite(
        &component_file(&sdxl.dir, "unet"),
        HashMap::from([(
            "add_embedding.linear_1.weight".to_string(),
            Change::Add(vec![4, 4]),
        )]),
    );
    let err =
        extract_lora(fixture("tiny-sd"), &sdxl.dir, &fixed(4), &mut |_| true).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("SDXL"), "{err}");

    // Invalid options name the option.
    let err = extract_lora(
        fixture("tiny-sd"),
        &sdxl.dir,
        &ExtractOptions {
            min_diff: -1.0,
            ..fixed(4)
        },
        &mut |_| true,
    )
    .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("min_diff"), "{err}");
    let _ = std::fs::remove_dir_all(tuned.dir.parent().expect("dir"));
    let _ = std::fs::remove_dir_all(sdxl.dir.parent().expect("dir"));
}

#[test]
fn progress_reports_every_tensor_and_can_cancel() {
    let tuned = make_tuned("progress");
    let mut seen = Vec::new();
    extract_lora(fixture("tiny-sd"), &tuned.dir, &fixed(2), &mut |p| {
        seen.push((p.step, p.total));
        true
    })
    .expect("extract");
    let total = seen[0].1;
    assert_eq!(seen.len(), total);
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, &(s, t))| s == i + 1 && t == total)
    );
    let err = extract_lora(fixture("tiny-sd"), &tuned.dir, &fixed(2), &mut |p| {
        p.step < 3
    })
    .expect_err("cancelled");
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let _ = std::fs::remove_dir_all(tuned.dir.parent().expect("dir"));
}

// ---------------------------------------------------------------------------------------------
// The command-line front

fn run(args: &[&str]) -> Output {
    common::example("extract_lora")
        .args(args)
        .output()
        .expect("run extract_lora")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn cli_writes_the_lora_and_summarises_it() {
    let tuned = make_tuned("cli");
    let out = tuned
        .dir
        .parent()
        .expect("dir")
        .join("cli-lora.safetensors");
    let base = fixture("tiny-sd");
    let o = run(&[
        "--base",
        p(&base),
        "--tuned",
        p(&tuned.dir),
        "--output",
        p(&out),
        "--energy",
        "0.9",
        "--max-rank",
        "3",
        "--conv",
        "--dtype",
        "f32",
    ]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}{}", text(&o.stderr));
    for part in [
        "wrote ",
        "10 layers (2 text encoder, 8 UNet), f32",
        "rule: energy 0.9 (max rank 3); 3x3 convolutions: energy 0.9 (max rank 3)",
        "ranks: min 1, median 2, max 3",
        "kept energy: mean ",
        "not carried by the LoRA: 1 other tensors differ",
        CHANGED_BIAS,
    ] {
        assert!(stdout.contains(part), "`{part}` not in:\n{stdout}");
    }
    let file = read_lora(&out);
    assert_eq!(file.tensors.len(), 30);
    assert!(file.tensors.values().all(|t| t.0 == Dtype::F32));

    // Without --conv, 3x3 differences are reported as not carried; default dtype f16.
    let o = run(&[
        "--base",
        p(&base),
        "--tuned",
        p(&tuned.dir),
        "--output",
        p(&out),
        "--rank",
        "2",
    ]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}{}", text(&o.stderr));
    assert!(
        stdout.contains("7 layers (2 text encoder, 5 UNet), f16"),
        "{stdout}"
    );
    assert!(stdout.contains("4 other tensors differ"), "{stdout}");
    assert!(stdout.contains("add --conv"), "{stdout}");
    assert!(
        stdout.contains("down_blocks.1.resnets.0.conv1.weight"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(tuned.dir.parent().expect("dir"));
}

#[test]
fn cli_refuses_mismatched_models_and_identical_ones_with_exit_1() {
    let tuned = make_tuned("cli-refuse");
    rewrite(
        &component_file(&tuned.dir, "unet"),
        HashMap::from([(
            "mid_block.attentions.0.proj_out.weight".to_string(),
            Change::Reshape(vec![32, 16, 1, 1], vec![0.5; 512]),
        )]),
    );
    let out = tuned.dir.parent().expect("dir").join("x.safetensors");
    let o = run(&[
        "--base",
        p(&fixture("tiny-sd")),
        "--tuned",
        p(&tuned.dir),
        "--output",
        p(&out),
    ]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused")
            && stderr.contains("mid_block.attentions.0.proj_out.weight` is [32, 32, 1, 1] in the base and [32, 16, 1, 1] here"),
        "{stderr}"
    );
    assert!(!out.exists());

    // The same weights in two layouts: nothing to extract.
    let o = run(&[
        "--base",
        p(&fixture("tiny-sd.ckpt")),
        "--tuned",
        p(&fixture("tiny-sd")),
        "--output",
        p(&out),
    ]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing written"), "{stderr}");
    assert!(!out.exists());

    // A file that is not a model is refused (exit 1).
    let junk = tuned.dir.parent().expect("dir").join("junk.safetensors");
    std::fs::write(&junk, b"not a model at all").expect("write");
    let o = run(&[
        "--base",
        p(&fixture("tiny-sd")),
        "--tuned",
        p(&junk),
        "--output",
        p(&out),
    ]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("junk.safetensors"), "{stderr}");
    let _ = std::fs::remove_dir_all(tuned.dir.parent().expect("dir"));
}

#[test]
fn cli_usage_and_io_errors_exit_2() {
    let dir = out_dir("cli-usage");
    let out = dir.join("x.safetensors");
    let base = fixture("tiny-sd");
    let tuned = fixture("tiny-sd.safetensors");
    let (b, t, o) = (p(&base), p(&tuned), p(&out));
    let cases: &[(&[&str], &str)] = &[
        (&["--base", b, "--tuned", t], "--output is required"),
        (&["--tuned", t, "--output", o], "--base is required"),
        (
            &["--base", b, "--tuned", t, "--output", o, "--rank", "0"],
            "--rank `0`",
        ),
        (
            &["--base", b, "--tuned", t, "--output", o, "--rank", "x"],
            "--rank `x`",
        ),
        (
            &[
                "--base", b, "--tuned", t, "--output", o, "--rank", "4", "--energy", "0.9",
            ],
            "exclude each other",
        ),
        (
            &["--base", b, "--tuned", t, "--output", o, "--energy", "1.5"],
            "--energy `1.5`",
        ),
        (
            &["--base", b, "--tuned", t, "--output", o, "--max-rank", "8"],
            "goes with --energy",
        ),
        (
            &["--base", b, "--tuned", t, "--output", o, "--dtype", "f8"],
            "--dtype `f8`",
        ),
        (
            &["--base", b, "--tuned", t, "--output", o, "--min-diff", "-1"],
            "--min-diff `-1`",
        ),
        (
            &["--base", b, "--tuned", t, "--output", o, "--split", "down"],
            "--split `down`",
        ),
        (
            &["--base", b, "--tuned", t, "--output", o, "--frobnicate"],
            "unknown option",
        ),
        (
            &["--base", b, "--tuned", t, "--output", "lora.pt"],
            "as .safetensors",
        ),
        (
            &["--base", b, "--tuned", b, "--output", o],
            "the same model",
        ),
        (
            &["--base", b, "--tuned", t, "--output", o, "--rank"],
            "--rank needs a value",
        ),
        // Unreadable: a missing model, an output directory that does not exist.
        (
            &[
                "--base",
                "/nonexistent/model.safetensors",
                "--tuned",
                t,
                "--output",
                o,
            ],
            "file not found: /nonexistent/model.safetensors",
        ),
    ];
    for (args, want) in cases {
        let r = run(args);
        let stderr = text(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: `{want}` not in {stderr}");
    }
    let tuned = make_tuned("cli-io");
    let r = run(&[
        "--base",
        b,
        "--tuned",
        p(&tuned.dir),
        "--output",
        "/nonexistent/dir/lora.safetensors",
    ]);
    let stderr = text(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/dir/lora.safetensors"),
        "{stderr}"
    );
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("--energy F"));
    let _ = std::fs::remove_dir_all(tuned.dir.parent().expect("dir"));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// What diffusers makes of an extracted LoRA

#[test]
fn diffusers_reading_of_the_committed_lora_is_reproduced() -> sd_core::Result<()> {
    // tools/check_extract_diffusers.py extracted this LoRA from a fine-tune with 18 low-rank
    // differences, had diffusers load it into the base (`load_lora_weights`) and recorded the
    // patched text encoder's and UNet's outputs in float64; there they match the fine-tune's to
    // 3e-8. Read by the project's own LoRA loader, it must give the same outputs: tolerance
    // 1e-5 of the largest magnitude, as for the models' own parity with diffusers (float32
    // against float64 is about 1e-6; a layer merged into the wrong parameter, transposed or
    // scaled moves the outputs by more than 1e-2).
    let r = Reference::open("extract_lora.safetensors");
    let path = fixture("extract/lora_rank4_conv.safetensors");
    let lora = read_lora(&path);
    assert_eq!(lora.metadata["ss_network_module"], "networks.lora");
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())?;
    let mut text_encoder = pipe.text_encoder().clone();
    let mut unet = pipe.unet().clone();
    let loaded = Arc::new(sd_core::adapters::Lora::open(&path)?);
    let report = sd_core::adapters::apply_loras(
        &[sd_core::adapters::LoraUse::new(loaded, 1.0)],
        &mut text_encoder,
        &mut unet,
    )?;
    let applied = &report.loras[0];
    assert_eq!(applied.applied.len(), 18);
    assert!(applied.skipped.is_empty(), "skipped: {:?}", applied.skipped);
    assert_eq!(
        3 * applied.applied.len(),
        lora.tensors.len(),
        "every layer of the file applied"
    );

    let ids: Vec<Vec<u32>> = r
        .int_rows("input_ids")
        .into_iter()
        .map(|row| row.into_iter().map(|v| v as u32).collect())
        .collect();
    let te_out = text_encoder.forward(&ids, 1)?;
    assert_close("text encoder + LoRA", &te_out, &r.tensor("te_out"), 1e-5);
    assert_close(
        "text encoder + LoRA vs fine-tune",
        &te_out,
        &r.tensor("te_tuned"),
        1e-5,
    );
    let t: f64 = r.meta("timestep").parse().expect("timestep");
    let out = unet.forward(&r.tensor("sample"), t, &r.tensor("te_out"))?;
    assert_close("UNet + LoRA", &out, &r.tensor("unet_out"), 1e-5);
    assert_close(
        "UNet + LoRA vs fine-tune",
        &out,
        &r.tensor("unet_tuned"),
        1e-5,
    );
    // The unpatched base is far from both: the comparison can fail.
    let base = pipe
        .unet()
        .forward(&r.tensor("sample"), t, &r.tensor("te_out"))?;
    assert!(common::relative_error(&base, &r.tensor("unet_out")) > 1e-2);
    Ok(())
}
