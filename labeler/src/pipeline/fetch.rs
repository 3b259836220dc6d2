//! Fetch stage: bytes of each input (and its supervised-label files) from the object store, with bounded
//! concurrency on the async runtime, a chunk at a time. A missing object is the input's own fault and
//! becomes an error row; every other store failure is retried with backoff and, if it persists, fails the
//! attempt, so a flaky network never turns good images into error rows of a committed shard.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use schemas::{ErrorRecord, Stage};
use shards::inputs::InputEntry;
use shards::Location;

use tracing::warn;

use super::budget::{cut, ByteBudget};
use super::fault::{self, Fault, FaultStage};
use super::packed::{read_row_group, read_tar, Sample, TarOptions};
use super::records::error_record;
use super::supervised::{fetch_label_files, DatasetCtx, FetchedLabels, SideMembers};
use super::{Chunk, PipelineError, StageClock};
use crate::config::DatasetFormat;

/// One fetched input: a loose image, or a sample of a packed container.
pub(super) struct Fetched {
    pub(super) entry: InputEntry,
    pub(super) uri: String,
    pub(super) bytes: Result<Bytes, ErrorRecord>,
    pub(super) truth: FetchedLabels,
    /// Where a packed sample's bytes are (`member 0001.jpg of s3://b/00000.tar`), to prefix its errors.
    pub(super) origin: Option<String>,
    /// A WebDataset sample's side members (empty for anything else).
    pub(super) side: SideMembers,
}

/// Why an object could not be read.
pub(super) enum ReadError {
    /// The input's own fault (gone since the plan, too large): it becomes an error row.
    Input { reason: &'static str, detail: String },
    /// The store's fault (network, throttling, 5xx, timeouts, permissions) that outlived the retries: the
    /// attempt fails without committing, since the input itself may be fine.
    Store(PipelineError),
}

/// Retries of failed reads: `attempts` tries in all, sleeping `backoff`, then twice that, … up to `max_backoff`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retry {
    pub(super) attempts: u32,
    pub(super) backoff: Duration,
    pub(super) max_backoff: Duration,
}

impl Default for Retry {
    /// The `[run]` defaults, for reads made before the run settings apply (whole label files at start).
    fn default() -> Self {
        Retry { attempts: 6, backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(12) }
    }
}

/// Whether a failed read is the object's own fault. Only a missing object is: everything else the store
/// reports is about the store, the network or the credentials, and says nothing about the image.
fn is_input_fault(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// Read `rel` under `loc`, at most `max` bytes, retrying the store's failures with backoff.
pub(super) async fn get_bytes(loc: &Location, rel: &str, max: u64, retry: &Retry) -> Result<Bytes, ReadError> {
    let path = loc.child(rel);
    let mut wait = retry.backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        let result = async {
            let got = loc.store.get(&path).await?;
            if got.meta.size > max {
                return Ok(Err(got.meta.size));
            }
            got.bytes().await.map(Ok)
        }
        .await;
        let error = match result {
            Ok(Ok(bytes)) => return Ok(bytes),
            Ok(Err(size)) => {
                return Err(ReadError::Input {
                    reason: "too_large",
                    detail: format!("{size} bytes is over the limit of {max}"),
                })
            }
            Err(e) if is_input_fault(&e) => {
                return Err(ReadError::Input { reason: "not_found", detail: shards::describe_store_error(&e) });
            }
            Err(e) => e,
        };
        if tries >= retry.attempts.max(1) {
            return Err(ReadError::Store(PipelineError::Store {
                uri: loc.uri_of(&path),
                tries,
                detail: shards::describe_store_error(&error),
            }));
        }
        warn!(uri = %loc.uri_of(&path), tries, error = %shards::describe_store_error(&error), "read failed; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(retry.max_backoff);
    }
}

pub(super) async fn fetch_one(
    entry: InputEntry,
    ds: &DatasetCtx,
    max_bytes: u64,
    retry: &Retry,
) -> Result<Fetched, PipelineError> {
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
        match get_bytes(&ds.images, &entry.key, max_bytes, retry).await {
            Ok(b) => Ok(b),
            Err(ReadError::Input { reason, detail }) => Err(error_record(&entry, &uri, Stage::Fetch, reason, detail)),
            Err(ReadError::Store(e)) => return Err(e),
        }
    };
    let truth = if bytes.is_ok() { fetch_label_files(&entry, &uri, ds, retry).await? } else { None };
    Ok(Fetched { entry, uri, bytes, truth, origin: None, side: SideMembers::new() })
}

