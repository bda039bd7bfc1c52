//! The activation functions a hypernetwork file can name, and their element-wise math.
//!
//! AUTOMATIC1111's `HypernetworkModule.activation_dict` maps `linear`, `relu`, `leakyrelu`, `elu`,
//! `swish` (which is `torch.nn.Hardswish`, not SiLU), `tanh` and `sigmoid`, then every class of
//! `torch.nn.modules.activation` under its lower-cased name, each built with its default
//! arguments. Most are composed here from device operations (clamps, `exp`, affine maps and
//! element-wise products), so they run where the context lives; the three that need a logarithm
//! or a comparison (`softplus`, `logsigmoid`, `hardshrink`) are mapped on the host.

use crate::error::Result;
use crate::tensor::{Activation, Tensor};

/// An activation of a hypernetwork module, with PyTorch's default arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HypernetworkActivation {
    /// `relu`: `max(x, 0)`.
    Relu,
    /// `leakyrelu`: `x` for `x > 0`, else `0.01 x`.
    LeakyRelu,
    /// `elu` (α = 1): `x` for `x > 0`, else `exp(x) − 1`.
    Elu,
    /// `swish` and `hardswish` (`torch.nn.Hardswish`): `x · relu6(x + 3) / 6`.
    Hardswish,
    /// `tanh`.
    Tanh,
    /// `sigmoid`: `1 / (1 + exp(−x))`.
    Sigmoid,
    /// `celu` (α = 1): the same function as `elu` with α = 1.
    Celu,
    /// `gelu`: the exact (erf) GELU.
    Gelu,
    /// `hardshrink` (λ = 0.5): `x` where `|x| > 0.5`, else 0.
    Hardshrink,
    /// `hardsigmoid`: `relu6(x + 3) / 6`.
    Hardsigmoid,
    /// `hardtanh`: `x` clamped to `[−1, 1]`.
    Hardtanh,
    /// `logsigmoid`: `log(sigmoid(x))`.
    LogSigmoid,
    /// `mish`: `x · tanh(softplus(x))`.
    Mish,
    /// `prelu`: `x` for `x ≥ 0`, else `a · x` with one learned `a` (stored as the module's
    /// `weight`, shape `[1]`).
    Prelu,
    /// `relu6`: `x` clamped to `[0, 6]`.
    Relu6,
    /// `rrelu` at inference: a leaky ReLU with slope `(1/8 + 1/3) / 2`.
    Rrelu,
    /// `selu`: `1.0507… · (x for x > 0, else 1.6732… · (exp(x) − 1))`.
    Selu,
    /// `silu`: `x · sigmoid(x)`.
    Silu,
    /// `softplus` (β = 1, threshold 20): `log(1 + exp(x))`, or `x` above 20.
    Softplus,
    /// `softshrink` (λ = 0.5): `x − 0.5` above 0.5, `x + 0.5` below −0.5, else 0.
    Softshrink,
    /// `softsign`: `x / (1 + |x|)`.
    Softsign,
    /// `tanhshrink`: `x − tanh(x)`.
    Tanhshrink,
}

/// `torch.nn.SELU`'s constants.
const SELU_ALPHA: f32 = 1.673_263_2;
const SELU_SCALE: f32 = 1.050_701;
/// `torch.nn.RReLU`'s evaluation slope, `(lower + upper) / 2` with the defaults 1/8 and 1/3.
const RRELU_SLOPE: f32 = (1.0 / 8.0 + 1.0 / 3.0) / 2.0;
/// `torch.nn.LeakyReLU`'s default slope.
const LEAKY_SLOPE: f32 = 0.01;
/// The threshold of the shrink functions.
const SHRINK_LAMBDA: f32 = 0.5;

