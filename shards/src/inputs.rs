//! Frozen input manifests and the shard plan.
//!
//! Object listings come back in no guaranteed order and change while a job runs, so the set of inputs is
//! frozen once, before any shard starts: every entry (dataset, key, size) sorted and de-duplicated, written
//! as parts of at most `part_size` JSON lines plus an `index.json` that records each part's count and
//! sha256. Shard k of N is then the contiguous range `[k·T/N, (k+1)·T/N)` of the T sorted entries: a pure
//! function of (manifest, k, N). A shard job reads the index and only the parts its range overlaps, so a
//! manifest of hundreds of millions of keys never has to be read whole by one job.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::Location;

/// One image to label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InputEntry {
    /// Dataset name (from the labeler config).
    pub dataset: String,
    /// Key of the image (or of the container of a packed dataset: a tar or Parquet file) relative to its
    /// dataset's store root, slash-separated.
    pub key: String,
    /// The row group of the Parquet file `key` this entry stands for; `None` for a loose image or a tar.
    /// Entries without one serialise as before, so manifests of loose files keep their bytes and hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_group: Option<u64>,
    /// Size in bytes of the object `key` at freeze time (0 when unknown, e.g. from a key list).
    pub size: u64,
}

impl InputEntry {
    /// An entry for the whole object `key`.
    pub fn object(dataset: impl Into<String>, key: impl Into<String>, size: u64) -> Self {
        Self { dataset: dataset.into(), key: key.into(), row_group: None, size }
    }
}

/// Index of a frozen input manifest (`<root>/inputs/index.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputIndex {
    /// Format version of the input manifest.
    pub version: u32,
    /// Total number of entries over all parts.
    pub total: u64,
    /// Parts in order; entries are sorted across parts.
    pub parts: Vec<InputPart>,
    /// sha256 over the parts' hashes: names the frozen input set in provenance.
    pub sha256: String,
}

/// One part file of a frozen input manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputPart {
    /// Path relative to the manifest root.
    pub path: String,
    /// Number of entries.
    pub count: u64,
    /// sha256 of the part's bytes.
    pub sha256: String,
}

/// Errors from freezing or reading input manifests.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("listing {uri}")]
    List {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("reading {uri}")]
    Read {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("writing {uri}")]
    Write {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{uri}: line {line}: {reason}")]
    Parse { uri: String, line: usize, reason: String },
    #[error(
        "{uri}: sha256 is {actual}, the index says {expected}: the input manifest was changed after it was frozen"
    )]
    Checksum { uri: String, expected: String, actual: String },
    #[error(
        "{uri} already holds a different plan ({existing_total} inputs, sha256 {existing_sha256}); this one has \
         {new_total} inputs (sha256 {new_sha256}). A root holds one plan: label into a new output root, or \
         delete the old root first if its shards are no longer wanted"
    )]
    PlanExists { uri: String, existing_total: u64, existing_sha256: String, new_total: u64, new_sha256: String },
    #[error(
        "{uri}: this output root is labelled with {planned} shards{}; a run with {requested} shards would \
         label some images twice. Use --num-shards {planned}, or label into a new output root",
        if *plan_changed { " of another plan" } else { "" }
    )]
    LayoutMismatch { uri: String, planned: u64, requested: u64, plan_changed: bool },
    #[error("spilling sorted inputs to scratch space {path}")]
    Scratch {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("shard index {k} is not below the number of shards {n}")]
    BadShard { k: u64, n: u64 },
    #[error("the number of shards must be at least 1")]
    NoShards,
}

const INPUT_MANIFEST_VERSION: u32 = 1;
/// Default number of entries per part file.
pub const DEFAULT_PART_SIZE: usize = 1_000_000;

/// Shard `k` of `n` over `total` sorted entries.
pub fn shard_range(total: u64, k: u64, n: u64) -> Result<Range<u64>, InputError> {
    if n == 0 {
        return Err(InputError::NoShards);
    }
    if k >= n {
        return Err(InputError::BadShard { k, n });
    }
    // u128 keeps k·T exact for any u64 inputs.
    let start = (k as u128 * total as u128 / n as u128) as u64;
    let end = ((k as u128 + 1) * total as u128 / n as u128) as u64;
    Ok(start..end)
}

