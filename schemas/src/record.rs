//! The image record as Rust types, and the rules a record must satisfy before it is written.
//!
//! The types make the provenance rules hold by construction: a task's label is `None` exactly when its
//! origin is absent, and only a pseudo label has a teacher. What types cannot express (lengths that must
//! match dimensions, probabilities that must sum to one, boxes inside the image) is checked by
//! [`ImageRecord::validate`], which `records_to_batch` runs on every row, so no file ever holds a row
//! the trainer would have to second-guess. Values are kept as `f32` here; quantisation to the stored
//! integers happens only at the Arrow boundary.

use serde::{Deserialize, Serialize};

/// How far the sum of a class distribution may stray from 1.
pub const PROB_SUM_TOLERANCE: f32 = 1e-3;

/// The segmentation class id meaning "no label for this pixel".
pub const SEG_IGNORE: u8 = 255;

/// The four tasks of a record, in column order: the one task vocabulary of the labeler, the shards and the
/// trainer.
///
/// Stored (manifests, columns) by its short name; config files may use either the short or the long name
/// (`task = "classification"` and `task = "cls"` are the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Image classification (`cls_*` columns).
    #[serde(alias = "classification")]
    Cls,
    /// Object detection (`det_*` columns).
    #[serde(alias = "detection")]
    Det,
    /// Semantic segmentation (`seg_*` columns).
    #[serde(alias = "segmentation")]
    Seg,
    /// Depth estimation (`depth_*` columns).
    Depth,
}

impl Task {
    /// Every task, in column order.
    pub const ALL: [Task; 4] = [Task::Cls, Task::Det, Task::Seg, Task::Depth];

    /// The column prefix and manifest name: `cls`, `det`, `seg`, `depth`.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Cls => "cls",
            Task::Det => "det",
            Task::Seg => "seg",
            Task::Depth => "depth",
        }
    }

    /// The long name: `classification`, `detection`, `segmentation`, `depth` (config sections use it).
    pub fn name(self) -> &'static str {
        match self {
            Task::Cls => "classification",
            Task::Det => "detection",
            Task::Seg => "segmentation",
            Task::Depth => "depth",
        }
    }

    /// Name of the task's `<task>_origin` column.
    pub fn origin_column(self) -> &'static str {
        match self {
            Task::Cls => "cls_origin",
            Task::Det => "det_origin",
            Task::Seg => "seg_origin",
            Task::Depth => "depth_origin",
        }
    }

    /// Name of the task's `<task>_teacher` column.
    pub fn teacher_column(self) -> &'static str {
        match self {
            Task::Cls => "cls_teacher",
            Task::Det => "det_teacher",
            Task::Seg => "seg_teacher",
            Task::Depth => "depth_teacher",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a task's label came from, as stored in the `<task>_origin` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A ground-truth label from the dataset.
    Supervised,
    /// A teacher's prediction.
    Pseudo,
    /// No label for this task.
    Absent,
}

impl Origin {
    /// The value stored in `<task>_origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Supervised => "supervised",
            Origin::Pseudo => "pseudo",
            Origin::Absent => "absent",
        }
    }

    /// Parse a stored `<task>_origin` value.
    pub fn parse(s: &str) -> Option<Origin> {
        match s {
            "supervised" => Some(Origin::Supervised),
            "pseudo" => Some(Origin::Pseudo),
            "absent" => Some(Origin::Absent),
            _ => None,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The provenance of a present label: ground truth, or a named teacher's prediction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "origin", rename_all = "snake_case", deny_unknown_fields)]
pub enum LabelSource {
    /// A ground-truth label from the dataset.
    Supervised,
    /// A prediction of the teacher named `teacher` (the name in the teacher spec and the manifest).
    Pseudo { teacher: String },
}

impl LabelSource {
    /// A pseudo label from `teacher`.
    pub fn pseudo(teacher: impl Into<String>) -> Self {
        LabelSource::Pseudo { teacher: teacher.into() }
    }

    /// The stored origin of a label with this source.
    pub fn origin(&self) -> Origin {
        match self {
            LabelSource::Supervised => Origin::Supervised,
            LabelSource::Pseudo { .. } => Origin::Pseudo,
        }
    }

    /// The teacher's name for a pseudo label.
    pub fn teacher(&self) -> Option<&str> {
        match self {
            LabelSource::Supervised => None,
            LabelSource::Pseudo { teacher } => Some(teacher),
        }
    }
}

/// A classification label: the full class distribution (one-hot for supervised labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClsLabel {
    pub source: LabelSource,
    /// Probability of each class; non-negative, sums to 1 within [`PROB_SUM_TOLERANCE`].
    /// Stored quantised to 1/65535 (absolute error at most 7.7e-6).
    pub probs: Vec<f32>,
}

/// One detected or annotated object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetBox {
    /// Left edge, as a fraction of the original image width.
    pub x0: f32,
    /// Top edge, as a fraction of the original image height.
    pub y0: f32,
    /// Right edge, as a fraction of the original image width.
    pub x1: f32,
    /// Bottom edge, as a fraction of the original image height.
    pub y1: f32,
    pub class_id: u16,
    /// Teacher confidence in [0, 1]; 1 for supervised boxes.
    pub score: f32,
}

