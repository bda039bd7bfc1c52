//! Shared numerics of the schedulers: the training noise schedule, the inference timestep
//! spacings, the sigma tables and their interpolation.
//!
//! diffusers builds the training schedule in torch `float32` (`linspace`, square, `1 − β`,
//! `cumprod`) and the inference schedules in numpy `float64` over those `float32` values; the
//! functions here reproduce both precisions step by step so that timesteps and sigmas come out
//! bit-identical (or within an ulp where numpy and libm may round a transcendental differently).

use super::config::{BetaSchedule, SchedulerConfig, TimestepSpacing};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `torch.linspace(start, end, steps, dtype=float32)` as the CPU kernel computes it: the step is
/// taken in `f32`, the first half counts up from `start` and the second half down from `end`.
fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// The cosine ("squaredcos_cap_v2") betas of Nichol & Dhariwal, computed in `f64` and stored as
/// `f32`, as diffusers' `betas_for_alpha_bar` does.
fn cosine_betas(steps: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..steps)
        .map(|i| {
            let t1 = i as f64 / steps as f64;
            let t2 = (i + 1) as f64 / steps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `ᾱ_t = Π_{s≤t} (1 − β_s)` for every training timestep, in `f32` as diffusers stores it
/// (`torch.cumprod` accumulates in `f64` on the CPU and rounds each prefix product to `f32`).
///
/// # Errors
/// [`Error::InvalidArgument`] when the configuration fails [`SchedulerConfig::validate`].
pub fn alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f32>> {
    config.validate()?;
    let n = config.num_train_timesteps;
    let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule) {
        (Some(b), _) => b.iter().map(|&v| v as f32).collect(),
        (None, BetaSchedule::Linear) => torch_linspace_f32(config.beta_start, config.beta_end, n),
        (None, BetaSchedule::ScaledLinear) => {
            torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        (None, BetaSchedule::SquaredcosCapV2) => cosine_betas(n),
    };
    let mut acc = 1.0f64;
    Ok(betas
        .into_iter()
        .map(|b| {
            acc *= f64::from(1.0f32 - b);
            acc as f32
        })
        .collect())
}

/// `σ_t = sqrt((1 − ᾱ_t) / ᾱ_t)` in `f32`, the noise level of the variance-exploding form
/// (`x = x₀ + σ·ε`) at every training timestep.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `numpy.linspace(start, stop, num)` in `f64`: `i·step + start`, the last value set to `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// `numpy.arange(start, stop, step)` for a float step: `ceil((stop − start) / step)` values
/// `start + i·delta`, where numpy's fill recomputes `delta` from the first two values.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if !(len.is_finite() && len > 0.0) {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `numpy.interp(x, [0, 1, …, len−1], fp)`: piecewise-linear interpolation of `fp` (stored as
/// `f32`) in `f64`, clamped at both ends.
pub(crate) fn np_interp_index(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor() as usize;
    let (lo, hi) = (f64::from(fp[j]), f64::from(fp[j + 1]));
    let slope = hi - lo;
    slope * (x - j as f64) + lo
}

/// Descending inference timesteps in the DDIM / PNDM / Euler / LMS form, as `f64` values of
/// `numpy.float64`. With [`TimestepSpacing::Linspace`] the values are not rounded here: DDIM and
/// PNDM round them half-to-even, Euler and LMS keep them as `float32`.
pub(crate) fn spaced_timesteps(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    steps: usize,
) -> Vec<f64> {
    let train = config.num_train_timesteps;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t = np_linspace(0.0, (train - 1) as f64, steps);
            t.reverse();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            np_arange(train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// Checks a requested number of inference steps against the training schedule.
pub(crate) fn check_steps(config: &SchedulerConfig, steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::invalid_argument(
            "num_inference_steps",
            "must be at least 1",
        ));
    }
    if steps > config.num_train_timesteps {
        return Err(Error::invalid_argument(
            "num_inference_steps",
            format!(
                "{steps} exceeds the {} timesteps the model was trained with",
                config.num_train_timesteps
            ),
        ));
    }
    Ok(())
}

/// Converts discrete timesteps to table indices, failing for any outside the training range.
pub(crate) fn timestep_indices(timesteps: &[f64], train: usize) -> Result<Vec<usize>> {
    timesteps
        .iter()
        .map(|&t| {
            if t >= 0.0 && t < train as f64 && t.fract() == 0.0 {
                Ok(t as usize)
            } else {
                Err(Error::invalid_argument(
                    "num_inference_steps",
                    format!(
                        "the schedule reaches timestep {t}, outside the {train} training timesteps \
                         (check steps_offset and timestep_spacing)"
                    ),
                ))
            }
        })
        .collect()
}

/// The Karras et al. (2022, eq. 5) noise levels: `steps` values from `sigma_max` down to
/// `sigma_min`, evenly spaced in `σ^(1/ρ)` with `ρ = 7`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv = sigma_min.powf(1.0 / RHO);
    let max_inv = sigma_max.powf(1.0 / RHO);
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(RHO))
        .collect()
}

