//! Per-task losses and their weighted sum (MuST §3.2).
//!
//! Invariant kept by every loss here: a row whose label for the task is absent (`has_* = false`) adds
//! nothing, the loss is normalised by the rows that are present, and a batch with no present row gives an
//! exact 0 that is still connected to the graph (so `backward` works on any batch) — never NaN.
//!
//! - classification: cross-entropy against a distribution, `−Σ p log softmax(z)`, which is the usual
//!   cross-entropy for one-hot (supervised) rows and the distillation loss for soft (pseudo) rows;
//! - detection: FCOS — sigmoid focal loss over all locations, GIoU on positives weighted by the centerness
//!   target, BCE on centerness — normalised by the number of positive locations;
//! - segmentation: per-pixel cross-entropy, ignore id 255, averaged over each row's labelled pixels;
//! - depth: MiDaS-style scale-and-shift-invariant loss on inverse depth. Targets are first normalised per
//!   image (median 0, mean absolute deviation 1) so that the loss does not depend on the teacher's units;
//!   the prediction is then aligned to the target by per-image least squares (scale s, shift t over the
//!   valid pixels, gradients flow through s and t) and the loss is the mean absolute error.
//! - surface normals (fine-tuning only): the angular (cosine) loss `1 − cos θ` between the unit prediction
//!   and the truth, averaged over each row's valid pixels.
//!
//! The total is `L = Σ wᵢ Lᵢ` with `wᵢ = (b_s·lr_t,ᵢ)/(b_t,ᵢ·lr_s)` (or an override) computed in `config`;
//! with uncertainty weighting (Kendall et al.) each task also has a learned log-variance `sᵢ` and
//! contributes `exp(−sᵢ)·wᵢ·Lᵢ + sᵢ` (the `sᵢ` term only when the batch has rows for the task).

use std::collections::BTreeMap;

use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::batch::Batch;
pub use crate::distributed::{GlobalCount, LocalCount};
use crate::model::fcos::{self, DetOutput, LevelShape};
use crate::model::{StudentOutput, Task};

/// Segmentation ignore id.
pub const IGNORE: u8 = 255;
const FOCAL_ALPHA: f64 = 0.25;
const FOCAL_GAMMA: f64 = 2.0;
const EPS: f64 = 1e-6;

/// A batch that does not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error("batch field {field} has {got} values, expected {expected} for {size} samples of {image_size}²")]
    Shape { field: &'static str, got: usize, expected: usize, size: usize, image_size: usize },
    #[error("batch has {got} classification classes but the model predicts {expected}")]
    NumClasses { got: usize, expected: usize },
    #[error("row {row}: box class id {class_id} is outside the model's {classes} detection classes")]
    BoxClass { row: usize, class_id: u16, classes: usize },
    #[error(
        "row {row}: segmentation id {value} is outside the model's {classes} classes and is not the ignore id 255"
    )]
    SegClass { row: usize, value: u8, classes: usize },
}

/// Mean over present rows of a per-row loss: `Σ row·present / max(1, Σ present)`, the count taken over
/// the global batch by `norm` (see [`GlobalCount`]).
fn masked_mean_rows(row: &Tensor, present: &Tensor, norm: &dyn GlobalCount) -> Tensor {
    (row * present).sum(Kind::Float) / norm.denominator(&present.sum(Kind::Float), 1.0)
}

/// `logits` `[B, C]`, `probs` `[B, C]` target distributions, `present` `[B]` 0/1.
pub fn classification_loss(logits: &Tensor, probs: &Tensor, present: &Tensor, norm: &dyn GlobalCount) -> Tensor {
    let row = -(probs * logits.log_softmax(-1, Kind::Float)).sum_dim_intlist(-1, false, Kind::Float);
    masked_mean_rows(&row, present, norm)
}

/// FCOS targets for a batch, on the loss device.
#[derive(Debug)]
pub struct DetTargets {
    /// `[B, N]` class ids, −1 for background.
    pub labels: Tensor,
    /// `[B, N, 4]` (l, t, r, b) / stride.
    pub ltrb: Tensor,
    /// `[B, N]`.
    pub centerness: Tensor,
}

