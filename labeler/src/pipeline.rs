//! One shard, end to end: fetch → decode → teachers → records → Parquet → commit.
//!
//! Stages run concurrently and hand over chunks of `chunk_images` images through bounded queues, so
//! memory is bounded by (queue depth × chunk size) whatever the shard size, and the teachers are fed while
//! the next chunk is fetched and decoded:
//!
//! ```text
//! fetch (tokio, bounded concurrency) → decode + resize for every teacher (rayon) → inference workers (one
//! session per teacher per worker: normalise into the batch tensor, run) → post-process (rayon) → writer
//! (re-orders chunks, encodes row groups, puts files) → manifest
//! ```
//! Only the model runs on the inference workers; everything else per image runs on the parallel stages,
//! so the teachers wait as little as possible for host work.
//! Every input ends in exactly one place: a record row, or an error row naming the stage and reason.
//! Output rows follow the sorted input order, so the same shard gives byte-identical Parquet on re-runs.

// Error rows (`ErrorRecord`) travel by value through `Result`s once per failed image; boxing them would
// only add an allocation on the error path.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fast_image_resize::Resizer;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use schemas::{
    ClsLabel, DepthLabel, DetBox, DetLabel, ErrorRecord, ImageRecord, LabelSource, ManifestCounts, ManifestTeacher,
    SegLabel, ShardManifest, Stage,
};
use serde::Serialize;
use shards::inputs::{self, InputEntry, InputIndex};
use shards::{CommitOutcome, Location, ShardCommitter, ShardId};
use tracing::{info, warn};

use crate::config::{LabelConfig, SupervisedSource};
use crate::decode::{self, DecodeLimits};
use crate::spec::{Task, TeacherSpec};
use crate::teacher::{ImageFailure, Prediction, RawOutput, Teacher, TeacherError, TeacherInput};

