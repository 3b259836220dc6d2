//! The labeler's run configuration: one TOML file (plus CLI overrides), validated once.
//!
//! ```toml
//! teachers = ["../teachers/demo.toml"]   # files of [[teacher]] specs, relative to this file
//! output = "../out/shards"               # local path or object_store URL
//!
//! [[dataset]]
//! name = "pool"
//! location = "../out/world/pool/images"
//!
//! [[dataset]]
//! name = "labelled"
//! location = "s3://bucket/photos"
//! supervised = { classification = { csv = "labels.csv" }, detection = { coco = "instances.json" } }
//! ```
//! A dataset's `supervised` labels are read from the formats datasets already come with, so they need no
//! conversion step; one entry per task, in any combination, and the teachers label only the other tasks:
//! - `classification = { csv = "labels.csv" }`: lines `key,class` (class name or index), or
//!   `classification = { folders = true }`: the class is the first folder of the key (ImageFolder layout);
//! - `detection = { coco = "instances.json" }`: COCO boxes, `images[].file_name` = the key, categories
//!   matched by name;
//! - `segmentation = { masks = "../masks", extension = "png" }`: an 8-bit PNG per image at
//!   `<masks>/<key without extension>.<extension>`, values = class ids, 255 = ignore;
//! - `depth = { maps = "../depth", format = "png16", scale = 0.001 }`: metric depth per image at
//!   `<maps>/<key without extension>.png` (16-bit, value × `scale` metres) or `.npy` (`format = "npy"`:
//!   float32, float64 or uint16, value × `scale`, 1 by default).
//!
//! A dataset's `format` says how its images are kept (`labeler::pipeline` plans and reads them):
//! - `format = "files"` (default): one object per image, listed under `location`, kept when its extension
//!   is in `extensions`;
//! - `format = "webdataset"`: `.tar` shards under `location`; each sample's image member (the first of
//!   `extensions`, default jpg, jpeg, png, webp, that the sample has) is one input keyed
//!   `<tar path>/<sample key>`; `supervised = { classification = { member = "cls" } }` reads the class (an
//!   index or a name) from the sample's `.cls` member, `{ member = "json", field = "label" }` from a field
//!   of its `.json` member;
//! - `format = "parquet"`: `.parquet` files under `location` with an image column, Binary or a struct with
//!   a Binary `bytes` field (`image_column`, default the first of `image`, `jpg`, `png`, `webp` present), and
//!   optionally a key column (`key_column`, default `key` if present, else the row number); each row is
//!   one input keyed `<file path>/<key>`.
//!
//! A packed dataset may name its containers instead of having them listed: `pattern =
//! "shards/{00000..00123}.tar"` (WebDataset's brace patterns, relative to `location`).
//!
//! Any dataset may be planned from a key list instead of a listing, because listing a bucket of hundreds
//! of millions of objects takes hours and an inventory of it usually exists already: `key_list =
//! "keys.txt"` (one key per line), `"keys.csv"` (a header with `key` and optionally `size`), or an S3
//! Inventory report's `"s3://inv/…/manifest.json"`; `key_list_format` when the name does not say which.
//! The extension filter applies as for a listing.
//!
//! Class names map to the class list of the config's teacher of the same task, so supervised
//! classification, detection and segmentation need that teacher. `labeler::labels` documents each format in
//! full. Whole-dataset files (CSV, COCO) are read once when a shard starts; per-image files are fetched with
//! the images, so mask and depth locations may be object-store URLs like image locations.
//!
//! Relative paths are resolved against the directory of the file that names them, so a config works
//! from any working directory. Unknown keys are errors naming the file and the key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::DecodeLimits;
use crate::runtime::Provider;
use crate::spec::{RawTeacher, Task, TeacherSpec, Thresholds};

/// A dataset's supervised labels, per task; at least one task.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "toml::Table")]
pub struct SupervisedLabels {
    pub classification: Option<ClassLabels>,
    pub detection: Option<BoxLabels>,
    pub segmentation: Option<MaskLabels>,
    pub depth: Option<DepthLabels>,
}

/// Where class labels come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ClassLabels {
    /// `csv = "<file>"`: a `key,class` CSV file (path or URL).
    Csv(String),
    /// `folders = true`: the first folder of each key names its class.
    Folders,
    /// `member = "cls"` (`webdataset` only): the text of the sample's member with this extension is the
    /// class (name or index), as WebDataset's `.cls` files hold it; with `field = "label"` the member is a
    /// JSON object and that field holds the class.
    Member { extension: String, field: Option<String> },
}

/// `detection = { coco = "<file>" }`: a COCO instances JSON file (path or URL).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BoxLabels {
    pub coco: String,
}

/// `segmentation = { masks = "<location>", extension = "png" }`: one PNG mask per image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskLabels {
    /// Store location holding the masks, mirroring the image keys.
    pub masks: String,
    /// Extension of the mask files, without the dot.
    pub extension: String,
}

/// `depth = { maps = "<location>", format = "png16" | "npy", scale = … }`: one metric depth map per image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthLabels {
    /// Store location holding the maps, mirroring the image keys.
    pub maps: String,
    pub format: DepthFormat,
    /// Metres per stored unit.
    pub scale: f32,
}

/// How depth maps are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DepthFormat {
    /// 16-bit grayscale PNG (`.png`).
    Png16,
    /// NumPy array (`.npy`), float32, float64 or uint16.
    Npy,
}

impl DepthFormat {
    /// File extension of the maps, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            DepthFormat::Png16 => "png",
            DepthFormat::Npy => "npy",
        }
    }
}