impl DetTargets {
    /// Assigns every row's boxes (absent rows get none).
    pub fn from_boxes(boxes: &[&[crate::batch::BoxTarget]], levels: &[LevelShape], device: Device) -> DetTargets {
        let b = boxes.len() as i64;
        let n = fcos::num_locations(levels) as i64;
        let mut labels = Vec::with_capacity((b * n) as usize);
        let mut ltrb = Vec::with_capacity((b * n * 4) as usize);
        let mut ctr = Vec::with_capacity((b * n) as usize);
        for bx in boxes {
            let t = fcos::assign_targets(bx, levels);
            labels.extend(t.labels);
            ltrb.extend(t.ltrb);
            ctr.extend(t.centerness);
        }
        DetTargets {
            labels: Tensor::from_slice(&labels).view([b, n]).to_device(device),
            ltrb: Tensor::from_slice(&ltrb).view([b, n, 4]).to_device(device),
            centerness: Tensor::from_slice(&ctr).view([b, n]).to_device(device),
        }
    }
}

/// The detection loss and its parts (for logging).
#[derive(Debug)]
pub struct DetLoss {
    pub total: Tensor,
    pub focal: Tensor,
    pub giou: Tensor,
    pub centerness: Tensor,
}

fn sigmoid_focal(logits: &Tensor, targets: &Tensor) -> Tensor {
    let p = logits.sigmoid();
    let ce = logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::None);
    let p_t: Tensor = &p * targets + (1.0 - &p) * (1.0 - targets);
    let alpha_t: Tensor = targets * FOCAL_ALPHA + (1.0 - targets) * (1.0 - FOCAL_ALPHA);
    let modulating = (-p_t + 1.0).pow_tensor_scalar(FOCAL_GAMMA);
    alpha_t * ce * modulating
}

/// Generalised IoU between boxes given as (l, t, r, b) distances from the same point; `[..., 4]` → `[...]`.
pub fn giou_ltrb(pred: &Tensor, target: &Tensor) -> Tensor {
    let p = pred.unbind(-1);
    let t = target.unbind(-1);
    let area_p = (&p[0] + &p[2]) * (&p[1] + &p[3]);
    let area_t = (&t[0] + &t[2]) * (&t[1] + &t[3]);
    let iw = p[0].minimum(&t[0]) + p[2].minimum(&t[2]);
    let ih = p[1].minimum(&t[1]) + p[3].minimum(&t[3]);
    let inter = iw * ih;
    let union = area_p + area_t - &inter;
    let iou = &inter / union.clamp_min(EPS);
    let ew = p[0].maximum(&t[0]) + p[2].maximum(&t[2]);
    let eh = p[1].maximum(&t[1]) + p[3].maximum(&t[3]);
    let enclose = (ew * eh).clamp_min(EPS);
    iou - (&enclose - union) / enclose
}

/// FCOS loss; `present` `[B]` 0/1 masks rows without detection labels.
pub fn detection_loss(out: &DetOutput, t: &DetTargets, present: &Tensor, norm: &dyn GlobalCount) -> DetLoss {
    let k = out.cls.size()[2];
    let pos = t.labels.ge(0).to_kind(Kind::Float) * present.unsqueeze(-1);
    let num_pos = norm.denominator(&pos.sum(Kind::Float), 1.0);
    let onehot = t.labels.clamp_min(0).one_hot(k).to_kind(Kind::Float) * pos.unsqueeze(-1);
    let focal_rows = sigmoid_focal(&out.cls, &onehot).sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float);
    let focal = (focal_rows * present).sum(Kind::Float) / &num_pos;
    let w = &t.centerness * &pos;
    let giou_loss: Tensor = 1.0 - giou_ltrb(&out.reg, &t.ltrb);
    let giou = (&w * giou_loss).sum(Kind::Float) / norm.denominator(&w.sum(Kind::Float), EPS);
    let ctr_bce = out.ctr.binary_cross_entropy_with_logits::<Tensor>(&t.centerness, None, None, Reduction::None);
    let centerness = (ctr_bce * &pos).sum(Kind::Float) / &num_pos;
    DetLoss { total: &focal + &giou + &centerness, focal, giou, centerness }
}

/// `logits` `[B, K, S, S]`, `target` `[B, S, S]` int64 with 255 = ignore, `present` `[B]`.
pub fn segmentation_loss(logits: &Tensor, target: &Tensor, present: &Tensor, norm: &dyn GlobalCount) -> Tensor {
    let ce = logits.cross_entropy_loss::<Tensor>(target, None, Reduction::None, i64::from(IGNORE), 0.0);
    let valid = target.ne(i64::from(IGNORE)).to_kind(Kind::Float);
    let dims = [1i64, 2].as_slice();
    let row =
        ce.sum_dim_intlist(dims, false, Kind::Float) / valid.sum_dim_intlist(dims, false, Kind::Float).clamp_min(1.0);
    masked_mean_rows(&row, present, norm)
}

