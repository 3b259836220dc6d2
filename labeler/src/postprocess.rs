//! Pseudo-label rules (MuST §3.1), as pure functions over teacher outputs.
//!
//! - classification: the whole distribution (softmax of logits, optionally with a temperature);
//! - detection: boxes with score ≥ the threshold, mapped back to normalised coordinates of the original
//!   image, with class-aware NMS for raw (YOLO) outputs;
//! - segmentation: per-pixel argmax of the (scale-averaged) probabilities; pixels whose max probability is
//!   below the threshold get the ignore label 255;
//! - depth: the prediction as it is, cropped to the part of the input that shows the image.

use schemas::{DetBox, SEG_IGNORE};

use crate::preprocess::Transform;
use crate::spec::ScoreKind;

/// Soft class distribution from a model's class scores.
pub fn class_distribution(scores: &[f32], kind: ScoreKind, temperature: f32) -> Vec<f32> {
    let mut out: Vec<f32> = match kind {
        ScoreKind::Logits => {
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            scores.iter().map(|&s| exp_nonpositive((s - max) / temperature)).collect()
        }
        ScoreKind::Probabilities => scores
            .iter()
            .map(|&p| if temperature == 1.0 { p.max(0.0) } else { p.max(0.0).powf(1.0 / temperature) })
            .collect(),
    };
    let sum: f32 = out.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        out.iter_mut().for_each(|p| *p /= sum);
    }
    out
}

/// `e^x` for `x ≤ 0` (softmax arguments), branch-free so loops over slices vectorise; relative error below
/// 2e-7 against `f32::exp` down to -87, and 0 below (where `e^x` is under the smallest normal float).
///
/// It stays hand-written because the standard `exp` is a scalar libm call that does not vectorise: on a
/// 21-class 320×320 segmentation output it was the largest single cost of host post-processing.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    // e^x = 2^n · e^r with n = round(x / ln 2) and |r| ≤ ln2/2; e^r by a degree-7 Taylor polynomial.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by adding 1.5·2^23, where floats are spaced by 1: `f32::round`, `f32::max` and a
    // float-to-int `as` are scalar calls or saturating sequences that would stop vectorisation.
    const ROUNDER: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = t - ROUNDER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n from the exponent bits: t's bits are ROUNDER's plus n, and n ≥ -126 here (a normal float).
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUNDER.to_bits()).wrapping_add(127) << 23);
    p * scale
}

/// Whether every value is finite, in one vectorised pass (`v · 0` is NaN exactly for NaN and ±∞).
pub fn all_finite(values: &[f32]) -> bool {
    // Eight independent lanes, so the compiler needs no reassociation to vectorise the sum.
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder().iter().map(|v| v * 0.0).sum::<f32>();
    for c in chunks {
        lanes.iter_mut().zip(c).for_each(|(l, v)| *l += v * 0.0);
    }
    lanes.iter().sum::<f32>() + tail == 0.0
}

/// In-place softmax over the class axis of a `[C, H·W]` plane set.
pub fn softmax_planes(planes: &mut [f32], classes: usize) {
    // Plane by plane rather than pixel by pixel: the loops run over contiguous memory and vectorise; each
    // pixel still sums its classes in class order, so results equal the per-pixel form.
    let n = planes.len() / classes;
    if n == 0 {
        return;
    }
    let mut max = planes[..n].to_vec();
    for plane in planes.chunks_exact(n).skip(1) {
        max.iter_mut().zip(plane).for_each(|(m, &v)| *m = m.max(v));
    }
    let mut sum = vec![0f32; n];
    for plane in planes.chunks_exact_mut(n) {
        for ((v, m), s) in plane.iter_mut().zip(&max).zip(&mut sum) {
            *v = exp_nonpositive(*v - m);
            *s += *v;
        }
    }
    for plane in planes.chunks_exact_mut(n) {
        plane.iter_mut().zip(&sum).for_each(|(v, s)| *v /= s);
    }
}

/// Segmentation mask straight from one output's logits `[C, h·w]` at the mask's own grid: the argmax of
/// the logits (that of the softmax), and the ignore label where the softmax's maximum, `1 / Σ e^(l - max)`,
/// is below `threshold`. Equal to softmax → [`mask_from_probabilities`] without writing C planes of
/// probabilities; the device post-processing graph computes the same expression.
pub fn mask_from_logits(logits: &[f32], classes: usize, threshold: f32) -> Vec<u8> {
    let n = logits.len() / classes;
    if n == 0 {
        return Vec::new();
    }
    let (max, best) = max_and_argmax(logits, n);
    let mut sum = vec![0f32; n];
    for plane in logits.chunks_exact(n) {
        for ((s, m), &v) in sum.iter_mut().zip(&max).zip(plane) {
            *s += exp_nonpositive(v - m);
        }
    }
    best.iter().zip(&sum).map(|(&b, &s)| if 1.0 / s < threshold { SEG_IGNORE } else { b as u8 }).collect()
}