/// `supervised` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervised {
    classification: Option<RawClassLabels>,
    detection: Option<BoxLabels>,
    segmentation: Option<RawMaskLabels>,
    depth: Option<RawDepthLabels>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClassLabels {
    csv: Option<String>,
    folders: Option<bool>,
    member: Option<String>,
    field: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaskLabels {
    masks: String,
    extension: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDepthLabels {
    maps: String,
    format: DepthFormat,
    scale: Option<f32>,
}

impl TryFrom<toml::Table> for SupervisedLabels {
    type Error = String;

    fn try_from(table: toml::Table) -> Result<Self, String> {
        // The sources of earlier versions get a message naming their replacement.
        if let Some(source) = table.get("source") {
            return Err(match source.as_str() {
                Some("class_table") => "`source = \"class_table\"` is replaced by \
                    `supervised = { classification = { csv = \"<file>\" } }` (lines `key,class`)"
                    .into(),
                Some("world_truth") => "`source = \"world_truth\"` is gone: the world writes standard label files \
                    (labels.csv, instances.json, seg/, depth/), read with `classification = { csv = … }`, \
                    `detection = { coco = … }`, `segmentation = { masks = … }`, `depth = { maps = … }`; \
                    see configs/demo-label.toml"
                    .into(),
                _ => "supervised labels are given per task (`classification`, `detection`, `segmentation`, \
                    `depth`), not with `source`"
                    .into(),
            });
        }
        let raw: RawSupervised = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("supervised: {}", e.message()))?;
        let classification = match raw.classification {
            None => None,
            Some(RawClassLabels { field: Some(_), member: None, .. }) => {
                return Err(
                    "supervised.classification.field: names a field of a JSON `member`; give `member` too".into()
                )
            }
            Some(RawClassLabels { csv: Some(file), folders: None | Some(false), member: None, .. }) => {
                Some(ClassLabels::Csv(file))
            }
            Some(RawClassLabels { csv: None, folders: Some(true), member: None, .. }) => Some(ClassLabels::Folders),
            Some(RawClassLabels { csv: None, folders: None | Some(false), member: Some(ext), field }) => {
                let extension = ext.trim_start_matches('.').to_ascii_lowercase();
                if extension.is_empty() || extension.contains('/') {
                    return Err(format!("supervised.classification.member: {extension:?} is not a member extension"));
                }
                Some(ClassLabels::Member { extension, field })
            }
            Some(_) => {
                return Err("supervised.classification: give either `csv = \"<file>\"`, `folders = true` or \
                            `member = \"cls\"`"
                    .into())
            }
        };
        let segmentation = match raw.segmentation {
            None => None,
            Some(RawMaskLabels { masks, extension }) => {
                let extension = extension.as_deref().unwrap_or("png").trim_start_matches('.').to_owned();
                if extension.is_empty() || extension.contains('/') {
                    return Err(format!("supervised.segmentation.extension: {extension:?} is not a file extension"));
                }
                Some(MaskLabels { masks, extension })
            }
        };
        let depth = match raw.depth {
            None => None,
            Some(RawDepthLabels { maps, format, scale }) => {
                let scale = match (format, scale) {
                    (_, Some(s)) => s,
                    (DepthFormat::Npy, None) => 1.0,
                    (DepthFormat::Png16, None) => {
                        return Err("supervised.depth.scale: 16-bit PNG depth needs `scale`, the metres per unit \
                                    (0.001 for millimetres)"
                            .into())
                    }
                };
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(format!("supervised.depth.scale: {scale} is not a positive number of metres"));
                }
                Some(DepthLabels { maps, format, scale })
            }
        };
        let labels = SupervisedLabels { classification, detection: raw.detection, segmentation, depth };
        if labels.tasks().is_empty() {
            return Err(
                "supervised: name at least one of `classification`, `detection`, `segmentation`, `depth`".into()
            );
        }
        Ok(labels)
    }
}

impl SupervisedLabels {
    /// Tasks these labels cover.
    pub fn tasks(&self) -> Vec<Task> {
        let mut tasks = Vec::new();
        if self.classification.is_some() {
            tasks.push(Task::Cls);
        }
        if self.detection.is_some() {
            tasks.push(Task::Det);
        }
        if self.segmentation.is_some() {
            tasks.push(Task::Seg);
        }
        if self.depth.is_some() {
            tasks.push(Task::Depth);
        }
        tasks
    }

    /// Resolve every file and location against `base` (the config file's directory).
    fn resolve(&mut self, base: &Path) {
        if let Some(ClassLabels::Csv(file)) = &mut self.classification {
            *file = resolve_location(file, base);
        }
        if let Some(d) = &mut self.detection {
            d.coco = resolve_location(&d.coco, base);
        }
        if let Some(s) = &mut self.segmentation {
            s.masks = resolve_location(&s.masks, base);
        }
        if let Some(d) = &mut self.depth {
            d.maps = resolve_location(&d.maps, base);
        }
    }
}

/// How a dataset keeps its images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// One object per image, found by listing the location.
    #[default]
    Files,
    /// WebDataset `.tar` shards: each sample's image member is one input, keyed `<tar path>/<sample key>`.
    Webdataset,
    /// Parquet files with an image bytes column: each row is one input, keyed `<file path>/<key>`.
    Parquet,
}

impl DatasetFormat {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::Files => "files",
            DatasetFormat::Webdataset => "webdataset",
            DatasetFormat::Parquet => "parquet",
        }
    }
}

