//! Supervised labels a dataset already has, written into the record so the teachers only fill the other
//! tasks. Whole-dataset files (CSV, COCO) are read once when the shard starts, so a broken one stops the run
//! before any image; per-image files (masks, depth maps) are fetched next to each image in the fetch stage,
//! through the same kind of store, and decoded with it in the decode stage. The formats are read by
//! [`crate::labels`].

use std::sync::Arc;

use bytes::Bytes;
use schemas::{ClsLabel, DepthLabel, DetLabel, ErrorRecord, ImageRecord, LabelSource, SegLabel, Stage};
use shards::inputs::InputEntry;
use shards::Location;

use super::fetch::{get_bytes, ReadError, Retry};
use super::records::error_record;
use super::PipelineError;
use crate::config::{ClassLabels, DepthFormat, SupervisedLabels};
use crate::labels::{
    decode_depth_npy, decode_depth_png16, decode_mask, ClassFolders, ClassTable, CocoBoxes, LabelProblem, LabelRef,
};
use crate::spec::{Task, TeacherSpec};

/// Largest per-image label file fetched (a float64 `.npy` of 32 megapixels).
const MAX_LABEL_FILE_BYTES: u64 = 256 << 20;
/// Largest whole-dataset label file read (CSV, COCO JSON).
const MAX_TABLE_FILE_BYTES: u64 = 2 << 30;

/// Everything a dataset brings besides images.
#[derive(Clone)]
pub(super) struct DatasetCtx {
    pub(super) images: Location,
    pub(super) supervised: Option<Arc<SupervisedCtx>>,
    pub(super) format: crate::config::DatasetFormat,
    /// Image member extensions of a WebDataset sample, in order of preference.
    pub(super) extensions: Vec<String>,
    /// The image and key columns of a Parquet dataset.
    pub(super) columns: super::packed::ParquetColumns,
}

/// A dataset's supervised labels, ready to use: tables parsed, per-image locations opened.
pub(super) struct SupervisedCtx {
    classification: Option<(ClassSource, usize)>,
    detection: Option<CocoBoxes>,
    /// Mask location, extension and the segmentation teacher's class count.
    segmentation: Option<(PerImageFiles, usize)>,
    depth: Option<(PerImageFiles, DepthFormat, f32)>,
}

enum ClassSource {
    Table(ClassTable),
    Folders(ClassFolders),
    /// The text of a WebDataset sample's member with this extension (or, with `field`, that field of the
    /// member's JSON object), mapped over the teacher's classes.
    Member {
        extension: String,
        field: Option<String>,
        classes: Vec<String>,
    },
}

/// The small members of a WebDataset sample besides its image (`.cls`, `.json`, …), by extension.
pub(super) type SideMembers = std::collections::BTreeMap<String, Bytes>;

/// One label file per image under `location`, named like the image with another extension.
struct PerImageFiles {
    location: Location,
    extension: String,
}

impl PerImageFiles {
    /// `<key without its extension>.<extension>`, relative to the location.
    fn relative(&self, key: &str) -> String {
        let (dir, name) = key.rsplit_once('/').map(|(d, n)| (Some(d), n)).unwrap_or((None, key));
        let stem = name.rsplit_once('.').map(|(s, _)| s).filter(|s| !s.is_empty()).unwrap_or(name);
        match dir {
            Some(dir) => format!("{dir}/{stem}.{}", self.extension),
            None => format!("{stem}.{}", self.extension),
        }
    }
}

/// One fetched per-image label file.
pub(super) struct LabelFile {
    uri: String,
    bytes: Bytes,
}

/// The per-image label files of one input.
pub(super) struct LabelFiles {
    mask: Option<LabelFile>,
    depth: Option<LabelFile>,
}

/// What the fetch stage found for an input's per-image label files: `None` when its dataset has none.
pub(super) type FetchedLabels = Option<Result<LabelFiles, ErrorRecord>>;

