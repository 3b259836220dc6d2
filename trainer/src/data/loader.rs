//! The running pipeline: one reader thread, `workers` decode/augment/collate threads, bounded queues.
//!
//! The reader thread owns a small tokio runtime for object-store I/O. It walks the [`Sequencer`], fetches
//! each window's row groups (and, in the background, the next window's), unpacks rows, and sends batches
//! of raw rows to the workers through a queue of `prefetch` jobs. Workers decode and augment each sample
//! with a generator keyed by the sample's step, collate, and send finished batches back; the consumer
//! puts them back in order. Batch contents therefore do not depend on the number of workers or on
//! timing, and each finished batch carries the sampler state to resume right after it.
//!
//! Memory: about two windows of rows per sampling stream in the reader, `prefetch` jobs of raw rows,
//! and up to `prefetch + workers` finished batches.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fast_image_resize::Resizer;
use futures::TryStreamExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use shards::{Location, ObjectReader};

use super::augment::{self, Geometry, SampleOut};
use super::config::{Augmentation, DataConfig, NumClasses};
use super::index::{self, Index};
use super::rng::{Rng, TAG_AUGMENT};
use super::rows::{self, RawRow};
use super::sampler::{Pick, SamplerState, Sequencer, WindowId};
use super::DataError;
use crate::batch::Batch;

/// Raw rows of one batch, for a worker.
struct Job {
    index: u64,
    rows: Vec<(u64, RawRow)>,
    state: SamplerState,
}

/// A finished batch and the state after it.
struct Prepared {
    index: u64,
    batch: Batch,
    state: SamplerState,
}

enum Msg {
    Batch(Box<Prepared>),
    /// A finite run produced this many batches and stopped.
    End(u64),
    Failed(DataError),
}

/// What the reader thread reports once the index is built.
struct Ready {
    state: SamplerState,
    dataset_rows: Vec<(String, u64)>,
}

