//! Weight deltas, per algorithm, exactly as A1111 computes them (`extensions-builtin/Lora/`,
//! `network_*.py`, `lyco_helpers.py`), then `network.py finalize_updown`: add the `bias` term,
//! scale by `scale` (or `alpha / dim`, or 1), apply DoRA, multiply by the strength.
//!
//! Everything runs in `f32` on the CPU, one layer at a time: the largest array alive is one
//! layer's ΔW (and the factors it is made of).

use super::keys::Component;
use super::math::{Dense, kron, make_weight_cp, matmul, rebuild_cp};
use super::modules::{Algorithm, AlphaSource, LoraModule};
use super::source::LoraSource;
use crate::error::{Error, Result};
use crate::tensor::Shape;

/// The change one module makes to its layer, already multiplied by the strength.
#[derive(Debug)]
pub(crate) struct Patch {
    /// ΔW, in the weight's shape.
    pub(crate) weight: Vec<f32>,
    /// The bias difference (`diff_b`, `b_norm`), if the module has one.
    pub(crate) bias: Option<Vec<f32>>,
}

/// Reads a module's tensors and reports errors against its file.
pub(crate) struct ModuleReader<'a> {
    pub(crate) module: &'a LoraModule,
    pub(crate) source: &'a LoraSource,
    /// The target layer (`down_blocks.0.attentions.0.proj_in`), for messages.
    pub(crate) target: &'a str,
    /// The layer's bias shape, if it has a bias.
    pub(crate) bias: Option<&'a [usize]>,
    /// The layer's weight shape.
    pub(crate) layer: &'a [usize],
}

impl ModuleReader<'_> {
    fn get(&self, part: &str) -> Result<Option<Dense>> {
        let Some(key) = self.module.key(part) else {
            return Ok(None);
        };
        let dims = self
            .source
            .info(key)
            .map(|i| i.shape.dims().to_vec())
            .ok_or_else(|| Error::MissingWeight {
                name: key.to_string(),
                source_desc: self.source.describe(),
            })?;
        let data = self.source.read(key)?;
        Ok(Some(Dense::new(dims, data)?))
    }

    fn need(&self, part: &str) -> Result<Dense> {
        self.get(part)?.ok_or_else(|| {
            Error::Internal(format!(
                "module `{}` was classified {} without its `{part}`",
                self.module.name, self.module.algorithm
            ))
        })
    }

    fn scalar(&self, part: &str) -> Result<Option<f32>> {
        match self.get(part)? {
            None => Ok(None),
            Some(d) if d.len() == 1 => Ok(d.data.first().copied()),
            Some(d) => Err(self.bad(format!(
                "`{}` should hold one value, it has shape {:?}",
                self.module.key(part).unwrap_or(part),
                d.dims
            ))),
        }
    }

    /// An error about the file's own tensors (they do not fit each other).
    fn bad(&self, reason: String) -> Error {
        Error::invalid_file(
            self.source.describe(),
            format!("LoRA module `{}`: {reason}", self.module.name),
        )
    }

    /// The error for a delta that does not fit the layer.
    fn misfit(&self, layer: &[usize], got: &[usize]) -> Error {
        Error::WeightShape {
            name: self.module.main_key().to_string(),
            source_desc: format!(
                "{} (a {} module for `{}.weight`)",
                self.source.describe(),
                self.module.algorithm,
                self.target
            ),
            expected: Shape::new(layer.to_vec()),
            got: Shape::new(got.to_vec()),
        }
    }

    fn dims_of(&self, d: &Dense) -> String {
        format!("{:?}", d.dims)
    }

    /// Refuses an array of `dims` larger than a few times the layer: tensors from the file
    /// decide these sizes, and no algorithm needs more for a delta that fits.
    fn room(&self, dims: &[usize]) -> Result<()> {
        let size = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let limit = self
            .layer
            .iter()
            .product::<usize>()
            .saturating_mul(4)
            .max(1 << 12);
        match size {
            Some(n) if n <= limit => Ok(()),
            _ => Err(self.misfit(self.layer, dims)),
        }
    }
}

/// What an algorithm produces before `finalize_updown`.
struct Raw {
    delta: Dense,
    ex_bias: Option<Dense>,
    /// `dim` of A1111's `calc_scale` (the rank), when the algorithm has one.
    dim: Option<usize>,
}

