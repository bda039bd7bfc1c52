//! DPM-Solver++(2M): Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided
//! Sampling of Diffusion Probabilistic Models" (arXiv:2211.01095, 2022), the second-order
//! multistep data-prediction solver (Algorithm 2), building on DPM-Solver (Lu et al., NeurIPS
//! 2022, arXiv:2206.00927).
//!
//! Matches diffusers' `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"`,
//! `solver_order = 2`, `solver_type = "midpoint"`, `lower_order_final = true` and
//! `final_sigmas_type = "zero"`: the first step and the last (to σ = 0) are first-order, the rest
//! second-order. The Karras variant places the noise levels as Karras, Aittala, Aila & Laine
//! (NeurIPS 2022, arXiv:2206.00364) eq. 5 with ρ = 7, and rounds their timesteps to integers.

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{
    StepOrder, alphas_cumprod, check_index, check_same_shape, check_steps, karras_sigmas,
    np_arange, np_interp_index, np_linspace, sigma_to_t, train_sigmas,
};
use super::{Scheduler, SchedulerKind};
use crate::error::Result;
use crate::tensor::Tensor;

/// The DPM-Solver++(2M) sampler. Keeps the previous data prediction, so steps must be taken in
/// order.
#[derive(Clone, Debug)]
pub struct DpmSolverMultistepScheduler {
    karras: bool,
    timesteps: Vec<f64>,
    /// One noise level per timestep, then the final 0.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    /// The previous step's data prediction `x₀`.
    previous_x0: Option<Tensor>,
    /// How many steps have run, capped at 2 (diffusers' `lower_order_nums`).
    lower_order_nums: usize,
    order: StepOrder,
}

/// `(α_t, σ_t)` of the variance-preserving form for a noise level `σ` of the exploding form.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `λ = log α − log σ`, the half log-SNR (`+∞` at σ = 0).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmSolverMultistepScheduler {
    /// Builds the sampler for `num_inference_steps` steps, on the Karras noise levels when
    /// `karras` is set.
    ///
    /// # Errors
    /// [`InvalidArgument`](crate::Error::InvalidArgument) for zero steps, more steps than training
    /// timesteps or an invalid configuration.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, karras: bool) -> Result<Self> {
        check_steps(config, num_inference_steps)?;
        let train = train_sigmas(&alphas_cumprod(config)?);
        let n = num_inference_steps;
        // `lambda_min_clipped` is −∞, so the schedule may reach the last training timestep.
        let last = config.num_train_timesteps;
        let mut timesteps: Vec<f64> = match config.spacing_or(TimestepSpacing::Linspace) {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = np_linspace(0.0, (last - 1) as f64, n + 1)
                    .into_iter()
                    .map(f64::round_ties_even)
                    .collect();
                t.reverse();
                t.truncate(n);
                t
            }
            TimestepSpacing::Leading => {
                let ratio = last / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + config.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = config.num_train_timesteps as f64 / n as f64;
                np_arange(last as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| t.round_ties_even() - 1.0)
                    .collect()
            }
        };
        let mut sigmas: Vec<f32> = if karras {
            let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
            let (min, max) = (f64::from(train[0]), f64::from(train[train.len() - 1]));
            let k = karras_sigmas(min, max, n);
            timesteps = k
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even())
                .collect();
            k.into_iter().map(|s| s as f32).collect()
        } else {
            timesteps
                .iter()
                .map(|&t| np_interp_index(t, &train) as f32)
                .collect()
        };
        sigmas.push(0.0);
        Ok(DpmSolverMultistepScheduler {
            karras,
            timesteps,
            sigmas,
            prediction: config.prediction_type,
            previous_x0: None,
            lower_order_nums: 0,
            order: StepOrder::default(),
        })
    }

    /// The data prediction `x₀` from the model output at noise level `sigma`.
    fn predict_x0(&self, sigma: f32, sample: &Tensor, model_output: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        match self.prediction {
            PredictionType::Epsilon => Tensor::linear_combination(&[
                (1.0 / alpha_t, sample),
                (-sigma_t / alpha_t, model_output),
            ]),
            PredictionType::VPrediction => {
                Tensor::linear_combination(&[(alpha_t, sample), (-sigma_t, model_output)])
            }
            PredictionType::Sample => Ok(model_output.clone()),
        }
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn kind(&self) -> SchedulerKind {
        if self.karras {
            SchedulerKind::DpmPp2mKarras
        } else {
            SchedulerKind::DpmPp2m
        }
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
        let len = self.timesteps.len();
        check_index(step_index, len)?;
        check_same_shape("dpm-solver step", model_output, sample)?;
        self.order.take(step_index, len)?;
        // With `final_sigmas_type = "zero"` the last step is always first-order.
        let final_step = step_index == len - 1;
        let x0 = self.predict_x0(self.sigmas[step_index], sample, model_output)?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step_index + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step_index]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let phi = alpha_t * ((-h).exp() - 1.0);
        let ratio = sigma_t / sigma_s0;
        let out = match (&self.previous_x0, self.lower_order_nums >= 1 && !final_step) {
            (Some(m1), true) => {
                // Second-order midpoint update: D1 = (x0 − x0_prev) / r0.
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step_index - 1]);
                let h0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
                let r0 = h0 / h;
                let c1 = 0.5 * phi * (1.0 / r0);
                Tensor::linear_combination(&[(ratio, sample), (-phi - c1, &x0), (c1, m1)])?
            }
            _ => Tensor::linear_combination(&[(ratio, sample), (-phi, &x0)])?,
        };
        self.previous_x0 = Some(x0);
        self.lower_order_nums = (self.lower_order_nums + 1).min(2);
        Ok(out)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(step_index, self.timesteps.len())?;
        check_same_shape("dpm-solver add_noise", original, noise)?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step_index]);
        Tensor::linear_combination(&[(alpha_t, original), (sigma_t, noise)])
    }
}
