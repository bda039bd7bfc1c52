//! Shared helpers of the integration tests: fixture paths, reference tensors, tolerances.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::SafeTensors;
use sd_core::{Device, Tensor};

/// `tests/fixtures/<rel>`.
/// `$SDRS_FIXTURES` replaces `tests/fixtures` for a test binary run away from its source tree
/// (the GPU checks copy binaries to another machine).
pub fn fixture(rel: &str) -> PathBuf {
    std::env::var_os("SDRS_FIXTURES")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
            PathBuf::from,
        )
        .join(rel)
}

/// A reference file: the tensors of `tests/fixtures/reference/<name>`.
pub struct Reference {
    bytes: Vec<u8>,
    name: String,
}

impl Reference {
    /// Reads `tests/fixtures/reference/<name>`.
    pub fn open(name: &str) -> Reference {
        let path = fixture("reference").join(name);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Reference {
            bytes,
            name: name.to_string(),
        }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", self.name))
    }

    /// A float tensor (F32 or F64 stored) as an f32 CPU tensor.
    pub fn tensor(&self, key: &str) -> Tensor {
        let st = self.view();
        let t = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("{}: tensor {key}: {e}", self.name));
        let data: Vec<f32> = match t.dtype() {
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            other => panic!(
                "{}: tensor {key} has dtype {other:?}, expected a float",
                self.name
            ),
        };
        Tensor::from_vec(data, t.shape().to_vec(), Device::Cpu).expect("reference tensor")
    }

    /// An integer tensor (I64 or I32 stored) as rows of its last dimension.
    pub fn int_rows(&self, key: &str) -> Vec<Vec<i64>> {
        let st = self.view();
        let t = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("{}: tensor {key}: {e}", self.name));
        let values: Vec<i64> = match t.dtype() {
            safetensors::Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            safetensors::Dtype::I32 => t
                .data()
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            other => panic!(
                "{}: tensor {key} has dtype {other:?}, expected an integer",
                self.name
            ),
        };
        let width = *t.shape().last().unwrap_or(&1);
        values.chunks(width.max(1)).map(<[i64]>::to_vec).collect()
    }

    /// A metadata string.
    pub fn meta(&self, key: &str) -> String {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).expect("metadata");
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_else(|| panic!("{}: no metadata `{key}`", self.name))
    }
}

/// Largest absolute difference divided by the reference's largest magnitude.
pub fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let g = got.to_vec().expect("values");
    let w = want.to_vec().expect("values");
    let scale = w
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = g
        .iter()
        .zip(&w)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// Asserts `relative_error(got, want) <= tol`, printing the measured figure either way.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let err = relative_error(got, want);
    eprintln!("{what}: max |diff| / max |ref| = {err:.3e} (tolerance {tol:.0e})");
    assert!(
        err <= tol,
        "{what}: relative error {err:.3e} exceeds {tol:.0e}"
    );
}

/// A command running the example `name` (`target/<profile>/examples/<name>`), which `cargo test`
/// builds beside the test binaries.
pub fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not built (cargo test builds examples)",
        bin.display()
    );
    Command::new(bin)
}

/// A fresh directory under the system temp dir for one test, named after `tag`.
pub fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sdrs-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