/// The patch `module` makes to a layer whose current weight is `weight`, at `strength`.
///
/// # Errors
/// [`Error::WeightShape`] when the delta does not fit the layer, [`Error::InvalidFile`] when
/// the module's tensors do not fit each other, read errors of the file.
pub(crate) fn compute(r: &ModuleReader<'_>, weight: &Dense, strength: f32) -> Result<Patch> {
    let raw = match r.module.algorithm {
        Algorithm::Lora => lora(r)?,
        Algorithm::LoHa => loha(r)?,
        Algorithm::LoKr => lokr(r, weight)?,
        Algorithm::Ia3 => ia3(r, weight)?,
        Algorithm::Full => Raw {
            delta: r.need("diff")?,
            ex_bias: r.get("diff_b")?,
            dim: None,
        },
        Algorithm::Norm => Raw {
            delta: r.need("w_norm")?,
            ex_bias: r.get("b_norm")?,
            dim: None,
        },
        Algorithm::GLoRA => glora(r, weight)?,
    };
    finalize(r, raw, weight, strength)
}

/// `network.py finalize_updown`.
fn finalize(r: &ModuleReader<'_>, raw: Raw, weight: &Dense, strength: f32) -> Result<Patch> {
    let mut delta = raw.delta;
    if let Some(bias) = r.get("bias")? {
        if bias.len() != delta.len() {
            return Err(r.bad(format!(
                "`bias` has shape {}, the delta {}",
                r.dims_of(&bias),
                r.dims_of(&delta)
            )));
        }
        delta
            .data
            .iter_mut()
            .zip(&bias.data)
            .for_each(|(d, b)| *d += b);
    }
    let mut delta = fit(r, delta, &weight.dims)?;
    let scale = scale(r, raw.dim)?;
    delta.data.iter_mut().for_each(|d| *d *= scale);
    if let Some(magnitude) = dora_magnitude(r)? {
        delta = dora(r, delta, weight, &magnitude)?;
    }
    delta.data.iter_mut().for_each(|d| *d *= strength);
    // A bias difference for a layer without a bias is reported by the caller and left out.
    let bias = match (raw.ex_bias, r.bias) {
        (Some(b), Some(shape)) => {
            if b.len() != shape.iter().product::<usize>() {
                let key = r.module.key("diff_b").or_else(|| r.module.key("b_norm"));
                return Err(Error::WeightShape {
                    name: key.unwrap_or(&r.module.name).to_string(),
                    source_desc: format!("{} (bias of `{}`)", r.source.describe(), r.target),
                    expected: Shape::new(shape.to_vec()),
                    got: Shape::new(b.dims),
                });
            }
            let mut b = b.data;
            b.iter_mut().for_each(|v| *v *= strength);
            Some(b)
        }
        _ => None,
    };
    Ok(Patch {
        weight: delta.data,
        bias,
    })
}

/// Makes the delta the layer's shape: equal shapes, a flattened form with the same output
/// rows and size (`[out, in·kh·kw]` for `[out, in, kh, kw]`, `[out, in]` for a 1×1 convolution),
/// or 4 input channels for a 9-channel inpainting `conv_in` (zero-padded, as A1111 does).
fn fit(r: &ModuleReader<'_>, delta: Dense, layer: &[usize]) -> Result<Dense> {
    let size: usize = layer.iter().product();
    if delta.dims == layer {
        return Ok(delta);
    }
    let rows_match = delta.dim(0) == layer.first().copied().unwrap_or(0);
    if delta.len() == size && (layer.len() == 1 || rows_match) {
        return delta.reshaped(layer.to_vec());
    }
    if let [out, 9, kh, kw] = *layer
        && delta.dims == [out, 4, kh, kw]
    {
        let k = kh * kw;
        let mut data = vec![0.0f32; size];
        for o in 0..out {
            let src = &delta.data[o * 4 * k..(o + 1) * 4 * k];
            data[o * 9 * k..o * 9 * k + 4 * k].copy_from_slice(src);
        }
        return Dense::new(layer.to_vec(), data);
    }
    Err(r.misfit(layer, &delta.dims))
}

/// `network.py calc_scale`: the `scale` tensor, else `alpha / dim`, else 1.
fn scale(r: &ModuleReader<'_>, dim: Option<usize>) -> Result<f32> {
    if let Some(s) = r.scalar("scale")? {
        return Ok(s);
    }
    #[allow(clippy::cast_precision_loss)]
    let dim = dim.map(|d| d as f32);
    Ok(match (r.module.alpha, dim) {
        (AlphaSource::Tensor, Some(dim)) => match r.scalar("alpha")? {
            Some(alpha) => alpha / dim,
            None => 1.0,
        },
        (AlphaSource::PeftConfig { alpha, rslora }, Some(dim)) => {
            if rslora {
                alpha / dim.sqrt()
            } else {
                alpha / dim
            }
        }
        (_, None) => 1.0,
    })
}

