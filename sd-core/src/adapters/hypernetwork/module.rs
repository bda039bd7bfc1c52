//! One hypernetwork module (`HypernetworkModule`): its layers, read from a state dict and checked
//! against the layout the settings imply, and its forward pass.

use std::collections::HashMap;
use std::path::Path;

use super::activation::{HypernetworkActivation, check_prelu_weight};
use super::structure::{HypernetworkSettings, Slot};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};
use crate::weights::ckpt::CkptFile;
use crate::weights::pickle::TensorId;

/// PyTorch's `LayerNorm` epsilon (A1111 builds `torch.nn.LayerNorm(width)`).
const LAYER_NORM_EPS: f64 = 1e-5;

/// A layer that computes something at inference (dropout slots are dropped after checking).
#[derive(Debug, Clone)]
enum Layer {
    Linear {
        weight: Tensor,
        bias: Tensor,
    },
    Activation {
        act: HypernetworkActivation,
        slope: f32,
    },
    Norm {
        weight: Tensor,
        bias: Tensor,
    },
}

/// The MLP of one side (key or value) of one context width.
#[derive(Debug, Clone)]
pub(crate) struct HypernetworkModule {
    layers: Vec<Layer>,
}

/// `fix_old_state_dict`: NAI / early-A1111 names of a two-Linear module.
const LEGACY_KEYS: [(&str, &str); 4] = [
    ("linear1.bias", "linear.0.bias"),
    ("linear1.weight", "linear.0.weight"),
    ("linear2.bias", "linear.1.bias"),
    ("linear2.weight", "linear.1.weight"),
];

/// Reads one module's state dict against its plan.
struct ModuleReader<'a> {
    path: &'a Path,
    ckpt: &'a CkptFile,
    settings: &'a HypernetworkSettings,
    label: String,
    entries: HashMap<String, TensorId>,
}

impl ModuleReader<'_> {
    fn error(&self, why: String) -> Error {
        Error::invalid_file(
            self.path,
            format!(
                "hypernetwork module {}: {why} (its layout, from {}, is rebuilt as A1111 does)",
                self.label,
                self.settings.describe()
            ),
        )
    }

    /// Takes `key` out of the state dict, checks its shape is `shape`, reads it and checks its
    /// values are finite. `role` says what the layout puts at that index.
    fn take(&mut self, key: &str, role: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let Some(id) = self.entries.remove(key) else {
            return Err(self.error(format!("`{key}` is missing; the layout has {role} there")));
        };
        let found = self
            .ckpt
            .tensor_decl(id)
            .map(|d| d.shape.clone())
            .unwrap_or_default();
        if found != shape {
            let hint = match (found.len(), shape.len()) {
                (1, 2) => " (1-D, as a LayerNorm's, where the layout has a Linear)",
                (2, 1) => " (2-D, as a Linear's, where the layout has a LayerNorm or activation)",
                _ => "",
            };
            return Err(self.error(format!(
                "`{key}` has shape {found:?}{hint}; {role} needs {shape:?}"
            )));
        }
        let name = format!("{}:{key}", self.label);
        let values = self.ckpt.read_f32_id(id, &name)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.error(format!("`{key}` holds {} at element {i}", values[i])));
        }
        Ok(values)
    }
}

