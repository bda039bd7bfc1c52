//! A LoRA's modules: the tensors of one targeted layer, grouped by module name, and the
//! algorithm they form, chosen in the order A1111 tries them (`networks.py module_types`:
//! LoRA, LoHa, IA3, LoKr, full, norm, GLoRA; then OFT, which is not supported here).

use std::collections::BTreeMap;

use super::keys::{Component, ModulePath};

/// The LyCORIS part names that may end a dotted key (`unet.<path>.hada_w1_a`).
pub(crate) const LYCORIS_PARTS: &[&str] = &[
    "hada_w1_a",
    "hada_w1_b",
    "hada_w2_a",
    "hada_w2_b",
    "hada_t1",
    "hada_t2",
    "lokr_w1",
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2",
    "lokr_w2_a",
    "lokr_w2_b",
    "lokr_t2",
    "on_input",
    "diff",
    "diff_b",
    "w_norm",
    "b_norm",
    "scale",
    "bias",
    "oft_blocks",
    "oft_diag",
];

/// The weight-update algorithm of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// LoRA / LoCon: `up · down`, optionally with a CP-decomposed `lora_mid` (A1111
    /// `network_lora.py`).
    Lora,
    /// LoHa: the Hadamard product of two low-rank products, optionally Tucker-decomposed
    /// (`network_hada.py`).
    LoHa,
    /// LoKr: the Kronecker product of two (optionally factorized) matrices (`network_lokr.py`).
    LoKr,
    /// IA3: the weight scaled per output row or input column (`network_ia3.py`).
    Ia3,
    /// A full weight difference, `diff` and `diff_b` (`network_full.py`).
    Full,
    /// A norm layer's weight and bias difference, `w_norm` and `b_norm` (`network_norm.py`).
    Norm,
    /// GLoRA: `b2·b1 + W·a2·a1` (`network_glora.py`).
    GLoRA,
}