/// `a [m, k] · b [k, n]` with both flattened to matrices, checking the inner sizes.
fn product(r: &ModuleReader<'_>, a: &Dense, b: &Dense, what: &str) -> Result<Dense> {
    let (m, k) = a.rows();
    let (k2, n) = b.rows();
    if k != k2 {
        return Err(r.bad(format!(
            "{what}: shapes {} and {} do not multiply",
            r.dims_of(a),
            r.dims_of(b)
        )));
    }
    r.room(&[m, n])?;
    Dense::new(vec![m, n], matmul(&a.data, m, k, &b.data, n)?)
}

/// `network_lora.py`: `up · down`, or the CP form `einsum(mid, up, down)`.
fn lora(r: &ModuleReader<'_>) -> Result<Raw> {
    let up = r.need("lora_up.weight")?;
    let down = r.need("lora_down.weight")?;
    let rank = down.dim(0);
    let delta = match r.get("lora_mid.weight")? {
        Some(mid) => {
            let (out, up_rank) = up.rows();
            let (_, inp) = down.rows();
            if mid.dims.len() != 4 || mid.dim(0) != up_rank || mid.dim(1) != rank {
                return Err(r.bad(format!(
                    "lora_mid {} does not join lora_up {} and lora_down {}",
                    r.dims_of(&mid),
                    r.dims_of(&up),
                    r.dims_of(&down)
                )));
            }
            let k = mid.dim(2).saturating_mul(mid.dim(3));
            r.room(&[mid.dim(0), k, inp])?;
            r.room(&[out, inp, k])?;
            let d = rebuild_cp(&mid, &up, &down)?;
            debug_assert_eq!(d.dims, vec![out, inp, mid.dim(2), mid.dim(3)]);
            d
        }
        None => {
            let p = product(r, &up, &down, "lora_up · lora_down")?;
            let mut dims = vec![p.dim(0)];
            dims.extend(down.dims.iter().skip(1));
            p.reshaped(dims)?
        }
    };
    Ok(Raw {
        delta,
        ex_bias: None,
        dim: Some(rank),
    })
}

/// `network_hada.py`: `(w1a · w1b) ⊙ (w2a · w2b)`, each factor optionally Tucker
/// (`make_weight_cp(t, wa, wb)`).
fn loha(r: &ModuleReader<'_>) -> Result<Raw> {
    let (w1a, w1b) = (r.need("hada_w1_a")?, r.need("hada_w1_b")?);
    let (w2a, w2b) = (r.need("hada_w2_a")?, r.need("hada_w2_b")?);
    let dim = w1b.dim(0);
    let (first, shape) = match r.get("hada_t1")? {
        Some(t1) => {
            let d = tucker(r, &t1, &w1a, &w1b, "hada_t1")?;
            let shape = d.dims.clone();
            (d, shape)
        }
        None => {
            let mut shape = vec![w1a.dim(0), w1b.dim(1)];
            if w1b.dims.len() == 4 {
                shape.extend(w1b.dims.iter().skip(2));
            }
            (product(r, &w1a, &w1b, "hada_w1_a · hada_w1_b")?, shape)
        }
    };
    let second = match r.get("hada_t2")? {
        Some(t2) => tucker(r, &t2, &w2a, &w2b, "hada_t2")?,
        None => product(r, &w2a, &w2b, "hada_w2_a · hada_w2_b")?,
    };
    let size: usize = shape.iter().product();
    if first.len() != size || second.len() != size {
        return Err(r.bad(format!(
            "the two LoHa products ({} and {}) do not both give {shape:?}",
            r.dims_of(&first),
            r.dims_of(&second)
        )));
    }
    let data = first
        .data
        .iter()
        .zip(&second.data)
        .map(|(a, b)| a * b)
        .collect();
    Ok(Raw {
        delta: Dense::new(shape, data)?,
        ex_bias: None,
        dim: Some(dim),
    })
}

