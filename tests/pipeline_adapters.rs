//! Adapters in whole generations: a LoRA and a textual inversion against diffusers' own runs
//! (`tools/make_adapter_run_fixtures.py`), prompt tags resolved from folders exactly like the
//! same adapters given in the request, hypernetworks, the infotext A1111 writes for them, the
//! loaded model left untouched, two adapter sets generating at once on one model, and errors.
//!
//! Tolerance on the final latents against diffusers: 3e-5 of the reference's largest magnitude,
//! as for the runs without adapters (`tests/parity_pipeline.rs`).

mod common;

use std::sync::Arc;

use common::{Reference, assert_close, fixture};
use sd_core::adapters::{AdapterLibrary, Embedding, Hypernetwork, Lora, LoraUse};
use sd_core::pipeline::{
    GenerateRequest, Generation, HypernetworkUse, LoadOptions, Pipeline, PromptSyntax,
};
use sd_core::schedulers::SchedulerKind;
use sd_core::{ErrorKind, Tensor};

const RUN_TOL: f32 = 3e-5;

fn pipeline() -> Pipeline {
    Pipeline::load(fixture("tiny-sd"), &LoadOptions::default()).expect("load")
}

fn kohya() -> Arc<Lora> {
    Arc::new(Lora::open(fixture("lora/kohya_locon.safetensors")).expect("lora"))
}

fn hypernetwork() -> Arc<Hypernetwork> {
    Arc::new(Hypernetwork::open(fixture("hypernetwork/hn-swish-norm-dropout.pt")).expect("hn"))
}

fn library() -> Arc<AdapterLibrary> {
    Arc::new(
        AdapterLibrary::new()
            .with_lora_dir(fixture("lora"))
            .with_hypernetwork_dir(fixture("hypernetwork")),
    )
}

fn reference_request(r: &Reference, prompt_key: &str) -> GenerateRequest {
    let mut req = GenerateRequest::new(r.meta(prompt_key));
    req.negative_prompt = r.meta("negative_prompt");
    req.seed = r.meta("seed").parse().expect("seed");
    req.steps = r.meta("steps").parse().expect("steps");
    req.guidance_scale = r.meta("guidance").parse().expect("guidance");
    req.scheduler = r
        .meta("scheduler")
        .parse::<SchedulerKind>()
        .expect("scheduler");
    req.width = 64;
    req.height = 64;
    req
}

fn strengths(r: &Reference) -> (f32, f32) {
    (
        r.meta("te_strength").parse().expect("te"),
        r.meta("unet_strength").parse().expect("unet"),
    )
}

fn go(pipe: &Pipeline, req: &GenerateRequest) -> Generation {
    pipe.generate(req, &mut |_| true).expect("generate")
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.to_vec().expect("a") == b.to_vec().expect("b")
}

#[test]
fn lora_and_embedding_runs_match_diffusers() {
    let pipe = pipeline();
    let r = Reference::open("adapters_run.safetensors");
    let (te, unet) = strengths(&r);

    let mut req = reference_request(&r, "prompt_lora");
    req.loras = vec![LoraUse::with_strengths(kohya(), te, unet)];
    let run = go(&pipe, &req);
    assert_close(
        "kohya LoRA run",
        &run.latents,
        &r.tensor("latents_lora"),
        RUN_TOL,
    );
    let report = &run.adapters.loras.loras[0];
    assert!(!report.applied.is_empty(), "no module applied");
    assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);

    let mut req = reference_request(&r, "prompt_ti");
    req.loras = vec![LoraUse::with_strengths(kohya(), te, unet)];
    req.embeddings = vec![Arc::new(
        Embedding::open_with_token(fixture("ti/ti-alpha.pt"), "ti-alpha").expect("embedding"),
    )];
    let run = go(&pipe, &req);
    assert_close(
        "kohya LoRA + textual inversion run",
        &run.latents,
        &r.tensor("latents_lora_ti"),
        RUN_TOL,
    );
    assert_eq!(run.embeddings_used.len(), 1);
    assert!(
        run.infotexts[0].contains("TI hashes"),
        "{}",
        run.infotexts[0]
    );
}

#[test]
fn prompt_tags_act_like_request_adapters() {
    let pipe = pipeline();
    let mut by_request = GenerateRequest::new("a lighthouse at dusk");
    by_request.width = 64;
    by_request.height = 64;
    by_request.steps = 4;
    by_request.seed = 7;
    by_request.scheduler = SchedulerKind::EulerAncestral;
    by_request.loras = vec![LoraUse::with_strengths(kohya(), 0.5, 0.8)];
    by_request.hypernetworks = vec![HypernetworkUse::new(hypernetwork(), 0.7)];
    let a = go(&pipe, &by_request);

    let mut by_tags = by_request.clone();
    by_tags.loras.clear();
    by_tags.hypernetworks.clear();
    by_tags.prompt =
        "a lighthouse at dusk <lora:kohya_locon:0.5:0.8> <hypernet:hn-swish-norm-dropout:0.7>"
            .into();
    by_tags.adapter_library = Some(library());
    let b = go(&pipe, &by_tags);
    assert!(same(&a.latents, &b.latents), "tags and request differ");
    assert_eq!(b.extra_networks.len(), 2);

    // The infotext names the adapters as A1111 writes them: tags in the prompt and the LoRA's
    // short hash (the request's own adapters become tags too).
    let hash = kohya().short_hash().expect("hash").to_string();
    for (what, text) in [("request", &a.infotexts[0]), ("tags", &b.infotexts[0])] {
        assert!(
            text.contains("<lora:kohya_locon:0.5:0.8>"),
            "{what}: {text}"
        );
        assert!(
            text.contains("<hypernet:hn-swish-norm-dropout:0.7>"),
            "{what}: {text}"
        );
        assert!(
            text.contains(&format!("Lora hashes: \"kohya_locon: {hash}\"")),
            "{what}: {text}"
        );
    }

    // Each adapter changes the image; without them the loaded model is as it was.
    let mut plain = by_request.clone();
    plain.loras.clear();
    plain.hypernetworks.clear();
    let before = go(&pipe, &plain);
    let mut lora_only = by_request.clone();
    lora_only.hypernetworks.clear();
    let lora_run = go(&pipe, &lora_only);
    assert!(
        !same(&lora_run.latents, &before.latents),
        "the LoRA changed nothing"
    );
    assert!(
        !same(&lora_run.latents, &a.latents),
        "the hypernetwork changed nothing"
    );
    let fresh = pipeline();
    assert!(
        same(&go(&fresh, &plain).latents, &before.latents),
        "adapted generations changed the loaded model"
    );
    assert!(before.adapters.loras.loras.is_empty());
    assert!(before.adapters.hypernetworks.is_none());
    let hn = a
        .adapters
        .hypernetworks
        .as_ref()
        .expect("hypernetwork report");
    assert_eq!(hn.hypernetworks.len(), 1);
}

