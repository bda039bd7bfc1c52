//! Embeddings carried by PNG images, as AUTOMATIC1111 writes them
//! (`modules/textual_inversion/image_embedding.py`).
//!
//! Two carriers exist. The `sd-ti-embedding` text chunk holds the base64 of a JSON rendering of
//! the embedding's `.pt` dict, tensors written as `{"TORCHTENSOR": nested lists}`
//! (`embedding_to_b64`). Without that chunk, the same JSON may be drawn into the pixels
//! (`insert_image_data_embed`): zlib-compressed, split into low and high nibbles, each nibble
//! block XOR-ed with a linear-congruential stream and drawn as a block of columns left and right
//! of the picture, separated from it by black columns (`extract_image_data_embed` reads it back).

use std::io::Read as _;
use std::path::Path;

use serde_json::Value;

use super::EmbeddingFormat;
use super::load::{FileContent, FilePart, check_shape};
use crate::error::{Error, Result};
use crate::image::{decode_image, read_png_text_bytes};

/// The text chunk keyword A1111 stores embeddings under.
const TEXT_KEY: &str = "sd-ti-embedding";

/// Largest JSON document accepted (75 vectors of 2048 floats printed in full are about 3 MB).
const MAX_JSON_BYTES: usize = 16 << 20;

/// Reads the embedding a PNG carries, from its text chunk or else its pixels.
pub(super) fn read_image(path: &Path, bytes: &[u8]) -> Result<FileContent> {
    let texts = read_png_text_bytes(bytes, path)?;
    if let Some((_, text)) = texts.iter().find(|(k, _)| k == TEXT_KEY) {
        let json = decode_base64(text)
            .map_err(|why| Error::invalid_file(path, format!("`{TEXT_KEY}` text chunk: {why}")))?;
        return from_json(path, &json, EmbeddingFormat::ImageText);
    }
    let json = pixel_data(path, bytes)?;
    from_json(path, &json, EmbeddingFormat::ImagePixels)
}

/// Decodes standard base64 (`+`, `/`, `=` padding), ignoring ASCII whitespace.
fn decode_base64(text: &str) -> std::result::Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let symbols: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !symbols.len().is_multiple_of(4) {
        return Err(format!(
            "base64 of {} symbols is not a whole number of 4-symbol groups",
            symbols.len()
        ));
    }
    if symbols.len() / 4 * 3 > MAX_JSON_BYTES {
        return Err(format!("more than {MAX_JSON_BYTES} bytes of data"));
    }
    let mut out = Vec::with_capacity(symbols.len() / 4 * 3);
    let groups = symbols.len() / 4;
    for (g, quad) in symbols.chunks_exact(4).enumerate() {
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && g + 1 != groups) {
            return Err(format!("misplaced `=` padding in group {g}"));
        }
        let mut acc = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            let v = if i >= 4 - padding {
                0
            } else {
                sextet(c).ok_or_else(|| {
                    format!(
                        "`{}` is not a base64 symbol",
                        char::from(c).escape_default()
                    )
                })?
            };
            acc = (acc << 6) | v;
        }
        let [_, b0, b1, b2] = acc.to_be_bytes();
        out.extend_from_slice(&[b0, b1, b2][..3 - padding]);
    }
    Ok(out)
}

