//! A hypernetwork's settings (its metadata with A1111's defaults applied) and the module layout
//! they imply.
//!
//! A1111 stores each module as the state dict of a `torch.nn.Sequential` whose indices count every
//! appended module: Linear layers, activations, LayerNorms and Dropouts. The keys of a file are
//! therefore only meaningful against the sequence rebuilt from the metadata
//! (`HypernetworkModule.__init__` in `modules/hypernetworks/hypernetwork.py`), which
//! [`HypernetworkSettings::plan`] reproduces.

use super::activation::HypernetworkActivation;
use crate::weights::pickle::HypernetworkFile;

/// Largest width a layer of a module may have (the widest SD attention context is 2048; a
/// `layer_structure` multiplier of 16 on it stays below this).
const MAX_LAYER_WIDTH: f64 = (1u64 << 20) as f64;

/// The settings a hypernetwork's modules are built from: its metadata, with the defaults
/// A1111's `Hypernetwork.load` applies to absent keys.
#[derive(Debug, Clone, PartialEq)]
pub struct HypernetworkSettings {
    /// Width multipliers of the layers, first and last 1 (`layer_structure`, default `[1, 2, 1]`).
    pub layer_structure: Vec<f64>,
    /// The file's `activation_func` as written (`None` when absent or `None`).
    pub activation_name: Option<String>,
    /// The activation it names; `None` for no activation (`None` or `"linear"`).
    pub activation: Option<HypernetworkActivation>,
    /// Whether a LayerNorm follows every Linear (`is_layer_norm`, default false).
    pub layer_norm: bool,
    /// Dropout probability after each layer (`dropout_structure`, or derived from `use_dropout`
    /// and `last_layer_dropout` when absent). Dropout does nothing at inference but occupies a
    /// slot of the sequence.
    pub dropout_structure: Vec<f64>,
    /// Whether the last Linear is followed by the activation too (`activate_output`, default
    /// **true**, the value A1111 assumes for files that predate the key).
    pub activate_output: bool,
    /// `use_dropout` as A1111 resolves it: true when `dropout_structure` has a non-zero entry,
    /// else the stored flag (default false).
    pub use_dropout: bool,
    /// `last_layer_dropout` (default false).
    pub last_layer_dropout: bool,
    /// `weight_initialization` (training only; default `Normal`).
    pub weight_initialization: String,
}

/// One slot of a module's `torch.nn.Sequential`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Slot {
    /// `Linear(input → output)` with bias: `weight [output, input]`, `bias [output]`.
    Linear { input: usize, output: usize },
    /// An activation; [`HypernetworkActivation::Prelu`] has a `weight [1]`.
    Activation(HypernetworkActivation),
    /// `LayerNorm(width)`: `weight [width]`, `bias [width]`.
    LayerNorm { width: usize },
    /// `Dropout(p)`: nothing at inference.
    Dropout,
}

/// A1111's `parse_dropout_structure`: no dropout unless `use_dropout`; then 0.3 after every hidden
/// layer but the last, after the last hidden one only with `last_layer_dropout`, never after the
/// output. (For a two-entry `layer_structure` this yields three entries, as A1111's does.)
fn derived_dropout(layers: usize, use_dropout: bool, last_layer_dropout: bool) -> Vec<f64> {
    if !use_dropout {
        return vec![0.0; layers];
    }
    let mut d = vec![0.0];
    d.extend(std::iter::repeat_n(0.3, layers.saturating_sub(3)));
    d.push(if last_layer_dropout { 0.3 } else { 0.0 });
    d.push(0.0);
    d
}