/// Read a whole label file given as a path or URL.
async fn read_whole(file: &str) -> Result<Bytes, PipelineError> {
    let bad = |reason: String| PipelineError::Supervised { file: file.to_owned(), reason };
    if !file.contains("://") || file.starts_with("file://") {
        let path = file.strip_prefix("file://").unwrap_or(file);
        return std::fs::read(path).map(Bytes::from).map_err(|e| bad(e.to_string()));
    }
    let (dir, name) = file.rsplit_once('/').ok_or_else(|| bad("is not a file URL".into()))?;
    let loc = shards::open(dir)?;
    let retry = Retry::default();
    get_bytes(&loc, name, MAX_TABLE_FILE_BYTES, &retry).await.map_err(|e| match e {
        ReadError::Input { detail, .. } => bad(detail),
        ReadError::Store(e) => e,
    })
}

impl SupervisedCtx {
    /// Read the dataset-wide files and open the per-image locations of `labels`, mapping class names to the
    /// class lists of `teachers`. `images` is the dataset's image location (for class folder messages).
    pub(super) async fn open(
        labels: &SupervisedLabels,
        images: &str,
        teachers: &[TeacherSpec],
    ) -> Result<Self, PipelineError> {
        // The config requires these teachers; this only guards callers that built a config by hand.
        fn classes_of<'t>(teachers: &'t [TeacherSpec], task: Task, file: &str) -> Result<&'t [String], PipelineError> {
            teachers.iter().find(|t| t.task == task).map(|t| t.classes.as_slice()).ok_or_else(|| {
                PipelineError::Supervised {
                    file: file.to_owned(),
                    reason: format!("{0} labels need a {0} teacher for their class list", task.name()),
                }
            })
        }
        let classification = match &labels.classification {
            None => None,
            Some(ClassLabels::Csv(file)) => {
                let classes = classes_of(teachers, Task::Cls, file)?;
                let table = ClassTable::parse(file, &read_whole(file).await?, classes)?;
                Some((ClassSource::Table(table), classes.len()))
            }
            Some(ClassLabels::Folders) => {
                let classes = classes_of(teachers, Task::Cls, images)?;
                Some((ClassSource::Folders(ClassFolders::new(images, classes)), classes.len()))
            }
            Some(ClassLabels::Member { extension, field }) => {
                let classes = classes_of(teachers, Task::Cls, images)?;
                let source = ClassSource::Member {
                    extension: extension.clone(),
                    field: field.clone(),
                    classes: classes.to_vec(),
                };
                Some((source, classes.len()))
            }
        };
        let detection = match &labels.detection {
            None => None,
            Some(d) => {
                let classes = classes_of(teachers, Task::Det, &d.coco)?;
                Some(CocoBoxes::parse(&d.coco, &read_whole(&d.coco).await?, classes)?)
            }
        };
        let segmentation = match &labels.segmentation {
            None => None,
            Some(s) => {
                let classes = classes_of(teachers, Task::Seg, &s.masks)?.len();
                let files = PerImageFiles { location: shards::open(&s.masks)?, extension: s.extension.clone() };
                Some((files, classes))
            }
        };
        let depth = match &labels.depth {
            None => None,
            Some(d) => {
                let files =
                    PerImageFiles { location: shards::open(&d.maps)?, extension: d.format.extension().to_owned() };
                Some((files, d.format, d.scale))
            }
        };
        Ok(Self { classification, detection, segmentation, depth })
    }

    /// The extension of the sample member that holds the class, when classes come from one.
    pub(super) fn class_member(&self) -> Option<&str> {
        match &self.classification {
            Some((ClassSource::Member { extension, .. }, _)) => Some(extension),
            _ => None,
        }
    }
}

impl From<crate::labels::LabelFileError> for PipelineError {
    fn from(e: crate::labels::LabelFileError) -> Self {
        PipelineError::Supervised { file: e.file, reason: e.reason }
    }
}

