//! Textual-inversion embeddings: every file layout loads the vectors it holds, and prompts that
//! use them encode as diffusers encodes them (`load_textual_inversion`, then the pipeline's
//! prompt encoding), on the committed tiny model. Fixtures: `tools/make_ti_fixtures.py`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Reference, assert_close, fixture};
use sd_core::adapters::embedding::{
    EmbeddingFormat, EmbeddingTrigger, MAX_EMBEDDING_FILE_BYTES, MAX_EMBEDDING_WIDTH,
};
use sd_core::adapters::{Embedding, EmbeddingSet};
use sd_core::models::InsertedVectors;
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::prompt::{ChunkOptions, tokenize_prompt};
use sd_core::{Error, ErrorKind, Result};

/// Largest relative error (max |diff| / max |ref|) accepted against the float64 reference.
const TOLERANCE: f32 = 1e-5;

/// What the fixture script recorded about each file: trigger, vector count, short hash.
struct Listed {
    trigger: String,
    vectors: usize,
    sha256_12: String,
}

fn listing(r: &Reference) -> BTreeMap<String, Listed> {
    let files: serde_json::Value = serde_json::from_str(&r.meta("files")).expect("files JSON");
    files
        .as_object()
        .expect("files object")
        .iter()
        .map(|(file, v)| {
            let text = |k: &str| v[k].as_str().expect("string").to_string();
            let listed = Listed {
                trigger: text("trigger"),
                vectors: v["vectors"].as_u64().expect("vectors") as usize,
                sha256_12: text("sha256_12"),
            };
            (file.clone(), listed)
        })
        .collect()
}

/// Opens a fixture embedding; the bare tensor needs its caller-named token.
fn open(file: &str, trigger: &str) -> Result<Embedding> {
    let path = fixture("ti").join(file);
    if file == "raw-tensor.pt" {
        Embedding::open_with_token(path, trigger)
    } else {
        Embedding::open(path)
    }
}

fn expected_format(file: &str) -> EmbeddingFormat {
    match file {
        "ti-alpha.pt" | "ti-bravo.pt" => EmbeddingFormat::A1111,
        "ti-golf.pt" => EmbeddingFormat::ParameterDict,
        "learned_embeds.bin" | "ti-delta.safetensors" => EmbeddingFormat::Diffusers,
        "ti-echo.safetensors" | "ti-foxtrot.pt" => EmbeddingFormat::Kohya,
        "ti-sdxl.safetensors" => EmbeddingFormat::Sdxl,
        "ti-hotel-image.png" => EmbeddingFormat::ImageText,
        "ti-juliet-pixels.png" => EmbeddingFormat::ImagePixels,
        "raw-tensor.pt" => EmbeddingFormat::RawTensor,
        other => panic!("no expected format for {other}"),
    }
}

#[test]
fn every_layout_loads_the_vectors_it_holds() -> Result<()> {
    let r = Reference::open("textual_inversion.safetensors");
    let files = listing(&r);
    assert_eq!(files.len(), 11, "fixture listing");
    for (file, listed) in &files {
        let e = open(file, &listed.trigger)?;
        assert_eq!(e.name(), listed.trigger, "{file}: trigger");
        assert_eq!(e.vector_count(), listed.vectors, "{file}: vectors");
        assert_eq!(e.hash(), Some(listed.sha256_12.as_str()), "{file}: hash");
        let source = e.source().expect("source");
        assert_eq!(source.format, expected_format(file), "{file}: format");
        assert_eq!(source.sha256.get(..12), e.hash(), "{file}");
        if source.format == EmbeddingFormat::Sdxl {
            let l = r.tensor("vectors_sdxl_clip_l");
            let g = r.tensor("vectors_sdxl_clip_g");
            assert_eq!(e.part("clip_l").expect("clip_l").to_vec()?, l.to_vec()?);
            assert_eq!(e.part("clip_g").expect("clip_g").to_vec()?, g.to_vec()?);
            assert_eq!(e.width(), l.dims()[1] + g.dims()[1], "{file}: joined width");
        } else {
            // Stored as float32 in both files: the values must be identical.
            let want = r.tensor(&format!("vectors_{}", listed.trigger));
            assert_eq!(e.vectors().dims(), want.dims(), "{file}: shape");
            assert_eq!(e.vectors().to_vec()?, want.to_vec()?, "{file}: values");
            assert!(e.parts().is_empty());
        }
    }
    // What the files say about themselves.
    let alpha = open("ti-alpha.pt", "")?;
    let s = alpha.source().expect("source");
    assert_eq!(s.stored_name.as_deref(), Some("ti-alpha"));
    assert_eq!(s.step, Some(1500));
    assert_eq!(s.sd_checkpoint.as_deref(), Some("0123456789"));
    assert_eq!(s.sd_checkpoint_name.as_deref(), Some("tiny-sd"));
    let hotel = open("ti-hotel-image.png", "")?;
    assert_eq!(hotel.source().and_then(|s| s.step), Some(1500));
    Ok(())
}