/// A dataset as written in the config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    /// Store prefix holding the images (or the tar / Parquet files of a packed format).
    pub location: String,
    /// `files` (default), `webdataset` or `parquet`.
    #[serde(default)]
    pub format: DatasetFormat,
    /// Image extensions to include (lower case, without the dot): file names for `files`, member
    /// extensions of a sample for `webdataset`. Empty in the file means the format's default.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// `parquet`: the image column, Binary or a struct with a Binary `bytes` field (Hugging Face
    /// datasets). Default: the first of `image`, `jpg`, `png`, `webp` the file has.
    pub image_column: Option<String>,
    /// `parquet`: the column whose value names a row (string or integer). Default: `key` when the file has
    /// it, else the row's number in its file.
    pub key_column: Option<String>,
    /// Packed formats: the containers by name instead of by listing, relative to `location`, with
    /// WebDataset's brace patterns (`shards/{00000..00123}.tar`, `{a,b}/x.tar`).
    pub pattern: Option<String>,
    /// A list of the dataset's keys (path or URL) to plan from instead of listing `location`: see
    /// [`KeyListFormat`]. Packed formats list their containers in it (tars, Parquet files).
    pub key_list: Option<String>,
    /// How `key_list` is written; default from its name (`manifest.json`: S3 Inventory, `.csv[.gz]`: CSV,
    /// `.txt[.gz]`: text).
    pub key_list_format: Option<KeyListFormat>,
    pub supervised: Option<SupervisedLabels>,
}

/// How a dataset's `key_list` is written. Every format is read as a stream (`.gz` files decompressed as
/// they arrive), so a list of hundreds of millions of keys is never held whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyListFormat {
    /// One key per line, relative to `location`; blank lines are skipped; sizes unknown.
    Text,
    /// A header row naming a `key` column (relative to `location`) and optionally a `size` column (bytes),
    /// then one row per key; RFC 4180 quoting.
    Csv,
    /// An S3 Inventory report's `manifest.json` (CSV or Parquet data files). Keys are bucket keys: those
    /// under `location`'s prefix are planned relative to it, others skipped and counted.
    S3Inventory,
}

impl KeyListFormat {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            KeyListFormat::Text => "text",
            KeyListFormat::Csv => "csv",
            KeyListFormat::S3Inventory => "s3-inventory",
        }
    }

    /// The format a key list's file name implies, if any.
    pub fn from_name(file: &str) -> Option<Self> {
        let name = file.rsplit('/').next().unwrap_or(file).to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name == "manifest.json" {
            Some(KeyListFormat::S3Inventory)
        } else if name.ends_with(".csv") {
            Some(KeyListFormat::Csv)
        } else if name.ends_with(".txt") {
            Some(KeyListFormat::Text)
        } else {
            None
        }
    }
}

/// Image extensions a `files` dataset lists by default.
pub fn default_extensions() -> Vec<String> {
    ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"].iter().map(|s| s.to_string()).collect()
}

/// Most names a brace pattern may expand to.
const MAX_PATTERN_NAMES: usize = 10_000_000;

/// Expand WebDataset's brace patterns: `{00000..00123}` is the numbers from the first to the last, padded to
/// the first's width (`{0..9}` unpadded), `{a,b}` each alternative; several braces give every combination,
/// in order.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("{pattern:?} has a `}}` without its `{{`"));
        }
        return Ok(vec![pattern.to_owned()]);
    };
    let close = open + pattern[open..].find('}').ok_or_else(|| format!("{pattern:?} has a `{{` without its `}}`"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    if body.contains('{') {
        return Err(format!("{pattern:?}: braces do not nest"));
    }
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let bad = || format!("{pattern:?}: `{{{body}}}` is not a range of numbers like {{00000..00123}}");
        let (from, to): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if from > to {
            return Err(format!("{pattern:?}: the range `{{{body}}}` runs backwards"));
        }
        if to - from >= MAX_PATTERN_NAMES as u64 {
            return Err(format!("{pattern:?} names more than {MAX_PATTERN_NAMES} containers"));
        }
        let width = if a.starts_with('0') { a.len() } else { 0 };
        (from..=to).map(|n| format!("{n:0width$}")).collect()
    } else {
        body.split(',').map(str::to_owned).collect()
    };
    let rest = expand_braces(tail)?;
    if choices.len().saturating_mul(rest.len()) > MAX_PATTERN_NAMES {
        return Err(format!("{pattern:?} names more than {MAX_PATTERN_NAMES} containers"));
    }
    Ok(choices.iter().flat_map(|c| rest.iter().map(move |r| format!("{head}{c}{r}"))).collect())
}

/// Image member extensions a `webdataset` sample is searched for by default, in order of preference.
pub fn default_member_extensions() -> Vec<String> {
    ["jpg", "jpeg", "png", "webp"].iter().map(|s| s.to_string()).collect()
}