/// Fetch the per-image label files of `entry` (image `uri`) if its dataset has any. A file that is not there
/// is a `missing_label` error row naming the file and the key; a store failure that outlives the retries
/// fails the attempt, as for images.
pub(super) async fn fetch_label_files(
    entry: &InputEntry,
    uri: &str,
    ds: &DatasetCtx,
    retry: &Retry,
) -> Result<FetchedLabels, PipelineError> {
    let Some(ctx) = ds.supervised.as_ref() else { return Ok(None) };
    if ctx.segmentation.is_none() && ctx.depth.is_none() {
        return Ok(None);
    }
    let (mask, depth) = futures::join!(
        fetch_label_file(entry, uri, ctx.segmentation.as_ref().map(|s| &s.0), retry),
        fetch_label_file(entry, uri, ctx.depth.as_ref().map(|d| &d.0), retry)
    );
    Ok(Some(match (mask?, depth?) {
        (Ok(mask), Ok(depth)) => Ok(LabelFiles { mask, depth }),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }))
}

async fn fetch_label_file(
    entry: &InputEntry,
    uri: &str,
    files: Option<&PerImageFiles>,
    retry: &Retry,
) -> Result<Result<Option<LabelFile>, ErrorRecord>, PipelineError> {
    let Some(files) = files else { return Ok(Ok(None)) };
    let rel = files.relative(&entry.key);
    let file = files.location.uri_of(&files.location.child(&rel));
    match get_bytes(&files.location, &rel, MAX_LABEL_FILE_BYTES, retry).await {
        Ok(bytes) => Ok(Ok(Some(LabelFile { uri: file, bytes }))),
        Err(ReadError::Input { reason, detail }) => {
            let reason = if reason == "not_found" { "missing_label" } else { reason };
            let detail = format!("label {file} of image {:?}: {detail}", entry.key);
            Ok(Err(error_record(entry, uri, Stage::SupervisedLabel, reason, detail)))
        }
        Err(ReadError::Store(e)) => Err(e),
    }
}

/// Write the supervised labels of `ctx` into `rec` (the image is `rec.width`×`rec.height`), with the
/// per-image files fetched for it.
pub(super) fn supervised_labels(
    rec: &mut ImageRecord,
    entry: &InputEntry,
    uri: &str,
    ctx: &SupervisedCtx,
    fetched: Option<&LabelFiles>,
    side: Option<&SideMembers>,
) -> Result<(), ErrorRecord> {
    let row = |p: LabelProblem| error_record(entry, uri, Stage::SupervisedLabel, p.reason_code(), p.to_string());
    let not_fetched = || {
        let detail = format!("the label files of image {:?} were not fetched", entry.key);
        error_record(entry, uri, Stage::SupervisedLabel, "missing_label", detail)
    };
    let key = entry.key.as_str();
    let (width, height) = (rec.width, rec.height);
    if let Some((source, n)) = &ctx.classification {
        let class = match source {
            ClassSource::Table(t) => t.class_of(key),
            ClassSource::Folders(f) => f.class_of(key),
            ClassSource::Member { extension, field, classes } => {
                member_class(uri, key, extension, field.as_deref(), classes, side)
            }
        }
        .map_err(row)?;
        let mut probs = vec![0f32; *n];
        probs[class as usize] = 1.0;
        rec.cls = Some(ClsLabel { source: LabelSource::Supervised, probs });
    }
    if let Some(coco) = &ctx.detection {
        let boxes = coco.boxes(key, width, height).map_err(row)?;
        rec.det = Some(DetLabel { source: LabelSource::Supervised, boxes });
    }
    if let Some((_, classes)) = &ctx.segmentation {
        let file = fetched.and_then(|f| f.mask.as_ref()).ok_or_else(not_fetched)?;
        let at = LabelRef { file: &file.uri, key };
        let mask = decode_mask(at, &file.bytes, width, height, *classes).map_err(row)?;
        rec.seg = Some(SegLabel { source: LabelSource::Supervised, height: height as u16, width: width as u16, mask });
    }
    if let Some((_, format, scale)) = &ctx.depth {
        let file = fetched.and_then(|f| f.depth.as_ref()).ok_or_else(not_fetched)?;
        let at = LabelRef { file: &file.uri, key };
        let values = match format {
            DepthFormat::Png16 => decode_depth_png16(at, &file.bytes, width, height, *scale),
            DepthFormat::Npy => decode_depth_npy(at, &file.bytes, width, height, *scale),
        }
        .map_err(row)?;
        rec.depth = Some(DepthLabel {
            source: LabelSource::Supervised,
            kind: schemas::DepthKind::Metric,
            height: height as u16,
            width: width as u16,
            values,
        });
    }
    Ok(())
}

