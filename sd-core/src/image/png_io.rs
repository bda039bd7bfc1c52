//! PNG output with text metadata, and reading the text back.
//!
//! Text entries are written the way Pillow's `PngInfo.add_text(key, value)` writes them, which
//! is how AUTOMATIC1111 stores its `parameters`: a `tEXt` chunk when the value is Latin-1, an
//! uncompressed `iTXt` chunk (empty language tag and translated keyword) otherwise, in the order
//! given, before the image data.

use std::path::Path;

use png::text_metadata::{ITXtChunk, TEXtChunk};

use super::RgbImage;
use crate::error::{Error, Result};

/// The text keyword AUTOMATIC1111 stores the generation parameters under.
pub const PARAMETERS_KEY: &str = "parameters";

/// Largest decompressed size accepted for one compressed text chunk (8 MiB).
const TEXT_LIMIT: usize = 8 << 20;

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| u32::from(c) <= 0xFF)
}

/// Encodes an RGB image as an 8-bit PNG with the given `(keyword, text)` entries.
///
/// Keywords must be 1 to 79 Latin-1 characters (the PNG rule); texts may be any Unicode.
pub fn encode_png(image: &RgbImage, text: &[(&str, &str)]) -> Result<Vec<u8>> {
    image.validate()?;
    let (w, h) = (
        u32::try_from(image.width)
            .map_err(|_| Error::invalid_argument("image", "width does not fit a PNG"))?,
        u32::try_from(image.height)
            .map_err(|_| Error::invalid_argument("image", "height does not fit a PNG"))?,
    );
    for (key, _) in text {
        if key.is_empty() || key.chars().count() > 79 || !is_latin1(key) {
            return Err(Error::invalid_argument(
                "text",
                format!("PNG text keyword {key:?} must be 1 to 79 Latin-1 characters"),
            ));
        }
    }
    let enc_err = |e: png::EncodingError| Error::invalid_argument("image", format!("PNG: {e}"));
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(enc_err)?;
        for (key, value) in text {
            if is_latin1(value) {
                writer
                    .write_text_chunk(&TEXtChunk::new(*key, *value))
                    .map_err(enc_err)?;
            } else {
                writer
                    .write_text_chunk(&ITXtChunk::new(*key, *value))
                    .map_err(enc_err)?;
            }
        }
        writer.write_image_data(&image.data).map_err(enc_err)?;
        writer.finish().map_err(enc_err)?;
    }
    Ok(out)
}

/// Writes [`encode_png`]'s output to `path`.
pub fn save_png(path: impl AsRef<Path>, image: &RgbImage, text: &[(&str, &str)]) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_png(image, text)?;
    std::fs::write(path, bytes).map_err(|e| Error::io_writing(path, e))
}

/// Reads every `tEXt`, `zTXt` and `iTXt` entry of a PNG file as `(keyword, text)`, in chunk
/// order per type (`tEXt`, then `zTXt`, then `iTXt`), including chunks after the image data.
pub fn read_png_text(path: impl AsRef<Path>) -> Result<Vec<(String, String)>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_png_text_bytes(&bytes, path)
}

/// [`read_png_text`] on bytes in memory; `name` labels the source in errors.
pub fn read_png_text_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<Vec<(String, String)>> {
    let name = name.as_ref();
    let png_err = |e: png::DecodingError| Error::invalid_file(name, format!("PNG: {e}"));
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().map_err(png_err)?;
    // Text may follow the image data; `finish` walks the rest of the file.
    reader.finish().map_err(png_err)?;
    let info = reader.info();
    let mut out = Vec::new();
    for t in &info.uncompressed_latin1_text {
        out.push((t.keyword.clone(), t.text.clone()));
    }
    for t in &info.compressed_latin1_text {
        let mut t = t.clone();
        t.decompress_text_with_limit(TEXT_LIMIT).map_err(png_err)?;
        out.push((t.keyword.clone(), t.get_text().map_err(png_err)?));
    }
    for t in &info.utf8_text {
        let mut t = t.clone();
        t.decompress_text_with_limit(TEXT_LIMIT).map_err(png_err)?;
        out.push((t.keyword.clone(), t.get_text().map_err(png_err)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_latin1_and_unicode() -> Result<()> {
        let img = RgbImage::new(2, 1, vec![1, 2, 3, 4, 5, 6])?;
        let text = [("parameters", "café, Steps: 20"), ("Comment", "猫 ☕")];
        let bytes = encode_png(&img, &text)?;
        // A Latin-1 value becomes tEXt, the other one iTXt.
        assert!(bytes.windows(4).any(|w| w == b"tEXt"));
        assert!(bytes.windows(4).any(|w| w == b"iTXt"));
        let back = read_png_text_bytes(&bytes, "mem.png")?;
        assert_eq!(
            back,
            vec![
                ("parameters".to_string(), "café, Steps: 20".to_string()),
                ("Comment".to_string(), "猫 ☕".to_string()),
            ]
        );
        assert_eq!(super::super::decode_image(&bytes, "mem.png")?, img);
        Ok(())
    }

    #[test]
    fn bad_keyword_is_rejected() -> Result<()> {
        let img = RgbImage::filled(1, 1, [0, 0, 0])?;
        assert!(encode_png(&img, &[("", "x")]).is_err());
        assert!(encode_png(&img, &[("猫", "x")]).is_err());
        Ok(())
    }
}