/// Per-image least-squares scale and shift `(s, t)` aligning `pred` to `target` over `mask` (`[B, S, S]`
/// each, mask 0/1); returns `[B]` tensors. A constant prediction gets `s = 0` and `t` = the target mean.
pub fn align_scale_shift(pred: &Tensor, target: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
    let dims = [1i64, 2].as_slice();
    let n = mask.sum_dim_intlist(dims, false, Kind::Float).clamp_min(1.0);
    let mp = (pred * mask).sum_dim_intlist(dims, false, Kind::Float) / &n;
    let md = (target * mask).sum_dim_intlist(dims, false, Kind::Float) / &n;
    let pc = (pred - mp.view([-1, 1, 1])) * mask;
    let dc = (target - md.view([-1, 1, 1])) * mask;
    let var = (&pc * &pc).sum_dim_intlist(dims, false, Kind::Float) / &n;
    let cov = (&pc * &dc).sum_dim_intlist(dims, false, Kind::Float) / &n;
    let s = (cov / var.clamp_min(1e-12)).where_self(&var.gt(1e-12), &Tensor::zeros_like(&var));
    let t = md - &s * mp;
    (s, t)
}

/// `pred` `[B, S, S]` raw prediction, `target` `[B, S, S]` normalised inverse depth, `valid` `[B, S, S]`
/// 0/1, `present` `[B]`.
pub fn depth_loss(pred: &Tensor, target: &Tensor, valid: &Tensor, present: &Tensor, norm: &dyn GlobalCount) -> Tensor {
    let mask = valid * present.view([-1, 1, 1]);
    let (s, t) = align_scale_shift(pred, target, &mask);
    let aligned = pred * s.view([-1, 1, 1]) + t.view([-1, 1, 1]);
    let dims = [1i64, 2].as_slice();
    let n = mask.sum_dim_intlist(dims, false, Kind::Float);
    let row = ((aligned - target).abs() * &mask).sum_dim_intlist(dims, false, Kind::Float) / n.clamp_min(1.0);
    masked_mean_rows(&row, &n.gt(0.0).to_kind(Kind::Float), norm)
}

/// `pred` `[B, 3, S, S]` unit normals, `target` `[B, 3, S, S]` unit normals, `valid` `[B, S, S]` 0/1.
pub fn normals_loss(pred: &Tensor, target: &Tensor, valid: &Tensor, norm: &dyn GlobalCount) -> Tensor {
    let cos = (pred * target).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let dims = [1i64, 2].as_slice();
    let n = valid.sum_dim_intlist(dims, false, Kind::Float);
    let row = ((-cos + 1.0) * valid).sum_dim_intlist(dims, false, Kind::Float) / n.clamp_min(1.0);
    masked_mean_rows(&row, &n.gt(0.0).to_kind(Kind::Float), norm)
}

/// Normalises one image's inverse depth over its valid pixels to median 0 and mean absolute deviation 1
/// (in place). Non-finite values are marked invalid. Returns the number of valid pixels.
pub fn normalise_inverse_depth(values: &mut [f32], valid: &mut [u8]) -> usize {
    for (v, m) in values.iter().zip(valid.iter_mut()) {
        if !v.is_finite() {
            *m = 0;
        }
    }
    let mut sel: Vec<f32> = values.iter().zip(valid.iter()).filter(|(_, &m)| m != 0).map(|(&v, _)| v).collect();
    if sel.is_empty() {
        values.fill(0.0);
        return 0;
    }
    let mid = sel.len() / 2;
    let median = *sel.select_nth_unstable_by(mid, f32::total_cmp).1;
    let mad = sel.iter().map(|v| f64::from((v - median).abs())).sum::<f64>() / sel.len() as f64;
    let scale = if mad > 1e-12 { (1.0 / mad) as f32 } else { 1.0 };
    for (v, &m) in values.iter_mut().zip(valid.iter()) {
        *v = if m != 0 { (*v - median) * scale } else { 0.0 };
    }
    sel.len()
}