#[test]
fn trigger_words_follow_the_chosen_rule() -> Result<()> {
    let ti = |f: &str| fixture("ti").join(f);
    // The file's own token for a diffusers file by default; A1111's file stem on request.
    assert_eq!(
        Embedding::open(ti("learned_embeds.bin"))?.name(),
        "<ti-charlie>"
    );
    let a1111 = Embedding::open_with(ti("learned_embeds.bin"), &EmbeddingTrigger::A1111)?;
    assert_eq!(a1111.name(), "learned_embeds");
    assert_eq!(
        a1111.source().and_then(|s| s.stored_name.as_deref()),
        Some("<ti-charlie>")
    );
    // An A1111 file triggers on its file name, not the `name` it stores.
    let bravo = Embedding::open(ti("ti-bravo.pt"))?;
    assert_eq!(bravo.name(), "ti-bravo");
    assert_eq!(
        bravo.source().and_then(|s| s.stored_name.as_deref()),
        Some("bravo-as-trained")
    );
    // An image embedding triggers on the name it stores under both rules.
    for rule in [EmbeddingTrigger::Auto, EmbeddingTrigger::A1111] {
        assert_eq!(
            Embedding::open_with(ti("ti-hotel-image.png"), &rule)?.name(),
            "ti-hotel"
        );
    }
    assert_eq!(
        Embedding::open_with_token(ti("ti-echo.safetensors"), "my word")?.name(),
        "my word"
    );
    // A bare tensor has no name of its own.
    let err = Embedding::open(ti("raw-tensor.pt")).expect_err("bare tensor without a token");
    assert!(err.to_string().contains("open_with_token"), "{err}");
    let err = Embedding::open_with_token(ti("ti-alpha.pt"), " ").expect_err("empty token");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    Ok(())
}

#[test]
fn sdxl_embedding_is_skipped_on_sd1_and_kept_per_encoder() -> Result<()> {
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())?;
    let width = pipe.text_encoder().config().hidden_size;
    let sdxl = Arc::new(Embedding::open(fixture("ti/ti-sdxl.safetensors"))?);
    let alpha = Arc::new(Embedding::open(fixture("ti/ti-alpha.pt"))?);
    let err = sdxl.check_width(width).expect_err("SDXL on an SD1 encoder");
    assert!(
        err.to_string().contains("another model family"),
        "message: {err}"
    );
    let set = EmbeddingSet::new(pipe.tokenizer(), width, &[sdxl.clone(), alpha.clone()]);
    assert_eq!(set.skipped(), ["ti-sdxl".to_string()]);
    assert!(set.skip_reasons()[0].contains("another model family"));
    let ids = pipe.tokenizer().encode("ti-sdxl and ti-alpha");
    assert!(
        (0..ids.len()).all(|p| sd_core::prompt::EmbeddingLookup::find_at(&set, &ids, p)
            .is_none_or(|m| set.get(m.id).map(|e| e.name()) == Some("ti-alpha"))),
        "the skipped embedding must not match"
    );
    // An SDXL text encoder picks its own part.
    let l_set = EmbeddingSet::for_encoder(
        pipe.tokenizer(),
        "clip_l",
        width,
        std::slice::from_ref(&sdxl),
    );
    assert!(l_set.skipped().is_empty());
    let m =
        sd_core::prompt::EmbeddingLookup::find_at(&l_set, &pipe.tokenizer().encode("ti-sdxl"), 0)
            .expect("ti-sdxl matches for clip_l");
    assert_eq!(
        l_set.vectors(m.id).expect("vectors").to_vec()?,
        sdxl.part("clip_l").expect("part").to_vec()?
    );
    let g_set = EmbeddingSet::for_encoder(pipe.tokenizer(), "clip_g", width, &[sdxl]);
    assert_eq!(
        g_set.skipped(),
        ["ti-sdxl".to_string()],
        "clip_g is 24 wide"
    );
    Ok(())
}

