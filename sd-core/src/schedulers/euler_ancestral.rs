//! Euler ancestral sampling: an Euler step of the probability-flow ODE (Karras, Aittala, Aila &
//! Laine, "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022,
//! arXiv:2206.00364) down to `σ_down`, followed by fresh Gaussian noise of standard deviation
//! `σ_up`, with `σ_down² + σ_up² = σ_next²` chosen so that the step matches the ancestral
//! (DDPM, Ho, Jain & Abbeel, NeurIPS 2020, arXiv:2006.11239) transition's variance.
//!
//! Matches diffusers' `EulerAncestralDiscreteScheduler`, a port of Katherine Crowson's
//! k-diffusion `sample_euler_ancestral`. The noise tensors come from the caller, one per step, so
//! the seeded noise generator stays in one place.

use super::config::{PredictionType, SchedulerConfig};
use super::euler::SigmaSchedule;
use super::schedule::{check_index, check_same_shape};
use super::{Scheduler, SchedulerKind, ve_predict_x0};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The Euler ancestral sampler. Stateless apart from the caller's noise.
#[derive(Clone, Debug)]
pub struct EulerAncestralScheduler {
    schedule: SigmaSchedule,
    prediction: PredictionType,
}

impl EulerAncestralScheduler {
    /// Builds the sampler for `num_inference_steps` steps.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero steps, more steps than training timesteps or an invalid
    /// configuration; [`Error::Unsupported`] for `prediction_type = "sample"`, which diffusers does
    /// not implement for this sampler.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        if config.prediction_type == PredictionType::Sample {
            return Err(Error::Unsupported(
                "Euler ancestral with `prediction_type: sample`".into(),
            ));
        }
        Ok(EulerAncestralScheduler {
            schedule: SigmaSchedule::new(config, num_inference_steps)?,
            prediction: config.prediction_type,
        })
    }
}

impl Scheduler for EulerAncestralScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
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

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_index(step_index, self.schedule.timesteps.len())?;
        check_same_shape("euler ancestral step", model_output, sample)?;
        let noise = noise.ok_or_else(|| {
            Error::invalid_argument(
                "noise",
                "Euler ancestral needs a noise tensor at every step",
            )
        })?;
        check_same_shape("euler ancestral step", noise, sample)?;
        let sigma = self.schedule.sigmas[step_index];
        let sigma_to = self.schedule.sigmas[step_index + 1];
        let x0 = ve_predict_x0(self.prediction, sigma, sample, model_output)?;
        let (from2, to2) = (sigma * sigma, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).max(0.0).sqrt();
        let derivative = Tensor::linear_combination(&[(1.0 / sigma, sample), (-1.0 / sigma, &x0)])?;
        let dt = sigma_down - sigma;
        Tensor::linear_combination(&[(1.0, sample), (dt, &derivative), (sigma_up, noise)])
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, step_index)
    }
}