impl HypernetworkSettings {
    /// Resolves a file's metadata as A1111's `Hypernetwork.load` does, and checks it.
    ///
    /// # Errors
    /// A message naming the offending key: a `layer_structure` that does not start and end
    /// with 1 or has fewer than two entries or non-finite or negative entries, an unknown or
    /// unsupported activation, a `dropout_structure` too short or with a probability of 1 or more.
    pub(crate) fn from_file(file: &HypernetworkFile) -> Result<Self, String> {
        let layer_structure = file
            .layer_structure
            .clone()
            .unwrap_or_else(|| vec![1.0, 2.0, 1.0]);
        if layer_structure.len() < 2
            || layer_structure.first() != Some(&1.0)
            || layer_structure.last() != Some(&1.0)
        {
            return Err(format!(
                "layer_structure {layer_structure:?} must start and end with 1"
            ));
        }
        if let Some(bad) = layer_structure
            .iter()
            .find(|m| !m.is_finite() || **m <= 0.0)
        {
            return Err(format!(
                "layer_structure {layer_structure:?} has the multiplier {bad}, not a positive number"
            ));
        }
        let activation_name = file.activation_func.clone().flatten();
        let activation = HypernetworkActivation::from_a1111_name(activation_name.as_deref())?;
        let stored_dropout = file.dropout_structure.clone();
        let use_dropout = match &stored_dropout {
            Some(d) if d.iter().any(|p| *p != 0.0) => true,
            _ => file.use_dropout.unwrap_or(false),
        };
        let last_layer_dropout = file.last_layer_dropout.unwrap_or(false);
        let dropout_structure = stored_dropout.unwrap_or_else(|| {
            derived_dropout(layer_structure.len(), use_dropout, last_layer_dropout)
        });
        // A1111 reads dropout_structure[i + 1] for every Linear i.
        if dropout_structure.len() < layer_structure.len() {
            return Err(format!(
                "dropout_structure {dropout_structure:?} has fewer entries than layer_structure \
                 {layer_structure:?}"
            ));
        }
        if let Some(p) = dropout_structure
            .iter()
            .skip(1)
            .take(layer_structure.len() - 1)
            .find(|p| **p >= 1.0)
        {
            // A1111 asserts `0 < p < 1` for every positive entry (others mean no dropout).
            return Err(format!(
                "dropout_structure {dropout_structure:?} has the probability {p}, which must be \
                 below 1"
            ));
        }
        Ok(HypernetworkSettings {
            layer_structure,
            activation_name,
            activation,
            layer_norm: file.is_layer_norm.unwrap_or(false),
            dropout_structure,
            activate_output: file.activate_output.unwrap_or(true),
            use_dropout,
            last_layer_dropout,
            weight_initialization: file
                .weight_initialization
                .clone()
                .unwrap_or_else(|| "Normal".to_string()),
        })
    }