/// Each prompt encoded with the embeddings spliced in, against diffusers.
///
/// How positions correspond: sd-core (as A1111) finds a trigger's BPE tokens in the prompt and
/// gives its n vectors n positions where those tokens were; diffusers registers the same trigger
/// as n added tokens (`tok`, `tok_1`, …) and rewrites `tok` in the prompt into all of them. The
/// text around a trigger tokenizes the same on both sides, so every position holds either the
/// same token id, or (where diffusers has an added token, id ≥ the base vocabulary) one of the
/// embedding's vectors — checked below before the hidden states are compared.
#[test]
fn prompts_with_embeddings_match_diffusers() -> Result<()> {
    let r = Reference::open("textual_inversion.safetensors");
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default())?;
    let tokenizer = pipe.tokenizer();
    let encoder = pipe.text_encoder();
    let embeddings = listing(&r)
        .iter()
        .filter(|(file, _)| *file != "ti-sdxl.safetensors")
        .map(|(file, listed)| open(file, &listed.trigger).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    let set = EmbeddingSet::new(tokenizer, encoder.config().hidden_size, &embeddings);
    assert!(
        set.skipped().is_empty(),
        "skipped: {:?}",
        set.skip_reasons()
    );
    let prompts: Vec<String> = serde_json::from_str(&r.meta("prompts")).expect("prompts");
    assert_eq!(prompts.len(), 6);
    let vocab = tokenizer.vocab_size() as i64;
    let mut inserted_total = 0;
    for (i, prompt) in prompts.iter().enumerate() {
        let tokenized = tokenize_prompt(tokenizer, prompt, &ChunkOptions::default(), Some(&set))?;
        let [chunk] = tokenized.chunks.as_slice() else {
            panic!("prompt {i}: expected one chunk");
        };
        let diffusers_ids = &r.int_rows(&format!("input_ids_{i}"))[0];
        let mut at_vector = vec![false; chunk.tokens.len()];
        let mut inserts = Vec::new();
        for fix in &chunk.fixes {
            at_vector[fix.offset..fix.offset + fix.vectors].fill(true);
            inserts.push(InsertedVectors {
                sequence: 0,
                offset: fix.offset,
                vectors: set.vectors(fix.id).expect("fix id").clone(),
            });
        }
        for (p, (&ours, &theirs)) in chunk.tokens.iter().zip(diffusers_ids).enumerate() {
            if at_vector[p] {
                assert!(
                    theirs >= vocab,
                    "prompt {i} position {p}: diffusers has {theirs}"
                );
            } else {
                assert_eq!(i64::from(ours), theirs, "prompt {i} position {p}");
            }
        }
        inserted_total += inserts.len();
        let got = encoder.forward_with_vectors(std::slice::from_ref(&chunk.tokens), &inserts, 1)?;
        let want = r.tensor(&format!("embeds_{i}"));
        assert_close(&format!("prompt {i} ({prompt:?})"), &got, &want, TOLERANCE);
        // The reference tells the embedding apart from the placeholder tokens it replaces.
        let without = encoder.forward(std::slice::from_ref(&chunk.tokens), 1)?;
        assert!(common::relative_error(&without, &want) > 100.0 * TOLERANCE);
    }
    // Every fixture embedding but the SDXL one is used; `ti-alpha` and `ti-bravo` twice.
    assert_eq!(inserted_total, 13);
    Ok(())
}