/// The version written into provenance.
pub const LABELER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Receives progress from a running shard (a progress bar in the binary, nothing in tests).
pub trait Progress: Send + Sync {
    /// The shard has `total` inputs.
    fn start(&self, _total: u64) {}
    /// `n` more inputs are done (labelled or errored).
    fn advance(&self, _n: u64) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Errors that stop a shard (per-image problems never do: they become error rows).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Open(#[from] shards::OpenError),
    #[error(transparent)]
    Inputs(#[from] shards::inputs::InputError),
    #[error(transparent)]
    Commit(#[from] shards::CommitError),
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    #[error("no frozen input manifest under {output}/inputs: run `labeler plan` first")]
    NotPlanned { output: String },
    #[error("reading supervised labels {file}: {reason}")]
    Supervised { file: String, reason: String },
    #[error("encoding records: {0}")]
    Encode(String),
    #[error("the {0} stage stopped unexpectedly")]
    StageDied(&'static str),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// What happened to a shard.
#[derive(Debug)]
pub enum ShardOutcome {
    /// This run committed the shard.
    Committed { manifest: ShardManifest, stats: ShardStats },
    /// The shard was committed before this run started: nothing was done.
    AlreadyCommitted { manifest: ShardManifest },
    /// Another attempt committed while this one ran; this attempt's files are orphans.
    LostRace { manifest: ShardManifest, stats: ShardStats },
}

/// Per-shard numbers: counts by outcome and busy time per stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardStats {
    pub inputs: u64,
    pub labelled: u64,
    pub errors: u64,
    pub errors_by_reason: BTreeMap<String, u64>,
    /// Seconds each stage spent working (summed over its threads).
    pub stage_seconds: BTreeMap<String, f64>,
    pub wall_seconds: f64,
    pub images_per_second: f64,
    /// The process's peak resident set size so far (Linux `VmHWM`), when the platform reports it.
    pub peak_rss_bytes: Option<u64>,
    /// CPU seconds the process used (all threads) from when the teachers were loaded to the commit (Linux).
    pub cpu_seconds: Option<f64>,
}

/// Knobs for measuring the pipeline, not for labelling.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardOptions {
    /// Run each teacher once per input shape and reuse those outputs ([`Teacher::replay_outputs`]): the
    /// run does all host-side work (fetch, decode, resize, post-process, write) with almost no inference.
    /// Its labels are wrong, so it is for benchmarks writing to a scratch output only.
    pub replay_outputs: bool,
}

/// Peak resident set size of this process (Linux `VmHWM`; `None` where `/proc` does not exist).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Current resident set size of this process (Linux `VmRSS`).
pub fn resident_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system, all threads) this process has used, from `/proc/self/stat`.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based), in
    // clock ticks of 1/100 s on Linux.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// The smallest image side every teacher's largest input still needs, so a JPEG may be decoded at reduced
/// scale down to it; `None` when some teacher takes the image at its own size (no reduction is safe).
pub fn scaled_decode_min_side(cfg: &LabelConfig) -> Option<u32> {
    let mut side = 0u32;
    for t in &cfg.teachers {
        if t.spec.resize == crate::spec::Resize::Original {
            return None;
        }
        let scale = t.spec.scales.iter().copied().fold(1.0f32, f32::max);
        side = side.max(((t.spec.input_size[0].max(t.spec.input_size[1]) as f32) * scale).ceil() as u32);
    }
    Some(side)
}

/// Freeze the inputs of every dataset in `cfg` under the output location.
pub fn plan(cfg: &LabelConfig) -> Result<InputIndex, PipelineError> {
    let rt = runtime()?;
    rt.block_on(async {
        let out = shards::open(&cfg.output)?;
        let mut sources = Vec::new();
        for d in &cfg.datasets {
            sources.push((d.name.clone(), shards::open(&d.location)?));
        }
        let exts: HashMap<String, Vec<String>> =
            cfg.datasets.iter().map(|d| (d.name.clone(), d.extensions.clone())).collect();
        let mut entries = Vec::new();
        for (name, loc) in &sources {
            let allowed = &exts[name];
            let listed = inputs::list_entries(&[(name.clone(), loc.clone())], |key| {
                let ext = key.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
                allowed.contains(&ext)
            })
            .await?;
            info!(dataset = %name, images = listed.len(), location = %loc.display, "listed dataset");
            entries.extend(listed);
        }
        Ok(inputs::freeze(&out, entries, inputs::DEFAULT_PART_SIZE).await?)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, PipelineError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(PipelineError::Runtime)
}

fn schema_task(t: Task) -> schemas::Task {
    match t {
        Task::Classification => schemas::Task::Cls,
        Task::Detection => schemas::Task::Det,
        Task::Segmentation => schemas::Task::Seg,
        Task::Depth => schemas::Task::Depth,
    }
}

/// Everything a dataset brings besides images.
#[derive(Clone)]
struct DatasetCtx {
    images: Location,
    supervised: Option<SupervisedCtx>,
}

#[derive(Clone)]
enum SupervisedCtx {
    World { truth: Location, tasks: Vec<Task>, depth_png_scale: f32 },
    Table(Arc<HashMap<String, u16>>),
}

fn load_class_table(file: &str, classes: usize) -> Result<HashMap<String, u16>, PipelineError> {
    let bad = |reason: String| PipelineError::Supervised { file: file.to_owned(), reason };
    let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("key")) {
            continue;
        }
        let (key, class) =
            line.rsplit_once(',').ok_or_else(|| bad(format!("line {}: expected `key,class_id`", i + 1)))?;
        let class: u16 =
            class.trim().parse().map_err(|_| bad(format!("line {}: class id {class:?} is not a number", i + 1)))?;
        if class as usize >= classes {
            return Err(bad(format!("line {}: class id {class} is not below the {classes} classes", i + 1)));
        }
        out.insert(key.trim().to_owned(), class);
    }
    Ok(out)
}

/// One fetched input.
struct Fetched {
    entry: InputEntry,
    uri: String,
    bytes: Result<Bytes, ErrorRecord>,
    truth: Option<Result<[Bytes; 3], ErrorRecord>>,
}

/// One decoded input, resized for every teacher that still has to label it.
struct Decoded {
    entry: InputEntry,
    uri: String,
    outcome: Result<(decode::DecodedImage, ImageRecord, Vec<Option<TeacherInput>>), ErrorRecord>,
}

/// One input after inference: its record so far and each teacher's raw outputs (`None`: not needed).
struct Inferred {
    entry: InputEntry,
    uri: String,
    outcome: Result<(ImageRecord, Vec<Option<RawOutput>>), ErrorRecord>,
}

struct Chunk<T> {
    seq: u64,
    items: Vec<T>,
}

fn error_record(entry: &InputEntry, uri: &str, stage: Stage, reason: &str, detail: String) -> ErrorRecord {
    ErrorRecord {
        key: entry.key.clone(),
        dataset: entry.dataset.clone(),
        source_uri: uri.to_owned(),
        stage,
        reason: reason.to_owned(),
        detail,
    }
}

fn io_reason(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::NotFound { .. } => "not_found",
        _ => "io",
    }
}

async fn get_bytes(loc: &Location, rel: &str, max: u64) -> Result<Bytes, (&'static str, String)> {
    let path = loc.child(rel);
    let got = loc.store.get(&path).await.map_err(|e| (io_reason(&e), e.to_string()))?;
    if got.meta.size > max {
        return Err(("too_large", format!("{} bytes is over the limit of {max}", got.meta.size)));
    }
    got.bytes().await.map_err(|e| (io_reason(&e), e.to_string()))
}

async fn fetch_one(entry: InputEntry, ds: &DatasetCtx, max_bytes: u64) -> Fetched {
    let path = ds.images.child(&entry.key);
    let uri = ds.images.uri_of(&path);
    let bytes = if entry.size > max_bytes {
        Err(error_record(
            &entry,
            &uri,
            Stage::Fetch,
            "too_large",
            format!("{} bytes is over the limit of {max_bytes}", entry.size),
        ))
    } else {
        get_bytes(&ds.images, &entry.key, max_bytes)
            .await
            .map_err(|(reason, detail)| error_record(&entry, &uri, Stage::Fetch, reason, detail))
    };
    let truth = match &ds.supervised {
        Some(SupervisedCtx::World { truth, .. }) if bytes.is_ok() => {
            let stem = entry.key.rsplit_once('.').map(|(s, _)| s).unwrap_or(&entry.key).to_owned();
            let mut parts = Vec::with_capacity(3);
            let mut failure = None;
            for suffix in [".json", ".seg.png", ".depth.png"] {
                let rel = format!("{stem}{suffix}");
                match get_bytes(truth, &rel, 64 << 20).await {
                    Ok(b) => parts.push(b),
                    Err((reason, detail)) => {
                        let file = truth.uri_of(&truth.child(&rel));
                        failure = Some(error_record(
                            &entry,
                            &uri,
                            Stage::SupervisedLabel,
                            if reason == "not_found" { "missing_label" } else { reason },
                            format!("{file}: {detail}"),
                        ));
                        break;
                    }
                }
            }
            Some(match failure {
                Some(f) => Err(f),
                None => {
                    let [a, b, c]: [Bytes; 3] = parts.try_into().expect("three parts");
                    Ok([a, b, c])
                }
            })
        }
        _ => None,
    };
    Fetched { entry, uri, bytes, truth }
}