impl Algorithm {
    /// The name A1111 and LyCORIS use.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Lora => "LoRA",
            Algorithm::LoHa => "LoHa",
            Algorithm::LoKr => "LoKr",
            Algorithm::Ia3 => "IA3",
            Algorithm::Full => "full",
            Algorithm::Norm => "norm",
            Algorithm::GLoRA => "GLoRA",
        }
    }

    /// The parts this algorithm reads (besides the common `alpha`, `scale`, `bias`, DoRA).
    fn parts(self) -> &'static [&'static str] {
        match self {
            Algorithm::Lora => &["lora_up.weight", "lora_down.weight", "lora_mid.weight"],
            Algorithm::LoHa => &[
                "hada_w1_a",
                "hada_w1_b",
                "hada_w2_a",
                "hada_w2_b",
                "hada_t1",
                "hada_t2",
            ],
            Algorithm::LoKr => &[
                "lokr_w1",
                "lokr_w1_a",
                "lokr_w1_b",
                "lokr_w2",
                "lokr_w2_a",
                "lokr_w2_b",
                "lokr_t2",
            ],
            Algorithm::Ia3 => &["weight", "on_input"],
            Algorithm::Full => &["diff", "diff_b"],
            Algorithm::Norm => &["w_norm", "b_norm"],
            Algorithm::GLoRA => &["a1.weight", "a2.weight", "b1.weight", "b2.weight"],
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parts every algorithm reads (network.py `NetworkModule.__init__`).
const COMMON_PARTS: &[&str] = &[
    "alpha",
    "scale",
    "bias",
    "dora_scale",
    "lora_magnitude_vector",
];

/// The tensors found for one module, by part, before an algorithm is chosen.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartSet {
    /// part → full key in the file.
    pub(crate) parts: BTreeMap<String, String>,
}

impl PartSet {
    fn has(&self, part: &str) -> bool {
        self.parts.contains_key(part)
    }

    /// A1111's `create_module` tests, in `module_types` order.
    pub(crate) fn algorithm(&self) -> Option<Algorithm> {
        let all = |parts: &[&str]| parts.iter().all(|p| self.has(p));
        if all(&["lora_up.weight", "lora_down.weight"]) {
            Some(Algorithm::Lora)
        } else if all(&["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]) {
            Some(Algorithm::LoHa)
        } else if self.has("weight") {
            Some(Algorithm::Ia3)
        } else if (self.has("lokr_w1") || all(&["lokr_w1_a", "lokr_w1_b"]))
            && (self.has("lokr_w2") || all(&["lokr_w2_a", "lokr_w2_b"]))
        {
            Some(Algorithm::LoKr)
        } else if self.has("diff") {
            Some(Algorithm::Full)
        } else if all(&["w_norm", "b_norm"]) {
            Some(Algorithm::Norm)
        } else if all(&["a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight"]) {
            Some(Algorithm::GLoRA)
        } else {
            None
        }
    }

    /// Keys the algorithm does not read.
    pub(crate) fn unused(&self, algorithm: Algorithm) -> Vec<String> {
        self.parts
            .iter()
            .filter(|(part, _)| {
                !algorithm.parts().contains(&part.as_str())
                    && !COMMON_PARTS.contains(&part.as_str())
            })
            .map(|(_, key)| key.clone())
            .collect()
    }
}

/// How a module's scale (`alpha / dim`) was written down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AlphaSource {
    /// An `alpha` tensor (kohya, LyCORIS), or none.
    Tensor,
    /// PEFT's `lora_alpha` / `alpha_pattern` from `lora_adapter_metadata`.
    PeftConfig {
        /// The alpha.
        alpha: f32,
        /// rsLoRA: scale by `alpha / sqrt(r)` instead of `alpha / r`.
        rslora: bool,
    },
}

/// One module of a LoRA: a targeted layer and the tensors that patch it.
#[derive(Debug, Clone)]
pub(crate) struct LoraModule {
    /// The name shown in reports: the file's module name (`lora_unet_…`, `unet.down_blocks…`).
    pub(crate) name: String,
    /// The model part.
    pub(crate) component: Component,
    /// The module, as the file names it.
    pub(crate) path: ModulePath,
    /// The algorithm.
    pub(crate) algorithm: Algorithm,
    /// part → key, for the parts the algorithm and the common code read.
    pub(crate) keys: BTreeMap<String, String>,
    /// Where the scale comes from.
    pub(crate) alpha: AlphaSource,
}

impl LoraModule {
    /// The key of a part, if present.
    pub(crate) fn key(&self, part: &str) -> Option<&str> {
        self.keys.get(part).map(String::as_str)
    }

    /// Every key of the module.
    pub(crate) fn all_keys(&self) -> impl Iterator<Item = &str> {
        self.keys.values().map(String::as_str)
    }

    /// The key that names the module in errors: its first algorithm tensor.
    pub(crate) fn main_key(&self) -> &str {
        self.algorithm
            .parts()
            .iter()
            .find_map(|p| self.key(p))
            .or_else(|| self.all_keys().next())
            .unwrap_or(&self.name)
    }
}

/// Builds a module from a part set whose algorithm is known, keeping the parts it reads.
pub(crate) fn build_module(
    name: String,
    component: Component,
    path: ModulePath,
    set: &PartSet,
    algorithm: Algorithm,
    alpha: AlphaSource,
) -> LoraModule {
    let keys = set
        .parts
        .iter()
        .filter(|(part, _)| {
            algorithm.parts().contains(&part.as_str()) || COMMON_PARTS.contains(&part.as_str())
        })
        .map(|(p, k)| (p.clone(), k.clone()))
        .collect();
    LoraModule {
        name,
        component,
        path,
        algorithm,
        keys,
        alpha,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(parts: &[&str]) -> PartSet {
        PartSet {
            parts: parts
                .iter()
                .map(|p| (p.to_string(), format!("m.{p}")))
                .collect(),
        }
    }

    #[test]
    fn algorithms_are_chosen_in_a1111_order() {
        assert_eq!(
            set(&["lora_up.weight", "lora_down.weight", "alpha"]).algorithm(),
            Some(Algorithm::Lora)
        );
        assert_eq!(
            set(&["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]).algorithm(),
            Some(Algorithm::LoHa)
        );
        assert_eq!(
            set(&["weight", "on_input"]).algorithm(),
            Some(Algorithm::Ia3)
        );
        assert_eq!(
            set(&["lokr_w1_a", "lokr_w1_b", "lokr_w2"]).algorithm(),
            Some(Algorithm::LoKr)
        );
        assert_eq!(set(&["diff"]).algorithm(), Some(Algorithm::Full));
        assert_eq!(set(&["w_norm"]).algorithm(), None, "A1111 needs b_norm too");
        assert_eq!(
            set(&["a1.weight", "a2.weight", "b1.weight", "b2.weight"]).algorithm(),
            None,
            "A1111 needs alpha for GLoRA"
        );
        assert_eq!(set(&["oft_blocks", "alpha"]).algorithm(), None);
        let s = set(&["lora_up.weight", "lora_down.weight", "hada_w1_a", "alpha"]);
        assert_eq!(s.unused(Algorithm::Lora), vec!["m.hada_w1_a".to_string()]);
    }
}
