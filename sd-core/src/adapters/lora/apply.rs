//! Applying LoRAs to a text encoder and a UNet (A1111 `networks.py network_apply_weights`):
//! each LoRA in turn patches the current weights, `W ← W + strength · ΔW(W)`, so that the
//! weight-dependent algorithms (DoRA, IA3, GLoRA) see what the earlier LoRAs left.

use std::collections::HashMap;

use super::LoraUse;
use super::delta::{ModuleReader, compute, strength_for};
use super::keys::Component;
use super::math::Dense;
use super::report::{AppliedModule, LoraApplied, LoraReport, SkipReason, SkippedKey};
use super::targets::{Target, TargetTable, text_encoder_aliases, unet_ldm_aliases};
use crate::error::{Error, Result};
use crate::models::{ClipTextModel, ParamMut, UNet2DConditionModel};
use crate::tensor::{Device, Tensor};

/// One module to apply to one parameter: `(use index, module index)`.
type Step = (usize, usize);

/// Patches `text_encoder` and `unet` with `loras`, in order, each at its own text-encoder and
/// UNet strength (A1111's `<lora:name:te:unet>`), and reports what was applied and every key
/// that was not, with the reason.
///
/// Pass clones of the loaded models (cloning shares every tensor; only the patched ones take
/// new memory): the models given are changed, and on error they may be partly patched.
///
/// # Errors
/// [`Error::InvalidArgument`] for a strength that is NaN or infinite;
/// [`Error::Unsupported`] for a LoRA made for another model family (SDXL, SD 2.x, …), naming
/// the evidence; [`Error::WeightShape`] naming the LoRA key, the layer and both shapes when a
/// module does not fit its layer; [`Error::InvalidFile`] for a module whose tensors do not fit
/// each other or a patch that leaves non-finite weights; read and device errors.
pub fn apply_loras(
    loras: &[LoraUse],
    text_encoder: &mut ClipTextModel,
    unet: &mut UNet2DConditionModel,
) -> Result<LoraReport> {
    for u in loras {
        for (name, value) in [
            ("text_encoder_strength", u.text_encoder_strength),
            ("unet_strength", u.unet_strength),
        ] {
            if !value.is_finite() {
                return Err(Error::invalid_argument(
                    name,
                    format!(
                        "{value} for LoRA `{}` is not a finite number",
                        u.lora.name()
                    ),
                ));
            }
        }
        if let Some(family) = u.lora.other_family() {
            return Err(Error::Unsupported(format!(
                "LoRA `{}` ({}) is an adapter for another model family: {family}; the loaded \
                 model is Stable Diffusion 1.x",
                u.lora.name(),
                u.lora.describe()
            )));
        }
    }

    let te_params = shapes(|f| text_encoder.visit_parameters(f))?;
    let unet_params = shapes(|f| unet.visit_parameters(f))?;
    let te_table = TargetTable::new(&te_params, &text_encoder_aliases(&te_params));
    let unet_table = TargetTable::new(&unet_params, &unet_ldm_aliases(unet.config(), &unet_params));

    let mut reports: Vec<LoraApplied> = loras
        .iter()
        .map(|u| LoraApplied {
            name: u.lora.name().to_string(),
            text_encoder_strength: u.text_encoder_strength,
            unet_strength: u.unet_strength,
            applied: Vec::new(),
            skipped: u.lora.skipped_keys().to_vec(),
        })
        .collect();
    // parameter name → steps, per model part.
    let mut plans: HashMap<Component, HashMap<String, Vec<Step>>> = HashMap::new();
    // (use, module) → target layer.
    let mut targets: HashMap<Step, Target> = HashMap::new();
    for (ui, u) in loras.iter().enumerate() {
        for (mi, m) in u.lora.modules.iter().enumerate() {
            let table = match m.component {
                Component::TextEncoder => &te_table,
                Component::Unet => &unet_table,
            };
            let skip_all = |reason: SkipReason, out: &mut Vec<SkippedKey>| {
                out.extend(m.all_keys().map(|key| SkippedKey {
                    key: key.to_string(),
                    reason: reason.clone(),
                }));
            };
            let target = match table.resolve(&m.path) {
                Some(t) if t.weight.is_some() => t,
                _ => {
                    skip_all(SkipReason::UnknownModule, &mut reports[ui].skipped);
                    continue;
                }
            };
            let strength = strength_for(m.component, u.text_encoder_strength, u.unet_strength);
            if strength == 0.0 {
                skip_all(SkipReason::ZeroStrength, &mut reports[ui].skipped);
                continue;
            }
            if target.bias.is_none() {
                for part in ["diff_b", "b_norm"] {
                    if let Some(key) = m.key(part) {
                        reports[ui].skipped.push(SkippedKey {
                            key: key.to_string(),
                            reason: SkipReason::NoBiasParameter {
                                target: target.path.clone(),
                            },
                        });
                    }
                }
            }
            plans
                .entry(m.component)
                .or_default()
                .entry(format!("{}.weight", target.path))
                .or_default()
                .push((ui, mi));
            targets.insert((ui, mi), target.clone());
        }
    }

    let mut applied: Vec<Step> = Vec::new();
    let mut biases: HashMap<String, Vec<Vec<f32>>> = HashMap::new();
    let empty = HashMap::new();
    let te_plan = plans.get(&Component::TextEncoder).unwrap_or(&empty);
    let unet_plan = plans.get(&Component::Unet).unwrap_or(&empty);
    text_encoder.visit_parameters(&mut |name, p| {
        patch_weight(name, p, te_plan, loras, &targets, &mut applied, &mut biases)
    })?;
    unet.visit_parameters(&mut |name, p| {
        patch_weight(
            name,
            p,
            unet_plan,
            loras,
            &targets,
            &mut applied,
            &mut biases,
        )
    })?;
    if !biases.is_empty() {
        text_encoder.visit_parameters(&mut |name, p| patch_bias(name, p, &biases))?;
        unet.visit_parameters(&mut |name, p| patch_bias(name, p, &biases))?;
    }

    applied.sort_unstable();
    for (ui, mi) in applied {
        let m = &loras[ui].lora.modules[mi];
        reports[ui].applied.push(AppliedModule {
            module: m.name.clone(),
            target: targets
                .get(&(ui, mi))
                .map(|t| t.path.clone())
                .unwrap_or_default(),
            component: m.component,
            algorithm: m.algorithm,
        });
    }
    Ok(LoraReport { loras: reports })
}