/// List every object under each `(dataset, location)` whose name passes `filter`, as sorted entries.
pub async fn list_entries(
    sources: &[(String, Location)],
    filter: impl Fn(&str) -> bool,
) -> Result<Vec<InputEntry>, InputError> {
    let mut set = BTreeSet::new();
    for (dataset, loc) in sources {
        let prefix = if loc.prefix.as_ref().is_empty() { None } else { Some(&loc.prefix) };
        let metas: Vec<_> = loc
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|source| InputError::List { uri: loc.display.clone(), source })?;
        for meta in metas {
            let Some(key) = loc.relative(&meta.location) else { continue };
            if filter(&key) {
                set.insert(InputEntry::object(dataset.clone(), key, meta.size));
            }
        }
    }
    Ok(set.into_iter().collect())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Write `entries` (sorted and de-duplicated here) as a frozen manifest under `root/inputs/`, sorting in
/// memory. [`Freezer`] writes the same bytes with bounded memory, spilling sorted runs to disk.
///
/// A root holds one plan. Freezing the same entries again is a no-op that returns the existing index;
/// freezing different entries where a plan exists is an error ([`InputError::PlanExists`]), never an
/// overwrite: shards already labelled from the old plan would silently stop matching it. Part files are
/// named by their content and the index is written with put-if-absent, so two planners racing each other
/// cannot mix their parts: one index wins and the loser gets `PlanExists` (or the same index back).
pub async fn freeze(root: &Location, entries: Vec<InputEntry>, part_size: usize) -> Result<InputIndex, InputError> {
    Freezer { buf: entries, ..Freezer::new(std::env::temp_dir(), usize::MAX) }.freeze(root, part_size).await
}

/// Entries a [`Freezer`] holds in memory before it spills them as one sorted run (about 150 MB of entries
/// with keys of 40 bytes).
pub const DEFAULT_RUN_ENTRIES: usize = 1_000_000;

/// Sorted runs merged at once (one open file and a 64 KiB buffer each); with more runs, just enough of them
/// are first merged into one longer run, so most entries are written to scratch once.
const MERGE_FAN_IN: usize = 256;

/// Collects entries for a frozen manifest with memory bounded by `run_entries`, whatever their number.
///
/// A plan of hundreds of millions of keys does not fit in memory as one vector (about 150 bytes an entry),
/// so entries are sorted in runs of at most `run_entries`, each run spilled to a file in a private
/// directory under `scratch`, and the runs are merged (de-duplicating as they go) straight into the
/// manifest's parts, which are hashed and written one at a time. The manifest's bytes, part names and
/// index are exactly those [`freeze`] writes for the same entries: an entry's place depends on the sorted
/// order only, never on how the runs were cut. The spill files are deleted when the freezer is dropped.
pub struct Freezer {
    run_entries: usize,
    scratch: PathBuf,
    dir: Option<tempfile::TempDir>,
    buf: Vec<InputEntry>,
    runs: Vec<PathBuf>,
    /// Run files named so far (runs merged into longer ones are gone from `runs`).
    named: usize,
    pushed: u64,
}

impl Freezer {
    /// A freezer spilling runs of at most `run_entries` entries (at least 1) under `scratch`.
    pub fn new(scratch: impl Into<PathBuf>, run_entries: usize) -> Self {
        Self {
            run_entries: run_entries.max(1),
            scratch: scratch.into(),
            dir: None,
            buf: Vec::new(),
            runs: Vec::new(),
            named: 0,
            pushed: 0,
        }
    }

    /// Add one entry; duplicates (same dataset, key and row group) are dropped when the manifest is written.
    pub fn push(&mut self, entry: InputEntry) -> Result<(), InputError> {
        self.buf.push(entry);
        self.pushed += 1;
        if self.buf.len() >= self.run_entries {
            self.spill()?;
        }
        Ok(())
    }

