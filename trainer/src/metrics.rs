//! Evaluation metrics, accumulated over a whole evaluation set, and the trivial baselines they are
//! judged against.
//!
//! - classification: top-1 accuracy against the label's arg-max. Baseline: always the majority class.
//! - detection: box AP at IoU 0.5 (VOC all-point interpolation), averaged over classes with at least
//!   one ground-truth box. Baseline: no boxes (AP 0).
//! - segmentation: mIoU over classes present in the labels or predictions, pixels labelled 255 ignored.
//!   Baseline: every pixel the most frequent class.
//! - depth: δ < 1.25 — the share of pixels whose predicted depth is within 25 % of the truth — after
//!   aligning the predicted inverse depth to the target's by per-image least-squares scale and shift
//!   (the protocol of MiDaS, whose outputs are relative); predicted depth is clipped to the image's
//!   ground-truth range. Baseline: a constant prediction (after alignment: the mean inverse depth).
//! - surface normals (fine-tuning only): the share of valid pixels whose angular error is under 11.25°
//!   (the paper's DIODE metric) and the mean angular error in degrees. Baseline: one constant normal
//!   for every pixel (fine-tuning uses the training set's mean normal).
//!
//! Everything here is plain host arithmetic over slices, so it is exact and easy to test.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::batch::BoxTarget;
use crate::model::fcos::iou;
use crate::model::Detection;

/// δ threshold.
pub const DELTA: f64 = 1.25;
/// IoU for a true positive.
pub const AP_IOU: f32 = 0.5;

/// Top-1 accuracy and the majority-class baseline.
#[derive(Debug, Default, Clone)]
pub struct ClsAccumulator {
    correct: u64,
    total: u64,
    class_counts: BTreeMap<usize, u64>,
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

impl ClsAccumulator {
    pub fn add(&mut self, logits: &[f32], target: &[f32]) {
        let truth = argmax(target);
        self.correct += u64::from(argmax(logits) == truth);
        self.total += 1;
        *self.class_counts.entry(truth).or_default() += 1;
    }
    pub fn top1(&self) -> Option<f64> {
        (self.total > 0).then(|| self.correct as f64 / self.total as f64)
    }
    pub fn majority_baseline(&self) -> Option<f64> {
        (self.total > 0).then(|| *self.class_counts.values().max().unwrap_or(&0) as f64 / self.total as f64)
    }
}

/// Box AP@0.5.
#[derive(Debug, Default, Clone)]
pub struct DetAccumulator {
    /// Per class: (score, true positive?) of every detection.
    scored: BTreeMap<u16, Vec<(f32, bool)>>,
    /// Per class: ground-truth boxes.
    gt: BTreeMap<u16, u64>,
}

impl DetAccumulator {
    /// One image: its detections and ground-truth boxes in the same pixel frame.
    pub fn add(&mut self, detections: &[Detection], truth: &[BoxTarget]) {
        for t in truth {
            *self.gt.entry(t.class_id).or_default() += 1;
        }
        let mut order: Vec<&Detection> = detections.iter().collect();
        order.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut taken = vec![false; truth.len()];
        for d in order {
            let mut best = (AP_IOU, None);
            for (i, t) in truth.iter().enumerate() {
                if t.class_id != d.class_id || taken[i] {
                    continue;
                }
                let v = iou((d.x0, d.y0, d.x1, d.y1), (t.x0, t.y0, t.x1, t.y1));
                if v >= best.0 {
                    best = (v, Some(i));
                }
            }
            if let Some(i) = best.1 {
                taken[i] = true;
            }
            self.scored.entry(d.class_id).or_default().push((d.score, best.1.is_some()));
        }
    }

    /// Mean over classes with ground truth of the all-point interpolated AP; `None` without ground truth.
    pub fn ap50(&self) -> Option<f64> {
        let aps: Vec<f64> = self
            .gt
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(class, &n)| {
                let mut dets = self.scored.get(class).cloned().unwrap_or_default();
                dets.sort_by(|a, b| b.0.total_cmp(&a.0));
                average_precision(&dets, n)
            })
            .collect();
        (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64)
    }
}