impl HypernetworkActivation {
    /// Parses a file's `activation_func` as A1111 does: `None` and `"linear"` mean no
    /// activation (`Ok(None)`), other names are looked up case-sensitively.
    ///
    /// # Errors
    /// A message for a name A1111 does not know, for the activations it knows but cannot build
    /// without arguments (`threshold`, `multiheadattention`), and for those that do not act
    /// element-wise on a token's features (`glu` halves the width; `softmax`, `softmin`,
    /// `logsoftmax` and `softmax2d` built without a `dim` normalise across the batch).
    pub fn from_a1111_name(name: Option<&str>) -> std::result::Result<Option<Self>, String> {
        use HypernetworkActivation as A;
        let Some(name) = name else { return Ok(None) };
        Ok(Some(match name {
            "linear" => return Ok(None),
            "relu" => A::Relu,
            "leakyrelu" => A::LeakyRelu,
            "elu" => A::Elu,
            "swish" | "hardswish" => A::Hardswish,
            "tanh" => A::Tanh,
            "sigmoid" => A::Sigmoid,
            "celu" => A::Celu,
            "gelu" => A::Gelu,
            "hardshrink" => A::Hardshrink,
            "hardsigmoid" => A::Hardsigmoid,
            "hardtanh" => A::Hardtanh,
            "logsigmoid" => A::LogSigmoid,
            "mish" => A::Mish,
            "prelu" => A::Prelu,
            "relu6" => A::Relu6,
            "rrelu" => A::Rrelu,
            "selu" => A::Selu,
            "silu" => A::Silu,
            "softplus" => A::Softplus,
            "softshrink" => A::Softshrink,
            "softsign" => A::Softsign,
            "tanhshrink" => A::Tanhshrink,
            "threshold" | "multiheadattention" => {
                return Err(format!(
                    "activation `{name}` cannot be built without arguments (AUTOMATIC1111 fails \
                     to load it too)"
                ));
            }
            "glu" | "softmax" | "softmin" | "logsoftmax" | "softmax2d" => {
                return Err(format!(
                    "activation `{name}` is not supported: it does not act element-wise on each \
                     token's features"
                ));
            }
            other => {
                return Err(format!(
                    "unknown activation `{}` (AUTOMATIC1111 accepts linear, relu, leakyrelu, \
                     elu, swish, tanh, sigmoid and the torch.nn activations by lower-case name)",
                    other.escape_debug()
                ));
            }
        }))
    }

    /// Whether the activation has a learned parameter (`prelu`'s `weight`), which then occupies
    /// a `linear.<i>.weight` entry of the module's state dict.
    pub fn has_weight(self) -> bool {
        self == HypernetworkActivation::Prelu
    }

    /// Applies the activation to an `f32` tensor. `prelu_weight` is the learned slope of
    /// [`Prelu`](Self::Prelu) and is ignored otherwise.
    pub(crate) fn apply(self, x: &Tensor, prelu_weight: f32) -> Result<Tensor> {
        use HypernetworkActivation as A;
        match self {
            A::Relu => relu(x),
            A::Relu6 => x.clamp(0.0, 6.0),
            A::Hardtanh => x.clamp(-1.0, 1.0),
            A::LeakyRelu => leaky(x, LEAKY_SLOPE),
            A::Rrelu => leaky(x, RRELU_SLOPE),
            A::Prelu => leaky(x, prelu_weight),
            A::Elu | A::Celu => elu(x, 1.0),
            A::Selu => elu(x, SELU_ALPHA)?.scale(SELU_SCALE),
            A::Sigmoid => sigmoid(x),
            A::Tanh => tanh(x),
            A::Hardsigmoid => hardsigmoid(x),
            A::Hardswish => x.mul(&hardsigmoid(x)?),
            A::Silu => x.activate(Activation::Silu),
            A::Gelu => x.activate(Activation::Gelu),
            A::Mish => mish(x),
            A::Softshrink => x.sub(&x.clamp(-SHRINK_LAMBDA, SHRINK_LAMBDA)?),
            A::Softsign => {
                let abs = relu(x)?.sub(&negative_part(x)?)?;
                x.div(&abs.affine(1.0, 1.0)?)
            }
            A::Tanhshrink => x.sub(&tanh(x)?),
            A::Softplus => map_on_host(x, softplus),
            A::LogSigmoid => map_on_host(x, log_sigmoid),
            A::Hardshrink => map_on_host(x, |v| if v.abs() > SHRINK_LAMBDA { v } else { 0.0 }),
        }
    }
}

fn relu(x: &Tensor) -> Result<Tensor> {
    x.clamp(0.0, f32::INFINITY)
}

