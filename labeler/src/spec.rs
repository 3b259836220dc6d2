//! Teacher specs: how to feed a teacher model and how to read its outputs.
//!
//! Users bring teachers exported by others, so nothing about a model is assumed: a spec in TOML names the
//! task, the model file, and (through a preset for a known family plus explicit overrides) the input
//! tensor, its layout and batch, the resize policy, scaling, normalisation and colour order, and which
//! outputs carry what. `TeacherSpec::from_raw` validates all of it once, at the edge; the rest of the
//! labeler only sees validated specs. Checking a spec against the model's declared inputs and outputs
//! happens in `teacher.rs`, before any image is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use schemas::{DepthKind, Task};
use serde::{Deserialize, Serialize};

/// Tensor layout of the image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, 3, H, W]`.
    Nchw,
    /// `[3, H, W]`, one image per run (torchvision detection exports).
    Chw,
}

/// How images are batched into the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Batch {
    /// The model takes a fixed batch of this many images (a short last batch is padded).
    Static(usize),
    /// The batch axis is dynamic; the labeler uses this many images per run.
    Dynamic(usize),
}

impl Batch {
    /// Images per run.
    pub fn size(self) -> usize {
        match self {
            Batch::Static(n) | Batch::Dynamic(n) => n,
        }
    }
}

/// How an image becomes the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Resize {
    /// Stretch to `size` ignoring aspect ratio.
    Stretch,
    /// Feed the image at its own size (torchvision detectors resize inside the graph).
    Original,
    /// Scale to fit inside `size` keeping aspect, pad the rest with `pad` (0..255), centred.
    Letterbox { pad: u8 },
    /// Resize the shorter side to `shorter`, then centre-crop to `size`.
    ShorterSideCrop { shorter: u32 },
    /// Keep aspect: longer side to `longer` (the input size is then computed per image), both sides
    /// rounded to a multiple of `multiple`. Needs dynamic H and W.
    KeepAspect { longer: u32, multiple: u32 },
}

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Nearest,
    Bilinear,
    Bicubic,
}

/// Colour channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// Whether an output holds logits or probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    Logits,
    Probabilities,
}

/// How detection outputs are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionFormat {
    /// torchvision R-CNN: boxes `[K,4]` xyxy input pixels, labels `[K]` int64, scores `[K]`.
    BoxesLabelsScores,
    /// torchvision RetinaNet/FCOS/SSD: boxes, scores, labels.
    BoxesScoresLabels,
    /// Ultralytics raw: `[B, 4+nc, A]` cx,cy,w,h then per-class scores; NMS done by the labeler.
    YoloRaw,
    /// Ultralytics with `nms=True`: `[B, K, 6]` x0,y0,x1,y1,score,class.
    YoloNms,
}

/// Which model output a role reads: by declared name, or by position among the outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputRef {
    Name(String),
    Index(usize),
}

/// A teacher as written in TOML (`[[teacher]]`). Every field but `name`, `task`, `model` may come from
/// the preset.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeacher {
    pub name: String,
    pub task: Option<Task>,
    pub model: PathBuf,
    pub preset: Option<String>,
    pub input_name: Option<String>,
    pub layout: Option<Layout>,
    /// `"dynamic"`, or a number for a static batch.
    pub batch: Option<toml::Value>,
    /// Images per run when the batch is dynamic.
    pub batch_size: Option<usize>,
    /// `[height, width]` of the model input.
    pub input_size: Option<[u32; 2]>,
    pub resize: Option<Resize>,
    pub filter: Option<Filter>,
    pub scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub color: Option<ColorOrder>,
    /// Output roles → output; roles per task: `scores` (classification, segmentation), `boxes`, `labels`,
    /// `scores` (detection), `output` (YOLO), `depth`.
    pub outputs: Option<BTreeMap<String, OutputRef>>,
    pub output_kind: Option<ScoreKind>,
    pub detection_format: Option<DetectionFormat>,
    /// Added to the model's label ids to get a class index (torchvision: -1, since 0 is background).
    pub label_offset: Option<i64>,
    pub depth_kind: Option<DepthKind>,
    /// Class names, or only their number (`classes = 1000` names them "0".."999"); the number must
    /// match the model's class axis.
    pub classes: Option<Classes>,
    /// Segmentation multi-scale inference: scales applied to the input size, probabilities averaged.
    pub scales: Option<Vec<f32>>,
    /// Per-teacher threshold overrides.
    pub temperature: Option<f32>,
    pub box_threshold: Option<f32>,
    pub nms_iou: Option<f32>,
    pub seg_threshold: Option<f32>,
    pub max_detections: Option<usize>,
}

