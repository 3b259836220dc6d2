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

mod budget;
mod decode;
mod fault;
mod fetch;
mod files;
mod fingerprint;
mod infer;
mod keylist;
mod packed;
mod plan;
mod postprocess;
mod procfs;
mod records;
mod supervised;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
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
pub use fault::{Fault, FaultStage};
pub use plan::{plan, plan_with, PlanOptions};
pub use procfs::{peak_rss_bytes, process_cpu_seconds, resident_bytes};

use budget::{ByteBudget, Permit};
use decode::{decode_stage, DecodeSettings, Decoded};
use fetch::{fetch_stage, FetchLimits, Fetched, Retry};
use infer::{inference_stage, Inferred};
use postprocess::postprocess_stage;
use supervised::{DatasetCtx, SupervisedCtx};
use write::{write_stage, Written};

/// The version written into provenance.
pub const LABELER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Receives progress from a running shard (a progress bar in the binary, nothing in tests).
pub trait Progress: Send + Sync {
    /// The shard has `total` inputs.
    fn start(&self, _total: u64) {}
    /// `n` more inputs are done (labelled or errored).
    fn advance(&self, _n: u64) {}
    /// The shard has `n` more inputs than it started with: a packed container, one plan entry, held `n + 1`.
    fn grow(&self, _n: u64) {}
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
    #[error("dataset {dataset:?}: {message}")]
    Plan { dataset: String, message: String },
    #[error("reading supervised labels {file}: {reason}")]
    Supervised { file: String, reason: String },
    #[error("encoding records: {0}")]
    Encode(String),
    #[error("the {stage} stage failed: {message}; nothing was committed, re-run the shard")]
    StageFailed { stage: &'static str, message: String },
    #[error(
        "shard {shard}: {rows} rows for {inputs} inputs (labelled + error rows must equal the inputs); \
         nothing was committed"
    )]
    Unaccounted { shard: ShardId, inputs: u64, rows: u64 },
    #[error("reading {uri} failed {tries} time(s), last: {detail}; nothing was committed, re-run the shard once the store is reachable")]
    Store { uri: String, tries: u32, detail: String },
    #[error("teacher {teacher:?} failed on every one of {images} images, even one at a time: {detail}; nothing was committed")]
    Inference { teacher: String, images: usize, detail: String },
    #[error(
        "shard {shard}: {errors} of {inputs} inputs are error rows ({reasons}), over `run.max_error_fraction` = \
         {max}; nothing was committed. Look at the reasons, or raise the limit if this data is expected to be this broken"
    )]
    TooManyErrors { shard: ShardId, errors: u64, inputs: u64, max: f64, reasons: String },
    #[error(
        "shard {shard} under {output} was committed by attempt {attempt} with a different configuration:\n  - {}\n\
         Re-running it would keep the old labels. To label with this configuration, write to a new output root \
         (`--output …`)",
        differences.join("\n  - ")
    )]
    Drift { shard: ShardId, output: String, attempt: String, differences: Vec<String> },
    #[error(
        "{output} already holds shards committed with {}: this run uses {requested}. Use --num-shards with that \
         count, or label into a new output root",
        counts.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" and ")
    )]
    ShardCountMismatch { output: String, counts: Vec<u64>, requested: u64 },
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
    /// Inference workers × intra-op threads this run used, and how they were chosen.
    pub parallelism: String,
}

/// Knobs for measuring and testing the pipeline, not for labelling.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardOptions {
    /// Run each teacher once per input shape and reuse those outputs ([`Teacher::replay_outputs`]): the
    /// run does all host-side work (fetch, decode, resize, post-process, write) with almost no inference.
    /// Its labels are wrong, so it is for benchmarks writing to a scratch output only.
    pub replay_outputs: bool,
    /// Make one stage panic at one image (tests of the commit rule; `fault-injection` feature only).
    #[cfg(feature = "fault-injection")]
    pub fault: Option<Fault>,
}

