//! Decoding and geometric augmentation of one sample, applied identically to the image and every target.
//!
//! All targets go through one [`Geometry`]: a map from source pixels to canvas pixels (fit, scale jitter,
//! crop or pad, optional flip). The image is resampled with a bilinear convolution (which also
//! anti-aliases when shrinking) on only the source region that lands in the crop; masks and depth are
//! sampled nearest at the pixel centres of the same map, so labels are never blended across object
//! edges; boxes are mapped with the same affine transform and clipped. Padding is 0 in the normalised
//! image, 255 (ignore) in the mask and invalid in depth.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use super::config::Augmentation;
use super::rng::Rng;
use super::rows::{DepthLabel, RawBox, RawRow, SegLabel};
use crate::batch::BoxTarget;

/// ImageNet statistics the images are normalised with.
pub(crate) const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub(crate) const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Boxes narrower or shorter than this many crop pixels after clipping are dropped.
pub(crate) const MIN_BOX_SIDE: f32 = 1.0;
/// Boxes with less than this fraction of their area inside the crop are dropped: the object is mostly
/// cut away and the remaining sliver is a poor target.
pub(crate) const MIN_BOX_VISIBLE: f32 = 0.25;
/// Largest decoded side and allocation accepted for one image.
const MAX_SIDE: u32 = 16_384;
const MAX_DECODED_BYTES: u64 = 512 << 20;

/// Decode an encoded image (format from content, EXIF orientation applied) into RGB8.
///
/// Panics inside decoders are contained and reported as errors, like any undecodable input.
pub(crate) fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    catch_unwind(AssertUnwindSafe(|| decode_inner(bytes))).unwrap_or_else(|_| Err("the decoder panicked".to_owned()))
}

fn decode_inner(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(format!("decoded size {} bytes is over the limit", decoder.total_bytes()));
    }
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Where one sample's source pixels land in the `size`×`size` canvas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub size: u32,
    /// Source image size.
    pub w: u32,
    pub h: u32,
    /// Size of the whole image after fit and scale jitter.
    pub sw: u32,
    pub sh: u32,
    /// Top-left of the crop window inside the scaled image.
    pub ox: u32,
    pub oy: u32,
    /// Part of the canvas covered by the image (the rest is padding, at the bottom and right).
    pub cw: u32,
    pub ch: u32,
    pub flip: bool,
}

impl Geometry {
    /// Draw the augmentation of a `w`×`h` image.
    pub(crate) fn draw(w: u32, h: u32, size: u32, aug: &Augmentation, rng: &mut Rng) -> Self {
        let fit = f64::from(size) / f64::from(w.max(h));
        let jitter = f64::from(aug.scale_min) + f64::from(aug.scale_max - aug.scale_min) * rng.unit();
        let sw = ((f64::from(w) * fit * jitter).round() as u32).max(1);
        let sh = ((f64::from(h) * fit * jitter).round() as u32).max(1);
        let ox = if sw > size { rng.below(u64::from(sw - size) + 1) as u32 } else { 0 };
        let oy = if sh > size { rng.below(u64::from(sh - size) + 1) as u32 } else { 0 };
        let flip = aug.hflip && rng.next_u64() >> 63 == 1;
        Self::new(w, h, size, sw, sh, ox, oy, flip)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(w: u32, h: u32, size: u32, sw: u32, sh: u32, ox: u32, oy: u32, flip: bool) -> Self {
        Self { size, w, h, sw, sh, ox, oy, cw: (sw - ox).min(size), ch: (sh - oy).min(size), flip }
    }

    /// Canvas column of covered column `x`.
    pub(crate) fn column(&self, x: usize) -> usize {
        if self.flip {
            self.size as usize - 1 - x
        } else {
            x
        }
    }

    /// For each covered column, the column of a `map_w`-wide full-image map under its pixel centre.
    pub(crate) fn map_columns(&self, map_w: usize) -> Vec<usize> {
        nearest(self.cw, self.ox, self.sw, map_w)
    }

    pub(crate) fn map_rows(&self, map_h: usize) -> Vec<usize> {
        nearest(self.ch, self.oy, self.sh, map_h)
    }

    /// Map, clip, filter and flip the boxes of a sample.
    pub(crate) fn boxes(&self, raw: &[RawBox]) -> Vec<BoxTarget> {
        let (sw, sh) = (self.sw as f32, self.sh as f32);
        let (ox, oy) = (self.ox as f32, self.oy as f32);
        let (cw, ch, size) = (self.cw as f32, self.ch as f32, self.size as f32);
        let mut out = Vec::with_capacity(raw.len());
        for b in raw {
            let (x0, x1) = (b.x0 * sw - ox, b.x1 * sw - ox);
            let (y0, y1) = (b.y0 * sh - oy, b.y1 * sh - oy);
            let (cx0, cx1) = (x0.clamp(0.0, cw), x1.clamp(0.0, cw));
            let (cy0, cy1) = (y0.clamp(0.0, ch), y1.clamp(0.0, ch));
            let (vw, vh) = (cx1 - cx0, cy1 - cy0);
            if vw < MIN_BOX_SIDE || vh < MIN_BOX_SIDE {
                continue;
            }
            let full = (x1 - x0) * (y1 - y0);
            if vw * vh < MIN_BOX_VISIBLE * full {
                continue;
            }
            let (fx0, fx1) = if self.flip { (size - cx1, size - cx0) } else { (cx0, cx1) };
            out.push(BoxTarget { x0: fx0, y0: cy0, x1: fx1, y1: cy1, class_id: b.class_id });
        }
        out
    }
}

/// Nearest source index under the centre of each of `n` covered pixels starting at `offset` in a
/// `scaled`-long axis, for a map `map_len` long covering the same extent.
fn nearest(n: u32, offset: u32, scaled: u32, map_len: usize) -> Vec<usize> {
    let k = map_len as f64 / f64::from(scaled);
    (0..n).map(|i| (((f64::from(offset + i) + 0.5) * k) as usize).min(map_len - 1)).collect()
}

/// Per-sample output slices inside the batch buffers.
pub(crate) struct SampleOut<'a> {
    /// `3·S·S`, zero-filled on entry.
    pub image: &'a mut [f32],
    /// `S·S`, 255-filled on entry.
    pub seg: &'a mut [u8],
    /// `S·S`, zero-filled on entry.
    pub depth: &'a mut [f32],
    /// `S·S`, zero-filled on entry.
    pub depth_valid: &'a mut [u8],
}

