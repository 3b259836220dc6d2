//! Turning a decoded image into a teacher's input tensor, and mapping predictions back.
//!
//! The work is split in two so the pipeline can place it well: [`resize`] (the costly part: u8 pixels, run
//! on the parallel decode workers, skipped when a teacher takes the image as it is) and [`normalize_into`]
//! (u8 → f32 with the spec's scale/mean/std, written straight into the batch tensor by the inference worker).
//!
//! Each resize policy records a `Transform` from input-tensor pixels to normalised coordinates of the
//! original image, so boxes from a letterboxed or cropped input land on the right place of the original,
//! and dense outputs (masks, depth) can be resampled back to the region of the original they cover.

use std::sync::Arc;

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::spec::{ColorOrder, Filter, Resize, TeacherSpec};

/// Maps input-tensor pixel coordinates to normalised original-image coordinates:
/// `x_norm = (x_in - offset_x) / scale_x` and likewise for y.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Input pixels per normalised unit of the original, x.
    pub scale_x: f32,
    /// Input pixels per normalised unit of the original, y.
    pub scale_y: f32,
    /// Input-pixel x of the original's left edge (positive: padding, negative: cropped away).
    pub offset_x: f32,
    /// Input-pixel y of the original's top edge.
    pub offset_y: f32,
    /// Input tensor width.
    pub width: u32,
    /// Input tensor height.
    pub height: u32,
}

impl Transform {
    /// Input-pixel x → normalised original x.
    pub fn x_to_norm(&self, x: f32) -> f32 {
        (x - self.offset_x) / self.scale_x
    }
    /// Input-pixel y → normalised original y.
    pub fn y_to_norm(&self, y: f32) -> f32 {
        (y - self.offset_y) / self.scale_y
    }
    /// The input-pixel rectangle `[x0, y0, x1, y1]` covered by the original image (clipped to the input).
    pub fn content_rect(&self) -> [f32; 4] {
        let x0 = self.offset_x.max(0.0);
        let y0 = self.offset_y.max(0.0);
        let x1 = (self.offset_x + self.scale_x).min(self.width as f32);
        let y1 = (self.offset_y + self.scale_y).min(self.height as f32);
        [x0, y0, x1, y1]
    }
}

/// One image resized for a teacher input, still u8 HWC.
#[derive(Debug, Clone)]
pub struct Resized {
    /// `height·width·3` bytes (shared by the teachers that need the same input: [`SharedResizes`]), or
    /// `None` when the input is the source image itself (no resize needed).
    pub pixels: Option<Arc<Vec<u8>>>,
    pub transform: Transform,
}

impl Resized {
    /// The HWC bytes of this input: its own, or `source`'s when it needed no resize.
    pub fn hwc<'a>(&'a self, source: &'a RgbImage) -> &'a [u8] {
        self.pixels.as_deref().map(Vec::as_slice).unwrap_or(source.as_raw())
    }
}

/// The inputs already resized from one image, so teachers that need the same input (the same resize policy,
/// filter and size; e.g. two teachers at 320×320 stretched) share one resize and one buffer.
#[derive(Default)]
pub struct SharedResizes(Vec<(ResizeKey, Resized)>);

/// What a resized input depends on besides the image: the policy, the filter and the `[h, w]` size.
type ResizeKey = (Resize, Filter, [u32; 2]);

/// [`resize`], reusing an input another teacher already needed from the same image.
pub fn resize_shared(
    img: &RgbImage,
    spec: &TeacherSpec,
    scale: f32,
    resizer: &mut Resizer,
    shared: &mut SharedResizes,
) -> Result<Resized, PreprocessError> {
    let (w, h) = img.dimensions();
    // The output is a function of the image, the policy, the filter and the input size alone.
    let key = (spec.resize, spec.filter, input_size_for(spec, w, h, scale));
    if let Some((_, r)) = shared.0.iter().find(|(k, _)| *k == key) {
        return Ok(r.clone());
    }
    let r = resize(img, spec, scale, resizer)?;
    shared.0.push((key, r.clone()));
    Ok(r)
}

