//! Building rows: error rows with their stage and reason, and a teacher's prediction written into the
//! record with its provenance. Pure functions, shared by every stage.

use schemas::{ClsLabel, DepthLabel, DetBox, DetLabel, ErrorRecord, ImageRecord, LabelSource, SegLabel, Stage};
use shards::inputs::InputEntry;

use crate::spec::{Task, TeacherSpec};
use crate::teacher::{ImageFailure, Prediction};

pub(super) fn schema_task(t: Task) -> schemas::Task {
    match t {
        Task::Classification => schemas::Task::Cls,
        Task::Detection => schemas::Task::Det,
        Task::Segmentation => schemas::Task::Seg,
        Task::Depth => schemas::Task::Depth,
    }
}

pub(super) fn error_record(entry: &InputEntry, uri: &str, stage: Stage, reason: &str, detail: String) -> ErrorRecord {
    ErrorRecord {
        key: entry.key.clone(),
        dataset: entry.dataset.clone(),
        source_uri: uri.to_owned(),
        stage,
        reason: reason.to_owned(),
        detail,
    }
}

/// An error row for a per-image failure inside a teacher.
pub(super) fn image_failure_record(entry: &InputEntry, uri: &str, teacher: &str, f: ImageFailure) -> ErrorRecord {
    let stage = if f.stage == "preprocess" { Stage::Preprocess } else { Stage::Postprocess };
    error_record(entry, uri, stage, f.reason, format!("teacher {teacher:?}: {}", f.detail))
}

pub(super) fn apply_prediction(rec: &mut ImageRecord, spec: &TeacherSpec, p: Prediction) {
    let source = LabelSource::pseudo(spec.name.clone());
    match p {
        Prediction::Classification(probs) => rec.cls = Some(ClsLabel { source, probs }),
        Prediction::Detection(dets) => {
            rec.det = Some(DetLabel {
                source,
                boxes: dets
                    .into_iter()
                    .map(|d| DetBox { x0: d.x0, y0: d.y0, x1: d.x1, y1: d.y1, class_id: d.class_id, score: d.score })
                    .collect(),
            })
        }
        Prediction::Segmentation { height, width, mask } => {
            rec.seg = Some(SegLabel { source, height: height as u16, width: width as u16, mask })
        }
        Prediction::Depth { height, width, values } => {
            let kind = match spec.depth_kind {
                Some(crate::spec::DepthKind::Metric) => schemas::DepthKind::Metric,
                _ => schemas::DepthKind::InverseRelative,
            };
            rec.depth = Some(DepthLabel { source, kind, height: height as u16, width: width as u16, values })
        }
    }
}
