//! Lanczos resampling identical to Pillow's `Image.resize(size, Image.LANCZOS)` on 8-bit RGB.
//!
//! Pillow resizes in two separable passes, horizontal first, then vertical (each skipped when
//! that dimension is unchanged). For each output sample it takes the source interval the output
//! pixel covers, widens the Lanczos-3 kernel by the downscale factor (never narrower than the
//! unscaled kernel), evaluates it in `f64` at source pixel centres, and normalises the weights to
//! sum to one. The 8-bit path then converts each weight to a fixed-point integer with 22 fraction
//! bits (rounding half away from zero), accumulates `pixel * weight` in a 32-bit integer starting
//! from half an output level, and keeps `acc >> 22` clamped to `0..=255`. The intermediate image
//! between the passes is 8-bit as well. Everything below follows those rules so that results
//! match Pillow exactly, not just closely.

use super::RgbImage;
use crate::error::{Error, Result};

/// Fraction bits of the fixed-point weights (Pillow: 32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Lanczos kernel half-width in source pixels at scale 1.
const SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-SUPPORT..SUPPORT).contains(&x) {
        sinc(x) * sinc(x / SUPPORT)
    } else {
        0.0
    }
}

/// Fixed-point weights of one 1-D pass: for output sample `i`, source samples
/// `start[i] .. start[i] + len[i]` weighted by `weights[i * ksize ..][..len[i]]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

fn coefficients(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // Pillow truncates `center ± support + 0.5` toward zero (a C cast), then clamps.
        let lo = ((center - support + 0.5).trunc() as i64).max(0) as usize;
        let hi = ((center + support + 0.5).trunc() as i64).min(in_size as i64) as usize;
        let n = hi.saturating_sub(lo).min(ksize);
        let mut sum = 0.0;
        for (k, slot) in w.iter_mut().enumerate().take(n) {
            let v = lanczos(((k + lo) as f64 - center + 0.5) * inv);
            *slot = v;
            sum += v;
        }
        let row = &mut weights[i * ksize..i * ksize + n];
        for (dst, &v) in row.iter_mut().zip(&w[..n]) {
            let v = if sum != 0.0 { v / sum } else { v };
            let scaled = v * f64::from(1u32 << PRECISION_BITS);
            // C `(int)(x ± 0.5)`: round half away from zero, then truncate.
            *dst = if v < 0.0 {
                (scaled - 0.5).trunc() as i32
            } else {
                (scaled + 0.5).trunc() as i32
            };
        }
        start.push(lo);
        len.push(n);
    }
    Coeffs {
        ksize,
        start,
        len,
        weights,
    }
}

/// Pillow's `clip8`: the accumulator's integer part, clamped to a byte.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn horizontal(src: &[u8], width: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.start.len();
    let mut out = vec![0u8; out_w * rows * 3];
    for y in 0..rows {
        let line = &src[y * width * 3..(y + 1) * width * 3];
        let dst = &mut out[y * out_w * 3..(y + 1) * out_w * 3];
        for x in 0..out_w {
            let k = &c.weights[x * c.ksize..x * c.ksize + c.len[x]];
            let px = &line[c.start[x] * 3..(c.start[x] + c.len[x]) * 3];
            let mut acc = [HALF; 3];
            for (p, &wt) in px.chunks_exact(3).zip(k) {
                for ch in 0..3 {
                    acc[ch] = acc[ch].wrapping_add(i32::from(p[ch]).wrapping_mul(wt));
                }
            }
            for ch in 0..3 {
                dst[x * 3 + ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

fn vertical(src: &[u8], width: usize, c: &Coeffs) -> Vec<u8> {
    let out_h = c.start.len();
    let stride = width * 3;
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for y in 0..out_h {
        acc.fill(HALF);
        let k = &c.weights[y * c.ksize..y * c.ksize + c.len[y]];
        for (j, &wt) in k.iter().enumerate() {
            let line = &src[(c.start[y] + j) * stride..(c.start[y] + j + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(wt));
            }
        }
        for (d, &a) in out[y * stride..(y + 1) * stride].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

/// Resizes to `width` x `height` exactly as Pillow's `Image.resize((width, height), LANCZOS)`
/// does for an RGB image (the call diffusers' `VaeImageProcessor.resize` makes for PIL input).
///
/// Returns a copy when the size is unchanged. Errors on a zero target size or an invalid image.
pub fn resize_lanczos(image: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    image.validate()?;
    if width == 0 || height == 0 {
        return Err(Error::invalid_argument(
            "width/height",
            format!("resize target must be non-zero, got {width}x{height}"),
        ));
    }
    let (mut data, mut cur_w, mut rows) = (None::<Vec<u8>>, image.width, image.height);
    let vert = (height != image.height).then(|| coefficients(image.height, height));
    // Like Pillow, the horizontal pass only produces the source rows the vertical pass reads.
    let (first_row, mut vert) = match vert {
        Some(mut v) => {
            let first = v.start.first().copied().unwrap_or(0);
            let last = v
                .start
                .last()
                .zip(v.len.last())
                .map_or(image.height, |(s, l)| s + l);
            for s in &mut v.start {
                *s -= first;
            }
            rows = last - first;
            (first, Some(v))
        }
        None => (0, None),
    };
    if width != image.width {
        let h = coefficients(image.width, width);
        let src = &image.data[first_row * image.width * 3..(first_row + rows) * image.width * 3];
        data = Some(horizontal(src, image.width, rows, &h));
        cur_w = width;
    } else if let Some(v) = vert.as_mut() {
        // No horizontal pass: the vertical pass reads the original rows.
        for s in &mut v.start {
            *s += first_row;
        }
    }
    if let Some(v) = vert {
        let src = data.as_deref().unwrap_or(&image.data);
        data = Some(vertical(src, cur_w, &v));
    }
    RgbImage::new(width, height, data.unwrap_or_else(|| image.data.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(10, 3), (3, 10), (512, 768), (37, 23), (1, 5), (5, 1)] {
            let c = coefficients(i, o);
            for x in 0..o {
                let s: i64 = c.weights[x * c.ksize..x * c.ksize + c.len[x]]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                // Each weight is rounded separately: the sum is within a few units of 2^22.
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= c.len[x] as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() -> Result<()> {
        let img = RgbImage::filled(13, 7, [0, 128, 255])?;
        for (w, h) in [(5, 3), (40, 21), (13, 20), (2, 7), (1, 1)] {
            let out = resize_lanczos(&img, w, h)?;
            assert_eq!(out, RgbImage::filled(w, h, [0, 128, 255])?);
        }
        assert!(resize_lanczos(&img, 0, 3).is_err());
        Ok(())
    }
}
