//! The bytes of one scene in a store, and the way back to typed truth.
//!
//! Per scene: the image (JPEG, or PNG for every fourth index), a truth JSON (class, size, intrinsics,
//! boxes), an 8-bit PNG of segmentation classes and a 16-bit PNG of depth in `1/depth_png_scale`
//! metres. Encoding is deterministic: the same scene always gives the same bytes.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, GrayImage, ImageBuffer, ImageFormat, Luma};
use serde::{Deserialize, Serialize};

use crate::camera::Intrinsics;
use crate::config::{DEPTH_PNG_SCALE, OBJECT_CLASSES, SEG_CLASSES, SEG_SKY};
use crate::render::{GtBox, Scene};
use crate::WorldError;

/// How a scene's image is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
}

impl ImageKind {
    /// Every fourth image (`index % 4 == 3`) is PNG, the rest JPEG.
    pub fn of_index(index: u64) -> Self {
        if index % 4 == 3 {
            ImageKind::Png
        } else {
            ImageKind::Jpeg
        }
    }

    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
        }
    }
}

/// The truth JSON of one scene (`<split>/truth/<id>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TruthRecord {
    pub scene_class: u8,
    pub width: u32,
    pub height: u32,
    pub intrinsics: Intrinsics,
    pub boxes: Vec<GtBox>,
}

/// Everything known about one scene except its pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Truth {
    /// Index into `SCENE_CLASSES`.
    pub scene_class: u8,
    pub width: u32,
    pub height: u32,
    pub intrinsics: Intrinsics,
    pub boxes: Vec<GtBox>,
    /// Segmentation class per pixel, `height·width` row-major.
    pub seg: Vec<u8>,
    /// z-depth in metres per pixel, `height·width` row-major.
    pub depth: Vec<f32>,
}

impl Truth {
    /// Checks the invariants every truth keeps: boxes inside `[0, 1]` with known classes, seg classes
    /// in range, depth positive and finite, and the sky (seg 0) exactly where depth is `max_depth`.
    pub fn check(&self, max_depth: f32) -> Result<(), WorldError> {
        let fail = |reason: String| WorldError::Truth { what: "check".to_owned(), reason };
        let n = (self.width * self.height) as usize;
        if self.seg.len() != n || self.depth.len() != n {
            return Err(fail(format!(
                "{}x{} image has {} seg and {} depth values",
                self.width,
                self.height,
                self.seg.len(),
                self.depth.len()
            )));
        }
        for (i, b) in self.boxes.iter().enumerate() {
            let inside = [b.x0, b.y0, b.x1, b.y1].iter().all(|v| (0.0..=1.0).contains(v));
            if !inside || b.x0 >= b.x1 || b.y0 >= b.y1 {
                return Err(fail(format!("box {i} {b:?} is not inside [0, 1] or is empty")));
            }
            if b.class_id as usize >= OBJECT_CLASSES.len() || !(b.depth.is_finite() && b.depth > 0.0) {
                return Err(fail(format!("box {i} {b:?} has a bad class or depth")));
            }
        }
        for (i, (&s, &d)) in self.seg.iter().zip(&self.depth).enumerate() {
            let (col, row) = (i as u32 % self.width, i as u32 / self.width);
            if s as usize >= SEG_CLASSES.len() {
                return Err(fail(format!("pixel ({col}, {row}) has seg class {s}")));
            }
            if !(d.is_finite() && d > 0.0 && d <= max_depth) {
                return Err(fail(format!("pixel ({col}, {row}) has depth {d}")));
            }
            if (s == SEG_SKY) != (d == max_depth) {
                return Err(fail(format!(
                    "pixel ({col}, {row}) has seg {s} but depth {d} (sky iff depth == {max_depth})"
                )));
            }
        }
        Ok(())
    }
}

impl Scene {
    /// The truth of this scene (exact depth, not quantised).
    pub fn truth(&self) -> Truth {
        Truth {
            scene_class: self.scene_class,
            width: self.width(),
            height: self.height(),
            intrinsics: self.intrinsics,
            boxes: self.boxes.clone(),
            seg: self.seg.clone(),
            depth: self.depth.clone(),
        }
    }

