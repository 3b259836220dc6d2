//! The labeler's run configuration: one TOML file (plus CLI overrides), validated once.
//!
//! ```toml
//! teachers = ["../teachers/demo.toml"]   # files of [[teacher]] specs, relative to this file
//! output = "../out/shards"               # local path or object_store URL
//!
//! [[dataset]]
//! name = "pool"
//! location = "../out/world/pool/images"
//! supervised = { source = "world_truth", location = "../out/world/pool/truth", tasks = ["classification"] }
//! ```
//! Relative paths are resolved against the directory of the file that names them, so a config works
//! from any working directory. Unknown keys are errors naming the file and the key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::DecodeLimits;
use crate::runtime::Provider;
use crate::spec::{RawTeacher, Task, TeacherSpec, Thresholds};

/// Where a dataset's supervised labels come from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum SupervisedSource {
    /// The synthetic world's sidecars: `<location>/<stem>.json`, `.seg.png`, `.depth.png` for image
    /// `<stem>.<ext>`.
    WorldTruth { location: String, tasks: Vec<Task> },
    /// A CSV file `key,class_id` (header line optional) with one class label per image key.
    ClassTable { file: String },
}

impl SupervisedSource {
    /// Tasks this source labels.
    pub fn tasks(&self) -> Vec<Task> {
        match self {
            SupervisedSource::WorldTruth { tasks, .. } => tasks.clone(),
            SupervisedSource::ClassTable { .. } => vec![Task::Classification],
        }
    }
}

/// A dataset as written in the config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    /// Store prefix holding the images.
    pub location: String,
    /// File extensions to include (lower case, without the dot).
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
    pub supervised: Option<SupervisedSource>,
}

fn default_extensions() -> Vec<String> {
    ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"].iter().map(|s| s.to_string()).collect()
}

/// Execution settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    pub provider: Provider,
    /// Inference workers, each with its own session per teacher.
    pub inference_workers: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Let ONNX Runtime's idle intra-op threads busy-wait between parallel sections (its default). On the
    /// 640×480 benchmark this made the whole pipeline 25% faster than sleeping threads although the spinning
    /// takes CPU from decoding (BENCHMARKS.md); turn it off when other processes need the cores.
    pub spin_wait: bool,
    /// Threads decoding and resizing images.
    pub decode_threads: usize,
    /// Concurrent object fetches.
    pub fetch_concurrency: usize,
    /// Images per pipeline chunk (the unit that moves between stages).
    pub chunk_images: usize,
    /// Chunks in flight between two stages (bounds memory).
    pub queue_chunks: usize,
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
            spin_wait: true,
            decode_threads: cores,
            fetch_concurrency: 32,
            chunk_images: 64,
            queue_chunks: 2,
            row_group_rows: 256,
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
                return Err(invalid("teachers", format!("two teachers label {:?}; one teacher per task", t.spec.task)));
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
            match &mut d.supervised {
                Some(SupervisedSource::WorldTruth { location, tasks }) => {
                    *location = resolve_location(location, &base);
                    if tasks.is_empty() {
                        return Err(invalid(
                            &format!("dataset[{i}].supervised.tasks"),
                            "list at least one task".into(),
                        ));
                    }
                }
                Some(SupervisedSource::ClassTable { file }) => *file = resolve_location(file, &base),
                None => {}
            }
            for task in d.supervised.as_ref().map(|s| s.tasks()).unwrap_or_default() {
                if !tasks.contains(&task) {
                    return Err(invalid(
                        &format!("dataset[{i}].supervised"),
                        format!("{task:?} labels need a {task:?} teacher in the config to fix the class list"),
                    ));
                }
            }
        }
        let run = raw.run.clone();
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
}
