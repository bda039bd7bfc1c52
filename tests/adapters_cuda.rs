//! Textual-inversion embeddings and hypernetworks on a CUDA device, against the references the
//! CPU tests use (`tests/textual_inversion.rs`, `tests/hypernetwork.rs`).
//!
//! Built only with `--features cuda`; each test is skipped when no CUDA device is present. To run
//! the binary away from its source tree, point `SDRS_FIXTURES` at a copy of `tests/fixtures`.
#![cfg(feature = "cuda")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use safetensors::SafeTensors;
use sd_core::adapters::{Embedding, EmbeddingSet, Hypernetwork, HypernetworkStack};
use sd_core::models::{AttentionContextHook, InsertedVectors};
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::prompt::{ChunkOptions, tokenize_prompt};
use sd_core::{DType, Device, Result, Tensor};

/// f32 on the GPU: its GEMMs sum in another order than the CPU's.
const F32_TOLERANCE: f32 = 1e-5;
/// A context rounded to f16 before and after the (f32) hypernetwork.
const F16_TOLERANCE: f32 = 2e-3;

fn fixtures() -> PathBuf {
    std::env::var_os("SDRS_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        PathBuf::from,
    )
}

fn gpu() -> Option<Device> {
    if sd_core::cuda::cuda_available() {
        Some(Device::Cuda(0))
    } else {
        eprintln!("skipped: no CUDA driver or device");
        None
    }
}

/// The float tensors and metadata of a reference file.
struct Reference {
    tensors: BTreeMap<String, Tensor>,
    meta: BTreeMap<String, String>,
}

impl Reference {
    fn open(name: &str) -> Reference {
        let bytes = std::fs::read(fixtures().join("reference").join(name)).expect("reference");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut tensors = BTreeMap::new();
        for (k, v) in st.tensors() {
            if v.dtype() == safetensors::Dtype::F32 {
                let data = v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let t = Tensor::from_vec(data, v.shape().to_vec(), Device::Cpu).expect("tensor");
                tensors.insert(k, t);
            }
        }
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("metadata");
        let meta = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Reference { tensors, meta }
    }

    fn tensor(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("no {key}"))
    }

    fn json(&self, key: &str) -> serde_json::Value {
        serde_json::from_str(&self.meta[key]).expect("metadata JSON")
    }
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
    let g = got.to_device(Device::Cpu)?.to_vec()?;
    let w = want.to_vec()?;
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = g
        .iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let err = diff / scale;
    eprintln!("{what}: max |diff| / max |ref| = {err:.3e} (tolerance {tol:.0e})");
    assert!(err <= tol, "{what}: {err:.3e} exceeds {tol:.0e}");
    Ok(())
}

fn hypernetwork(name: &str, device: Device) -> Result<Arc<Hypernetwork>> {
    let hn = Hypernetwork::open(fixtures().join("hypernetwork").join(format!("{name}.pt")))?;
    Ok(Arc::new(hn.to_device(device)?))
}

#[test]
fn hypernetworks_on_the_gpu_match_a1111() -> Result<()> {
    let Some(device) = gpu() else { return Ok(()) };
    let r = Reference::open("hypernetwork.safetensors");
    let options = LoadOptions {
        device,
        ..LoadOptions::default()
    };
    let pipe = Pipeline::load(fixtures().join("tiny-sd"), &options)?;
    let sample = r.tensor("sample").to_device(device)?;
    let ehs = r.tensor("encoder_hidden_states").to_device(device)?;
    let t: f64 = r.meta["timestep"].parse().expect("timestep");
    let cases = r.json("unet_cases");
    for (case, chain) in cases.as_object().expect("cases") {
        let mut stack = HypernetworkStack::new();
        for entry in chain.as_array().expect("chain") {
            let name = entry[0].as_str().expect("name");
            #[allow(clippy::cast_possible_truncation)]
            let strength = entry[1].as_f64().expect("strength") as f32;
            stack.push(hypernetwork(name, device)?, strength)?;
        }
        let mut unet = pipe.unet().clone();
        unet.set_attention_context_hook(Some(Arc::new(stack)));
        let got = unet.forward(&sample, t, &ehs)?;
        check(
            &format!("cuda unet {case}"),
            &got,
            r.tensor(&format!("unet_{case}")),
            F32_TOLERANCE,
        )?;
    }

    let strength: f32 = r.meta["context_strength"].parse().expect("strength");
    let contexts = r.json("context_cases");
    for (name, widths) in contexts.as_object().expect("contexts") {
        let stack = HypernetworkStack::new().with(hypernetwork(name, device)?, strength)?;
        for w in widths.as_array().expect("widths") {
            let ctx = r.tensor(&format!("ctx{w}"));
            for dtype in [DType::F32, DType::F16] {
                let on_gpu = ctx.to_device(device)?.to_dtype(dtype)?;
                let (k, v) = stack.transform(&on_gpu)?.expect("module for this width");
                assert_eq!(k.dtype(), dtype, "{name}: the context's dtype is kept");
                let tol = if dtype == DType::F32 {
                    F32_TOLERANCE
                } else {
                    F16_TOLERANCE
                };
                for (side, got) in [("k", k), ("v", v)] {
                    let got = got.to_dtype(DType::F32)?;
                    let want = r.tensor(&format!("{side}_{name}_{w}"));
                    check(
                        &format!("cuda {dtype} {name} {w} ({side})"),
                        &got,
                        want,
                        tol,
                    )?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn embeddings_on_the_gpu_match_diffusers() -> Result<()> {
    let Some(device) = gpu() else { return Ok(()) };
    let r = Reference::open("textual_inversion.safetensors");
    let options = LoadOptions {
        device,
        ..LoadOptions::default()
    };
    let pipe = Pipeline::load(fixtures().join("tiny-sd"), &options)?;
    let files = r.json("files");
    let mut embeddings = Vec::new();
    for (file, listed) in files.as_object().expect("files") {
        let path = fixtures().join("ti").join(file);
        let trigger = listed["trigger"].as_str().expect("trigger");
        let e = if file == "raw-tensor.pt" {
            Embedding::open_with_token(path, trigger)?
        } else {
            Embedding::open(path)?
        };
        embeddings.push(Arc::new(e.to_device(device)?));
    }
    let encoder = pipe.text_encoder();
    let set = EmbeddingSet::new(pipe.tokenizer(), encoder.config().hidden_size, &embeddings);
    let prompts = r.json("prompts");
    for (i, prompt) in prompts.as_array().expect("prompts").iter().enumerate() {
        let prompt = prompt.as_str().expect("prompt");
        let tokenized = tokenize_prompt(
            pipe.tokenizer(),
            prompt,
            &ChunkOptions::default(),
            Some(&set),
        )?;
        let chunk = &tokenized.chunks[0];
        let inserts: Vec<InsertedVectors> = chunk
            .fixes
            .iter()
            .map(|f| InsertedVectors {
                sequence: 0,
                offset: f.offset,
                vectors: set.vectors(f.id).expect("fix").clone(),
            })
            .collect();
        let got = encoder.forward_with_vectors(std::slice::from_ref(&chunk.tokens), &inserts, 1)?;
        check(
            &format!("cuda prompt {i}"),
            &got,
            r.tensor(&format!("embeds_{i}")),
            F32_TOLERANCE,
        )?;
    }
    Ok(())
}