/// How the fetch stage cuts and bounds its chunks.
pub(super) struct FetchLimits {
    /// Images per chunk at most.
    pub(super) chunk_images: usize,
    /// Reads in flight at once.
    pub(super) concurrency: usize,
    /// An object larger than this is an error row (`too_large`).
    pub(super) max_image_bytes: u64,
    /// Encoded bytes the pipeline may hold at once; a chunk is also cut at a quarter of it.
    pub(super) budget: Arc<ByteBudget>,
}

/// Numbers the inputs handed on and sends them in chunks, each holding a permit for its bytes.
struct Sender<'a> {
    tx: SyncSender<Chunk<Fetched>>,
    limits: &'a FetchLimits,
    fault: Option<Fault>,
    /// Inputs handed on so far: the index of the next one.
    next: u64,
    /// Samples of packed containers gathered for the next chunk, and their bytes.
    items: Vec<Fetched>,
    bytes: u64,
    /// Time spent waiting for the next stage to take a chunk (not fetching).
    waiting: Duration,
    closed: bool,
}

impl Sender<'_> {
    /// Hand on `items` with `permit` as the next chunk; `false` once the next stage is gone.
    fn send(&mut self, items: Vec<Fetched>, permit: super::budget::Permit) -> bool {
        let first = self.next;
        self.next += items.len() as u64;
        let t = Instant::now();
        self.closed = self.closed || self.tx.send(Chunk { first, items, permits: vec![permit] }).is_err();
        self.waiting += t.elapsed();
        !self.closed
    }

    /// Gather one sample of a container, sending a chunk when it is full.
    fn push(&mut self, f: Fetched) -> bool {
        self.bytes += f.bytes.as_ref().map_or(0, |b| b.len() as u64);
        self.items.push(f);
        let chunk_bytes = (self.limits.budget.capacity() / 4).max(1);
        if self.items.len() >= self.limits.chunk_images || self.bytes >= chunk_bytes {
            return self.flush();
        }
        !self.closed
    }

    /// Send the gathered samples. Their bytes are read before the permit is taken, so one chunk's worth
    /// may be held beyond the budget, never more.
    fn flush(&mut self) -> bool {
        if self.items.is_empty() || self.closed {
            return !self.closed;
        }
        let items = std::mem::take(&mut self.items);
        fault::hook(self.fault, FaultStage::Fetch, self.next, items.len());
        let permit = self.limits.budget.acquire(std::mem::take(&mut self.bytes));
        self.send(items, permit)
    }
}

/// Fetch every entry, a chunk at a time, each chunk holding a permit for its bytes: loose files are read
/// concurrently, packed containers streamed one after the other and expanded into their samples. Stops
/// with an error when the store keeps failing (nothing of the shard is committed then); returns the number
/// of inputs handed on (one per loose file, one per sample or damage of a container).
#[allow(clippy::too_many_arguments)]
pub(super) fn fetch_stage(
    rt: &tokio::runtime::Runtime,
    entries: &[InputEntry],
    datasets: &HashMap<String, DatasetCtx>,
    limits: &FetchLimits,
    retry: &Retry,
    fault: Option<Fault>,
    clocks: &BTreeMap<&'static str, StageClock>,
    progress: &dyn super::Progress,
    tx: SyncSender<Chunk<Fetched>>,
) -> Result<u64, PipelineError> {
    let mut out =
        Sender { tx, limits, fault, next: 0, items: Vec::new(), bytes: 0, waiting: Duration::ZERO, closed: false };
    let format = |e: &InputEntry| datasets.get(&e.dataset).map_or(DatasetFormat::Files, |d| d.format);
    let mut i = 0;
    while i < entries.len() && !out.closed {
        let t = Instant::now();
        out.waiting = Duration::ZERO;
        if format(&entries[i]) == DatasetFormat::Files {
            let run = entries[i..].iter().position(|e| format(e) != DatasetFormat::Files).unwrap_or(entries.len() - i);
            out.flush();
            fetch_files(rt, &entries[i..i + run], datasets, limits, retry, &mut out)?;
            i += run;
        } else {
            let entry = &entries[i];
            let ds = &datasets[&entry.dataset];
            let before = out.next + out.items.len() as u64;
            expand_container(rt, entry, ds, limits, retry, &mut out)?;
            progress.grow((out.next + out.items.len() as u64 - before).saturating_sub(1));
            i += 1;
        }
        clocks["fetch"].add(t.elapsed().saturating_sub(out.waiting));
    }
    out.flush();
    Ok(out.next)
}

