//! Multi-head scaled dot-product attention that never holds the whole score matrix.
//!
//! Queries are processed in blocks of rows; for each block and head the scores are a
//! `block x keys` matrix, so memory grows with `keys x block` per thread, not `tokens²`. Work items
//! are (batch, query block) pairs, which own disjoint rows of the output and run in parallel.

use rayon::prelude::*;

use super::gemm::{MatRef, Threads, sgemm};

/// Score-buffer budget per work item, in `f32` elements (1 MiB).
const SCORE_BUDGET: usize = 1 << 18;

/// Shapes of one attention call; q is `[batch, q_len, heads·head_dim]`, k and v are
/// `[batch, kv_len, heads·head_dim]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// `softmax(q kᵀ · scale) v` per head; returns `[batch, q_len, heads·head_dim]`.
pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttentionShape,
    scale: f32,
    causal: bool,
) -> Vec<f32> {
    let width = s.heads * s.head_dim;
    let block = (SCORE_BUDGET / s.kv_len.max(1))
        .clamp(1, 256)
        .min(s.q_len.max(1));
    let blocks_per_batch = s.q_len.div_ceil(block);
    let mut out = vec![0.0f32; s.batch * s.q_len * width];
    let items = s.batch * blocks_per_batch;
    let gemm_threads = if items >= 2 * super::num_threads() {
        Threads::Single
    } else {
        Threads::All
    };

    // Each chunk of `block` output rows belongs to one (batch, block) item: q_len is a multiple
    // of nothing in particular, so chunk per batch first.
    out.par_chunks_mut(s.q_len * width)
        .enumerate()
        .for_each(|(b, out_b)| {
            let qb = &q[b * s.q_len * width..(b + 1) * s.q_len * width];
            let kb = &k[b * s.kv_len * width..(b + 1) * s.kv_len * width];
            let vb = &v[b * s.kv_len * width..(b + 1) * s.kv_len * width];
            out_b
                .par_chunks_mut(block * width)
                .enumerate()
                .for_each_init(
                    || (Vec::new(), Vec::new()),
                    |(scores, head_out), (blk, out_rows)| {
                        let rows = out_rows.len() / width;
                        let q0 = blk * block;
                        scores.resize(rows * s.kv_len, 0.0);
                        head_out.resize(rows * s.head_dim, 0.0);
                        for h in 0..s.heads {
                            let off = h * s.head_dim;
                            // scores = q_blk · kᵀ  ([rows, d] x [d, kv_len])
                            sgemm(
                                rows,
                                s.kv_len,
                                s.head_dim,
                                MatRef {
                                    data: &qb[q0 * width + off..],
                                    row_stride: width,
                                    col_stride: 1,
                                },
                                MatRef {
                                    data: &kb[off..],
                                    row_stride: 1,
                                    col_stride: width,
                                },
                                scores,
                                false,
                                gemm_threads,
                            );
                            if causal {
                                // Query i may attend to keys 0..=i only (CLIP's text encoder).
                                for (r, row) in scores.chunks_mut(s.kv_len).enumerate() {
                                    let first_masked = (q0 + r + 1).min(s.kv_len);
                                    row[first_masked..].fill(f32::NEG_INFINITY);
                                }
                            }
                            softmax_rows_scaled(scores, s.kv_len, scale);
                            // head_out = p · v  ([rows, kv_len] x [kv_len, d])
                            sgemm(
                                rows,
                                s.head_dim,
                                s.kv_len,
                                MatRef::row_major(scores, s.kv_len),
                                MatRef {
                                    data: &vb[off..],
                                    row_stride: width,
                                    col_stride: 1,
                                },
                                head_out,
                                false,
                                gemm_threads,
                            );
                            for (r, src) in head_out.chunks(s.head_dim).enumerate() {
                                out_rows[r * width + off..r * width + off + s.head_dim]
                                    .copy_from_slice(src);
                            }
                        }
                    },
                );
        });
    out
}

/// Row-wise `softmax(x · scale)` in place; `-inf` entries (masked) become 0.
pub(crate) fn softmax_rows_scaled(x: &mut [f32], width: usize, scale: f32) {
    for row in x.chunks_mut(width) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = if *v == f32::NEG_INFINITY {
                0.0
            } else {
                (*v * scale - max).exp()
            };
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        s: AttentionShape,
        scale: f32,
        causal: bool,
    ) -> Vec<f32> {
        let w = s.heads * s.head_dim;
        let mut out = vec![0.0; s.batch * s.q_len * w];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.q_len {
                    let keys = if causal {
                        (i + 1).min(s.kv_len)
                    } else {
                        s.kv_len
                    };
                    let logits: Vec<f64> = (0..keys)
                        .map(|j| {
                            (0..s.head_dim)
                                .map(|d| {
                                    f64::from(q[(b * s.q_len + i) * w + h * s.head_dim + d])
                                        * f64::from(k[(b * s.kv_len + j) * w + h * s.head_dim + d])
                                })
                                .sum::<f64>()
                                * f64::from(scale)
                        })
                        .collect();
                    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..s.head_dim {
                        let acc: f64 = (0..keys)
                            .map(|j| {
                                e[j] / z * f64::from(v[(b * s.kv_len + j) * w + h * s.head_dim + d])
                            })
                            .sum();
                        out[(b * s.q_len + i) * w + h * s.head_dim + d] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_attention() {
        for s in [
            AttentionShape {
                batch: 2,
                q_len: 37,
                kv_len: 11,
                heads: 3,
                head_dim: 5,
            },
            AttentionShape {
                batch: 1,
                q_len: 600,
                kv_len: 1100,
                heads: 2,
                head_dim: 4,
            },
        ] {
            let w = s.heads * s.head_dim;
            let make = |n: usize, seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| (((i * 7919 + seed) % 1009) as f32 / 1009.0 - 0.5) * 2.0)
                    .collect()
            };
            let q = make(s.batch * s.q_len * w, 1);
            let k = make(s.batch * s.kv_len * w, 2);
            let v = make(s.batch * s.kv_len * w, 3);
            for causal in [false, true] {
                let want = naive(&q, &k, &v, s, 0.4, causal);
                let got = attention(&q, &k, &v, s, 0.4, causal);
                let err = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(err < 1e-5, "max error {err} for {s:?}, causal {causal}");
            }
        }
    }
}