/// The fractional training timestep whose noise level is `sigma`, by linear interpolation in
/// `log σ` between the two neighbouring training timesteps (diffusers' `_sigma_to_t`).
/// `log_sigmas` is the `f32` log of the training sigmas, increasing with the timestep.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log-sigma does not exceed `log_sigma` (0 if none), capped so that a
    // following index exists.
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((f64::from(lo) - log_sigma) / f64::from(lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Fails unless `step_index` addresses one of `len` timesteps.
pub(crate) fn check_index(step_index: usize, len: usize) -> Result<()> {
    if step_index < len {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            "step_index",
            format!("{step_index} is past the last of {len} timesteps"),
        ))
    }
}

/// Fails unless two tensors have one shape (the model output, the sample, the noise).
pub(crate) fn check_same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() == b.shape() {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
        })
    }
}

/// Tracks the order of steps for schedulers that keep a history: the first step may start at any
/// index (the img2img begin index), later ones must follow one by one.
#[derive(Clone, Debug, Default)]
pub(crate) struct StepOrder {
    next: Option<usize>,
}

impl StepOrder {
    /// Validates `step_index` and records it as taken.
    pub(crate) fn take(&mut self, step_index: usize, len: usize) -> Result<()> {
        check_index(step_index, len)?;
        if let Some(next) = self.next.filter(|&next| next != step_index) {
            return Err(Error::invalid_argument(
                "step_index",
                format!(
                    "this scheduler keeps a history and must be stepped in order: expected step \
                     {next}, got {step_index}"
                ),
            ));
        }
        self.next = Some(step_index + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_and_arange_follow_numpy() {
        assert_eq!(np_linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(
            np_arange(1000.0, 0.0, -250.0),
            vec![1000.0, 750.0, 500.0, 250.0]
        );
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 3.0).len(), 3);
    }

    #[test]
    fn spacings_match_diffusers_for_ten_steps() {
        let c = SchedulerConfig::sd_v1_5();
        let leading = spaced_timesteps(&c, TimestepSpacing::Leading, 10);
        assert_eq!(leading[0], 901.0);
        assert_eq!(leading[9], 1.0);
        let trailing = spaced_timesteps(&c, TimestepSpacing::Trailing, 10);
        assert_eq!(trailing[0], 999.0);
        assert_eq!(trailing[9], 99.0);
        let lin = spaced_timesteps(&c, TimestepSpacing::Linspace, 10);
        assert_eq!((lin[0], lin[9]), (999.0, 0.0));
        assert_eq!(lin[1], 888.0);
    }

    #[test]
    fn interp_is_exact_at_integers_and_clamps() {
        let fp = [1.0f32, 2.0, 4.0];
        assert_eq!(np_interp_index(1.0, &fp), 2.0);
        assert_eq!(np_interp_index(1.5, &fp), 3.0);
        assert_eq!(np_interp_index(-3.0, &fp), 1.0);
        assert_eq!(np_interp_index(7.0, &fp), 4.0);
    }

    #[test]
    fn sigma_to_t_inverts_the_table() -> Result<()> {
        let acp = alphas_cumprod(&SchedulerConfig::sd_v1_5())?;
        let sigmas = train_sigmas(&acp);
        let logs: Vec<f32> = sigmas.iter().map(|s| s.ln()).collect();
        for t in [0usize, 1, 500, 998, 999] {
            let got = sigma_to_t(f64::from(sigmas[t]), &logs);
            assert!((got - t as f64).abs() < 1e-4, "t {t}: {got}");
        }
        Ok(())
    }

    #[test]
    fn sd15_alphas_cumprod_endpoints() -> Result<()> {
        let acp = alphas_cumprod(&SchedulerConfig::sd_v1_5())?;
        assert_eq!(acp.len(), 1000);
        assert!((acp[0] - 0.99915).abs() < 1e-6);
        assert!((acp[999] - 0.0046_4).abs() < 1e-4, "{}", acp[999]);
        Ok(())
    }
}
