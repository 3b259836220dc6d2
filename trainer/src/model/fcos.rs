//! FCOS detection head (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection") and its
//! host-side geometry: target assignment for the loss and box decoding + NMS for evaluation.
//!
//! The paper's detection head is Mask R-CNN's (an RPN with 2 hidden convolutions, a Fast R-CNN head with
//! 4 convolutions and a fully connected layer, §3.2). Why FCOS here rather than a two-stage or RetinaNet
//! head: it is anchor-free, so there are no anchor scales/ratios to choose per dataset and no IoU-based
//! anchor matching; a location is positive when it lies in the centre region of a box whose size falls in
//! the level's range. That leaves fewer hyper-parameters to get wrong when the
//! pseudo boxes come from an arbitrary teacher, and the same head works unchanged at 128² (CPU tests) and
//! 640² (the paper's student). The variant implemented is the "FCOS imprv" one used by most codebases:
//! centre sampling (radius 1.5 strides), centerness predicted from the regression tower, regression targets
//! normalised by the level's stride, GroupNorm in the towers.
//!
//! Target assignment and decoding run on the host in plain Rust: they are small integer-heavy loops over
//! boxes and locations, easy to test by hand, and keep the tensor graph to the dense head outputs.

use tch::nn;
use tch::Tensor;

use crate::batch::BoxTarget;

/// Strides of P3–P7.
pub const STRIDES: [f32; 5] = [8.0, 16.0, 32.0, 64.0, 128.0];
/// Box-size range (largest of l, t, r, b in pixels) that each level is responsible for.
const SIZE_RANGES: [(f32, f32); 5] =
    [(0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, f32::INFINITY)];
/// Centre-sampling radius in strides.
const CENTER_RADIUS: f32 = 1.5;
/// Prior probability of the classification logits' bias at initialisation (focal-loss paper).
const PRIOR_PROB: f64 = 0.01;

/// Spatial size of one pyramid level's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelShape {
    pub h: usize,
    pub w: usize,
    pub stride: f32,
}

/// Total number of locations over all levels.
pub fn num_locations(levels: &[LevelShape]) -> usize {
    levels.iter().map(|l| l.h * l.w).sum()
}

/// Dense outputs of the head, flattened over levels in P3..P7, row-major order.
#[derive(Debug)]
pub struct DetOutput {
    /// `[B, N, K]` classification logits.
    pub cls: Tensor,
    /// `[B, N, 4]` non-negative (l, t, r, b) distances in units of the level's stride.
    pub reg: Tensor,
    /// `[B, N]` centerness logits.
    pub ctr: Tensor,
    pub levels: Vec<LevelShape>,
}

#[derive(Debug)]
struct Tower {
    layers: Vec<(nn::Conv2D, nn::GroupNorm)>,
}

fn head_conv(p: nn::Path, cin: i64, cout: i64, bias: f64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        3,
        nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
            bs_init: nn::Init::Const(bias),
            ..Default::default()
        },
    )
}

/// GroupNorm with up to 32 groups (fewer when the width multiplier leaves fewer channels).
pub(crate) fn group_norm(p: nn::Path, channels: i64) -> nn::GroupNorm {
    let mut groups = 32.min(channels);
    while channels % groups != 0 {
        groups -= 1;
    }
    nn::group_norm(p, groups, channels, Default::default())
}

impl Tower {
    fn new(p: nn::Path, channels: i64, depth: usize) -> Tower {
        let layers = (0..depth)
            .map(|i| {
                let conv = head_conv(&p / format!("conv{i}"), channels, channels, 0.0);
                (conv, group_norm(&p / format!("gn{i}"), channels))
            })
            .collect();
        Tower { layers }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut h = xs.shallow_clone();
        for (conv, gn) in &self.layers {
            h = h.apply(conv).apply(gn).relu();
        }
        h
    }
}

/// Classification and regression towers shared over P3–P7, plus one learnable scale per level.
#[derive(Debug)]
pub(crate) struct FcosHead {
    cls_tower: Tower,
    reg_tower: Tower,
    cls_logits: nn::Conv2D,
    bbox_pred: nn::Conv2D,
    centerness: nn::Conv2D,
    scales: Tensor,
}