/// Unweighted per-task losses of one batch.
#[derive(Debug)]
pub struct TaskLosses {
    /// One entry per task with a head, in [`Task::ALL`] order.
    pub losses: Vec<(Task, Tensor)>,
    /// Rows present per task (in this process's batch).
    pub present: BTreeMap<Task, usize>,
    /// Whether any row of the global batch has the task (the same as `present > 0` in one process; over
    /// every rank's slice in data-parallel training, so every rank adds the same uncertainty terms).
    pub in_global_batch: BTreeMap<Task, bool>,
    /// Parts of composite losses, for logging (`det_focal`, `det_giou`, `det_ctr`).
    pub parts: Vec<(&'static str, Tensor)>,
}

fn present_mask(flags: &[bool], device: Device) -> Tensor {
    let v: Vec<f32> = flags.iter().map(|&f| if f { 1.0 } else { 0.0 }).collect();
    Tensor::from_slice(&v).to_device(device)
}

fn check_len(field: &'static str, got: usize, expected: usize, batch: &Batch) -> Result<(), LossError> {
    if got != expected {
        return Err(LossError::Shape { field, got, expected, size: batch.size, image_size: batch.image_size });
    }
    Ok(())
}

/// Images of a batch as a `[B, 3, S, S]` tensor on `device`.
pub fn images_tensor(batch: &Batch, device: Device) -> Result<Tensor, LossError> {
    let (b, s) = (batch.size, batch.image_size);
    check_len("images", batch.images.len(), b * 3 * s * s, batch)?;
    Ok(Tensor::from_slice(&batch.images).view([b as i64, 3, s as i64, s as i64]).to_device(device))
}

/// Computes every task's loss for a batch from the student's output on that batch; `norm` takes the
/// losses' denominators over the global batch in data-parallel training ([`LocalCount`] otherwise).
pub fn task_losses(
    out: &StudentOutput,
    batch: &Batch,
    device: Device,
    norm: &dyn GlobalCount,
) -> Result<TaskLosses, LossError> {
    let (b, s) = (batch.size, batch.image_size);
    let (bi, si) = (b as i64, s as i64);
    let mut losses = Vec::new();
    let mut parts = Vec::new();
    let mut present = BTreeMap::new();
    let count = |flags: &[bool]| flags.iter().filter(|&&f| f).count();
    if let Some(logits) = &out.cls {
        let c = logits.size()[1] as usize;
        check_len("has_cls", batch.has_cls.len(), b, batch)?;
        let n = count(&batch.has_cls);
        if n > 0 && batch.num_classes != c {
            return Err(LossError::NumClasses { got: batch.num_classes, expected: c });
        }
        let probs = if n > 0 {
            check_len("cls_probs", batch.cls_probs.len(), b * c, batch)?;
            Tensor::from_slice(&batch.cls_probs).view([bi, c as i64]).to_device(device)
        } else {
            Tensor::zeros([bi, c as i64], (Kind::Float, device))
        };
        let mask = present_mask(&batch.has_cls, device);
        losses.push((Task::Cls, classification_loss(logits, &probs, &mask, norm)));
        present.insert(Task::Cls, n);
    }
    if let Some(det) = &out.det {
        let k = det.cls.size()[2] as usize;
        check_len("has_det", batch.has_det.len(), b, batch)?;
        let empty: &[crate::batch::BoxTarget] = &[];
        let mut rows = Vec::with_capacity(b);
        for row in 0..b {
            if batch.has_det[row] {
                let boxes = batch.boxes.get(row).map(Vec::as_slice).unwrap_or(empty);
                if let Some(bad) = boxes.iter().find(|bx| usize::from(bx.class_id) >= k) {
                    return Err(LossError::BoxClass { row, class_id: bad.class_id, classes: k });
                }
                rows.push(boxes);
            } else {
                rows.push(empty);
            }
        }
        let targets = DetTargets::from_boxes(&rows, &det.levels, device);
        let mask = present_mask(&batch.has_det, device);
        let l = detection_loss(det, &targets, &mask, norm);
        parts.push(("det_focal", l.focal));
        parts.push(("det_giou", l.giou));
        parts.push(("det_ctr", l.centerness));
        losses.push((Task::Det, l.total));
        present.insert(Task::Det, count(&batch.has_det));
    }
    if let Some(logits) = &out.seg {
        let k = logits.size()[1] as usize;
        check_len("has_seg", batch.has_seg.len(), b, batch)?;
        let mut target = vec![i64::from(IGNORE); b * s * s];
        if batch.has_seg.iter().any(|&f| f) {
            check_len("seg", batch.seg.len(), b * s * s, batch)?;
        }
        for row in (0..b).filter(|&r| batch.has_seg[r]) {
            let src = &batch.seg[row * s * s..(row + 1) * s * s];
            if let Some(&bad) = src.iter().find(|&&v| v != IGNORE && usize::from(v) >= k) {
                return Err(LossError::SegClass { row, value: bad, classes: k });
            }
            for (d, &v) in target[row * s * s..(row + 1) * s * s].iter_mut().zip(src) {
                *d = i64::from(v);
            }
        }
        let target = Tensor::from_slice(&target).view([bi, si, si]).to_device(device);
        let mask = present_mask(&batch.has_seg, device);
        losses.push((Task::Seg, segmentation_loss(logits, &target, &mask, norm)));
        present.insert(Task::Seg, count(&batch.has_seg));
    }
    if let Some(pred) = &out.depth {
        check_len("has_depth", batch.has_depth.len(), b, batch)?;
        let mut target = vec![0.0f32; b * s * s];
        let mut valid = vec![0u8; b * s * s];
        if batch.has_depth.iter().any(|&f| f) {
            check_len("depth", batch.depth.len(), b * s * s, batch)?;
            check_len("depth_valid", batch.depth_valid.len(), b * s * s, batch)?;
        }
        for row in (0..b).filter(|&r| batch.has_depth[r]) {
            let r = row * s * s..(row + 1) * s * s;
            target[r.clone()].copy_from_slice(&batch.depth[r.clone()]);
            valid[r.clone()].copy_from_slice(&batch.depth_valid[r.clone()]);
            normalise_inverse_depth(&mut target[r.clone()], &mut valid[r]);
        }
        let target = Tensor::from_slice(&target).view([bi, si, si]).to_device(device);
        let valid = Tensor::from_slice(&valid).view([bi, si, si]).to_kind(Kind::Float).to_device(device);
        let mask = present_mask(&batch.has_depth, device);
        losses.push((Task::Depth, depth_loss(pred, &target, &valid, &mask, norm)));
        present.insert(Task::Depth, count(&batch.has_depth));
    }
    let local: Vec<f32> = present.values().map(|&n| n as f32).collect();
    let global = norm.denominator(&Tensor::from_slice(&local), 0.0);
    let global = Vec::<f32>::try_from(&global).unwrap_or_else(|_| vec![f32::NAN; local.len()]);
    let in_global_batch = present.keys().zip(global).map(|(&t, n)| (t, n > 0.0)).collect();
    Ok(TaskLosses { losses, present, in_global_batch, parts })
}

/// Combines task losses into the training objective: fixed weights, optionally learned uncertainty.
#[derive(Debug)]
pub struct Objective {
    weights: BTreeMap<Task, f64>,
    log_vars: Option<BTreeMap<Task, Tensor>>,
}

impl Objective {
    /// `weights` per task (missing tasks weigh 1). With `uncertainty`, one log-variance per task is created
    /// under `p` (so it is trained, checkpointed and restored with the model).
    pub fn new(p: &nn::Path, tasks: &[Task], weights: BTreeMap<Task, f64>, uncertainty: bool) -> Objective {
        let log_vars = uncertainty.then(|| {
            tasks.iter().map(|&t| (t, p.var(&format!("log_var_{}", t.as_str()), &[], nn::Init::Const(0.0)))).collect()
        });
        Objective { weights, log_vars }
    }