/// A teacher's classes as written: their names in the model's order, or just how many there are.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Classes {
    Names(Vec<String>),
    Count(usize),
}

impl Classes {
    /// The class names ("0", "1", ... for a bare count).
    pub fn names(&self) -> Vec<String> {
        match self {
            Classes::Names(names) => names.clone(),
            Classes::Count(n) => (0..*n).map(|i| i.to_string()).collect(),
        }
    }
}

/// A validated teacher spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeacherSpec {
    pub name: String,
    pub task: Task,
    pub model: PathBuf,
    pub preset: Option<String>,
    pub input_name: Option<String>,
    pub layout: Layout,
    pub batch: Batch,
    /// `[height, width]`; for `KeepAspect` the nominal size (per-image sizes vary).
    pub input_size: [u32; 2],
    pub resize: Resize,
    pub filter: Filter,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub color: ColorOrder,
    pub outputs: BTreeMap<String, OutputRef>,
    pub output_kind: ScoreKind,
    pub detection_format: Option<DetectionFormat>,
    pub label_offset: i64,
    pub depth_kind: Option<DepthKind>,
    pub classes: Vec<String>,
    pub scales: Vec<f32>,
    pub temperature: f32,
    pub box_threshold: f32,
    pub nms_iou: f32,
    pub seg_threshold: f32,
    pub max_detections: usize,
}

/// A spec that cannot be used, naming the teacher, the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("teacher {teacher:?} in {file}: field `{field}`: {reason}")]
pub struct SpecError {
    pub teacher: String,
    pub file: String,
    pub field: String,
    pub reason: String,
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Names of the built-in presets.
pub const PRESETS: &[&str] = &[
    "torchvision-classification",
    "torchvision-segmentation",
    "torchvision-detection",
    "torchvision-retinanet",
    "yolo",
    "yolo-nms",
    "midas-small",
    "midas-large",
    "dpt",
];

fn preset(name: &str) -> Option<RawTeacher> {
    let mut p = RawTeacher::default();
    let outputs =
        |pairs: &[(&str, usize)]| Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), OutputRef::Index(*v))).collect());
    match name {
        "torchvision-classification" => {
            p.task = Some(Task::Cls);
            p.layout = Some(Layout::Nchw);
            p.input_size = Some([224, 224]);
            p.resize = Some(Resize::ShorterSideCrop { shorter: 256 });
            p.mean = Some(IMAGENET_MEAN);
            p.std = Some(IMAGENET_STD);
            p.output_kind = Some(ScoreKind::Logits);
            p.outputs = outputs(&[("scores", 0)]);
        }
        "torchvision-segmentation" => {
            p.task = Some(Task::Seg);
            p.layout = Some(Layout::Nchw);
            p.input_size = Some([520, 520]);
            p.resize = Some(Resize::Stretch);
            p.mean = Some(IMAGENET_MEAN);
            p.std = Some(IMAGENET_STD);
            p.output_kind = Some(ScoreKind::Logits);
            p.outputs = outputs(&[("scores", 0)]);
        }
        "torchvision-detection" | "torchvision-retinanet" => {
            p.task = Some(Task::Det);
            p.layout = Some(Layout::Chw);
            p.batch = Some(toml::Value::Integer(1));
            p.resize = Some(Resize::Original);
            p.mean = Some([0.0; 3]);
            p.std = Some([1.0; 3]);
            p.label_offset = Some(-1);
            p.detection_format = Some(if name == "torchvision-detection" {
                DetectionFormat::BoxesLabelsScores
            } else {
                DetectionFormat::BoxesScoresLabels
            });
            p.outputs = if name == "torchvision-detection" {
                outputs(&[("boxes", 0), ("labels", 1), ("scores", 2)])
            } else {
                outputs(&[("boxes", 0), ("scores", 1), ("labels", 2)])
            };
        }
        "yolo" | "yolo-nms" => {
            p.task = Some(Task::Det);
            p.layout = Some(Layout::Nchw);
            p.input_name = Some("images".into());
            p.input_size = Some([640, 640]);
            p.resize = Some(Resize::Letterbox { pad: 114 });
            p.mean = Some([0.0; 3]);
            p.std = Some([1.0; 3]);
            p.label_offset = Some(0);
            p.detection_format = Some(if name == "yolo" { DetectionFormat::YoloRaw } else { DetectionFormat::YoloNms });
            p.outputs = outputs(&[("output", 0)]);
        }
        "midas-small" | "midas-large" => {
            p.task = Some(Task::Depth);
            p.layout = Some(Layout::Nchw);
            p.batch = Some(toml::Value::Integer(1));
            let side = if name == "midas-small" { 256 } else { 384 };
            p.input_size = Some([side, side]);
            p.resize = Some(Resize::Stretch);
            p.filter = Some(Filter::Bicubic);
            p.mean = Some([0.0; 3]);
            p.std = Some([1.0; 3]);
            p.depth_kind = Some(DepthKind::InverseRelative);
            p.outputs = outputs(&[("depth", 0)]);
        }
        "dpt" => {
            p.task = Some(Task::Depth);
            p.layout = Some(Layout::Nchw);
            p.batch = Some(toml::Value::Integer(1));
            p.input_size = Some([384, 384]);
            p.resize = Some(Resize::KeepAspect { longer: 384, multiple: 32 });
            p.filter = Some(Filter::Bicubic);
            p.mean = Some([0.5; 3]);
            p.std = Some([0.5; 3]);
            p.depth_kind = Some(DepthKind::InverseRelative);
            p.outputs = outputs(&[("depth", 0)]);
        }
        _ => return None,
    }
    Some(p)
}

