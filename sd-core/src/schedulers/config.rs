//! The scheduler configuration: the fields of a diffusers `scheduler_config.json` that the
//! Stable Diffusion samplers read.
//!
//! Defaults are the values of Stable Diffusion 1.5's `scheduler/scheduler_config.json` (a
//! `PNDMScheduler`). A field that file leaves out, `timestep_spacing`, is optional here: when it
//! is absent each sampler uses its own diffusers default (`leading` for DDIM and PNDM, `linspace`
//! for the others), as diffusers does when it builds a sampler with
//! `.from_config(pipe.scheduler.config)` (values the source config only defaulted are not carried
//! over).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// How the training noise schedule's betas are laid out over the training timesteps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum BetaSchedule {
    /// Betas evenly spaced from `beta_start` to `beta_end`.
    #[serde(rename = "linear")]
    Linear,
    /// Square roots of the betas evenly spaced, then squared (latent diffusion; SD 1.x and 2.x).
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal (2021), betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the denoising model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum PredictionType {
    /// The noise that was added (SD 1.x, SD 2.x base).
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The velocity `v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x₀` (SD 2.x 768-v models).
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The clean sample `x₀` itself.
    #[serde(rename = "sample")]
    Sample,
}

impl PredictionType {
    /// The name diffusers uses in `scheduler_config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
}

/// How the inference timesteps are picked among the training timesteps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum TimestepSpacing {
    /// Multiples of `num_train_timesteps / steps` from 0, plus `steps_offset` (SD 1.x).
    #[serde(rename = "leading")]
    Leading,
    /// Evenly spaced from 0 to `num_train_timesteps − 1`, both ends included.
    #[serde(rename = "linspace")]
    Linspace,
    /// Counting down from `num_train_timesteps` by `num_train_timesteps / steps`, minus one.
    #[serde(rename = "trailing")]
    Trailing,
}

/// The scheduler configuration, deserialisable from a diffusers `scheduler_config.json`.
///
/// Unknown fields (`_class_name`, `_diffusers_version`, sampler-specific switches) are ignored;
/// missing fields take the Stable Diffusion 1.5 values listed on each field.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Number of timesteps the model was trained with. Default 1000.
    pub num_train_timesteps: usize,
    /// First beta of the training schedule. Default 0.00085.
    pub beta_start: f64,
    /// Last beta of the training schedule. Default 0.012.
    pub beta_end: f64,
    /// Layout of the betas. Default [`BetaSchedule::ScaledLinear`].
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, one per training timestep, overriding `beta_*`. Default none.
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts. Default [`PredictionType::Epsilon`].
    pub prediction_type: PredictionType,
    /// How inference timesteps are spaced. Default none: each sampler's own default
    /// ([`TimestepSpacing::Leading`] for DDIM and PNDM, [`TimestepSpacing::Linspace`] for Euler,
    /// Euler ancestral, LMS and DPM-Solver).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to every timestep with [`TimestepSpacing::Leading`]. Default 1.
    pub steps_offset: usize,
    /// DDIM and PNDM: whether the step past the last timestep uses `ᾱ = 1` (true) or `ᾱ₀`
    /// (false). Default false.
    pub set_alpha_to_one: bool,
    /// DDIM: whether the predicted `x₀` is clamped to `±clip_sample_range`. Default false.
    pub clip_sample: bool,
    /// DDIM: the clamp bound used when `clip_sample` is set. Default 1.0.
    pub clip_sample_range: f64,
    /// PNDM: whether the Runge–Kutta warm-up steps are skipped (PLMS only). Only `true`, the SD
    /// value, is supported. Default true.
    pub skip_prk_steps: bool,
    /// DDIM and DPM-Solver dynamic thresholding. Only `false` is supported. Default false.
    pub thresholding: bool,
    /// Rescaling the betas to zero terminal SNR. Only `false` is supported. Default false.
    pub rescale_betas_zero_snr: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig::sd_v1_5()
    }
}

