//! The A1111 prompt path against a PyTorch re-implementation of AUTOMATIC1111's conditioning
//! (`tools/make_conditioning_fixtures.py`, float64 text encoder of the tiny fixture model): for
//! every case and every step, the positive parts and the negative prompt as A1111 hands them to
//! the UNet, after padding; the AND weights, `Pad conds`, `TI hashes` / `Emphasis` and the
//! extra-network tags.
//!
//! Tolerance: 1e-5 of the reference tensor's largest magnitude (float32 against a float64
//! reference of a four-layer encoder stays near 1e-6; a wrong emphasis mean, chunk boundary,
//! embedding offset or padding moves whole token vectors).

mod common;

use std::sync::Arc;

use common::{Reference, fixture, relative_error};
use sd_core::adapters::{Embedding, EmbeddingSet};
use sd_core::pipeline::conditioning::{EncodeOptions, ParsedPrompts};
use sd_core::pipeline::{GenerateRequest, LoadOptions, Pipeline};
use sd_core::prompt::{DEFAULT_COMMA_BACKTRACK, EmphasisMode};
use sd_core::{Result, Tensor};
use serde_json::Value;

const COND_TOL: f32 = 1e-5;

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
        .to_string()
}

fn number(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}")) as usize
}

fn embeddings(r: &Reference, meta: &Value) -> Vec<Arc<Embedding>> {
    let list = meta["embeddings"].as_array().expect("embeddings list");
    list.iter()
        .map(|e| {
            let name = text(e, "name");
            let vectors = r.tensor(&format!("embedding.{name}"));
            let embedding = Embedding::new(name, vectors).expect("embedding");
            Arc::new(embedding.with_hash(text(e, "hash")))
        })
        .collect()
}

/// Part `i` of a stacked reference `[n, tokens, width]` as `[1, tokens, width]`.
fn part(t: &Tensor, i: usize) -> Tensor {
    t.narrow(0, i, 1).expect("reference part")
}

#[test]
fn conditioning_matches_a1111_at_every_step() -> Result<()> {
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())?;
    let r = Reference::open("conditioning.safetensors");
    let meta: Value = serde_json::from_str(&r.meta("reference")).expect("reference JSON");
    let embeddings = embeddings(&r, &meta);
    let cases = meta["cases"].as_array().expect("cases");
    assert!(cases.len() >= 16, "{} cases", cases.len());
    let mut worst = 0.0f32;
    for case in cases {
        let name = text(case, "name");
        let mut req = GenerateRequest::new(text(case, "prompt"));
        req.negative_prompt = text(case, "negative_prompt");
        req.steps = number(case, "steps");
        req.clip_skip = number(case, "clip_skip");
        req.emphasis = EmphasisMode::from_name(&text(case, "emphasis")).expect("emphasis name");
        req.embeddings = embeddings.clone();
        // The text path alone: the prompt's <lora:…>/<hypernet:…> tags are parsed and returned,
        // not resolved (`Pipeline::conditioning` would look them up and patch the encoder).
        let parsed = ParsedPrompts::parse(
            &req.prompt,
            &req.negative_prompt,
            req.steps,
            req.prompt_syntax,
        )?;
        let set = EmbeddingSet::new(
            pipe.tokenizer(),
            pipe.text_encoder().config().hidden_size,
            &req.embeddings,
        );
        let cond = parsed.encode(
            pipe.tokenizer(),
            pipe.text_encoder(),
            &set,
            &EncodeOptions {
                clip_skip: req.clip_skip,
                emphasis: req.emphasis,
                comma_backtrack: DEFAULT_COMMA_BACKTRACK,
                guidance_scale: req.guidance_scale,
            },
        )?;

        let weights: Vec<f64> = case["weights"]
            .as_array()
            .expect("weights")
            .iter()
            .map(|w| w.as_str().and_then(|s| s.parse().ok()).expect("weight"))
            .collect();
        let calls = case["calls"].as_array().expect("calls");
        assert_eq!(calls.len(), req.steps + 1, "{name}: steps");
        let mut padded = false;
        for (k, call) in calls.iter().enumerate() {
            let keys: Vec<&str> = call
                .as_array()
                .expect("call")
                .iter()
                .map(|v| v.as_str().expect("tensor name"))
                .collect();
            let (want_cond, want_uncond) = (r.tensor(keys[0]), r.tensor(keys[1]));
            let s = cond.at_step(k)?;
            padded |= s.padded;
            assert_eq!(s.weights, weights, "{name}: AND weights");
            assert_eq!(s.conds.len(), want_cond.dims()[0], "{name}: parts");
            for (i, got) in s.conds.iter().enumerate() {
                let err = relative_error(got, &part(&want_cond, i));
                worst = worst.max(err);
                assert!(
                    err <= COND_TOL,
                    "{name}, step {k}, part {i}: relative error {err:.3e} exceeds {COND_TOL:.0e}"
                );
            }
            let got = s.uncond.expect("guided conditioning has an uncond");
            let err = relative_error(&got, &want_uncond);
            worst = worst.max(err);
            assert!(
                err <= COND_TOL,
                "{name}, step {k}, negative: relative error {err:.3e} exceeds {COND_TOL:.0e}"
            );
        }
        assert_eq!(
            padded,
            case["padded"].as_bool().expect("padded"),
            "{name}: padding"
        );
        let infotext: Vec<(String, String)> =
            serde_json::from_value(case["infotext"].clone()).expect("infotext");
        assert_eq!(cond.infotext, infotext, "{name}: infotext entries");
        let tags: Vec<(String, Vec<String>)> = cond
            .extra_networks
            .iter()
            .map(|t| (t.kind.clone(), t.args.clone()))
            .collect();
        let want_tags: Vec<(String, Vec<String>)> =
            serde_json::from_value(case["tags"].clone()).expect("tags");
        assert_eq!(tags, want_tags, "{name}: extra-network tags");
    }
    eprintln!(
        "conditioning: {} cases, worst max |diff| / max |ref| = {worst:.3e} (tolerance {COND_TOL:.0e})",
        cases.len()
    );
    Ok(())
}