/// Execution settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    pub provider: Provider,
    /// Inference workers, each with its own session per teacher. When neither this nor `intra_threads`
    /// is set, both are chosen from the teachers (`default_parallelism`).
    pub inference_workers: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// How `inference_workers` × `intra_threads` were chosen (set at load; reported in the shard stats).
    #[serde(skip_deserializing)]
    pub parallelism: String,
    /// Let ONNX Runtime's idle intra-op threads busy-wait between parallel sections (its default). On the
    /// 640×480 benchmark this made the whole pipeline 25% faster than sleeping threads although the spinning
    /// takes CPU from decoding (BENCHMARKS.md); turn it off when other processes need the cores.
    pub spin_wait: bool,
    /// Where the per-pixel and per-class post-processing runs: `"device"` (an ONNX Runtime graph on the
    /// teacher's execution provider; only compact results cross to the host), `"host"` (the labeler's
    /// vectorised Rust), or `"auto"` (device on a GPU provider, host on the CPU provider).
    pub postprocess: crate::runtime::Postprocess,
    /// Threads decoding and resizing images.
    pub decode_threads: usize,
    /// Concurrent object fetches.
    pub fetch_concurrency: usize,
    /// Images per pipeline chunk (the unit that moves between stages).
    pub chunk_images: usize,
    /// Chunks in flight between two stages (memory is bounded by the byte budgets below as well).
    pub queue_chunks: usize,
    /// Encoded image bytes the pipeline holds at once: from fetching until decoding, or until the writer
    /// when `store_images` is on. Chunks are also cut at a quarter of it, so memory is bounded by bytes
    /// whatever the size of the images.
    pub fetched_bytes_in_flight: u64,
    /// Decoded pixels and resized teacher inputs held at once between decoding and the teachers.
    pub decoded_bytes_in_flight: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Rows per data file; a shard is split into files of at most this many rows.
    pub file_rows: usize,
    /// Also cut a data file when its encoded size passes this many bytes.
    pub file_bytes: usize,
    /// Keep the encoded image bytes in the records (the trainer reads images from there).
    pub store_images: bool,
    /// Decode JPEGs at reduced scale when every teacher input is much smaller than the image.
    pub scaled_decode: bool,
    pub max_image_bytes: u64,
    pub max_pixels: u64,
    pub max_side: u32,
    /// Retries of a failed read before the attempt fails (a missing object is never retried: it becomes
    /// an error row). Network errors, throttling, 5xx, timeouts and permission errors are retried.
    pub fetch_retries: u32,
    /// First wait between retries, in milliseconds; it doubles on each retry (up to 64×).
    pub retry_backoff_ms: u64,
    /// Fail the attempt, committing nothing, when more than this fraction of a shard's inputs end as
    /// error rows: that many broken inputs usually means a wrong location or format, not bad images.
    pub max_error_fraction: f64,
    /// Time-to-live of the lease a shard attempt holds while it runs (`shards::lease`), refreshed every
    /// third of it. A janitor leaves the files of an attempt alone until its lease has expired; an attempt
    /// that cannot refresh its lease in time fails instead of committing.
    pub lease_seconds: u64,
}

impl Default for RunSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self {
            provider: Provider::Cpu,
            inference_workers: 1,
            intra_threads: cores,
            parallelism: String::new(),
            spin_wait: true,
            postprocess: crate::runtime::Postprocess::Auto,
            decode_threads: cores,
            fetch_concurrency: 32,
            chunk_images: 64,
            queue_chunks: 2,
            fetched_bytes_in_flight: 512 << 20,
            decoded_bytes_in_flight: 128 << 20,
            row_group_rows: 128,
            file_rows: 8192,
            file_bytes: 256 << 20,
            store_images: true,
            scaled_decode: true,
            max_image_bytes: 64 << 20,
            max_pixels: 100_000_000,
            max_side: 16384,
            fetch_retries: 5,
            retry_backoff_ms: 200,
            max_error_fraction: 0.05,
            lease_seconds: 60,
        }
    }
}

/// The config file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    teachers: Vec<String>,
    output: String,
    #[serde(default)]
    thresholds: Thresholds,
    #[serde(default)]
    run: RunSettings,
    #[serde(rename = "dataset")]
    datasets: Vec<DatasetConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeacherFile {
    #[serde(default)]
    thresholds: Option<Thresholds>,
    #[serde(rename = "teacher")]
    teachers: Vec<RawTeacher>,
}

/// A loaded teacher spec with the file it came from.
#[derive(Debug, Clone)]
pub struct SpecEntry {
    pub spec: TeacherSpec,
    pub file: PathBuf,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct LabelConfig {
    pub file: PathBuf,
    pub teachers: Vec<SpecEntry>,
    pub output: String,
    pub thresholds: Thresholds,
    pub run: RunSettings,
    pub datasets: Vec<DatasetConfig>,
}

/// A config problem, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: field `{field}`: {reason}")]
    Invalid { file: String, field: String, reason: String },
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
}

pub use shards::resolve_location;

fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.display().to_string(), source })
}

/// Load teacher specs from a `[[teacher]]` file.
pub fn load_teacher_file(file: &Path, defaults: &Thresholds) -> Result<Vec<SpecEntry>, ConfigError> {
    let text = read(file)?;
    let parsed: TeacherFile = toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { file: file.display().to_string(), message: e.to_string() })?;
    let thresholds = parsed.thresholds.unwrap_or(*defaults);
    parsed
        .teachers
        .into_iter()
        .map(|raw| Ok(SpecEntry { spec: TeacherSpec::from_raw(raw, file, &thresholds)?, file: file.to_owned() }))
        .collect()
}

/// Inference workers × intra-op threads when the config sets neither, with the reason (shard stats).
///
/// ONNX Runtime spreads one run over its intra-op threads, which pays for large batched inputs but not for
/// the static batch-1 exports most users bring: on 2 cores, MobileNetV3 + LR-ASPP + SSDlite + DPT at batch 1
/// labelled faster as two workers of one thread each than as one worker of two (BENCHMARKS.md). So on the
/// CPU, when every teacher runs one image at a time, each core gets a worker with its own sessions (memory:
/// one set of sessions per worker); otherwise one worker uses every core. GPU providers keep one worker.
fn default_parallelism(
    teachers: &[SpecEntry],
    provider: crate::runtime::Provider,
    cores: usize,
) -> (usize, usize, String) {
    let batch_one = teachers.iter().all(|t| t.spec.batch.size() == 1);
    if provider == crate::runtime::Provider::Cpu && batch_one && cores > 1 {
        (cores, 1, format!("auto: every teacher runs batch 1, so {cores} workers x 1 intra-op thread"))
    } else if provider == crate::runtime::Provider::Cpu {
        (1, cores, format!("auto: batched teachers, so 1 worker x {cores} intra-op threads"))
    } else {
        (1, cores, "auto: one worker per GPU provider".into())
    }
}

