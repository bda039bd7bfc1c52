//! The conditioning inside the denoising loop: the UNet's context per step, and guidance.
//!
//! The UNet batch is laid out `[uncond × b, cond₀ × b, cond₁ × b, …]` (diffusers' order, with one
//! block per `AND` part), and the prediction is combined as A1111's
//! `CFGDenoiser.combine_denoised`: `uncond + Σᵢ (condᵢ − uncond)·(wᵢ·cfg)`, terms added in order.
//! For a single part of weight 1 this is diffusers' `uncond + cfg·(cond − uncond)`, operation for
//! operation. (A1111 combines the denoised images `x − σ·ε`; the combination is affine, so
//! combining the noise predictions gives the same result.)
//!
//! When the prompt and the negative prompt have different token counts (one is longer than 75
//! tokens), A1111 by default runs them in separate UNet passes ([`StepBatch::Split`]); with its
//! "Pad prompt/negative prompt" option the shorter is padded with empty-prompt chunks and one
//! pass serves both.
//!
//! The context tensors are rebuilt only when a schedule switches to its next segment, so a step
//! allocates the same buffers whatever the step count.

use super::schedule::Conditioning;
use crate::error::Result;
use crate::tensor::Tensor;

/// The UNet's context for one step.
pub(crate) enum StepBatch<'a> {
    /// Every block in one pass: `[groups·batch, tokens, width]`, laid out `[uncond, cond₀, …]`.
    Joint(&'a Tensor),
    /// The negative prompt `[batch, tokens_u, width]` and the positive parts
    /// `[(groups − 1)·batch, tokens_c, width]` in passes of their own (token counts differ).
    Split {
        /// The negative prompt's block.
        uncond: &'a Tensor,
        /// The positive parts' blocks.
        conds: &'a Tensor,
    },
}

enum Built {
    Joint(Tensor),
    Split { uncond: Tensor, conds: Tensor },
}

/// The UNet's conditioning input over the loop of one generation.
pub(crate) struct StepContext<'a> {
    conditioning: &'a Conditioning,
    batch: usize,
    pad: bool,
    key: Vec<usize>,
    scratch: Vec<usize>,
    context: Option<Built>,
    padded: bool,
}

impl<'a> StepContext<'a> {
    /// Checks `conditioning` once for a loop over `batch` images; `pad` pads a prompt and
    /// negative prompt of different lengths into one pass (A1111's option) instead of two.
    pub(crate) fn new(conditioning: &'a Conditioning, batch: usize, pad: bool) -> Result<Self> {
        conditioning.validate()?;
        Ok(StepContext {
            conditioning,
            batch,
            pad,
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

    /// The context at `step` (0-based model evaluation, as A1111 counts).
    pub(crate) fn at(&mut self, step: usize) -> Result<StepBatch<'_>> {
        self.conditioning.segment_key(step, &mut self.scratch);
        if self.context.is_none() || self.scratch != self.key {
            std::mem::swap(&mut self.key, &mut self.scratch);
            let s = self.conditioning.reconstruct(step, self.pad)?;
            self.padded |= s.padded;
            let b = self.batch;
            let repeat = |blocks: &[&Tensor]| -> Result<Tensor> {
                let rows: Vec<&Tensor> = blocks
                    .iter()
                    .flat_map(|t| std::iter::repeat_n(*t, b))
                    .collect();
                Tensor::cat(&rows, 0)
            };
            // Drop the previous context before building the next, so at most one is alive.
            self.context = None;
            let conds: Vec<&Tensor> = s.conds.iter().collect();
            self.context = Some(match &s.uncond {
                Some(u) if u.dims()[1] != conds.first().map_or(0, |c| c.dims()[1]) => {
                    Built::Split {
                        uncond: repeat(&[u])?,
                        conds: repeat(&conds)?,
                    }
                }
                Some(u) => {
                    let mut blocks = vec![u];
                    blocks.extend(conds);
                    Built::Joint(repeat(&blocks)?)
                }
                None => Built::Joint(repeat(&conds)?),
            });
        }
        match &self.context {
            Some(Built::Joint(c)) => Ok(StepBatch::Joint(c)),
            Some(Built::Split { uncond, conds }) => Ok(StepBatch::Split { uncond, conds }),
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
        let ctx = StepContext::new(&c, 2, true)?;
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
        let mut ctx = StepContext::new(&c, 2, true)?;
        let seen: Vec<Vec<f32>> = (0..4)
            .map(|k| match ctx.at(k)? {
                StepBatch::Joint(t) => t.to_vec(),
                StepBatch::Split { .. } => Err(crate::Error::Internal("split".into())),
            })
            .collect::<Result<_>>()?;
        assert_eq!(seen[0], [9.0, 9.0, 1.0, 1.0]);
        assert_eq!(seen[1], seen[0]);
        assert_eq!(seen[2], [9.0, 9.0, 2.0, 2.0]);
        assert_eq!(seen[3], seen[2]);
        assert!(!ctx.padded());
        Ok(())
    }
}