    /// Entries pushed so far, duplicates included.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Sorted runs spilled to disk so far.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    fn scratch_error(&self, path: &std::path::Path, source: io::Error) -> InputError {
        InputError::Scratch { path: path.display().to_string(), source }
    }

    fn run_path(&mut self) -> Result<PathBuf, InputError> {
        if self.dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("must-plan-")
                .tempdir_in(&self.scratch)
                .map_err(|e| self.scratch_error(&self.scratch.clone(), e))?;
            self.dir = Some(dir);
        }
        let dir = self.dir.as_ref().expect("created above").path();
        self.named += 1;
        Ok(dir.join(format!("run-{:06}", self.named)))
    }

    /// Sort the buffered entries and write them as one run.
    fn spill(&mut self) -> Result<(), InputError> {
        let mut entries = std::mem::take(&mut self.buf);
        entries.sort_unstable();
        entries.dedup_by(|a, b| same_input(a, b));
        let path = self.run_path()?;
        let write = || -> io::Result<()> {
            let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&path)?);
            for e in &entries {
                write_entry(&mut out, e)?;
            }
            out.flush()
        };
        write().map_err(|e| self.scratch_error(&path, e))?;
        self.runs.push(path);
        Ok(())
    }

    /// Merge runs until at most [`MERGE_FAN_IN`] are left.
    fn reduce_runs(&mut self) -> Result<(), InputError> {
        while self.runs.len() > MERGE_FAN_IN {
            let merged = (self.runs.len() - MERGE_FAN_IN + 1).min(MERGE_FAN_IN);
            let group: Vec<PathBuf> = self.runs.drain(..merged).collect();
            let path = self.run_path()?;
            let mut merged = Merge::open(&group)?;
            let write = |merged: &mut Merge| -> Result<(), InputError> {
                let mut out = io::BufWriter::with_capacity(
                    1 << 20,
                    File::create(&path).map_err(|e| self.scratch_error(&path, e))?,
                );
                while let Some(e) = merged.next_entry()? {
                    write_entry(&mut out, &e).map_err(|e| self.scratch_error(&path, e))?;
                }
                out.flush().map_err(|e| self.scratch_error(&path, e))
            };
            write(&mut merged)?;
            drop(merged);
            for p in &group {
                let _ = std::fs::remove_file(p);
            }
            self.runs.push(path);
        }
        Ok(())
    }

    /// Write the manifest of every pushed entry under `root/inputs/` in parts of at most `part_size`
    /// entries (see [`freeze`] for what happens when the root already holds a plan).
    pub async fn freeze(mut self, root: &Location, part_size: usize) -> Result<InputIndex, InputError> {
        let mut sorted: Box<dyn Iterator<Item = Result<InputEntry, InputError>>> = if self.runs.is_empty() {
            let mut entries = std::mem::take(&mut self.buf);
            entries.sort_unstable();
            entries.dedup_by(|a, b| same_input(a, b));
            Box::new(entries.into_iter().map(Ok))
        } else {
            if !self.buf.is_empty() {
                self.spill()?;
            }
            self.reduce_runs()?;
            let mut merge = Merge::open(&self.runs)?;
            Box::new(std::iter::from_fn(move || merge.next_entry().transpose()))
        };
        // With a plan already there, the new one is only hashed to compare it: nothing is written.
        let existing = read_index_if_present(root).await?;
        let part_size = part_size.max(1);
        let mut parts = Vec::new();
        let mut all_hashes = Sha256::new();
        let mut total = 0u64;
        let mut prev: Option<InputEntry> = None;
        loop {
            let mut buf = Vec::new();
            let mut count = 0u64;
            while count < part_size as u64 {
                let Some(entry) = sorted.next().transpose()? else { break };
                if prev.as_ref().is_some_and(|p| same_input(&entry, p)) {
                    continue;
                }
                serde_json::to_writer(&mut buf, &entry).expect("serialising an input entry cannot fail");
                buf.push(b'\n');
                count += 1;
                prev = Some(entry);
            }
            if count == 0 {
                break;
            }
            total += count;
            let sha = sha256_hex(&buf);
            all_hashes.update(sha.as_bytes());
            let part =
                InputPart { path: format!("inputs/part-{:05}-{}.jsonl", parts.len(), &sha[..16]), count, sha256: sha };
            if existing.is_none() {
                put(root, &part.path, Bytes::from(buf)).await?;
            }
            parts.push(part);
        }
        let index =
            InputIndex { version: INPUT_MANIFEST_VERSION, total, parts, sha256: hex::encode(all_hashes.finalize()) };
        if let Some(existing) = existing {
            return same_plan(root, existing, &index);
        }
        let json = serde_json::to_vec_pretty(&index).expect("serialising the index cannot fail");
        let path = root.child(INDEX);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match root.store.put_opts(&path, PutPayload::from(json), opts).await {
            Ok(_) => Ok(index),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                let existing = read_index(root).await?;
                same_plan(root, existing, &index)
            }
            Err(source) => Err(InputError::Write { uri: root.uri_of(&path), source }),
        }
    }
}

/// Whether two entries name the same input (the manifest keeps the first in sorted order).
fn same_input(a: &InputEntry, b: &InputEntry) -> bool {
    a.dataset == b.dataset && a.key == b.key && a.row_group == b.row_group
}

