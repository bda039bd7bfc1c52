//! PLMS, the pseudo linear multistep method of Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods
//! for Diffusion Models on Manifolds", ICLR 2022 (arXiv:2202.09778).
//!
//! Matches diffusers' `PNDMScheduler` with `skip_prk_steps = true`, as Stable Diffusion configures
//! it: the Runge–Kutta warm-up is replaced by a second evaluation of the first interval (a
//! Heun-like correction), after which a fourth-order Adams–Bashforth combination of the last noise
//! predictions drives the DDIM-style transfer `φ` of the paper's eq. 11. The schedule therefore
//! has one more timestep than inference steps: the second one repeats.

use std::collections::VecDeque;

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::{
    StepOrder, alphas_cumprod, check_index, check_same_shape, check_steps, spaced_timesteps,
    timestep_indices,
};
use super::{Scheduler, SchedulerKind, TimestepSpacing};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The PLMS sampler. Keeps the last noise predictions, so steps must be taken in order.
#[derive(Clone, Debug)]
pub struct PndmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    indices: Vec<usize>,
    step_ratio: usize,
    prediction: PredictionType,
    /// Number of steps taken (diffusers' `counter`).
    counter: usize,
    /// The last (up to four) model outputs, oldest first (diffusers' `ets`).
    ets: VecDeque<Tensor>,
    /// The sample at the first step, for the repeated second evaluation.
    cur_sample: Option<Tensor>,
    order: StepOrder,
}

impl PndmScheduler {
    /// Builds the sampler for `num_inference_steps` steps.
    ///
    /// # Errors
    /// [`InvalidArgument`](crate::Error::InvalidArgument) for zero steps, more steps than training
    /// timesteps or an invalid configuration; [`Error::Unsupported`] for `skip_prk_steps = false`
    /// or `prediction_type = "sample"`.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        check_steps(config, num_inference_steps)?;
        if !config.skip_prk_steps {
            return Err(Error::Unsupported(
                "PNDM with Runge-Kutta warm-up steps (`skip_prk_steps: false`)".into(),
            ));
        }
        if config.prediction_type == PredictionType::Sample {
            return Err(Error::Unsupported(
                "PNDM with `prediction_type: sample`".into(),
            ));
        }
        let alphas_cumprod = alphas_cumprod(config)?;
        let spacing = config.spacing_or(TimestepSpacing::Leading);
        let mut spaced = spaced_timesteps(config, spacing, num_inference_steps);
        if spacing == TimestepSpacing::Linspace {
            spaced.iter_mut().for_each(|t| *t = t.round_ties_even());
        }
        // Descending d0, d1, d1, d2, …, d_{n−1}: the second timestep is evaluated twice.
        let mut timesteps = Vec::with_capacity(spaced.len() + 1);
        for (i, &t) in spaced.iter().enumerate() {
            timesteps.push(t);
            if i == 1 {
                timesteps.push(t);
            }
        }
        let indices = timestep_indices(&timesteps, config.num_train_timesteps)?;
        Ok(PndmScheduler {
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
            counter: 0,
            ets: VecDeque::with_capacity(4),
            cur_sample: None,
            order: StepOrder::default(),
        })
    }

    fn alpha_at(&self, t: i64) -> f32 {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t).copied())
            .unwrap_or(self.final_alpha_cumprod)
    }

    /// The transfer from `timestep` to `prev_timestep` along the noise prediction (eq. 11).
    fn prev_sample(
        &self,
        sample: &Tensor,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        let alpha_prod = self.alpha_at(timestep);
        let alpha_prev = if prev_timestep >= 0 {
            self.alpha_at(prev_timestep)
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod = 1.0 - alpha_prod;
        let beta_prev = 1.0 - alpha_prev;
        let eps = match self.prediction {
            PredictionType::VPrediction => Tensor::linear_combination(&[
                (alpha_prod.sqrt(), model_output),
                (beta_prod.sqrt(), sample),
            ])?,
            _ => model_output.clone(),
        };
        let sample_coeff = (alpha_prev / alpha_prod).sqrt();
        let denom = alpha_prod * beta_prev.sqrt() + (alpha_prod * beta_prod * alpha_prev).sqrt();
        Tensor::linear_combination(&[
            (sample_coeff, sample),
            (-(alpha_prev - alpha_prod) / denom, &eps),
        ])
    }
}

impl Scheduler for PndmScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Pndm
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
        check_same_shape("pndm step", model_output, sample)?;
        self.order.take(step_index, self.timesteps.len())?;
        let ratio = self.step_ratio as i64;
        let mut timestep = self.indices[step_index] as i64;
        let mut prev_timestep = timestep - ratio;
        if self.counter != 1 {
            while self.ets.len() > 3 {
                self.ets.pop_front();
            }
            self.ets.push_back(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += ratio;
        }
        let n = self.ets.len();
        let e = |back: usize| &self.ets[n - back];
        let mut sample = sample.clone();
        let eps = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if n == 1 && self.counter == 1 {
            if let Some(first) = self.cur_sample.take() {
                sample = first;
            }
            Tensor::linear_combination(&[(0.5, model_output), (0.5, e(1))])?
        } else if n == 2 {
            Tensor::linear_combination(&[(1.5, e(1)), (-0.5, e(2))])?
        } else if n == 3 {
            Tensor::linear_combination(&[
                (23.0 / 12.0, e(1)),
                (-16.0 / 12.0, e(2)),
                (5.0 / 12.0, e(3)),
            ])?
        } else {
            Tensor::linear_combination(&[
                (55.0 / 24.0, e(1)),
                (-59.0 / 24.0, e(2)),
                (37.0 / 24.0, e(3)),
                (-9.0 / 24.0, e(4)),
            ])?
        };
        let prev = self.prev_sample(&sample, timestep, prev_timestep, &eps)?;
        self.counter += 1;
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(step_index, self.timesteps.len())?;
        check_same_shape("pndm add_noise", original, noise)?;
        let a = self.alphas_cumprod[self.indices[step_index]];
        Tensor::linear_combination(&[(a.sqrt(), original), ((1.0 - a).sqrt(), noise)])
    }
}