/// All-point interpolated AP of detections sorted by descending score.
fn average_precision(sorted: &[(f32, bool)], positives: u64) -> f64 {
    let mut tp = 0u64;
    let mut points = Vec::with_capacity(sorted.len());
    for (i, &(_, hit)) in sorted.iter().enumerate() {
        tp += u64::from(hit);
        points.push((tp as f64 / positives as f64, tp as f64 / (i + 1) as f64));
    }
    // Precision envelope (best precision at this recall or beyond), then the area under the recall steps.
    let mut envelope = vec![0.0f64; points.len()];
    let mut max_prec = 0.0f64;
    for (i, &(_, prec)) in points.iter().enumerate().rev() {
        max_prec = max_prec.max(prec);
        envelope[i] = max_prec;
    }
    let mut ap = 0.0;
    let mut last_recall = 0.0;
    for (i, &(recall, _)) in points.iter().enumerate() {
        if recall > last_recall {
            ap += (recall - last_recall) * envelope[i];
            last_recall = recall;
        }
    }
    ap
}

/// Segmentation confusion matrix.
#[derive(Debug, Clone)]
pub struct SegAccumulator {
    classes: usize,
    /// `confusion[truth * classes + pred]`.
    confusion: Vec<u64>,
}

impl SegAccumulator {
    pub fn new(classes: usize) -> Self {
        SegAccumulator { classes, confusion: vec![0; classes * classes] }
    }

    /// One image: predicted class per pixel and the labels (255 ignored).
    pub fn add(&mut self, pred: &[u8], truth: &[u8]) {
        for (&p, &t) in pred.iter().zip(truth) {
            let (p, t) = (usize::from(p), usize::from(t));
            if t < self.classes && p < self.classes {
                self.confusion[t * self.classes + p] += 1;
            }
        }
    }

    fn truth_counts(&self) -> Vec<u64> {
        (0..self.classes).map(|t| self.confusion[t * self.classes..(t + 1) * self.classes].iter().sum()).collect()
    }

    /// Mean IoU over classes that occur in the labels or the predictions.
    pub fn miou(&self) -> Option<f64> {
        let k = self.classes;
        let truth = self.truth_counts();
        let ious: Vec<f64> = (0..k)
            .filter_map(|c| {
                let inter = self.confusion[c * k + c];
                let pred: u64 = (0..k).map(|t| self.confusion[t * k + c]).sum();
                let union = truth[c] + pred - inter;
                (union > 0).then(|| inter as f64 / union as f64)
            })
            .collect();
        (!ious.is_empty() && truth.iter().sum::<u64>() > 0).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }

    /// mIoU of predicting the most frequent labelled class everywhere.
    pub fn constant_baseline(&self) -> Option<f64> {
        let truth = self.truth_counts();
        let total: u64 = truth.iter().sum();
        let present = truth.iter().filter(|&&n| n > 0).count();
        let best = *truth.iter().max()?;
        (total > 0).then(|| (best as f64 / total as f64) / present as f64)
    }
}

/// δ < 1.25 after scale-and-shift alignment, and the same for a constant prediction.
#[derive(Debug, Default, Clone)]
pub struct DepthAccumulator {
    good: u64,
    good_constant: u64,
    total: u64,
}

impl DepthAccumulator {
    /// One image: predicted inverse depth (any scale and shift), target inverse depth (positive where
    /// valid), validity mask.
    pub fn add(&mut self, pred: &[f32], target: &[f32], valid: &[u8]) {
        let idx: Vec<usize> = (0..target.len()).filter(|&i| valid[i] != 0 && target[i] > 0.0).collect();
        if idx.is_empty() {
            return;
        }
        let n = idx.len() as f64;
        let mp = idx.iter().map(|&i| f64::from(pred[i])).sum::<f64>() / n;
        let mt = idx.iter().map(|&i| f64::from(target[i])).sum::<f64>() / n;
        let (mut var, mut cov) = (0.0, 0.0);
        for &i in &idx {
            let dp = f64::from(pred[i]) - mp;
            var += dp * dp;
            cov += dp * (f64::from(target[i]) - mt);
        }
        let s = if var > 1e-12 { cov / var } else { 0.0 };
        let t = mt - s * mp;
        let min_inv = idx.iter().map(|&i| f64::from(target[i])).fold(f64::INFINITY, f64::min);
        let max_inv = idx.iter().map(|&i| f64::from(target[i])).fold(0.0, f64::max);
        let within = |inv_pred: f64, inv_truth: f64| {
            // Depth is 1/inverse depth; clip the prediction to the image's true depth range.
            let d = 1.0 / inv_pred.clamp(min_inv, max_inv);
            let g = 1.0 / inv_truth;
            (d / g).max(g / d) < DELTA
        };
        for &i in &idx {
            let truth = f64::from(target[i]);
            self.good += u64::from(within(s * f64::from(pred[i]) + t, truth));
            self.good_constant += u64::from(within(mt, truth));
        }
        self.total += idx.len() as u64;
    }

