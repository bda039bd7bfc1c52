//! The samplers of Stable Diffusion 1.x, matching the diffusers schedulers of the same names step
//! for step.
//!
//! | [`SchedulerKind`]            | name              | diffusers class                              | A1111 sampler (schedule type) |
//! |------------------------------|-------------------|----------------------------------------------|-------------------------------|
//! | [`Ddim`](SchedulerKind::Ddim)| `ddim`            | `DDIMScheduler` (η = 0)                      | DDIM                          |
//! | [`Pndm`](SchedulerKind::Pndm)| `pndm`            | `PNDMScheduler` (`skip_prk_steps`)           | PLMS                          |
//! | [`Euler`](SchedulerKind::Euler) | `euler`        | `EulerDiscreteScheduler`                     | Euler                         |
//! | [`EulerAncestral`](SchedulerKind::EulerAncestral) | `euler-a` | `EulerAncestralDiscreteScheduler` | Euler a                |
//! | [`Lms`](SchedulerKind::Lms)  | `lms`             | `LMSDiscreteScheduler` (order 4)             | LMS                           |
//! | [`DpmPp2m`](SchedulerKind::DpmPp2m) | `dpmpp-2m` | `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint) | DPM++ 2M |
//! | [`DpmPp2mKarras`](SchedulerKind::DpmPp2mKarras) | `dpmpp-2m-karras` | the same with Karras sigmas | DPM++ 2M (Karras) |
//!
//! Every scheduler is built by [`build`] from a [`SchedulerConfig`] (the model's
//! `scheduler_config.json`) and a number of inference steps, the way diffusers' pipelines build
//! one with `Scheduler.from_config(pipe.scheduler.config)` and `set_timesteps(steps)`.
//!
//! # The denoising loop
//!
//! ```no_run
//! # use sd_core::{Result, Tensor};
//! # use sd_core::schedulers::{build, SchedulerConfig, SchedulerKind};
//! # fn unet(x: &Tensor, t: f64) -> Result<Tensor> { Ok(x.clone()) }
//! # fn randn() -> Result<Tensor> { Tensor::zeros([1, 4, 64, 64], Default::default()) }
//! # fn main() -> Result<()> {
//! let mut scheduler = build(SchedulerKind::EulerAncestral, &SchedulerConfig::sd_v1_5(), 25)?;
//! let mut latents = randn()?.scale(scheduler.init_noise_sigma() as f32)?;
//! for i in 0..scheduler.timesteps().len() {
//!     let t = scheduler.timesteps()[i];
//!     let input = scheduler.scale_model_input(&latents, i)?;
//!     let model_output = unet(&input, t)?;
//!     let noise = if scheduler.needs_noise() { Some(randn()?) } else { None };
//!     latents = scheduler.step(&model_output, i, &latents, noise.as_ref())?;
//! }
//! # Ok(()) }
//! ```
//!
//! # img2img
//!
//! [`img2img_start`] gives the index of the first timestep to run for a strength (diffusers'
//! `get_timesteps`); the encoded image is noised with [`Scheduler::add_noise`] at that index and the
//! loop runs from it. The first call to [`Scheduler::step`] fixes the start, as diffusers'
//! `set_begin_index` does; schedulers with a history must then be stepped one index at a time.
//!
//! # Precision
//!
//! diffusers computes the training schedule and every per-step coefficient in torch `float32`,
//! and the inference timesteps and sigma tables in numpy `float64` over those `float32` values.
//! The schedulers here follow the same precisions, so timesteps are identical and samples agree
//! with diffusers to a few `f32` ulps per step.

mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod lms;
mod pndm;
mod schedule;

use std::fmt;
use std::str::FromStr;

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddim::DdimScheduler;
pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerScheduler;
pub use euler_ancestral::EulerAncestralScheduler;
pub use lms::LmsScheduler;
pub use pndm::PndmScheduler;
pub use schedule::alphas_cumprod;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A sampler: the timesteps to evaluate the model at and the update that turns each model output
/// into the next sample.
///
/// Step indices address [`Scheduler::timesteps`]. Tensors are latents in any layout, as long as
/// the sample, the model output and the noise share one shape.
pub trait Scheduler: Send {
    /// Which sampler this is.
    fn kind(&self) -> SchedulerKind;

