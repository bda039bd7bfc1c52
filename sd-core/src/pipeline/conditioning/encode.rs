//! Encoding parsed prompts: chunks through the text encoder, embeddings spliced in, emphasis.
//!
//! A1111 runs the text encoder once per prompt on a batch made of the texts of that prompt's
//! schedule (`prompt_parser.get_learned_conditioning` → `sd_hijack_clip.TextConditionalModel.forward`):
//! chunk `j` of every text (or an empty chunk for a text with fewer chunks) goes through CLIP as
//! one batch, and the emphasis of `sd_emphasis.EmphasisOriginal` restores the mean of that whole
//! batch. The conditioning of a text therefore depends on the other texts of its schedule, and on
//! how often each occurs. This module encodes every distinct chunk once (a chunk's hidden states do
//! not depend on its batch) and computes the batch means with each text counted as often as it
//! occurs, which gives A1111's numbers without encoding a text per step.

use std::collections::HashMap;
use std::rc::Rc;

use super::parse::ParsedPrompts;
use super::schedule::{CondSchedule, CondSegment, Conditioning, UsedEmbedding, WeightedCond};
use super::{MAX_ENCODED_CHUNKS, MAX_PROMPT_CHUNKS, PromptSyntax, emphasis_infotext};
use crate::adapters::EmbeddingSet;
use crate::error::{Error, Result};
use crate::models::{ClipTextModel, InsertedVectors};
use crate::prompt::{
    CHUNK_TOKENS, ChunkOptions, DEFAULT_COMMA_BACKTRACK, EmphasisMode, PromptChunk, PromptSchedule,
    TokenizedPrompt, tokenize_prompt,
};
use crate::tensor::Tensor;
use crate::tokenizer::Tokenizer;

/// Settings of [`ParsedPrompts::encode`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncodeOptions {
    /// CLIP skip, counted as A1111 counts it (1 = last layer). Default: 1.
    pub clip_skip: usize,
    /// How emphasis weights act (A1111's "Emphasis mode"). Default: [`EmphasisMode::Original`].
    pub emphasis: EmphasisMode,
    /// A1111's "comma padding backtrack" (0 disables it). Default: 20.
    pub comma_backtrack: usize,
    /// The guidance scale: above 1, or with several `AND` parts or a weight other than 1, the
    /// negative prompt is encoded too. Default: 7.5.
    pub guidance_scale: f64,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            clip_skip: 1,
            emphasis: EmphasisMode::Original,
            comma_backtrack: DEFAULT_COMMA_BACKTRACK,
            guidance_scale: 7.5,
        }
    }
}

