//! `sd_core::image` against Pillow/numpy references written by `tools/make_image_fixtures.py`.
//!
//! Tolerances: resizing, PNG decoding and the tensor-to-byte conversion must match exactly.
//! JPEG decoding differs between decoders (Pillow uses libjpeg-turbo's IDCT and chroma
//! upsampling); those tests allow the small per-sample difference stated at each assertion.

use std::path::{Path, PathBuf};

use sd_core::Result;
use sd_core::image::{
    GenerationInfo, RgbImage, decode_image, encode_png, from_tensor, load_image, parse_infotext,
    read_png_text, resize_lanczos,
};
use sd_core::{Device, Tensor};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/images")
}

fn max_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn lanczos_resize_matches_pillow_exactly() -> Result<()> {
    let resize_dir = dir().join("resize");
    let mut checked = 0;
    for src_name in ["noise", "smooth", "checker"] {
        let src = load_image(resize_dir.join(format!("src_{src_name}.png")))?;
        let entries =
            std::fs::read_dir(&resize_dir).map_err(|e| sd_core::Error::io(&resize_dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| sd_core::Error::io(&resize_dir, e))?
                .path();
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("")
                .to_string();
            let Some(size) = file
                .strip_prefix(&format!("{src_name}_to_"))
                .and_then(|s| s.strip_suffix(".png"))
            else {
                continue;
            };
            let (w, h) = size.split_once('x').unwrap_or(("0", "0"));
            let (w, h): (usize, usize) = (w.parse().unwrap_or(0), h.parse().unwrap_or(0));
            let expected = load_image(&path)?;
            let got = resize_lanczos(&src, w, h)?;
            assert_eq!(
                max_diff(&got, &expected),
                0,
                "{src_name} {}x{} -> {w}x{h}",
                src.width,
                src.height
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 16, "expected 16 reference resizes");
    Ok(())
}

#[test]
fn png_conversion_matches_pillow_convert_rgb() -> Result<()> {
    let names = [
        "gray1",
        "gray2",
        "gray4",
        "gray8",
        "gray16",
        "graya8",
        "graya16",
        "rgb8",
        "rgb8_trns",
        "rgb16",
        "rgba8",
        "rgba16",
        "palette4",
        "palette8",
        "palette8_trns",
    ];
    for name in names {
        let got = load_image(dir().join(format!("convert/{name}.png")))?;
        let expected = load_image(dir().join(format!("convert/{name}.rgb.png")))?;
        assert_eq!(got, expected, "{name}");
    }
    Ok(())
}

#[test]
fn jpeg_decoding_is_close_to_pillow() -> Result<()> {
    // jpeg-decoder and libjpeg-turbo (Pillow) use different IDCT and YCbCr->RGB rounding, so
    // colour JPEGs differ by a few levels; greyscale decodes identically. The bounds are the
    // measured maxima for these fixtures (4:4:4: 3, 4:2:0: 2, grey: 0), not loosened.
    for (name, tol) in [("jpeg444", 3u8), ("jpeg_gray", 0), ("jpeg420", 2)] {
        let got = load_image(dir().join(format!("convert/{name}.jpg")))?;
        let expected = load_image(dir().join(format!("convert/{name}.rgb.png")))?;
        let d = max_diff(&got, &expected);
        assert!(d <= tol, "{name}: max difference {d} > {tol}");
    }
    Ok(())
}

#[test]
fn postprocess_matches_numpy() -> Result<()> {
    let path = dir().join("postprocess.json");
    let text = std::fs::read_to_string(&path).map_err(|e| sd_core::Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| sd_core::Error::invalid_file(&path, e.to_string()))?;
    let xs: Vec<f32> = v["x"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_f64())
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default();
    let expected: Vec<u8> = v["u8"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u8)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(xs.len(), expected.len());
    assert!(xs.len() > 200);
    let n = xs.len();
    // One 1-row image per channel value: put every value in the red plane.
    let mut data = xs.clone();
    data.extend(std::iter::repeat_n(0.0, 2 * n));
    let t = Tensor::from_vec(data, [1, 3, 1, n], Device::Cpu)?;
    let img = &from_tensor(&t)?[0];
    let got: Vec<u8> = img.data.iter().step_by(3).copied().collect();
    assert_eq!(got, expected);
    Ok(())
}

#[test]
fn reads_text_written_by_pillow() -> Result<()> {
    let latin = read_png_text(dir().join("text/latin1.png"))?;
    assert_eq!(latin.len(), 1);
    assert_eq!(latin[0].0, "parameters");
    let g = GenerationInfo::from_infotext(&latin[0].1)?;
    assert_eq!(g.prompt, "a cat, <lora:x:0.5>");
    assert_eq!(g.negative_prompt, "ugly");
    assert_eq!(
        g.extra,
        vec![("Lora hashes".to_string(), "x: 0123456789ab".to_string())]
    );
    // Our writer produces the same infotext string and the same tEXt chunk bytes as Pillow.
    assert_eq!(g.to_infotext(), latin[0].1);
    let pil = std::fs::read(dir().join("text/latin1.png"))
        .map_err(|e| sd_core::Error::io("latin1.png", e))?;
    let ours = encode_png(
        &RgbImage::filled(2, 2, [10, 20, 30])?,
        &[("parameters", &latin[0].1)],
    )?;
    assert_eq!(chunk(&ours, b"tEXt"), chunk(&pil, b"tEXt"));
    assert!(chunk(&ours, b"tEXt").is_some());

    let uni = read_png_text(dir().join("text/unicode.png"))?;
    assert_eq!(uni[0].0, "parameters");
    assert!(uni[0].1.starts_with("猫, café ☕\n"));
    let pil = std::fs::read(dir().join("text/unicode.png"))
        .map_err(|e| sd_core::Error::io("unicode.png", e))?;
    let ours = encode_png(
        &RgbImage::filled(2, 2, [10, 20, 30])?,
        &[("parameters", &uni[0].1)],
    )?;
    assert_eq!(chunk(&ours, b"iTXt"), chunk(&pil, b"iTXt"));
    assert!(chunk(&ours, b"iTXt").is_some());
    assert_eq!(parse_infotext(&uni[0].1).get("CFG scale"), Some("7.5"));
    assert_eq!(
        decode_image(&pil, "unicode.png")?,
        RgbImage::filled(2, 2, [10, 20, 30])?
    );

    let z = read_png_text(dir().join("text/ztxt.png"))?;
    assert_eq!(
        z,
        vec![
            ("Comment".to_string(), "second entry".to_string()),
            ("parameters".to_string(), latin[0].1.clone()),
        ]
    );
    Ok(())
}

/// The data of the first chunk of a type in a PNG byte stream.
fn chunk<'a>(png: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    let mut pos = 8;
    while pos + 8 <= png.len() {
        let len = u32::from_be_bytes([png[pos], png[pos + 1], png[pos + 2], png[pos + 3]]) as usize;
        let data = png.get(pos + 8..pos + 8 + len)?;
        if &png[pos + 4..pos + 8] == kind {
            return Some(data);
        }
        pos += 12 + len;
    }
    None
}