    fn record(&self) -> TruthRecord {
        TruthRecord {
            scene_class: self.scene_class,
            width: self.width(),
            height: self.height(),
            intrinsics: self.intrinsics,
            boxes: self.boxes.clone(),
        }
    }
}

/// The files of one scene, ready to put.
#[derive(Clone, Debug)]
pub struct EncodedScene {
    pub image_kind: ImageKind,
    pub image: Vec<u8>,
    pub truth_json: Vec<u8>,
    pub seg_png: Vec<u8>,
    pub depth_png: Vec<u8>,
    /// What the truth JSON holds, for the split-wide label files (class CSV, COCO boxes).
    pub record: TruthRecord,
}

impl EncodedScene {
    /// Total bytes of the four files.
    pub fn len(&self) -> usize {
        self.image.len() + self.truth_json.len() + self.seg_png.len() + self.depth_png.len()
    }

    /// Never true for a real scene; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encode scene `index` (the index picks JPEG or PNG) into its four files.
pub fn encode_scene(scene: &Scene, index: u64) -> Result<EncodedScene, WorldError> {
    let kind = ImageKind::of_index(index);
    let id = format!("{index:06}");
    let mut image_bytes = Vec::new();
    let written = match kind {
        ImageKind::Jpeg => {
            scene.image.write_with_encoder(JpegEncoder::new_with_quality(&mut image_bytes, scene.jpeg_quality))
        }
        ImageKind::Png => scene.image.write_with_encoder(png_encoder(&mut image_bytes)),
    };
    written.map_err(|source| WorldError::Encode { what: format!("image {id}.{}", kind.extension()), source })?;
    let record = scene.record();
    let truth_json =
        serde_json::to_vec(&record).map_err(|source| WorldError::Json { what: format!("truth {id}.json"), source })?;
    Ok(EncodedScene {
        image_kind: kind,
        image: image_bytes,
        truth_json,
        seg_png: encode_seg_png(&scene.seg, scene.width(), scene.height())?,
        depth_png: encode_depth_png(&scene.depth, scene.width(), scene.height(), DEPTH_PNG_SCALE as f32)?,
        record,
    })
}

pub(crate) fn png_encoder(out: &mut Vec<u8>) -> PngEncoder<&mut Vec<u8>> {
    PngEncoder::new_with_quality(out, CompressionType::Default, FilterType::Adaptive)
}

/// 8-bit grayscale PNG of segmentation classes.
pub fn encode_seg_png(seg: &[u8], width: u32, height: u32) -> Result<Vec<u8>, WorldError> {
    let what = || "seg PNG".to_owned();
    let img = GrayImage::from_raw(width, height, seg.to_vec()).ok_or_else(|| WorldError::Truth {
        what: what(),
        reason: format!("{} values for a {width}x{height} image", seg.len()),
    })?;
    let mut out = Vec::new();
    img.write_with_encoder(png_encoder(&mut out)).map_err(|source| WorldError::Encode { what: what(), source })?;
    Ok(out)
}

/// 16-bit grayscale PNG of `round(depth * scale)`, clamped to 65535.
pub fn encode_depth_png(depth: &[f32], width: u32, height: u32, scale: f32) -> Result<Vec<u8>, WorldError> {
    let what = || "depth PNG".to_owned();
    let quantised: Vec<u16> = depth.iter().map(|d| (d * scale).round().clamp(0.0, u16::MAX as f32) as u16).collect();
    let img: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_raw(width, height, quantised).ok_or_else(|| {
        WorldError::Truth { what: what(), reason: format!("{} values for a {width}x{height} image", depth.len()) }
    })?;
    let mut out = Vec::new();
    img.write_with_encoder(png_encoder(&mut out)).map_err(|source| WorldError::Encode { what: what(), source })?;
    Ok(out)
}

/// Parse a truth JSON and decode its seg and depth PNGs (`depth_png_scale` from `world.json`).
pub fn decode_truth(json: &[u8], seg_png: &[u8], depth_png: &[u8], depth_png_scale: f32) -> Result<Truth, WorldError> {
    let record: TruthRecord =
        serde_json::from_slice(json).map_err(|source| WorldError::Json { what: "truth".to_owned(), source })?;
    let (w, h) = (record.width, record.height);
    let seg = match decode_png(seg_png, "seg PNG")? {
        DynamicImage::ImageLuma8(img) => img,
        other => return Err(wrong_format("seg PNG", &other, "8-bit grayscale")),
    };
    let depth = match decode_png(depth_png, "depth PNG")? {
        DynamicImage::ImageLuma16(img) => img,
        other => return Err(wrong_format("depth PNG", &other, "16-bit grayscale")),
    };
    for (what, dims) in [("seg PNG", seg.dimensions()), ("depth PNG", depth.dimensions())] {
        if dims != (w, h) {
            return Err(WorldError::Truth {
                what: what.to_owned(),
                reason: format!("is {}x{} but the truth JSON says {w}x{h}", dims.0, dims.1),
            });
        }
    }
    Ok(Truth {
        scene_class: record.scene_class,
        width: w,
        height: h,
        intrinsics: record.intrinsics,
        boxes: record.boxes,
        seg: seg.into_raw(),
        depth: depth.into_raw().into_iter().map(|v| v as f32 / depth_png_scale).collect(),
    })
}

fn decode_png(bytes: &[u8], what: &str) -> Result<DynamicImage, WorldError> {
    image::load(Cursor::new(bytes), ImageFormat::Png)
        .map_err(|source| WorldError::Decode { what: what.to_owned(), source })
}

fn wrong_format(what: &str, img: &DynamicImage, expected: &str) -> WorldError {
    WorldError::Truth {
        what: what.to_owned(),
        reason: format!("has colour type {:?}, expected {expected}", img.color()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Split, WorldConfig, MAX_DEPTH};
    use crate::render::render;

    #[test]
    fn truth_survives_encoding() {
        let cfg = WorldConfig::default();
        for index in 0..8 {
            let scene = render(&cfg, Split::Eval, index);
            let enc = encode_scene(&scene, index).unwrap();
            assert_eq!(enc.image_kind, ImageKind::of_index(index));
            let truth = decode_truth(&enc.truth_json, &enc.seg_png, &enc.depth_png, DEPTH_PNG_SCALE as f32).unwrap();
            // MAX_DEPTH survives the PNG exactly (60 000 mm), so the sky invariant holds after decoding.
            truth.check(MAX_DEPTH).unwrap();
            let exact = scene.truth();
            assert_eq!(truth.seg, exact.seg);
            assert_eq!(truth.boxes, exact.boxes);
            assert_eq!(truth.intrinsics, exact.intrinsics);
            for (a, b) in truth.depth.iter().zip(&exact.depth) {
                assert!((a - b).abs() <= 0.5 / DEPTH_PNG_SCALE as f32 + 1e-4, "{a} vs {b}");
            }
            let img = image::load_from_memory(&enc.image).unwrap();
            assert_eq!((img.width(), img.height()), (cfg.width(), cfg.height()));
        }
    }

    #[test]
    fn decode_rejects_mismatched_maps() {
        let scene = render(&WorldConfig::default(), Split::Seg, 1);
        let enc = encode_scene(&scene, 1).unwrap();
        // Swapped seg and depth: wrong bit depth must be named, not misread.
        let err = decode_truth(&enc.truth_json, &enc.depth_png, &enc.seg_png, 1000.0).unwrap_err();
        assert!(err.to_string().contains("seg PNG"), "{err}");
        let small = encode_seg_png(&[0; 16], 4, 4).unwrap();
        let err = decode_truth(&enc.truth_json, &small, &enc.depth_png, 1000.0).unwrap_err();
        assert!(format!("{err}").contains("seg PNG"), "{err}");
    }
}