impl SchedulerConfig {
    /// Stable Diffusion 1.5's scheduler configuration
    /// (<https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/scheduler/scheduler_config.json>).
    pub fn sd_v1_5() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            skip_prk_steps: true,
            thresholding: false,
            rescale_betas_zero_snr: false,
        }
    }

    /// Parses the JSON text of a `scheduler_config.json`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`scheduler_config`) when the text is not a JSON object of the
    /// expected field types, or fails [`SchedulerConfig::validate`].
    pub fn from_json_str(json: &str) -> Result<Self> {
        let config: SchedulerConfig = serde_json::from_str(json)
            .map_err(|e| Error::invalid_argument("scheduler_config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a `scheduler_config.json` file.
    ///
    /// # Errors
    /// [`Error::FileNotFound`] / [`Error::Io`] when the file cannot be read, and
    /// [`Error::InvalidConfig`] when it is not a valid scheduler configuration.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: SchedulerConfig =
            serde_json::from_str(&text).map_err(|e| Error::InvalidConfig {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        config.validate().map_err(|e| Error::InvalidConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    /// The timestep spacing, or `default` (the sampler's own) when the configuration has none.
    pub fn spacing_or(&self, default: TimestepSpacing) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(default)
    }

    /// Checks that the values describe a usable schedule.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for out-of-range values, [`Error::Unsupported`] for switches
    /// sdrs does not implement (`thresholding`, `rescale_betas_zero_snr`).
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid_argument("scheduler_config", reason));
        if self.num_train_timesteps < 2 {
            return bad(format!(
                "num_train_timesteps must be at least 2, got {}",
                self.num_train_timesteps
            ));
        }
        match &self.trained_betas {
            Some(betas) => {
                if betas.len() != self.num_train_timesteps {
                    return bad(format!(
                        "trained_betas has {} values for {} training timesteps",
                        betas.len(),
                        self.num_train_timesteps
                    ));
                }
                if let Some(b) = betas
                    .iter()
                    .find(|b| !(b.is_finite() && **b >= 0.0 && **b < 1.0))
                {
                    return bad(format!("trained_betas value {b} is outside [0, 1)"));
                }
            }
            None => {
                for (name, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                    if !(v.is_finite() && v > 0.0 && v < 1.0) {
                        return bad(format!("{name} must be in (0, 1), got {v}"));
                    }
                }
            }
        }
        if !(self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0) {
            return bad(format!(
                "clip_sample_range must be positive, got {}",
                self.clip_sample_range
            ));
        }
        if self.thresholding {
            return Err(Error::Unsupported(
                "scheduler dynamic thresholding (`thresholding: true`)".into(),
            ));
        }
        if self.rescale_betas_zero_snr {
            return Err(Error::Unsupported(
                "zero terminal SNR rescaling (`rescale_betas_zero_snr: true`)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sd15_file_and_ignores_unknown_fields() -> Result<()> {
        let json = r#"{
            "_class_name": "PNDMScheduler",
            "_diffusers_version": "0.6.0",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "num_train_timesteps": 1000,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null,
            "clip_sample": false
        }"#;
        assert_eq!(
            SchedulerConfig::from_json_str(json)?,
            SchedulerConfig::sd_v1_5()
        );
        Ok(())
    }

    #[test]
    fn parses_enum_names() -> Result<()> {
        let json = r#"{"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
                       "timestep_spacing": "trailing"}"#;
        let c = SchedulerConfig::from_json_str(json)?;
        assert_eq!(c.beta_schedule, BetaSchedule::SquaredcosCapV2);
        assert_eq!(c.prediction_type, PredictionType::VPrediction);
        assert_eq!(c.timestep_spacing, Some(TimestepSpacing::Trailing));
        Ok(())
    }

    #[test]
    fn rejects_bad_values() {
        assert!(SchedulerConfig::from_json_str(r#"{"beta_schedule": "cubic"}"#).is_err());
        assert!(SchedulerConfig::from_json_str(r#"{"num_train_timesteps": 1}"#).is_err());
        assert!(SchedulerConfig::from_json_str(r#"{"trained_betas": [0.1, 0.2]}"#).is_err());
        assert!(SchedulerConfig::from_json_str(r#"{"beta_end": -1.0}"#).is_err());
        assert!(SchedulerConfig::from_json_str(r#"{"thresholding": true}"#).is_err());
        assert!(SchedulerConfig::from_json_str("[1, 2]").is_err());
    }
}