impl ShardOptions {
    fn fault(&self) -> Option<Fault> {
        #[cfg(feature = "fault-injection")]
        return self.fault;
        #[cfg(not(feature = "fault-injection"))]
        None
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, PipelineError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(PipelineError::Runtime)
}

/// The unit that moves between stages: `items` are the shard's inputs `first..first + items.len()`.
/// Stages may split a chunk into parts; the writer puts them back in input order by `first`.
struct Chunk<T> {
    first: u64,
    items: Vec<T>,
    /// The bytes this chunk holds, taken from the shard's budgets; returned when the writer drops it.
    permits: Vec<Permit>,
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
///
/// The shard commits only when every stage ended cleanly, every input is accounted for (label rows +
/// error rows = inputs of the shard, recorded in the manifest) and the error rows stay under
/// `run.max_error_fraction`. Anything else fails the attempt and leaves no manifest, so the batch engine's
/// retry labels the shard again.
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
    let index = match rt.block_on(inputs::read_index_if_present(&out))? {
        Some(i) => i,
        None => return Err(PipelineError::NotPlanned { output: out.display.clone() }),
    };
    // Before any work: this run's shard count and configuration must match what the root already holds.
    check_shard_count(&rt, &out, &cfg.output, &index, shard)?;
    let mut teacher_info = Vec::with_capacity(cfg.teachers.len());
    for entry in &cfg.teachers {
        let sha = crate::teacher::file_sha256(&entry.spec.model).map_err(|source| TeacherError::Model {
            teacher: entry.spec.name.clone(),
            path: entry.spec.model.clone(),
            source,
        })?;
        teacher_info.push((entry.spec.clone(), sha));
    }
    let fingerprint = fingerprint::fingerprint(cfg, &teacher_info, &index, shard.count);
    if let Some(manifest) = rt.block_on(shards::read_manifest(&out, shard))? {
        let differences = fingerprint::drift(&manifest, &fingerprint);
        if !differences.is_empty() {
            return Err(PipelineError::Drift {
                shard,
                output: out.display.clone(),
                attempt: manifest.attempt,
                differences,
            });
        }
        info!(shard = %shard, attempt = %manifest.attempt, "shard already committed with this configuration; nothing to do");
        return Ok(ShardOutcome::AlreadyCommitted { manifest });
    }
    // Teachers next: a spec that does not fit its model fails here, before any image is read.
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
        let columns = packed::ParquetColumns { image: d.image_column.clone(), key: d.key_column.clone() };
        datasets.insert(
            d.name.clone(),
            DatasetCtx {
                images: shards::open(&d.location)?,
                supervised,
                format: d.format,
                extensions: d.extensions.clone(),
                columns,
            },
        );
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
    let fault = options.fault();
    let retry = Retry {
        attempts: cfg.run.fetch_retries + 1,
        backoff: Duration::from_millis(cfg.run.retry_backoff_ms),
        max_backoff: Duration::from_millis(cfg.run.retry_backoff_ms.saturating_mul(64).max(1)),
    };

    let (fetch_tx, fetch_rx) = sync_channel::<Chunk<Fetched>>(queue);
    let (decode_tx, decode_rx) = sync_channel::<Chunk<Decoded>>(queue);
    let (infer_tx, infer_rx) = sync_channel::<Chunk<Inferred>>(queue * workers.max(1));
    let (label_tx, label_rx) = sync_channel::<Chunk<Result<ImageRecord, ErrorRecord>>>(queue);

