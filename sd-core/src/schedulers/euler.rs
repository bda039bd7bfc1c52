//! Euler's method on the probability-flow ODE `dx/dσ = (x − x₀(x, σ)) / σ`, in the formulation
//! of Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based Generative
//! Models", NeurIPS 2022 (arXiv:2206.00364), Algorithm 2 without churn.
//!
//! Matches diffusers' `EulerDiscreteScheduler` (itself a port of Katherine Crowson's k-diffusion
//! `sample_euler`) with linear sigma interpolation and `final_sigmas_type = "zero"`. Also home of
//! the sigma table that the Euler ancestral and LMS samplers share.

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{
    alphas_cumprod, check_index, check_same_shape, check_steps, np_interp_index, spaced_timesteps,
    train_sigmas,
};
use super::{Scheduler, SchedulerKind, ve_predict_x0};
use crate::error::Result;
use crate::tensor::Tensor;

/// The timesteps and noise levels of the k-diffusion style samplers (Euler, Euler ancestral, LMS).
#[derive(Clone, Debug)]
pub(crate) struct SigmaSchedule {
    /// Model timesteps, `float32` values.
    pub(crate) timesteps: Vec<f64>,
    /// One noise level per timestep, then the final 0.
    pub(crate) sigmas: Vec<f32>,
    /// `σ_max` for linspace/trailing spacing, `sqrt(σ_max² + 1)` for leading.
    pub(crate) init_noise_sigma: f32,
}

impl SigmaSchedule {
    /// The schedule of diffusers' `set_timesteps` for these samplers.
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        check_steps(config, steps)?;
        let train = train_sigmas(&alphas_cumprod(config)?);
        // The spacings give float64 values that diffusers stores as float32.
        let spacing = config.spacing_or(TimestepSpacing::Linspace);
        let timesteps: Vec<f64> = spaced_timesteps(config, spacing, steps)
            .into_iter()
            .map(|t| f64::from(t as f32))
            .collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| np_interp_index(t, &train) as f32)
            .collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        };
        Ok(SigmaSchedule {
            timesteps,
            sigmas,
            init_noise_sigma,
        })
    }

    /// `sample / sqrt(σ² + 1)`, the model input at `step_index`.
    pub(crate) fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(step_index, self.timesteps.len())?;
        let sigma = self.sigmas[step_index];
        sample.scale(1.0 / (sigma * sigma + 1.0).sqrt())
    }

    /// `original + σ·noise` at `step_index`.
    pub(crate) fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor> {
        check_index(step_index, self.timesteps.len())?;
        check_same_shape("add_noise", original, noise)?;
        Tensor::linear_combination(&[(1.0, original), (self.sigmas[step_index], noise)])
    }
}

/// The Euler sampler. Stateless: steps may be taken at any index.
#[derive(Clone, Debug)]
pub struct EulerScheduler {
    schedule: SigmaSchedule,
    prediction: PredictionType,
}

impl EulerScheduler {
    /// Builds the sampler for `num_inference_steps` steps.
    ///
    /// # Errors
    /// [`InvalidArgument`](crate::Error::InvalidArgument) for zero steps, more steps than training
    /// timesteps or an invalid configuration.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        Ok(EulerScheduler {
            schedule: SigmaSchedule::new(config, num_inference_steps)?,
            prediction: config.prediction_type,
        })
    }
}

impl Scheduler for EulerScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
    }

    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.schedule.init_noise_sigma)
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        self.schedule.scale_model_input(sample, step_index)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_index(step_index, self.schedule.timesteps.len())?;
        check_same_shape("euler step", model_output, sample)?;
        let sigma = self.schedule.sigmas[step_index];
        let x0 = ve_predict_x0(self.prediction, sigma, sample, model_output)?;
        let derivative = Tensor::linear_combination(&[(1.0 / sigma, sample), (-1.0 / sigma, &x0)])?;
        let dt = self.schedule.sigmas[step_index + 1] - sigma;
        Tensor::linear_combination(&[(1.0, sample), (dt, &derivative)])
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, step_index)
    }
}