/// A run entry: dataset and key as u32 length + bytes, row group as u64 + 1 (0 for none), size as u64.
fn write_entry(out: &mut impl Write, e: &InputEntry) -> io::Result<()> {
    for s in [&e.dataset, &e.key] {
        let len = u32::try_from(s.len()).map_err(|_| io::Error::other("a key longer than 4 GiB"))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(s.as_bytes())?;
    }
    out.write_all(&e.row_group.map_or(0, |g| g + 1).to_le_bytes())?;
    out.write_all(&e.size.to_le_bytes())
}

fn read_entry(input: &mut impl Read) -> io::Result<Option<InputEntry>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    fn string(input: &mut impl Read, len: [u8; 4]) -> io::Result<String> {
        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
        input.read_exact(&mut bytes)?;
        String::from_utf8(bytes).map_err(io::Error::other)
    }
    let dataset = string(input, len)?;
    input.read_exact(&mut len)?;
    let key = string(input, len)?;
    let mut word = [0u8; 8];
    input.read_exact(&mut word)?;
    let row_group = u64::from_le_bytes(word).checked_sub(1);
    input.read_exact(&mut word)?;
    Ok(Some(InputEntry { dataset, key, row_group, size: u64::from_le_bytes(word) }))
}

/// A k-way merge of sorted run files.
struct Merge {
    readers: Vec<(PathBuf, io::BufReader<File>)>,
    heap: BinaryHeap<Reverse<(InputEntry, usize)>>,
}

impl Merge {
    fn open(paths: &[PathBuf]) -> Result<Self, InputError> {
        let mut merge = Merge { readers: Vec::new(), heap: BinaryHeap::new() };
        for path in paths {
            let file =
                File::open(path).map_err(|e| InputError::Scratch { path: path.display().to_string(), source: e })?;
            merge.readers.push((path.clone(), io::BufReader::with_capacity(1 << 16, file)));
            merge.refill(merge.readers.len() - 1)?;
        }
        Ok(merge)
    }

    fn refill(&mut self, i: usize) -> Result<(), InputError> {
        let (path, reader) = &mut self.readers[i];
        let next =
            read_entry(reader).map_err(|e| InputError::Scratch { path: path.display().to_string(), source: e })?;
        if let Some(entry) = next {
            self.heap.push(Reverse((entry, i)));
        }
        Ok(())
    }

    /// The smallest entry left over all runs (duplicates included).
    fn next_entry(&mut self) -> Result<Option<InputEntry>, InputError> {
        let Some(Reverse((entry, i))) = self.heap.pop() else { return Ok(None) };
        self.refill(i)?;
        Ok(Some(entry))
    }
}

const INDEX: &str = "inputs/index.json";

fn same_plan(root: &Location, existing: InputIndex, new: &InputIndex) -> Result<InputIndex, InputError> {
    if existing.sha256 == new.sha256 {
        Ok(existing)
    } else {
        Err(InputError::PlanExists {
            uri: root.uri_of(&root.child(INDEX)),
            existing_total: existing.total,
            existing_sha256: existing.sha256,
            new_total: new.total,
            new_sha256: new.sha256.clone(),
        })
    }
}

