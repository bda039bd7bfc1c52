//! The parameter seam adapters build on: every parameter of a loaded model is visited under the
//! name it has in the diffusers/transformers files, in PyTorch's shape and with the stored
//! values, and replacing one changes the clone it was replaced in and nothing else.

mod common;

use std::collections::BTreeMap;

use common::fixture;
use safetensors::SafeTensors;
use sd_core::pipeline::{LoadOptions, Pipeline};
use sd_core::{Device, Tensor};

/// Float tensors of a safetensors file: name → (shape, values).
fn file_tensors(rel: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(rel)).expect("fixture");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(name, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (v.shape().to_vec(), values))
        })
        .collect()
}

type Visited = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn visit_all(
    visit: impl FnOnce(
        &mut dyn FnMut(&str, sd_core::models::ParamMut<'_>) -> sd_core::Result<()>,
    ) -> sd_core::Result<()>,
) -> Visited {
    let mut seen = Visited::new();
    visit(&mut |name, p| {
        let value = p.value()?;
        assert_eq!(value.dims(), p.torch_shape().as_slice(), "{name}");
        let previous = seen.insert(name.to_string(), (p.torch_shape(), value.to_vec()?));
        assert!(previous.is_none(), "{name} visited twice");
        Ok(())
    })
    .expect("visit");
    seen
}

#[test]
fn every_parameter_is_visited_by_its_file_name_with_its_values() {
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default()).expect("load");
    let mut unet = pipe.unet().clone();
    let visited = visit_all(|f| unet.visit_parameters(f));
    let expected = file_tensors("tiny-sd/unet/diffusion_pytorch_model.safetensors");
    assert_eq!(
        visited.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(visited, expected, "UNet parameters differ from the file");

    let mut clip = pipe.text_encoder().clone();
    let visited = visit_all(|f| clip.visit_parameters(f));
    let expected = file_tensors("tiny-sd/text_encoder/model.safetensors");
    assert_eq!(
        visited, expected,
        "text encoder parameters differ from the file"
    );
}

#[test]
fn replacing_a_parameter_changes_only_the_clone() {
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default()).expect("load");
    let x = Tensor::full(0.25, [1, 4, 8, 8], Device::Cpu).expect("x");
    let ctx = Tensor::full(
        0.5,
        [1, 77, pipe.unet().config().cross_attention_dim],
        Device::Cpu,
    )
    .expect("ctx");
    let base = pipe
        .unet()
        .forward(&x, 10.0, &ctx)
        .expect("base")
        .to_vec()
        .expect("vec");

    let mut patched = pipe.unet().clone();
    let mut replaced = 0;
    patched
        .visit_parameters(&mut |name, mut p| {
            if name == "conv_in.weight" {
                // Zero one output channel's kernel, in PyTorch's [out, in, kh, kw] layout.
                let shape = p.torch_shape();
                let mut v = p.value()?.to_vec()?;
                let per_out: usize = shape[1..].iter().product();
                v[..per_out].iter_mut().for_each(|w| *w = 0.0);
                p.set(Tensor::from_vec(v, shape, Device::Cpu)?)?;
                replaced += 1;
            }
            Ok(())
        })
        .expect("patch");
    assert_eq!(replaced, 1);
    let changed = patched
        .forward(&x, 10.0, &ctx)
        .expect("patched")
        .to_vec()
        .expect("vec");
    let again = pipe
        .unet()
        .forward(&x, 10.0, &ctx)
        .expect("base again")
        .to_vec()
        .expect("vec");
    assert_eq!(base, again, "the loaded model changed");
    assert_ne!(base, changed, "the patched clone did not change");

    // The value read back is the value written, in PyTorch's layout.
    patched
        .visit_parameters(&mut |name, p| {
            if name == "conv_in.weight" {
                let v = p.value()?.to_vec()?;
                let per_out: usize = p.torch_shape()[1..].iter().product();
                assert!(v[..per_out].iter().all(|&w| w == 0.0));
                assert!(v[per_out..].iter().any(|&w| w != 0.0));
            }
            Ok(())
        })
        .expect("read back");
}

#[test]
fn a_wrong_shape_is_refused() {
    let pipe = Pipeline::load(fixture("tiny-sd"), &LoadOptions::default()).expect("load");
    let mut unet = pipe.unet().clone();
    let err = unet
        .visit_parameters(&mut |name, mut p| {
            if name == "conv_out.bias" {
                p.set(Tensor::zeros([3], Device::Cpu)?)?;
            }
            Ok(())
        })
        .expect_err("shape");
    assert!(err.to_string().contains("[3]"), "{err}");
}