fn negative_part(x: &Tensor) -> Result<Tensor> {
    x.clamp(f32::NEG_INFINITY, 0.0)
}

/// `max(x, 0) + slope · min(x, 0)`: PyTorch's `x > 0 ? x : slope · x` with the same rounding.
fn leaky(x: &Tensor, slope: f32) -> Result<Tensor> {
    Tensor::linear_combination(&[(1.0, &relu(x)?), (slope, &negative_part(x)?)])
}

/// `max(x, 0) + α (exp(min(x, 0)) − 1)`.
fn elu(x: &Tensor, alpha: f32) -> Result<Tensor> {
    let tail = negative_part(x)?.exp()?.affine(alpha, -alpha)?;
    relu(x)?.add(&tail)
}

/// `1 / (1 + exp(−x))`; saturates cleanly to 0 and 1 (`exp` overflows to infinity).
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    let denominator = x.scale(-1.0)?.exp()?.affine(1.0, 1.0)?;
    let one = Tensor::full(1.0, [1], x.device())?;
    one.div(&denominator)
}

/// `2 · sigmoid(2x) − 1`.
fn tanh(x: &Tensor) -> Result<Tensor> {
    sigmoid(&x.scale(2.0)?)?.affine(2.0, -1.0)
}

/// `clamp(x / 6 + 1/2, 0, 1)`, which is `relu6(x + 3) / 6`.
fn hardsigmoid(x: &Tensor) -> Result<Tensor> {
    x.affine(1.0 / 6.0, 0.5)?.clamp(0.0, 1.0)
}

/// `x · tanh(softplus(x))` without a logarithm: with `u = exp(x)`,
/// `tanh(log(1 + u)) = u (u + 2) / (u (u + 2) + 2)`. `x` is capped at 20 inside `exp` (where the
/// factor is 1 to within `f32` precision) so that nothing overflows.
fn mish(x: &Tensor) -> Result<Tensor> {
    let u = x.clamp(f32::NEG_INFINITY, 20.0)?.exp()?;
    let n = u.mul(&u.affine(1.0, 2.0)?)?;
    let factor = n.div(&n.affine(1.0, 2.0)?)?;
    x.mul(&factor)
}

/// `torch.nn.Softplus()`: `x` above the threshold 20, else `log1p(exp(x))`.
fn softplus(v: f32) -> f32 {
    if v > 20.0 { v } else { v.exp().ln_1p() }
}

/// `log(sigmoid(x)) = min(x, 0) − log1p(exp(−|x|))`, stable for both signs.
fn log_sigmoid(v: f32) -> f32 {
    v.min(0.0) - (-v.abs()).exp().ln_1p()
}