/// The class a sample's `.<extension>` member names: its text, or its JSON object's `field` (a class name
/// or index).
fn member_class(
    uri: &str,
    key: &str,
    extension: &str,
    field: Option<&str>,
    classes: &[String],
    side: Option<&SideMembers>,
) -> Result<u16, LabelProblem> {
    use crate::labels::ProblemKind::{Invalid, Missing};
    let problem = |kind, reason: String| LabelProblem {
        kind,
        file: format!("member .{extension} of {uri}"),
        key: key.to_owned(),
        reason,
    };
    let Some(bytes) = side.and_then(|s| s.get(extension)) else {
        return Err(problem(Missing, format!("the sample has no .{extension} member")));
    };
    let text = match field {
        None => String::from_utf8_lossy(bytes).into_owned(),
        Some(field) => {
            let json: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| problem(Invalid, format!("not JSON: {e}")))?;
            match json.get(field) {
                None | Some(serde_json::Value::Null) => {
                    return Err(problem(Missing, format!("the JSON object has no field {field:?}")))
                }
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(other) => return Err(problem(Invalid, format!("field {field:?} is {other}, not a class"))),
            }
        }
    };
    crate::labels::parse_class(&text, classes).ok_or_else(|| {
        problem(
            Invalid,
            format!(
                "{:?} is neither one of the classification teacher's {} class names nor an index below it",
                text.trim(),
                classes.len()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_classes_come_from_text_or_a_json_field() {
        let classes: Vec<String> = ["cat", "dog", "bird"].iter().map(|s| s.to_string()).collect();
        let side = |ext: &str, body: &str| SideMembers::from([(ext.to_owned(), Bytes::from(body.to_owned()))]);
        let class = |ext: &str, field: Option<&str>, s: &SideMembers| {
            member_class("u.tar", "u.tar/k", ext, field, &classes, Some(s))
        };
        assert_eq!(class("cls", None, &side("cls", "2\n")), Ok(2));
        assert_eq!(class("txt", None, &side("txt", "dog")), Ok(1));
        assert_eq!(class("json", Some("label"), &side("json", r#"{"label": 1}"#)), Ok(1));
        assert_eq!(class("json", Some("label"), &side("json", r#"{"label": "bird"}"#)), Ok(2));
        let err = class("json", Some("label"), &side("json", r#"{"other": 1}"#)).unwrap_err();
        assert_eq!((err.reason_code(), err.file.as_str()), ("missing_label", "member .json of u.tar"));
        assert_eq!(class("json", Some("label"), &side("json", "[1")).unwrap_err().reason_code(), "invalid_label");
        assert_eq!(class("cls", None, &side("cls", "7")).unwrap_err().reason_code(), "invalid_label");
        assert_eq!(class("cls", None, &side("json", "{}")).unwrap_err().reason_code(), "missing_label");
    }

    #[test]
    fn per_image_files_mirror_the_key_with_another_extension() {
        let files = PerImageFiles { location: shards::open("memory:///m").unwrap(), extension: "png".into() };
        assert_eq!(files.relative("000001.jpg"), "000001.png");
        assert_eq!(files.relative("a/b.c/x.tar.jpg"), "a/b.c/x.tar.png");
        assert_eq!(files.relative("a.b/noext"), "a.b/noext.png");
        assert_eq!(files.relative(".hidden"), ".hidden.png");
    }
}