impl ParsedPrompts {
    /// Encodes the prompts with `text_encoder` into the conditioning of every step.
    ///
    /// With [`PromptSyntax::A1111`], each distinct text is tokenized into chunks (embeddings of
    /// `embeddings` found by name), each distinct chunk is encoded once, and the emphasis of
    /// `options.emphasis` is applied as A1111 applies it. With [`PromptSyntax::Plain`], each prompt
    /// is encoded as diffusers does (`embeddings` is not consulted).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `prompt` or `negative_prompt` for a malformed emphasis
    /// weight (`(a:1.2.3)`), a text of more than [`MAX_PROMPT_CHUNKS`] chunks, or prompts needing
    /// more than [`MAX_ENCODED_CHUNKS`] text-encoder passes; `clip_skip` when out of range; device
    /// errors.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        text_encoder: &ClipTextModel,
        embeddings: &EmbeddingSet,
        options: &EncodeOptions,
    ) -> Result<Conditioning> {
        let guided = options.guidance_scale > 1.0 || !self.is_single_prompt();
        if self.syntax() == PromptSyntax::Plain {
            return self.encode_plain(tokenizer, text_encoder, options, guided);
        }
        let mut encoder = ChunkEncoder {
            tokenizer,
            model: text_encoder,
            embeddings,
            chunk_options: ChunkOptions {
                comma_backtrack: options.comma_backtrack,
                emphasis: options.emphasis,
            },
            clip_skip: options.clip_skip,
            tokenized: HashMap::new(),
            raw: HashMap::new(),
            passes: 0,
        };
        let mut log = InfotextLog::default();
        let mut groups: HashMap<&str, CondSchedule> = HashMap::new();
        // A1111 encodes the negative prompt first, then the distinct positive parts in order.
        let uncond = if guided {
            let schedule = encoder.encode_schedule(
                self.negative(),
                "negative_prompt",
                options.emphasis,
                &mut log,
            )?;
            Some(schedule)
        } else {
            None
        };
        let mut conds = Vec::with_capacity(self.sub_prompts().len());
        for part in self.sub_prompts() {
            let schedule = match groups.get(part.text.as_str()) {
                Some(done) => done.clone(),
                None => {
                    let s = encoder.encode_schedule(
                        &part.schedule,
                        "prompt",
                        options.emphasis,
                        &mut log,
                    )?;
                    groups.insert(&part.text, s.clone());
                    s
                }
            };
            conds.push(WeightedCond {
                schedule,
                weight: part.weight,
            });
        }
        let tokens = |s: &CondSchedule| s.segments.first().map(|seg| seg.cond.dims()[1]);
        let longest = conds.iter().filter_map(|c| tokens(&c.schedule)).max();
        let empty = match &uncond {
            Some(u) if tokens(u) != longest => Some(encoder.empty_chunk()?),
            _ => None,
        };
        Ok(Conditioning {
            conds,
            uncond,
            empty,
            extra_networks: self.extra_networks().to_vec(),
            embeddings_used: log.used,
            infotext: log.entries,
        })
    }

    /// diffusers' encoding: BOS, the text's tokens truncated to 75, EOS, padding; one forward.
    fn encode_plain(
        &self,
        tokenizer: &Tokenizer,
        text_encoder: &ClipTextModel,
        options: &EncodeOptions,
        guided: bool,
    ) -> Result<Conditioning> {
        let encode = |schedule: &PromptSchedule| -> Result<Tensor> {
            let text = schedule.segments.first().map_or("", |s| s.text.as_str());
            let ids =
                tokenizer.encode_padded(text, text_encoder.config().max_position_embeddings)?;
            text_encoder.forward(&[ids], options.clip_skip)
        };
        let conds = self
            .sub_prompts()
            .iter()
            .map(|p| {
                Ok(WeightedCond {
                    schedule: CondSchedule::constant(encode(&p.schedule)?),
                    weight: p.weight,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let uncond = if guided {
            Some(CondSchedule::constant(encode(self.negative())?))
        } else {
            None
        };
        Ok(Conditioning {
            conds,
            uncond,
            empty: None,
            extra_networks: Vec::new(),
            embeddings_used: Vec::new(),
            infotext: Vec::new(),
        })
    }
}

/// Encodes chunks through the text encoder, each distinct text once.
struct ChunkEncoder<'a> {
    tokenizer: &'a Tokenizer,
    model: &'a ClipTextModel,
    embeddings: &'a EmbeddingSet,
    chunk_options: ChunkOptions,
    clip_skip: usize,
    /// Chunks of each text.
    tokenized: HashMap<String, Rc<TokenizedPrompt>>,
    /// Hidden states of each text's chunks, `[1, 77, width]` each, before emphasis.
    raw: HashMap<String, Rc<Vec<Tensor>>>,
    /// Text-encoder passes so far.
    passes: usize,
}

/// One distinct text of a schedule and how many segments use it.
struct BatchText<'s> {
    text: &'s str,
    count: usize,
    chunks: Rc<TokenizedPrompt>,
}

impl ChunkEncoder<'_> {
    fn tokenize(&mut self, text: &str, field: &'static str) -> Result<Rc<TokenizedPrompt>> {
        if let Some(t) = self.tokenized.get(text) {
            return Ok(t.clone());
        }
        let tokenized = tokenize_prompt(
            self.tokenizer,
            text,
            &self.chunk_options,
            Some(self.embeddings),
        )
        .map_err(|e| rename_argument(e, field))?;
        if tokenized.chunks.len() > MAX_PROMPT_CHUNKS {
            return Err(Error::invalid_argument(
                field,
                format!(
                    "a text of {} tokens fills {} chunks of 75, more than the limit of {MAX_PROMPT_CHUNKS}",
                    tokenized.token_count,
                    tokenized.chunks.len()
                ),
            ));
        }
        let tokenized = Rc::new(tokenized);
        self.tokenized.insert(text.to_owned(), tokenized.clone());
        Ok(tokenized)
    }

    /// The hidden states of every chunk of `text`, encoded on first use.
    fn raw(&mut self, text: &str, field: &'static str) -> Result<Rc<Vec<Tensor>>> {
        if let Some(z) = self.raw.get(text) {
            return Ok(z.clone());
        }
        let tokenized = self.tokenize(text, field)?;
        if self.passes + tokenized.chunks.len() > MAX_ENCODED_CHUNKS {
            return Err(self.budget_error(field));
        }
        let z = tokenized
            .chunks
            .iter()
            .map(|chunk| self.encode_chunk(chunk))
            .collect::<Result<Vec<_>>>()?;
        self.passes += z.len();
        let z = Rc::new(z);
        self.raw.insert(text.to_owned(), z.clone());
        Ok(z)
    }

    fn budget_error(&self, field: &'static str) -> Error {
        Error::invalid_argument(
            field,
            format!(
                "the prompts need more than {MAX_ENCODED_CHUNKS} text-encoder passes \
                 (75-token chunks of the distinct texts their schedules take)"
            ),
        )
    }

    /// One chunk through CLIP, embedding vectors in place of their placeholder tokens (A1111
    /// `EmbeddingsWithFixes`).
    fn encode_chunk(&self, chunk: &PromptChunk) -> Result<Tensor> {
        let ids = chunk.encoder_ids(self.tokenizer.eos_id(), self.tokenizer.pad_id());
        let device = self.model.device();
        let inserts = chunk
            .fixes
            .iter()
            .map(|fix| {
                // The set's vectors are those for this text encoder (an SDXL embedding's part).
                let vectors = self.embeddings.vectors(fix.id).ok_or_else(|| {
                    Error::Internal(format!("embedding id {} is not in its set", fix.id))
                })?;
                Ok(InsertedVectors {
                    sequence: 0,
                    offset: fix.offset,
                    vectors: vectors.to_device(device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.model
            .forward_with_vectors(&[ids], &inserts, self.clip_skip)
    }

    /// The encoding of an empty chunk (`BOS`, `EOS` × 76), which is also the empty prompt's.
    fn empty_chunk(&mut self) -> Result<Tensor> {
        let z = self.raw("", "prompt")?;
        z.first()
            .cloned()
            .ok_or_else(|| Error::Internal("the empty prompt has no chunk".into()))
    }

    /// One prompt's schedule encoded as A1111's `get_learned_conditioning` does: the texts of
    /// the schedule form one batch.
    fn encode_schedule(
        &mut self,
        schedule: &PromptSchedule,
        field: &'static str,
        emphasis: EmphasisMode,
        log: &mut InfotextLog,
    ) -> Result<CondSchedule> {
        // Distinct texts first, so that a schedule with more of them than the encoder budget can
        // take is refused before any is tokenized.
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        let mut distinct: Vec<&str> = Vec::new();
        let mut text_of_segment = Vec::with_capacity(schedule.segments.len());
        for segment in &schedule.segments {
            let index = *index_of.entry(&segment.text).or_insert_with(|| {
                distinct.push(&segment.text);
                distinct.len() - 1
            });
            text_of_segment.push(index);
        }
        let new_texts = distinct
            .iter()
            .filter(|t| !self.raw.contains_key(**t))
            .count();
        if self.passes + new_texts > MAX_ENCODED_CHUNKS {
            return Err(self.budget_error(field));
        }
        let mut batch = distinct
            .iter()
            .map(|text| {
                Ok(BatchText {
                    text,
                    count: 0,
                    chunks: self.tokenize(text, field)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for &i in &text_of_segment {
            batch[i].count += 1;
        }
        let chunk_count = batch
            .iter()
            .map(|b| b.chunks.chunks.len())
            .max()
            .unwrap_or(1);
        log.record_call(
            self.embeddings,
            &batch,
            &text_of_segment,
            chunk_count,
            emphasis,
        );

        let raw = batch
            .iter()
            .map(|b| self.raw(b.text, field))
            .collect::<Result<Vec<_>>>()?;
        let needs_empty = batch.iter().any(|b| b.chunks.chunks.len() < chunk_count);
        let empty = if needs_empty {
            Some(self.empty_chunk()?)
        } else {
            None
        };
        let unit = vec![1.0; CHUNK_TOKENS + 2];
        let mut per_text: Vec<Vec<Tensor>> = vec![Vec::with_capacity(chunk_count); batch.len()];
        for j in 0..chunk_count {
            let rows = batch
                .iter()
                .zip(&raw)
                .map(|(b, z)| match (z.get(j), b.chunks.chunks.get(j), &empty) {
                    (Some(z), Some(chunk), _) => Ok((z, chunk.multipliers.as_slice(), b.count)),
                    (_, _, Some(e)) => Ok((e, unit.as_slice(), b.count)),
                    _ => Err(Error::Internal("chunk without encoding".into())),
                })
                .collect::<Result<Vec<_>>>()?;
            for (out, z) in per_text.iter_mut().zip(emphasize(&rows, emphasis)?) {
                out.push(z);
            }
        }
        let per_text = per_text
            .iter()
            .map(|chunks| Tensor::cat(&chunks.iter().collect::<Vec<_>>(), 1))
            .collect::<Result<Vec<_>>>()?;
        let segments = schedule
            .segments
            .iter()
            .zip(text_of_segment)
            .map(|(segment, i)| CondSegment {
                end_at_step: segment.until_step,
                cond: per_text[i].clone(),
            })
            .collect();
        Ok(CondSchedule { segments })
    }
}

/// Applies emphasis to one chunk position of a batch: `rows` holds each distinct text's hidden
/// states `[1, tokens, width]`, its per-token multipliers and how many batch rows it stands for.
///
/// `Original` multiplies each token by its weight (as `f32`, as A1111 builds the multiplier
/// tensor), then scales everything by `mean(before) / mean(after)` over the whole batch, each row
/// counted `count` times (means accumulated in `f64`). `NoNorm` only multiplies. `Ignore` and
/// `None`, or multipliers that are all 1, leave the hidden states as they are (for all-1
/// multipliers A1111's rescaling is an exact identity).
fn emphasize(rows: &[(&Tensor, &[f64], usize)], mode: EmphasisMode) -> Result<Vec<Tensor>> {
    let all_one = rows.iter().all(|(_, w, _)| w.iter().all(|&w| w == 1.0));
    if all_one || matches!(mode, EmphasisMode::Ignore | EmphasisMode::None) {
        return Ok(rows.iter().map(|(z, _, _)| (*z).clone()).collect());
    }
    let (mut before, mut after, mut count) = (0.0f64, 0.0f64, 0.0f64);
    let mut scaled_rows = Vec::with_capacity(rows.len());
    for &(z, multipliers, n) in rows {
        let dims = z.dims();
        let width = dims.last().copied().unwrap_or(0);
        if dims.len() != 3 || dims[0] * dims[1] != multipliers.len() || width == 0 {
            return Err(Error::InvalidShape {
                op: "emphasis",
                shape: z.shape().clone(),
                reason: format!("expected [1, {}, width]", multipliers.len()),
            });
        }
        let mut values = z.to_vec()?;
        let n = n as f64;
        before += n * values.iter().map(|&x| f64::from(x)).sum::<f64>();
        for (row, &w) in values.chunks_exact_mut(width).zip(multipliers) {
            let w = w as f32;
            for x in row {
                *x *= w;
            }
        }
        after += n * values.iter().map(|&x| f64::from(x)).sum::<f64>();
        count += n * values.len() as f64;
        scaled_rows.push((values, z));
    }
    let ratio = ((before / count) / (after / count)) as f32;
    scaled_rows
        .into_iter()
        .map(|(mut values, z)| {
            if mode == EmphasisMode::Original {
                for x in &mut values {
                    *x *= ratio;
                }
            }
            Tensor::from_vec(values, z.shape().clone(), z.device())
        })
        .collect()
}

/// Re-labels an invalid-argument error raised for "the prompt" with the field actually parsed.
fn rename_argument(error: Error, field: &'static str) -> Error {
    match error {
        Error::InvalidArgument { reason, .. } => Error::invalid_argument(field, reason),
        other => other,
    }
}

/// What A1111's text encoder wrapper adds to the infotext over its calls
/// (`TextConditionalModel.forward`), and the embeddings used.
#[derive(Debug, Default)]
struct InfotextLog {
    entries: Vec<(String, String)>,
    /// `name: hash` items of the `TI hashes` value, in order.
    ti_items: Vec<(String, String)>,
    used: Vec<UsedEmbedding>,
}

impl InfotextLog {
    /// One A1111 `forward(texts)` call over the schedule texts `batch` (segment `s` uses
    /// `batch[text_of_segment[s]]`).
    ///
    /// `TI hashes`: the call's embeddings in the order A1111 meets them (chunk by chunk, then row
    /// by row), each `name: hash` (`:` and `,` removed from the name, embeddings without a hash
    /// left out), placed before the value of earlier calls. Unlike A1111, an embedding already
    /// listed by an earlier call is not listed again. `Emphasis`: set when a text has `(` or `[`
    /// and the mode is not `Original`.
    fn record_call(
        &mut self,
        embeddings: &EmbeddingSet,
        batch: &[BatchText<'_>],
        text_of_segment: &[usize],
        chunk_count: usize,
        emphasis: EmphasisMode,
    ) {
        let mut call: Vec<usize> = Vec::new();
        for j in 0..chunk_count {
            for &t in text_of_segment {
                let fixes = batch[t].chunks.chunks.get(j).map(|c| c.fixes.as_slice());
                for fix in fixes.unwrap_or_default() {
                    if !call.contains(&fix.id) {
                        call.push(fix.id);
                    }
                }
            }
        }
        let mut new_items = Vec::new();
        for id in call {
            let Some(embedding) = embeddings.get(id) else {
                continue;
            };
            let name = embedding.name().to_string();
            if !self.used.iter().any(|u| u.name == name) {
                self.used.push(UsedEmbedding {
                    name: name.clone(),
                    hash: embedding.hash().map(str::to_string),
                });
            }
            let Some(hash) = embedding.hash() else {
                continue;
            };
            let clean: String = name.chars().filter(|c| !matches!(c, ':' | ',')).collect();
            let listed = self
                .ti_items
                .iter()
                .chain(&new_items)
                .any(|(n, _)| *n == clean);
            if !listed {
                new_items.push((clean, hash.to_string()));
            }
        }
        if !new_items.is_empty() {
            new_items.append(&mut self.ti_items);
            self.ti_items = new_items;
            let value = self
                .ti_items
                .iter()
                .map(|(n, h)| format!("{n}: {h}"))
                .collect::<Vec<_>>()
                .join(", ");
            self.set("TI hashes", value);
        }
        let brackets = batch.iter().any(|b| b.text.contains(['(', '[']));
        if let Some(name) = emphasis_infotext(emphasis).filter(|_| brackets) {
            self.set("Emphasis", name.to_string());
        }
    }

    /// Sets `key` in place, or appends it (a Python dict's insertion order).
    fn set(&mut self, key: &str, value: String) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::apply_emphasis;
    use crate::tensor::Device;

    fn tensor(values: Vec<f32>, tokens: usize) -> Tensor {
        let width = values.len() / tokens;
        Tensor::from_vec(values, vec![1, tokens, width], Device::Cpu).expect("tensor")
    }

    /// With every text counted once, the batch emphasis is `apply_emphasis` over the stacked rows;
    /// a text counted twice weighs in the means as two identical rows.
    #[test]
    fn batch_emphasis_matches_apply_emphasis() -> Result<()> {
        let a = tensor(vec![1.0, -2.0, 3.0, 0.5, 4.0, 1.5], 3);
        let b = tensor(vec![0.25, 1.0, -1.0, 2.0, 3.0, -0.5], 3);
        let (wa, wb) = ([1.0, 1.3, 0.9], [1.1, 1.0, 1.0]);
        for mode in [EmphasisMode::Original, EmphasisMode::NoNorm] {
            let got = emphasize(&[(&a, &wa, 1), (&b, &wb, 1)], mode)?;
            let stacked = Tensor::cat(&[&a, &b], 0)?;
            let multipliers: Vec<f64> = wa.iter().chain(&wb).copied().collect();
            let want = apply_emphasis(&stacked, &multipliers, mode)?.to_vec()?;
            let got: Vec<f32> = got
                .iter()
                .flat_map(|t| t.to_vec().unwrap_or_default())
                .collect();
            assert_eq!(got, want, "{mode:?}");

            let twice = emphasize(&[(&a, &wa, 2), (&b, &wb, 1)], mode)?;
            let stacked = Tensor::cat(&[&a, &a, &b], 0)?;
            let multipliers: Vec<f64> = wa.iter().chain(&wa).chain(&wb).copied().collect();
            let want = apply_emphasis(&stacked, &multipliers, mode)?.to_vec()?;
            let got: Vec<f32> = [&twice[0], &twice[0], &twice[1]]
                .iter()
                .flat_map(|t| t.to_vec().unwrap_or_default())
                .collect();
            assert_eq!(got, want, "{mode:?}, one text counted twice");
        }
        let unchanged = emphasize(&[(&a, &wa, 1)], EmphasisMode::Ignore)?;
        assert_eq!(unchanged[0].to_vec()?, a.to_vec()?);
        Ok(())
    }
}