/// A detection label: every kept box (possibly none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetLabel {
    pub source: LabelSource,
    pub boxes: Vec<DetBox>,
}

/// A segmentation label: a class id per pixel, row-major, [`SEG_IGNORE`] where unlabelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegLabel {
    pub source: LabelSource,
    pub height: u16,
    pub width: u16,
    /// `height * width` class ids, row-major. Stored losslessly.
    pub mask: Vec<u8>,
}

/// What a depth map's values mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepthKind {
    /// Relative inverse depth (larger = nearer) with unknown scale and shift, as MiDaS-style teachers give.
    InverseRelative,
    /// Ground-truth depth in metres.
    Metric,
}

impl DepthKind {
    /// The value stored in `depth_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            DepthKind::InverseRelative => "inverse_relative",
            DepthKind::Metric => "metric",
        }
    }

    /// Parse a stored `depth_kind` value.
    pub fn parse(s: &str) -> Option<DepthKind> {
        match s {
            "inverse_relative" => Some(DepthKind::InverseRelative),
            "metric" => Some(DepthKind::Metric),
            _ => None,
        }
    }
}

/// A depth label: a dense map, row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthLabel {
    pub source: LabelSource,
    pub kind: DepthKind,
    pub height: u16,
    pub width: u16,
    /// `height * width` finite values, row-major. Stored quantised to [`DepthKind::stored_bits`] bits over
    /// the map's own range (absolute error at most range / 2 / (2^bits - 1)).
    pub values: Vec<f32>,
}

/// One image and everything known about it: one row of a records file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// Stable image key: the path relative to the image store's root.
    pub key: String,
    /// Name of the dataset the image belongs to.
    pub dataset: String,
    /// Full URI the image was read from.
    pub source_uri: String,
    /// Width in pixels of the original image, after EXIF orientation.
    pub width: u32,
    /// Height in pixels of the original image, after EXIF orientation.
    pub height: u32,
    /// Container format of the source bytes ("jpeg", "png", ...), as detected from content.
    pub image_format: Option<String>,
    /// The encoded bytes exactly as stored in the source, when the labeler was asked to keep them.
    pub image: Option<Vec<u8>>,
    pub cls: Option<ClsLabel>,
    pub det: Option<DetLabel>,
    pub seg: Option<SegLabel>,
    pub depth: Option<DepthLabel>,
}

/// A record that breaks a rule of the schema; `field` is the column at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// The column whose value is wrong, e.g. `cls_probs`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ValidationError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ValidationError { field, problem: problem.into() }
    }
}

impl ImageRecord {
    /// A record with no labels and no image bytes.
    pub fn new(
        key: impl Into<String>,
        dataset: impl Into<String>,
        source_uri: impl Into<String>,
        width: u32,
        height: u32,
    ) -> Self {
        ImageRecord {
            key: key.into(),
            dataset: dataset.into(),
            source_uri: source_uri.into(),
            width,
            height,
            image_format: None,
            image: None,
            cls: None,
            det: None,
            seg: None,
            depth: None,
        }
    }

    /// The stored origin of `task`'s label.
    pub fn origin(&self, task: Task) -> Origin {
        self.source(task).map_or(Origin::Absent, LabelSource::origin)
    }

    /// The source of `task`'s label, if the task is labelled.
    pub fn source(&self, task: Task) -> Option<&LabelSource> {
        match task {
            Task::Cls => self.cls.as_ref().map(|l| &l.source),
            Task::Det => self.det.as_ref().map(|l| &l.source),
            Task::Seg => self.seg.as_ref().map(|l| &l.source),
            Task::Depth => self.depth.as_ref().map(|l| &l.source),
        }
    }

