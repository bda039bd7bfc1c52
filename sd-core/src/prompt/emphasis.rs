//! Applying emphasis weights to the text encoder's output.
//!
//! Follows AUTOMATIC1111 `modules/sd_emphasis.py` (`EmphasisOriginal`, `EmphasisOriginalNoNorm`,
//! `EmphasisIgnore`, `EmphasisNone`).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How `(text:1.3)` weights affect the conditioning (A1111's "Emphasis mode" option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmphasisMode {
    /// Scale each token's hidden state by its weight, then rescale everything so the mean is unchanged.
    #[default]
    Original,
    /// Scale by the weights without restoring the mean ("No norm"; said to suit SDXL better).
    NoNorm,
    /// Parse the brackets (they are removed from the text) but apply no weights.
    Ignore,
    /// Do not parse brackets at all: they stay in the text and are tokenized.
    None,
}

impl EmphasisMode {
    /// The name A1111 writes in the infotext (`Emphasis: …`).
    pub fn name(self) -> &'static str {
        match self {
            EmphasisMode::Original => "Original",
            EmphasisMode::NoNorm => "No norm",
            EmphasisMode::Ignore => "Ignore",
            EmphasisMode::None => "None",
        }
    }

    /// Reads an infotext name; unknown names give `None` (A1111 then falls back to `Original`).
    pub fn from_name(name: &str) -> Option<EmphasisMode> {
        [
            EmphasisMode::Original,
            EmphasisMode::NoNorm,
            EmphasisMode::Ignore,
            EmphasisMode::None,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// Applies `multipliers` (one per token, in the order of `z`'s first two dimensions) to the hidden states
/// `z` of shape `[chunks, tokens, dim]`.
///
/// `Original`: `z *= w` per token, then `z *= mean(z_before) / mean(z_after)` where the means run over the
/// whole tensor (means are accumulated in `f64`). `NoNorm`: `z *= w`. `Ignore` and `None`: `z` unchanged.
///
/// # Errors
/// [`Error::InvalidShape`] when `z` is not rank 3 or `multipliers` does not have one value per token.
pub fn apply_emphasis(z: &Tensor, multipliers: &[f64], mode: EmphasisMode) -> Result<Tensor> {
    let dims = z.dims();
    if dims.len() != 3 || dims[0] * dims[1] != multipliers.len() {
        return Err(Error::InvalidShape {
            op: "apply_emphasis",
            shape: z.shape().clone(),
            reason: format!(
                "expected [chunks, tokens, dim] with chunks·tokens = {} multipliers",
                multipliers.len()
            ),
        });
    }
    if matches!(mode, EmphasisMode::Ignore | EmphasisMode::None) {
        return Ok(z.clone());
    }
    let dim = dims[2];
    let mut values = z.to_vec()?;
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64;
    let original_mean = mean(&values);
    if dim > 0 {
        for (row, &w) in values.chunks_exact_mut(dim).zip(multipliers) {
            // A1111 builds the multiplier tensor in float32.
            let w = w as f32;
            for x in row {
                *x *= w;
            }
        }
    }
    if mode == EmphasisMode::Original {
        let new_mean = mean(&values);
        let ratio = (original_mean / new_mean) as f32;
        for x in &mut values {
            *x *= ratio;
        }
    }
    Tensor::from_vec(values, z.shape().clone(), z.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Device;

    #[test]
    fn original_restores_the_mean() -> Result<()> {
        let z = Tensor::from_vec(
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            vec![1, 3, 2],
            Device::Cpu,
        )?;
        let w = [1.0, 2.0, 0.5];
        let out = apply_emphasis(&z, &w, EmphasisMode::Original)?.to_vec()?;
        // z*w = [1,2,6,8,2.5,3], mean 22.5/6 = 3.75; original mean 3.5; ratio 3.5/3.75.
        let ratio = 3.5f32 / 3.75;
        let expect: Vec<f32> = [1.0f32, 2.0, 6.0, 8.0, 2.5, 3.0]
            .iter()
            .map(|x| x * ratio)
            .collect();
        for (a, b) in out.iter().zip(&expect) {
            assert!((a - b).abs() <= 1e-6, "{out:?} vs {expect:?}");
        }
        let mean: f32 = out.iter().sum::<f32>() / 6.0;
        assert!((mean - 3.5).abs() <= 1e-6);

        let nonorm = apply_emphasis(&z, &w, EmphasisMode::NoNorm)?.to_vec()?;
        assert_eq!(nonorm, vec![1.0, 2.0, 6.0, 8.0, 2.5, 3.0]);
        let ignore = apply_emphasis(&z, &w, EmphasisMode::Ignore)?.to_vec()?;
        assert_eq!(ignore, z.to_vec()?);
        assert!(apply_emphasis(&z, &w[..2], EmphasisMode::Original).is_err());
        Ok(())
    }

    #[test]
    fn names_round_trip() {
        for m in [
            EmphasisMode::Original,
            EmphasisMode::NoNorm,
            EmphasisMode::Ignore,
            EmphasisMode::None,
        ] {
            assert_eq!(EmphasisMode::from_name(m.name()), Some(m));
        }
        assert_eq!(EmphasisMode::from_name("nope"), None);
    }
}
