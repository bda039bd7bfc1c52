//! Normalisation kernels: group norm over channels-last activations, and layer norm.
//!
//! Statistics are accumulated in `f64`, so the result does not depend on how the reduction is
//! split across threads beyond the last bit of `f32`.

use rayon::prelude::*;

use super::elementwise::activate;
use super::simd::{silu_inplace, vectorized};
use crate::tensor::Activation;

/// Pixels per parallel work item when accumulating statistics.
const PIXELS_PER_TASK: usize = 1024;

/// Group norm of a channels-last tensor `[batch, spatial, channels]`, then `act`.
///
/// Channels are split into `groups` consecutive groups; each (batch, group) is normalised over
/// all its spatial positions and channels with the biased variance, as `torch.nn.GroupNorm` does.
pub(crate) fn group_norm_nhwc(
    x: &[f32],
    batch: usize,
    spatial: usize,
    channels: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    act: Activation,
) -> Vec<f32> {
    let per_group = channels / groups;
    let mut out = super::pool::take(x.len());
    let plane = spatial * channels;
    for b in 0..batch {
        let xb = &x[b * plane..(b + 1) * plane];
        // Per-channel sums and sums of squares, reduced across pixel blocks in parallel.
        let (sum, sumsq) = xb
            .par_chunks(PIXELS_PER_TASK * channels)
            .map(|block| {
                let mut s = vec![0.0f64; channels];
                let mut q = vec![0.0f64; channels];
                vectorized(|| {
                    for px in block.chunks(channels) {
                        for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(px) {
                            let v = f64::from(v);
                            *s += v;
                            *q += v * v;
                        }
                    }
                });
                (s, q)
            })
            .reduce(
                || (vec![0.0; channels], vec![0.0; channels]),
                |(mut s1, mut q1), (s2, q2)| {
                    s1.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
                    q1.iter_mut().zip(&q2).for_each(|(a, b)| *a += b);
                    (s1, q1)
                },
            );
        let count = (spatial * per_group) as f64;
        let mut scale = vec![0.0f32; channels];
        let mut shift = vec![0.0f32; channels];
        for g in 0..groups {
            let range = g * per_group..(g + 1) * per_group;
            let mean = sum[range.clone()].iter().sum::<f64>() / count;
            let var = (sumsq[range.clone()].iter().sum::<f64>() / count - mean * mean).max(0.0);
            let inv_std = 1.0 / (var + eps).sqrt();
            for c in range {
                let s = f64::from(gamma[c]) * inv_std;
                scale[c] = s as f32;
                shift[c] = (f64::from(beta[c]) - mean * s) as f32;
            }
        }
        out[b * plane..(b + 1) * plane]
            .par_chunks_mut(PIXELS_PER_TASK * channels)
            .zip(xb.par_chunks(PIXELS_PER_TASK * channels))
            .for_each(|(o, xi)| {
                for (po, pi) in o.chunks_mut(channels).zip(xi.chunks(channels)) {
                    vectorized(|| {
                        for c in 0..channels {
                            po[c] = pi[c] * scale[c] + shift[c];
                        }
                    });
                    match act {
                        Activation::Identity => {}
                        Activation::Silu => silu_inplace(po),
                        other => po.iter_mut().for_each(|v| *v = activate(other, *v)),
                    }
                }
            });
    }
    out
}

/// Layer norm over the last dimension (`width` wide) of a row-major buffer.
pub(crate) fn layer_norm(
    x: &[f32],
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> Vec<f32> {
    let mut out = super::pool::take(x.len());
    let work = |(o, xi): (&mut [f32], &[f32])| {
        let mean = xi.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64;
        let var = xi
            .iter()
            .map(|&v| {
                let d = f64::from(v) - mean;
                d * d
            })
            .sum::<f64>()
            / width as f64;
        let inv_std = 1.0 / (var + eps).sqrt();
        for i in 0..width {
            o[i] = ((f64::from(xi[i]) - mean) * inv_std) as f32 * gamma[i] + beta[i];
        }
    };
    if x.len() < 1 << 15 {
        out.chunks_mut(width).zip(x.chunks(width)).for_each(work);
    } else {
        out.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .for_each(work);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_norm_normalises_each_group() {
        // batch 1, 3 pixels, 4 channels, 2 groups.
        let x: Vec<f32> = (0..12).map(|v| (v * v) as f32 * 0.1).collect();
        let gamma = [1.0; 4];
        let beta = [0.0; 4];
        let y = group_norm_nhwc(&x, 1, 3, 4, 2, &gamma, &beta, 1e-6, Activation::Identity);
        for g in 0..2 {
            let vals: Vec<f64> = (0..3)
                .flat_map(|p| (0..2).map(move |c| (p, g * 2 + c)))
                .map(|(p, c)| f64::from(y[p * 4 + c]))
                .collect();
            let mean = vals.iter().sum::<f64>() / 6.0;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
            assert!(mean.abs() < 1e-6);
            assert!((var - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn group_norm_with_silu_equals_norm_then_silu() {
        // 2 batch items, 5 pixels, 20 channels (not a multiple of 8 lanes), 4 groups.
        let x: Vec<f32> = (0..200)
            .map(|v| ((v * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let gamma: Vec<f32> = (0..20).map(|c| 0.5 + c as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..20).map(|c| c as f32 * 0.05 - 0.4).collect();
        let plain = group_norm_nhwc(&x, 2, 5, 20, 4, &gamma, &beta, 1e-5, Activation::Identity);
        let fused = group_norm_nhwc(&x, 2, 5, 20, 4, &gamma, &beta, 1e-5, Activation::Silu);
        for (p, f) in plain.iter().zip(&fused) {
            let want = f64::from(*p) / (1.0 + (-f64::from(*p)).exp());
            assert!((f64::from(*f) - want).abs() <= 1e-6 * want.abs().max(1e-6));
        }
    }

    #[test]
    fn layer_norm_normalises_rows() {
        let x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0];
        let y = layer_norm(&x, 4, &[1.0; 4], &[0.5; 4], 1e-5);
        let row: f32 = y[..4].iter().sum();
        assert!((row - 2.0).abs() < 1e-5);
    }
}