/// Per pixel of `[C, n]` planes: the largest value and the first class holding it (in class order, a later
/// class must be strictly larger). Plane by plane over
/// contiguous memory, with the class index as a 32-bit lane like the values, so the loop vectorises.
fn max_and_argmax(planes: &[f32], n: usize) -> (Vec<f32>, Vec<u32>) {
    let mut max = planes[..n].to_vec();
    let mut best = vec![0u32; n];
    for (c, plane) in planes.chunks_exact(n).enumerate().skip(1) {
        for ((m, b), &v) in max.iter_mut().zip(&mut best).zip(plane) {
            let greater = v > *m;
            *m = if greater { v } else { *m };
            *b = if greater { c as u32 } else { *b };
        }
    }
    (max, best)
}

/// Bilinear resampling of `[channels, sh, sw]` planes over the source rectangle `rect` (source pixels,
/// `[x0, y0, x1, y1]`) onto a `dw`×`dh` grid, sampling at pixel centres.
pub fn resample(src: &[f32], channels: usize, sw: usize, sh: usize, rect: [f32; 4], dw: usize, dh: usize) -> Vec<f32> {
    if rect == [0.0, 0.0, sw as f32, sh as f32] && (dw, dh) == (sw, sh) {
        return src[..channels * sw * sh].to_vec();
    }
    let [x0, y0, x1, y1] = rect;
    let fx = (x1 - x0) / dw as f32;
    let fy = (y1 - y0) / dh as f32;
    let mut xs = Vec::with_capacity(dw);
    for x in 0..dw {
        let sx = (x0 + (x as f32 + 0.5) * fx - 0.5).clamp(0.0, (sw - 1) as f32);
        let l = sx.floor() as usize;
        xs.push((l, (l + 1).min(sw - 1), sx - l as f32));
    }
    let mut out = vec![0f32; channels * dw * dh];
    for c in 0..channels {
        let plane = &src[c * sw * sh..(c + 1) * sw * sh];
        for y in 0..dh {
            let sy = (y0 + (y as f32 + 0.5) * fy - 0.5).clamp(0.0, (sh - 1) as f32);
            let t = sy.floor() as usize;
            let b = (t + 1).min(sh - 1);
            let wy = sy - t as f32;
            let row_t = &plane[t * sw..(t + 1) * sw];
            let row_b = &plane[b * sw..(b + 1) * sw];
            let dst = &mut out[(c * dh + y) * dw..(c * dh + y + 1) * dw];
            for (d, &(l, r, wx)) in dst.iter_mut().zip(&xs) {
                let top = row_t[l] + (row_t[r] - row_t[l]) * wx;
                let bot = row_b[l] + (row_b[r] - row_b[l]) * wx;
                *d = top + (bot - top) * wy;
            }
        }
    }
    out
}

/// Output grid for a dense prediction: the input-pixel rectangle showing the image, and its size.
pub fn dense_grid(t: &Transform) -> ([f32; 4], usize, usize) {
    let rect = t.content_rect();
    let w = ((rect[2] - rect[0]).round() as usize).max(1);
    let h = ((rect[3] - rect[1]).round() as usize).max(1);
    (rect, w, h)
}

/// Segmentation mask from averaged class probabilities `[C, h·w]`: the first most probable class, or the
/// ignore label where that probability is below `threshold`.
pub fn mask_from_probabilities(probs: &[f32], classes: usize, threshold: f32) -> Vec<u8> {
    let n = probs.len() / classes;
    if n == 0 {
        return Vec::new();
    }
    let (max, best) = max_and_argmax(probs, n);
    best.iter().zip(&max).map(|(&b, &m)| if m < threshold { SEG_IGNORE } else { b as u8 }).collect()
}

fn iou(a: &DetBox, b: &DetBox) -> f32 {
    let iw = (a.x1.min(b.x1) - a.x0.max(b.x0)).max(0.0);
    let ih = (a.y1.min(b.y1) - a.y0.max(b.y0)).max(0.0);
    let inter = iw * ih;
    let union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Class-aware greedy NMS; input in any order, output sorted by score (descending), at most `max`.
pub fn nms(mut dets: Vec<DetBox>, iou_threshold: f32, max: usize) -> Vec<DetBox> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.class_id.cmp(&b.class_id)));
    let mut keep: Vec<DetBox> = Vec::new();
    for d in dets {
        if keep.len() >= max {
            break;
        }
        if keep.iter().all(|k| k.class_id != d.class_id || iou(k, &d) <= iou_threshold) {
            keep.push(d);
        }
    }
    keep
}

