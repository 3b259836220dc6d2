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

mod decode;
mod fetch;
mod files;
mod infer;
mod plan;
mod postprocess;
mod procfs;
mod records;
mod supervised;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemas::{ErrorRecord, ImageRecord, ShardManifest};
use serde::Serialize;
use shards::inputs;
use shards::{CommitOutcome, Location, ShardId};
use tracing::info;

use crate::config::LabelConfig;
use crate::spec::TeacherSpec;
use crate::teacher::{Teacher, TeacherError};

pub use decode::scaled_decode_min_side;
pub use plan::plan;
pub use procfs::{peak_rss_bytes, process_cpu_seconds, resident_bytes};

use decode::{decode_stage, DecodeSettings, Decoded};
use fetch::{fetch_stage, Fetched};
use infer::{inference_stage, Inferred};
use postprocess::postprocess_stage;
use supervised::{DatasetCtx, SupervisedCtx};
use write::write_stage;

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

fn runtime() -> Result<tokio::runtime::Runtime, PipelineError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(PipelineError::Runtime)
}

struct Chunk<T> {
    seq: u64,
    items: Vec<T>,
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

    // Whole-dataset label files are read here, so a broken one stops the shard before any image is read.
    let specs: Vec<TeacherSpec> = teacher_info.iter().map(|(s, _)| s.clone()).collect();
    let mut datasets: HashMap<String, DatasetCtx> = HashMap::new();
    for d in &cfg.datasets {
        let supervised = match &d.supervised {
            None => None,
            Some(labels) => Some(Arc::new(rt.block_on(SupervisedCtx::open(labels, &d.location, &specs))?)),
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
            let threads = cfg.run.decode_threads;
            let specs = &specs;
            scope.spawn(move || {
                let settings = DecodeSettings { limits, scaled_min_side: scaled_decode, store_images };
                decode_stage(fetch_rx, decode_tx, threads, &settings, specs, &datasets, &clocks)
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
