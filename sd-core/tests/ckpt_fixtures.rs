//! Genuine torch-written checkpoints (tools/make_ckpt_fixtures.py) read without running code,
//! compared with the safetensors twin of each, which holds the tensors as torch itself loads
//! them. Raw bytes must match exactly (the reader copies or gathers, never converts), and the
//! f32 widening must match an independent conversion of the twin's bytes bit for bit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use sd_core::weights::ckpt::{CkptFile, CkptFormat};
use sd_core::weights::pickle::{EmbeddingKind, Limits, TensorId};
use sd_core::weights::{StoredDType, TensorSource};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/ckpt")
        .join(name)
}

fn stored(d: Dtype) -> Option<StoredDType> {
    Some(match d {
        Dtype::F32 => StoredDType::F32,
        Dtype::F16 => StoredDType::F16,
        Dtype::BF16 => StoredDType::BF16,
        Dtype::F64 => StoredDType::F64,
        Dtype::I64 => StoredDType::I64,
        Dtype::F8_E4M3 => StoredDType::F8E4M3,
        _ => return None,
    })
}

/// `(shape, dtype, bytes)` per name from a twin.
type Twin = BTreeMap<String, (Vec<usize>, StoredDType, Vec<u8>)>;

fn twin(stem: &str) -> Result<Twin, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(fixture(&format!("{stem}.safetensors")))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dt = stored(view.dtype()).ok_or("unexpected twin dtype")?;
        out.insert(name, (view.shape().to_vec(), dt, view.data().to_vec()));
    }
    Ok(out)
}

fn check_tensor(
    ck: &CkptFile,
    id: TensorId,
    name: &str,
    want: &(Vec<usize>, StoredDType, Vec<u8>),
) -> TestResult {
    let decl = ck.tensor_decl(id).ok_or("no decl")?;
    assert_eq!(decl.shape, want.0, "shape of {name}");
    assert_eq!(decl.dtype, want.1, "dtype of {name}");
    let got = ck.read_bytes(id)?;
    assert!(got == want.2, "bytes of {name} differ from torch's");
    if want.1.is_float() && want.1 != StoredDType::F8E4M3 {
        let f = ck.read_f32_id(id, name)?;
        let expect: Vec<f32> = match want.1 {
            StoredDType::F32 => want
                .2
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StoredDType::F16 => want
                .2
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StoredDType::BF16 => want
                .2
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => want
                .2
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        };
        assert_eq!(f.len(), expect.len(), "{name}");
        for (a, b) in f.iter().zip(&expect) {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}: {a} vs {b}");
        }
    }
    Ok(())
}

fn check_state_dict(file: &str, stem: &str) -> Result<CkptFile, Box<dyn std::error::Error>> {
    let ck = CkptFile::open(fixture(file), &Limits::default())?;
    let want = twin(stem)?;
    let mut names = ck.tensor_names();
    names.sort();
    let want_names: Vec<_> = want.keys().cloned().collect();
    assert_eq!(names, want_names, "{file}: tensor names");
    for (name, w) in &want {
        let id = ck.tensor_id(name).ok_or("missing")?;
        check_tensor(&ck, id, name, w)?;
        let info = ck.tensor_info(name).ok_or("no info")?;
        assert_eq!(info.shape.dims(), w.0.as_slice());
    }
    Ok(ck)
}

#[test]
fn zip_state_dict_matches_torch() -> TestResult {
    let ck = check_state_dict("sd_zip.ckpt", "sd_zip")?;
    let meta = ck.metadata();
    assert_eq!(meta.get("global_step").map(String::as_str), Some("470000"));
    assert_eq!(meta.get("epoch").map(String::as_str), Some("3"));
    match ck.format() {
        CkptFormat::Zip {
            prefix, version, ..
        } => {
            assert_eq!(prefix, "sd_zip");
            assert_eq!(*version, 3);
        }
        other => panic!("wrong format {other:?}"),
    }
    // Two views of one storage share it; the transposed view is non-contiguous.
    let a = ck.tensor_id("first_stage_model.rows").ok_or("rows")?;
    let b = ck
        .tensor_id("first_stage_model.rows_again")
        .ok_or("rows_again")?;
    let (da, db) = (ck.tensor_decl(a).ok_or("a")?, ck.tensor_decl(b).ok_or("b")?);
    assert_eq!(da.storage, db.storage);
    assert_ne!(da.offset, db.offset);
    let t = ck.tensor_id("first_stage_model.transposed").ok_or("t")?;
    assert!(!ck.tensor_decl(t).ok_or("t")?.is_contiguous());
    let p = ck.tensor_id("model.param").ok_or("param")?;
    assert!(ck.tensor_decl(p).ok_or("p")?.is_param);
    // Integer tensors are not weights.
    assert!(ck.read_f32("cond_stage_model.position_ids").is_err());
    Ok(())
}