    /// Current effective weight of each task (`wᵢ`, times `exp(−sᵢ)` under uncertainty weighting).
    pub fn effective_weights(&self) -> BTreeMap<Task, f64> {
        let mut out = BTreeMap::new();
        for (&t, &w) in &self.weights {
            let u = self.log_vars.as_ref().and_then(|m| m.get(&t)).map_or(1.0, |s| (-s.double_value(&[])).exp());
            out.insert(t, w * u);
        }
        out
    }

    /// `L = Σ wᵢ Lᵢ` (or the uncertainty-weighted form).
    pub fn total(&self, losses: &TaskLosses) -> Tensor {
        let mut total: Option<Tensor> = None;
        for (task, l) in &losses.losses {
            let w = self.weights.get(task).copied().unwrap_or(1.0);
            let weighted = l * w;
            let term = match self.log_vars.as_ref().and_then(|m| m.get(task)) {
                Some(s) if losses.in_global_batch.get(task).copied().unwrap_or(false) => weighted * (-s).exp() + s,
                Some(s) => weighted * (-s).exp(),
                None => weighted,
            };
            total = Some(match total {
                Some(acc) => acc + term,
                None => term,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, Device::Cpu)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BoxTarget;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn scalar(x: &Tensor) -> f64 {
        x.double_value(&[])
    }

    #[test]
    fn classification_matches_cross_entropy_for_one_hot_and_masks_rows() {
        let logits = t(&[2.0, 0.0, -1.0, 0.5, 0.5, 0.5]).view([2, 3]);
        let probs = t(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view([2, 3]);
        let present = t(&[1.0, 0.0]);
        let l = scalar(&classification_loss(&logits, &probs, &present, &LocalCount));
        let expected = -(2f64.exp() / (2f64.exp() + 1.0 + (-1f64).exp())).ln();
        assert!((l - expected).abs() < 1e-5, "{l} vs {expected}");
        // A soft target: −Σ p log q.
        let soft = t(&[0.0, 0.0, 0.0, 0.5, 0.25, 0.25]).view([2, 3]);
        let l = scalar(&classification_loss(&logits, &soft, &t(&[0.0, 1.0]), &LocalCount));
        assert!((l - 3f64.ln()).abs() < 1e-5);
    }

    #[test]
    fn no_present_rows_give_zero_with_a_graph() {
        let logits = Tensor::randn([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let l = classification_loss(
            &logits,
            &Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
            &t(&[0.0, 0.0]),
            &LocalCount,
        );
        assert_eq!(scalar(&l), 0.0);
        l.backward();
        assert_eq!(scalar(&logits.grad().abs().sum(Kind::Float)), 0.0);

        let pred = Tensor::randn([2, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let l = depth_loss(
            &pred,
            &Tensor::zeros([2, 4, 4], (Kind::Float, Device::Cpu)),
            &Tensor::ones([2, 4, 4], (Kind::Float, Device::Cpu)),
            &t(&[0.0, 0.0]),
            &LocalCount,
        );
        assert_eq!(scalar(&l), 0.0);
        l.backward();
        assert!(scalar(&pred.grad().isfinite().all().to_kind(Kind::Float)) == 1.0);
    }

    #[test]
    fn segmentation_ignores_255_and_absent_rows() {
        // Two classes, 1×2 images. Row 0: pixel 0 class 1, pixel 1 ignored. Row 1 absent.
        let logits = t(&[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]).view([2, 2, 1, 2]);
        let target = Tensor::from_slice(&[1i64, 255, 255, 255]).view([2, 1, 2]);
        let l = scalar(&segmentation_loss(&logits, &target, &t(&[1.0, 0.0]), &LocalCount));
        assert!((l - 2f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn depth_loss_is_invariant_to_scale_and_shift_of_the_prediction() {
        let target = t(&[0.1, 0.5, 0.2, 0.9, 0.3, 0.4]).view([1, 2, 3]);
        let valid = Tensor::ones([1, 2, 3], (Kind::Float, Device::Cpu));
        let pred = t(&[0.2, 0.4, 0.1, 1.0, 0.3, 0.6]).view([1, 2, 3]);
        let present = t(&[1.0]);
        let a = scalar(&depth_loss(&pred, &target, &valid, &present, &LocalCount));
        let b = scalar(&depth_loss(&(&pred * 7.0 - 3.0), &target, &valid, &present, &LocalCount));
        assert!(a > 0.0 && (a - b).abs() < 1e-5, "{a} vs {b}");
        // An affine image of the target is a perfect prediction.
        let c = scalar(&depth_loss(&(&target * 2.0 + 1.0), &target, &valid, &present, &LocalCount));
        assert!(c < 1e-5);
        // Hand-computed alignment: pred (0, 1, 2) to target (1, 3, 5) → s = 2, t = 1.
        let (s, sh) = align_scale_shift(
            &t(&[0.0, 1.0, 2.0]).view([1, 1, 3]),
            &t(&[1.0, 3.0, 5.0]).view([1, 1, 3]),
            &Tensor::ones([1, 1, 3], (Kind::Float, Device::Cpu)),
        );
        assert!((scalar(&s.get(0)) - 2.0).abs() < 1e-6 && (scalar(&sh.get(0)) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn inverse_depth_normalisation() {
        let mut v = [1.0, 2.0, 3.0, 100.0, f32::NAN];
        let mut m = [1, 1, 1, 0, 1];
        assert_eq!(normalise_inverse_depth(&mut v, &mut m), 3);
        // median 2, MAD (1 + 0 + 1)/3 = 2/3.
        assert_eq!(m, [1, 1, 1, 0, 0]);
        assert!((v[0] + 1.5).abs() < 1e-6 && v[1] == 0.0 && (v[2] - 1.5).abs() < 1e-6 && v[3] == 0.0);
    }

    #[test]
    fn giou_of_identical_and_disjoint_boxes() {
        let a = t(&[1.0, 1.0, 1.0, 1.0]);
        assert!((scalar(&giou_ltrb(&a, &a)) - 1.0).abs() < 1e-6);
        // pred (l=0,t=1,r=2,b=1): box [0,2]×[-1,1]; target (2,1,0,1): box [-2,0]×[-1,1]. Touching, no overlap:
        // IoU 0, enclosure 4×2 = 8, union 8 → GIoU 0.
        let g = scalar(&giou_ltrb(&t(&[0.0, 1.0, 2.0, 1.0]), &t(&[2.0, 1.0, 0.0, 1.0])));
        assert!(g.abs() < 1e-6);
        // Half overlap: pred [0,2]×[0,2] (1,1,1,1 around (1,1)), target [1,3]×[0,2] (0,1,2,1).
        // inter 2, union 6, enclosure 6 → IoU = GIoU = 1/3.
        let g = scalar(&giou_ltrb(&t(&[1.0, 1.0, 1.0, 1.0]), &t(&[0.0, 1.0, 2.0, 1.0])));
        assert!((g - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn detection_loss_is_finite_with_and_without_boxes() {
        let levels = [LevelShape { h: 4, w: 4, stride: 8.0 }];
        let n = 16;
        let out = DetOutput {
            cls: Tensor::zeros([2, n, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true),
            reg: Tensor::zeros([2, n, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true),
            ctr: Tensor::zeros([2, n], (Kind::Float, Device::Cpu)).set_requires_grad(true),
            levels: levels.to_vec(),
        };
        let boxes = [BoxTarget { x0: 0.0, y0: 0.0, x1: 16.0, y1: 16.0, class_id: 1 }];
        let tg = DetTargets::from_boxes(&[&boxes, &[]], &levels, Device::Cpu);
        let l = detection_loss(&out, &tg, &t(&[1.0, 1.0]), &LocalCount);
        assert!(scalar(&l.total).is_finite() && scalar(&l.giou) > 0.0 && scalar(&l.focal) > 0.0);
        l.total.backward();
        assert!(scalar(&out.reg.grad().isfinite().all().to_kind(Kind::Float)) == 1.0);
        let none = detection_loss(&out, &tg, &t(&[0.0, 0.0]), &LocalCount);
        assert_eq!(scalar(&none.total), 0.0);
    }

    #[test]
    fn uncertainty_weighting_adds_log_variance_only_for_present_tasks() {
        let vs = nn::VarStore::new(Device::Cpu);
        let weights = BTreeMap::from([(Task::Cls, 2.0), (Task::Depth, 0.5)]);
        let obj = Objective::new(&vs.root(), &[Task::Cls, Task::Depth], weights.clone(), false);
        let losses = TaskLosses {
            losses: vec![(Task::Cls, t(&[3.0]).sum(Kind::Float)), (Task::Depth, t(&[4.0]).sum(Kind::Float))],
            present: BTreeMap::from([(Task::Cls, 2), (Task::Depth, 0)]),
            in_global_batch: BTreeMap::from([(Task::Cls, true), (Task::Depth, false)]),
            parts: vec![],
        };
        assert!((scalar(&obj.total(&losses)) - 8.0).abs() < 1e-6);
        let obj = Objective::new(&vs.root(), &[Task::Cls, Task::Depth], weights, true);
        // s = 0: exp(0)·w·L summed, plus s for present tasks (0): same 8.
        assert!((scalar(&obj.total(&losses)) - 8.0).abs() < 1e-6);
        assert_eq!(vs.trainable_variables().len(), 2);
    }
}
