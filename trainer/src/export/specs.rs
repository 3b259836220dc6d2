//! Teacher specs for the exported student, one file per head, that `labeler probe` and `labeler run` load
//! as they are — no student-specific code in the labeler.
//!
//! The trainer evaluates on a letterbox of its own (`data::augment`): the longer side scaled to the input
//! size, the image at the top left, the rest padded with the ImageNet mean colour. The labeler's
//! `keep_aspect` resize (longer side to the input size, `multiple = 1`, bilinear: the same resampler and,
//! but for exact float ties, the same size rounding as the trainer) gives exactly the scaled image, and the exported model pads it at the
//! bottom and right inside the graph and crops its dense outputs back to the image. So the labeler sees an
//! image-sized model whose predictions are the trainer's, and maps them back with its ordinary
//! transforms. Inputs are RGB in [0, 1] (`scale = 1/255`); the normalisation is inside the graph.
//!
//! Class names are not in a checkpoint (only counts are): they come from a teacher spec file — normally
//! the one the training shards were labelled with, so a second round keeps the first round's class ids
//! and names (a labeler run maps supervised class names through them) — or default to `class0`, `class1`, ….

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::Task;
use crate::model::StudentConfig;

/// Class names per task with classes, checked against the student's head sizes.
pub type ClassNames = BTreeMap<Task, Vec<String>>;

/// The task of a labeler preset (the labeler's preset table; a spec may also name its task itself).
fn preset_task(preset: &str) -> Option<Task> {
    match preset {
        "torchvision-classification" => Some(Task::Cls),
        "torchvision-segmentation" => Some(Task::Seg),
        "torchvision-detection" | "torchvision-retinanet" | "yolo" | "yolo-nms" => Some(Task::Det),
        "midas-small" | "midas-large" | "dpt" => Some(Task::Depth),
        _ => None,
    }
}

/// The head size of `task` in `config` (`None` when the student has no such head or it has no classes).
fn head_classes(config: &StudentConfig, task: Task) -> Option<usize> {
    match task {
        Task::Cls => config.num_classes,
        Task::Det => config.num_det_classes,
        Task::Seg => config.num_seg_classes,
        Task::Depth => None,
    }
}

/// Class names for every head of `config` with classes: from the `[[teacher]]` entries of `file` (a
/// labeler teacher spec file) when given, else `class0`, `class1`, ….
pub fn class_names(config: &StudentConfig, file: Option<&Path>) -> Result<ClassNames, String> {
    let mut from_file: ClassNames = BTreeMap::new();
    if let Some(file) = file {
        let at = file.display();
        let text = std::fs::read_to_string(file).map_err(|e| format!("{at}: {e}"))?;
        let doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{at}: not TOML: {e}"))?;
        let teachers = doc.get("teacher").and_then(|t| t.as_array()).ok_or_else(|| {
            format!("{at}: no [[teacher]] entries (expected a labeler teacher spec file with `classes`)")
        })?;
        for t in teachers {
            let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            let Some(classes) = t.get("classes") else { continue };
            let classes: Vec<String> = classes
                .as_array()
                .and_then(|a| a.iter().map(|c| c.as_str().map(str::to_owned)).collect())
                .ok_or_else(|| format!("{at}: teacher {name:?}: `classes` must be a list of strings"))?;
            let task = match (t.get("task").and_then(|v| v.as_str()), t.get("preset").and_then(|v| v.as_str())) {
                (Some(task), _) => toml::Value::String(task.to_owned())
                    .try_into::<Task>()
                    .map_err(|e| format!("{at}: teacher {name:?}: `task`: {e}"))?,
                (None, Some(preset)) => preset_task(preset).ok_or_else(|| {
                    format!("{at}: teacher {name:?}: preset {preset:?} is not known here; add `task = ...`")
                })?,
                (None, None) => return Err(format!("{at}: teacher {name:?} has neither `task` nor `preset`")),
            };
            if let Some(previous) = from_file.insert(task, classes.clone()) {
                if previous != classes {
                    return Err(format!("{at}: two {} teachers list different classes", task.name()));
                }
            }
        }
    }
    let mut names = BTreeMap::new();
    for task in config.tasks() {
        let Some(n) = head_classes(config, task) else { continue };
        let list = match from_file.remove(&task) {
            Some(list) if list.len() == n => list,
            Some(list) => {
                return Err(format!(
                    "{}: the {} teacher lists {} classes, the student's head has {n}",
                    file.map(|f| f.display().to_string()).unwrap_or_default(),
                    task.name(),
                    list.len()
                ))
            }
            None => (0..n).map(|i| format!("class{i}")).collect(),
        };
        names.insert(task, list);
    }
    Ok(names)
}