    /// The model timesteps, in the order they are run. PLMS has one more than the number of
    /// inference steps (its second step re-evaluates the first interval).
    fn timesteps(&self) -> &[f64];

    /// The standard deviation of the initial noise: pure `N(0, 1)` latents are multiplied by it
    /// before the first step. 1 for the samplers that work in the variance-preserving
    /// parameterisation (DDIM, PLMS, DPM-Solver), the default here.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Scales the sample into the model's input at `step_index`: the identity by default (DDIM,
    /// PLMS, DPM-Solver); `x / sqrt(σ² + 1)` for the Euler and LMS samplers, which override it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `step_index` is out of range.
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        schedule::check_index(step_index, self.timesteps().len())?;
        Ok(sample.clone())
    }

    /// Whether [`Scheduler::step`] needs a fresh `N(0, 1)` tensor of the sample's shape at every
    /// step (ancestral samplers).
    fn needs_noise(&self) -> bool {
        false
    }

    /// Advances the sample past the timestep at `step_index`, given the model's output there.
    /// `noise` is used only when [`Scheduler::needs_noise`] is true, and required then.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `step_index` is out of range, out of order for a scheduler
    /// with a history, or noise is missing; [`Error::ShapeMismatch`] when the tensors disagree.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// Noises a clean sample to the noise level of the timestep at `step_index` (img2img).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `step_index` is out of range, [`Error::ShapeMismatch`] when
    /// the tensors disagree.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor>;
}

/// The samplers sdrs implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// DDIM, deterministic (η = 0).
    Ddim,
    /// PNDM's pseudo linear multistep method (PLMS).
    Pndm,
    /// Euler's method on the probability-flow ODE.
    Euler,
    /// Euler ancestral: an Euler step to a lower noise level, then fresh noise.
    EulerAncestral,
    /// Fourth-order linear multistep.
    Lms,
    /// DPM-Solver++ (2M), second-order multistep.
    DpmPp2m,
    /// DPM-Solver++ (2M) on the Karras et al. noise levels.
    DpmPp2mKarras,
}

impl SchedulerKind {
    /// Every kind, in a stable order.
    pub const ALL: [SchedulerKind; 7] = [
        SchedulerKind::Ddim,
        SchedulerKind::Pndm,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Lms,
        SchedulerKind::DpmPp2m,
        SchedulerKind::DpmPp2mKarras,
    ];