impl FcosHead {
    pub(crate) fn new(p: nn::Path, channels: i64, num_classes: i64, tower_depth: usize) -> FcosHead {
        let prior_bias = -((1.0 - PRIOR_PROB) / PRIOR_PROB).ln();
        FcosHead {
            cls_tower: Tower::new(&p / "cls_tower", channels, tower_depth),
            reg_tower: Tower::new(&p / "reg_tower", channels, tower_depth),
            cls_logits: head_conv(&p / "cls_logits", channels, num_classes, prior_bias),
            bbox_pred: head_conv(&p / "bbox_pred", channels, 4, 0.0),
            centerness: head_conv(&p / "centerness", channels, 1, 0.0),
            scales: p.var("scales", &[STRIDES.len() as i64], nn::Init::Const(1.0)),
        }
    }

    /// `features` = [P3, ..., P7].
    pub(crate) fn forward(&self, features: &[Tensor]) -> DetOutput {
        let mut cls = Vec::with_capacity(features.len());
        let mut reg = Vec::with_capacity(features.len());
        let mut ctr = Vec::with_capacity(features.len());
        let mut levels = Vec::with_capacity(features.len());
        for (l, f) in features.iter().enumerate() {
            let size = f.size();
            levels.push(LevelShape { h: size[2] as usize, w: size[3] as usize, stride: STRIDES[l] });
            let c = self.cls_tower.forward(f);
            let r = self.reg_tower.forward(f);
            cls.push(flatten(&c.apply(&self.cls_logits)));
            reg.push(flatten(&(r.apply(&self.bbox_pred) * self.scales.get(l as i64)).relu()));
            ctr.push(flatten(&r.apply(&self.centerness)));
        }
        DetOutput {
            cls: Tensor::cat(&cls, 1),
            reg: Tensor::cat(&reg, 1),
            ctr: Tensor::cat(&ctr, 1).squeeze_dim(-1),
            levels,
        }
    }
}

/// `[B, C, H, W]` → `[B, H·W, C]`.
fn flatten(x: &Tensor) -> Tensor {
    let s = x.size();
    x.permute([0, 2, 3, 1]).reshape([s[0], s[2] * s[3], s[1]])
}

/// Per-location training targets for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct FcosTargets {
    /// `N` class ids, −1 for background.
    pub labels: Vec<i64>,
    /// `N·4` (l, t, r, b) / stride; 1.0 for background so that the (masked) IoU stays finite.
    pub ltrb: Vec<f32>,
    /// `N` centerness targets, 0 for background.
    pub centerness: Vec<f32>,
}

/// Assigns boxes to locations: a location is positive for a box when it lies inside the box and inside the
/// box's centre region (radius 1.5 strides around the centre), and the box's largest side distance falls in
/// the level's size range; ambiguous locations take the box with the smallest area.
pub fn assign_targets(boxes: &[BoxTarget], levels: &[LevelShape]) -> FcosTargets {
    let n = num_locations(levels);
    let mut labels = vec![-1i64; n];
    let mut ltrb = vec![1.0f32; n * 4];
    let mut centerness = vec![0.0f32; n];
    let mut idx = 0;
    for (li, level) in levels.iter().enumerate() {
        let (lo, hi) = SIZE_RANGES[li.min(SIZE_RANGES.len() - 1)];
        let s = level.stride;
        for i in 0..level.h {
            for j in 0..level.w {
                let x = (j as f32 + 0.5) * s;
                let y = (i as f32 + 0.5) * s;
                let mut best: Option<(f32, usize)> = None;
                for (bi, b) in boxes.iter().enumerate() {
                    let (l, t, r, bo) = (x - b.x0, y - b.y0, b.x1 - x, b.y1 - y);
                    if l.min(t).min(r).min(bo) <= 0.0 {
                        continue;
                    }
                    let cx = 0.5 * (b.x0 + b.x1);
                    let cy = 0.5 * (b.y0 + b.y1);
                    let rad = CENTER_RADIUS * s;
                    if (x - cx).abs() >= rad || (y - cy).abs() >= rad {
                        continue;
                    }
                    let m = l.max(t).max(r).max(bo);
                    if m < lo || m > hi {
                        continue;
                    }
                    let area = (b.x1 - b.x0) * (b.y1 - b.y0);
                    if best.is_none_or(|(a, _)| area < a) {
                        best = Some((area, bi));
                    }
                }
                if let Some((_, bi)) = best {
                    let b = &boxes[bi];
                    let (l, t, r, bo) = (x - b.x0, y - b.y0, b.x1 - x, b.y1 - y);
                    labels[idx] = i64::from(b.class_id);
                    ltrb[idx * 4..idx * 4 + 4].copy_from_slice(&[l / s, t / s, r / s, bo / s]);
                    centerness[idx] = ((l.min(r) / l.max(r)) * (t.min(bo) / t.max(bo))).sqrt();
                }
                idx += 1;
            }
        }
    }
    FcosTargets { labels, ltrb, centerness }
}