    pub fn delta1(&self) -> Option<f64> {
        (self.total > 0).then(|| self.good as f64 / self.total as f64)
    }
    pub fn constant_baseline(&self) -> Option<f64> {
        (self.total > 0).then(|| self.good_constant as f64 / self.total as f64)
    }
}

/// Angular error of unit surface normals over valid pixels, and of a constant normal (the baseline).
#[derive(Debug, Clone)]
pub struct NormalsAccumulator {
    constant: [f32; 3],
    under: u64,
    under_constant: u64,
    total: u64,
    sum_degrees: f64,
    sum_degrees_constant: f64,
}

/// Angle under which a normal counts as right (the DIODE protocol's 11.25°).
pub const NORMALS_THRESHOLD_DEGREES: f64 = 11.25;

fn angle_degrees(a: [f32; 3], b: [f32; 3]) -> f64 {
    let dot = f64::from(a[0] * b[0] + a[1] * b[1] + a[2] * b[2]);
    let na = f64::from(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
    let nb = f64::from(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]).sqrt();
    if na < 1e-12 || nb < 1e-12 {
        return 180.0;
    }
    (dot / (na * nb)).clamp(-1.0, 1.0).acos().to_degrees()
}

impl NormalsAccumulator {
    /// `constant`: the baseline's one prediction for every pixel (e.g. the mean training normal).
    pub fn new(constant: [f32; 3]) -> Self {
        Self { constant, under: 0, under_constant: 0, total: 0, sum_degrees: 0.0, sum_degrees_constant: 0.0 }
    }

    /// One image: `pred` and `truth` are `[3, H·W]` planes (x, y, z), `valid` is `H·W`.
    pub fn add(&mut self, pred: &[f32], truth: &[f32], valid: &[u8]) {
        let n = valid.len();
        for i in (0..n).filter(|&i| valid[i] != 0) {
            let t = [truth[i], truth[n + i], truth[2 * n + i]];
            let deg = angle_degrees([pred[i], pred[n + i], pred[2 * n + i]], t);
            let deg_constant = angle_degrees(self.constant, t);
            self.sum_degrees += deg;
            self.sum_degrees_constant += deg_constant;
            self.under += u64::from(deg < NORMALS_THRESHOLD_DEGREES);
            self.under_constant += u64::from(deg_constant < NORMALS_THRESHOLD_DEGREES);
            self.total += 1;
        }
    }

    /// Share of valid pixels under 11.25°, and the constant's share.
    pub fn under_11_25(&self) -> Option<(f64, f64)> {
        let n = self.total as f64;
        (self.total > 0).then(|| (self.under as f64 / n, self.under_constant as f64 / n))
    }

    /// Mean angular error in degrees, and the constant's.
    pub fn mean_degrees(&self) -> Option<(f64, f64)> {
        let n = self.total as f64;
        (self.total > 0).then(|| (self.sum_degrees / n, self.sum_degrees_constant / n))
    }
}

/// One metric of one task, with its trivial baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub value: f64,
    pub baseline: f64,
}