/// A tensor written by A1111's `EmbeddingEncoder`: `{"TORCHTENSOR": [..] or [[..], ..]}`.
fn json_tensor(path: &Path, key: &str, value: &Value) -> Result<FilePart> {
    let bad = |why: &str| {
        Error::invalid_file(
            path,
            format!("embedding tensor `{}` {why}", key.escape_debug()),
        )
    };
    let Some(list) = value
        .as_object()
        .and_then(|o| o.get("TORCHTENSOR"))
        .and_then(Value::as_array)
    else {
        return Err(bad("is not a {\"TORCHTENSOR\": [...]} list"));
    };
    let number = |v: &Value| -> Result<f32> {
        #[allow(clippy::cast_possible_truncation)]
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| bad("holds a value that is not a number"))
    };
    let rows: Vec<&Vec<Value>> = list.iter().filter_map(Value::as_array).collect();
    let shape: Vec<usize> = if rows.is_empty() {
        vec![list.len()]
    } else if rows.len() == list.len() {
        vec![rows.len(), rows.first().map_or(0, |r| r.len())]
    } else {
        return Err(bad("mixes numbers and lists"));
    };
    let (vectors, width) = check_shape(path, key, &shape)?;
    let mut values = Vec::with_capacity(vectors * width);
    if rows.is_empty() {
        for v in list {
            values.push(number(v)?);
        }
    } else {
        for row in rows {
            if row.len() != width {
                return Err(bad("has rows of different lengths"));
            }
            for v in row {
                values.push(number(v)?);
            }
        }
    }
    Ok(FilePart {
        key: key.to_string(),
        vectors,
        width,
        values,
    })
}

/// The embedding in the JSON form of its `.pt` dict (any layout A1111 reads).
fn from_json(path: &Path, json: &[u8], format: EmbeddingFormat) -> Result<FileContent> {
    if json.len() > MAX_JSON_BYTES {
        return Err(Error::invalid_file(
            path,
            format!("embedding data of {} bytes is too large", json.len()),
        ));
    }
    let root: Value = serde_json::from_slice(json)
        .map_err(|e| Error::invalid_file(path, format!("embedding JSON: {e}")))?;
    let Some(root) = root.as_object() else {
        return Err(Error::invalid_file(path, "embedding JSON is not an object"));
    };
    let text = |k: &str| root.get(k).and_then(Value::as_str).map(str::to_string);
    let mut content = FileContent::new(format);
    content.stored_name = text("name");
    content.step = root.get("step").and_then(Value::as_i64);
    content.sd_checkpoint = text("sd_checkpoint");
    content.sd_checkpoint_name = text("sd_checkpoint_name");
    if let Some(params) = root.get("string_to_param") {
        let Some(params) = params.as_object() else {
            return Err(Error::invalid_file(path, "string_to_param is not a dict"));
        };
        let entries = params.iter().collect::<Vec<_>>();
        match entries.as_slice() {
            [(key, value)] => content.parts.push(json_tensor(path, key, value)?),
            [] => return Err(Error::invalid_file(path, "string_to_param is empty")),
            _ => {
                return Err(Error::invalid_file(
                    path,
                    format!(
                        "embedding file has multiple terms in it ({} in string_to_param)",
                        entries.len()
                    ),
                ));
            }
        }
    } else if let (Some(l), Some(g)) = (root.get("clip_l"), root.get("clip_g")) {
        content.parts.push(json_tensor(path, "clip_l", l)?);
        content.parts.push(json_tensor(path, "clip_g", g)?);
    } else {
        match root.iter().collect::<Vec<_>>().as_slice() {
            [(key, value)] => content.parts.push(json_tensor(path, key, value)?),
            _ => {
                return Err(Error::invalid_file(
                    path,
                    "embedding JSON has neither string_to_param, clip_l and clip_g, nor a single \
                     tensor",
                ));
            }
        }
    }
    Ok(content)
}

/// A1111's `lcg()`: `seed = (1664525 · seed + 1013904223) mod 2³²`, yielding `seed mod 255`.
struct Lcg(u32);

impl Iterator for Lcg {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        #[allow(clippy::cast_possible_truncation)]
        Some((self.0 % 255) as u8)
    }
}

