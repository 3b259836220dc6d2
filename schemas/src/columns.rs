//! Column names: the contract between the labeler, the trainer and any other reader.
//!
//! Readers project by these names; renaming one is a schema version change.

// Image records.
pub const KEY: &str = "key";
pub const DATASET: &str = "dataset";
pub const SOURCE_URI: &str = "source_uri";
pub const WIDTH: &str = "width";
pub const HEIGHT: &str = "height";
pub const IMAGE_FORMAT: &str = "image_format";
pub const IMAGE: &str = "image";
pub const CLS_ORIGIN: &str = "cls_origin";
pub const CLS_TEACHER: &str = "cls_teacher";
pub const CLS_PROBS: &str = "cls_probs";
pub const DET_ORIGIN: &str = "det_origin";
pub const DET_TEACHER: &str = "det_teacher";
pub const DET_BOXES: &str = "det_boxes";
pub const SEG_ORIGIN: &str = "seg_origin";
pub const SEG_TEACHER: &str = "seg_teacher";
pub const SEG_HEIGHT: &str = "seg_height";
pub const SEG_WIDTH: &str = "seg_width";
pub const SEG_MASK: &str = "seg_mask";
pub const DEPTH_ORIGIN: &str = "depth_origin";
pub const DEPTH_TEACHER: &str = "depth_teacher";
pub const DEPTH_KIND: &str = "depth_kind";
pub const DEPTH_HEIGHT: &str = "depth_height";
pub const DEPTH_WIDTH: &str = "depth_width";
pub const DEPTH_OFFSET: &str = "depth_offset";
pub const DEPTH_SCALE: &str = "depth_scale";
pub const DEPTH_Q: &str = "depth_q";

// Fields of a `det_boxes` element.
pub const BOX_X0: &str = "x0";
pub const BOX_Y0: &str = "y0";
pub const BOX_X1: &str = "x1";
pub const BOX_Y1: &str = "y1";
pub const BOX_CLASS_ID: &str = "class_id";
pub const BOX_SCORE: &str = "score";

// Error records (besides `key`, `dataset` and `source_uri`).
pub const STAGE: &str = "stage";
pub const REASON: &str = "reason";
pub const DETAIL: &str = "detail";
