//! The CLIP text encoder (transformers' `CLIPTextModel`), as Stable Diffusion uses it for
//! conditioning.
//!
//! Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", 2021
//! (arXiv:2103.00020). A causal transformer over token and position embeddings; SD conditions on
//! its final hidden states after the final layer norm.
//!
//! **CLIP skip** is counted as AUTOMATIC1111 counts it: `clip_skip = 1` (the default) uses the last
//! layer; `clip_skip = N` uses the hidden state `N` layers from the end (`hidden_states[-N]`), then
//! applies the final layer norm. diffusers' `clip_skip = k` is A1111's `k + 1`.

use super::config::{ClipActivation, ClipConfig};
use super::nn::{LayerNorm, Linear};
use super::params::{ParamLayout, ParamMut, ParamVisitor, VisitParams, visit_list};
use crate::error::{Error, Result};
use crate::tensor::{Activation, Device, Tensor};
use crate::weights::Weights;

/// One self-attention block of the encoder.
#[derive(Debug, Clone)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f32,
}

impl ClipAttention {
    fn new(w: &Weights, cfg: &ClipConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(ClipAttention {
            q_proj: Linear::new(&w.pp("q_proj"), d, d, true)?,
            k_proj: Linear::new(&w.pp("k_proj"), d, d, true)?,
            v_proj: Linear::new(&w.pp("v_proj"), d, d, true)?,
            out_proj: Linear::new(&w.pp("out_proj"), d, d, true)?,
            heads: cfg.num_attention_heads,
            scale: ((d / cfg.num_attention_heads) as f32).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(x)?;
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        let o = Tensor::attention(&q, &k, &v, self.heads, self.scale, true)?;
        self.out_proj.forward(&o)
    }
}

impl VisitParams for ClipAttention {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("q_proj", |v| self.q_proj.visit_params(v))?;
        v.scope("k_proj", |v| self.k_proj.visit_params(v))?;
        v.scope("v_proj", |v| self.v_proj.visit_params(v))?;
        v.scope("out_proj", |v| self.out_proj.visit_params(v))
    }
}

/// One encoder layer: pre-norm attention and MLP, each with a residual.
#[derive(Debug, Clone)]
struct ClipEncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl ClipEncoderLayer {
    fn new(w: &Weights, cfg: &ClipConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(ClipEncoderLayer {
            layer_norm1: LayerNorm::new(&w.pp("layer_norm1"), d, cfg.layer_norm_eps)?,
            self_attn: ClipAttention::new(&w.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::new(&w.pp("layer_norm2"), d, cfg.layer_norm_eps)?,
            fc1: Linear::new(&w.pp("mlp.fc1"), d, cfg.intermediate_size, true)?,
            fc2: Linear::new(&w.pp("mlp.fc2"), cfg.intermediate_size, d, true)?,
            activation: match cfg.hidden_act {
                ClipActivation::QuickGelu => Activation::QuickGelu,
                ClipActivation::Gelu => Activation::Gelu,
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.layer_norm1.forward(x)?)?;
        let x = x.add(&h)?;
        let h = self
            .fc1
            .forward(&self.layer_norm2.forward(&x)?)?
            .activate(self.activation)?;
        x.add(&self.fc2.forward(&h)?)
    }
}

impl VisitParams for ClipEncoderLayer {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("layer_norm1", |v| self.layer_norm1.visit_params(v))?;
        v.scope("self_attn", |v| self.self_attn.visit_params(v))?;
        v.scope("layer_norm2", |v| self.layer_norm2.visit_params(v))?;
        v.scope("mlp.fc1", |v| self.fc1.visit_params(v))?;
        v.scope("mlp.fc2", |v| self.fc2.visit_params(v))
    }
}

/// The CLIP text encoder. Weights are read under `text_model.` (transformers' names).
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipConfig,
}

impl ClipTextModel {
    /// Loads the encoder from `w` (the text encoder's weight view, whose names start with
    /// `text_model.`).
    pub fn new(w: &Weights, config: &ClipConfig) -> Result<Self> {
        config.validate("text encoder config")?;
        let t = w.pp("text_model");
        let emb = t.pp("embeddings");
        let d = config.hidden_size;
        let layers = (0..config.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(&t.pp("encoder.layers").pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipTextModel {
            token_embedding: emb.get("token_embedding.weight", [config.vocab_size, d])?,
            position_embedding: emb.get(
                "position_embedding.weight",
                [config.max_position_embeddings, d],
            )?,
            layers,
            final_layer_norm: LayerNorm::new(&t.pp("final_layer_norm"), d, config.layer_norm_eps)?,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.token_embedding.device()
    }

    /// Calls `visit` with every parameter and its transformers name
    /// (`text_model.embeddings.token_embedding.weight`,
    /// `text_model.encoder.layers.0.self_attn.q_proj.weight`, …), in a fixed order. Replacing a
    /// value changes this model only; patch a clone to keep the loaded model as it is.
    ///
    /// # Errors
    /// The first error `visit` returns.
    pub fn visit_parameters(
        &mut self,
        visit: &mut dyn FnMut(&str, ParamMut<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut v = ParamVisitor::new(visit);
        v.scope("text_model", |v| {
            v.scope("embeddings", |v| {
                v.tensor(
                    "token_embedding.weight",
                    &mut self.token_embedding,
                    ParamLayout::Torch,
                )?;
                v.tensor(
                    "position_embedding.weight",
                    &mut self.position_embedding,
                    ParamLayout::Torch,
                )
            })?;
            visit_list(v, "encoder.layers", &mut self.layers)?;
            v.scope("final_layer_norm", |v| {
                self.final_layer_norm.visit_params(v)
            })
        })
    }

    /// Encodes token ids: `ids` holds `batch` sequences of equal length (at most
    /// `max_position_embeddings`). Returns `[batch, len, hidden]`, the hidden state `clip_skip`
    /// layers from the end (A1111's counting: 1 = last layer) after the final layer norm.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for ragged or over-long sequences, token ids outside the
    /// vocabulary, or a `clip_skip` of 0 or more than the number of layers.
    pub fn forward(&self, ids: &[Vec<u32>], clip_skip: usize) -> Result<Tensor> {
        self.forward_with_vectors(ids, &[], clip_skip)
    }

    /// [`forward`](Self::forward) with token embeddings replaced by given vectors: each
    /// [`InsertedVectors`] puts its rows in place of the token embeddings of one sequence from
    /// one position on (textual-inversion embeddings, which A1111 splices in after the token
    /// lookup and before the position embeddings are added).
    ///
    /// # Errors
    /// Those of [`forward`](Self::forward), and [`Error::InvalidArgument`] for vectors of the
    /// wrong width, or placed outside their sequence or over another insertion.
    pub fn forward_with_vectors(
        &self,
        ids: &[Vec<u32>],
        inserts: &[InsertedVectors],
        clip_skip: usize,
    ) -> Result<Tensor> {
        let batch = ids.len();
        let len = ids.first().map_or(0, Vec::len);
        if batch == 0 || len == 0 || ids.iter().any(|s| s.len() != len) {
            return Err(Error::invalid_argument(
                "ids",
                "expected one or more token sequences of equal, non-zero length",
            ));
        }
        if len > self.config.max_position_embeddings {
            return Err(Error::invalid_argument(
                "ids",
                format!(
                    "{len} tokens exceed the text encoder's {} positions",
                    self.config.max_position_embeddings
                ),
            ));
        }
        if clip_skip == 0 || clip_skip > self.layers.len() {
            return Err(Error::invalid_argument(
                "clip_skip",
                format!("{clip_skip} is outside 1..={}", self.layers.len()),
            ));
        }
        let flat: Vec<usize> = ids.iter().flatten().map(|&i| i as usize).collect();
        let d = self.config.hidden_size;
        let mut tokens = self.token_embedding.gather_rows(&flat)?;
        if !inserts.is_empty() {
            tokens = splice_rows(&tokens, inserts, batch, len, d)?;
        }
        let tokens = tokens.reshape([batch, len, d])?;
        let positions: Vec<usize> = (0..len).collect();
        let pos = self
            .position_embedding
            .gather_rows(&positions)?
            .reshape([1, len, d])?;
        let mut x = tokens.add(&pos)?;
        // hidden_states[-N] is the output of layer (L - N + 1), counting from 1.
        let run = self.layers.len() + 1 - clip_skip;
        for layer in &self.layers[..run] {
            x = layer.forward(&x)?;
        }
        self.final_layer_norm.forward(&x)
    }
}

/// Vectors that replace token embeddings in one sequence of a batch (see
/// [`ClipTextModel::forward_with_vectors`]).
#[derive(Debug, Clone)]
pub struct InsertedVectors {
    /// The sequence, an index into the batch.
    pub sequence: usize,
    /// The position of the first vector in the sequence.
    pub offset: usize,
    /// The vectors, `[n, hidden]`, on the model's device.
    pub vectors: Tensor,
}

/// Replaces rows of `tokens` `[batch * len, d]` by the inserted vectors.
fn splice_rows(
    tokens: &Tensor,
    inserts: &[InsertedVectors],
    batch: usize,
    len: usize,
    d: usize,
) -> Result<Tensor> {
    let mut sorted: Vec<&InsertedVectors> = inserts.iter().collect();
    sorted.sort_by_key(|i| (i.sequence, i.offset));
    let mut pieces = Vec::with_capacity(2 * sorted.len() + 1);
    let mut next_row = 0;
    for insert in sorted {
        let v = &insert.vectors;
        if v.rank() != 2 || v.dims()[1] != d || v.dims()[0] == 0 {
            return Err(Error::invalid_argument(
                "inserted vectors",
                format!("shape {} is not [n, {d}]", v.shape()),
            ));
        }
        let n = v.dims()[0];
        let start = insert.sequence * len + insert.offset;
        if insert.sequence >= batch || insert.offset + n > len || start < next_row {
            return Err(Error::invalid_argument(
                "inserted vectors",
                format!(
                    "{n} vectors at position {} of sequence {} do not fit {batch} sequences of \
                     {len} tokens without overlapping another insertion",
                    insert.offset, insert.sequence
                ),
            ));
        }
        if start > next_row {
            pieces.push(tokens.narrow(0, next_row, start - next_row)?);
        }
        pieces.push(v.clone());
        next_row = start + n;
    }
    if next_row < batch * len {
        pieces.push(tokens.narrow(0, next_row, batch * len - next_row)?);
    }
    Tensor::cat(&pieces.iter().collect::<Vec<_>>(), 0)
}