/// Applies `f` to every element, on the host, and returns the result on the tensor's device.
fn map_on_host(x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor> {
    let values: Vec<f32> = x.to_vec()?.into_iter().map(f).collect();
    Tensor::from_vec(values, x.shape().clone(), x.device())
}

/// Checks that an activation's learned slope is usable.
pub(crate) fn check_prelu_weight(value: &[f32]) -> std::result::Result<f32, String> {
    match value {
        [w] if w.is_finite() => Ok(*w),
        [w] => Err(format!("is {w}, not a finite number")),
        other => Err(format!(
            "holds {} values; PReLU() has one shared slope",
            other.len()
        )),
    }
}

impl std::fmt::Display for HypernetworkActivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use HypernetworkActivation as A;
        f.write_str(match self {
            A::Relu => "relu",
            A::LeakyRelu => "leakyrelu",
            A::Elu => "elu",
            A::Hardswish => "hardswish",
            A::Tanh => "tanh",
            A::Sigmoid => "sigmoid",
            A::Celu => "celu",
            A::Gelu => "gelu",
            A::Hardshrink => "hardshrink",
            A::Hardsigmoid => "hardsigmoid",
            A::Hardtanh => "hardtanh",
            A::LogSigmoid => "logsigmoid",
            A::Mish => "mish",
            A::Prelu => "prelu",
            A::Relu6 => "relu6",
            A::Rrelu => "rrelu",
            A::Selu => "selu",
            A::Silu => "silu",
            A::Softplus => "softplus",
            A::Softshrink => "softshrink",
            A::Softsign => "softsign",
            A::Tanhshrink => "tanhshrink",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Device;

    /// Each activation against a direct `f64` evaluation of PyTorch's definition.
    #[test]
    fn every_activation_matches_its_definition() -> Result<()> {
        use HypernetworkActivation as A;
        let xs: Vec<f32> = (-300..=300).map(|i| i as f32 * 0.1).collect();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let softplus = |v: f64| if v > 20.0 { v } else { v.exp().ln_1p() };
        type Reference = Box<dyn Fn(f64) -> f64>;
        let cases: Vec<(A, Reference)> = vec![
            (A::Relu, Box::new(|v| v.max(0.0))),
            (
                A::LeakyRelu,
                Box::new(|v| if v > 0.0 { v } else { 0.01 * v }),
            ),
            (A::Elu, Box::new(|v| if v > 0.0 { v } else { v.exp_m1() })),
            (A::Celu, Box::new(|v| if v > 0.0 { v } else { v.exp_m1() })),
            (
                A::Selu,
                Box::new(|v| {
                    1.050_700_987_355_480_5
                        * if v > 0.0 {
                            v
                        } else {
                            1.673_263_242_354_377_3 * v.exp_m1()
                        }
                }),
            ),
            (
                A::Hardswish,
                Box::new(|v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
            ),
            (
                A::Hardsigmoid,
                Box::new(|v| (v + 3.0).clamp(0.0, 6.0) / 6.0),
            ),
            (A::Tanh, Box::new(f64::tanh)),
            (A::Sigmoid, Box::new(sig)),
            (A::Silu, Box::new(move |v| v * sig(v))),
            (A::Mish, Box::new(move |v| v * softplus(v).tanh())),
            (A::Softplus, Box::new(softplus)),
            (A::LogSigmoid, Box::new(move |v| -softplus(-v))),
            (
                A::Hardshrink,
                Box::new(|v| if v.abs() > 0.5 { v } else { 0.0 }),
            ),
            (
                A::Softshrink,
                Box::new(|v| {
                    if v > 0.5 {
                        v - 0.5
                    } else if v < -0.5 {
                        v + 0.5
                    } else {
                        0.0
                    }
                }),
            ),
            (A::Softsign, Box::new(|v| v / (1.0 + v.abs()))),
            (A::Tanhshrink, Box::new(|v| v - v.tanh())),
            (A::Hardtanh, Box::new(|v| v.clamp(-1.0, 1.0))),
            (A::Relu6, Box::new(|v| v.clamp(0.0, 6.0))),
            (
                A::Rrelu,
                Box::new(|v| if v >= 0.0 { v } else { 11.0 / 48.0 * v }),
            ),
            (A::Prelu, Box::new(|v| if v >= 0.0 { v } else { 0.3 * v })),
        ];
        let x = Tensor::from_vec(xs.clone(), [xs.len()], Device::Cpu)?;
        for (act, reference) in cases {
            let got = act.apply(&x, 0.3)?.to_vec()?;
            for (&xi, &g) in xs.iter().zip(&got) {
                let want = reference(f64::from(xi));
                let err = (f64::from(g) - want).abs();
                assert!(
                    err <= 2e-6 * want.abs().max(1.0),
                    "{act} at {xi}: got {g}, want {want}"
                );
            }
        }
        // GELU comes from the tensor library; spot-check its exactness.
        let g = A::Gelu.apply(&x, 0.0)?.to_vec()?;
        assert!((g[310] - 0.841_344_7).abs() < 1e-6, "gelu(1) = {}", g[310]);
        Ok(())
    }

    #[test]
    fn names_are_parsed_as_a1111_does() {
        use HypernetworkActivation as A;
        assert_eq!(A::from_a1111_name(None), Ok(None));
        assert_eq!(A::from_a1111_name(Some("linear")), Ok(None));
        assert_eq!(A::from_a1111_name(Some("swish")), Ok(Some(A::Hardswish)));
        assert_eq!(A::from_a1111_name(Some("silu")), Ok(Some(A::Silu)));
        for bad in ["ReLU", "swishy", "", "threshold", "glu", "softmax"] {
            assert!(A::from_a1111_name(Some(bad)).is_err(), "{bad}");
        }
    }
}