/// The index of the frozen manifest under `root`, or `None` when nothing is planned there (only a
/// `NotFound` means that: any other read error is returned, so a flaky store never triggers a re-plan).
pub async fn read_index_if_present(root: &Location) -> Result<Option<InputIndex>, InputError> {
    match read_index(root).await {
        Ok(index) => Ok(Some(index)),
        Err(InputError::Read { source: object_store::Error::NotFound { .. }, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The shard count an output root is labelled with (`inputs/layout.json`), fixed by the first shard run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Number of shards N every run against this root must use.
    pub num_shards: u64,
    /// sha256 of the frozen input manifest the layout cuts.
    pub input_manifest_sha256: String,
}

const LAYOUT: &str = "inputs/layout.json";

/// Fix the root's shard count at `num_shards` (put-if-absent), or check it against the one already fixed.
///
/// Shard k of N and shard k' of N' overlap whenever N ≠ N', so a root labelled with two shard counts
/// would hold some images twice: every reader would count them twice. Returns `true` when this call
/// fixed the layout (the root had none).
pub async fn claim_layout(root: &Location, index: &InputIndex, num_shards: u64) -> Result<bool, InputError> {
    let want = Layout { num_shards, input_manifest_sha256: index.sha256.clone() };
    let path = root.child(LAYOUT);
    let uri = root.uri_of(&path);
    let json = serde_json::to_vec_pretty(&want).expect("serialising the layout cannot fail");
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    let created = match root.store.put_opts(&path, PutPayload::from(json), opts).await {
        Ok(_) => true,
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => false,
        Err(source) => return Err(InputError::Write { uri, source }),
    };
    if !created {
        let have = read_layout(root).await?.ok_or_else(|| InputError::Parse {
            uri: uri.clone(),
            line: 1,
            reason: "the store said it exists, but it cannot be read back".into(),
        })?;
        if have != want {
            return Err(InputError::LayoutMismatch {
                uri,
                planned: have.num_shards,
                requested: num_shards,
                plan_changed: have.input_manifest_sha256 != want.input_manifest_sha256,
            });
        }
    }
    Ok(created)
}

/// The root's layout, if a shard run has fixed one.
pub async fn read_layout(root: &Location) -> Result<Option<Layout>, InputError> {
    let path = root.child(LAYOUT);
    let uri = root.uri_of(&path);
    let bytes = match get(root.store.as_ref(), &uri, &path).await {
        Ok(b) => b,
        Err(InputError::Read { source: object_store::Error::NotFound { .. }, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| InputError::Parse {
        uri,
        line: e.line(),
        reason: e.to_string(),
    })
}

async fn put(root: &Location, rel: &str, bytes: Bytes) -> Result<(), InputError> {
    let path = root.child(rel);
    root.store
        .put(&path, PutPayload::from_bytes(bytes))
        .await
        .map_err(|source| InputError::Write { uri: root.uri_of(&path), source })?;
    Ok(())
}

async fn get(store: &dyn ObjectStore, uri: &str, path: &Path) -> Result<Bytes, InputError> {
    let read = |source| InputError::Read { uri: uri.to_owned(), source };
    store.get(path).await.map_err(read)?.bytes().await.map_err(read)
}

/// Read the index of the frozen manifest under `root/inputs/`.
pub async fn read_index(root: &Location) -> Result<InputIndex, InputError> {
    let path = root.child("inputs/index.json");
    let uri = root.uri_of(&path);
    let bytes = get(root.store.as_ref(), &uri, &path).await?;
    let index: InputIndex = serde_json::from_slice(&bytes).map_err(|e| InputError::Parse {
        uri: uri.clone(),
        line: e.line(),
        reason: e.to_string(),
    })?;
    if index.version != INPUT_MANIFEST_VERSION {
        return Err(InputError::Parse {
            uri,
            line: 1,
            reason: format!(
                "input manifest version {} is not supported (expected {INPUT_MANIFEST_VERSION})",
                index.version
            ),
        });
    }
    Ok(index)
}

/// The entries of shard `k` of `n`, reading only the parts that overlap its range and checking their hashes.
pub async fn read_shard(root: &Location, index: &InputIndex, k: u64, n: u64) -> Result<Vec<InputEntry>, InputError> {
    let range = shard_range(index.total, k, n)?;
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    let mut first = 0u64;
    for part in &index.parts {
        let part_range = first..first + part.count;
        first += part.count;
        if part_range.end <= range.start || part_range.start >= range.end {
            continue;
        }
        let path = root.child(&part.path);
        let uri = root.uri_of(&path);
        let bytes = get(root.store.as_ref(), &uri, &path).await?;
        let actual = sha256_hex(&bytes);
        if actual != part.sha256 {
            return Err(InputError::Checksum { uri, expected: part.sha256.clone(), actual });
        }
        for (i, line) in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let global = part_range.start + i as u64;
            if !range.contains(&global) {
                continue;
            }
            let entry: InputEntry = serde_json::from_slice(line).map_err(|e| InputError::Parse {
                uri: uri.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            out.push(entry);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn entries(keys: &[&str]) -> Vec<InputEntry> {
        keys.iter().map(|k| InputEntry::object("d", *k, 1)).collect()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    #[test]
    fn entries_without_a_row_group_serialise_as_before() {
        let loose = InputEntry::object("d", "a.jpg", 3);
        assert_eq!(serde_json::to_string(&loose).unwrap(), r#"{"dataset":"d","key":"a.jpg","size":3}"#);
        let old: InputEntry = serde_json::from_str(r#"{"dataset":"d","key":"a.jpg","size":3}"#).unwrap();
        assert_eq!(old, loose);
        let group = InputEntry { row_group: Some(2), ..InputEntry::object("d", "x.parquet", 9) };
        let json = serde_json::to_string(&group).unwrap();
        assert_eq!(json, r#"{"dataset":"d","key":"x.parquet","row_group":2,"size":9}"#);
        assert_eq!(serde_json::from_str::<InputEntry>(&json).unwrap(), group);
    }

    #[test]
    fn bad_shard_numbers_are_errors() {
        assert!(matches!(shard_range(10, 0, 0), Err(InputError::NoShards)));
        assert!(matches!(shard_range(10, 3, 3), Err(InputError::BadShard { .. })));
    }

    proptest! {
        #[test]
        fn every_index_in_exactly_one_shard(total in 0u64..5000, n in 1u64..64) {
            let mut seen = vec![0u8; total as usize];
            let mut prev_end = 0;
            for k in 0..n {
                let r = shard_range(total, k, n).unwrap();
                prop_assert_eq!(r.start, prev_end);
                prev_end = r.end;
                // Balanced: sizes differ by at most one.
                let len = r.end - r.start;
                prop_assert!(len == total / n || len == total / n + 1);
                for i in r { seen[i as usize] += 1; }
            }
            prop_assert_eq!(prev_end, total);
            prop_assert!(seen.iter().all(|&c| c == 1));
        }

        #[test]
        fn plan_does_not_depend_on_listing_order(
            keys in proptest::collection::btree_set("[a-z]{1,6}", 1..200),
            seed in any::<u64>(),
            n in 1u64..9,
            part in 1usize..50,
        ) {
            let sorted: Vec<String> = keys.into_iter().collect();
            let mut shuffled = sorted.clone();
            // Deterministic shuffle from the seed, plus a duplicate to show de-duplication.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            shuffled.push(shuffled[0].clone());
            let a = Location::from_store(Arc::new(InMemory::new()), "a", "memory:///a");
            let b = Location::from_store(Arc::new(InMemory::new()), "b", "memory:///b");
            let refs_sorted: Vec<&str> = sorted.iter().map(String::as_str).collect();
            let refs_shuffled: Vec<&str> = shuffled.iter().map(String::as_str).collect();
            let rt = rt();
            let ia = rt.block_on(freeze(&a, entries(&refs_sorted), part)).unwrap();
            let ib = rt.block_on(freeze(&b, entries(&refs_shuffled), part)).unwrap();
            prop_assert_eq!(&ia.sha256, &ib.sha256);
            let mut union = Vec::new();
            for k in 0..n {
                let sa = rt.block_on(read_shard(&a, &ia, k, n)).unwrap();
                let sb = rt.block_on(read_shard(&b, &ib, k, n)).unwrap();
                prop_assert_eq!(&sa, &sb);
                union.extend(sa.into_iter().map(|e| e.key));
            }
            prop_assert_eq!(union, sorted);
        }
    }

    /// Every object under `root`, by path, with its bytes.
    fn objects(root: &Location) -> BTreeMap<String, Vec<u8>> {
        let rt = rt();
        let metas: Vec<_> = rt.block_on(root.store.list(None).try_collect()).unwrap();
        metas
            .into_iter()
            .map(|m| {
                let bytes = rt.block_on(async { root.store.get(&m.location).await.unwrap().bytes().await.unwrap() });
                (m.location.to_string(), bytes.to_vec())
            })
            .collect()
    }

    fn memory_root() -> Location {
        Location::from_store(Arc::new(InMemory::new()), "r", "memory:///r")
    }

    /// Entries of two datasets with duplicates, row groups and sizes, in a scrambled order.
    fn scrambled(n: usize) -> Vec<InputEntry> {
        let mut out = Vec::new();
        for i in 0..n {
            let j = (i * 7919) % n;
            let dataset = if j.is_multiple_of(3) { "b" } else { "a" };
            let mut e = InputEntry::object(dataset, format!("k/{:04}.jpg", j % (n / 2 + 1)), j as u64 % 5);
            if j.is_multiple_of(4) {
                e.row_group = Some(j as u64 % 3);
            }
            out.push(e);
        }
        out
    }

    #[test]
    fn spilled_runs_freeze_to_the_same_bytes_as_memory() {
        let entries = scrambled(500);
        let scratch = tempfile::tempdir().unwrap();
        let memory = memory_root();
        let want = rt().block_on(freeze(&memory, entries.clone(), 37)).unwrap();
        assert!(want.total < 500 && want.parts.len() > 1, "duplicates are dropped, several parts");
        let want_objects = objects(&memory);
        // One run larger than the input (never spills), runs of a few entries, and runs of one entry: 500
        // runs, more than one merge takes, so they are merged in two rounds.
        for run in [usize::MAX, 1000, 64, 7, 1] {
            let root = memory_root();
            let mut f = Freezer::new(scratch.path(), run);
            for e in entries.iter().cloned() {
                f.push(e).unwrap();
            }
            assert_eq!(f.pushed(), 500);
            assert_eq!(f.runs() > 0, run < 500, "run {run}");
            let got = rt().block_on(f.freeze(&root, 37)).unwrap();
            assert_eq!(got, want, "run {run}");
            assert_eq!(objects(&root), want_objects, "run {run}");
        }
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "spill files are removed");
    }

    /// The manifest format is frozen: these hashes are of bytes written before the external sort existed,
    /// so roots planned then keep matching their plans.
    #[test]
    fn manifest_bytes_and_hashes_are_unchanged() {
        let scratch = tempfile::tempdir().unwrap();
        for run in [usize::MAX, 1] {
            let root = memory_root();
            let mut f = Freezer::new(scratch.path(), run);
            for e in entries(&["c", "a", "b", "a"]) {
                f.push(e).unwrap();
            }
            let index = rt().block_on(f.freeze(&root, 2)).unwrap();
            let paths: Vec<&str> = index.parts.iter().map(|p| p.path.as_str()).collect();
            assert_eq!(paths, ["inputs/part-00000-bdc47e1636e66a98.jsonl", "inputs/part-00001-78433c8df0a29169.jsonl"]);
            assert_eq!(index.sha256, "3d3f1248f6cefa8dac8cfda4d806a7718d61cac5e4d3afe9fad57fc4d6a28e9d");
            let part = &objects(&root)[&format!("r/{}", paths[1])];
            assert_eq!(part.as_slice(), b"{\"dataset\":\"d\",\"key\":\"c\",\"size\":1}\n");
        }
    }

    #[test]
    fn a_spilling_freezer_keeps_the_first_plan() {
        let scratch = tempfile::tempdir().unwrap();
        let root = memory_root();
        let first = rt().block_on(freeze(&root, entries(&["a", "b", "c"]), 2)).unwrap();
        let freezer = |keys: &[&str]| {
            let mut f = Freezer::new(scratch.path(), 1);
            for e in entries(keys) {
                f.push(e).unwrap();
            }
            f
        };
        assert_eq!(rt().block_on(freezer(&["c", "b", "a", "a"]).freeze(&root, 2)).unwrap(), first);
        let err = rt().block_on(freezer(&["a", "b", "c", "d"]).freeze(&root, 2)).unwrap_err();
        assert!(matches!(err, InputError::PlanExists { existing_total: 3, new_total: 4, .. }), "{err}");
        assert_eq!(objects(&root).len(), 3, "a refused plan writes no parts");
        let empty = rt().block_on(Freezer::new(scratch.path(), 1).freeze(&memory_root(), 2)).unwrap();
        assert_eq!((empty.total, empty.parts.len()), (0, 0));
    }

    #[test]
    fn tampered_part_is_detected() {
        let rt = rt();
        let root = Location::from_store(Arc::new(InMemory::new()), "r", "memory:///r");
        let index = rt.block_on(freeze(&root, entries(&["a", "b", "c"]), 2)).unwrap();
        let part = index.parts[0].path.clone();
        rt.block_on(put(&root, &part, Bytes::from_static(b"{}\n"))).unwrap();
        let err = rt.block_on(read_shard(&root, &index, 0, 1)).unwrap_err();
        assert!(matches!(err, InputError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains(&part));
    }

    #[test]
    fn a_root_keeps_its_first_plan() {
        let rt = rt();
        let root = Location::from_store(Arc::new(InMemory::new()), "r", "memory:///r");
        let first = rt.block_on(freeze(&root, entries(&["a", "b", "c"]), 2)).unwrap();
        // The same inputs again (in another order): the same index, nothing rewritten.
        let again = rt.block_on(freeze(&root, entries(&["c", "a", "b"]), 2)).unwrap();
        assert_eq!(again, first);
        // Other inputs: refused, and the first plan still reads back whole.
        let err = rt.block_on(freeze(&root, entries(&["a", "b", "c", "d"]), 2)).unwrap_err();
        assert!(matches!(err, InputError::PlanExists { existing_total: 3, new_total: 4, .. }), "{err}");
        assert!(err.to_string().contains("memory:///r/inputs/index.json"), "{err}");
        assert_eq!(rt.block_on(read_index(&root)).unwrap(), first);
        let keys: Vec<String> =
            rt.block_on(read_shard(&root, &first, 0, 1)).unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let empty = Location::from_store(Arc::new(InMemory::new()), "e", "memory:///e");
        assert_eq!(rt.block_on(read_index_if_present(&empty)).unwrap(), None);
    }

    #[test]
    fn a_root_has_one_shard_count() {
        let rt = rt();
        let root = Location::from_store(Arc::new(InMemory::new()), "r", "memory:///r");
        let index = rt.block_on(freeze(&root, entries(&["a", "b", "c"]), 2)).unwrap();
        assert!(rt.block_on(claim_layout(&root, &index, 4)).unwrap(), "the first run fixes the layout");
        assert!(!rt.block_on(claim_layout(&root, &index, 4)).unwrap(), "the same count again is fine");
        let err = rt.block_on(claim_layout(&root, &index, 8)).unwrap_err();
        assert!(matches!(err, InputError::LayoutMismatch { planned: 4, requested: 8, .. }), "{err}");
        assert!(err.to_string().contains("--num-shards 4"), "{err}");
        assert_eq!(rt.block_on(read_layout(&root)).unwrap().unwrap().num_shards, 4);
    }

    /// Names a user may give image files: every character `object_store` would percent-encode, non-ASCII,
    /// spaces, nested folders with spaces, and names that already look percent-encoded.
    const ODD_NAMES: &[&str] = &[
        "plain.jpg",
        "with space.jpg",
        "per%cent.jpg",
        "a%20b.jpg",
        "%2F.jpg",
        "%25%.jpg",
        "hash#1.jpg",
        "question?.jpg",
        "star*.jpg",
        "[brackets].jpg",
        "caret^.jpg",
        "pipe|.jpg",
        "tilde~.jpg",
        "back\\slash.jpg",
        "quote\"'`.jpg",
        "{curly}<angle>.jpg",
        "é.jpg",
        "漢字.jpg",
        "emoji 📷.jpg",
        "folder with spaces/sub folder/x y.jpg",
        "nested/é dir/#?%.jpg",
    ];

    /// List `loc`, then fetch every listed key back through `Location::child`: the keys are the names and
    /// each one reads the bytes written under it.
    async fn assert_keys_round_trip(loc: &Location) {
        let listed = list_entries(&[("d".into(), loc.clone())], |_| true).await.unwrap();
        let keys: BTreeSet<&str> = listed.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ODD_NAMES.iter().copied().collect::<BTreeSet<_>>());
        for entry in &listed {
            let got = loc.store.get(&loc.child(&entry.key)).await;
            let bytes = got.unwrap_or_else(|e| panic!("{:?}: {e}", entry.key)).bytes().await.unwrap();
            assert_eq!(bytes.as_ref(), entry.key.as_bytes(), "{:?}", entry.key);
        }
    }

    #[test]
    fn odd_names_round_trip_on_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        // The location itself has a space, a `#` and a non-ASCII letter in it.
        let root = dir.path().join("my images #1/é");
        for name in ODD_NAMES {
            let file = root.join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, name.as_bytes()).unwrap();
        }
        let loc = crate::open(root.to_str().unwrap()).unwrap();
        rt().block_on(assert_keys_round_trip(&loc));
    }

    #[test]
    fn odd_names_round_trip_in_memory() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let rt = rt();
        for name in ODD_NAMES {
            // The object names as a store holds them (what S3 would list), not percent-encoded.
            let path = Path::parse(format!("my images #1/é/{name}")).unwrap();
            rt.block_on(store.put(&path, PutPayload::from(name.as_bytes().to_vec()))).unwrap();
        }
        let loc = Location::from_store(store, "my images #1/é", "memory:///my images #1/é");
        rt.block_on(assert_keys_round_trip(&loc));
    }

    #[test]
    fn listing_filters_and_relativises_keys() {
        let rt = rt();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for k in ["p/x/1.jpg", "p/x/2.png", "p/x/readme.txt", "q/3.jpg"] {
            rt.block_on(store.put(&Path::from(k), PutPayload::from_static(b"abc"))).unwrap();
        }
        let loc = Location::from_store(store, "p", "memory:///p");
        let got = rt.block_on(list_entries(&[("d".into(), loc)], |k| !k.ends_with(".txt"))).unwrap();
        let keys: Vec<_> = got.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["x/1.jpg", "x/2.png"]);
        assert_eq!(got[0].size, 3);
    }
}