/// Streams augmented batches from committed shards; see the module docs of [`crate::data`].
///
/// ```no_run
/// use trainer::data::{DataConfig, DatasetSpec, Loader, NumClasses, SamplerState, Task};
/// let datasets = vec![DatasetSpec {
///     name: "pool".into(),
///     location: "s3://bucket/labels/pool".into(),
///     tasks: vec![Task::Cls, Task::Depth],
/// }];
/// let cfg = DataConfig::new(datasets, 224, 32, NumClasses { cls: 10, det: 0, seg: 0 });
/// let mut loader = Loader::new(cfg, SamplerState::default())?;
/// let batch = loader.next_batch()?;
/// let resume_from = loader.state(); // store in the checkpoint with the weights
/// # Ok::<(), trainer::data::DataError>(())
/// ```
pub struct Loader {
    results: Option<Receiver<Msg>>,
    pending: BTreeMap<u64, Prepared>,
    next_index: u64,
    end_at: Option<u64>,
    failed: bool,
    state: SamplerState,
    dataset_rows: Vec<(String, u64)>,
    skipped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Open every dataset's location, index its committed shards and start the pipeline at `start`
    /// (`SamplerState::default()` for the beginning, or a state saved by [`Loader::state`]).
    ///
    /// Blocks until the index is built; errors in any file's footer or schema are returned here.
    pub fn new(cfg: DataConfig, start: SamplerState) -> Result<Self, DataError> {
        cfg.validate()?;
        let locations = cfg
            .datasets
            .iter()
            .map(|d| {
                shards::open(&d.location).map_err(|source| DataError::Open {
                    dataset: d.name.clone(),
                    location: shards::redact_url(&d.location),
                    source: Box::new(source),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::with_locations(cfg, locations, start)
    }

    /// Like [`Loader::new`], with the datasets' stores already opened (in-memory or wrapped stores),
    /// one per `cfg.datasets` entry; their `location` strings are then only used in messages.
    pub fn with_locations(cfg: DataConfig, locations: Vec<Location>, start: SamplerState) -> Result<Self, DataError> {
        cfg.validate()?;
        if locations.len() != cfg.datasets.len() {
            return Err(DataError::Config {
                reason: format!("{} locations for {} datasets", locations.len(), cfg.datasets.len()),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let skipped = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = sync_channel::<Result<Ready, DataError>>(1);
        let (job_tx, job_rx) = sync_channel::<Job>(cfg.prefetch);
        let (result_tx, result_rx) = sync_channel::<Msg>(cfg.prefetch + cfg.workers);

        let mut threads = Vec::with_capacity(cfg.workers + 1);
        {
            let cfg = cfg.clone();
            let result_tx = result_tx.clone();
            let stop = stop.clone();
            let reader = std::thread::Builder::new()
                .name("data-reader".into())
                .spawn(move || read_loop(cfg, locations, start, ready_tx, job_tx, result_tx, stop))
                .map_err(|e| DataError::Worker { reason: format!("cannot start the reader thread: {e}") })?;
            threads.push(reader);
        }
        let ready = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                join_all(threads);
                return Err(e);
            }
            Err(_) => {
                join_all(threads);
                return Err(DataError::Worker { reason: "the reader thread stopped while indexing".into() });
            }
        };

        let jobs = Arc::new(Mutex::new(job_rx));
        let ctx = Arc::new(WorkCtx {
            size: cfg.image_size as u32,
            augment: cfg.augment,
            seed: cfg.seed,
            classes: cfg.num_classes,
            names: cfg.datasets.iter().map(|d| d.name.clone()).collect(),
            skipped: skipped.clone(),
        });
        for w in 0..cfg.workers {
            let (w_jobs, w_results, w_ctx, w_stop) = (jobs.clone(), result_tx.clone(), ctx.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("data-worker-{w}"))
                .spawn(move || work_loop(&w_jobs, &w_results, &w_ctx, &w_stop));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    drop(result_rx);
                    drop(jobs);
                    join_all(threads);
                    return Err(DataError::Worker { reason: format!("cannot start a worker thread: {e}") });
                }
            }
        }
        drop(result_tx);
        Ok(Self {
            results: Some(result_rx),
            pending: BTreeMap::new(),
            next_index: 0,
            end_at: None,
            failed: false,
            state: ready.state,
            dataset_rows: ready.dataset_rows,
            skipped,
            stop,
            threads,
        })
    }

    /// The next batch. Blocks until it is ready. With `passes` set, returns [`DataError::Exhausted`]
    /// after the last batch (which may be short); any other error is final for this loader.
    pub fn next_batch(&mut self) -> Result<Batch, DataError> {
        loop {
            if let Some(done) = self.pending.remove(&self.next_index) {
                self.next_index += 1;
                self.state = done.state;
                if done.batch.size == 0 {
                    continue; // every image of the batch failed to decode (each was logged)
                }
                return Ok(done.batch);
            }
            if self.end_at == Some(self.next_index) {
                return Err(DataError::Exhausted);
            }
            if self.failed {
                return Err(DataError::Worker { reason: "the loader stopped after an earlier error".into() });
            }
            let received = match &self.results {
                Some(rx) => rx.recv(),
                None => return Err(DataError::Worker { reason: "the loader is shut down".into() }),
            };
            match received {
                Ok(Msg::Batch(done)) => {
                    self.pending.insert(done.index, *done);
                }
                Ok(Msg::End(batches)) => self.end_at = Some(batches),
                Ok(Msg::Failed(e)) => {
                    self.failed = true;
                    self.stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                Err(_) => {
                    self.failed = true;
                    return Err(DataError::Worker { reason: "the loader threads stopped unexpectedly".into() });
                }
            }
        }
    }

    /// The sampler state right after the last batch returned by [`Loader::next_batch`]: a loader
    /// started from it continues with exactly the batch that would have come next.
    pub fn state(&self) -> SamplerState {
        self.state.clone()
    }

    /// Rows of each configured dataset, in config order.
    pub fn dataset_rows(&self) -> &[(String, u64)] {
        &self.dataset_rows
    }

    /// Images skipped so far because they did not decode (or did not match their recorded size).
    pub fn skipped_images(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("datasets", &self.dataset_rows)
            .field("state", &self.state)
            .field("skipped_images", &self.skipped_images())
            .finish_non_exhaustive()
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    /// `None` after the last batch of a finite run; otherwise like [`Loader::next_batch`].
    /// After an error has been yielded once, the iterator ends.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_batch() {
            Err(DataError::Exhausted) => None,
            other => Some(other),
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Dropping the results queue unblocks workers, whose exit unblocks the reader.
        self.results = None;
        join_all(std::mem::take(&mut self.threads));
    }
}

fn join_all(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}

// ---------------------------------------------------------------------------------------------------
// Reader thread

#[allow(clippy::too_many_arguments)]
fn read_loop(
    cfg: DataConfig,
    locations: Vec<Location>,
    start: SamplerState,
    ready: SyncSender<Result<Ready, DataError>>,
    jobs: SyncSender<Job>,
    results: SyncSender<Msg>,
    stop: Arc<AtomicBool>,
) {
    // Parquet decoding of label lists is CPU work done on these threads; one per four workers keeps
    // the reader ahead of the workers without taking their cores.
    let io_threads = (cfg.workers / 4).clamp(1, 4);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .thread_name("data-io")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(DataError::Worker { reason: format!("cannot start the I/O runtime: {e}") }));
            return;
        }
    };
    let setup = runtime.block_on(index::build(&cfg, locations)).and_then(|index| {
        let names: Vec<String> = index.datasets.iter().map(|d| d.name.clone()).collect();
        let seq = Sequencer::new(
            &index.group_sizes(),
            &names,
            cfg.sampling,
            cfg.seed,
            cfg.shuffle_window,
            cfg.passes,
            index.fingerprint,
            cfg.interleave_datasets.then_some(index.strata.as_slice()),
            &start,
        )?;
        Ok((Arc::new(index), seq))
    });
    let (index, mut seq) = match setup {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let dataset_rows = index.datasets.iter().map(|d| (d.name.clone(), d.rows)).collect();
    if ready.send(Ok(Ready { state: seq.state(), dataset_rows })).is_err() {
        return;
    }
    drop(ready);

    let mut windows = Windows {
        index,
        classes: cfg.num_classes,
        runtime,
        loaded: HashMap::new(),
        current: HashMap::new(),
        ahead: HashMap::new(),
    };
    let mut batch_index = 0u64;
    loop {
        let mut rows = Vec::with_capacity(cfg.batch_size);
        let mut finished = false;
        while rows.len() < cfg.batch_size {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Some(pick) = seq.next_pick() else {
                finished = true;
                break;
            };
            match windows.take(&seq, pick) {
                Ok(row) => rows.push((pick.step, row)),
                Err(e) => {
                    let _ = results.send(Msg::Failed(e));
                    return;
                }
            }
        }
        if !rows.is_empty() {
            // Every rank walks the whole global batch (so the sampler state is global) and keeps its slice.
            let mine = cfg.rank.range(rows.len());
            let rows: Vec<(u64, RawRow)> = rows.drain(mine).collect();
            let job = Job { index: batch_index, rows, state: seq.state() };
            if jobs.send(job).is_err() {
                return;
            }
            batch_index += 1;
        }
        if finished {
            let _ = results.send(Msg::End(batch_index));
            return;
        }
    }
}

type Fetch = tokio::task::JoinHandle<Result<Vec<RawRow>, DataError>>;

/// The windows the reader holds: the current one of each stream, and the next one being fetched.
struct Windows {
    index: Arc<Index>,
    classes: NumClasses,
    runtime: tokio::runtime::Runtime,
    loaded: HashMap<WindowId, Vec<Option<RawRow>>>,
    current: HashMap<u32, WindowId>,
    ahead: HashMap<WindowId, Fetch>,
}

impl Windows {
    fn take(&mut self, seq: &Sequencer, pick: Pick) -> Result<RawRow, DataError> {
        let id = pick.window;
        if !self.loaded.contains_key(&id) {
            if let Some(old) = self.current.insert(id.stream, id) {
                self.loaded.remove(&old);
            }
            // A resumed or jumped stream may leave a stale prefetch behind: drop it.
            self.ahead.retain(|w, _| w.stream != id.stream || *w == id);
            let fetch = match self.ahead.remove(&id) {
                Some(handle) => handle,
                None => self.spawn(seq, id),
            };
            let rows = self
                .runtime
                .block_on(fetch)
                .map_err(|e| DataError::Worker { reason: format!("a read task failed: {e}") })??;
            self.loaded.insert(id, rows.into_iter().map(Some).collect());
            if let Some(next) = seq.successor(id) {
                let handle = self.spawn(seq, next);
                self.ahead.insert(next, handle);
            }
        }
        self.loaded
            .get_mut(&id)
            .and_then(|rows| rows.get_mut(pick.local_row as usize))
            .and_then(Option::take)
            .ok_or_else(|| DataError::Worker {
                reason: format!("row {} of window {id:?} is missing or was taken twice", pick.local_row),
            })
    }

    fn spawn(&self, seq: &Sequencer, id: WindowId) -> Fetch {
        let groups: Vec<(u32, u64)> = seq.window_groups(id).into_iter().map(|g| (g, seq.group_rows(g))).collect();
        let index = self.index.clone();
        let classes = self.classes;
        self.runtime.spawn(async move { fetch_window(index, groups, classes).await })
    }
}

/// Read the row groups of a window (concurrently) and unpack their rows, concatenated in window order.
async fn fetch_window(
    index: Arc<Index>,
    groups: Vec<(u32, u64)>,
    classes: NumClasses,
) -> Result<Vec<RawRow>, DataError> {
    // One task per row group, so several I/O threads can decode a window's row groups in parallel.
    let reads = groups.into_iter().map(|(g, rows)| {
        let index = index.clone();
        tokio::spawn(async move { read_group(&index, g, rows, classes).await })
    });
    let mut out = Vec::new();
    for part in futures::future::join_all(reads).await {
        let rows = part.map_err(|e| DataError::Worker { reason: format!("a read task failed: {e}") })??;
        out.extend(rows);
    }
    Ok(out)
}

async fn read_group(index: &Index, g: u32, rows: u64, classes: NumClasses) -> Result<Vec<RawRow>, DataError> {
    let group = index.groups[g as usize];
    let file = &index.files[group.file as usize];
    let dataset = &index.datasets[file.dataset as usize];
    let read_err = |source| DataError::Read {
        uri: file.uri.clone(),
        row_group: group.row_group as usize,
        source: Box::new(source),
    };
    let reader = ObjectReader::new(dataset.location.store.clone(), file.path.clone(), file.size);
    let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, file.meta.clone())
        .with_row_groups(vec![group.row_group as usize])
        .with_projection(file.projection.clone())
        .with_batch_size(rows.clamp(1, 8192) as usize)
        .build()
        .map_err(read_err)?;
    let batches: Vec<_> = stream.try_collect().await.map_err(read_err)?;
    let mut out = Vec::with_capacity(rows as usize);
    for batch in &batches {
        out.extend(rows::extract(batch, &file.uri, file.dataset, dataset.tasks, classes)?);
    }
    if out.len() as u64 != rows {
        return Err(DataError::RowCount { uri: file.uri.clone(), manifest: rows, found: out.len() as u64 });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// Workers

struct WorkCtx {
    size: u32,
    augment: Augmentation,
    seed: u64,
    classes: NumClasses,
    names: Vec<String>,
    skipped: Arc<AtomicU64>,
}

fn work_loop(jobs: &Mutex<Receiver<Job>>, results: &SyncSender<Msg>, ctx: &WorkCtx, stop: &AtomicBool) {
    let mut resizer = Resizer::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let index = job.index;
        let msg = match catch_unwind(AssertUnwindSafe(|| collate(job, ctx, &mut resizer))) {
            Ok(done) => Msg::Batch(Box::new(done)),
            Err(_) => {
                Msg::Failed(DataError::Worker { reason: format!("a worker panicked while preparing batch {index}") })
            }
        };
        if results.send(msg).is_err() {
            return;
        }
    }
}

/// Decode, augment and collate the samples of one job.
fn collate(job: Job, ctx: &WorkCtx, resizer: &mut Resizer) -> Prepared {
    let s = ctx.size as usize;
    let ss = s * s;
    let c = ctx.classes.cls;
    let n = job.rows.len();
    let mut b = Batch {
        size: 0,
        image_size: s,
        images: vec![0.0; n * 3 * ss],
        num_classes: c,
        cls_probs: vec![0.0; n * c],
        has_cls: Vec::with_capacity(n),
        boxes: Vec::with_capacity(n),
        has_det: Vec::with_capacity(n),
        seg: vec![255; n * ss],
        has_seg: Vec::with_capacity(n),
        depth: vec![0.0; n * ss],
        depth_valid: vec![0; n * ss],
        has_depth: Vec::with_capacity(n),
        keys: Vec::with_capacity(n),
    };
    for (step, row) in job.rows {
        let dataset = &ctx.names[row.dataset as usize];
        let skip = |reason: String| {
            ctx.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(dataset = %dataset, key = %row.key, %reason, "skipping a sample whose image cannot be used");
        };
        let img = match augment::decode(&row.image) {
            Ok(img) => img,
            Err(reason) => {
                skip(reason);
                continue;
            }
        };
        if (img.width(), img.height()) != (row.width, row.height) {
            skip(format!("decoded {}×{} but the record says {}×{}", img.width(), img.height(), row.width, row.height));
            continue;
        }
        let mut rng = Rng::keyed(&[ctx.seed, TAG_AUGMENT, step]);
        let g = Geometry::draw(img.width(), img.height(), ctx.size, &ctx.augment, &mut rng);
        let i = b.size;
        let out = SampleOut {
            image: &mut b.images[i * 3 * ss..(i + 1) * 3 * ss],
            seg: &mut b.seg[i * ss..(i + 1) * ss],
            depth: &mut b.depth[i * ss..(i + 1) * ss],
            depth_valid: &mut b.depth_valid[i * ss..(i + 1) * ss],
        };
        let boxes = match augment::render(&row, &img, &g, resizer, out) {
            Ok(boxes) => boxes,
            Err(reason) => {
                // Clear whatever was partly written before reusing the slot.
                b.images[i * 3 * ss..(i + 1) * 3 * ss].fill(0.0);
                b.seg[i * ss..(i + 1) * ss].fill(255);
                b.depth[i * ss..(i + 1) * ss].fill(0.0);
                b.depth_valid[i * ss..(i + 1) * ss].fill(0);
                skip(reason);
                continue;
            }
        };
        if let Some(q) = &row.cls {
            for (slot, &v) in b.cls_probs[i * c..(i + 1) * c].iter_mut().zip(q) {
                *slot = f32::from(v) / 65535.0;
            }
        }
        b.has_cls.push(row.cls.is_some());
        b.has_det.push(row.det.is_some());
        b.boxes.push(boxes);
        b.has_seg.push(row.seg.is_some());
        b.has_depth.push(row.depth.is_some());
        b.keys.push((dataset.clone(), row.key));
        b.size += 1;
    }
    let m = b.size;
    b.images.truncate(m * 3 * ss);
    b.cls_probs.truncate(m * c);
    b.seg.truncate(m * ss);
    b.depth.truncate(m * ss);
    b.depth_valid.truncate(m * ss);
    Prepared { index: job.index, batch: b, state: job.state }
}