/// A decoded box in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    pub score: f32,
    pub class_id: u16,
}

/// Post-processing thresholds (the FCOS defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeParams {
    pub score_threshold: f32,
    pub pre_nms_top_n: usize,
    pub nms_iou: f32,
    pub max_detections: usize,
}

impl Default for DecodeParams {
    fn default() -> Self {
        DecodeParams { score_threshold: 0.05, pre_nms_top_n: 1000, nms_iou: 0.6, max_detections: 100 }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Decodes one image's head outputs (host copies: `cls` N·K logits, `reg` N·4 stride units, `ctr` N
/// logits) into boxes clipped to the `image_size`² crop, after class-wise NMS.
pub fn decode(
    cls: &[f32],
    reg: &[f32],
    ctr: &[f32],
    num_classes: usize,
    levels: &[LevelShape],
    image_size: f32,
    params: &DecodeParams,
) -> Vec<Detection> {
    let mut dets = Vec::new();
    let mut idx = 0;
    for level in levels {
        let mut cands: Vec<Detection> = Vec::new();
        for i in 0..level.h {
            for j in 0..level.w {
                let c = sigmoid(ctr[idx]);
                for k in 0..num_classes {
                    let score = (sigmoid(cls[idx * num_classes + k]) * c).sqrt();
                    if score > params.score_threshold {
                        let x = (j as f32 + 0.5) * level.stride;
                        let y = (i as f32 + 0.5) * level.stride;
                        let d = &reg[idx * 4..idx * 4 + 4];
                        let s = level.stride;
                        cands.push(Detection {
                            x0: (x - d[0] * s).clamp(0.0, image_size),
                            y0: (y - d[1] * s).clamp(0.0, image_size),
                            x1: (x + d[2] * s).clamp(0.0, image_size),
                            y1: (y + d[3] * s).clamp(0.0, image_size),
                            score,
                            class_id: k as u16,
                        });
                    }
                }
                idx += 1;
            }
        }
        cands.sort_by(|a, b| b.score.total_cmp(&a.score));
        cands.truncate(params.pre_nms_top_n);
        dets.extend(cands);
    }
    let mut kept = nms(dets, params.nms_iou);
    kept.truncate(params.max_detections);
    kept
}

/// Intersection over union of two boxes (0 for empty boxes).
pub fn iou(a: (f32, f32, f32, f32), b: (f32, f32, f32, f32)) -> f32 {
    let iw = (a.2.min(b.2) - a.0.max(b.0)).max(0.0);
    let ih = (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
    let inter = iw * ih;
    let area = |r: (f32, f32, f32, f32)| (r.2 - r.0).max(0.0) * (r.3 - r.1).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Class-wise greedy non-maximum suppression; returns the kept boxes by decreasing score.
pub fn nms(mut dets: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        let suppressed = kept.iter().any(|k| {
            k.class_id == d.class_id && iou((k.x0, k.y0, k.x1, k.y1), (d.x0, d.y0, d.x1, d.y1)) > iou_threshold
        });
        if !suppressed {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(x0: f32, y0: f32, x1: f32, y1: f32, class_id: u16) -> BoxTarget {
        BoxTarget { x0, y0, x1, y1, class_id }
    }

    #[test]
    fn small_box_is_assigned_to_p3_centre_locations_only() {
        // 32×32 image: P3 is 4×4 (locations at 4, 12, 20, 28), P4 2×2.
        let levels = [LevelShape { h: 4, w: 4, stride: 8.0 }, LevelShape { h: 2, w: 2, stride: 16.0 }];
        let t = assign_targets(&[bx(0.0, 0.0, 16.0, 16.0, 3)], &levels);
        // Inside the box and within 12 px of its centre (8, 8): P3 locations (4|12, 4|12).
        let pos: Vec<usize> = (0..t.labels.len()).filter(|&i| t.labels[i] >= 0).collect();
        assert_eq!(pos, vec![0, 1, 4, 5]);
        assert!(pos.iter().all(|&i| t.labels[i] == 3));
        // Location (4, 4): l=t=4, r=b=12 → /8 = 0.5, 1.5; centerness = sqrt(1/3 · 1/3) = 1/3.
        assert_eq!(&t.ltrb[0..4], &[0.5, 0.5, 1.5, 1.5]);
        assert!((t.centerness[0] - 1.0 / 3.0).abs() < 1e-6);
        // Location (12, 12) is symmetric in neither axis the other way round: l=t=12, r=b=4.
        assert_eq!(&t.ltrb[5 * 4..5 * 4 + 4], &[1.5, 1.5, 0.5, 0.5]);
    }

    #[test]
    fn large_box_goes_to_the_level_of_its_size_and_ambiguity_takes_the_smaller_box() {
        let levels = [LevelShape { h: 16, w: 16, stride: 8.0 }, LevelShape { h: 8, w: 8, stride: 16.0 }];
        // A 120 px box centred at (60, 60) and a 20 px box inside it.
        let t = assign_targets(&[bx(0.0, 0.0, 120.0, 120.0, 1), bx(50.0, 50.0, 70.0, 70.0, 2)], &levels);
        let n3 = 16 * 16;
        // Location (60, 60) in P3 is inside both boxes: the smaller one (class 2) wins.
        let i = 7 * 16 + 7; // (7+0.5)*8 = 60
        assert_eq!(t.labels[i], 2);
        // The big box's P4 centre locations ((3|4)·16 + 8 = 56|72 vs centre 60, within 24): max distance
        // 64 at (56, 56) is in [64, 128] → positive at P4.
        assert_eq!(t.labels[n3 + 3 * 8 + 3], 1);
    }

    #[test]
    fn nms_suppresses_same_class_overlaps_only() {
        let d =
            |x0: f32, score: f32, class_id: u16| Detection { x0, y0: 0.0, x1: x0 + 10.0, y1: 10.0, score, class_id };
        let kept = nms(vec![d(0.0, 0.9, 0), d(1.0, 0.8, 0), d(1.0, 0.7, 1), d(20.0, 0.6, 0)], 0.5);
        assert_eq!(kept, vec![d(0.0, 0.9, 0), d(1.0, 0.7, 1), d(20.0, 0.6, 0)]);
    }

    #[test]
    fn decode_inverts_assignment() {
        let levels = [LevelShape { h: 4, w: 4, stride: 8.0 }];
        let t = assign_targets(&[bx(2.0, 3.0, 18.0, 17.0, 0)], &levels);
        let n = 16;
        let cls: Vec<f32> = t.labels.iter().map(|&l| if l >= 0 { 10.0 } else { -10.0 }).collect();
        let ctr = vec![10.0; n];
        let dets = decode(&cls, &t.ltrb, &ctr, 1, &levels, 32.0, &DecodeParams::default());
        assert_eq!(dets.len(), 1);
        let d = dets[0];
        assert!((d.x0 - 2.0).abs() < 1e-4 && (d.y0 - 3.0).abs() < 1e-4);
        assert!((d.x1 - 18.0).abs() < 1e-4 && (d.y1 - 17.0).abs() < 1e-4);
    }
}
