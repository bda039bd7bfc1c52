//! Linear multistep (LMS) sampling of the probability-flow ODE `dx/dσ = (x − x₀(x, σ)) / σ` in
//! the noise-level parametrisation of Karras, Aittala, Aila & Laine, "Elucidating the Design
//! Space of Diffusion-Based Generative Models", NeurIPS 2022 (arXiv:2206.00364).
//!
//! Matches diffusers' `LMSDiscreteScheduler` with order 4 (a port of Katherine Crowson's
//! k-diffusion `sample_lms`): an Adams–Bashforth method on the non-uniform sigma grid whose
//! coefficients are the integrals over `[σ_i, σ_{i+1}]` of the Lagrange basis polynomials through
//! the last `order` sigmas. diffusers integrates them with `scipy.integrate.quad`; here an
//! adaptive Simpson rule does it to a relative tolerance of 1e-12 (the integrands are
//! polynomials of degree ≤ 3, which Simpson's rule integrates exactly).

use std::collections::VecDeque;

use super::config::{PredictionType, SchedulerConfig};
use super::euler::SigmaSchedule;
use super::schedule::{StepOrder, check_index, check_same_shape};
use super::{Scheduler, SchedulerKind, ve_predict_x0};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The multistep order diffusers' pipelines use.
const ORDER: usize = 4;

/// The LMS sampler. Keeps the last derivatives, so steps must be taken in order.
#[derive(Clone, Debug)]
pub struct LmsScheduler {
    schedule: SigmaSchedule,
    prediction: PredictionType,
    /// The last (up to [`ORDER`]) derivatives, oldest first.
    derivatives: VecDeque<Tensor>,
    order: StepOrder,
}

impl LmsScheduler {
    /// Builds the sampler for `num_inference_steps` steps.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero steps, more steps than training timesteps or an invalid
    /// configuration.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        Ok(LmsScheduler {
            schedule: SigmaSchedule::new(config, num_inference_steps)?,
            prediction: config.prediction_type,
            derivatives: VecDeque::with_capacity(ORDER + 1),
            order: StepOrder::default(),
        })
    }

    /// `∫_{σ_t}^{σ_{t+1}} Π_{k≠current, k<order} (τ − σ_{t−k}) / (σ_{t−current} − σ_{t−k}) dτ`.
    fn coefficient(&self, order: usize, t: usize, current: usize) -> Result<f64> {
        let s = |i: usize| f64::from(self.schedule.sigmas[i]);
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s(t - k)) / (s(t - current) - s(t - k)))
                .product::<f64>()
        };
        integrate(basis, s(t), s(t + 1), 1e-12)
    }
}

impl Scheduler for LmsScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Lms
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
        check_same_shape("lms step", model_output, sample)?;
        self.order.take(step_index, self.schedule.timesteps.len())?;
        let sigma = self.schedule.sigmas[step_index];
        let x0 = ve_predict_x0(self.prediction, sigma, sample, model_output)?;
        let derivative = Tensor::linear_combination(&[(1.0 / sigma, sample), (-1.0 / sigma, &x0)])?;
        self.derivatives.push_back(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.pop_front();
        }
        // As in diffusers, the order follows the step index, not the history length: an img2img
        // run that starts late uses the higher-order coefficient for its newest derivatives.
        let order = (step_index + 1).min(ORDER);
        let mut terms: Vec<(f32, &Tensor)> = vec![(1.0, sample)];
        for (current, derivative) in (0..order).zip(self.derivatives.iter().rev()) {
            terms.push((
                self.coefficient(order, step_index, current)? as f32,
                derivative,
            ));
        }
        Tensor::linear_combination(&terms)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, step_index)
    }
}