/// `(name, PyTorch shape)` of every parameter.
fn shapes(
    visit: impl FnOnce(&mut dyn FnMut(&str, ParamMut<'_>) -> Result<()>) -> Result<()>,
) -> Result<Vec<(String, Vec<usize>)>> {
    let mut out = Vec::new();
    visit(&mut |name, p| {
        out.push((name.to_string(), p.torch_shape()));
        Ok(())
    })?;
    Ok(out)
}

/// Applies every step planned for parameter `name`, in order, on the current value.
fn patch_weight(
    name: &str,
    mut p: ParamMut<'_>,
    plan: &HashMap<String, Vec<Step>>,
    loras: &[LoraUse],
    targets: &HashMap<Step, Target>,
    applied: &mut Vec<Step>,
    biases: &mut HashMap<String, Vec<Vec<f32>>>,
) -> Result<()> {
    let Some(steps) = plan.get(name) else {
        return Ok(());
    };
    let current = p.value()?;
    let (device, dtype) = (current.device(), current.dtype());
    let mut weight = Dense::new(p.torch_shape(), current.to_vec()?)?;
    drop(current);
    for &(ui, mi) in steps {
        let u = &loras[ui];
        let module = &u.lora.modules[mi];
        let target = targets
            .get(&(ui, mi))
            .ok_or_else(|| Error::Internal(format!("no target planned for `{}`", module.name)))?;
        let reader = ModuleReader {
            module,
            source: &u.lora.source,
            target: &target.path,
            bias: target.bias.as_deref(),
            layer: &weight.dims,
        };
        let strength = strength_for(module.component, u.text_encoder_strength, u.unet_strength);
        let patch = compute(&reader, &weight, strength)?;
        weight
            .data
            .iter_mut()
            .zip(&patch.weight)
            .for_each(|(w, d)| *w += d);
        if weight.data.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid_file(
                u.lora.describe(),
                format!(
                    "module `{}` makes `{name}` non-finite (a zero norm under DoRA, or overflow)",
                    module.name
                ),
            ));
        }
        if let Some(bias) = patch.bias {
            biases
                .entry(format!("{}.bias", target.path))
                .or_default()
                .push(bias);
        }
        applied.push((ui, mi));
    }
    p.set(on_device(weight, device, dtype)?)
}

/// Adds the planned bias differences to parameter `name`.
fn patch_bias(
    name: &str,
    mut p: ParamMut<'_>,
    biases: &HashMap<String, Vec<Vec<f32>>>,
) -> Result<()> {
    let Some(deltas) = biases.get(name) else {
        return Ok(());
    };
    let current = p.value()?;
    let (device, dtype) = (current.device(), current.dtype());
    let mut bias = Dense::new(p.torch_shape(), current.to_vec()?)?;
    for d in deltas {
        if d.len() != bias.len() {
            return Err(Error::Internal(format!(
                "a bias difference of {} values for `{name}` {:?} passed the shape check",
                d.len(),
                bias.dims
            )));
        }
        bias.data.iter_mut().zip(d).for_each(|(b, v)| *b += v);
    }
    p.set(on_device(bias, device, dtype)?)
}

fn on_device(values: Dense, device: Device, dtype: crate::tensor::DType) -> Result<Tensor> {
    Tensor::from_vec(values.data, values.dims, Device::Cpu)?
        .to_device(device)?
        .to_dtype(dtype)
}
