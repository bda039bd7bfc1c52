//! `TorchRng` against reference streams of PyTorch's seeded CPU generator
//! (`tests/fixtures/reference/randn.safetensors`, made by `tools/make_randn_fixtures.py`).
//!
//! Tolerance: none. Every stored value must equal PyTorch's bit for bit, and for calls stored
//! only in part the sum of the bit patterns of all values must match too.

use std::error::Error;

use safetensors::SafeTensors;
use sd_core::noise::TorchRng;
use serde_json::Value;

type TestResult = Result<(), Box<dyn Error>>;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/reference/randn.safetensors"
);

/// Distance in units in the last place between two finite floats of any sign.
fn ulp_distance(a: f32, b: f32) -> u64 {
    fn key(x: f32) -> i64 {
        let bits = i64::from(x.to_bits());
        if bits & 0x8000_0000 != 0 {
            0x8000_0000 - bits
        } else {
            bits
        }
    }
    (key(a) - key(b)).unsigned_abs()
}

fn field<'a>(value: &'a Value, name: &str) -> Result<&'a Value, Box<dyn Error>> {
    value
        .get(name)
        .ok_or_else(|| format!("fixture entry lacks `{name}`: {value}").into())
}

fn as_u64(value: &Value, name: &str) -> Result<u64, Box<dyn Error>> {
    field(value, name)?
        .as_u64()
        .ok_or_else(|| format!("`{name}` is not an unsigned integer").into())
}

fn as_str<'a>(value: &'a Value, name: &str) -> Result<&'a str, Box<dyn Error>> {
    field(value, name)?
        .as_str()
        .ok_or_else(|| format!("`{name}` is not a string").into())
}

#[test]
fn torch_rng_matches_pytorch_bit_for_bit() -> TestResult {
    let bytes = std::fs::read(FIXTURE)?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes)?;
    let meta = metadata
        .metadata()
        .as_ref()
        .ok_or("fixture has no metadata")?;
    let cases: Value = serde_json::from_str(meta.get("cases").ok_or("no `cases` metadata")?)?;
    let cases = cases.as_array().ok_or("`cases` is not a list")?;
    let file = SafeTensors::deserialize(&bytes)?;

    let mut compared = 0usize;
    let mut failures = Vec::new();
    for case in cases {
        let name = as_str(case, "name")?;
        let seed = as_u64(case, "seed")?;
        let mut rng = TorchRng::new(seed);
        let calls = field(case, "calls")?
            .as_array()
            .ok_or("`calls` is not a list")?;
        for (i, call) in calls.iter().enumerate() {
            let count = usize::try_from(as_u64(call, "count")?)?;
            let got = match as_str(call, "op")? {
                "randn" => rng.randn(count),
                "rand" => rng.rand(count),
                other => return Err(format!("unknown op `{other}`").into()),
            };
            assert_eq!(got.len(), count);
            let view = file.tensor(as_str(call, "tensor")?)?;
            let expected: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let got_stored: Vec<f32> = match as_str(call, "stored")? {
                "full" => got.clone(),
                "head_tail" => {
                    let half = expected.len() / 2;
                    got[..half]
                        .iter()
                        .chain(&got[count - half..])
                        .copied()
                        .collect()
                }
                other => return Err(format!("unknown storage `{other}`").into()),
            };
            assert_eq!(got_stored.len(), expected.len(), "{name} call {i}");
            let mut max_ulp = 0;
            let mut mismatched = 0;
            for (&g, &e) in got_stored.iter().zip(&expected) {
                if g.to_bits() != e.to_bits() {
                    mismatched += 1;
                    max_ulp = max_ulp.max(ulp_distance(g, e));
                }
            }
            compared += expected.len();
            let bits_sum: u64 = got.iter().map(|x| u64::from(x.to_bits())).sum();
            let expected_bits_sum = as_u64(call, "bits_sum")?;
            if mismatched > 0 || bits_sum != expected_bits_sum {
                failures.push(format!(
                    "{name} call {i} ({} of {count}): {mismatched} stored values differ \
                     (max {max_ulp} ulp), bit checksum {bits_sum} vs {expected_bits_sum}",
                    as_str(call, "op")?
                ));
            }
        }
    }
    assert!(compared > 10_000, "only {compared} values compared");
    assert!(
        failures.is_empty(),
        "{} mismatching calls:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}