impl HypernetworkModule {
    /// Reads the module for context width `width`, side `side` (`k` or `v`), from its state dict
    /// `entries`, following `plan`. Every key the plan needs must be present with its exact
    /// shape, and no other key may be (A1111's strict `load_state_dict`).
    pub(crate) fn load(
        path: &Path,
        ckpt: &CkptFile,
        settings: &HypernetworkSettings,
        plan: &[Slot],
        width: usize,
        side: &str,
        entries: &[(String, TensorId)],
    ) -> Result<Self> {
        let mut map: HashMap<String, TensorId> = entries.iter().cloned().collect();
        for (old, new) in LEGACY_KEYS {
            if let Some(id) = map.remove(old) {
                map.insert(new.to_string(), id);
            }
        }
        let mut reader = ModuleReader {
            path,
            ckpt,
            settings,
            label: format!("{width} ({side})"),
            entries: map,
        };
        let tensor = |values: Vec<f32>, shape: &[usize]| -> Result<Tensor> {
            Tensor::from_vec(values, shape.to_vec(), Device::Cpu)
        };
        let mut layers = Vec::new();
        for (i, slot) in plan.iter().enumerate() {
            let w = format!("linear.{i}.weight");
            let b = format!("linear.{i}.bias");
            match *slot {
                Slot::Linear { input, output } => {
                    let role = format!("a Linear {input} → {output}");
                    let weight = reader.take(&w, &role, &[output, input])?;
                    let bias = reader.take(&b, &role, &[output])?;
                    layers.push(Layer::Linear {
                        weight: tensor(weight, &[output, input])?,
                        bias: tensor(bias, &[output])?,
                    });
                }
                Slot::LayerNorm { width } => {
                    let role = format!("a LayerNorm({width})");
                    let weight = reader.take(&w, &role, &[width])?;
                    let bias = reader.take(&b, &role, &[width])?;
                    layers.push(Layer::Norm {
                        weight: tensor(weight, &[width])?,
                        bias: tensor(bias, &[width])?,
                    });
                }
                Slot::Activation(act) => {
                    let slope = if act.has_weight() {
                        let values = reader.take(&w, "a PReLU", &[1])?;
                        check_prelu_weight(&values)
                            .map_err(|why| reader.error(format!("`{w}` {why}")))?
                    } else {
                        0.0
                    };
                    layers.push(Layer::Activation { act, slope });
                }
                Slot::Dropout => {}
            }
        }
        if !reader.entries.is_empty() {
            let mut extra: Vec<&String> = reader.entries.keys().collect();
            extra.sort();
            let extra: Vec<String> = extra
                .iter()
                .take(8)
                .map(|k| format!("`{}`", k.escape_debug()))
                .collect();
            let describe = |i: usize| match plan.get(i) {
                Some(Slot::Linear { .. }) => "a Linear".to_string(),
                Some(Slot::LayerNorm { .. }) => "a LayerNorm".to_string(),
                Some(Slot::Activation(a)) => format!("the activation {a}"),
                Some(Slot::Dropout) => "a Dropout".to_string(),
                None => "nothing".to_string(),
            };
            let first = reader.entries.keys().min().cloned().unwrap_or_default();
            let index = first
                .strip_prefix("linear.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok());
            let at = index.map_or(String::new(), |i| {
                format!("; the layout has {} at index {i}", describe(i))
            });
            return Err(reader.error(format!(
                "unexpected {} in the state dict{at}",
                extra.join(", ")
            )));
        }
        Ok(HypernetworkModule { layers })
    }

    /// The module on `device`.
    pub(crate) fn to_device(&self, device: Device) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(match l {
                    Layer::Linear { weight, bias } => Layer::Linear {
                        weight: weight.to_device(device)?,
                        bias: bias.to_device(device)?,
                    },
                    Layer::Norm { weight, bias } => Layer::Norm {
                        weight: weight.to_device(device)?,
                        bias: bias.to_device(device)?,
                    },
                    Layer::Activation { act, slope } => Layer::Activation {
                        act: *act,
                        slope: *slope,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HypernetworkModule { layers })
    }

    /// `x + mlp(x) · strength` for an `f32` context `[.., width]`.
    pub(crate) fn forward(&self, x: &Tensor, strength: f32) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = match layer {
                Layer::Linear { weight, bias } => h.linear(weight, Some(bias))?,
                Layer::Activation { act, slope } => act.apply(&h, *slope)?,
                Layer::Norm { weight, bias } => h.layer_norm(weight, bias, LAYER_NORM_EPS)?,
            };
        }
        Tensor::linear_combination(&[(1.0, x), (strength, &h)])
    }
}
