//! Images in and out of the pipeline.
//!
//! * [`RgbImage`]: an 8-bit RGB picture, row-major, the type every entry point here speaks;
//! * [`to_tensor`] / [`from_tensor`]: the conversions diffusers' `VaeImageProcessor` does before the
//!   VAE encoder (`x / 255 * 2 - 1`) and after the decoder (`(x / 2 + 0.5).clamp(0, 1)`, then
//!   `round(v * 255)` with numpy's round-half-to-even);
//! * [`load_image`] / [`decode_image`]: PNG and JPEG init images, converted to RGB as Pillow's
//!   `Image.convert("RGB")` does;
//! * [`resize_lanczos`]: Pillow's `Image.resize(size, LANCZOS)`, bit for bit, which is what
//!   diffusers applies when an init image's size differs from the requested one;
//! * [`encode_png`] / [`save_png`] / [`read_png_text`]: PNG output carrying the generation
//!   parameters in a `parameters` text chunk, as AUTOMATIC1111 writes them;
//! * [`GenerationInfo`] / [`parse_infotext`]: that text ("infotext") written and parsed with
//!   AUTOMATIC1111's layout and rules;
//! * [`model_hash`]: the short sha256 a model is identified by in infotext.

mod decode;
mod hash;
mod infotext;
mod png_io;
mod resize;

pub use decode::{MAX_IMAGE_DIMENSION, decode_image, load_image};
pub use hash::{model_hash, sha256_file};
pub use infotext::{GenerationInfo, ParsedInfotext, parse_infotext, quote_value};
pub use png_io::{PARAMETERS_KEY, encode_png, read_png_text, read_png_text_bytes, save_png};
pub use resize::resize_lanczos;

