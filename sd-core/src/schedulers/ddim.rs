//! DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021
//! (arXiv:2010.02502), eq. 12 with η = 0, the deterministic sampler.
//!
//! Matches diffusers' `DDIMScheduler` with `eta = 0`: each step predicts `x₀` and `ε` from the
//! model output and re-noises `x₀` to the previous timestep along `ε`. The step past the last
//! timestep uses `ᾱ = 1` or `ᾱ₀` according to `set_alpha_to_one`.

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::{
    alphas_cumprod, check_index, check_same_shape, check_steps, spaced_timesteps, timestep_indices,
};
use super::{Scheduler, SchedulerKind, TimestepSpacing, vp_x0_coefficients};
use crate::error::Result;
use crate::tensor::Tensor;

/// The DDIM sampler (η = 0). Stateless: steps may be taken at any index.
#[derive(Clone, Debug)]
pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    indices: Vec<usize>,
    /// `num_train_timesteps / num_inference_steps`: the distance to the previous timestep.
    step_ratio: usize,
    prediction: PredictionType,
    clip: Option<f32>,
}

impl DdimScheduler {
    /// Builds the sampler for `num_inference_steps` steps.
    ///
    /// # Errors
    /// [`InvalidArgument`](crate::Error::InvalidArgument) for zero steps, more steps than training timesteps, an invalid
    /// configuration or a schedule that leaves the training range.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        check_steps(config, num_inference_steps)?;
        let alphas_cumprod = alphas_cumprod(config)?;
        let spacing = config.spacing_or(TimestepSpacing::Leading);
        let mut timesteps = spaced_timesteps(config, spacing, num_inference_steps);
        if spacing == TimestepSpacing::Linspace {
            timesteps.iter_mut().for_each(|t| *t = t.round_ties_even());
        }
        let indices = timestep_indices(&timesteps, config.num_train_timesteps)?;
        Ok(DdimScheduler {
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            timesteps,
            indices,
            step_ratio: config.num_train_timesteps / num_inference_steps,
            prediction: config.prediction_type,
            clip: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
        })
    }
}

impl Scheduler for DdimScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_index(step_index, self.timesteps.len())?;
        check_same_shape("ddim step", model_output, sample)?;
        let t = self.indices[step_index];
        let alpha_prod = self.alphas_cumprod[t];
        let alpha_prev = match t.checked_sub(self.step_ratio) {
            Some(prev) => self.alphas_cumprod[prev],
            None => self.final_alpha_cumprod,
        };
        let beta_prod = 1.0 - alpha_prod;
        let (xa, xb) = vp_x0_coefficients(self.prediction, alpha_prod);
        let mut x0 = Tensor::linear_combination(&[(xa, sample), (xb, model_output)])?;
        let eps = match self.prediction {
            PredictionType::Epsilon => model_output.clone(),
            PredictionType::Sample => Tensor::linear_combination(&[
                (1.0 / beta_prod.sqrt(), sample),
                (-alpha_prod.sqrt() / beta_prod.sqrt(), &x0),
            ])?,
            PredictionType::VPrediction => Tensor::linear_combination(&[
                (alpha_prod.sqrt(), model_output),
                (beta_prod.sqrt(), sample),
            ])?,
        };
        if let Some(range) = self.clip {
            x0 = x0.clamp(-range, range)?;
        }
        Tensor::linear_combination(&[(alpha_prev.sqrt(), &x0), ((1.0 - alpha_prev).sqrt(), &eps)])
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(step_index, self.timesteps.len())?;
        check_same_shape("ddim add_noise", original, noise)?;
        let a = self.alphas_cumprod[self.indices[step_index]];
        Tensor::linear_combination(&[(a.sqrt(), original), ((1.0 - a).sqrt(), noise)])
    }
}