/// `make_weight_cp(t, wa, wb)` with shape checks: `t [a, b, kh, kw]`, `wa [a, out]`,
/// `wb [b, in]`.
fn tucker(r: &ModuleReader<'_>, t: &Dense, wa: &Dense, wb: &Dense, name: &str) -> Result<Dense> {
    if t.dims.len() != 4 || wa.dims.len() != 2 || wb.dims.len() != 2 {
        return Err(r.bad(format!(
            "{name} {} needs 2-D factors, found {} and {}",
            r.dims_of(t),
            r.dims_of(wa),
            r.dims_of(wb)
        )));
    }
    if wa.dim(0) != t.dim(0) || wb.dim(0) != t.dim(1) {
        return Err(r.bad(format!(
            "{name} {} does not join {} and {}",
            r.dims_of(t),
            r.dims_of(wa),
            r.dims_of(wb)
        )));
    }
    let k = t
        .dims
        .iter()
        .skip(2)
        .fold(1usize, |a, &d| a.saturating_mul(d));
    r.room(&[t.dim(0), k, wb.dim(1)])?;
    r.room(&[wa.dim(1), wb.dim(1), k])?;
    make_weight_cp(t, wa, wb)
}

/// `network_lokr.py`: `kron(w1, w2)`, each factor full or a product; for a convolution `w1`
/// gains two unit dimensions when `w2` is 4-D (`make_kron`).
fn lokr(r: &ModuleReader<'_>, weight: &Dense) -> Result<Raw> {
    let w1b = r.get("lokr_w1_b")?;
    let w2b = r.get("lokr_w2_b")?;
    // A1111 reads dim from w1_b, then from w2_b when present.
    let dim = w2b.as_ref().or(w1b.as_ref()).map(|d| d.dim(0));
    let w1 = match r.get("lokr_w1")? {
        Some(w) => w,
        None => {
            let w1a = r.need("lokr_w1_a")?;
            let w1b = w1b.ok_or_else(|| Error::Internal("LoKr without w1_b".into()))?;
            product(r, &w1a, &w1b, "lokr_w1_a · lokr_w1_b")?
        }
    };
    let w2 = match r.get("lokr_w2")? {
        Some(w) => w,
        None => {
            let w2a = r.need("lokr_w2_a")?;
            let w2b = w2b.ok_or_else(|| Error::Internal("LoKr without w2_b".into()))?;
            match r.get("lokr_t2")? {
                Some(t2) => tucker(r, &t2, &w2a, &w2b, "lokr_t2")?,
                None => product(r, &w2a, &w2b, "lokr_w2_a · lokr_w2_b")?,
            }
        }
    };
    if w1.dims.len() != 2 {
        return Err(r.bad(format!("lokr_w1 should be 2-D, it is {}", r.dims_of(&w1))));
    }
    let w1 = if w2.dims.len() == 4 {
        let (a, b) = (w1.dim(0), w1.dim(1));
        w1.reshaped(vec![a, b, 1, 1])?
    } else {
        w1
    };
    if w1.dims.len() != w2.dims.len() {
        return Err(r.bad(format!(
            "the Kronecker factors {} and {} differ in rank",
            r.dims_of(&w1),
            r.dims_of(&w2)
        )));
    }
    let kron_dims: Vec<usize> = w1
        .dims
        .iter()
        .zip(&w2.dims)
        .map(|(a, b)| a.saturating_mul(*b))
        .collect();
    r.room(&kron_dims)?;
    let k = kron(&w1, &w2)?;
    // A1111 reshapes to the convolution's own shape (`output_shape = orig_weight.shape`).
    let delta = if weight.dims.len() == 4 && k.len() == weight.len() {
        k.reshaped(weight.dims.clone())?
    } else {
        k
    };
    Ok(Raw {
        delta,
        ex_bias: None,
        dim,
    })
}

/// `network_ia3.py`: the weight scaled per output row (or per input column with `on_input`).
fn ia3(r: &ModuleReader<'_>, weight: &Dense) -> Result<Raw> {
    let w = r.need("weight")?;
    let on_input = r.scalar("on_input")?.is_some_and(|v| v != 0.0);
    let [out, inp] = weight.dims[..] else {
        return Err(r.misfit(&weight.dims, &w.dims));
    };
    let want = if on_input { inp } else { out };
    if w.len() != want {
        let dims = if on_input {
            [out, w.len()]
        } else {
            [w.len(), inp]
        };
        return Err(r.misfit(&weight.dims, &dims));
    }
    let mut data = weight.data.clone();
    for (i, row) in data.chunks_mut(inp.max(1)).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v *= if on_input { w.data[j] } else { w.data[i] };
        }
    }
    Ok(Raw {
        delta: Dense::new(weight.dims.clone(), data)?,
        ex_bias: None,
        dim: None,
    })
}

