//! Encoded conditioning over the steps, and A1111's per-step reconstruction with padding.
//!
//! A1111 `modules/prompt_parser.py` (`ScheduledPromptConditioning`, `reconstruct_cond_batch`,
//! `stack_conds`, `reconstruct_multicond_batch`) and `modules/sd_samplers_cfg_denoiser.py`
//! (`pad_cond`, `CFGDenoiser.pad_cond_uncond`).

use super::MAX_AND_PROMPTS;
use crate::error::{Error, Result};
use crate::prompt::ExtraNetworkTag;
use crate::tensor::Tensor;

/// One conditioning tensor and the last sampling step it is used for (A1111
/// `ScheduledPromptConditioning`).
#[derive(Debug, Clone)]
pub struct CondSegment {
    /// The last step, counted from 0 as A1111's denoiser counts its calls, at which `cond` is
    /// used: a step `k` takes the first segment with `k <= end_at_step`.
    pub end_at_step: usize,
    /// The conditioning, `[1, tokens, width]`.
    pub cond: Tensor,
}

/// The conditioning of one prompt over the steps.
#[derive(Debug, Clone)]
pub struct CondSchedule {
    /// Segments in order of `end_at_step` (at least one).
    pub segments: Vec<CondSegment>,
}

impl CondSchedule {
    /// One conditioning for every step.
    pub fn constant(cond: Tensor) -> Self {
        CondSchedule {
            segments: vec![CondSegment {
                end_at_step: usize::MAX,
                cond,
            }],
        }
    }

    /// The index of the segment used at `step` (0-based): the first whose `end_at_step` is at
    /// least `step`, or the first segment when none is (A1111 `reconstruct_cond_batch`, whose
    /// target index starts at 0).
    pub fn index_at(&self, step: usize) -> usize {
        self.segments
            .iter()
            .position(|s| step <= s.end_at_step)
            .unwrap_or(0)
    }

    /// The conditioning used at `step`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a schedule without segments.
    pub fn cond_at(&self, step: usize) -> Result<&Tensor> {
        self.segments
            .get(self.index_at(step))
            .map(|s| &s.cond)
            .ok_or_else(|| Error::invalid_argument("conditioning", "a schedule has no segments"))
    }
}

/// One `AND` part of the positive prompt: its conditioning and its weight.
#[derive(Debug, Clone)]
pub struct WeightedCond {
    /// The part's conditioning over the steps.
    pub schedule: CondSchedule,
    /// Its weight in `uncond + Σ weight·cfg·(cond − uncond)`.
    pub weight: f64,
}

/// A textual-inversion embedding a prompt used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedEmbedding {
    /// Its trigger name.
    pub name: String,
    /// Its short hash, when known (see [`crate::adapters::Embedding::hash`]).
    pub hash: Option<String>,
}

/// The text conditioning of a generation: what the UNet sees at every step.
///
/// Built by [`super::ParsedPrompts::encode`] (or `Pipeline::conditioning`); the fields are public
/// so that a caller can inspect it or supply its own to `Pipeline::generate_with_conditioning`.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The positive prompt's `AND` parts (at least one, at most [`MAX_AND_PROMPTS`]).
    pub conds: Vec<WeightedCond>,
    /// The negative prompt's conditioning; `None` runs without guidance (one UNet evaluation per
    /// image and step, the positive prediction used as is), which needs a single part of weight 1.
    pub uncond: Option<CondSchedule>,
    /// The encoding of the empty prompt `[1, 77, width]`, used to pad the shorter of the prompt and
    /// the negative prompt (A1111 `cond_stage_model_empty_prompt`). Needed only when their token
    /// counts differ.
    pub empty: Option<Tensor>,
    /// The extra-network tags taken out of the positive prompt, for the caller to resolve.
    pub extra_networks: Vec<ExtraNetworkTag>,
    /// The textual-inversion embeddings the prompts used, each once, in order of first use.
    pub embeddings_used: Vec<UsedEmbedding>,
    /// Infotext entries the conditioning adds (`TI hashes`, `Emphasis`), in A1111's order.
    pub infotext: Vec<(String, String)>,
}

/// The conditioning of one step, after A1111's padding.
#[derive(Debug, Clone)]
pub struct StepConditioning {
    /// The positive parts, each `[1, tokens, width]`, all with the same token count.
    pub conds: Vec<Tensor>,
    /// The weight of each part.
    pub weights: Vec<f64>,
    /// The negative prompt's conditioning `[1, tokens, width]`, when guided: the same token count
    /// as the parts when padded, possibly another without padding.
    pub uncond: Option<Tensor>,
    /// Whether empty-prompt chunks were appended to make the token counts agree (A1111's infotext
    /// `Pad conds`).
    pub padded: bool,
}