    /// Check every rule of the schema that the types do not already enforce.
    ///
    /// Segmentation class ids can only be checked against a class count, which the record does not
    /// carry: see [`validate_mask_classes`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_with(PROB_SUM_TOLERANCE)
    }

    /// `validate` with a given tolerance on the probability sum (readers widen it by the quantisation error).
    pub(crate) fn validate_with(&self, prob_sum_tolerance: f32) -> Result<(), ValidationError> {
        non_empty("key", &self.key)?;
        non_empty("dataset", &self.dataset)?;
        non_empty("source_uri", &self.source_uri)?;
        if self.width == 0 {
            return Err(ValidationError::new("width", "is 0"));
        }
        if self.height == 0 {
            return Err(ValidationError::new("height", "is 0"));
        }
        if let Some(format) = &self.image_format {
            non_empty("image_format", format)?;
        }
        for task in Task::ALL {
            if let Some(LabelSource::Pseudo { teacher }) = self.source(task) {
                non_empty(task.teacher_column(), teacher)?;
            }
        }
        if let Some(cls) = &self.cls {
            validate_probs(&cls.probs, prob_sum_tolerance)?;
        }
        if let Some(det) = &self.det {
            for (i, b) in det.boxes.iter().enumerate() {
                validate_box(i, b)?;
            }
        }
        if let Some(seg) = &self.seg {
            validate_dims("seg_height", "seg_width", "seg_mask", seg.height, seg.width, seg.mask.len())?;
        }
        if let Some(depth) = &self.depth {
            validate_dims("depth_height", "depth_width", "depth_q", depth.height, depth.width, depth.values.len())?;
            if let Some(i) = depth.values.iter().position(|v| !v.is_finite()) {
                return Err(ValidationError::new("depth_q", format!("value {i} is {}", depth.values[i])));
            }
        }
        Ok(())
    }
}

/// Check that every mask value is a class id below `num_classes` or [`SEG_IGNORE`].
pub fn validate_mask_classes(mask: &[u8], num_classes: usize) -> Result<(), ValidationError> {
    match mask.iter().position(|&c| c != SEG_IGNORE && usize::from(c) >= num_classes) {
        None => Ok(()),
        Some(i) => Err(ValidationError::new(
            "seg_mask",
            format!("pixel {i} has class {}, but there are {num_classes} classes (and {SEG_IGNORE} = ignore)", mask[i]),
        )),
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "is empty"));
    }
    Ok(())
}

fn validate_probs(probs: &[f32], sum_tolerance: f32) -> Result<(), ValidationError> {
    const FIELD: &str = "cls_probs";
    if probs.is_empty() {
        return Err(ValidationError::new(FIELD, "has no classes"));
    }
    if let Some(i) = probs.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(ValidationError::new(FIELD, format!("class {i} has probability {}, outside [0, 1]", probs[i])));
    }
    let sum: f64 = probs.iter().map(|&p| f64::from(p)).sum();
    if (sum - 1.0).abs() > f64::from(sum_tolerance) {
        return Err(ValidationError::new(FIELD, format!("sums to {sum}, not 1 (tolerance {sum_tolerance})")));
    }
    Ok(())
}

fn validate_box(i: usize, b: &DetBox) -> Result<(), ValidationError> {
    const FIELD: &str = "det_boxes";
    let unit = |v: f32| (0.0..=1.0).contains(&v);
    if ![b.x0, b.y0, b.x1, b.y1].into_iter().all(unit) {
        return Err(ValidationError::new(
            FIELD,
            format!("box {i} ({}, {}, {}, {}) is not inside [0, 1]", b.x0, b.y0, b.x1, b.y1),
        ));
    }
    if b.x0 > b.x1 || b.y0 > b.y1 {
        return Err(ValidationError::new(
            FIELD,
            format!("box {i} ({}, {}, {}, {}) has x0 > x1 or y0 > y1", b.x0, b.y0, b.x1, b.y1),
        ));
    }
    if !unit(b.score) {
        return Err(ValidationError::new(FIELD, format!("box {i} has score {}, outside [0, 1]", b.score)));
    }
    Ok(())
}

