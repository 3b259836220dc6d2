//! Fetch stage: bytes of each input (and its supervised-label files) from the object store, with bounded
//! concurrency on the async runtime, a chunk at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use schemas::{ErrorRecord, Stage};
use shards::inputs::InputEntry;
use shards::Location;

use super::records::error_record;
use super::supervised::{fetch_label_files, DatasetCtx, FetchedLabels};
use super::{Chunk, StageClock};

/// One fetched input.
pub(super) struct Fetched {
    pub(super) entry: InputEntry,
    pub(super) uri: String,
    pub(super) bytes: Result<Bytes, ErrorRecord>,
    pub(super) truth: FetchedLabels,
}

pub(super) fn io_reason(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::NotFound { .. } => "not_found",
        _ => "io",
    }
}

pub(super) async fn get_bytes(loc: &Location, rel: &str, max: u64) -> Result<Bytes, (&'static str, String)> {
    let path = loc.child(rel);
    let got = loc.store.get(&path).await.map_err(|e| (io_reason(&e), e.to_string()))?;
    if got.meta.size > max {
        return Err(("too_large", format!("{} bytes is over the limit of {max}", got.meta.size)));
    }
    got.bytes().await.map_err(|e| (io_reason(&e), e.to_string()))
}

pub(super) async fn fetch_one(entry: InputEntry, ds: &DatasetCtx, max_bytes: u64) -> Fetched {
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
    let truth = if bytes.is_ok() { fetch_label_files(&entry, &uri, ds).await } else { None };
    Fetched { entry, uri, bytes, truth }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn fetch_stage(
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
