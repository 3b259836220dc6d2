//! Records for the unit tests: one per provenance combination, small enough to read in a failure.

use crate::record::{
    ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ImageRecord, LabelSource, SegLabel, SEG_IGNORE,
};

/// Every task labelled, mixing supervised and pseudo labels, with image bytes.
pub fn full() -> ImageRecord {
    let mut r = ImageRecord::new("train/0001.jpg", "demo", "file:///data/train/0001.jpg", 640, 480);
    r.image_format = Some("jpeg".into());
    r.image = Some(vec![0xff, 0xd8, 0xff, 0xe0, 0, 1, 2, 0xff, 0xd9]);
    r.cls = Some(ClsLabel { source: LabelSource::Supervised, probs: vec![0.0, 1.0, 0.0] });
    r.det = Some(DetLabel {
        source: LabelSource::pseudo("detr"),
        boxes: vec![
            DetBox { x0: 0.1, y0: 0.2, x1: 0.5, y1: 0.9, class_id: 3, score: 0.87 },
            DetBox { x0: 0.0, y0: 0.0, x1: 1.0, y1: 1.0, class_id: 90, score: 0.5 },
        ],
    });
    r.seg = Some(SegLabel {
        source: LabelSource::pseudo("deeplab"),
        height: 2,
        width: 3,
        mask: vec![0, 0, 1, SEG_IGNORE, 20, 1],
    });
    r.depth = Some(DepthLabel {
        source: LabelSource::pseudo("midas"),
        kind: DepthKind::InverseRelative,
        height: 2,
        width: 2,
        values: vec![0.5, 1.5, 2.5, 3.0],
    });
    r
}

/// Only a soft classification label; no image bytes, everything else absent.
pub fn cls_only() -> ImageRecord {
    let mut r = ImageRecord::new("train/0002.png", "demo", "file:///data/train/0002.png", 32, 16);
    r.image_format = Some("png".into());
    r.cls = Some(ClsLabel { source: LabelSource::pseudo("resnet"), probs: vec![0.7, 0.2, 0.1] });
    r
}

/// No label at all, an empty detection label aside, and metric depth that is constant.
pub fn sparse() -> ImageRecord {
    let mut r = ImageRecord::new("val/x.webp", "other", "s3://bucket/val/x.webp", 1, 1);
    r.det = Some(DetLabel { source: LabelSource::Supervised, boxes: vec![] });
    r.depth = Some(DepthLabel {
        source: LabelSource::Supervised,
        kind: DepthKind::Metric,
        height: 1,
        width: 3,
        values: vec![4.25; 3],
    });
    r
}

pub fn all() -> Vec<ImageRecord> {
    vec![full(), cls_only(), sparse(), ImageRecord::new("k", "d", "file:///k", 5, 5)]
}

/// Whether two records are equal up to the quantisation of probabilities and depth.
pub fn assert_close(expected: &ImageRecord, got: &ImageRecord) {
    let mut a = expected.clone();
    let mut b = got.clone();
    if let (Some(x), Some(y)) = (&mut a.cls, &mut b.cls) {
        assert_eq!(x.probs.len(), y.probs.len(), "{}: cls_probs length", a.key);
        for (p, q) in x.probs.iter().zip(&y.probs) {
            assert!((p - q).abs() <= 0.5 / 65535.0 + 1e-7, "{}: cls_probs {p} vs {q}", a.key);
        }
        y.probs.clone_from(&x.probs);
    }
    if let (Some(x), Some(y)) = (&mut a.depth, &mut b.depth) {
        assert_eq!(x.values.len(), y.values.len(), "{}: depth length", a.key);
        let (lo, hi) = x.values.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let levels = ((1u32 << x.kind.stored_bits()) - 1) as f32;
        let tolerance = (hi - lo) * 0.5 / levels * 1.01 + hi.abs().max(lo.abs()) * 1e-7;
        for (p, q) in x.values.iter().zip(&y.values) {
            assert!((p - q).abs() <= tolerance, "{}: depth {p} vs {q} (tolerance {tolerance})", a.key);
        }
        y.values.clone_from(&x.values);
    }
    assert_eq!(a, b);
}
