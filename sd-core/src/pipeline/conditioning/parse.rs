//! The text-level steps: extra-network tags out of the positive prompt, `AND` split, schedules.
//!
//! A1111 `modules/processing.py`: `parse_extra_network_prompts` takes the tags out of the
//! positive prompts only (a tag in the negative prompt stays in its text and is tokenized like
//! any other word); the negative prompt goes to `prompt_parser.get_learned_conditioning` (no
//! `AND`), the positive one to `get_multicond_learned_conditioning`; both are scheduled over the
//! requested step count.

use super::{MAX_AND_PROMPTS, MAX_PROMPT_BYTES, PromptSyntax};
use crate::error::{Error, Result};
use crate::prompt::{
    ExtraNetworkTag, PromptSchedule, ScheduleOptions, ScheduleSegment, extract_extra_networks,
    prompt_schedule, split_and,
};

/// One `AND` part of the positive prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSubPrompt {
    /// The part's text (tags removed, its `:weight` suffix removed).
    pub text: String,
    /// Its weight in the guidance sum (1.0 when none is written).
    pub weight: f64,
    /// The texts it takes over the steps.
    pub schedule: PromptSchedule,
}

/// A prompt and a negative prompt after the text-level steps, ready to be encoded
/// ([`ParsedPrompts::encode`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedPrompts {
    syntax: PromptSyntax,
    steps: usize,
    extra_networks: Vec<ExtraNetworkTag>,
    sub_prompts: Vec<ParsedSubPrompt>,
    negative: PromptSchedule,
}

impl ParsedPrompts {
    /// Parses `prompt` and `negative_prompt` for a run of `steps` sampling steps.
    ///
    /// With [`PromptSyntax::Plain`] each prompt is one text used for every step and nothing is
    /// taken out of it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `prompt` or `negative_prompt` when one is longer than
    /// [`MAX_PROMPT_BYTES`], `prompt` when it has more than [`MAX_AND_PROMPTS`] `AND` parts, and
    /// `steps` when it is 0.
    pub fn parse(
        prompt: &str,
        negative_prompt: &str,
        steps: usize,
        syntax: PromptSyntax,
    ) -> Result<Self> {
        for (name, text) in [("prompt", prompt), ("negative_prompt", negative_prompt)] {
            if text.len() > MAX_PROMPT_BYTES {
                return Err(Error::invalid_argument(
                    name,
                    format!(
                        "{} bytes exceed the limit of {MAX_PROMPT_BYTES}",
                        text.len()
                    ),
                ));
            }
        }
        if steps == 0 {
            return Err(Error::invalid_argument("steps", "must be at least 1"));
        }
        let whole = |text: &str| PromptSchedule {
            segments: vec![ScheduleSegment {
                until_step: steps,
                text: text.to_owned(),
            }],
        };
        if syntax == PromptSyntax::Plain {
            return Ok(ParsedPrompts {
                syntax,
                steps,
                extra_networks: Vec::new(),
                sub_prompts: vec![ParsedSubPrompt {
                    text: prompt.to_owned(),
                    weight: 1.0,
                    schedule: whole(prompt),
                }],
                negative: whole(negative_prompt),
            });
        }
        let options = ScheduleOptions::new(steps);
        let (text, extra_networks) = extract_extra_networks(prompt)?;
        let parts = split_and(&text)?;
        if parts.len() > MAX_AND_PROMPTS {
            return Err(Error::invalid_argument(
                "prompt",
                format!(
                    "{} AND parts exceed the limit of {MAX_AND_PROMPTS}",
                    parts.len()
                ),
            ));
        }
        let sub_prompts = parts
            .into_iter()
            .map(|part| ParsedSubPrompt {
                schedule: prompt_schedule(&part.text, &options),
                text: part.text,
                weight: part.weight,
            })
            .collect();
        Ok(ParsedPrompts {
            syntax,
            steps,
            extra_networks,
            sub_prompts,
            negative: prompt_schedule(negative_prompt, &options),
        })
    }

    /// The syntax the prompts were read with.
    pub fn syntax(&self) -> PromptSyntax {
        self.syntax
    }

    /// The step count the schedules were computed for.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The extra-network tags taken out of the positive prompt, in order, not yet interpreted
    /// ([`ExtraNetworkTag::interpret`] reads their arguments).
    pub fn extra_networks(&self) -> &[ExtraNetworkTag] {
        &self.extra_networks
    }

    /// The `AND` parts of the positive prompt, in order (at least one).
    pub fn sub_prompts(&self) -> &[ParsedSubPrompt] {
        &self.sub_prompts
    }

    /// The negative prompt's schedule.
    pub fn negative(&self) -> &PromptSchedule {
        &self.negative
    }

    /// Whether the positive prompt is a single part of weight 1, so that guidance reduces to
    /// diffusers' `uncond + cfg·(cond − uncond)` and can be switched off.
    pub fn is_single_prompt(&self) -> bool {
        matches!(self.sub_prompts.as_slice(), [only] if only.weight == 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_parts_and_schedules() -> Result<()> {
        let p = ParsedPrompts::parse(
            "a <lora:x:0.5>[cat:dog:2] AND a fox:0.25",
            "<lora:neg:1> [ugly::1]",
            4,
            PromptSyntax::A1111,
        )?;
        assert_eq!(p.extra_networks().len(), 1);
        assert_eq!(p.extra_networks()[0].kind, "lora");
        let parts = p.sub_prompts();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].schedule.text_at_step(2), "a cat");
        assert_eq!(parts[0].schedule.text_at_step(3), "a dog");
        assert_eq!((parts[1].text.as_str(), parts[1].weight), (" a fox", 0.25));
        // Tags stay in the negative prompt, as A1111 leaves them.
        assert_eq!(p.negative().text_at_step(1), "<lora:neg:1> ugly");
        assert_eq!(p.negative().text_at_step(2), "<lora:neg:1> ");
        assert!(!p.is_single_prompt());
        Ok(())
    }

    #[test]
    fn plain_reads_nothing() -> Result<()> {
        let p = ParsedPrompts::parse("a [b:c:1] AND <lora:x:1>", "", 3, PromptSyntax::Plain)?;
        assert!(p.extra_networks().is_empty());
        assert_eq!(p.sub_prompts().len(), 1);
        assert_eq!(p.sub_prompts()[0].schedule.segments.len(), 1);
        assert_eq!(
            p.sub_prompts()[0].schedule.text_at_step(1),
            "a [b:c:1] AND <lora:x:1>"
        );
        assert!(p.is_single_prompt());
        Ok(())
    }

    #[test]
    fn limits_name_the_field() {
        let long = "a".repeat(MAX_PROMPT_BYTES + 1);
        let err = |r: Result<ParsedPrompts>| match r {
            Err(Error::InvalidArgument { name, .. }) => name,
            other => panic!("expected an invalid argument, got {other:?}"),
        };
        assert_eq!(
            err(ParsedPrompts::parse(&long, "", 2, PromptSyntax::A1111)),
            "prompt"
        );
        assert_eq!(
            err(ParsedPrompts::parse("", &long, 2, PromptSyntax::Plain)),
            "negative_prompt"
        );
        let many = vec!["x"; MAX_AND_PROMPTS + 1].join(" AND ");
        assert_eq!(
            err(ParsedPrompts::parse(&many, "", 2, PromptSyntax::A1111)),
            "prompt"
        );
        assert_eq!(
            err(ParsedPrompts::parse("x", "", 0, PromptSyntax::A1111)),
            "steps"
        );
    }
}