/// Resample `img` through `g` into `out.image`, normalised.
pub(crate) fn render_image(
    img: &RgbImage,
    g: &Geometry,
    resizer: &mut Resizer,
    image: &mut [f32],
) -> Result<(), String> {
    let (w, h) = (f64::from(g.w), f64::from(g.h));
    let kx = w / f64::from(g.sw);
    let ky = h / f64::from(g.sh);
    let left = f64::from(g.ox) * kx;
    let top = f64::from(g.oy) * ky;
    let width = (f64::from(g.cw) * kx).min(w - left);
    let height = (f64::from(g.ch) * ky).min(h - top);
    let mut dst = RgbImage::new(g.cw, g.ch);
    let options =
        ResizeOptions::new().crop(left, top, width, height).resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    resizer.resize(img, &mut dst, &options).map_err(|e| e.to_string())?;

    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = (v as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    let s = g.size as usize;
    let plane = s * s;
    let (cw, raw) = (g.cw as usize, dst.as_raw());
    for y in 0..g.ch as usize {
        let src = &raw[y * cw * 3..(y + 1) * cw * 3];
        for (x, px) in src.chunks_exact(3).enumerate() {
            let at = y * s + g.column(x);
            image[at] = lut[0][usize::from(px[0])];
            image[plane + at] = lut[1][usize::from(px[1])];
            image[2 * plane + at] = lut[2][usize::from(px[2])];
        }
    }
    Ok(())
}

/// Sample a mask through `g` (nearest) into `seg`.
pub(crate) fn render_seg(label: &SegLabel, g: &Geometry, seg: &mut [u8]) {
    let cols = g.map_columns(label.width);
    let rows = g.map_rows(label.height);
    let s = g.size as usize;
    for (y, &my) in rows.iter().enumerate() {
        let src = &label.mask[my * label.width..(my + 1) * label.width];
        for (x, &mx) in cols.iter().enumerate() {
            seg[y * s + g.column(x)] = src[mx];
        }
    }
}

/// Sample a depth map through `g` (nearest) into inverse depth and validity.
pub(crate) fn render_depth(label: &DepthLabel, g: &Geometry, depth: &mut [f32], valid: &mut [u8]) {
    let cols = g.map_columns(label.width);
    let rows = g.map_rows(label.height);
    let s = g.size as usize;
    for (y, &my) in rows.iter().enumerate() {
        let src = &label.q[my * label.width..(my + 1) * label.width];
        for (x, &mx) in cols.iter().enumerate() {
            let v = label.offset + label.scale * f32::from(src[mx]);
            let v = if label.metric {
                if v > 0.0 {
                    1.0 / v
                } else {
                    f32::NAN
                }
            } else {
                v
            };
            if v.is_finite() {
                let at = y * s + g.column(x);
                depth[at] = v;
                valid[at] = 1;
            }
        }
    }
}

/// Render every target of a decoded sample; returns its boxes.
pub(crate) fn render(
    row: &RawRow,
    img: &RgbImage,
    g: &Geometry,
    resizer: &mut Resizer,
    out: SampleOut<'_>,
) -> Result<Vec<BoxTarget>, String> {
    render_image(img, g, resizer, out.image)?;
    if let Some(seg) = &row.seg {
        render_seg(seg, g, out.seg);
    }
    if let Some(depth) = &row.depth {
        render_depth(depth, g, out.depth, out.depth_valid);
    }
    Ok(row.det.as_deref().map(|b| g.boxes(b)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rng::TAG_AUGMENT;

    const W: u32 = 200;
    const H: u32 = 120;
    /// The rectangle in source pixels: [50, 80) × [30, 70).
    const RECT: [u32; 4] = [50, 30, 80, 70];

    /// A grey image with a white rectangle, its mask at half resolution (class 3), its depth at full
    /// resolution (2 m inside, 10 m outside) and its box.
    fn sample() -> (RgbImage, RawRow) {
        let mut img = RgbImage::from_pixel(W, H, image::Rgb([40, 40, 40]));
        let inside = |x: u32, y: u32| x >= RECT[0] && x < RECT[2] && y >= RECT[1] && y < RECT[3];
        for (x, y, p) in img.enumerate_pixels_mut() {
            if inside(x, y) {
                *p = image::Rgb([250, 250, 250]);
            }
        }
        let (mw, mh) = (W / 2, H / 2);
        let mask = (0..mh).flat_map(|y| (0..mw).map(move |x| if inside(2 * x, 2 * y) { 3 } else { 0 })).collect();
        let q = (0..H).flat_map(|y| (0..W).map(move |x| if inside(x, y) { 200 } else { 1000 })).collect();
        let row = RawRow {
            dataset: 0,
            key: "k".into(),
            width: W,
            height: H,
            image: Vec::new(),
            cls: None,
            det: Some(vec![RawBox {
                x0: RECT[0] as f32 / W as f32,
                y0: RECT[1] as f32 / H as f32,
                x1: RECT[2] as f32 / W as f32,
                y1: RECT[3] as f32 / H as f32,
                class_id: 1,
            }]),
            seg: Some(SegLabel { height: mh as usize, width: mw as usize, mask }),
            depth: Some(DepthLabel {
                height: H as usize,
                width: W as usize,
                metric: true,
                q,
                offset: 0.0,
                scale: 0.01,
            }),
        };
        (img, row)
    }

    struct Out {
        image: Vec<f32>,
        seg: Vec<u8>,
        depth: Vec<f32>,
        valid: Vec<u8>,
        boxes: Vec<BoxTarget>,
    }

    fn run(g: &Geometry) -> Out {
        let (img, row) = sample();
        let ss = (g.size * g.size) as usize;
        let mut o = Out {
            image: vec![0.0; 3 * ss],
            seg: vec![255; ss],
            depth: vec![0.0; ss],
            valid: vec![0; ss],
            boxes: Vec::new(),
        };
        o.boxes = render(
            &row,
            &img,
            g,
            &mut Resizer::new(),
            SampleOut { image: &mut o.image, seg: &mut o.seg, depth: &mut o.depth, depth_valid: &mut o.valid },
        )
        .unwrap();
        o
    }

    /// Bounding box `[x0, y0, x1, y1)` of the canvas pixels where `pred` holds.
    fn extent(size: usize, pred: impl Fn(usize) -> bool) -> Option<[usize; 4]> {
        let mut e: Option<[usize; 4]> = None;
        for i in 0..size * size {
            if pred(i) {
                let (x, y) = (i % size, i / size);
                e = Some(match e {
                    None => [x, y, x + 1, y + 1],
                    Some([a, b, c, d]) => [a.min(x), b.min(y), c.max(x + 1), d.max(y + 1)],
                });
            }
        }
        e
    }

    #[test]
    fn flip_mirrors_image_mask_depth_and_box_together() {
        let size = 160;
        let plain = run(&Geometry::new(W, H, size, W, H, 20, 0, false));
        let flipped = run(&Geometry::new(W, H, size, W, H, 20, 0, true));
        let s = size as usize;
        for y in 0..s {
            for x in 0..s {
                let (a, b) = (y * s + x, y * s + s - 1 - x);
                assert_eq!(plain.seg[a], flipped.seg[b]);
                assert_eq!(plain.valid[a], flipped.valid[b]);
                assert_eq!(plain.depth[a], flipped.depth[b]);
                for c in 0..3 {
                    assert_eq!(plain.image[c * s * s + a], flipped.image[c * s * s + b]);
                }
            }
        }
        let (p, f) = (plain.boxes[0], flipped.boxes[0]);
        assert_eq!((p.x0, p.x1, p.y0, p.y1), (30.0, 60.0, 30.0, 70.0));
        assert_eq!((f.x0, f.x1, f.y0, f.y1), (size as f32 - 60.0, size as f32 - 30.0, 30.0, 70.0));
        // The rectangle moved from the left half to the right half, in every target.
        let mask = extent(s, |i| flipped.seg[i] == 3).unwrap();
        assert_eq!(mask, [100, 30, 130, 70]);
    }

    #[test]
    fn scale_jitter_keeps_box_mask_depth_and_image_aligned() {
        let aug = Augmentation::default();
        let size = 128u32;
        let s = size as usize;
        let mut kept = 0;
        for step in 0..300u64 {
            let g = Geometry::draw(W, H, size, &aug, &mut Rng::keyed(&[9, TAG_AUGMENT, step]));
            let o = run(&g);
            // Padding is ignore / invalid / zero.
            for y in 0..s {
                for x in 0..s {
                    let covered = y < g.ch as usize && (if g.flip { s - 1 - x } else { x }) < g.cw as usize;
                    let i = y * s + x;
                    assert_eq!(o.seg[i] != 255, covered, "step {step} {g:?} at {x},{y}");
                    assert_eq!(o.valid[i] == 1, covered);
                    if !covered {
                        assert_eq!(o.image[i], 0.0);
                    }
                }
            }
            let mask = extent(s, |i| o.seg[i] == 3);
            let near = extent(s, |i| o.valid[i] == 1 && (o.depth[i] - 0.5).abs() < 1e-4);
            assert_eq!(mask, near, "step {step}: mask and depth disagree under {g:?}");
            // Bright pixels (normalised red channel well above the grey) match the mask up to resampling.
            let bright = extent(s, |i| o.image[i] > 1.0);
            match (mask, o.boxes.first()) {
                (Some(m), Some(b)) => {
                    kept += 1;
                    // The box is clipped to the crop, the mask is sampled at pixel centres: within 1 px.
                    for (edge, want) in [b.x0, b.y0, b.x1, b.y1].iter().zip(m) {
                        assert!((edge - want as f32).abs() <= 1.0, "step {step}: box {b:?} vs mask {m:?}, {g:?}");
                    }
                    let bright = bright.expect("a visible rectangle is bright");
                    for (a, b) in bright.iter().zip(m) {
                        assert!((*a as i64 - b as i64).abs() <= 2, "step {step}: image {bright:?} vs mask {m:?}");
                    }
                }
                (None, Some(b)) => panic!("step {step}: box {b:?} kept with no mask pixels, {g:?}"),
                (Some(m), None) => {
                    // Dropped: the visible part must be small or thin.
                    let area = (m[2] - m[0]) * (m[3] - m[1]);
                    let full = 30.0 * 40.0 * (g.sw as f32 / W as f32) * (g.sh as f32 / H as f32);
                    assert!(
                        (area as f32) < MIN_BOX_VISIBLE * full + 2.0 * (m[2] - m[0] + m[3] - m[1]) as f32
                            || m[2] - m[0] <= 2
                            || m[3] - m[1] <= 2,
                        "step {step}: box dropped though {m:?} is visible, {g:?}"
                    );
                }
                (None, None) => {}
            }
        }
        assert!(kept > 100, "only {kept} samples kept the box");
    }

    #[test]
    fn draw_covers_the_configured_scale_range() {
        let aug = Augmentation::default();
        let (mut lo, mut hi) = (f64::MAX, 0f64);
        let mut flips = 0;
        for step in 0..2000u64 {
            let g = Geometry::draw(W, H, 100, &aug, &mut Rng::keyed(&[1, TAG_AUGMENT, step]));
            let scale = f64::from(g.sw) / 100.0;
            lo = lo.min(scale);
            hi = hi.max(scale);
            flips += usize::from(g.flip);
            assert!(g.ox + g.cw <= g.sw && g.oy + g.ch <= g.sh);
        }
        assert!(lo < 0.52 && hi > 1.98, "{lo} {hi}");
        assert!((900..1100).contains(&flips), "{flips}");
        let none = Geometry::draw(W, H, 100, &Augmentation::none(), &mut Rng::keyed(&[0]));
        assert_eq!(none, Geometry::new(W, H, 100, 100, 60, 0, 0, false));
    }

    #[test]
    fn undecodable_bytes_are_an_error_not_a_panic() {
        assert!(decode(b"not an image").is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn metric_depth_becomes_inverse_depth() {
        let g = Geometry::new(2, 1, 4, 4, 2, 0, 0, false);
        let label = DepthLabel { height: 1, width: 2, metric: true, q: vec![0, 400], offset: 0.0, scale: 0.01 };
        let (mut depth, mut valid) = (vec![0.0; 16], vec![0; 16]);
        render_depth(&label, &g, &mut depth, &mut valid);
        assert_eq!(&valid[..4], &[0, 0, 1, 1], "depth 0 is invalid");
        assert_eq!(depth[2], 0.25);
        assert_eq!(&valid[8..], &[0; 8], "padding is invalid");
    }
}