/// The JSON drawn into an image's pixels (`extract_image_data_embed`).
fn pixel_data(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let none = || {
        Error::invalid_file(
            path,
            format!(
                "a PNG without an embedding: no `{TEXT_KEY}` text chunk and no data in its pixels"
            ),
        )
    };
    let image = decode_image(bytes, path)?;
    let (w, h) = (image.width, image.height);
    let px = |x: usize, y: usize| -> [u8; 3] {
        let i = (y * w + x) * 3;
        match image.data.get(i..i + 3) {
            Some(&[r, g, b]) => [r, g, b],
            _ => [0; 3],
        }
    };
    // crop_black(tol=0): keep the rows and columns spanned by pixels whose three channels are
    // all non-zero (numpy's argmax of an all-false mask is 0, which keeps everything).
    let lit = |x: usize, y: usize| px(x, y).iter().all(|&c| c > 0);
    let col_lit: Vec<bool> = (0..w).map(|x| (0..h).any(|y| lit(x, y))).collect();
    let row_lit: Vec<bool> = (0..h).map(|y| (0..w).any(|x| lit(x, y))).collect();
    let span = |m: &[bool]| -> (usize, usize) {
        let start = m.iter().position(|&b| b).unwrap_or(0);
        let end = m.len() - m.iter().rev().position(|&b| b).unwrap_or(0);
        (start, end.max(start))
    };
    let (x0, x1) = span(&col_lit);
    let (y0, y1) = span(&row_lit);
    let (cw, ch) = (x1 - x0, y1 - y0);
    let low = |x: usize, y: usize| px(x0 + x, y0 + y).map(|c| c & 0x0f);
    // Columns whose low nibbles are all zero separate the data blocks from the picture.
    let black: Vec<usize> = (0..cw)
        .filter(|&x| (0..ch).all(|y| low(x, y) == [0, 0, 0]))
        .collect();
    let (Some(&first_black), Some(&last_black)) = (black.first(), black.last()) else {
        return Err(none());
    };
    if black.len() < 2 {
        return Err(none());
    }
    // One block of `bw` columns, flattened row-major over (row, column, channel) and un-XOR-ed.
    let block = |from: usize, bw: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(ch * bw * 3);
        for y in 0..ch {
            for x in from..from + bw {
                out.extend_from_slice(&low(x, y));
            }
        }
        out.iter_mut().zip(Lcg(0)).for_each(|(v, r)| *v ^= r & 0x0f);
        out
    };
    let lower = block(0, first_black);
    let upper = block(last_black + 1, cw - last_black - 1);
    if lower.len() != upper.len() || lower.is_empty() {
        return Err(Error::invalid_file(
            path,
            format!(
                "the data blocks drawn beside the picture differ in size ({} and {} columns)",
                first_black,
                cw - last_black - 1
            ),
        ));
    }
    let packed: Vec<u8> = lower
        .iter()
        .zip(&upper)
        .map(|(lo, hi)| (hi << 4) | lo)
        .collect();
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(packed.as_slice())
        .take(MAX_JSON_BYTES as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|e| Error::invalid_file(path, format!("embedding data in the pixels: {e}")))?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(decode_base64("").as_deref(), Ok(&b""[..]));
        assert_eq!(decode_base64("Zg==").as_deref(), Ok(&b"f"[..]));
        assert_eq!(decode_base64("Zm8=").as_deref(), Ok(&b"fo"[..]));
        assert_eq!(decode_base64("Zm9v").as_deref(), Ok(&b"foo"[..]));
        assert_eq!(decode_base64("Zm9v\nYmFy").as_deref(), Ok(&b"foobar"[..]));
        assert_eq!(
            decode_base64("+/+/").as_deref(),
            Ok(&[0xfb, 0xff, 0xbf][..])
        );
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "=Zg="] {
            assert!(decode_base64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lcg_matches_a1111_reference_stream() {
        // The first values asserted by image_embedding.py's self-test.
        let first: Vec<u8> = Lcg(0).take(13).collect();
        assert_eq!(
            first,
            [253, 242, 127, 44, 157, 27, 239, 133, 38, 79, 167, 4, 177]
        );
        let sum: u64 = Lcg(0).skip(100).take(100_000).map(u64::from).sum();
        assert_eq!(sum, 12_731_374);
    }
}
