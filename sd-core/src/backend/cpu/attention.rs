//! Multi-head scaled dot-product attention that never holds the whole score matrix.
//!
//! Queries are processed in blocks of rows; for each block and head the scores are a
//! `block x keys` matrix, so memory grows with `keys x block` per thread, not `tokens²`. Work items
//! are (batch, query block) pairs, which own disjoint rows of the output and run in parallel.

use rayon::prelude::*;

use super::gemm::{MatRef, Threads, sgemm, sgemm_strided};
use super::simd::{exp_row, vectorized};

/// Score-buffer budget per work item, in `f32` elements (4 MiB): 256 query rows of 4096 keys.
const SCORE_BUDGET: usize = 1 << 20;

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
    // Every (row, head) block is written by its PV product.
    let mut out = super::pool::take(s.batch * s.q_len * width);
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
                    |(scores, inv_sums), (blk, out_rows)| {
                        let rows = out_rows.len() / width;
                        let q0 = blk * block;
                        scores.resize(rows * s.kv_len, 0.0);
                        inv_sums.resize(rows, 0.0);
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
                            // Unnormalised probabilities; the 1/sum is applied to the d-wide
                            // output rows instead of the kv_len-wide score rows.
                            for (row, inv) in scores.chunks_mut(s.kv_len).zip(inv_sums.iter_mut()) {
                                *inv = 1.0 / exp_row_scaled(row, scale);
                            }
                            // out_rows[:, head] = p · v  ([rows, kv_len] x [kv_len, d])
                            sgemm_strided(
                                rows,
                                s.head_dim,
                                s.kv_len,
                                MatRef::row_major(scores, s.kv_len),
                                MatRef {
                                    data: &vb[off..],
                                    row_stride: width,
                                    col_stride: 1,
                                },
                                &mut out_rows[off..],
                                width,
                                false,
                                gemm_threads,
                            );
                            for (r, &inv) in inv_sums.iter().enumerate() {
                                out_rows[r * width + off..r * width + off + s.head_dim]
                                    .iter_mut()
                                    .for_each(|v| *v *= inv);
                            }
                        }
                    },
                );
        });
    out
}

/// Lanes of the vectorised row reductions.
const LANES: usize = 16;

/// Replaces `row` by `exp(row · scale - max(row · scale))` and returns the sum; `-inf` entries
/// (masked) become 0.
fn exp_row_scaled(row: &mut [f32], scale: f32) -> f32 {
    vectorized(|| {
        // Row maximum of x · scale, in LANES independent lanes so the loop vectorises.
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                let v = c[l] * scale;
                acc[l] = if v > acc[l] { v } else { acc[l] };
            }
        }
        let mut max = acc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for &v in chunks.remainder() {
            max = max.max(v * scale);
        }
        exp_row(row, scale, max)
    })
}

/// Row-wise `softmax(x · scale)` in place; `-inf` entries (masked) become 0.
pub(crate) fn softmax_rows_scaled(x: &mut [f32], width: usize, scale: f32) {
    for row in x.chunks_mut(width) {
        let inv = 1.0 / exp_row_scaled(row, scale);
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
            // Cross-attention to 77 text tokens with SD's head width; query blocks of 256 rows
            // plus a partial one.
            AttentionShape {
                batch: 2,
                q_len: 300,
                kv_len: 77,
                heads: 2,
                head_dim: 40,
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

    #[test]
    fn softmax_matches_f64_reference() {
        // Widths below, at and above the 16-lane blocks, large logits, and masked entries.
        for width in [1, 7, 16, 33, 4099] {
            let mut x: Vec<f32> = (0..3 * width)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.09)
                .collect();
            if width > 1 {
                x[width / 2] = f32::NEG_INFINITY;
            }
            let want: Vec<f64> = x
                .chunks(width)
                .flat_map(|row| {
                    let m = row
                        .iter()
                        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v) * 0.7));
                    let e: Vec<f64> = row
                        .iter()
                        .map(|&v| (f64::from(v) * 0.7 - m).exp())
                        .collect();
                    let z: f64 = e.iter().sum();
                    e.into_iter().map(move |v| v / z)
                })
                .collect();
            softmax_rows_scaled(&mut x, width, 0.7);
            for (g, w) in x.iter().zip(&want) {
                let err = (f64::from(*g) - w).abs();
                assert!(err <= 4e-6 * w.max(1e-3), "width {width}: {g} vs {w}");
            }
        }
    }
}
