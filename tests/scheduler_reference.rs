//! Replays the diffusers reference trajectories of `tests/fixtures/reference/schedulers.safetensors`
//! (written by `tools/make_scheduler_fixtures.py`) through every sdrs scheduler and compares each
//! step.
//!
//! Each case runs a synthetic denoising loop on a `[1, 4, 8, 8]` sample whose "model" is
//! `0.7·cos(t/300)·scaled_input + 0.3·fixed`, so a wrong timestep, input scale, sigma or update
//! coefficient changes the trajectory. The whole trajectory is recomputed here from the first
//! sample (errors accumulate as they would in a real run), and at every step the maximum absolute
//! error must stay within `REL_TOL` times the largest magnitude of the reference sample.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use sd_core::schedulers::{
    PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing, alphas_cumprod, build,
    img2img_start,
};
use sd_core::{Device, Tensor};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Per-step tolerance: max |sdrs − diffusers| ≤ REL_TOL · max |diffusers|.
const REL_TOL: f64 = 1e-5;
/// Tolerance on `init_noise_sigma`, relative.
const SIGMA_TOL: f64 = 1e-6;
/// Tolerance on the training `ᾱ` table, relative.
const ALPHA_TOL: f64 = 1e-6;
const STRENGTH: f64 = 0.6;
const SHAPE: [usize; 4] = [1, 4, 8, 8];

struct Fixture<'a> {
    st: SafeTensors<'a>,
}

impl Fixture<'_> {
    fn values(&self, name: &str) -> Result<(Vec<f64>, Vec<usize>), Box<dyn std::error::Error>> {
        let view = self.st.tensor(name)?;
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            other => return Err(format!("{name}: unexpected dtype {other:?}").into()),
        };
        Ok((values, view.shape().to_vec()))
    }

    fn scalar(&self, name: &str) -> Result<f64, Box<dyn std::error::Error>> {
        let (v, _) = self.values(name)?;
        v.first()
            .copied()
            .ok_or_else(|| format!("{name} is empty").into())
    }

    /// The `[1, 4, 8, 8]` slices of a stacked tensor (or the tensor itself).
    fn samples(&self, name: &str) -> Result<Vec<Tensor>, Box<dyn std::error::Error>> {
        let (v, _) = self.values(name)?;
        let per: usize = SHAPE.iter().product();
        v.chunks_exact(per)
            .map(|c| {
                Tensor::from_vec(c.iter().map(|&x| x as f32).collect(), SHAPE, Device::Cpu)
                    .map_err(Into::into)
            })
            .collect()
    }
}

fn max_abs(t: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    Ok(t.to_vec()?
        .iter()
        .fold(0.0f64, |m, &v| m.max(f64::from(v.abs()))))
}

/// Relative error of one step: max |a − ref| / max |ref|.
fn rel_err(got: &Tensor, reference: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    let diff = f64::from(got.max_abs_diff(reference)?);
    Ok(diff / max_abs(reference)?.max(1e-30))
}

fn spacing(name: &str) -> Result<Option<TimestepSpacing>, Box<dyn std::error::Error>> {
    Ok(match name {
        "default" => None,
        "leading" => Some(TimestepSpacing::Leading),
        "linspace" => Some(TimestepSpacing::Linspace),
        "trailing" => Some(TimestepSpacing::Trailing),
        other => return Err(format!("unknown spacing {other}").into()),
    })
}

fn prediction(name: &str) -> Result<PredictionType, Box<dyn std::error::Error>> {
    Ok(match name {
        "epsilon" => PredictionType::Epsilon,
        "v_prediction" => PredictionType::VPrediction,
        "sample" => PredictionType::Sample,
        other => return Err(format!("unknown prediction type {other}").into()),
    })
}