/// One head's spec: where the model's output for `task` is and how to read it.
pub(super) struct HeadSpec {
    pub task: Task,
    /// The ONNX output name.
    pub output: &'static str,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The text of one head's spec file.
pub(super) fn spec_text(
    head: &HeadSpec,
    name: &str,
    model_file: &str,
    size: u32,
    classes: Option<&[String]>,
) -> String {
    let task = head.task.name();
    let mut s = format!(
        "# The MuST student's {task} head as a labeler teacher (written by `trainer export`).\n\
         # Input: RGB in [0, 1], longer side {size} px, any aspect; the model pads to {size}x{size} like the\n\
         # trainer's evaluation letterbox (image at the top left, ImageNet-mean padding) and normalises inside.\n\
         [[teacher]]\n\
         name = {}\n\
         task = {}\n\
         model = {}\n\
         input_name = \"{}\"\n\
         layout = \"nchw\"\n\
         batch = 1\n\
         input_size = [{size}, {size}]\n\
         resize = {{ kind = \"keep_aspect\", longer = {size}, multiple = 1 }}\n\
         filter = \"bilinear\"\n\
         scale = 0.00392156862745098   # 1/255\n\
         mean = [0.0, 0.0, 0.0]\n\
         std = [1.0, 1.0, 1.0]\n\
         color = \"rgb\"\n",
        quoted(name),
        quoted(task),
        quoted(model_file),
        super::INPUT_NAME,
    );
    match head.task {
        Task::Cls | Task::Seg => {
            s.push_str(&format!("output_kind = \"logits\"\noutputs = {{ scores = {} }}\n", quoted(head.output)));
        }
        Task::Det => s.push_str(&format!(
            "# [B, 4 + classes, locations]: cx, cy, w, h in input pixels, then sqrt(sigmoid(cls) * sigmoid(centerness))\n\
             # per class, as the trainer's FCOS decoding scores them; thresholds and class-aware NMS are the labeler's.\n\
             detection_format = \"yolo_raw\"\nlabel_offset = 0\noutputs = {{ output = {} }}\n",
            quoted(head.output)
        )),
        Task::Depth => s.push_str(&format!(
            "depth_kind = \"inverse_relative\"\noutputs = {{ depth = {} }}\n",
            quoted(head.output)
        )),
    }
    if let Some(classes) = classes {
        let list: Vec<String> = classes.iter().map(|c| quoted(c)).collect();
        s.push_str(&format!("classes = [{}]\n", list.join(", ")));
    }
    s
}

/// Writes one spec file per head into `dir` (`<name>-<task>.toml`); returns their paths.
pub(super) fn write(
    dir: &Path,
    name: &str,
    model_file: &str,
    size: u32,
    heads: &[HeadSpec],
    classes: &ClassNames,
) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let mut written = Vec::with_capacity(heads.len());
    for head in heads {
        let teacher = format!("{name}-{}", head.task.name());
        let path = dir.join(format!("{teacher}.toml"));
        let text = spec_text(head, &teacher, model_file, size, classes.get(&head.task).map(Vec::as_slice));
        std::fs::write(&path, text).map_err(|e| (path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_come_from_a_teacher_file_or_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[[teacher]]\nname = \"c\"\nmodel = \"c.onnx\"\npreset = \"torchvision-classification\"\nclasses = [\"a\", \"b\"]\n\
             [[teacher]]\nname = \"d\"\nmodel = \"d.onnx\"\ntask = \"detection\"\nclasses = [\"x\"]\n\
             [[teacher]]\nname = \"z\"\nmodel = \"z.onnx\"\npreset = \"midas-small\"\n",
        )
        .unwrap();
        let cfg = StudentConfig::tiny(2, 1, 3);
        let names = class_names(&cfg, Some(&file)).unwrap();
        assert_eq!(names[&Task::Cls], ["a", "b"]);
        assert_eq!(names[&Task::Det], ["x"]);
        assert_eq!(names[&Task::Seg], ["class0", "class1", "class2"]);
        assert!(!names.contains_key(&Task::Depth));
        let err = class_names(&StudentConfig::tiny(3, 1, 3), Some(&file)).unwrap_err();
        assert!(err.contains("t.toml") && err.contains("lists 2 classes") && err.contains("has 3"), "{err}");
    }

    #[test]
    fn spec_text_is_a_valid_teacher_entry() {
        let head = HeadSpec { task: Task::Det, output: "det" };
        let text = spec_text(&head, "student-detection", "student.onnx", 96, Some(&["a \"quoted\"".to_owned()]));
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let t = &doc["teacher"].as_array().unwrap()[0];
        assert_eq!(t["detection_format"].as_str(), Some("yolo_raw"));
        assert_eq!(t["resize"]["longer"].as_integer(), Some(96));
        assert_eq!(t["classes"].as_array().unwrap()[0].as_str(), Some("a \"quoted\""));
    }
}
