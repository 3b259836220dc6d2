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
use super::supervised::{DatasetCtx, SupervisedCtx};
use super::{Chunk, StageClock};

/// One fetched input.
pub(super) struct Fetched {
    pub(super) entry: InputEntry,
    pub(super) uri: String,
    pub(super) bytes: Result<Bytes, ErrorRecord>,
    pub(super) truth: Option<Result<[Bytes; 3], ErrorRecord>>,
}

pub(super) fn io_reason(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::NotFound { .. } => "not_found",
        _ => "io",
    }
}

pub(super) async fn get_bytes(loc: &Location, rel: &str, max: u64) -> Result<Bytes, (&'static str, String)> {
    let path = loc.child(rel);
    let got = loc.store.get(&path).await.map_err(|e| (io_reason(&e), shards::describe_store_error(&e)))?;
    if got.meta.size > max {
        return Err(("too_large", format!("{} bytes is over the limit of {max}", got.meta.size)));
    }
    got.bytes().await.map_err(|e| (io_reason(&e), shards::describe_store_error(&e)))
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