/// Runs one case; returns the worst per-step relative error.
fn replay(fx: &Fixture<'_>, case: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let parts: Vec<&str> = case.split('/').collect();
    let [mode, kind, pred, steps, space] = parts[..] else {
        return Err(format!("bad case name {case}").into());
    };
    let kind: SchedulerKind = kind.parse()?;
    let steps: usize = steps.parse()?;
    let mut config = SchedulerConfig::sd_v1_5();
    config.prediction_type = prediction(pred)?;
    config.timestep_spacing = spacing(space)?;
    let mut sched = build(kind, &config, steps)?;

    let (ref_timesteps, _) = fx.values(&format!("{case}/timesteps"))?;
    assert_eq!(sched.timesteps(), &ref_timesteps[..], "{case}: timesteps");
    let ref_sigma = fx.scalar(&format!("{case}/init_noise_sigma"))?;
    let sigma_err = (sched.init_noise_sigma() - ref_sigma).abs() / ref_sigma;
    assert!(
        sigma_err <= SIGMA_TOL,
        "{case}: init_noise_sigma {} vs {ref_sigma}",
        sched.init_noise_sigma()
    );

    let start = fx.scalar(&format!("{case}/start"))? as usize;
    let reference = fx.samples(&format!("{case}/samples"))?;
    let noises = if sched.needs_noise() {
        fx.samples(&format!("{case}/noise"))?
    } else {
        Vec::new()
    };
    let mut x = if mode == "i2i" {
        assert_eq!(
            img2img_start(steps, STRENGTH)?,
            start,
            "{case}: img2img start"
        );
        let clean = fx.samples("clean")?.remove(0);
        let noise = fx.samples("img2img_noise")?.remove(0);
        sched.add_noise(&clean, &noise, start)?
    } else {
        fx.samples("sample0")?
            .remove(0)
            .scale(sched.init_noise_sigma() as f32)?
    };
    assert_eq!(
        reference.len(),
        sched.timesteps().len() - start + 1,
        "{case}: step count"
    );
    let fixed = fx.samples("fixed")?.remove(0);

    let mut worst = rel_err(&x, &reference[0])?;
    for (j, i) in (start..sched.timesteps().len()).enumerate() {
        let t = sched.timesteps()[i];
        let input = sched.scale_model_input(&x, i)?;
        let c = (0.7 * (t / 300.0).cos()) as f32;
        let model_output = Tensor::linear_combination(&[(c, &input), (0.3, &fixed)])?;
        x = sched.step(&model_output, i, &x, noises.get(j))?;
        let err = rel_err(&x, &reference[j + 1])?;
        assert!(
            err <= REL_TOL,
            "{case}: step {i} (t = {t}): relative error {err:.3e} exceeds {REL_TOL:.0e}"
        );
        worst = worst.max(err);
    }
    Ok(worst)
}

#[test]
fn schedulers_match_diffusers() -> TestResult {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference/schedulers.safetensors");
    let bytes = std::fs::read(&path)?;
    let fx = Fixture {
        st: SafeTensors::deserialize(&bytes)?,
    };

    let (ref_acp, _) = fx.values("alphas_cumprod")?;
    let acp = alphas_cumprod(&SchedulerConfig::sd_v1_5())?;
    assert_eq!(acp.len(), ref_acp.len());
    let acp_err = acp
        .iter()
        .zip(&ref_acp)
        .map(|(&a, &r)| (f64::from(a) - r).abs() / r)
        .fold(0.0, f64::max);
    println!("alphas_cumprod: max relative error {acp_err:.2e}");
    assert!(
        acp_err <= ALPHA_TOL,
        "alphas_cumprod relative error {acp_err:.2e}"
    );

    let mut cases: Vec<String> = fx
        .st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_suffix("/samples").map(str::to_owned))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 40,
        "only {} cases in the fixture",
        cases.len()
    );
    let mut per_kind: BTreeMap<String, f64> = BTreeMap::new();
    for case in &cases {
        let worst = replay(&fx, case)?;
        println!("{case:<44} max step error {worst:.2e} x max|ref|");
        let kind = case.split('/').nth(1).unwrap_or_default().to_owned();
        let entry = per_kind.entry(kind).or_insert(0.0);
        *entry = entry.max(worst);
    }
    for (kind, worst) in &per_kind {
        println!("{kind:<16} worst {worst:.2e}");
    }
    Ok(())
}
