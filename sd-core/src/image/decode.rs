//! PNG and JPEG decoding into [`RgbImage`], with Pillow's `convert("RGB")` semantics.
//!
//! Pillow's rules, reproduced here: alpha is dropped (not composited); grey is replicated into
//! the three channels; palettes are looked up (transparency ignored); sub-byte grey depths are
//! scaled to the full range (1-bit to 0/255, 2-bit times 85, 4-bit times 17); 16-bit RGB, RGBA
//! and grey+alpha keep the high byte of each sample; 16-bit grey (Pillow's mode `I;16`) is
//! *clipped*, so values above 255 become 255. The declared size is checked against
//! [`MAX_IMAGE_DIMENSION`] before any pixel buffer is allocated.

use std::io::Cursor;
use std::path::Path;

use super::RgbImage;
use crate::error::{Error, Result};

/// The largest width or height accepted from an image file (16384), checked before decoding.
pub const MAX_IMAGE_DIMENSION: usize = 16384;

/// Reads a PNG or JPEG file (recognised by content, not extension) as RGB.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, path)
}

/// Decodes PNG or JPEG bytes as RGB; `name` (a path or any label) names the source in errors.
pub fn decode_image(bytes: &[u8], name: impl AsRef<Path>) -> Result<RgbImage> {
    let name = name.as_ref();
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, name)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes, name)
    } else {
        Err(Error::invalid_file(
            name,
            "not a PNG or JPEG image (unrecognised signature)",
        ))
    }
}

fn check_dims(width: usize, height: usize, name: &Path) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::invalid_file(
            name,
            format!("image has an empty size {width}x{height}"),
        ));
    }
    if width > MAX_IMAGE_DIMENSION || height > MAX_IMAGE_DIMENSION {
        return Err(Error::invalid_file(
            name,
            format!(
                "image is {width}x{height}, larger than the {MAX_IMAGE_DIMENSION}x{MAX_IMAGE_DIMENSION} limit"
            ),
        ));
    }
    Ok(())
}

fn decode_png(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    let png_err = |e: png::DecodingError| Error::invalid_file(name, format!("PNG: {e}"));
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    let (width, height) = {
        let info = decoder.read_header_info().map_err(png_err)?;
        (info.width as usize, info.height as usize)
    };
    check_dims(width, height, name)?;
    // Room for the widest output (RGBA, 16 bits) plus the decoder's own buffers.
    decoder.set_limits(png::Limits {
        bytes: width * height * 8 + (64 << 20),
    });
    decoder.set_transformations(png::Transformations::EXPAND);
    decoder.set_ignore_text_chunk(true);
    let mut reader = decoder.read_info().map_err(png_err)?;
    let source_color = reader.info().color_type;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::invalid_file(name, "PNG output size overflows"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(png_err)?;
    let line = frame.line_size;
    let (color, depth) = (frame.color_type, frame.bit_depth);
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(Error::Internal(format!(
                "{}: palette not expanded by the PNG decoder",
                name.display()
            )));
        }
    };
    let sample_bytes = match depth {
        png::BitDepth::Eight => 1,
        png::BitDepth::Sixteen => 2,
        other => {
            return Err(Error::Internal(format!(
                "{}: PNG decoder left {other:?}-bit samples unexpanded",
                name.display()
            )));
        }
    };
    // Pillow opens 16-bit grey as `I;16` and clips it when converting; everything else with
    // 16-bit samples is unpacked keeping the most significant byte.
    let clip_gray16 = source_color == png::ColorType::Grayscale && sample_bytes == 2;
    let sample = |row: &[u8], i: usize| -> u8 {
        if sample_bytes == 1 {
            row[i]
        } else {
            let v = u16::from_be_bytes([row[2 * i], row[2 * i + 1]]);
            if clip_gray16 {
                v.min(255) as u8
            } else {
                (v >> 8) as u8
            }
        }
    };
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        let row = buf.get(y * line..(y + 1) * line).ok_or_else(|| {
            Error::invalid_file(name, "PNG decoder returned fewer rows than declared")
        })?;
        for x in 0..width {
            let base = x * channels;
            if channels < 3 {
                let g = sample(row, base);
                data.extend_from_slice(&[g, g, g]);
            } else {
                data.extend_from_slice(&[
                    sample(row, base),
                    sample(row, base + 1),
                    sample(row, base + 2),
                ]);
            }
        }
    }
    RgbImage::new(width, height, data)
}

fn decode_jpeg(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    let jpeg_err = |e: jpeg_decoder::Error| Error::invalid_file(name, format!("JPEG: {e}"));
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(jpeg_err)?;
    let info = decoder
        .info()
        .ok_or_else(|| Error::invalid_file(name, "JPEG header has no frame"))?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    check_dims(width, height, name)?;
    decoder.set_max_decoding_buffer_size(width * height * 4 + (16 << 20));
    let pixels = decoder.decode().map_err(jpeg_err)?;
    let n = width * height;
    let data = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        jpeg_decoder::PixelFormat::L16 => pixels
            .chunks_exact(2)
            .flat_map(|p| {
                let g = p[0];
                [g, g, g]
            })
            .collect(),
        jpeg_decoder::PixelFormat::CMYK32 => {
            return Err(Error::Unsupported(format!(
                "{}: CMYK JPEG images are not supported as init images; convert to RGB first",
                name.display()
            )));
        }
    };
    if data.len() != n * 3 {
        return Err(Error::invalid_file(
            name,
            format!(
                "JPEG decoder returned {} bytes for {width}x{height}",
                data.len()
            ),
        ));
    }
    RgbImage::new(width, height, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        v.extend_from_slice(&13u32.to_be_bytes());
        v.extend_from_slice(&ihdr);
        v.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        v
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn oversized_png_is_rejected_before_decoding() {
        // A header declaring 20000x20000 with no pixel data at all: the size check must fire
        // first, and the error must name the file.
        let bytes = png_header(20000, 100);
        let err = decode_image(&bytes, "huge.png")
            .err()
            .map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.contains("huge.png") && msg.contains("limit"), "{msg}");
    }

    #[test]
    fn garbage_is_rejected_with_the_name() {
        let msg = decode_image(b"GIF89a...", "x.gif")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("x.gif"), "{msg}");
        let truncated = png_header(4, 4);
        assert!(decode_image(&truncated, "t.png").is_err());
        assert!(decode_image(&[0xFF, 0xD8, 0xFF, 0xE0, 0], "t.jpg").is_err());
    }
}
