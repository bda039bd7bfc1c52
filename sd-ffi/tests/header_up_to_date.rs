//! The committed `include/sdrs.h` must be exactly what cbindgen generates from the sources, and
//! its version macros must match `Cargo.toml`.
//!
//! Regenerate the header with `SDRS_BLESS=1 cargo test -p sd-ffi --test header_up_to_date`.

use std::path::{Path, PathBuf};

const REGENERATE: &str = "SDRS_BLESS=1 cargo test -p sd-ffi --test header_up_to_date";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("..").join("include").join("sdrs.h")
}

fn generate() -> Result<String, Box<dyn std::error::Error>> {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))?;
    // Parse this crate's own sources (following `mod` declarations), not its dependencies.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src").join("lib.rs"))
        .generate()?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    Ok(String::from_utf8(out)?)
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (la, lb)) in a.lines().zip(b.lines()).enumerate() {
        if la != lb {
            return format!("line {}:\n  committed: {la}\n  generated: {lb}", i + 1);
        }
    }
    format!(
        "the files differ in length ({} vs {} lines)",
        a.lines().count(),
        b.lines().count()
    )
}

#[test]
fn committed_header_matches_the_sources() -> Result<(), Box<dyn std::error::Error>> {
    let generated = generate()?;
    let path = header_path();
    if std::env::var_os("SDRS_BLESS").is_some() {
        std::fs::write(&path, &generated)?;
        return Ok(());
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date ({}).\nRegenerate it with:\n    {REGENERATE}",
        path.display(),
        first_difference(&committed, &generated)
    );
    Ok(())
}

fn macro_value(header: &str, name: &str) -> Option<u64> {
    header.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#define"), Some(n), Some(v)) if n == name => v.parse().ok(),
            _ => None,
        }
    })
}

#[test]
fn version_macros_match_cargo_toml() -> Result<(), Box<dyn std::error::Error>> {
    let header = std::fs::read_to_string(header_path())?;
    for (name, expected) in [
        ("SDRS_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("SDRS_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("SDRS_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        assert_eq!(
            macro_value(&header, name),
            Some(expected.parse()?),
            "{name} in {} must match Cargo.toml; edit cbindgen.toml and run {REGENERATE}",
            Path::new("include/sdrs.h").display()
        );
    }
    // The header's ABI number must be the one the library reports at run time.
    assert_eq!(
        macro_value(&header, "SDRS_ABI_VERSION"),
        Some(u64::from(sdrs::sdrs_abi_version()))
    );
    Ok(())
}