    let packed = entries
        .iter()
        .any(|e| cfg.datasets.iter().any(|d| d.name == e.dataset && d.format != crate::config::DatasetFormat::Files));
    let written = std::thread::scope(|scope| -> Result<(Written, u64), PipelineError> {
        let fetch_handle = {
            let datasets = datasets.clone();
            let clocks = clocks.clone();
            let (rt, entries, retry) = (&rt, &entries, &retry);
            let limits = FetchLimits {
                chunk_images: chunk,
                concurrency: cfg.run.fetch_concurrency,
                max_image_bytes: cfg.run.max_image_bytes,
                budget: ByteBudget::new(cfg.run.fetched_bytes_in_flight),
            };
            scope.spawn(move || fetch_stage(rt, entries, &datasets, &limits, retry, fault, &clocks, progress, fetch_tx))
        };
        let decode_handle = {
            let clocks = clocks.clone();
            let datasets = datasets.clone();
            let threads = cfg.run.decode_threads;
            let specs = &specs;
            scope.spawn(move || {
                let settings = DecodeSettings {
                    limits,
                    scaled_min_side: scaled_decode,
                    store_images,
                    fault,
                    budget: ByteBudget::new(cfg.run.decoded_bytes_in_flight),
                };
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
            worker_handles.push(scope.spawn(move || inference_stage(teachers, rx, tx, fault, &clocks)));
        }
        // Only the workers may hold the queue: if they all die it must close, or decoding would block forever.
        drop(decode_rx);
        drop(infer_tx);
        // Post-processing, in parallel, off the inference workers.
        let post_handle = {
            let clocks = clocks.clone();
            let specs = &specs;
            let threads = cfg.run.decode_threads;
            scope.spawn(move || postprocess_stage(infer_rx, label_tx, threads, specs, fault, &clocks))
        };

        // Write on this thread. When a stage dies its queue closes, the stages after it drain and end, and
        // the writer returns what it got: joining every stage below decides whether that may be committed.
        let written = catch_unwind(AssertUnwindSafe(|| {
            write_stage(cfg, &rt, &out, shard, attempt, &teacher_info, &index, label_rx, progress, fault, &clocks)
        }));
        // Report the first failure in pipeline order: a dead stage explains the ones after it.
        let fetched = joined("fetch", fetch_handle.join())?;
        joined("decode", decode_handle.join().map(Ok))?;
        for h in worker_handles {
            joined("inference", h.join())?;
        }
        joined("postprocess", post_handle.join().map(Ok))?;
        let written = joined("write", written)?;
        // A loose file is one input; a container is at least one (its samples, or a row for its damage).
        let short = if packed { fetched < entries.len() as u64 } else { fetched != entries.len() as u64 };
        if short {
            return Err(PipelineError::StageFailed {
                stage: "fetch",
                message: format!("handed on {fetched} inputs for {} manifest entries", entries.len()),
            });
        }
        Ok((written, fetched))
    })?;

    let (Written { committer, mut manifest, mut stats }, inputs) = written;
    if stats.labelled + stats.errors != inputs {
        return Err(PipelineError::Unaccounted { shard, inputs, rows: stats.labelled + stats.errors });
    }
    if stats.errors as f64 > cfg.run.max_error_fraction * inputs as f64 {
        let reasons: Vec<String> = stats.errors_by_reason.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        return Err(PipelineError::TooManyErrors {
            shard,
            errors: stats.errors,
            inputs,
            max: cfg.run.max_error_fraction,
            reasons: reasons.join(", "),
        });
    }
    manifest.inputs = Some(inputs);
    manifest.fingerprint = Some(fingerprint);
    let t = Instant::now();
    let committed = rt.block_on(committer.commit(manifest))?;
    clocks["write"].add(t.elapsed());

    stats.inputs = inputs;
    stats.wall_seconds = started.elapsed().as_secs_f64();
    stats.parallelism = format!("{} x {} ({})", cfg.run.inference_workers, cfg.run.intra_threads, cfg.run.parallelism);
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
}

/// A stage thread's result: its own error, or its panic turned into an error naming the stage.
fn joined<T>(stage: &'static str, result: std::thread::Result<Result<T, PipelineError>>) -> Result<T, PipelineError> {
    match result {
        Ok(r) => r,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panicked".to_owned());
            Err(PipelineError::StageFailed { stage, message })
        }
    }
}

/// A root has one shard count: fix it on the first run (put-if-absent) and refuse any other afterwards.
/// Roots labelled before the count was recorded are checked against the names of their manifests.
fn check_shard_count(
    rt: &tokio::runtime::Runtime,
    out: &Location,
    output: &str,
    index: &shards::inputs::InputIndex,
    shard: ShardId,
) -> Result<(), PipelineError> {
    let created = rt.block_on(inputs::claim_layout(out, index, shard.count))?;
    if created {
        let counts: std::collections::BTreeSet<u64> =
            rt.block_on(shards::committed_manifests(out))?.into_iter().map(|(_, m)| m.num_shards).collect();
        if counts.iter().any(|&n| n != shard.count) {
            return Err(PipelineError::ShardCountMismatch {
                output: output.to_owned(),
                counts: counts.into_iter().collect(),
                requested: shard.count,
            });
        }
    }
    Ok(())
}
