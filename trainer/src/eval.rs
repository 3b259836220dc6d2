//! Evaluation: one deterministic pass of the student over a labelled shard set, with the metrics of
//! [`crate::metrics`] and their trivial baselines side by side.
//!
//! Images are letterboxed into the evaluation square exactly as in training (no jitter, no flip), and the
//! labels go through the same transform, so predictions and labels share one pixel frame.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::batch::Batch;
use crate::data::{DataConfig, DataError, Loader, SamplerState};
use crate::error::TrainError;
use crate::loss::images_tensor;
use crate::metrics::{self, ClsAccumulator, DepthAccumulator, DetAccumulator, Score, SegAccumulator};
use crate::model::fcos::{decode, DecodeParams};
use crate::model::{Student, StudentOutput};

/// Metrics of one evaluation, keyed by metric name (`cls_top1`, `det_ap50`, `seg_miou`, `depth_delta1`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalReport {
    pub images: u64,
    pub scores: BTreeMap<String, Score>,
}

impl EvalReport {
    /// A table for people: metric, student, trivial baseline.
    pub fn table(&self) -> String {
        let mut s = format!("{:<14} {:>8} {:>10}   ({} images)\n", "metric", "student", "baseline", self.images);
        for (name, score) in &self.scores {
            let mark = if score.value > score.baseline { "" } else { "  <- not above baseline" };
            s.push_str(&format!("{name:<14} {:>8.3} {:>10.3}{mark}\n", score.value, score.baseline));
        }
        s
    }

    /// True when every metric is above its trivial baseline.
    pub fn beats_baselines(&self) -> bool {
        !self.scores.is_empty() && self.scores.values().all(|s| s.value > s.baseline)
    }
}

pub(crate) fn host_f32(t: &Tensor) -> Result<Vec<f32>, TrainError> {
    let flat = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&flat).map_err(|e| TrainError::Torch(format!("copying predictions to the host: {e}")))
}

struct Accumulators {
    cls: ClsAccumulator,
    det: DetAccumulator,
    seg: Option<SegAccumulator>,
    depth: DepthAccumulator,
}

fn accumulate(acc: &mut Accumulators, out: &StudentOutput, batch: &Batch) -> Result<(), TrainError> {
    let (b, s) = (batch.size, batch.image_size);
    if let Some(logits) = &out.cls {
        let c = logits.size()[1] as usize;
        let host = host_f32(logits)?;
        for row in (0..b).filter(|&r| batch.has_cls[r]) {
            acc.cls.add(&host[row * c..(row + 1) * c], &batch.cls_probs[row * c..(row + 1) * c]);
        }
    }
    if let Some(det) = &out.det {
        let k = det.cls.size()[2] as usize;
        let n = det.cls.size()[1] as usize;
        let (cls, reg, ctr) = (host_f32(&det.cls)?, host_f32(&det.reg)?, host_f32(&det.ctr)?);
        let params = DecodeParams::default();
        for row in (0..b).filter(|&r| batch.has_det[r]) {
            let found = decode(
                &cls[row * n * k..(row + 1) * n * k],
                &reg[row * n * 4..(row + 1) * n * 4],
                &ctr[row * n..(row + 1) * n],
                k,
                &det.levels,
                s as f32,
                &params,
            );
            acc.det.add(&found, &batch.boxes[row]);
        }
    }
    if let (Some(logits), Some(seg)) = (&out.seg, acc.seg.as_mut()) {
        let pred = logits.argmax(1, false).to_kind(Kind::Uint8).to_device(Device::Cpu).contiguous().view([-1]);
        let pred = Vec::<u8>::try_from(&pred).map_err(|e| TrainError::Torch(format!("copying masks: {e}")))?;
        for row in (0..b).filter(|&r| batch.has_seg[r]) {
            let r = row * s * s..(row + 1) * s * s;
            seg.add(&pred[r.clone()], &batch.seg[r]);
        }
    }
    if let Some(depth) = &out.depth {
        let pred = host_f32(depth)?;
        for row in (0..b).filter(|&r| batch.has_depth[r]) {
            let r = row * s * s..(row + 1) * s * s;
            acc.depth.add(&pred[r.clone()], &batch.depth[r.clone()], &batch.depth_valid[r]);
        }
    }
    Ok(())
}

/// Evaluates `student` on one pass over `data` (see [`crate::config::TrainConfig::eval_data`]), at most
/// `max_images` images.
pub fn evaluate(
    student: &Student,
    device: Device,
    data: DataConfig,
    max_images: Option<u64>,
) -> Result<EvalReport, TrainError> {
    let seg_classes = student.config().num_seg_classes;
    let mut acc = Accumulators {
        cls: ClsAccumulator::default(),
        det: DetAccumulator::default(),
        seg: seg_classes.map(SegAccumulator::new),
        depth: DepthAccumulator::default(),
    };
    let mut loader = Loader::new(data, SamplerState::default())?;
    let mut images = 0u64;
    loop {
        if max_images.is_some_and(|m| images >= m) {
            break;
        }
        let batch = match loader.next_batch() {
            Ok(b) => b,
            Err(DataError::Exhausted) => break,
            Err(e) => return Err(e.into()),
        };
        let x = images_tensor(&batch, device)?;
        let out = tch::no_grad(|| student.forward_t(&x, false));
        accumulate(&mut acc, &out, &batch)?;
        images += batch.size as u64;
    }
    let mut scores = BTreeMap::new();
    let mut put = |name: &str, value: Option<f64>, baseline: Option<f64>| {
        if let (Some(value), Some(baseline)) = (value, baseline) {
            scores.insert(name.to_owned(), Score { value, baseline });
        }
    };
    put(metrics::CLS_TOP1, acc.cls.top1(), acc.cls.majority_baseline());
    put(metrics::DET_AP50, acc.det.ap50(), acc.det.ap50().map(|_| 0.0));
    if let Some(seg) = &acc.seg {
        put(metrics::SEG_MIOU, seg.miou(), seg.constant_baseline());
    }
    put(metrics::DEPTH_DELTA1, acc.depth.delta1(), acc.depth.constant_baseline());
    Ok(EvalReport { images, scores })
}