/// Build the supervised part of a record.
fn supervised_labels(
    rec: &mut ImageRecord,
    f_entry: &InputEntry,
    uri: &str,
    ctx: &SupervisedCtx,
    truth: Option<&[Bytes; 3]>,
    class_counts: &HashMap<Task, usize>,
) -> Result<(), ErrorRecord> {
    let bad = |detail: String| error_record(f_entry, uri, Stage::SupervisedLabel, "invalid_label", detail);
    let one_hot = |class: usize, n: usize| -> Result<Vec<f32>, ErrorRecord> {
        if class >= n {
            return Err(bad(format!("class id {class} is not below the {n} classes")));
        }
        let mut v = vec![0f32; n];
        v[class] = 1.0;
        Ok(v)
    };
    match ctx {
        SupervisedCtx::Table(table) => {
            if let Some(&class) = table.get(&f_entry.key) {
                let n = class_counts[&Task::Classification];
                rec.cls = Some(ClsLabel { source: LabelSource::Supervised, probs: one_hot(class as usize, n)? });
            }
        }
        SupervisedCtx::World { tasks, depth_png_scale, .. } => {
            let [json, seg, depth] = truth.ok_or_else(|| bad("no ground truth fetched".into()))?;
            let t = world::decode_truth(json, seg, depth, *depth_png_scale).map_err(|e| bad(format!("{e:#}")))?;
            if (t.width, t.height) != (rec.width, rec.height) {
                return Err(bad(format!(
                    "ground truth is {}x{} but the image is {}x{}",
                    t.width, t.height, rec.width, rec.height
                )));
            }
            for task in tasks {
                match task {
                    Task::Classification => {
                        let n = class_counts[task];
                        rec.cls = Some(ClsLabel {
                            source: LabelSource::Supervised,
                            probs: one_hot(t.scene_class as usize, n)?,
                        });
                    }
                    Task::Detection => {
                        let n = class_counts[task];
                        let mut boxes = Vec::with_capacity(t.boxes.len());
                        for b in &t.boxes {
                            if b.class_id as usize >= n {
                                return Err(bad(format!("box class {} is not below the {n} classes", b.class_id)));
                            }
                            boxes.push(DetBox {
                                x0: b.x0,
                                y0: b.y0,
                                x1: b.x1,
                                y1: b.y1,
                                class_id: b.class_id as u16,
                                score: 1.0,
                            });
                        }
                        rec.det = Some(DetLabel { source: LabelSource::Supervised, boxes });
                    }
                    Task::Segmentation => {
                        rec.seg = Some(SegLabel {
                            source: LabelSource::Supervised,
                            height: t.height as u16,
                            width: t.width as u16,
                            mask: t.seg.clone(),
                        });
                    }
                    Task::Depth => {
                        rec.depth = Some(DepthLabel {
                            source: LabelSource::Supervised,
                            kind: schemas::DepthKind::Metric,
                            height: t.height as u16,
                            width: t.width as u16,
                            values: t.depth.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

fn apply_prediction(rec: &mut ImageRecord, spec: &TeacherSpec, p: Prediction) {
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

/// Footer key-value metadata: everything needed to know how the labels were made. No timestamps or
/// attempt ids, so re-runs are byte-identical.
fn provenance(
    cfg: &LabelConfig,
    teachers: &[(TeacherSpec, String)],
    index: &InputIndex,
    shard: ShardId,
) -> Vec<KeyValue> {
    let teachers_json: Vec<_> = teachers
        .iter()
        .map(|(spec, sha)| {
            serde_json::json!({
                "name": spec.name, "task": spec.task, "model_sha256": sha,
                "model_file": spec.model.file_name().map(|f| f.to_string_lossy().into_owned()),
                "spec": spec,
            })
        })
        .collect();
    let kv = |k: &str, v: String| KeyValue::new(k.to_owned(), v);
    vec![
        kv("must.teachers", serde_json::to_string(&teachers_json).expect("json")),
        kv("must.thresholds", serde_json::to_string(&cfg.thresholds).expect("json")),
        kv("must.input_manifest_sha256", index.sha256.clone()),
        kv("must.shard", shard.index.to_string()),
        kv("must.num_shards", shard.count.to_string()),
        kv("must.labeler_version", LABELER_VERSION.to_owned()),
    ]
}

/// The crate's writer properties plus this run's row-group size and provenance footer.
fn with_provenance(
    props: parquet::file::properties::WriterProperties,
    row_group_rows: Option<usize>,
    kv: &[KeyValue],
) -> parquet::file::properties::WriterProperties {
    let mut all: Vec<KeyValue> = props.key_value_metadata().cloned().unwrap_or_default();
    all.extend(kv.iter().cloned());
    let mut builder = props.into_builder().set_key_value_metadata(Some(all));
    if let Some(rows) = row_group_rows {
        builder = builder.set_max_row_group_row_count(Some(rows));
    }
    builder.build()
}

/// Rolls records into Parquet files of bounded size and hands them to the committer.
struct FileRoller {
    schema: arrow_schema::SchemaRef,
    props: parquet::file::properties::WriterProperties,
    writer: Option<ArrowWriter<Vec<u8>>>,
    rows_in_file: u64,
    file_rows: u64,
    file_bytes: usize,
}

impl FileRoller {
    fn new(
        schema: arrow_schema::SchemaRef,
        props: parquet::file::properties::WriterProperties,
        file_rows: u64,
        file_bytes: usize,
    ) -> Self {
        Self { schema, props, writer: None, rows_in_file: 0, file_rows, file_bytes }
    }

    /// Write `batch`, cutting files at `file_rows` rows (or `file_bytes`); returns the files completed.
    fn write(&mut self, batch: &arrow_array::RecordBatch) -> Result<Vec<(Vec<u8>, u64)>, PipelineError> {
        let enc = |e: parquet::errors::ParquetError| PipelineError::Encode(e.to_string());
        let mut done = Vec::new();
        let mut offset = 0;
        if batch.num_rows() == 0 && self.writer.is_none() {
            // An empty batch still opens a file, so an empty errors file is written.
            self.writer =
                Some(ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(self.props.clone())).map_err(enc)?);
        }
        while offset < batch.num_rows() {
            if self.writer.is_none() {
                self.writer =
                    Some(ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(self.props.clone())).map_err(enc)?);
            }
            let room = (self.file_rows - self.rows_in_file) as usize;
            let take = room.min(batch.num_rows() - offset);
            let w = self.writer.as_mut().expect("writer");
            w.write(&batch.slice(offset, take)).map_err(enc)?;
            w.flush().map_err(enc)?;
            offset += take;
            self.rows_in_file += take as u64;
            if self.rows_in_file >= self.file_rows || w.bytes_written() >= self.file_bytes {
                done.extend(self.finish()?);
            }
        }
        Ok(done)
    }

    fn finish(&mut self) -> Result<Option<(Vec<u8>, u64)>, PipelineError> {
        match self.writer.take() {
            None => Ok(None),
            Some(w) => {
                let bytes = w.into_inner().map_err(|e| PipelineError::Encode(e.to_string()))?;
                let rows = std::mem::take(&mut self.rows_in_file);
                Ok(Some((bytes, rows)))
            }
        }
    }
}

struct StageClock(AtomicU64);
impl StageClock {
    fn add(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    fn seconds(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// Label shard `shard` of the plan under `cfg.output`, committing it as `attempt`.
pub fn run_shard(
    cfg: &LabelConfig,
    shard: ShardId,
    attempt: &str,
    progress: &dyn Progress,
) -> Result<ShardOutcome, PipelineError> {
    let out = shards::open(&cfg.output)?;
    run_shard_at(cfg, &out, shard, attempt, progress)
}

/// Like [`run_shard`], writing to an already opened output location (tests wrap it to inject faults).
pub fn run_shard_at(
    cfg: &LabelConfig,
    out: &Location,
    shard: ShardId,
    attempt: &str,
    progress: &dyn Progress,
) -> Result<ShardOutcome, PipelineError> {
    run_shard_with(cfg, out, shard, attempt, progress, ShardOptions::default())
}

/// Like [`run_shard_at`], with measurement options.
pub fn run_shard_with(
    cfg: &LabelConfig,
    out: &Location,
    shard: ShardId,
    attempt: &str,
    progress: &dyn Progress,
    options: ShardOptions,
) -> Result<ShardOutcome, PipelineError> {
    let started = Instant::now();
    let rt = runtime()?;
    let out = out.clone();
    if let Some(manifest) = rt.block_on(shards::read_manifest(&out, shard))? {
        info!(shard = %shard, attempt = %manifest.attempt, "shard already committed; nothing to do");
        return Ok(ShardOutcome::AlreadyCommitted { manifest });
    }
    // Teachers first: a spec that does not fit its model fails here, before any image is read.
    let workers = cfg.run.inference_workers;
    let mut worker_teachers: Vec<Vec<Teacher>> = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut ts = Vec::new();
        for entry in &cfg.teachers {
            let mut teacher = Teacher::load(&entry.spec, &entry.file, &cfg.session_settings())?;
            if options.replay_outputs {
                teacher.replay_outputs();
            }
            ts.push(teacher);
        }
        worker_teachers.push(ts);
    }
    let cpu_at_start = process_cpu_seconds();
    let teacher_info: Vec<(TeacherSpec, String)> =
        worker_teachers[0].iter().map(|t| (t.spec().clone(), t.model_sha256().to_owned())).collect();
    let class_counts: HashMap<Task, usize> = teacher_info.iter().map(|(s, _)| (s.task, s.classes.len())).collect();

    let index = match rt.block_on(inputs::read_index(&out)) {
        Ok(i) => i,
        Err(shards::inputs::InputError::Read { source: object_store::Error::NotFound { .. }, .. }) => {
            return Err(PipelineError::NotPlanned { output: cfg.output.clone() })
        }
        Err(e) => return Err(e.into()),
    };
    let entries = rt.block_on(inputs::read_shard(&out, &index, shard.index, shard.count))?;
    info!(shard = %shard, attempt, inputs = entries.len(), "labelling shard");
    progress.start(entries.len() as u64);

    let mut datasets: HashMap<String, DatasetCtx> = HashMap::new();
    for d in &cfg.datasets {
        let supervised = match &d.supervised {
            None => None,
            Some(SupervisedSource::WorldTruth { location, tasks }) => {
                let truth = shards::open(location)?;
                Some(SupervisedCtx::World { truth, tasks: tasks.clone(), depth_png_scale: world_depth_scale(location) })
            }
            Some(SupervisedSource::ClassTable { file }) => Some(SupervisedCtx::Table(Arc::new(load_class_table(
                file,
                class_counts.get(&Task::Classification).copied().unwrap_or(0),
            )?))),
        };
        datasets.insert(d.name.clone(), DatasetCtx { images: shards::open(&d.location)?, supervised });
    }
    let datasets = Arc::new(datasets);

    let clocks: Arc<BTreeMap<&'static str, StageClock>> = Arc::new(
        ["fetch", "decode", "inference", "session", "postprocess", "write"]
            .into_iter()
            .map(|s| (s, StageClock(AtomicU64::new(0))))
            .collect(),
    );
    let chunk = cfg.run.chunk_images;
    let queue = cfg.run.queue_chunks;
    let limits = cfg.decode_limits();
    // `None` (a teacher needs the full image) turns reduced-scale decoding off.
    let scaled_decode = if cfg.run.scaled_decode { scaled_decode_min_side(cfg) } else { None };
    let store_images = cfg.run.store_images;

    let (fetch_tx, fetch_rx) = sync_channel::<Chunk<Fetched>>(queue);
    let (decode_tx, decode_rx) = sync_channel::<Chunk<Decoded>>(queue);
    let (infer_tx, infer_rx) = sync_channel::<Chunk<Inferred>>(queue * workers.max(1));
    let (label_tx, label_rx) = sync_channel::<Chunk<Result<ImageRecord, ErrorRecord>>>(queue);
    let specs: Vec<TeacherSpec> = teacher_info.iter().map(|(s, _)| s.clone()).collect();

    std::thread::scope(|scope| -> Result<ShardOutcome, PipelineError> {
        // Fetch.
        let fetch_handle = {
            let datasets = datasets.clone();
            let clocks = clocks.clone();
            let rt = &rt;
            let entries = &entries;
            let max_bytes = cfg.run.max_image_bytes;
            let concurrency = cfg.run.fetch_concurrency;
            scope.spawn(move || fetch_stage(rt, entries, &datasets, chunk, concurrency, max_bytes, &clocks, fetch_tx))
        };
        // Decode.
        let decode_handle = {
            let clocks = clocks.clone();
            let datasets = datasets.clone();
            let class_counts = class_counts.clone();
            let threads = cfg.run.decode_threads;
            let specs = &specs;
            scope.spawn(move || {
                let settings = DecodeSettings { limits, scaled_min_side: scaled_decode, store_images };
                decode_stage(fetch_rx, decode_tx, threads, &settings, specs, &datasets, &class_counts, &clocks)
            })
        };
        // Inference workers share one queue of decoded chunks.
        let decode_rx = Arc::new(Mutex::new(decode_rx));
        let mut worker_handles = Vec::new();
        for teachers in worker_teachers {
            let rx = decode_rx.clone();
            let tx = infer_tx.clone();
            let clocks = clocks.clone();
            worker_handles.push(scope.spawn(move || inference_stage(teachers, rx, tx, &clocks)));
        }
        drop(infer_tx);
        // Post-processing, in parallel, off the inference workers.
        let post_handle = {
            let clocks = clocks.clone();
            let specs = &specs;
            let threads = cfg.run.decode_threads;
            scope.spawn(move || postprocess_stage(infer_rx, label_tx, threads, specs, &clocks))
        };

        // Write (this thread).
        let result = write_stage(cfg, &rt, &out, shard, attempt, &teacher_info, &index, label_rx, progress, &clocks);
        // If writing failed the receivers are gone and the stages end on their next send.
        let fetched = fetch_handle.join().map_err(|_| PipelineError::StageDied("fetch"))?;
        let decoded = decode_handle.join().map_err(|_| PipelineError::StageDied("decode"))?;
        for h in worker_handles {
            h.join().map_err(|_| PipelineError::StageDied("inference"))?;
        }
        post_handle.join().map_err(|_| PipelineError::StageDied("postprocess"))?;
        let (committed, mut stats) = result?;
        if fetched != entries.len() as u64 || decoded != fetched {
            return Err(PipelineError::StageDied("fetch/decode (inputs went missing)"));
        }
        stats.inputs = entries.len() as u64;
        stats.wall_seconds = started.elapsed().as_secs_f64();
        stats.images_per_second = stats.inputs as f64 / stats.wall_seconds.max(1e-9);
        stats.peak_rss_bytes = peak_rss_bytes();
        stats.cpu_seconds = process_cpu_seconds().zip(cpu_at_start).map(|(end, start)| end - start);
        for (name, clock) in clocks.iter() {
            stats.stage_seconds.insert((*name).to_owned(), clock.seconds());
        }
        Ok(match committed {
            CommitOutcome::Committed(manifest) => ShardOutcome::Committed { manifest, stats },
            CommitOutcome::LostRace(manifest) => ShardOutcome::LostRace { manifest, stats },
        })
    })
}

/// `depth_png_scale` from the `world.json` next to a world truth directory (`<root>/<split>/truth`).
fn world_depth_scale(truth_location: &str) -> f32 {
    let path = PathBuf::from(truth_location);
    path.parent()
        .and_then(|p| p.parent())
        .map(|root| root.join("world.json"))
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("depth_png_scale").and_then(|s| s.as_f64()))
        .map(|s| s as f32)
        .unwrap_or(1000.0)
}

#[allow(clippy::too_many_arguments)]
fn fetch_stage(
    rt: &tokio::runtime::Runtime,
    entries: &[InputEntry],
    datasets: &HashMap<String, DatasetCtx>,
    chunk: usize,
    concurrency: usize,
    max_bytes: u64,
    clocks: &BTreeMap<&'static str, StageClock>,
    tx: SyncSender<Chunk<Fetched>>,
) -> u64 {
    let mut sent = 0u64;
    for (seq, part) in entries.chunks(chunk).enumerate() {
        let t = Instant::now();
        let items: Vec<Fetched> = rt.block_on(async {
            futures::stream::iter(part.iter().cloned())
                .map(|entry| {
                    let ds = datasets.get(&entry.dataset).cloned();
                    async move {
                        match ds {
                            Some(ds) => fetch_one(entry, &ds, max_bytes).await,
                            None => {
                                let uri = format!("{}/{}", entry.dataset, entry.key);
                                let err = error_record(
                                    &entry,
                                    &uri,
                                    Stage::Fetch,
                                    "unknown_dataset",
                                    format!("dataset {:?} is not in the config", entry.dataset),
                                );
                                Fetched { entry, uri, bytes: Err(err), truth: None }
                            }
                        }
                    }
                })
                .buffered(concurrency)
                .collect()
                .await
        });
        clocks["fetch"].add(t.elapsed());
        sent += items.len() as u64;
        if tx.send(Chunk { seq: seq as u64, items }).is_err() {
            break;
        }
    }
    sent
}

/// How the decode stage treats each input.
struct DecodeSettings {
    limits: DecodeLimits,
    /// Decode JPEGs at reduced scale down to this side (`None`: always full size).
    scaled_min_side: Option<u32>,
    store_images: bool,
}

#[allow(clippy::too_many_arguments)]
fn decode_stage(
    rx: Receiver<Chunk<Fetched>>,
    tx: SyncSender<Chunk<Decoded>>,
    threads: usize,
    settings: &DecodeSettings,
    specs: &[TeacherSpec],
    datasets: &HashMap<String, DatasetCtx>,
    class_counts: &HashMap<Task, usize>,
    clocks: &BTreeMap<&'static str, StageClock>,
) -> u64 {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("decode thread pool");
    let mut done = 0u64;
    for chunk in rx {
        let t = Instant::now();
        let items: Vec<Decoded> = pool.install(|| {
            use rayon::prelude::*;
            chunk
                .items
                .into_par_iter()
                .map_init(Resizer::new, |resizer, f| decode_one(f, settings, specs, resizer, datasets, class_counts))
                .collect()
        });
        clocks["decode"].add(t.elapsed());
        done += items.len() as u64;
        if tx.send(Chunk { seq: chunk.seq, items }).is_err() {
            break;
        }
    }
    done
}

/// Decode one input, attach its supervised labels, and resize it for every teacher whose task it still lacks.
fn decode_one(
    f: Fetched,
    settings: &DecodeSettings,
    specs: &[TeacherSpec],
    resizer: &mut Resizer,
    datasets: &HashMap<String, DatasetCtx>,
    class_counts: &HashMap<Task, usize>,
) -> Decoded {
    let Fetched { entry, uri, bytes, truth } = f;
    let outcome = (|| {
        let bytes = bytes?;
        let decoded = match settings.scaled_min_side {
            Some(side) => decode::decode_scaled(&bytes, &settings.limits, side, side),
            None => decode::decode(&bytes, &settings.limits),
        }
        .map_err(|e| error_record(&entry, &uri, Stage::Decode, e.reason, e.detail))?;
        let mut rec =
            ImageRecord::new(entry.key.clone(), entry.dataset.clone(), uri.clone(), decoded.width, decoded.height);
        rec.image_format = Some(decoded.format.to_owned());
        if let Some(ctx) = datasets.get(&entry.dataset).and_then(|d| d.supervised.as_ref()) {
            let truth = match &truth {
                Some(Err(e)) => return Err(e.clone()),
                Some(Ok(t)) => Some(t),
                None => None,
            };
            supervised_labels(&mut rec, &entry, &uri, ctx, truth, class_counts)?;
        }
        if settings.store_images {
            rec.image = Some(bytes.to_vec());
        }
        let inputs = specs
            .iter()
            .map(|spec| {
                rec.source(schema_task(spec.task)).is_none().then(|| TeacherInput::prepare(spec, &decoded.rgb, resizer))
            })
            .collect();
        Ok((decoded, rec, inputs))
    })();
    Decoded { entry, uri, outcome }
}

fn inference_stage(
    mut teachers: Vec<Teacher>,
    rx: Arc<Mutex<Receiver<Chunk<Decoded>>>>,
    tx: SyncSender<Chunk<Inferred>>,
    clocks: &BTreeMap<&'static str, StageClock>,
) {
    loop {
        let chunk = match rx.lock().expect("decode queue lock").recv() {
            Ok(c) => c,
            Err(_) => break,
        };
        let t = Instant::now();
        let session_before: f64 = teachers.iter().map(Teacher::session_seconds).sum();
        let items = infer_chunk(&mut teachers, chunk.items);
        clocks["inference"].add(t.elapsed());
        let session_after: f64 = teachers.iter().map(Teacher::session_seconds).sum();
        clocks["session"].add(Duration::from_secs_f64(session_after - session_before));
        if tx.send(Chunk { seq: chunk.seq, items }).is_err() {
            break;
        }
    }
}

/// An error row for a per-image failure inside a teacher.
fn image_failure_record(entry: &InputEntry, uri: &str, teacher: &str, f: ImageFailure) -> ErrorRecord {
    let stage = if f.stage == "preprocess" { Stage::Preprocess } else { Stage::Postprocess };
    error_record(entry, uri, stage, f.reason, format!("teacher {teacher:?}: {}", f.detail))
}

/// Run every teacher over the rows of a chunk that need it. Images are dropped once all teachers ran.
fn infer_chunk(teachers: &mut [Teacher], items: Vec<Decoded>) -> Vec<Inferred> {
    let n_teachers = teachers.len();
    let mut rows: Vec<Inferred> = Vec::with_capacity(items.len());
    let mut images: Vec<Option<(decode::DecodedImage, Vec<Option<TeacherInput>>)>> = Vec::with_capacity(items.len());
    for d in items {
        match d.outcome {
            Ok((img, rec, inputs)) => {
                let outcome = Ok((rec, (0..n_teachers).map(|_| None).collect()));
                rows.push(Inferred { entry: d.entry, uri: d.uri, outcome });
                images.push(Some((img, inputs)));
            }
            Err(e) => {
                rows.push(Inferred { entry: d.entry, uri: d.uri, outcome: Err(e) });
                images.push(None);
            }
        }
    }
    for (t, teacher) in teachers.iter_mut().enumerate() {
        let todo: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].outcome.is_ok() && images[i].as_ref().is_some_and(|(_, inputs)| inputs[t].is_some()))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let batch: Vec<(&image::RgbImage, &TeacherInput)> = todo
            .iter()
            .map(|&i| {
                let (img, inputs) = images[i].as_ref().expect("decoded");
                (&img.rgb, inputs[t].as_ref().expect("needed"))
            })
            .collect();
        let name = teacher.spec().name.clone();
        let result = catch_unwind(AssertUnwindSafe(|| teacher.infer(&batch)));
        let failure: Option<(&str, String)> = match result {
            Ok(Ok(raws)) => {
                for (&i, raw) in todo.iter().zip(raws) {
                    let Inferred { entry, uri, outcome } = &mut rows[i];
                    match raw {
                        Ok(raw) => {
                            if let Ok((_, raws)) = outcome {
                                raws[t] = Some(raw);
                            }
                        }
                        Err(f) => *outcome = Err(image_failure_record(entry, uri, &name, f)),
                    }
                }
                None
            }
            Ok(Err(e)) => {
                warn!(teacher = %name, error = %e, "a batch failed in inference; its images become error rows");
                Some(("inference_failed", e.to_string()))
            }
            Err(_) => Some(("panic", format!("teacher {name:?} panicked"))),
        };
        if let Some((reason, detail)) = failure {
            for &i in &todo {
                let Inferred { entry, uri, outcome } = &mut rows[i];
                *outcome = Err(error_record(entry, uri, Stage::Inference, reason, detail.clone()));
            }
        }
    }
    rows
}

fn postprocess_stage(
    rx: Receiver<Chunk<Inferred>>,
    tx: SyncSender<Chunk<Result<ImageRecord, ErrorRecord>>>,
    threads: usize,
    specs: &[TeacherSpec],
    clocks: &BTreeMap<&'static str, StageClock>,
) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("post-processing thread pool");
    for chunk in rx {
        let t = Instant::now();
        let items: Vec<Result<ImageRecord, ErrorRecord>> = pool.install(|| {
            use rayon::prelude::*;
            chunk.items.into_par_iter().map(|item| finish_one(item, specs)).collect()
        });
        clocks["postprocess"].add(t.elapsed());
        if tx.send(Chunk { seq: chunk.seq, items }).is_err() {
            break;
        }
    }
}

/// Turn one row's raw outputs into pseudo labels. A panic or a record that does not validate becomes an
/// error row, never a bad row in a shard.
fn finish_one(item: Inferred, specs: &[TeacherSpec]) -> Result<ImageRecord, ErrorRecord> {
    let Inferred { entry, uri, outcome } = item;
    let (mut rec, raws) = outcome?;
    for (spec, raw) in specs.iter().zip(raws) {
        let Some(raw) = raw else { continue };
        match catch_unwind(AssertUnwindSafe(|| Teacher::finish(spec, raw))) {
            Ok(Ok(pred)) => apply_prediction(&mut rec, spec, pred),
            Ok(Err(f)) => return Err(image_failure_record(&entry, &uri, &spec.name, f)),
            Err(_) => {
                let detail = format!("teacher {:?} panicked in post-processing", spec.name);
                return Err(error_record(&entry, &uri, Stage::Postprocess, "panic", detail));
            }
        }
    }
    rec.validate().map_err(|e| error_record(&entry, &uri, Stage::Postprocess, "invalid_output", e.to_string()))?;
    Ok(rec)
}

#[allow(clippy::too_many_arguments)]
fn write_stage(
    cfg: &LabelConfig,
    rt: &tokio::runtime::Runtime,
    out: &Location,
    shard: ShardId,
    attempt: &str,
    teachers: &[(TeacherSpec, String)],
    index: &InputIndex,
    rx: Receiver<Chunk<Result<ImageRecord, ErrorRecord>>>,
    progress: &dyn Progress,
    clocks: &BTreeMap<&'static str, StageClock>,
) -> Result<(CommitOutcome, ShardStats), PipelineError> {
    let kv = provenance(cfg, teachers, index, shard);
    let record_props = with_provenance(shards::encoding::record_writer_properties(), Some(cfg.run.row_group_rows), &kv);
    let error_props = with_provenance(shards::encoding::error_writer_properties(), None, &kv);
    let mut records =
        FileRoller::new(schemas::image_schema(), record_props, cfg.run.file_rows as u64, cfg.run.file_bytes);
    let mut errors =
        FileRoller::new(schemas::error_schema(), error_props, cfg.run.file_rows as u64, cfg.run.file_bytes);
    let mut committer = ShardCommitter::new(out.clone(), shard, attempt);
    let mut stats = ShardStats::default();
    let mut pending: BTreeMap<u64, Vec<Result<ImageRecord, ErrorRecord>>> = BTreeMap::new();
    let mut next = 0u64;
    let mut rec_buf: Vec<ImageRecord> = Vec::new();
    let mut err_buf: Vec<ErrorRecord> = Vec::new();
    let row_group = cfg.run.row_group_rows;
    let put = |committer: &mut ShardCommitter, files: Vec<(Vec<u8>, u64)>, kind: &str| -> Result<(), PipelineError> {
        for (bytes, rows) in files {
            rt.block_on(committer.put_file(kind, bytes, rows))?;
        }
        Ok(())
    };
    let flush_records =
        |buf: &mut Vec<ImageRecord>, roller: &mut FileRoller| -> Result<Vec<(Vec<u8>, u64)>, PipelineError> {
            if buf.is_empty() {
                return Ok(Vec::new());
            }
            let batch = schemas::records_to_batch(buf).map_err(|e| PipelineError::Encode(e.to_string()))?;
            buf.clear();
            roller.write(&batch)
        };
    for chunk in rx {
        pending.insert(chunk.seq, chunk.items);
        while let Some(items) = pending.remove(&next) {
            next += 1;
            let t = Instant::now();
            let n = items.len() as u64;
            for item in items {
                match item {
                    Ok(rec) => {
                        stats.labelled += 1;
                        rec_buf.push(rec);
                    }
                    Err(e) => {
                        stats.errors += 1;
                        *stats.errors_by_reason.entry(e.reason.clone()).or_default() += 1;
                        err_buf.push(e);
                    }
                }
                if rec_buf.len() >= row_group {
                    let f = flush_records(&mut rec_buf, &mut records)?;
                    put(&mut committer, f, "records")?;
                }
            }
            clocks["write"].add(t.elapsed());
            progress.advance(n);
        }
    }
    let t = Instant::now();
    let f = flush_records(&mut rec_buf, &mut records)?;
    put(&mut committer, f, "records")?;
    let f = records.finish()?;
    put(&mut committer, f.into_iter().collect(), "records")?;
    // The errors file is always written (possibly empty) so every shard has the same shape.
    let batch = schemas::errors_to_batch(&err_buf).map_err(|e| PipelineError::Encode(e.to_string()))?;
    let f = errors.write(&batch)?;
    put(&mut committer, f, "errors")?;
    let f = errors.finish()?;
    put(&mut committer, f.into_iter().collect(), "errors")?;
    let manifest = ShardManifest {
        schema_version: schemas::SCHEMA_VERSION,
        shard: shard.index,
        num_shards: shard.count,
        attempt: attempt.to_owned(),
        input_manifest_sha256: index.sha256.clone(),
        labeler_version: LABELER_VERSION.to_owned(),
        files: Vec::new(),
        counts: ManifestCounts {
            labelled_rows: stats.labelled,
            error_rows: stats.errors,
            errors_by_reason: stats.errors_by_reason.clone(),
        },
        teachers: teachers
            .iter()
            .map(|(spec, sha)| ManifestTeacher {
                name: spec.name.clone(),
                task: schema_task(spec.task),
                model_sha256: sha.clone(),
            })
            .collect(),
    };
    let outcome = rt.block_on(committer.commit(manifest))?;
    clocks["write"].add(t.elapsed());
    Ok((outcome, stats))
}