/// Map an input-pixel box to a normalised original-image box, clipped to [0,1]; `None` if it vanishes.
pub fn to_original(t: &Transform, b: [f32; 4], class_id: u16, score: f32) -> Option<DetBox> {
    let x0 = t.x_to_norm(b[0]).clamp(0.0, 1.0);
    let y0 = t.y_to_norm(b[1]).clamp(0.0, 1.0);
    let x1 = t.x_to_norm(b[2]).clamp(0.0, 1.0);
    let y1 = t.y_to_norm(b[3]).clamp(0.0, 1.0);
    let valid = x1 > x0 && y1 > y0 && score.is_finite();
    if !valid {
        return None;
    }
    Some(DetBox { x0, y0, x1, y1, class_id, score: score.clamp(0.0, 1.0) })
}

/// DetBoxs from a torchvision-style output: `boxes [K,4]` xyxy input pixels, labels and scores `[K]`.
/// Labels outside `0..classes` after `label_offset` are reported in the second return value.
#[allow(clippy::too_many_arguments)]
pub fn from_boxes_labels_scores(
    t: &Transform,
    boxes: &[f32],
    labels: &[i64],
    scores: &[f32],
    label_offset: i64,
    classes: usize,
    threshold: f32,
    max: usize,
) -> (Vec<DetBox>, usize) {
    let mut out = Vec::new();
    let mut bad_labels = 0;
    for (i, (&label, &score)) in labels.iter().zip(scores).enumerate() {
        if score < threshold {
            continue;
        }
        let class = label + label_offset;
        if class < 0 || class as usize >= classes {
            bad_labels += 1;
            continue;
        }
        let b = [boxes[i * 4], boxes[i * 4 + 1], boxes[i * 4 + 2], boxes[i * 4 + 3]];
        if let Some(d) = to_original(t, b, class as u16, score) {
            out.push(d);
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(max);
    (out, bad_labels)
}

/// DetBoxs from a raw YOLO head `[4+nc, A]` (cx, cy, w, h in input pixels, then class scores):
/// best class per anchor, threshold, class-aware NMS.
pub fn from_yolo_raw(
    t: &Transform,
    out: &[f32],
    classes: usize,
    anchors: usize,
    threshold: f32,
    iou_threshold: f32,
    max: usize,
) -> Vec<DetBox> {
    let mut dets = Vec::new();
    for a in 0..anchors {
        let (mut best, mut best_s) = (0usize, f32::NEG_INFINITY);
        for c in 0..classes {
            let s = out[(4 + c) * anchors + a];
            if s > best_s {
                best = c;
                best_s = s;
            }
        }
        if best_s < threshold {
            continue;
        }
        let (cx, cy, w, h) = (out[a], out[anchors + a], out[2 * anchors + a], out[3 * anchors + a]);
        let b = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        if let Some(d) = to_original(t, b, best as u16, best_s) {
            dets.push(d);
        }
    }
    nms(dets, iou_threshold, max)
}

/// DetBoxs from a YOLO export with NMS `[K, 6]`: x0, y0, x1, y1, score, class.
pub fn from_yolo_nms(t: &Transform, out: &[f32], classes: usize, threshold: f32, max: usize) -> Vec<DetBox> {
    let mut dets: Vec<DetBox> = out
        .chunks_exact(6)
        .filter(|r| r[4] >= threshold && r[5] >= 0.0 && (r[5] as usize) < classes)
        .filter_map(|r| to_original(t, [r[0], r[1], r[2], r[3]], r[5] as u16, r[4]))
        .collect();
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    dets.truncate(max);
    dets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(w: u32, h: u32) -> Transform {
        Transform { scale_x: w as f32, scale_y: h as f32, offset_x: 0.0, offset_y: 0.0, width: w, height: h }
    }

    #[test]
    fn softmax_with_temperature() {
        let p = class_distribution(&[0.0, 0.0, (2.0f32).ln()], ScoreKind::Logits, 1.0);
        assert!((p[2] - 0.5).abs() < 1e-6 && (p[0] - 0.25).abs() < 1e-6);
        let hot = class_distribution(&[0.0, 10.0], ScoreKind::Logits, 100.0);
        assert!(hot[1] < 0.6, "high temperature flattens: {hot:?}");
        let q = class_distribution(&[0.2, 0.8], ScoreKind::Probabilities, 1.0);
        assert_eq!(q, vec![0.2, 0.8]);
    }

    #[test]
    fn plane_softmax_equals_the_per_pixel_definition() {
        let (classes, n) = (7, 53);
        let logits: Vec<f32> = (0..classes * n).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 7.0).collect();
        let mut planes = logits.clone();
        softmax_planes(&mut planes, classes);
        for i in 0..n {
            let max = (0..classes).map(|c| logits[c * n + i]).fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = (0..classes).map(|c| exp_nonpositive(logits[c * n + i] - max)).collect();
            let sum: f32 = e.iter().sum();
            for c in 0..classes {
                assert_eq!(planes[c * n + i], e[c] / sum, "pixel {i} class {c}");
            }
        }
    }

    #[test]
    fn low_confidence_pixels_are_ignored() {
        // Two classes, three pixels: confident 0, confident 1, a 0.45/0.55 split with a 0.6 threshold.
        let probs = [0.9, 0.2, 0.45, 0.1, 0.8, 0.55];
        assert_eq!(mask_from_probabilities(&probs, 2, 0.6), vec![0, 1, SEG_IGNORE]);
        assert_eq!(mask_from_probabilities(&probs, 2, 0.5), vec![0, 1, 1]);
    }

    #[test]
    fn threshold_is_inclusive_and_labels_are_offset() {
        let t = ident(100, 100);
        let boxes = [10.0, 10.0, 50.0, 50.0, 0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 5.0, 5.0];
        let (d, bad) = from_boxes_labels_scores(&t, &boxes, &[1, 2, 9], &[0.5, 0.49, 0.9], -1, 3, 0.5, 100);
        assert_eq!(bad, 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class_id, 0);
        assert!((d[0].x0 - 0.1).abs() < 1e-6 && (d[0].x1 - 0.5).abs() < 1e-6);
    }

    #[test]
    fn nms_is_class_aware() {
        let a = DetBox { x0: 0.0, y0: 0.0, x1: 0.5, y1: 0.5, class_id: 0, score: 0.9 };
        let b = DetBox { score: 0.8, ..a };
        let c = DetBox { class_id: 1, score: 0.7, ..a };
        let kept = nms(vec![c, b, a], 0.5, 10);
        assert_eq!(kept, vec![a, c]);
    }

    #[test]
    fn yolo_raw_decodes_and_undoes_letterbox() {
        // One anchor, two classes, letterbox of a 200x100 image into 64x64 (offset_y 16, scale 64x32).
        let t = Transform { scale_x: 64.0, scale_y: 32.0, offset_x: 0.0, offset_y: 16.0, width: 64, height: 64 };
        let out = [32.0, 32.0, 32.0, 16.0, 0.1, 0.9];
        let d = from_yolo_raw(&t, &out, 2, 1, 0.5, 0.6, 10);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class_id, 1);
        assert!((d[0].x0 - 0.25).abs() < 1e-6 && (d[0].y0 - 0.25).abs() < 1e-6 && (d[0].y1 - 0.75).abs() < 1e-6);
    }

    #[test]
    fn fast_exp_matches_std() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (a, b) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-200.0), exp_nonpositive(-87.0));
    }

    #[test]
    fn all_finite_finds_nan_and_infinities() {
        let mut v = vec![1.5f32; 37];
        assert!(all_finite(&v));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            v[23] = bad;
            assert!(!all_finite(&v));
        }
        assert!(all_finite(&[]));
    }

    #[test]
    fn mask_from_logits_equals_softmax_then_mask() {
        // 3 classes over 5 pixels: clear winners, a near tie (max prob just under 0.5) and a tie.
        let logits = [
            2.0, 0.0, 0.1, 5.0, 1.0, //
            0.0, 3.0, 0.0, 5.0, 1.0, //
            -1.0, 0.0, 0.0, -9.0, 1.0,
        ];
        let mut probs = logits.to_vec();
        softmax_planes(&mut probs, 3);
        let want = mask_from_probabilities(&probs, 3, 0.5);
        assert_eq!(mask_from_logits(&logits, 3, 0.5), want);
        assert_eq!(want, vec![0, 1, SEG_IGNORE, SEG_IGNORE, SEG_IGNORE]);
    }

    #[test]
    fn resample_identity_and_crop() {
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(resample(&src, 1, 4, 4, [0.0, 0.0, 4.0, 4.0], 4, 4), src);
        let half = resample(&src, 1, 4, 4, [0.0, 0.0, 4.0, 2.0], 4, 2);
        assert_eq!(half, src[..8].to_vec());
    }
}