    /// The short name (`ddim`, `pndm`, `euler`, `euler-a`, `lms`, `dpmpp-2m`, `dpmpp-2m-karras`).
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Pndm => "pndm",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Lms => "lms",
            SchedulerKind::DpmPp2m => "dpmpp-2m",
            SchedulerKind::DpmPp2mKarras => "dpmpp-2m-karras",
        }
    }

    /// The sampler name AUTOMATIC1111's web UI writes in the `Sampler:` field of its infotext.
    pub fn infotext_sampler(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIM",
            SchedulerKind::Pndm => "PLMS",
            SchedulerKind::Euler => "Euler",
            SchedulerKind::EulerAncestral => "Euler a",
            SchedulerKind::Lms => "LMS",
            SchedulerKind::DpmPp2m | SchedulerKind::DpmPp2mKarras => "DPM++ 2M",
        }
    }

    /// The `Schedule type:` field of the infotext, where it is not the default.
    pub fn infotext_schedule_type(self) -> Option<&'static str> {
        match self {
            SchedulerKind::DpmPp2mKarras => Some("Karras"),
            _ => None,
        }
    }

    /// The kind for an infotext's sampler and schedule type. Also accepts the older combined
    /// sampler name `DPM++ 2M Karras`. `None` for samplers sdrs does not implement.
    pub fn from_infotext(sampler: &str, schedule_type: Option<&str>) -> Option<SchedulerKind> {
        let karras = schedule_type.is_some_and(|s| s.trim().eq_ignore_ascii_case("karras"));
        let kind = match sampler.trim() {
            "DDIM" => SchedulerKind::Ddim,
            "PLMS" => SchedulerKind::Pndm,
            "Euler" => SchedulerKind::Euler,
            "Euler a" => SchedulerKind::EulerAncestral,
            "LMS" => SchedulerKind::Lms,
            "DPM++ 2M" if karras => SchedulerKind::DpmPp2mKarras,
            "DPM++ 2M" => SchedulerKind::DpmPp2m,
            "DPM++ 2M Karras" => SchedulerKind::DpmPp2mKarras,
            _ => return None,
        };
        Some(kind)
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SchedulerKind::ALL.iter().map(|k| k.as_str()).collect();
                Error::invalid_argument(
                    "scheduler",
                    format!(
                        "unknown scheduler `{s}`; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Builds the scheduler `kind` from the model's scheduler configuration, set up for
/// `num_inference_steps` steps.
///
/// # Errors
/// [`Error::InvalidArgument`] for zero steps, more steps than training timesteps, or an invalid
/// configuration; [`Error::Unsupported`] for configuration switches sdrs does not implement, or a
/// prediction type the sampler does not support (diffusers' Euler ancestral and PNDM reject
/// `sample`).
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler>> {
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(DdimScheduler::new(config, num_inference_steps)?),
        SchedulerKind::Pndm => Box::new(PndmScheduler::new(config, num_inference_steps)?),
        SchedulerKind::Euler => Box::new(EulerScheduler::new(config, num_inference_steps)?),
        SchedulerKind::EulerAncestral => {
            Box::new(EulerAncestralScheduler::new(config, num_inference_steps)?)
        }
        SchedulerKind::Lms => Box::new(LmsScheduler::new(config, num_inference_steps)?),
        SchedulerKind::DpmPp2m => Box::new(DpmSolverMultistepScheduler::new(
            config,
            num_inference_steps,
            false,
        )?),
        SchedulerKind::DpmPp2mKarras => Box::new(DpmSolverMultistepScheduler::new(
            config,
            num_inference_steps,
            true,
        )?),
    })
}

/// The index into [`Scheduler::timesteps`] at which img2img starts for `strength`, as diffusers'
/// img2img `get_timesteps` computes it: `num_inference_steps − min(⌊steps · strength⌋, steps)`.
///
/// All seven samplers have diffusers order 1, so this index applies to every one of them (PLMS's
/// extra timestep shifts nothing: diffusers slices its list at the same index). The number of
/// steps run is `timesteps().len() − start`.
///
/// # Errors
/// [`Error::InvalidArgument`] for zero steps, a strength outside `(0, 1]` or NaN, or a strength so
/// low that no step would run.
pub fn img2img_start(num_inference_steps: usize, strength: f64) -> Result<usize> {
    if num_inference_steps == 0 {
        return Err(Error::invalid_argument(
            "num_inference_steps",
            "must be at least 1",
        ));
    }
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::invalid_argument(
            "strength",
            format!("must be in (0, 1], got {strength}"),
        ));
    }
    let init = ((num_inference_steps as f64 * strength) as usize).min(num_inference_steps);
    if init == 0 {
        return Err(Error::invalid_argument(
            "strength",
            format!(
                "{strength} with {num_inference_steps} steps leaves no denoising step; raise the \
                 strength or the step count"
            ),
        ));
    }
    Ok(num_inference_steps - init)
}

/// `x₀` and `ε` predictions for the DDIM-style (variance-preserving) parametrisation, where
/// `x_t = sqrt(ᾱ)·x₀ + sqrt(1−ᾱ)·ε`: returns the coefficients `(a, b)` with
/// `x₀ = a·sample + b·model_output`.
fn vp_x0_coefficients(prediction: PredictionType, alpha_prod: f32) -> (f32, f32) {
    let beta_prod = 1.0 - alpha_prod;
    match prediction {
        PredictionType::Epsilon => (
            1.0 / alpha_prod.sqrt(),
            -beta_prod.sqrt() / alpha_prod.sqrt(),
        ),
        PredictionType::VPrediction => (alpha_prod.sqrt(), -beta_prod.sqrt()),
        PredictionType::Sample => (0.0, 1.0),
    }
}