fn validate_dims(
    height_field: &'static str,
    width_field: &'static str,
    values_field: &'static str,
    height: u16,
    width: u16,
    len: usize,
) -> Result<(), ValidationError> {
    if height == 0 {
        return Err(ValidationError::new(height_field, "is 0"));
    }
    if width == 0 {
        return Err(ValidationError::new(width_field, "is 0"));
    }
    let expected = usize::from(height) * usize::from(width);
    if len != expected {
        return Err(ValidationError::new(
            values_field,
            format!("has {len} values, but {height_field} x {width_field} = {height} x {width} = {expected}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn field_of(r: &ImageRecord) -> &'static str {
        r.validate().expect_err("record should be invalid").field
    }

    #[test]
    fn fixtures_are_valid() {
        for r in fixtures::all() {
            r.validate().unwrap_or_else(|e| panic!("{}: {e}", r.key));
        }
    }

    #[test]
    fn origin_follows_the_label() {
        let r = fixtures::full();
        assert_eq!(r.origin(Task::Cls), Origin::Supervised);
        assert_eq!(r.origin(Task::Det), Origin::Pseudo);
        assert_eq!(r.source(Task::Det).and_then(LabelSource::teacher), Some("detr"));
        assert_eq!(fixtures::cls_only().origin(Task::Seg), Origin::Absent);
        for o in [Origin::Supervised, Origin::Pseudo, Origin::Absent] {
            assert_eq!(Origin::parse(o.as_str()), Some(o));
        }
        assert_eq!(Origin::parse("Pseudo"), None);
    }

    #[test]
    fn rejects_bad_identity_fields() {
        let mut r = fixtures::full();
        r.key.clear();
        assert_eq!(field_of(&r), "key");
        let mut r = fixtures::full();
        r.dataset.clear();
        assert_eq!(field_of(&r), "dataset");
        let mut r = fixtures::full();
        r.width = 0;
        assert_eq!(field_of(&r), "width");
        let mut r = fixtures::full();
        r.height = 0;
        assert_eq!(field_of(&r), "height");
        let mut r = fixtures::full();
        r.image_format = Some(String::new());
        assert_eq!(field_of(&r), "image_format");
    }

    #[test]
    fn rejects_pseudo_label_without_teacher_name() {
        let mut r = fixtures::full();
        r.seg.as_mut().unwrap().source = LabelSource::pseudo("");
        assert_eq!(field_of(&r), "seg_teacher");
    }

    #[test]
    fn rejects_bad_distributions() {
        let cases: [Vec<f32>; 5] = [vec![], vec![0.5, 0.6], vec![1.5, -0.5], vec![f32::NAN, 1.0], vec![0.4, 0.4]];
        for probs in cases {
            let mut r = fixtures::cls_only();
            r.cls.as_mut().unwrap().probs = probs.clone();
            assert_eq!(field_of(&r), "cls_probs", "{probs:?}");
        }
        let mut r = fixtures::cls_only();
        r.cls.as_mut().unwrap().probs = vec![0.5, 0.5 + PROB_SUM_TOLERANCE * 0.9];
        r.validate().unwrap();
    }

    #[test]
    fn rejects_bad_boxes() {
        let good = DetBox { x0: 0.1, y0: 0.1, x1: 0.2, y1: 0.2, class_id: 1, score: 0.9 };
        let bad = [
            DetBox { x0: -0.1, ..good },
            DetBox { y1: 1.01, ..good },
            DetBox { x0: 0.3, ..good },
            DetBox { y0: 0.3, ..good },
            DetBox { score: 1.5, ..good },
            DetBox { x1: f32::NAN, ..good },
        ];
        for b in bad {
            let mut r = fixtures::full();
            r.det.as_mut().unwrap().boxes.push(b);
            let err = r.validate().unwrap_err();
            assert_eq!(err.field, "det_boxes", "{b:?}");
            assert!(err.problem.contains("box 2"), "{err}");
        }
    }

    #[test]
    fn rejects_mask_of_wrong_size() {
        let mut r = fixtures::full();
        r.seg.as_mut().unwrap().mask.pop();
        assert_eq!(field_of(&r), "seg_mask");
        let mut r = fixtures::full();
        r.seg.as_mut().unwrap().height = 0;
        assert_eq!(field_of(&r), "seg_height");
        let mut r = fixtures::full();
        r.seg.as_mut().unwrap().width = 0;
        assert_eq!(field_of(&r), "seg_width");
    }

    #[test]
    fn rejects_bad_depth() {
        let mut r = fixtures::full();
        r.depth.as_mut().unwrap().values.push(1.0);
        assert_eq!(field_of(&r), "depth_q");
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut r = fixtures::full();
            r.depth.as_mut().unwrap().values[3] = v;
            let err = r.validate().unwrap_err();
            assert_eq!(err.field, "depth_q");
            assert!(err.problem.contains("value 3"), "{err}");
        }
        let mut r = fixtures::full();
        r.depth.as_mut().unwrap().width = 0;
        assert_eq!(field_of(&r), "depth_width");
    }

    #[test]
    fn mask_classes_are_checked_against_the_class_count() {
        let mask = [0, 1, 20, SEG_IGNORE];
        validate_mask_classes(&mask, 21).unwrap();
        let err = validate_mask_classes(&mask, 20).unwrap_err();
        assert_eq!(err.field, "seg_mask");
        assert!(err.problem.contains("pixel 2 has class 20"), "{err}");
        validate_mask_classes(&[SEG_IGNORE], 0).unwrap();
    }

    #[test]
    fn label_source_serialises_with_origin_tag() {
        let json = serde_json::to_string(&LabelSource::pseudo("t")).unwrap();
        assert_eq!(json, r#"{"origin":"pseudo","teacher":"t"}"#);
        assert_eq!(serde_json::to_string(&LabelSource::Supervised).unwrap(), r#"{"origin":"supervised"}"#);
    }
}