/// `network_glora.py`: `b2 · b1 + (W · a2) · a1`.
fn glora(r: &ModuleReader<'_>, weight: &Dense) -> Result<Raw> {
    let (a1, a2) = (r.need("a1.weight")?, r.need("a2.weight")?);
    let (b1, b2) = (r.need("b1.weight")?, r.need("b2.weight")?);
    if weight.dims.len() != 2 {
        return Err(r.misfit(
            &weight.dims,
            &[b2.dim(0), b1.dims.get(1).copied().unwrap_or(0)],
        ));
    }
    let first = product(r, &b2, &b1, "b2 · b1")?;
    let wa2 = product(r, weight, &a2, "W · a2")?;
    let second = product(r, &wa2, &a1, "(W · a2) · a1")?;
    if first.dims != second.dims {
        return Err(r.bad(format!(
            "b2 · b1 is {}, (W · a2) · a1 is {}",
            r.dims_of(&first),
            r.dims_of(&second)
        )));
    }
    let data = first
        .data
        .iter()
        .zip(&second.data)
        .map(|(a, b)| a + b)
        .collect();
    Ok(Raw {
        delta: Dense::new(first.dims.clone(), data)?,
        ex_bias: None,
        dim: None,
    })
}

/// A DoRA magnitude: kohya / LyCORIS `dora_scale` or PEFT `lora_magnitude_vector`.
struct Magnitude {
    values: Dense,
    /// PEFT's tensor: always per output row.
    peft: bool,
}

fn dora_magnitude(r: &ModuleReader<'_>) -> Result<Option<Magnitude>> {
    if let Some(values) = r.get("dora_scale")? {
        return Ok(Some(Magnitude {
            values,
            peft: false,
        }));
    }
    Ok(r.get("lora_magnitude_vector")?
        .map(|values| Magnitude { values, peft: true }))
}

/// Weight decomposition (DoRA): `M = W + ΔW`, `ΔW' = M · (m / ‖M‖) − W`, with the norm taken
/// per input column (A1111 `apply_weight_decompose`: `dora_scale` `[1, in, ..]`) or per output
/// row (PEFT `lora_magnitude_vector`, LyCORIS `dora_scale` `[out, 1, ..]` or a 1-D `[out]` when
/// `out != in`).
fn dora(r: &ModuleReader<'_>, delta: Dense, weight: &Dense, m: &Magnitude) -> Result<Dense> {
    if weight.dims.len() < 2 {
        return Err(r.misfit(&weight.dims, &m.values.dims));
    }
    let (out, inp) = (weight.dim(0), weight.dim(1));
    let k = weight.len() / (out * inp).max(1);
    let ds = &m.values;
    let per_output = m.peft
        || if ds.dims.len() >= 2 {
            ds.dim(0) == out && ds.dims.iter().skip(1).all(|&d| d == 1)
        } else {
            ds.len() == out && ds.len() != inp
        };
    let want = if per_output { out } else { inp };
    if ds.len() != want {
        let mut expected = vec![1; weight.dims.len()];
        expected[usize::from(!per_output)] = want;
        return Err(Error::WeightShape {
            name: r
                .module
                .key("dora_scale")
                .or_else(|| r.module.key("lora_magnitude_vector"))
                .unwrap_or(&r.module.name)
                .to_string(),
            source_desc: format!(
                "{} (DoRA magnitude for `{}.weight` {:?})",
                r.source.describe(),
                r.target,
                weight.dims
            ),
            expected: Shape::new(expected),
            got: Shape::new(ds.dims.clone()),
        });
    }
    let merged: Vec<f32> = weight
        .data
        .iter()
        .zip(&delta.data)
        .map(|(w, d)| w + d)
        .collect();
    let mut norms = vec![0f64; want];
    for (idx, v) in merged.iter().enumerate() {
        let slot = if per_output {
            idx / (inp * k)
        } else {
            (idx / k) % inp
        };
        norms[slot] += f64::from(*v) * f64::from(*v);
    }
    #[allow(clippy::cast_possible_truncation)]
    let factor: Vec<f32> = norms
        .iter()
        .zip(&ds.data)
        .map(|(n, m)| (f64::from(*m) / n.sqrt()) as f32)
        .collect();
    let data = merged
        .iter()
        .zip(&weight.data)
        .enumerate()
        .map(|(idx, (mv, w))| {
            let slot = if per_output {
                idx / (inp * k)
            } else {
                (idx / k) % inp
            };
            mv * factor[slot] - w
        })
        .collect();
    Dense::new(weight.dims.clone(), data)
}

/// Which strength applies to a module.
pub(crate) fn strength_for(component: Component, text_encoder: f32, unet: f32) -> f32 {
    match component {
        Component::TextEncoder => text_encoder,
        Component::Unet => unet,
    }
}