impl Conditioning {
    /// Checks the structure: one to [`MAX_AND_PROMPTS`] parts, finite weights, every schedule
    /// non-empty, every tensor `[1, tokens, width]` with one width, and a single part of weight
    /// 1 when there is no negative conditioning.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (argument `conditioning`) saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid_argument("conditioning", reason));
        if self.conds.is_empty() || self.conds.len() > MAX_AND_PROMPTS {
            return bad(format!(
                "{} positive parts; expected 1 to {MAX_AND_PROMPTS}",
                self.conds.len()
            ));
        }
        if let Some(w) = self.conds.iter().find(|c| !c.weight.is_finite()) {
            return bad(format!("weight {} is not finite", w.weight));
        }
        if self.uncond.is_none() && !matches!(self.conds.as_slice(), [c] if c.weight == 1.0) {
            return bad(
                "several parts or a weight other than 1 need a negative conditioning".into(),
            );
        }
        let mut width = None;
        let schedules = self
            .conds
            .iter()
            .map(|c| &c.schedule)
            .chain(self.uncond.as_ref());
        for schedule in schedules {
            if schedule.segments.is_empty() {
                return bad("a schedule has no segments".into());
            }
            let tensors = schedule.segments.iter().map(|s| &s.cond);
            for t in tensors.chain(self.empty.as_ref()) {
                let d = t.dims();
                if d.len() != 3 || d[0] != 1 || d[1] == 0 || d[2] == 0 {
                    return bad(format!(
                        "tensor of shape {} is not [1, tokens, width]",
                        t.shape()
                    ));
                }
                if *width.get_or_insert(d[2]) != d[2] {
                    return bad(format!("tensor of shape {} differs in width", t.shape()));
                }
            }
        }
        Ok(())
    }

    /// Whether the negative conditioning takes part (classifier-free guidance).
    pub fn is_guided(&self) -> bool {
        self.uncond.is_some()
    }

    /// The number of UNet evaluations per image and step: one per positive part, plus one for
    /// the negative prompt when guided.
    pub fn groups(&self) -> usize {
        self.conds.len() + usize::from(self.is_guided())
    }

    /// The segment index of every schedule at `step` (negative first), written into `out`: equal
    /// keys mean equal conditioning, so the caller rebuilds its context only when the key changes.
    pub(crate) fn segment_key(&self, step: usize, out: &mut Vec<usize>) {
        out.clear();
        out.extend(self.uncond.iter().map(|u| u.index_at(step)));
        out.extend(self.conds.iter().map(|c| c.schedule.index_at(step)));
    }

    /// The conditioning at `step` (0-based, counting model evaluations as A1111's denoiser does),
    /// padded as A1111 pads it: positive parts of different lengths are extended by repeating
    /// their last token vector (`stack_conds`), then the shorter of the prompt and the negative
    /// prompt gets copies of the empty-prompt encoding appended (`pad_cond`, A1111's "Pad
    /// prompt/negative prompt" option), so that both fit one UNet batch.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (argument `conditioning`) for a structure
    /// [`validate`](Self::validate) rejects, or token counts that padding cannot reconcile (no
    /// empty-prompt encoding, or a difference that is not a multiple of its length).
    pub fn at_step(&self, step: usize) -> Result<StepConditioning> {
        self.validate()?;
        self.reconstruct(step, true)
    }

    /// [`at_step`](Self::at_step) without the prompt/negative padding (A1111's default): the
    /// negative prompt keeps its own token count, and a caller runs it in a UNet pass of its own
    /// when the counts differ.
    ///
    /// # Errors
    /// As [`at_step`](Self::at_step), less the padding errors.
    pub fn at_step_unpadded(&self, step: usize) -> Result<StepConditioning> {
        self.validate()?;
        self.reconstruct(step, false)
    }

    /// [`at_step`](Self::at_step) (with `pad`) or [`at_step_unpadded`](Self::at_step_unpadded)
    /// for a conditioning already validated.
    pub(crate) fn reconstruct(&self, step: usize, pad: bool) -> Result<StepConditioning> {
        let mut conds = self
            .conds
            .iter()
            .map(|c| c.schedule.cond_at(step).cloned())
            .collect::<Result<Vec<_>>>()?;
        let longest = conds.iter().map(|c| c.dims()[1]).max().unwrap_or(0);
        for cond in &mut conds {
            let tokens = cond.dims()[1];
            if tokens < longest {
                let last = cond.narrow(1, tokens - 1, 1)?;
                let mut parts = vec![&*cond];
                parts.extend(std::iter::repeat_n(&last, longest - tokens));
                *cond = Tensor::cat(&parts, 1)?;
            }
        }
        let weights = self.conds.iter().map(|c| c.weight).collect();
        let Some(uncond_schedule) = &self.uncond else {
            return Ok(StepConditioning {
                conds,
                weights,
                uncond: None,
                padded: false,
            });
        };
        let mut uncond = uncond_schedule.cond_at(step)?.clone();
        let uncond_tokens = uncond.dims()[1];
        if uncond_tokens == longest || !pad {
            return Ok(StepConditioning {
                conds,
                weights,
                uncond: Some(uncond),
                padded: false,
            });
        }
        let empty = self.empty.as_ref().ok_or_else(|| {
            Error::invalid_argument(
                "conditioning",
                format!(
                    "the prompt has {longest} tokens and the negative prompt {uncond_tokens}, \
                     and there is no empty-prompt encoding to pad with"
                ),
            )
        })?;
        let chunk = empty.dims()[1];
        let gap = longest.abs_diff(uncond_tokens);
        if gap % chunk != 0 {
            return Err(Error::invalid_argument(
                "conditioning",
                format!(
                    "the prompt has {longest} tokens and the negative prompt {uncond_tokens}; \
                     the difference is not a multiple of the {chunk}-token empty prompt"
                ),
            ));
        }
        let pad = |t: &Tensor| {
            let mut parts = vec![t];
            parts.extend(std::iter::repeat_n(empty, gap / chunk));
            Tensor::cat(&parts, 1)
        };
        if uncond_tokens < longest {
            uncond = pad(&uncond)?;
        } else {
            conds = conds.iter().map(pad).collect::<Result<_>>()?;
        }
        Ok(StepConditioning {
            conds,
            weights,
            uncond: Some(uncond),
            padded: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Device;

    fn tensor(tokens: usize, value: f32) -> Tensor {
        let data = (0..tokens * 2).map(|i| value + i as f32).collect();
        Tensor::from_vec(data, vec![1, tokens, 2], Device::Cpu).expect("tensor")
    }

    fn schedule(parts: &[(usize, Tensor)]) -> CondSchedule {
        CondSchedule {
            segments: parts
                .iter()
                .map(|(end, t)| CondSegment {
                    end_at_step: *end,
                    cond: t.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn step_lookup_follows_reconstruct_cond_batch() {
        let s = schedule(&[(3, tensor(1, 0.0)), (9, tensor(1, 1.0))]);
        let picks: Vec<usize> = (0..12).map(|k| s.index_at(k)).collect();
        // Steps 0..=3 use the first text, 4..=9 the second, later steps fall back to the first.
        assert_eq!(picks, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn pads_parts_with_their_last_vector_and_the_shorter_side_with_empty() -> Result<()> {
        let c = Conditioning {
            conds: vec![
                WeightedCond {
                    schedule: schedule(&[(5, tensor(2, 0.0))]),
                    weight: 1.0,
                },
                WeightedCond {
                    schedule: schedule(&[(5, tensor(4, 10.0))]),
                    weight: 0.5,
                },
            ],
            uncond: Some(schedule(&[(5, tensor(2, 20.0))])),
            empty: Some(tensor(2, 100.0)),
            extra_networks: Vec::new(),
            embeddings_used: Vec::new(),
            infotext: Vec::new(),
        };
        let s = c.at_step(0)?;
        assert!(s.padded);
        assert_eq!(s.weights, [1.0, 0.5]);
        // [0,1 | 2,3] then the last vector (2,3) twice.
        assert_eq!(s.conds[0].to_vec()?, [0., 1., 2., 3., 2., 3., 2., 3.]);
        assert_eq!(s.conds[1].dims(), [1, 4, 2]);
        let u = s.uncond.as_ref().map(Tensor::to_vec).transpose()?;
        assert_eq!(u, Some(vec![20., 21., 22., 23., 100., 101., 102., 103.]));

        let no_empty = Conditioning {
            empty: None,
            ..c.clone()
        };
        assert!(no_empty.at_step(0).is_err());
        let odd = Conditioning {
            empty: Some(tensor(3, 0.0)),
            ..c
        };
        assert!(odd.at_step(0).is_err());
        Ok(())
    }

    #[test]
    fn validation() {
        let one = |weight| WeightedCond {
            schedule: schedule(&[(1, tensor(1, 0.0))]),
            weight,
        };
        let base = Conditioning {
            conds: vec![one(1.0)],
            uncond: None,
            empty: None,
            extra_networks: Vec::new(),
            embeddings_used: Vec::new(),
            infotext: Vec::new(),
        };
        assert!(base.validate().is_ok());
        assert!(
            Conditioning {
                conds: vec![one(0.5)],
                ..base.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            Conditioning {
                conds: vec![one(f64::NAN)],
                uncond: Some(schedule(&[(1, tensor(1, 0.0))])),
                ..base.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            Conditioning {
                conds: Vec::new(),
                ..base.clone()
            }
            .validate()
            .is_err()
        );
        let wide = Tensor::full(0.0, [1, 1, 3], crate::tensor::Device::Cpu).expect("tensor");
        assert!(
            Conditioning {
                uncond: Some(CondSchedule::constant(wide)),
                ..base
            }
            .validate()
            .is_err()
        );
    }
}