use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// An 8-bit RGB image: `data` holds `width * height * 3` bytes, row-major, `R G B` per pixel.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixel bytes, `(y * width + x) * 3 + channel`.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RgbImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl RgbImage {
    /// Wraps pixel bytes, checking that the sizes are non-zero and that `data` holds exactly
    /// `width * height * 3` bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::invalid_argument(
                "width/height",
                format!("image size must be non-zero, got {width}x{height}"),
            ));
        }
        let expected = width
            .checked_mul(height)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| {
                Error::invalid_argument("width/height", format!("{width}x{height} overflows"))
            })?;
        if data.len() != expected {
            return Err(Error::invalid_argument(
                "data",
                format!(
                    "a {width}x{height} RGB image needs {expected} bytes, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// A `width` x `height` image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Result<Self> {
        let n = width.checked_mul(height).ok_or_else(|| {
            Error::invalid_argument("width/height", format!("{width}x{height} overflows"))
        })?;
        let mut data = Vec::with_capacity(n.saturating_mul(3));
        for _ in 0..n {
            data.extend_from_slice(&rgb);
        }
        Self::new(width, height, data)
    }

    /// The pixel at `(x, y)`, or `None` outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 3;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }

    /// Checks the invariant of [`RgbImage::new`] on a value whose fields were set directly.
    pub fn validate(&self) -> Result<()> {
        let expected = self
            .width
            .checked_mul(self.height)
            .and_then(|n| n.checked_mul(3));
        if self.width == 0 || self.height == 0 || expected != Some(self.data.len()) {
            return Err(Error::invalid_argument(
                "image",
                format!(
                    "{}x{} RGB image with {} bytes of data",
                    self.width,
                    self.height,
                    self.data.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Stacks images into an NCHW `f32` tensor in `[-1, 1]`, as diffusers' `VaeImageProcessor.preprocess`
/// does for PIL input (`np.float32(x) / 255`, then `2 * v - 1`, both in `f32`).
///
/// All images must have the same size; the batch must not be empty.
pub fn to_tensor(images: &[RgbImage]) -> Result<Tensor> {
    let first = images
        .first()
        .ok_or_else(|| Error::invalid_argument("images", "the batch is empty"))?;
    let (w, h) = (first.width, first.height);
    let plane = w * h;
    let mut out = Vec::with_capacity(images.len() * 3 * plane);
    for (i, img) in images.iter().enumerate() {
        img.validate()?;
        if img.width != w || img.height != h {
            return Err(Error::invalid_argument(
                "images",
                format!(
                    "image {i} is {}x{}, image 0 is {w}x{h}; a batch needs one size",
                    img.width, img.height
                ),
            ));
        }
        for c in 0..3 {
            out.extend(
                img.data[c..]
                    .iter()
                    .step_by(3)
                    .map(|&b| (f32::from(b) / 255.0) * 2.0 - 1.0),
            );
        }
    }
    Tensor::from_vec(out, [images.len(), 3, h, w], Device::Cpu)
}

/// Converts an NCHW tensor in `[-1, 1]` (the VAE decoder's output) into images, as diffusers'
/// `postprocess(output_type="pil")` does: `v = (x / 2 + 0.5).clamp(0, 1)` in `f32`, then
/// `round(v * 255)` to `u8`, rounding halves to even like `numpy.round`. NaN becomes 0.
///
/// The tensor must have rank 4 with 3 channels.
pub fn from_tensor(tensor: &Tensor) -> Result<Vec<RgbImage>> {
    let dims = tensor.dims();
    if dims.len() != 4 || dims[1] != 3 || dims[2] == 0 || dims[3] == 0 {
        return Err(Error::InvalidShape {
            op: "image::from_tensor",
            shape: tensor.shape().clone(),
            reason: "expected NCHW with 3 channels and a non-empty image".into(),
        });
    }
    let (n, h, w) = (dims[0], dims[2], dims[3]);
    let values = tensor.to_vec()?;
    let plane = h * w;
    let mut images = Vec::with_capacity(n);
    for b in 0..n {
        let base = b * 3 * plane;
        let mut data = vec![0u8; plane * 3];
        for c in 0..3 {
            let src = &values[base + c * plane..base + (c + 1) * plane];
            for (p, &x) in src.iter().enumerate() {
                data[p * 3 + c] = to_u8(x);
            }
        }
        images.push(RgbImage::new(w, h, data)?);
    }
    Ok(images)
}

/// One value of [`from_tensor`]: `round_half_even(clamp(x / 2 + 0.5, 0, 1) * 255)`.
fn to_u8(x: f32) -> u8 {
    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0);
    if v.is_nan() {
        // numpy's cast of NaN to uint8 is unspecified; torch's clamp keeps NaN. Black is the
        // least surprising output.
        return 0;
    }
    // In [0, 255] after the clamp, so the cast is exact.
    (v * 255.0).round_ties_even() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_validates_sizes() {
        assert!(RgbImage::new(2, 2, vec![0; 12]).is_ok());
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
        assert!(RgbImage::new(0, 2, vec![]).is_err());
        assert!(RgbImage::new(usize::MAX, 3, vec![]).is_err());
        let bad = RgbImage {
            width: 3,
            height: 1,
            data: vec![0; 3],
        };
        assert!(bad.validate().is_err());
        assert!(to_tensor(&[bad]).is_err());
    }

    #[test]
    fn tensor_round_trip_is_exact() -> Result<()> {
        let data: Vec<u8> = (0..=255u8).chain(0..=255u8).chain(0..=255u8).collect();
        let a = RgbImage::new(16, 16, data[..768].to_vec())?;
        let b = RgbImage::new(16, 16, data[..768].iter().rev().copied().collect())?;
        let t = to_tensor(&[a.clone(), b.clone()])?;
        assert_eq!(t.dims(), &[2, 3, 16, 16]);
        let v = t.to_vec()?;
        // Pixel (1, 0) of image 0 is bytes 3, 4, 5: channel planes hold 3, 4 and 5.
        assert_eq!(v[1], 3.0 / 255.0 * 2.0 - 1.0);
        assert_eq!(v[256 + 1], 4.0 / 255.0 * 2.0 - 1.0);
        assert_eq!(v[0], -1.0);
        let back = from_tensor(&t)?;
        assert_eq!(back, vec![a, b]);
        Ok(())
    }

    #[test]
    fn batch_must_share_size() -> Result<()> {
        let a = RgbImage::filled(2, 2, [1, 2, 3])?;
        let b = RgbImage::filled(3, 2, [1, 2, 3])?;
        assert!(to_tensor(&[a, b]).is_err());
        assert!(to_tensor(&[]).is_err());
        Ok(())
    }

    #[test]
    fn from_tensor_rounds_half_to_even_and_clamps() -> Result<()> {
        let t = Tensor::from_vec(
            vec![-3.0, -1.0, 0.0, 1.0, 5.0, f32::NAN],
            [1, 3, 1, 2],
            Device::Cpu,
        )?;
        let img = &from_tensor(&t)?[0];
        // Channel planes: [-3, -1], [0, 1], [5, NaN]. 0 maps to 127.5, which rounds to even 128.
        assert_eq!(img.pixel(0, 0), Some([0, 128, 255]));
        assert_eq!(img.pixel(1, 0), Some([0, 255, 0]));
        let bad = Tensor::zeros([1, 4, 2, 2], Device::Cpu)?;
        assert!(from_tensor(&bad).is_err());
        Ok(())
    }
}