/// Why preprocessing failed.
#[derive(Debug, thiserror::Error)]
#[error("resizing {from_w}x{from_h} to {to_w}x{to_h}: {message}")]
pub struct PreprocessError {
    pub from_w: u32,
    pub from_h: u32,
    pub to_w: u32,
    pub to_h: u32,
    pub message: String,
}

fn algorithm(filter: Filter) -> ResizeAlg {
    match filter {
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Filter::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
    }
}

fn round_to_multiple(v: f32, m: u32) -> u32 {
    (((v / m as f32).round() as u32).max(1)) * m
}

/// The input size `[h, w]` the spec gives an image of `w`×`h` at multi-scale factor `scale`.
pub fn input_size_for(spec: &TeacherSpec, w: u32, h: u32, scale: f32) -> [u32; 2] {
    match spec.resize {
        Resize::KeepAspect { longer, multiple } => {
            let s = longer as f32 * scale / w.max(h) as f32;
            [round_to_multiple(h as f32 * s, multiple), round_to_multiple(w as f32 * s, multiple)]
        }
        Resize::Original => [((h as f32 * scale).round() as u32).max(1), ((w as f32 * scale).round() as u32).max(1)],
        _ => {
            let [ih, iw] = spec.input_size;
            if (scale - 1.0).abs() < 1e-6 {
                [ih, iw]
            } else {
                [((ih as f32 * scale).round() as u32).max(1), ((iw as f32 * scale).round() as u32).max(1)]
            }
        }
    }
}

/// Resize `img` to `spec`'s input at multi-scale factor `scale`, with the transform back to the original.
#[allow(clippy::needless_late_init)] // each resize policy sets the transform at the end of its own branch
pub fn resize(
    img: &RgbImage,
    spec: &TeacherSpec,
    scale: f32,
    resizer: &mut Resizer,
) -> Result<Resized, PreprocessError> {
    let (w, h) = img.dimensions();
    let [ih, iw] = input_size_for(spec, w, h, scale);
    let fail = |message: String| PreprocessError { from_w: w, from_h: h, to_w: iw, to_h: ih, message };
    let alg = algorithm(spec.filter);
    let identity =
        Transform { scale_x: iw as f32, scale_y: ih as f32, offset_x: 0.0, offset_y: 0.0, width: iw, height: ih };
    if (iw, ih) == (w, h) && !matches!(spec.resize, Resize::Letterbox { .. } | Resize::ShorterSideCrop { .. }) {
        return Ok(Resized { pixels: None, transform: identity });
    }
    // Where the original lands in the input, in input pixels: (dst_x, dst_y, dst_w, dst_h) of the resized
    // image, plus an optional crop of the source.
    let mut canvas = vec![0u8; (iw * ih * 3) as usize];
    let transform;
    match spec.resize {
        Resize::Stretch | Resize::KeepAspect { .. } | Resize::Original => {
            let mut dst =
                Image::from_slice_u8(iw, ih, &mut canvas, PixelType::U8x3).map_err(|e| fail(e.to_string()))?;
            resizer.resize(img, &mut dst, &ResizeOptions::new().resize_alg(alg)).map_err(|e| fail(e.to_string()))?;
            transform = identity;
        }
        Resize::Letterbox { pad } => {
            let s = (iw as f32 / w as f32).min(ih as f32 / h as f32);
            let rw = ((w as f32 * s).round() as u32).clamp(1, iw);
            let rh = ((h as f32 * s).round() as u32).clamp(1, ih);
            let ox = (iw - rw) / 2;
            let oy = (ih - rh) / 2;
            let mut resized = Image::new(rw, rh, PixelType::U8x3);
            resizer
                .resize(img, &mut resized, &ResizeOptions::new().resize_alg(alg))
                .map_err(|e| fail(e.to_string()))?;
            canvas.fill(pad);
            let src = resized.buffer();
            for y in 0..rh {
                let from = (y * rw * 3) as usize;
                let to = (((y + oy) * iw + ox) * 3) as usize;
                canvas[to..to + (rw * 3) as usize].copy_from_slice(&src[from..from + (rw * 3) as usize]);
            }
            transform = Transform {
                scale_x: rw as f32,
                scale_y: rh as f32,
                offset_x: ox as f32,
                offset_y: oy as f32,
                width: iw,
                height: ih,
            };
        }
        Resize::ShorterSideCrop { shorter } => {
            // Resize so the shorter side is `shorter·scale`, then centre-crop `iw×ih`: equivalently crop
            // the matching source window and resize it straight to the input size.
            let s = shorter as f32 * scale / w.min(h) as f32;
            let crop_w = (iw as f32 / s).min(w as f32);
            let crop_h = (ih as f32 / s).min(h as f32);
            let left = (w as f32 - crop_w) / 2.0;
            let top = (h as f32 - crop_h) / 2.0;
            let mut dst =
                Image::from_slice_u8(iw, ih, &mut canvas, PixelType::U8x3).map_err(|e| fail(e.to_string()))?;
            let opts = ResizeOptions::new().resize_alg(alg).crop(left as f64, top as f64, crop_w as f64, crop_h as f64);
            resizer.resize(img, &mut dst, &opts).map_err(|e| fail(e.to_string()))?;
            let sx = iw as f32 / crop_w;
            let sy = ih as f32 / crop_h;
            transform = Transform {
                scale_x: sx * w as f32,
                scale_y: sy * h as f32,
                offset_x: -left * sx,
                offset_y: -top * sy,
                width: iw,
                height: ih,
            };
        }
    }
    Ok(Resized { pixels: Some(Arc::new(canvas)), transform })
}

