//! The CLIP tokenizer against reference ids from transformers' `CLIPTokenizer`, written by
//! `tools/make_tokenizer_fixtures.py`: `tests/fixtures/reference/tokenizer_ids_v5.json` (transformers 5, the
//! default [`TextCleanup::Transformers5`]) and `tokenizer_ids.json` (transformers 4's Python tokenizer,
//! [`TextCleanup::Transformers4Slow`]); plus loading a tokenizer from files and the errors of malformed files.

use std::path::{Path, PathBuf};

use sd_core::tokenizer::{MODEL_MAX_LENGTH, TextCleanup, Tokenizer};
use sd_core::{Error, ErrorKind, Result};

const FIXTURE_V4: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/reference/tokenizer_ids.json"
);
const FIXTURE_V5: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/reference/tokenizer_ids_v5.json"
);
/// The tokenizer folder of the tiny diffusers pipeline, the one the v5 reference was loaded from.
const TINY_SD_TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tiny-sd/tokenizer"
);

fn ids_of(value: &serde_json::Value, key: &str) -> Vec<u32> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("fixture case without `{key}`"))
        .iter()
        .map(|v| v.as_u64().expect("fixture ids are integers") as u32)
        .collect()
}

fn load_fixture(path: &str) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::invalid_file(path, e.to_string()))
}

