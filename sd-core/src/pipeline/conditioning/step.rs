//! The conditioning inside the denoising loop: the UNet's context per step, and guidance.
//!
//! The UNet batch is laid out `[uncond × b, cond₀ × b, cond₁ × b, …]` (diffusers' order, with one
//! block per `AND` part), and the prediction is combined as A1111's
//! `CFGDenoiser.combine_denoised`: `uncond + Σᵢ (condᵢ − uncond)·(wᵢ·cfg)`, terms added in order.
//! For a single part of weight 1 this is diffusers' `uncond + cfg·(cond − uncond)`, operation for
//! operation. (A1111 combines the denoised images `x − σ·ε`; the combination is affine, so
//! combining the noise predictions gives the same result.)
//!
//! The context tensor is rebuilt only when a schedule switches to its next segment, so a step
//! allocates the same buffers whatever the step count.

use super::schedule::Conditioning;
use crate::error::Result;
use crate::tensor::Tensor;

/// The UNet's conditioning input over the loop of one generation.
pub(crate) struct StepContext<'a> {
    conditioning: &'a Conditioning,
    batch: usize,
    key: Vec<usize>,
    scratch: Vec<usize>,
    context: Option<Tensor>,
    padded: bool,
}

impl<'a> StepContext<'a> {
    /// Checks `conditioning` once for a loop over `batch` images.
    pub(crate) fn new(conditioning: &'a Conditioning, batch: usize) -> Result<Self> {
        conditioning.validate()?;
        Ok(StepContext {
            conditioning,
            batch,
            key: Vec::with_capacity(conditioning.groups()),
            scratch: Vec::with_capacity(conditioning.groups()),
            context: None,
            padded: false,
        })
    }

    /// UNet evaluations per image and step.
    pub(crate) fn groups(&self) -> usize {
        self.conditioning.groups()
    }

    /// Whether padding was needed at some step so far (A1111's infotext `Pad conds`).
    pub(crate) fn padded(&self) -> bool {
        self.padded
    }

    /// The context at `step` (0-based model evaluation, as A1111 counts): `[groups·batch,
    /// tokens, width]`.
    pub(crate) fn at(&mut self, step: usize) -> Result<&Tensor> {
        self.conditioning.segment_key(step, &mut self.scratch);
        if self.context.is_none() || self.scratch != self.key {
            std::mem::swap(&mut self.key, &mut self.scratch);
            let s = self.conditioning.reconstruct(step)?;
            self.padded |= s.padded;
            let b = self.batch;
            let mut rows: Vec<&Tensor> = Vec::with_capacity(self.groups() * b);
            if let Some(u) = &s.uncond {
                rows.extend(std::iter::repeat_n(u, b));
            }
            for c in &s.conds {
                rows.extend(std::iter::repeat_n(c, b));
            }
            // Drop the previous context before building the next, so at most one is alive.
            self.context = None;
            self.context = Some(Tensor::cat(&rows, 0)?);
        }
        match &self.context {
            Some(c) => Ok(c),
            None => Err(crate::Error::Internal("step context not built".into())),
        }
    }

    /// Combines the UNet output `[groups·batch, …]` into the noise prediction `[batch, …]`.
    pub(crate) fn combine(&self, out: Tensor, guidance_scale: f64) -> Result<Tensor> {
        let Some(_) = &self.conditioning.uncond else {
            return Ok(out);
        };
        let parts = out.chunk(self.groups(), 0)?;
        let (uncond, conds) = parts
            .split_first()
            .ok_or_else(|| crate::Error::Internal("guidance without an uncond block".into()))?;
        let mut noise: Option<Tensor> = None;
        for (cond, part) in conds.iter().zip(&self.conditioning.conds) {
            let term = cond
                .sub(uncond)?
                .scale((part.weight * guidance_scale) as f32)?;
            noise = Some(match noise {
                None => uncond.add(&term)?,
                Some(n) => n.add(&term)?,
            });
        }
        noise.ok_or_else(|| crate::Error::Internal("guidance without a positive part".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::conditioning::{CondSchedule, CondSegment, WeightedCond};
    use crate::tensor::Device;

    fn t(values: &[f32]) -> Tensor {
        Tensor::from_vec(values.to_vec(), vec![values.len(), 1, 1], Device::Cpu).expect("tensor")
    }

    fn token(value: f32) -> Tensor {
        Tensor::from_vec(vec![value], vec![1, 1, 1], Device::Cpu).expect("tensor")
    }

    #[test]
    fn combine_is_uncond_plus_weighted_differences() -> Result<()> {
        let c = Conditioning {
            conds: vec![
                WeightedCond {
                    schedule: CondSchedule::constant(token(1.0)),
                    weight: 0.5,
                },
                WeightedCond {
                    schedule: CondSchedule::constant(token(2.0)),
                    weight: -1.0,
                },
            ],
            uncond: Some(CondSchedule::constant(token(0.0))),
            empty: None,
            extra_networks: Vec::new(),
            embeddings_used: Vec::new(),
            infotext: Vec::new(),
        };
        let ctx = StepContext::new(&c, 2)?;
        assert_eq!(ctx.groups(), 3);
        // Blocks of 2 images: uncond [1, 2], cond₀ [3, 6], cond₁ [5, 10].
        let out = ctx.combine(t(&[1.0, 2.0, 3.0, 6.0, 5.0, 10.0]), 2.0)?;
        // 1 + (3-1)·1 + (5-1)·(-2) = -5;  2 + (6-2)·1 + (10-2)·(-2) = -10.
        assert_eq!(out.to_vec()?, [-5.0, -10.0]);
        Ok(())
    }

    #[test]
    fn context_is_rebuilt_when_a_schedule_switches() -> Result<()> {
        let c = Conditioning {
            conds: vec![WeightedCond {
                schedule: CondSchedule {
                    segments: vec![
                        CondSegment {
                            end_at_step: 1,
                            cond: token(1.0),
                        },
                        CondSegment {
                            end_at_step: 3,
                            cond: token(2.0),
                        },
                    ],
                },
                weight: 1.0,
            }],
            uncond: Some(CondSchedule::constant(token(9.0))),
            empty: None,
            extra_networks: Vec::new(),
            embeddings_used: Vec::new(),
            infotext: Vec::new(),
        };
        let mut ctx = StepContext::new(&c, 2)?;
        let seen: Vec<Vec<f32>> = (0..4)
            .map(|k| ctx.at(k).and_then(Tensor::to_vec))
            .collect::<Result<_>>()?;
        assert_eq!(seen[0], [9.0, 9.0, 1.0, 1.0]);
        assert_eq!(seen[1], seen[0]);
        assert_eq!(seen[2], [9.0, 9.0, 2.0, 2.0]);
        assert_eq!(seen[3], seen[2]);
        assert!(!ctx.padded());
        Ok(())
    }
}