/// Names of the metrics, as logged.
pub const CLS_TOP1: &str = "cls_top1";
pub const DET_AP50: &str = "det_ap50";
pub const SEG_MIOU: &str = "seg_miou";
pub const DEPTH_DELTA1: &str = "depth_delta1";
pub const NORMALS_UNDER_11_25: &str = "normals_under_11_25";
/// Lower is better (every other metric is higher-is-better).
pub const NORMALS_MEAN_DEGREES: &str = "normals_mean_degrees";

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x0: f32, score: f32, class_id: u16) -> Detection {
        Detection { x0, y0: 0.0, x1: x0 + 10.0, y1: 10.0, score, class_id }
    }
    fn gt(x0: f32, class_id: u16) -> BoxTarget {
        BoxTarget { x0, y0: 0.0, x1: x0 + 10.0, y1: 10.0, class_id }
    }

    #[test]
    fn classification_and_majority_baseline() {
        let mut a = ClsAccumulator::default();
        a.add(&[0.1, 0.9], &[0.0, 1.0]);
        a.add(&[0.9, 0.1], &[0.0, 1.0]);
        a.add(&[0.9, 0.1], &[1.0, 0.0]);
        assert_eq!(a.top1(), Some(2.0 / 3.0));
        assert_eq!(a.majority_baseline(), Some(2.0 / 3.0));
    }

    #[test]
    fn ap_is_one_for_perfect_boxes_and_drops_with_false_positives_ranked_first() {
        let mut a = DetAccumulator::default();
        a.add(&[det(0.0, 0.9, 0), det(20.0, 0.8, 0)], &[gt(0.0, 0), gt(20.0, 0)]);
        assert!((a.ap50().unwrap() - 1.0).abs() < 1e-12);
        // A confident miss ranked above the hits: precision at the first hit is 1/2, at the second 2/3.
        let mut b = DetAccumulator::default();
        b.add(&[det(50.0, 0.95, 0), det(0.0, 0.9, 0), det(20.0, 0.8, 0)], &[gt(0.0, 0), gt(20.0, 0)]);
        assert!((b.ap50().unwrap() - (0.5 * (2.0 / 3.0) + 0.5 * (2.0 / 3.0))).abs() < 1e-9);
        // Wrong class and duplicates do not count; no detections give 0.
        let mut c = DetAccumulator::default();
        c.add(&[det(0.0, 0.9, 1), det(0.0, 0.8, 1)], &[gt(0.0, 0)]);
        c.add(&[], &[gt(0.0, 1)]);
        assert_eq!(c.ap50(), Some(0.0));
        assert_eq!(DetAccumulator::default().ap50(), None);
    }

    #[test]
    fn miou_ignores_255_and_constant_baseline_matches_its_definition() {
        let mut a = SegAccumulator::new(3);
        a.add(&[0, 0, 1, 1, 2, 2], &[0, 0, 1, 255, 2, 0]);
        // class 0: inter 2, union 3 (truth 3, pred 2); class 1: 1/1; class 2: inter 1, union 2 (a 0 taken for 2).
        assert!((a.miou().unwrap() - (2.0 / 3.0 + 1.0 + 0.5) / 3.0).abs() < 1e-12);
        // Always class 0: IoU 3/5 for class 0, 0 for classes 1 and 2.
        assert!((a.constant_baseline().unwrap() - (3.0 / 5.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn normals_angles_and_constant_baseline() {
        // Two pixels: truth up (0,-1,0) and facing the camera (0,0,-1); the third pixel is invalid.
        let truth = [0.0, 0.0, 9.0, -1.0, 0.0, 9.0, 0.0, -1.0, 9.0];
        let valid = [1, 1, 0];
        let diagonal = [0.0, -std::f32::consts::FRAC_1_SQRT_2, -std::f32::consts::FRAC_1_SQRT_2];
        let mut exact = NormalsAccumulator::new(diagonal);
        exact.add(&truth, &truth, &valid);
        assert_eq!(exact.under_11_25(), Some((1.0, 0.0)));
        let (mean, mean_constant) = exact.mean_degrees().unwrap();
        assert!(mean < 1e-3 && (mean_constant - 45.0).abs() < 1e-3, "{mean} {mean_constant}");
        // Predicting (0,-1,0) everywhere: 0° on the first pixel, 90° on the second.
        let up = [0.0, 0.0, 0.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0];
        let mut half = NormalsAccumulator::new([0.0, -1.0, 0.0]);
        half.add(&up, &truth, &valid);
        assert_eq!(half.under_11_25(), Some((0.5, 0.5)));
        assert!((half.mean_degrees().unwrap().0 - 45.0).abs() < 1e-4);
        assert_eq!(NormalsAccumulator::new(diagonal).under_11_25(), None);
    }

    #[test]
    fn depth_delta_is_invariant_to_prediction_scale_and_shift() {
        let truth: Vec<f32> = (1..=50).map(|i| 1.0 / i as f32).collect();
        let valid = vec![1u8; truth.len()];
        let mut a = DepthAccumulator::default();
        let pred: Vec<f32> = truth.iter().map(|t| 3.0 * t - 7.0).collect();
        a.add(&pred, &truth, &valid);
        assert_eq!(a.delta1(), Some(1.0));
        assert!(a.constant_baseline().unwrap() < 0.5);
        let mut b = DepthAccumulator::default();
        b.add(&vec![0.5; truth.len()], &truth, &valid);
        assert_eq!(b.delta1(), b.constant_baseline());
    }
}