/// Every case of the fixture at `path` (written by transformers `major`.x) must match exactly, both untruncated
/// without specials and padded to 77, and again through the per-word cache.
fn check_fixture(tok: &Tokenizer, path: &str, major: &str) -> Result<()> {
    let fixture = load_fixture(path)?;
    let version = fixture["transformers"].as_str().unwrap_or("");
    assert!(
        version.starts_with(&format!("{major}.")),
        "{path} was written by transformers {version}, expected {major}.x"
    );
    assert_eq!(
        fixture["max_length"].as_u64(),
        Some(MODEL_MAX_LENGTH as u64)
    );
    assert_eq!(fixture["bos_id"].as_u64(), Some(u64::from(tok.bos_id())));
    assert_eq!(fixture["eos_id"].as_u64(), Some(u64::from(tok.eos_id())));
    assert_eq!(fixture["pad_id"].as_u64(), Some(u64::from(tok.pad_id())));
    assert_eq!(
        fixture["vocab_size"].as_u64(),
        Some(tok.vocab_size() as u64)
    );
    let cases = fixture["cases"].as_array().expect("fixture has cases");
    assert!(cases.len() >= 140, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let prompt = case["text"].as_str().expect("case text is a string");
        let want = ids_of(case, "ids");
        let want_padded = ids_of(case, "padded");
        let got = tok.encode(prompt);
        let got_padded = tok.encode_padded(prompt, MODEL_MAX_LENGTH)?;
        if got != want {
            failures.push(format!(
                "{prompt:?}\n  ids want {want:?}\n      got  {got:?}"
            ));
        }
        if got_padded != want_padded {
            failures.push(format!(
                "{prompt:?}\n  padded want {want_padded:?}\n         got  {got_padded:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{:?}: {} of {} cases differ from {path}:\n{}",
        tok.cleanup(),
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Encoding again goes through the per-word cache and must give the same ids.
    for case in cases {
        let prompt = case["text"].as_str().expect("case text is a string");
        assert_eq!(
            tok.encode(prompt),
            ids_of(case, "ids"),
            "cached: {prompt:?}"
        );
    }
    Ok(())
}

/// The default clean-up reproduces transformers 5's `CLIPTokenizer`.
#[test]
fn matches_transformers5_ids() -> Result<()> {
    let tok = Tokenizer::clip()?;
    assert_eq!(tok.cleanup(), TextCleanup::Transformers5);
    check_fixture(&tok, FIXTURE_V5, "5")
}

/// The tokenizer folder diffusers loads gives the same ids as the embedded vocabulary.
#[test]
fn tiny_sd_folder_matches_transformers5_ids() -> Result<()> {
    check_fixture(&Tokenizer::from_dir(TINY_SD_TOKENIZER)?, FIXTURE_V5, "5")
}

/// The legacy clean-up reproduces transformers 4's Python `CLIPTokenizer` (AUTOMATIC1111).
#[test]
fn matches_transformers4_slow_ids() -> Result<()> {
    let tok = Tokenizer::clip()?.with_cleanup(TextCleanup::Transformers4Slow);
    assert_eq!(tok.cleanup(), TextCleanup::Transformers4Slow);
    check_fixture(&tok, FIXTURE_V4, "4")
}

/// Both references hold the same prompts, and the two clean-ups must really differ on some of them (the fixtures
/// would not separate them otherwise); clones with different clean-ups share one cache without mixing results.
#[test]
fn clean_ups_differ_where_the_references_do() -> Result<()> {
    let v4 = load_fixture(FIXTURE_V4)?;
    let v5 = load_fixture(FIXTURE_V5)?;
    let (c4, c5) = (
        v4["cases"].as_array().expect("cases"),
        v5["cases"].as_array().expect("cases"),
    );
    assert_eq!(c4.len(), c5.len());
    let new = Tokenizer::clip()?;
    let old = new.clone().with_cleanup(TextCleanup::Transformers4Slow);
    let mut differing = 0;
    for (a, b) in c4.iter().zip(c5) {
        assert_eq!(a["text"], b["text"], "fixtures list different prompts");
        let prompt = a["text"].as_str().expect("case text is a string");
        if ids_of(a, "ids") != ids_of(b, "ids") {
            differing += 1;
            assert_ne!(old.encode(prompt), new.encode(prompt), "{prompt:?}");
        }
        assert_eq!(old.encode(prompt), ids_of(a, "ids"), "{prompt:?}");
        assert_eq!(new.encode(prompt), ids_of(b, "ids"), "{prompt:?}");
    }
    assert!(
        differing >= 30,
        "only {differing} prompts separate the clean-ups"
    );
    Ok(())
}

/// A scratch directory under the target dir, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tokenizer-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

const TINY_VOCAB: &str = r#"{"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "a": 3, "b": 4, "c": 5,
    "a</w>": 6, "b</w>": 7, "c</w>": 8, "ab": 9, "ab</w>": 10, "abc</w>": 11, "!</w>": 12, "!!</w>": 13}"#;
const TINY_MERGES: &str = "#version: 0.2\na b\nab c</w>\na b</w>\n! !</w>\n";

fn write_tiny(dir: &Path, vocab: &str, merges: &str) {
    std::fs::write(dir.join("vocab.json"), vocab).expect("write vocab");
    std::fs::write(dir.join("merges.txt"), merges).expect("write merges");
}

#[test]
fn from_files_tiny_vocabulary() -> Result<()> {
    let dir = scratch("tiny");
    write_tiny(&dir, TINY_VOCAB, TINY_MERGES);
    let tok = Tokenizer::from_files(dir.join("vocab.json"), dir.join("merges.txt"))?;
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.vocab_size()),
        (0, 1, 1, 14)
    );
    // "abc" → a b c</w> → ab c</w> → abc</w>; "ab" → a b</w> → ab</w>; "cab" → c a b</w> → c ab</w>;
    // "!!" → ! !</w> → !!</w>; "d" and "é" are not in the vocabulary → unknown = <|endoftext|>.
    assert_eq!(tok.encode("ABC ab cab !!"), [11, 10, 5, 10, 13]);
    assert_eq!(tok.encode("d"), [1]);
    assert_eq!(tok.encode("é"), [1, 1]);
    assert_eq!(tok.encode("a<|endoftext|>b"), [6, 1, 7]);
    assert_eq!(tok.encode_padded("abc abc abc", 4)?, [0, 11, 11, 1]);
    assert_eq!(tok.encode_padded("abc", 5)?, [0, 11, 1, 1, 1]);
    assert_eq!(tok.decode(&tok.encode("abc cab")), "abc cab");

    // from_dir picks up the pad token of special_tokens_map.json.
    std::fs::write(
        dir.join("special_tokens_map.json"),
        r#"{"pad_token": {"content": "!"}}"#,
    )
    .expect("write map");
    let tok = Tokenizer::from_dir(&dir)?;
    assert_eq!(tok.pad_id(), 2);
    assert_eq!(tok.encode_padded("ab", 5)?, [0, 10, 1, 2, 2]);
    Ok(())
}

fn load_err(name: &str, vocab: &str, merges: &str) -> Error {
    let dir = scratch(name);
    write_tiny(&dir, vocab, merges);
    match Tokenizer::from_dir(&dir) {
        Ok(_) => panic!("{name}: malformed tokenizer files were accepted"),
        Err(e) => e,
    }
}

fn assert_names(err: &Error, file: &str, fragment: &str) {
    let msg = err.to_string();
    assert!(msg.contains(file), "error does not name {file}: {msg}");
    assert!(
        msg.contains(fragment),
        "error does not say {fragment:?}: {msg}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidModel, "{msg}");
}

#[test]
fn from_files_errors() {
    let e = load_err("not-json", "[1, 2]", TINY_MERGES);
    assert_names(&e, "vocab.json", "not a JSON object");
    let e = load_err("negative-id", r#"{"a": -1}"#, TINY_MERGES);
    assert_names(&e, "vocab.json", "not a JSON object");
    let e = load_err(
        "no-specials",
        r#"{"a": 0, "<|startoftext|>": 1}"#,
        TINY_MERGES,
    );
    assert_names(&e, "vocab.json", "<|endoftext|>");
    let e = load_err("no-header", TINY_VOCAB, "a b\nab c</w>\n");
    assert_names(&e, "merges.txt", "line 1: expected a `#version` header");
    let e = load_err("three-parts", TINY_VOCAB, "#version: 0.2\na b\na b c\n");
    assert_names(
        &e,
        "merges.txt",
        "line 3: expected two space-separated symbols",
    );
    let dir = scratch("bad-utf8");
    std::fs::write(dir.join("vocab.json"), TINY_VOCAB).expect("write vocab");
    std::fs::write(dir.join("merges.txt"), b"#version: 0.2\n\xff\xfe b\n").expect("write merges");
    let e = Tokenizer::from_dir(&dir).expect_err("bad UTF-8 accepted");
    assert_names(&e, "merges.txt", "not UTF-8");

    let dir = scratch("bad-map");
    write_tiny(&dir, TINY_VOCAB, TINY_MERGES);
    std::fs::write(
        dir.join("special_tokens_map.json"),
        r#"{"pad_token": "<pad>"}"#,
    )
    .expect("write map");
    let e = Tokenizer::from_dir(&dir).expect_err("unknown pad token accepted");
    assert_names(
        &e,
        "special_tokens_map.json",
        "`<pad>` is not in the vocabulary",
    );

    let dir = scratch("missing");
    let e = Tokenizer::from_dir(&dir).expect_err("empty folder accepted");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("vocab.json"), "{e}");
}

/// Rough throughput of both clean-ups with and without the per-word cache; run with `--ignored --nocapture`.
#[test]
#[ignore = "timing report, not a check"]
fn throughput() -> Result<()> {
    let start = std::time::Instant::now();
    Tokenizer::clip()?;
    println!(
        "first Tokenizer::clip(): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let fixture = load_fixture(FIXTURE_V4)?;
    let prompts: Vec<String> = fixture["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["text"].as_str().unwrap_or("").to_owned())
        .collect();
    for cleanup in [TextCleanup::Transformers5, TextCleanup::Transformers4Slow] {
        // A tokenizer loaded from files has its own, empty cache.
        let tok = Tokenizer::from_dir(TINY_SD_TOKENIZER)?.with_cleanup(cleanup);
        let start = std::time::Instant::now();
        let mut n = 0usize;
        for p in &prompts {
            n += tok.encode(p).len();
        }
        let cold = n as f64 / start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        let mut n = 0usize;
        for _ in 0..50 {
            for p in &prompts {
                n += tok.encode(p).len();
            }
        }
        let warm = n as f64 / start.elapsed().as_secs_f64();
        println!("{cleanup:?} tokens/s: first pass {cold:.0}, cached {warm:.0}");
    }
    Ok(())
}