/// `∫_a^b f` by adaptive Simpson quadrature with Richardson extrapolation, to about `rel_tol`
/// relative to the magnitude of the integral (absolute below 1e-300).
///
/// # Errors
/// [`Error::Internal`] when the integrand is not finite or the tolerance is not reached within the
/// recursion limit (neither happens for the LMS polynomials).
fn integrate(f: impl Fn(f64) -> f64, a: f64, b: f64, rel_tol: f64) -> Result<f64> {
    const MAX_DEPTH: u32 = 48;

    struct Panel {
        a: f64,
        b: f64,
        fa: f64,
        fm: f64,
        fb: f64,
        whole: f64,
    }

    fn simpson(a: f64, b: f64, fa: f64, fm: f64, fb: f64) -> f64 {
        (b - a) / 6.0 * (fa + 4.0 * fm + fb)
    }

    fn recurse(f: &dyn Fn(f64) -> f64, p: Panel, tol: f64, depth: u32) -> Option<f64> {
        let m = 0.5 * (p.a + p.b);
        let (lm, rm) = (0.5 * (p.a + m), 0.5 * (m + p.b));
        let (flm, frm) = (f(lm), f(rm));
        let left = simpson(p.a, m, p.fa, flm, p.fm);
        let right = simpson(m, p.b, p.fm, frm, p.fb);
        let delta = left + right - p.whole;
        if !delta.is_finite() {
            return None;
        }
        if delta.abs() <= 15.0 * tol {
            return Some(left + right + delta / 15.0);
        }
        if depth == 0 {
            return None;
        }
        let l = Panel {
            a: p.a,
            b: m,
            fa: p.fa,
            fm: flm,
            fb: p.fm,
            whole: left,
        };
        let r = Panel {
            a: m,
            b: p.b,
            fa: p.fm,
            fm: frm,
            fb: p.fb,
            whole: right,
        };
        Some(recurse(f, l, tol / 2.0, depth - 1)? + recurse(f, r, tol / 2.0, depth - 1)?)
    }

    if a == b {
        return Ok(0.0);
    }
    let (fa, fm, fb) = (f(a), f(0.5 * (a + b)), f(b));
    let whole = simpson(a, b, fa, fm, fb);
    if !whole.is_finite() {
        return Err(Error::Internal(format!(
            "lms quadrature: integrand is not finite on [{a}, {b}]"
        )));
    }
    let tol = (rel_tol * whole.abs()).max(1e-300);
    recurse(
        &f,
        Panel {
            a,
            b,
            fa,
            fm,
            fb,
            whole,
        },
        tol,
        MAX_DEPTH,
    )
    .ok_or_else(|| {
        Error::Internal(format!(
            "lms quadrature did not converge on [{a}, {b}] (tolerance {rel_tol})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadrature_is_exact_for_cubics() -> Result<()> {
        let got = integrate(|x| 2.0 * x * x * x - x + 3.0, -1.5, 2.5, 1e-12)?;
        let antider = |x: f64| 0.5 * x.powi(4) - 0.5 * x * x + 3.0 * x;
        let want = antider(2.5) - antider(-1.5);
        assert!((got - want).abs() <= 1e-12 * want.abs(), "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn quadrature_reaches_1e10_on_smooth_functions() -> Result<()> {
        let got = integrate(f64::sin, 0.0, std::f64::consts::PI, 1e-12)?;
        assert!((got - 2.0).abs() < 1e-10, "{got}");
        let got = integrate(f64::exp, 3.0, -1.0, 1e-12)?;
        let want = (-1.0f64).exp() - 3.0f64.exp();
        assert!((got - want).abs() < 1e-10 * want.abs(), "{got} vs {want}");
        let got = integrate(|x| 1.0 / (1.0 + 25.0 * x * x), -1.0, 1.0, 1e-12)?;
        let want = 2.0 * 5.0f64.atan() / 5.0;
        assert!((got - want).abs() < 1e-10, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn quadrature_reports_non_finite_integrands() {
        assert!(integrate(|_| f64::NAN, 0.0, 1.0, 1e-12).is_err());
    }

    #[test]
    fn first_order_coefficient_is_the_interval() -> Result<()> {
        let s = LmsScheduler::new(&SchedulerConfig::sd_v1_5(), 10)?;
        let c = s.coefficient(1, 0, 0)?;
        let sig = &s.schedule.sigmas;
        assert!((c - f64::from(sig[1] - sig[0])).abs() < 1e-6);
        Ok(())
    }
}
