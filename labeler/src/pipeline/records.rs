//! Building rows: error rows with their stage and reason, and a teacher's prediction written into the
//! record with its provenance. Pure functions, shared by every stage.

use schemas::{ClsLabel, DepthLabel, DetLabel, ErrorRecord, ImageRecord, LabelSource, SegLabel, Stage};
use shards::inputs::InputEntry;

use crate::spec::TeacherSpec;
use crate::teacher::{ImageFailure, Prediction};

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
        Prediction::Detection(dets) => rec.det = Some(DetLabel { source, boxes: dets }),
        Prediction::Segmentation { height, width, mask } => {
            rec.seg = Some(SegLabel { source, height: height as u16, width: width as u16, mask })
        }
        Prediction::Depth { height, width, values } => {
            let kind = spec.depth_kind.unwrap_or(schemas::DepthKind::InverseRelative);
            rec.depth = Some(DepthLabel { source, kind, height: height as u16, width: width as u16, values })
        }
    }
}