fn refusal(file: &str) -> Error {
    Embedding::open(fixture("ti/bad").join(file)).expect_err(&format!("{file} must be refused"))
}

#[test]
fn bad_files_are_refused_with_specific_errors() {
    let cases = [
        ("nan.pt", "holds NaN at vector 1, component 3"),
        ("inf.safetensors", "holds inf at vector 0, component 0"),
        ("two-terms.pt", "multiple terms"),
        (
            "two-keys.safetensors",
            "multiple terms in it (2 entries: `<a>`, `<b>`)",
        ),
        ("empty.safetensors", "`emb_params` is empty (shape [0, 16])"),
        (
            "too-many-vectors.safetensors",
            "has 76 vectors; a prompt chunk holds at most 75",
        ),
        ("three-dims.pt", "embedding tensor is not 1-D or 2-D"),
        (
            "sdxl-counts.safetensors",
            "`clip_l` has 2 vectors, `clip_g` 3",
        ),
        ("no-tensor.pt", "no embedding tensor"),
    ];
    for (file, needle) in cases {
        let err = refusal(file);
        let msg = err.to_string();
        assert!(msg.contains(needle), "{file}: {msg}");
        assert!(
            msg.contains(file),
            "{file}: the message names the file: {msg}"
        );
        assert_eq!(err.kind(), ErrorKind::InvalidModel, "{file}: {msg}");
    }
    let err = refusal("integers.pt");
    assert!(
        matches!(err, Error::WeightDType { ref name, .. } if name == "emb_params"),
        "{err}"
    );
}

#[test]
fn broken_containers_are_refused() -> Result<()> {
    let dir = common::tempdir("ti-broken");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let err = Embedding::open(write("noise.pt", b"just some text, not a tensor file"))
        .expect_err("noise");
    assert!(err.to_string().contains("not an embedding file"), "{err}");
    let err = Embedding::open(write("zero.pt", b"")).expect_err("empty");
    assert!(
        err.to_string()
            .ends_with("zero.pt: an empty file (0 bytes)"),
        "{err}"
    );

    // A PNG without embedding: no text chunk and nothing in its pixels.
    let plain = sd_core::image::RgbImage::filled(8, 8, [200, 120, 90])?;
    let png = sd_core::image::encode_png(&plain, &[])?;
    let err = Embedding::open(write("plain.png", &png)).expect_err("plain png");
    assert!(
        err.to_string().contains("a PNG without an embedding"),
        "{err}"
    );

    // A text chunk that is not base64, and one that is base64 of something else.
    let png = sd_core::image::encode_png(&plain, &[("sd-ti-embedding", "not*base64!!")])?;
    let err = Embedding::open(write("bad-b64.png", &png)).expect_err("bad base64");
    assert!(err.to_string().contains("not a base64 symbol"), "{err}");
    let png = sd_core::image::encode_png(&plain, &[("sd-ti-embedding", "eyJhIjogMX0=")])?;
    let err = Embedding::open(write("no-tensor.png", &png)).expect_err("JSON without tensor");
    assert!(err.to_string().contains("TORCHTENSOR"), "{err}");

    // A file larger than any embedding is refused before it is read.
    let big = write("big.safetensors", b"");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .and_then(|f| f.set_len(MAX_EMBEDDING_FILE_BYTES + 1))
        .expect("sparse file");
    let err = Embedding::open(&big).expect_err("big");
    assert!(
        err.to_string()
            .contains("more than an embedding file may hold"),
        "{err}"
    );

    // A vector wider than any text encoder.
    let wide = format!(
        "{{\"string_to_param\": {{\"*\": {{\"TORCHTENSOR\": [[{}]]}}}}}}",
        vec!["0.5"; MAX_EMBEDDING_WIDTH + 1].join(",")
    );
    let b64 = base64_encode(wide.as_bytes());
    let png = sd_core::image::encode_png(&plain, &[("sd-ti-embedding", &b64)])?;
    let err = Embedding::open(write("wide.png", &png)).expect_err("wide");
    assert!(err.to_string().contains("8193 wide"), "{err}");

    let missing = Embedding::open(dir.join("missing.pt")).expect_err("missing");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Standard base64 with padding, for building test inputs.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