#[test]
fn legacy_state_dict_matches_torch() -> TestResult {
    let ck = check_state_dict("sd_legacy.ckpt", "sd_legacy")?;
    assert_eq!(*ck.format(), CkptFormat::Legacy);
    assert_eq!(
        ck.metadata().get("global_step").map(String::as_str),
        Some("12")
    );
    Ok(())
}

#[test]
fn nested_bare_state_dict_is_flattened() -> TestResult {
    let ck = check_state_dict("bare_nested.bin", "bare_nested")?;
    assert!(ck.tensor_id("nested.deeper.bias").is_some());
    Ok(())
}

#[test]
fn lightning_checkpoint_with_callbacks_and_numpy_scalars() -> TestResult {
    let ck = check_state_dict("pl_train.ckpt", "pl_train")?;
    let meta = ck.metadata();
    assert_eq!(meta.get("global_step").map(String::as_str), Some("1000"));
    assert_eq!(
        meta.get("pytorch-lightning_version").map(String::as_str),
        Some("1.4.2")
    );
    Ok(())
}

#[test]
fn textual_inversion_layouts() -> TestResult {
    for (file, stem, kind) in [
        ("ti_a1111.pt", "ti_a1111", EmbeddingKind::A1111),
        (
            "ti_paramdict.pt",
            "ti_paramdict",
            EmbeddingKind::ParameterDict,
        ),
        ("ti_diffusers.bin", "ti_diffusers", EmbeddingKind::Diffusers),
        ("ti_kohya.pt", "ti_kohya", EmbeddingKind::Kohya),
        ("ti_sdxl.pt", "ti_sdxl", EmbeddingKind::Sdxl),
    ] {
        let ck = CkptFile::open(fixture(file), &Limits::default())?;
        let emb = ck.embedding()?;
        assert_eq!(emb.kind, kind, "{file}");
        let want = twin(stem)?;
        assert_eq!(emb.parts.len(), want.len(), "{file}");
        for part in &emb.parts {
            let key = format!("{:?}:{}", emb.kind, part.key);
            let w = want
                .get(&key)
                .ok_or(format!("{file}: unexpected part {key}"))?;
            check_tensor(&ck, part.tensor, &key, w)?;
        }
        if kind == EmbeddingKind::A1111 {
            assert_eq!(emb.name.as_deref(), Some("test-emb"));
            assert_eq!(emb.step, Some(100));
            assert_eq!(emb.sd_checkpoint.as_deref(), Some("abcdef1234"));
            assert_eq!(emb.sd_checkpoint_name.as_deref(), Some("model"));
        }
    }
    Ok(())
}

#[test]
fn hypernetwork_layout() -> TestResult {
    let ck = CkptFile::open(fixture("hypernet.pt"), &Limits::default())?;
    let hn = ck.hypernetwork()?;
    let want = twin("hypernet")?;
    assert_eq!(hn.layers.iter().map(|l| l.size).collect::<Vec<_>>(), [8, 4]);
    let mut seen = 0;
    for layer in &hn.layers {
        for (side, sd) in [("k", &layer.k), ("v", &layer.v)] {
            for (name, id) in sd {
                let key = format!("{}.{side}.{name}", layer.size);
                check_tensor(&ck, *id, &key, want.get(&key).ok_or("missing twin")?)?;
                seen += 1;
            }
        }
    }
    assert_eq!(seen, want.len());
    assert_eq!(hn.layer_structure, Some(vec![1.0, 2.0, 1.0]));
    assert_eq!(hn.activation_func, Some(Some("relu".to_string())));
    assert_eq!(hn.is_layer_norm, Some(false));
    assert_eq!(hn.activate_output, Some(false));
    assert_eq!(hn.dropout_structure, Some(vec![0.0, 0.0, 0.0]));
    assert_eq!(hn.name.as_deref(), Some("hn"));
    assert_eq!(hn.step, Some(5));
    assert_eq!(hn.optional_info, Some(None));
    assert_eq!(hn.weight_initialization.as_deref(), Some("Normal"));
    Ok(())
}

#[test]
fn read_mode_gives_the_same_bytes() -> TestResult {
    use sd_core::weights::ckpt::Access;
    let a = CkptFile::open(fixture("sd_zip.ckpt"), &Limits::default())?;
    let b = CkptFile::open_with(fixture("sd_zip.ckpt"), &Limits::default(), Access::Read)?;
    for name in a.tensor_names() {
        let (ia, ib) = (
            a.tensor_id(&name).ok_or("a")?,
            b.tensor_id(&name).ok_or("b")?,
        );
        assert_eq!(a.read_bytes(ia)?, b.read_bytes(ib)?);
    }
    Ok(())
}