    /// The `Sequential` of the module for context width `dim`, slot by slot, as
    /// `HypernetworkModule.__init__` appends them (layer widths are `int(dim · multiplier)`).
    ///
    /// # Errors
    /// A message when a layer width comes out as 0 or absurdly large.
    pub(crate) fn plan(&self, dim: usize) -> Result<Vec<Slot>, String> {
        let ls = &self.layer_structure;
        let width = |m: f64| -> Result<usize, String> {
            // Python's int() of a positive float truncates toward zero, as `as` does.
            #[allow(clippy::cast_precision_loss)]
            let w = (dim as f64 * m).trunc();
            if !(1.0..=MAX_LAYER_WIDTH).contains(&w) {
                return Err(format!(
                    "layer_structure multiplier {m} gives a layer of width {w} for the {dim}-wide \
                     module"
                ));
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(w as usize)
        };
        let mut slots = Vec::new();
        for i in 0..ls.len() - 1 {
            let output = width(ls[i + 1])?;
            slots.push(Slot::Linear {
                input: width(ls[i])?,
                output,
            });
            let is_last = i + 2 >= ls.len();
            if let Some(act) = self.activation
                && (!is_last || self.activate_output)
            {
                slots.push(Slot::Activation(act));
            }
            if self.layer_norm {
                slots.push(Slot::LayerNorm { width: output });
            }
            if self.dropout_structure.get(i + 1).is_some_and(|p| *p > 0.0) {
                slots.push(Slot::Dropout);
            }
        }
        Ok(slots)
    }

    /// A one-line description for messages: `layer_structure [1, 2, 1], relu, layer norm, …`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "layer_structure {:?}, activation {}",
            self.layer_structure,
            self.activation_name.as_deref().unwrap_or("None")
        );
        if self.layer_norm {
            s.push_str(", layer norm");
        }
        if self.dropout_structure.iter().any(|p| *p > 0.0) {
            s.push_str(&format!(", dropout {:?}", self.dropout_structure));
        }
        s.push_str(if self.activate_output {
            ", activated output"
        } else {
            ", linear output"
        });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut HypernetworkFile)) -> Result<HypernetworkSettings, String> {
        let mut file = HypernetworkFile::default();
        f(&mut file);
        HypernetworkSettings::from_file(&file)
    }

    #[test]
    fn defaults_are_a1111_load_defaults() -> Result<(), String> {
        let s = settings(|_| {})?;
        assert_eq!(s.layer_structure, [1.0, 2.0, 1.0]);
        assert_eq!(s.activation, None);
        assert!(s.activate_output && !s.layer_norm && !s.use_dropout);
        assert_eq!(s.dropout_structure, [0.0; 3]);
        // No activation: Linear, Linear (the layout legacy `linear1`/`linear2` keys map onto).
        assert_eq!(
            s.plan(4)?,
            [
                Slot::Linear {
                    input: 4,
                    output: 8
                },
                Slot::Linear {
                    input: 8,
                    output: 4
                }
            ]
        );
        Ok(())
    }

    #[test]
    fn plan_counts_every_slot() -> Result<(), String> {
        use HypernetworkActivation as A;
        let s = settings(|f| {
            f.layer_structure = Some(vec![1.0, 1.5, 0.5, 1.0]);
            f.activation_func = Some(Some("swish".into()));
            f.is_layer_norm = Some(true);
            f.dropout_structure = Some(vec![0.0, 0.25, 0.1, 0.0]);
            f.activate_output = Some(true);
        })?;
        let plan = s.plan(16)?;
        let kinds: Vec<_> = plan
            .iter()
            .map(|s| match s {
                Slot::Linear { input, output } => format!("L{input}-{output}"),
                Slot::Activation(a) => a.to_string(),
                Slot::LayerNorm { width } => format!("N{width}"),
                Slot::Dropout => "D".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "L16-24",
                "hardswish",
                "N24",
                "D",
                "L24-8",
                "hardswish",
                "N8",
                "D",
                "L8-16",
                "hardswish",
                "N16"
            ]
        );
        assert_eq!(s.activation, Some(A::Hardswish));

        // Derived dropout with last_layer_dropout, output not activated.
        let s = settings(|f| {
            f.layer_structure = Some(vec![1.0, 2.0, 2.0, 1.0]);
            f.activation_func = Some(Some("relu".into()));
            f.use_dropout = Some(true);
            f.last_layer_dropout = Some(true);
            f.activate_output = Some(false);
        })?;
        assert_eq!(s.dropout_structure, [0.0, 0.3, 0.3, 0.0]);
        let plan = s.plan(2)?;
        assert_eq!(plan.len(), 7, "{plan:?}");
        assert_eq!(
            plan[6],
            Slot::Linear {
                input: 4,
                output: 2
            }
        );
        Ok(())
    }

    #[test]
    fn bad_metadata_is_refused() {
        assert!(settings(|f| f.layer_structure = Some(vec![2.0, 1.0])).is_err());
        assert!(settings(|f| f.layer_structure = Some(vec![1.0])).is_err());
        assert!(settings(|f| f.layer_structure = Some(vec![1.0, f64::NAN, 1.0])).is_err());
        assert!(settings(|f| f.dropout_structure = Some(vec![0.0, 1.0, 0.0])).is_err());
        assert!(settings(|f| f.dropout_structure = Some(vec![0.0, 0.5])).is_err());
        assert!(settings(|f| f.activation_func = Some(Some("Swish".into()))).is_err());
        // int(3 * 0.2) = 0: a layer of width 0.
        let s = settings(|f| f.layer_structure = Some(vec![1.0, 0.2, 1.0])).expect("settings");
        assert!(s.plan(3).is_err());
        assert!(s.plan(16).is_ok());
    }
}