/// `x₀` for the variance-exploding parametrisation `x = x₀ + σ·ε` used by the Euler and LMS
/// samplers on scaled inputs, computed in the order diffusers uses.
fn ve_predict_x0(
    prediction: PredictionType,
    sigma: f32,
    sample: &Tensor,
    model_output: &Tensor,
) -> Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => {
            Tensor::linear_combination(&[(1.0, sample), (-sigma, model_output)])
        }
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            Tensor::linear_combination(&[(-sigma / s2.sqrt(), model_output), (1.0 / s2, sample)])
        }
        PredictionType::Sample => Ok(model_output.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() -> Result<()> {
        for kind in SchedulerKind::ALL {
            assert_eq!(kind.as_str().parse::<SchedulerKind>()?, kind);
            assert_eq!(
                SchedulerKind::from_infotext(
                    kind.infotext_sampler(),
                    kind.infotext_schedule_type()
                ),
                Some(kind)
            );
        }
        assert!("heun".parse::<SchedulerKind>().is_err());
        assert_eq!(
            SchedulerKind::from_infotext("DPM++ 2M Karras", None),
            Some(SchedulerKind::DpmPp2mKarras)
        );
        Ok(())
    }

    #[test]
    fn img2img_start_follows_get_timesteps() -> Result<()> {
        assert_eq!(img2img_start(10, 0.6)?, 4);
        assert_eq!(img2img_start(25, 0.6)?, 10);
        assert_eq!(img2img_start(50, 1.0)?, 0);
        assert_eq!(img2img_start(50, 0.75)?, 13);
        assert!(img2img_start(10, 0.05).is_err());
        assert!(img2img_start(10, 0.0).is_err());
        assert!(img2img_start(10, 1.5).is_err());
        assert!(img2img_start(10, f64::NAN).is_err());
        assert!(img2img_start(0, 0.5).is_err());
        Ok(())
    }

    #[test]
    fn build_rejects_bad_step_counts() {
        let c = SchedulerConfig::sd_v1_5();
        for kind in SchedulerKind::ALL {
            assert!(build(kind, &c, 0).is_err(), "{kind}: zero steps");
            assert!(build(kind, &c, 1001).is_err(), "{kind}: too many steps");
            assert!(build(kind, &c, 1).is_ok(), "{kind}: one step");
        }
    }

    #[test]
    fn steps_fail_cleanly_out_of_range() -> Result<()> {
        let c = SchedulerConfig::sd_v1_5();
        let x = Tensor::zeros([1, 4, 2, 2], Default::default())?;
        for kind in SchedulerKind::ALL {
            let mut s = build(kind, &c, 5)?;
            let n = s.timesteps().len();
            assert!(s.scale_model_input(&x, n).is_err(), "{kind}");
            assert!(s.add_noise(&x, &x, n).is_err(), "{kind}");
            assert!(s.step(&x, n, &x, Some(&x)).is_err(), "{kind}");
            let wrong = Tensor::zeros([1, 4, 2, 3], Default::default())?;
            assert!(s.step(&wrong, 0, &x, Some(&x)).is_err(), "{kind}");
        }
        Ok(())
    }

    #[test]
    fn history_schedulers_enforce_order() -> Result<()> {
        let c = SchedulerConfig::sd_v1_5();
        let x = Tensor::full(0.5, [1, 4, 2, 2], Default::default())?;
        for kind in [
            SchedulerKind::Pndm,
            SchedulerKind::Lms,
            SchedulerKind::DpmPp2m,
        ] {
            let mut s = build(kind, &c, 5)?;
            s.step(&x, 1, &x, None)?;
            assert!(s.step(&x, 3, &x, None).is_err(), "{kind}");
            s.step(&x, 2, &x, None)?;
        }
        Ok(())
    }

    #[test]
    fn ancestral_requires_noise() -> Result<()> {
        let mut s = build(
            SchedulerKind::EulerAncestral,
            &SchedulerConfig::sd_v1_5(),
            5,
        )?;
        assert!(s.needs_noise());
        let x = Tensor::zeros([1, 4, 2, 2], Default::default())?;
        assert!(s.step(&x, 0, &x, None).is_err());
        Ok(())
    }
}