/// Fetch a run of loose files, concurrently, a chunk at a time, each chunk holding a permit for its
/// planned bytes.
fn fetch_files(
    rt: &tokio::runtime::Runtime,
    entries: &[InputEntry],
    datasets: &HashMap<String, DatasetCtx>,
    limits: &FetchLimits,
    retry: &Retry,
    out: &mut Sender,
) -> Result<(), PipelineError> {
    let (concurrency, max_bytes) = (limits.concurrency, limits.max_image_bytes);
    let chunk_bytes = (limits.budget.capacity() / 4).max(1);
    let sizes: Vec<u64> = entries.iter().map(|e| e.size).collect();
    for range in cut(&sizes, limits.chunk_images, chunk_bytes) {
        let part = &entries[range];
        fault::hook(out.fault, FaultStage::Fetch, out.next, part.len());
        // Planned sizes; an object over `max_image_bytes` is not read, so it holds nothing.
        let planned: u64 = part.iter().map(|e| if e.size > max_bytes { 0 } else { e.size }).sum();
        let permit = limits.budget.acquire(planned);
        let items: Vec<Fetched> = rt.block_on(async {
            futures::stream::iter(part.iter().cloned())
                .map(|entry| {
                    let ds = datasets.get(&entry.dataset).cloned();
                    async move {
                        match ds {
                            Some(ds) => fetch_one(entry, &ds, max_bytes, retry).await,
                            None => {
                                let uri = format!("{}/{}", entry.dataset, entry.key);
                                let err = error_record(
                                    &entry,
                                    &uri,
                                    Stage::Fetch,
                                    "unknown_dataset",
                                    format!("dataset {:?} is not in the config", entry.dataset),
                                );
                                Ok(Fetched {
                                    entry,
                                    uri,
                                    bytes: Err(err),
                                    truth: None,
                                    origin: None,
                                    side: SideMembers::new(),
                                })
                            }
                        }
                    }
                })
                .buffered(concurrency)
                .try_collect()
                .await
        })?;
        if !out.send(items, permit) {
            break;
        }
    }
    Ok(())
}

/// Stream one container (a tar, or a Parquet row group) and hand on each of its samples.
fn expand_container(
    rt: &tokio::runtime::Runtime,
    entry: &InputEntry,
    ds: &DatasetCtx,
    limits: &FetchLimits,
    retry: &Retry,
    out: &mut Sender,
) -> Result<(), PipelineError> {
    let mut emit = |sample: Sample| -> Result<bool, PipelineError> {
        let Sample { key, uri, origin, bytes, side } = sample;
        let size = bytes.as_ref().map_or(0, |b| b.len() as u64);
        let entry = InputEntry::object(entry.dataset.clone(), key, size);
        let bytes = bytes.map_err(|(reason, detail)| error_record(&entry, &uri, Stage::Fetch, reason, detail));
        let truth = if bytes.is_ok() { rt.block_on(fetch_label_files(&entry, &uri, ds, retry))? } else { None };
        Ok(out.push(Fetched { entry, uri, bytes, truth, origin: Some(origin), side }))
    };
    match ds.format {
        DatasetFormat::Webdataset => {
            let side: Vec<String> =
                ds.supervised.as_ref().and_then(|s| s.class_member()).map(str::to_owned).into_iter().collect();
            let opts = TarOptions {
                image_extensions: &ds.extensions,
                side_extensions: &side,
                max_image_bytes: limits.max_image_bytes,
                retry: *retry,
            };
            read_tar(rt, &ds.images, &entry.key, &opts, &mut emit)
        }
        DatasetFormat::Parquet => read_row_group(
            rt,
            &ds.images,
            entry,
            &ds.columns,
            limits.chunk_images,
            limits.max_image_bytes,
            retry,
            &mut emit,
        ),
        DatasetFormat::Files => unreachable!("loose files are fetched by fetch_files"),
    }
}