/// HWC u8 → CHW f32 with the spec's scale, mean, std and colour order, into `out` (`3·h·w` values).
pub fn normalize_into(hwc: &[u8], spec: &TeacherSpec, out: &mut [f32]) {
    assert_eq!(hwc.len(), out.len(), "HWC bytes and CHW values differ in count");
    let plane = hwc.len() / 3;
    let order: [usize; 3] = match spec.color {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    };
    // y = (x·scale − mean) / std  =  x·a + b
    let mut a = [0f32; 3];
    let mut b = [0f32; 3];
    for c in 0..3 {
        let src = order[c];
        a[c] = spec.scale / spec.std[src];
        b[c] = -spec.mean[src] / spec.std[src];
    }
    let (r, rest) = out.split_at_mut(plane);
    let (g, bl) = rest.split_at_mut(plane);
    // Zipped iterators rather than indices: no bounds checks in the hot loop.
    for (((px, r), g), bl) in hwc.chunks_exact(3).zip(r).zip(g).zip(bl) {
        *r = px[order[0]] as f32 * a[0] + b[0];
        *g = px[order[1]] as f32 * a[1] + b[1];
        *bl = px[order[2]] as f32 * a[2] + b[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{RawTeacher, Thresholds};
    use std::path::Path;

    fn spec(extra: &str) -> TeacherSpec {
        let text = format!("name = \"t\"\nmodel = \"m.onnx\"\ntask = \"detection\"\nclasses = [\"a\"]\n{extra}");
        let raw: RawTeacher = toml::from_str(&text).unwrap();
        TeacherSpec::from_raw(raw, Path::new("t.toml"), &Thresholds::default()).unwrap()
    }

    /// One image's input tensor (CHW f32) and transform: both halves of preprocessing, as the pipeline does them.
    struct Prepared {
        chw: Vec<f32>,
        transform: Transform,
    }

    fn prepare(
        img: &RgbImage,
        spec: &TeacherSpec,
        scale: f32,
        resizer: &mut Resizer,
    ) -> Result<Prepared, PreprocessError> {
        let r = resize(img, spec, scale, resizer)?;
        let t = r.transform;
        let mut chw = vec![0f32; (3 * t.width * t.height) as usize];
        normalize_into(r.hwc(img), spec, &mut chw);
        Ok(Prepared { chw, transform: t })
    }

    fn solid(w: u32, h: u32) -> RgbImage {
        RgbImage::from_pixel(w, h, image::Rgb([200, 100, 50]))
    }

    #[test]
    fn teachers_that_need_the_same_input_share_one_resize() {
        let img = solid(64, 48);
        let b = spec(
            "input_size = [32, 32]\nresize = { kind = \"stretch\" }\noutputs = { boxes = 0, labels = 1, scores = 2 }",
        );
        let mut a = b.clone();
        let mut shared = SharedResizes::default();
        let mut resizer = Resizer::new();
        let ra = resize_shared(&img, &a, 1.0, &mut resizer, &mut shared).unwrap();
        let rb = resize_shared(&img, &b, 1.0, &mut resizer, &mut shared).unwrap();
        assert!(Arc::ptr_eq(ra.pixels.as_ref().unwrap(), rb.pixels.as_ref().unwrap()));
        // Another filter or size is another input.
        a.filter = Filter::Nearest;
        let rc = resize_shared(&img, &a, 1.0, &mut resizer, &mut shared).unwrap();
        assert!(!Arc::ptr_eq(ra.pixels.as_ref().unwrap(), rc.pixels.as_ref().unwrap()));
        let rd = resize_shared(&img, &b, 0.5, &mut resizer, &mut shared).unwrap();
        assert_eq!(rd.transform.width, 16);
        assert_eq!(ra.hwc(&img), resize(&img, &b, 1.0, &mut resizer).unwrap().hwc(&img));
    }

    #[test]
    fn letterbox_maps_corners_back_to_the_original() {
        let s = spec("input_size = [64, 64]\nresize = { kind = \"letterbox\", pad = 114 }\noutputs = { boxes = 0, labels = 1, scores = 2 }");
        let p = prepare(&solid(200, 100), &s, 1.0, &mut Resizer::new()).unwrap();
        let t = p.transform;
        // 200x100 fits as 64x32, centred vertically with 16 px of padding above.
        assert_eq!((t.scale_x, t.scale_y, t.offset_x, t.offset_y), (64.0, 32.0, 0.0, 16.0));
        assert!((t.y_to_norm(16.0) - 0.0).abs() < 1e-6 && (t.y_to_norm(48.0) - 1.0).abs() < 1e-6);
        // Padding pixels carry the pad value, normalised by scale 1/255.
        assert!((p.chw[0] - 114.0 / 255.0).abs() < 1e-6);
        let centre = (32 * 64 + 32) as usize;
        assert!((p.chw[centre] - 200.0 / 255.0).abs() < 1e-2);
    }

    #[test]
    fn centre_crop_transform_inverts() {
        let s = spec("input_size = [50, 50]\nresize = { kind = \"shorter_side_crop\", shorter = 50 }\noutputs = { boxes = 0, labels = 1, scores = 2 }");
        let p = prepare(&solid(100, 50), &s, 1.0, &mut Resizer::new()).unwrap();
        let t = p.transform;
        // The crop keeps the middle half of the width: input x=0 is original x=0.25.
        assert!((t.x_to_norm(0.0) - 0.25).abs() < 1e-6, "{t:?}");
        assert!((t.x_to_norm(50.0) - 0.75).abs() < 1e-6);
        assert!((t.y_to_norm(50.0) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn normalisation_and_bgr() {
        let s = spec("input_size = [4, 4]\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\ncolor = \"bgr\"\noutputs = { boxes = 0, labels = 1, scores = 2 }");
        let p = prepare(&solid(8, 8), &s, 1.0, &mut Resizer::new()).unwrap();
        // First plane is blue (50), normalised: (50/255 - 0.5)/0.5.
        assert!((p.chw[0] - (50.0 / 255.0 - 0.5) / 0.5).abs() < 1e-3);
        assert!((p.chw[32] - (200.0 / 255.0 - 0.5) / 0.5).abs() < 1e-3);
    }

    #[test]
    fn keep_aspect_rounds_to_multiple() {
        let s = spec("resize = { kind = \"keep_aspect\", longer = 384, multiple = 32 }\noutputs = { boxes = 0, labels = 1, scores = 2 }");
        assert_eq!(input_size_for(&s, 640, 480, 1.0), [288, 384]);
    }
}