#[test]
fn two_adapter_sets_generate_at_once_on_one_model() {
    let pipe = Arc::new(pipeline());
    let base = {
        let mut r = GenerateRequest::new("a red fox in the snow");
        r.width = 64;
        r.height = 64;
        r.steps = 3;
        r.seed = 11;
        r
    };
    let mut with_lora = base.clone();
    with_lora.loras = vec![LoraUse::new(kohya(), 0.9)];
    let mut with_hn = base.clone();
    with_hn.hypernetworks = vec![HypernetworkUse::new(hypernetwork(), 1.0)];
    let requests = [base, with_lora, with_hn];
    let sequential: Vec<Tensor> = requests.iter().map(|r| go(&pipe, r).latents).collect();
    pipe.release_adapter_cache().expect("release");
    let handles: Vec<_> = requests
        .iter()
        .cloned()
        .map(|r| {
            let pipe = pipe.clone();
            std::thread::spawn(move || go(&pipe, &r).latents)
        })
        .collect();
    for (i, (h, want)) in handles.into_iter().zip(&sequential).enumerate() {
        let got = h.join().expect("thread");
        assert!(
            same(&got, want),
            "request {i} differs when run concurrently"
        );
    }
}

#[test]
fn adapter_errors_name_what_is_wrong() {
    let pipe = pipeline();
    let mut req = GenerateRequest::new("a cat <lora:no_such_lora:1>");
    req.width = 64;
    req.height = 64;
    req.steps = 2;
    let e = pipe.generate(&req, &mut |_| true).expect_err("no library");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("<lora:no_such_lora>"), "{e}");

    req.adapter_library = Some(library());
    let e = pipe
        .generate(&req, &mut |_| true)
        .expect_err("unknown name");
    assert!(e.to_string().contains("searched"), "{e}");

    req.prompt = "a cat <lora:kohya_locon:1:1:dyn=4>".into();
    let e = pipe.generate(&req, &mut |_| true).expect_err("dyn");
    assert!(e.to_string().contains("dyn"), "{e}");

    req.prompt = "a cat".into();
    req.loras = vec![LoraUse::new(kohya(), f32::NAN)];
    let e = pipe
        .generate(&req, &mut |_| true)
        .expect_err("NaN strength");
    assert!(e.to_string().contains("not a finite number"), "{e}");

    req.loras.clear();
    req.hypernetworks = vec![HypernetworkUse::new(hypernetwork(), f32::INFINITY)];
    let e = pipe
        .generate(&req, &mut |_| true)
        .expect_err("infinite strength");
    assert!(e.to_string().contains("hn-swish-norm-dropout"), "{e}");

    // Plain syntax leaves tags in the text: nothing is looked up.
    req.hypernetworks.clear();
    req.prompt = "a cat <lora:no_such_lora:1>".into();
    req.prompt_syntax = PromptSyntax::Plain;
    req.adapter_library = None;
    assert!(pipe.generate(&req, &mut |_| true).is_ok());
}

/// An embedding made for another model family is left out, as A1111 leaves it out, and the
/// generation says so: in its report and in the report's text, which the fronts print.
#[test]
fn embeddings_of_another_family_are_reported_as_skipped() {
    let pipe = pipeline();
    let mut req = GenerateRequest::new("ti-sdxl and ti-alpha");
    req.steps = 1;
    req.width = 64;
    req.height = 64;
    req.embeddings = vec![
        Arc::new(Embedding::open(fixture("ti/ti-sdxl.safetensors")).expect("sdxl embedding")),
        Arc::new(Embedding::open(fixture("ti/ti-alpha.pt")).expect("embedding")),
    ];
    let run = go(&pipe, &req);
    let skipped = &run.adapters.embeddings_skipped;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].name, "ti-sdxl");
    assert!(
        skipped[0].reason.contains("another model family"),
        "{}",
        skipped[0].reason
    );
    let text = run.adapters.to_string();
    assert!(
        text.contains("embedding skipped: `ti-sdxl` is an embedding for another model family"),
        "{text}"
    );
    let used: Vec<&str> = run
        .embeddings_used
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(used, ["ti-alpha"]);

    // Without embeddings the report has nothing to say.
    req.embeddings.clear();
    assert!(go(&pipe, &req).adapters.to_string().is_empty());
}