/// Global pseudo-label thresholds (MuST §3.1), overridable per teacher.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Boxes with score ≥ this are kept.
    pub box_score: f32,
    /// IoU above which class-aware NMS suppresses a box (raw detector outputs only).
    pub nms_iou: f32,
    /// Pixels whose max class probability is below this get the ignore label 255.
    pub seg_confidence: f32,
    /// Softmax temperature for classification soft labels.
    pub temperature: f32,
    /// At most this many boxes per image (highest scores first).
    pub max_detections: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { box_score: 0.5, nms_iou: 0.6, seg_confidence: 0.5, temperature: 1.0, max_detections: 100 }
    }
}

impl TeacherSpec {
    /// Validate `raw` (read from `file`, whose directory anchors a relative model path).
    pub fn from_raw(raw: RawTeacher, file: &Path, defaults: &Thresholds) -> Result<Self, SpecError> {
        let err = |field: &str, reason: String| SpecError {
            teacher: raw.name.clone(),
            file: file.display().to_string(),
            field: field.to_owned(),
            reason,
        };
        if raw.name.trim().is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        let base = match &raw.preset {
            Some(name) => preset(name).ok_or_else(|| {
                err("preset", format!("unknown preset {name:?}; known presets: {}", PRESETS.join(", ")))
            })?,
            None => RawTeacher::default(),
        };
        macro_rules! pick {
            ($f:ident) => {
                raw.$f.clone().or(base.$f.clone())
            };
        }
        let task = pick!(task).ok_or_else(|| err("task", "missing (or set a preset)".into()))?;
        let model = if raw.model.is_absolute() {
            raw.model.clone()
        } else {
            file.parent().unwrap_or(Path::new(".")).join(&raw.model)
        };
        if raw.model.as_os_str().is_empty() {
            return Err(err("model", "missing".into()));
        }
        let layout = pick!(layout).unwrap_or(Layout::Nchw);
        let batch_size = raw.batch_size.unwrap_or(8);
        let batch = match pick!(batch) {
            None => Batch::Dynamic(batch_size),
            Some(toml::Value::String(s)) if s == "dynamic" => Batch::Dynamic(batch_size),
            Some(toml::Value::Integer(n)) if n >= 1 => Batch::Static(n as usize),
            Some(other) => {
                return Err(err("batch", format!("expected \"dynamic\" or a positive integer, got {other}")))
            }
        };
        if batch.size() == 0 {
            return Err(err("batch_size", "must be at least 1".into()));
        }
        if layout == Layout::Chw && batch.size() != 1 {
            return Err(err("batch", "layout \"chw\" has no batch axis, so the batch must be 1".into()));
        }
        let resize = pick!(resize).unwrap_or(Resize::Stretch);
        let input_size = match (pick!(input_size), resize) {
            (Some(s), _) => s,
            (None, Resize::KeepAspect { longer, .. }) => [longer, longer],
            (None, Resize::Original) => [0, 0],
            (None, _) => return Err(err("input_size", "missing: set [height, width] (or a preset)".into())),
        };
        if resize != Resize::Original && input_size.iter().any(|&s| s == 0 || s > 8192) {
            return Err(err("input_size", format!("{input_size:?} must be within 1..=8192")));
        }
        if let Resize::ShorterSideCrop { shorter } = resize {
            if shorter < input_size[0].max(input_size[1]) {
                return Err(err("resize.shorter", format!("{shorter} is smaller than the crop {input_size:?}")));
            }
        }
        if let Resize::KeepAspect { multiple, longer } = resize {
            if multiple == 0 || longer < multiple {
                return Err(err("resize.multiple", format!("multiple {multiple} must be in 1..=longer ({longer})")));
            }
        }
        let scale = pick!(scale).unwrap_or(1.0 / 255.0);
        let mean = pick!(mean).unwrap_or([0.0; 3]);
        let std = pick!(std).unwrap_or([1.0; 3]);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(err("scale", format!("{scale} must be a positive number")));
        }
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(err("std", format!("{std:?} must be positive")));
        }
        let outputs = pick!(outputs).unwrap_or_default();
        let required: &[&str] = match task {
            Task::Cls | Task::Seg => &["scores"],
            Task::Det => match pick!(detection_format) {
                Some(DetectionFormat::YoloRaw) | Some(DetectionFormat::YoloNms) => &["output"],
                _ => &["boxes", "labels", "scores"],
            },
            Task::Depth => &["depth"],
        };
        let mut outputs = outputs;
        for role in required {
            if !outputs.contains_key(*role) {
                if required.len() == 1 {
                    outputs.insert((*role).to_owned(), OutputRef::Index(0));
                } else {
                    return Err(err(&format!("outputs.{role}"), "missing".into()));
                }
            }
        }
        if let Some(extra) = outputs.keys().find(|k| !required.contains(&k.as_str())) {
            return Err(err(
                &format!("outputs.{extra}"),
                format!("not a role of a {} teacher (roles: {})", task.name(), required.join(", ")),
            ));
        }
        let classes = pick!(classes).map(|c| c.names()).unwrap_or_default();
        if task != Task::Depth && classes.is_empty() {
            return Err(err(
                "classes",
                "missing: list the class names in the model's class order, or give their number".into(),
            ));
        }
        let scales = pick!(scales).unwrap_or_else(|| vec![1.0]);
        if scales.is_empty() || scales.iter().any(|s| !(s.is_finite() && *s > 0.0 && *s <= 4.0)) {
            return Err(err("scales", format!("{scales:?}: each scale must be in (0, 4]")));
        }
        if task != Task::Seg && scales != [1.0] {
            return Err(err("scales", "multi-scale inference is only for segmentation teachers".into()));
        }
        let temperature = raw.temperature.unwrap_or(defaults.temperature);
        let box_threshold = raw.box_threshold.unwrap_or(defaults.box_score);
        let nms_iou = raw.nms_iou.unwrap_or(defaults.nms_iou);
        let seg_threshold = raw.seg_threshold.unwrap_or(defaults.seg_confidence);
        for (field, v) in [("box_threshold", box_threshold), ("nms_iou", nms_iou), ("seg_threshold", seg_threshold)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(err(field, format!("{v} must be within [0, 1]")));
            }
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(err("temperature", format!("{temperature} must be positive")));
        }
        let depth_kind = match task {
            Task::Depth => Some(pick!(depth_kind).unwrap_or(DepthKind::InverseRelative)),
            _ => None,
        };
        Ok(TeacherSpec {
            name: raw.name.clone(),
            task,
            model,
            preset: raw.preset.clone(),
            input_name: pick!(input_name),
            layout,
            batch,
            input_size,
            resize,
            filter: pick!(filter).unwrap_or(Filter::Bilinear),
            scale,
            mean,
            std,
            color: pick!(color).unwrap_or(ColorOrder::Rgb),
            outputs,
            output_kind: pick!(output_kind).unwrap_or(ScoreKind::Logits),
            detection_format: if task == Task::Det {
                Some(pick!(detection_format).unwrap_or(DetectionFormat::BoxesLabelsScores))
            } else {
                None
            },
            label_offset: pick!(label_offset).unwrap_or(0),
            depth_kind,
            classes,
            scales,
            temperature,
            box_threshold,
            nms_iou,
            seg_threshold,
            max_detections: raw.max_detections.unwrap_or(defaults.max_detections),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<TeacherSpec, SpecError> {
        let raw: RawTeacher = toml::from_str(toml_text).expect("toml");
        TeacherSpec::from_raw(raw, Path::new("/cfg/teachers.toml"), &Thresholds::default())
    }

    #[test]
    fn preset_fills_fields_and_overrides_win() {
        let spec = parse(
            r#"name = "cls"
model = "m.onnx"
preset = "torchvision-classification"
input_size = [96, 96]
resize = { kind = "stretch" }
classes = ["a", "b"]"#,
        )
        .unwrap();
        assert_eq!(spec.task, Task::Cls);
        assert_eq!(spec.input_size, [96, 96]);
        assert_eq!(spec.resize, Resize::Stretch);
        assert_eq!(spec.mean, IMAGENET_MEAN);
        assert_eq!(spec.model, PathBuf::from("/cfg/m.onnx"));
        assert_eq!(spec.outputs["scores"], OutputRef::Index(0));
    }

    #[test]
    fn every_preset_parses_with_classes() {
        for p in PRESETS {
            let text = format!("name = \"t\"\nmodel = \"m.onnx\"\npreset = \"{p}\"\nclasses = [\"a\"]\n");
            let raw: RawTeacher = toml::from_str(&text).unwrap();
            let spec = TeacherSpec::from_raw(raw, Path::new("t.toml"), &Thresholds::default());
            assert!(spec.is_ok(), "{p}: {:?}", spec.err());
        }
    }

    #[test]
    fn errors_name_teacher_file_and_field() {
        let e = parse("name = \"x\"\nmodel = \"m.onnx\"\npreset = \"nope\"").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"x\"") && msg.contains("/cfg/teachers.toml") && msg.contains("`preset`"), "{msg}");
        let e = parse("name = \"x\"\nmodel = \"m.onnx\"\ntask = \"classification\"\ninput_size = [9, 9]").unwrap_err();
        assert_eq!(e.field, "classes");
        let e =
            parse("name = \"x\"\nmodel = \"m.onnx\"\npreset = \"torchvision-detection\"\nclasses = [\"a\"]\nbatch = 4")
                .unwrap_err();
        assert_eq!(e.field, "batch");
        let e = parse("name = \"x\"\nmodel = \"m.onnx\"\npreset = \"yolo\"\nclasses = [\"a\"]\nbox_threshold = 1.5")
            .unwrap_err();
        assert_eq!(e.field, "box_threshold");
        let e =
            parse("name = \"x\"\nmodel = \"m.onnx\"\npreset = \"midas-small\"\noutputs = { boxes = 0 }").unwrap_err();
        assert_eq!(e.field, "outputs.boxes");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<RawTeacher, _> = toml::from_str("name = \"x\"\nmodel = \"m\"\ninput_sise = [1, 1]");
        assert!(r.unwrap_err().to_string().contains("input_sise"));
    }
}