impl LabelConfig {
    /// Load and validate `file`; `output` overrides the file's output location.
    pub fn load(file: &Path, output: Option<&str>) -> Result<Self, ConfigError> {
        let text = read(file)?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { file: file.display().to_string(), message: e.to_string() })?;
        let base = file.parent().unwrap_or(Path::new(".")).to_owned();
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            file: file.display().to_string(),
            field: field.to_owned(),
            reason,
        };
        let mut teachers = Vec::new();
        for t in &raw.teachers {
            let path = PathBuf::from(resolve_location(t, &base));
            teachers.extend(load_teacher_file(&path, &raw.thresholds)?);
        }
        if teachers.is_empty() {
            return Err(invalid("teachers", "no teacher specs found".into()));
        }
        let mut names = BTreeSet::new();
        let mut tasks = BTreeSet::new();
        for t in &teachers {
            if !names.insert(t.spec.name.clone()) {
                return Err(invalid("teachers", format!("two teachers are named {:?}", t.spec.name)));
            }
            if !tasks.insert(t.spec.task) {
                return Err(invalid(
                    "teachers",
                    format!("two teachers label {}; one teacher per task", t.spec.task.name()),
                ));
            }
        }
        if raw.datasets.is_empty() {
            return Err(invalid("dataset", "at least one [[dataset]] is needed".into()));
        }
        let mut dataset_names = BTreeSet::new();
        let mut datasets = raw.datasets.clone();
        for (i, d) in datasets.iter_mut().enumerate() {
            if d.name.is_empty() || d.name.contains(['/', '\t', '\n']) {
                return Err(invalid(
                    &format!("dataset[{i}].name"),
                    format!("{:?} must be non-empty without '/'", d.name),
                ));
            }
            if !dataset_names.insert(d.name.clone()) {
                return Err(invalid(&format!("dataset[{i}].name"), format!("{:?} appears twice", d.name)));
            }
            d.location = resolve_location(&d.location, &base);
            d.extensions = d.extensions.iter().map(|e| e.trim_start_matches('.').to_ascii_lowercase()).collect();
            if d.extensions.is_empty() {
                d.extensions = match d.format {
                    DatasetFormat::Webdataset => default_member_extensions(),
                    _ => default_extensions(),
                };
            }
            if d.format != DatasetFormat::Parquet {
                for (field, set) in [("image_column", &d.image_column), ("key_column", &d.key_column)] {
                    if set.is_some() {
                        return Err(invalid(
                            &format!("dataset[{i}].{field}"),
                            format!("applies to `format = \"parquet\"` only; this dataset is {:?}", d.format.name()),
                        ));
                    }
                }
            }
            if let Some(pattern) = &d.pattern {
                let field = format!("dataset[{i}].pattern");
                if d.format == DatasetFormat::Files {
                    return Err(invalid(&field, "applies to `format = \"webdataset\"` or `\"parquet\"`".into()));
                }
                expand_braces(pattern).map_err(|reason| invalid(&field, reason))?;
            }
            match (&d.key_list, d.key_list_format) {
                (None, Some(_)) => {
                    return Err(invalid(&format!("dataset[{i}].key_list_format"), "is set without `key_list`".into()))
                }
                (None, None) => {}
                (Some(list), format) => {
                    let field = format!("dataset[{i}].key_list");
                    if d.pattern.is_some() {
                        return Err(invalid(&field, "and `pattern` both name the containers; give one of them".into()));
                    }
                    if list.trim().is_empty() {
                        return Err(invalid(&field, "is empty: name a key list file".into()));
                    }
                    let list = resolve_location(list, &base);
                    if format.is_none() && KeyListFormat::from_name(&list).is_none() {
                        return Err(invalid(
                            &format!("dataset[{i}].key_list_format"),
                            format!(
                                "cannot tell the format of {list} from its name; set `key_list_format` to \
                                 \"text\", \"csv\" or \"s3-inventory\""
                            ),
                        ));
                    }
                    let local = list.strip_prefix("file://").unwrap_or(&list);
                    if (!list.contains("://") || list.starts_with("file://")) && !Path::new(local).is_file() {
                        return Err(invalid(&field, format!("{local} is not a file")));
                    }
                    d.key_list_format = format.or_else(|| KeyListFormat::from_name(&list));
                    d.key_list = Some(list);
                }
            }
            for (field, set) in [("image_column", &d.image_column), ("key_column", &d.key_column)] {
                if set.as_deref().is_some_and(|c| c.trim().is_empty()) {
                    return Err(invalid(&format!("dataset[{i}].{field}"), "is empty: name a column".into()));
                }
            }
            match (d.format, d.supervised.as_ref().and_then(|s| s.classification.as_ref())) {
                (DatasetFormat::Webdataset, _) | (_, None | Some(ClassLabels::Csv(_))) => {}
                (DatasetFormat::Files, Some(ClassLabels::Folders)) => {}
                (format, Some(ClassLabels::Member { .. })) => {
                    return Err(invalid(
                        &format!("dataset[{i}].supervised.classification.member"),
                        format!("reads a member of a WebDataset sample; this dataset is {:?}", format.name()),
                    ))
                }
                (format, Some(ClassLabels::Folders)) => {
                    return Err(invalid(
                        &format!("dataset[{i}].supervised.classification.folders"),
                        format!("class folders need loose files; this dataset is {:?}", format.name()),
                    ))
                }
            }
            if let Some(s) = &mut d.supervised {
                s.resolve(&base);
            }
            // Class names are mapped to the teacher's class list; depth has none.
            for task in d.supervised.as_ref().map(|s| s.tasks()).unwrap_or_default() {
                if task != Task::Depth && !tasks.contains(&task) {
                    return Err(invalid(
                        &format!("dataset[{i}].supervised.{}", task.name()),
                        format!("{0} labels need a {0} teacher in the config to fix the class list", task.name()),
                    ));
                }
            }
        }
        let mut run = raw.run.clone();
        // Which [run] keys the file sets (serde's defaults hide that in `raw`).
        let run_keys: Vec<String> = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("run").and_then(|r| r.as_table()).map(|r| r.keys().cloned().collect()))
            .unwrap_or_default();
        if !run_keys.iter().any(|k| k == "inference_workers" || k == "intra_threads") {
            let (workers, threads, why) = default_parallelism(&teachers, run.provider, run.intra_threads);
            (run.inference_workers, run.intra_threads, run.parallelism) = (workers, threads, why);
        } else {
            run.parallelism = "as configured".into();
        }
        for (field, v) in [
            ("run.inference_workers", run.inference_workers),
            ("run.intra_threads", run.intra_threads),
            ("run.decode_threads", run.decode_threads),
            ("run.fetch_concurrency", run.fetch_concurrency),
            ("run.chunk_images", run.chunk_images),
            ("run.queue_chunks", run.queue_chunks),
            ("run.row_group_rows", run.row_group_rows),
            ("run.file_rows", run.file_rows),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1".into()));
            }
        }
        for (field, v) in [
            ("run.fetched_bytes_in_flight", run.fetched_bytes_in_flight),
            ("run.decoded_bytes_in_flight", run.decoded_bytes_in_flight),
        ] {
            if v < 1 << 20 {
                return Err(invalid(field, format!("is {v} bytes, must be at least 1 MiB (1048576)")));
            }
        }
        // A stored image is one value of a Binary column, whose offsets are 32-bit.
        if run.store_images && run.max_image_bytes > 1 << 30 {
            return Err(invalid(
                "run.max_image_bytes",
                format!("is {} bytes, at most 1 GiB (1073741824) when `store_images = true`", run.max_image_bytes),
            ));
        }
        if !(0.0..=1.0).contains(&run.max_error_fraction) {
            return Err(invalid("run.max_error_fraction", format!("is {}, must be in [0, 1]", run.max_error_fraction)));
        }
        if run.lease_seconds == 0 {
            return Err(invalid("run.lease_seconds", "must be at least 1".into()));
        }
        let output = output.map(str::to_owned).unwrap_or_else(|| resolve_location(&raw.output, &base));
        Ok(Self { file: file.to_owned(), teachers, output, thresholds: raw.thresholds, run, datasets })
    }

    /// How each teacher session runs.
    pub fn session_settings(&self) -> crate::runtime::SessionSettings {
        crate::runtime::SessionSettings {
            provider: self.run.provider,
            intra_threads: self.run.intra_threads,
            spin_wait: self.run.spin_wait,
            postprocess: self.run.postprocess,
        }
    }

    /// Time-to-live of a shard attempt's lease.
    pub fn lease_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.run.lease_seconds)
    }

    /// Decoder limits from the run settings.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_encoded_bytes: self.run.max_image_bytes,
            max_width: self.run.max_side,
            max_height: self.run.max_side,
            max_pixels: self.run.max_pixels,
            ..DecodeLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, run: &str) -> PathBuf {
        let teachers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../teachers/demo.toml");
        let file = dir.join("label.toml");
        let text = format!(
            "teachers = [{:?}]\noutput = \"out\"\n\n[run]\n{run}\n\n[[dataset]]\nname = \"d\"\nlocation = \"images\"\n",
            teachers.to_str().unwrap()
        );
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn the_lease_lasts_a_minute_unless_set_and_never_zero_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LabelConfig::load(&write_config(dir.path(), ""), None).unwrap();
        assert_eq!(cfg.lease_ttl(), std::time::Duration::from_secs(60));
        let cfg = LabelConfig::load(&write_config(dir.path(), "lease_seconds = 5"), None).unwrap();
        assert_eq!(cfg.lease_ttl(), std::time::Duration::from_secs(5));
        let err = LabelConfig::load(&write_config(dir.path(), "lease_seconds = 0"), None).unwrap_err().to_string();
        assert!(err.contains("label.toml") && err.contains("`run.lease_seconds`: must be at least 1"), "{err}");
    }

    fn workspace() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Load a config with one dataset whose `supervised` is `supervised`, written into `dir`.
    fn load(dir: &Path, supervised: &str) -> Result<LabelConfig, ConfigError> {
        let teachers = workspace().join("teachers/demo.toml");
        let file = dir.join("run.toml");
        std::fs::write(
            &file,
            format!(
                "teachers = [{:?}]\noutput = \"out\"\n\n[[dataset]]\nname = \"d\"\nlocation = \"images\"\n\
                 supervised = {supervised}\n",
                teachers.to_str().unwrap()
            ),
        )
        .unwrap();
        LabelConfig::load(&file, None)
    }

    #[test]
    fn workers_and_threads_follow_the_teachers_unless_set() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // Demo teachers run dynamic batches: one worker on every core.
        let demo = LabelConfig::load(&workspace().join("configs/bench-label.toml"), None).unwrap();
        assert_eq!((demo.run.inference_workers, demo.run.intra_threads), (1, cores));
        // Real-architecture exports run batch 1: a worker per core, one thread each.
        let real = LabelConfig::load(&workspace().join("configs/bench-label-real.toml"), None).unwrap();
        let want = if cores > 1 { (cores, 1) } else { (1, 1) };
        assert_eq!((real.run.inference_workers, real.run.intra_threads), want);
        assert!(real.run.parallelism.starts_with("auto: every teacher runs batch 1") || cores == 1);
        // Either field set by the user: both are kept as configured.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("label.toml");
        let text = std::fs::read_to_string(workspace().join("configs/bench-label-real.toml")).unwrap();
        let text = text.replace("../teachers/", &format!("{}/teachers/", workspace().display()));
        std::fs::write(&file, text.replace("[run]", "[run]\nintra_threads = 2")).unwrap();
        let set = LabelConfig::load(&file, None).unwrap();
        assert_eq!(
            (set.run.inference_workers, set.run.intra_threads, set.run.parallelism.as_str()),
            (1, 2, "as configured")
        );
    }

    #[test]
    fn demo_configs_name_the_world_label_files() {
        let cfg = LabelConfig::load(&workspace().join("configs/demo-label.toml"), None).unwrap();
        let tasks: Vec<Vec<Task>> =
            cfg.datasets.iter().map(|d| d.supervised.as_ref().map(|s| s.tasks()).unwrap_or_default()).collect();
        use Task::*;
        assert_eq!(tasks, [vec![Cls], vec![Det], vec![Seg], vec![Depth], vec![]]);
        let depth = cfg.datasets[3].supervised.as_ref().unwrap().depth.as_ref().unwrap();
        assert!(depth.maps.ends_with("configs/../out/world/depth/depth"), "{}", depth.maps);
        assert_eq!((depth.format, depth.scale), (DepthFormat::Png16, 0.001));
        let eval = LabelConfig::load(&workspace().join("configs/demo-eval-label.toml"), None).unwrap();
        let s = eval.datasets[0].supervised.as_ref().unwrap();
        assert_eq!(s.tasks(), [Cls, Det, Seg, Depth]);
        assert!(matches!(&s.classification, Some(ClassLabels::Csv(f)) if f.ends_with("out/world/eval/labels.csv")));
        assert_eq!(s.segmentation.as_ref().unwrap().extension, "png");
    }

    #[test]
    fn paths_resolve_against_the_config_and_urls_stay() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(
            dir.path(),
            "{ classification = { folders = true }, detection = { coco = \"s3://b/instances.json\" }, \
             segmentation = { masks = \"masks\", extension = \".PNG\" }, depth = { maps = \"d\", format = \"npy\" } }",
        )
        .unwrap();
        let s = cfg.datasets[0].supervised.as_ref().unwrap();
        assert_eq!(s.classification, Some(ClassLabels::Folders));
        assert_eq!(s.detection.as_ref().unwrap().coco, "s3://b/instances.json");
        let masks = s.segmentation.as_ref().unwrap();
        assert_eq!(
            (masks.masks.as_str(), masks.extension.as_str()),
            (dir.path().join("masks").to_str().unwrap(), "PNG")
        );
        let depth = s.depth.as_ref().unwrap();
        assert_eq!((depth.format, depth.scale), (DepthFormat::Npy, 1.0), "npy depth is in metres by default");
    }

    #[test]
    fn bad_supervised_tables_are_errors_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for (supervised, wants) in [
            ("{ source = \"class_table\", file = \"labels.csv\" }", "classification = { csv = "),
            ("{ source = \"world_truth\", location = \"t\", tasks = [\"depth\"] }", "depth = { maps = "),
            ("{ classification = { csv = \"a.csv\", folders = true } }", "either `csv"),
            ("{ classification = { folders = false } }", "either `csv"),
            ("{ depth = { maps = \"d\", format = \"png16\" } }", "supervised.depth.scale"),
            ("{ depth = { maps = \"d\", format = \"png16\", scale = -1.0 } }", "-1 is not a positive"),
            ("{ depth = { maps = \"d\", format = \"exr\", scale = 1.0 } }", "exr"),
            ("{ detection = { coco = \"i.json\", boxes = \"xywh\" } }", "unknown field `boxes`"),
            ("{ segmentation = { masks = \"m\", extension = \"\" } }", "not a file extension"),
            ("{ captions = { csv = \"c.csv\" } }", "unknown field `captions`"),
            ("{}", "at least one"),
        ] {
            let err = load(dir.path(), supervised).unwrap_err().to_string();
            assert!(err.contains("run.toml") && err.contains(wants), "{supervised}: {err}");
        }
    }

    /// Load a config with one dataset whose extra fields are `fields`, written into `dir`.
    fn load_dataset(dir: &Path, fields: &str) -> Result<LabelConfig, ConfigError> {
        let teachers = workspace().join("teachers/demo.toml");
        let file = dir.join("run.toml");
        std::fs::write(
            &file,
            format!(
                "teachers = [{:?}]\noutput = \"out\"\n\n[[dataset]]\nname = \"d\"\nlocation = \"images\"\n{fields}\n",
                teachers.to_str().unwrap()
            ),
        )
        .unwrap();
        LabelConfig::load(&file, None)
    }

    #[test]
    fn dataset_formats_default_to_files_and_bring_their_own_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let d = &load_dataset(dir.path(), "").unwrap().datasets[0];
        assert_eq!((d.format, d.extensions.clone()), (DatasetFormat::Files, default_extensions()));
        let d = &load_dataset(dir.path(), "format = \"webdataset\"").unwrap().datasets[0];
        assert_eq!((d.format, d.extensions.clone()), (DatasetFormat::Webdataset, default_member_extensions()));
        let d = &load_dataset(
            dir.path(),
            "format = \"webdataset\"\nextensions = [\".PNG\"]\n\
            supervised = { classification = { member = \".cls\" } }",
        )
        .unwrap()
        .datasets[0];
        assert_eq!(d.extensions, ["png"]);
        let s = d.supervised.as_ref().unwrap();
        assert_eq!(s.classification, Some(ClassLabels::Member { extension: "cls".into(), field: None }));
        let d = &load_dataset(
            dir.path(),
            "format = \"webdataset\"\nsupervised = { classification = { member = \"json\", field = \"label\" } }",
        )
        .unwrap()
        .datasets[0];
        let member = &d.supervised.as_ref().unwrap().classification;
        assert_eq!(member, &Some(ClassLabels::Member { extension: "json".into(), field: Some("label".into()) }));
        let d = &load_dataset(dir.path(), "format = \"parquet\"\nimage_column = \"jpg\"").unwrap().datasets[0];
        assert_eq!(
            (d.format, d.image_column.as_deref(), d.key_column.as_deref()),
            (DatasetFormat::Parquet, Some("jpg"), None)
        );
    }

    #[test]
    fn brace_patterns_expand_like_webdatasets() {
        assert_eq!(expand_braces("a.tar").unwrap(), ["a.tar"]);
        assert_eq!(
            expand_braces("s/{00008..00011}.tar").unwrap(),
            ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
        );
        assert_eq!(expand_braces("{8..10}.tar").unwrap(), ["8.tar", "9.tar", "10.tar"]);
        assert_eq!(expand_braces("{a,b}/{0..1}.tar").unwrap(), ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]);
        for (bad, wants) in [
            ("{0..3.tar", "without its `}`"),
            ("0..3}.tar", "without its `{`"),
            ("{x..3}.tar", "not a range of numbers"),
            ("{5..3}.tar", "runs backwards"),
            ("{0..99999999}.tar", "more than"),
        ] {
            let err = expand_braces(bad).unwrap_err();
            assert!(err.contains(wants), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_format_fields_are_errors_naming_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        for (fields, wants) in [
            ("format = \"tars\"", "unknown variant `tars`, expected one of `files`, `webdataset`, `parquet`"),
            ("image_column = \"jpg\"", "`dataset[0].image_column`: applies to `format = \"parquet\"` only"),
            ("format = \"webdataset\"\nkey_column = \"k\"", "`dataset[0].key_column`: applies to"),
            ("format = \"parquet\"\nimage_column = \" \"", "`dataset[0].image_column`: is empty"),
            ("pattern = \"{0..3}.tar\"", "`dataset[0].pattern`: applies to `format = \"webdataset\"`"),
            ("format = \"webdataset\"\npattern = \"{0..3.tar\"", "`dataset[0].pattern`: \"{0..3.tar\" has a `{`"),
            (
                "supervised = { classification = { member = \"cls\" } }",
                "`dataset[0].supervised.classification.member`: reads a member of a WebDataset sample",
            ),
            (
                "format = \"parquet\"\nsupervised = { classification = { folders = true } }",
                "`dataset[0].supervised.classification.folders`: class folders need loose files",
            ),
            (
                "format = \"webdataset\"\nsupervised = { classification = { member = \"cls\", csv = \"a\" } }",
                "either `csv",
            ),
            (
                "format = \"webdataset\"\nsupervised = { classification = { csv = \"a\", field = \"label\" } }",
                "supervised.classification.field: names a field of a JSON `member`",
            ),
        ] {
            let err = load_dataset(dir.path(), fields).unwrap_err().to_string();
            assert!(err.contains("run.toml") && err.contains(wants), "{fields}: {err}");
        }
    }

    #[test]
    fn key_lists_are_resolved_and_their_format_known_at_load() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["keys.txt", "keys.csv.gz", "list.dat", "manifest.json"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let d = &load_dataset(dir.path(), "key_list = \"keys.txt\"").unwrap().datasets[0];
        assert_eq!(d.key_list.as_deref(), Some(dir.path().join("keys.txt").to_str().unwrap()));
        assert_eq!(d.key_list_format, Some(KeyListFormat::Text));
        let d = &load_dataset(dir.path(), "key_list = \"keys.csv.gz\"").unwrap().datasets[0];
        assert_eq!(d.key_list_format, Some(KeyListFormat::Csv));
        let d = &load_dataset(dir.path(), "key_list = \"s3://inv/b/c/2026/manifest.json\"").unwrap().datasets[0];
        assert_eq!(
            (d.key_list.as_deref(), d.key_list_format),
            (Some("s3://inv/b/c/2026/manifest.json"), Some(KeyListFormat::S3Inventory))
        );
        let d = &load_dataset(dir.path(), "key_list = \"list.dat\"\nkey_list_format = \"csv\"").unwrap().datasets[0];
        assert_eq!(d.key_list_format, Some(KeyListFormat::Csv));
        for (fields, wants) in [
            ("key_list = \"list.dat\"", "`dataset[0].key_list_format`: cannot tell the format of"),
            ("key_list = \"missing.txt\"", "`dataset[0].key_list`: "),
            ("key_list_format = \"text\"", "`dataset[0].key_list_format`: is set without `key_list`"),
            ("key_list = \"keys.txt\"\nkey_list_format = \"tsv\"", "unknown variant `tsv`"),
            (
                "format = \"webdataset\"\npattern = \"{0..3}.tar\"\nkey_list = \"keys.txt\"",
                "`dataset[0].key_list`: and `pattern` both name the containers",
            ),
        ] {
            let err = load_dataset(dir.path(), fields).unwrap_err().to_string();
            assert!(err.contains("run.toml") && err.contains(wants), "{fields}: {err}");
        }
    }

    #[test]
    fn class_labels_need_the_teacher_of_their_task() {
        let dir = tempfile::tempdir().unwrap();
        let teachers = dir.path().join("t.toml");
        let model = workspace().join("tools/teachers/onnx/depth.onnx");
        std::fs::write(
            &teachers,
            format!("[[teacher]]\nname = \"d\"\nmodel = {:?}\npreset = \"midas-small\"\n", model.to_str().unwrap()),
        )
        .unwrap();
        let file = dir.path().join("run.toml");
        let write = |supervised: &str| {
            std::fs::write(
                &file,
                format!(
                    "teachers = [\"t.toml\"]\noutput = \"out\"\n[[dataset]]\nname = \"d\"\nlocation = \"i\"\n\
                     supervised = {supervised}\n"
                ),
            )
            .unwrap();
        };
        write("{ segmentation = { masks = \"m\" } }");
        let err = LabelConfig::load(&file, None).unwrap_err().to_string();
        assert!(err.contains("dataset[0].supervised.segmentation") && err.contains("segmentation teacher"), "{err}");
        write("{ depth = { maps = \"m\", format = \"npy\" } }");
        LabelConfig::load(&file, None).unwrap();
    }
}
