//! The shard commit protocol: nothing lost, nothing half-written.
//!
//! A shard attempt writes its data files under a directory unique to the attempt
//! (`data/shard-KKKKK-of-NNNNN/<attempt>/records-PPPPP.parquet`), never overwriting anything, and then
//! commits by writing one small manifest (`manifests/shard-KKKKK-of-NNNNN.json`) with put-if-absent.
//! Readers only ever open files a committed manifest names, so a run killed at any point leaves nothing a
//! reader would take. Of two concurrent attempts exactly one manifest put succeeds; the loser sees
//! `AlreadyExists` and reports that another attempt won. An ambiguous put (an error after which the
//! manifest may or may not exist) is resolved by reading the manifest back and comparing attempt ids.
//! Nothing here commits by rename, which object stores do not make atomic.
//!
//! A committer made with [`ShardCommitter::leased`] holds a [lease](crate::lease) for the whole attempt:
//! from before its first data file until after its manifest put. It writes and commits only while the
//! lease holds, which is what lets a janitor delete the files of dead attempts while others run.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::{ArrowWriter, AsyncArrowWriter};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use schemas::{ManifestFile, ShardManifest};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::lease::Lease;
use crate::store::Location;

/// Which shard of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardId {
    /// Zero-based shard index.
    pub index: u64,
    /// Number of shards in the plan.
    pub count: u64,
}

impl ShardId {
    /// The shard's name in paths: `shard-00003-of-00016`.
    pub fn name(&self) -> String {
        format!("shard-{:05}-of-{:05}", self.index, self.count)
    }

    /// Path of the shard's manifest relative to the output root.
    pub fn manifest_path(&self) -> String {
        format!("manifests/{}.json", self.name())
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Errors of the commit protocol; each names the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("writing {uri}")]
    Write {
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
    #[error("listing committed manifests under {uri}")]
    List {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("encoding Parquet for {what}")]
    Encode {
        what: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("manifest {uri} is not valid: {reason}")]
    BadManifest { uri: String, reason: String },
    #[error(
        "committed shards under {root} disagree: {first} has {first_has}, but {other} has {other_has}; \
         a root holds one plan labelled by one teacher set: label into a new output root instead"
    )]
    Inconsistent { root: String, first: String, first_has: String, other: String, other_has: String },
    #[error("committing {uri} failed and reading it back did not settle whether it was committed")]
    Ambiguous {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("deleting {uri}")]
    Delete {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cleaning up {path}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lease {uri}: {reason}; the attempt stops without committing")]
    LeaseLost { uri: String, reason: String },
    #[error("lease {uri} is not valid: {reason}")]
    BadLease { uri: String, reason: String },
}

/// What `ShardCommitter::commit` found.
#[derive(Debug)]
pub enum CommitOutcome {
    /// This attempt's manifest is the committed one.
    Committed(ShardManifest),
    /// Another attempt committed first; this attempt's files are orphans a janitor may delete.
    LostRace(ShardManifest),
}

/// Read the committed manifest of `shard`, if there is one.
pub async fn read_manifest(root: &Location, shard: ShardId) -> Result<Option<ShardManifest>, CommitError> {
    let path = root.child(&shard.manifest_path());
    let uri = root.uri_of(&path);
    match root.store.get(&path).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|source| CommitError::Read { uri: uri.clone(), source })?;
            parse_manifest(&uri, &bytes).map(Some)
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(CommitError::Read { uri, source }),
    }
}

fn parse_manifest(uri: &str, bytes: &[u8]) -> Result<ShardManifest, CommitError> {
    ShardManifest::from_json_bytes(bytes)
        .map_err(|e| CommitError::BadManifest { uri: uri.to_owned(), reason: e.to_string() })
}

/// Every committed manifest under `root`, sorted by (number of shards, shard index).
pub async fn committed_manifests(root: &Location) -> Result<Vec<(String, ShardManifest)>, CommitError> {
    let dir = root.child("manifests");
    let list_uri = root.uri_of(&dir);
    let metas: Vec<_> = root
        .store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|source| CommitError::List { uri: list_uri, source })?;
    let mut out = Vec::new();
    for meta in metas {
        if !meta.location.as_ref().ends_with(".json") {
            continue;
        }
        let uri = root.uri_of(&meta.location);
        let bytes = root
            .store
            .get(&meta.location)
            .await
            .map_err(|source| CommitError::Read { uri: uri.clone(), source })?
            .bytes()
            .await
            .map_err(|source| CommitError::Read { uri: uri.clone(), source })?;
        out.push((uri.clone(), parse_manifest(&uri, &bytes)?));
    }
    out.sort_by_key(|(_, m)| (m.num_shards, m.shard));
    Ok(out)
}

/// Check that every committed manifest under a root agrees on the plan (input manifest, number of shards)
/// and on the teachers (name, task, model). Readers refuse a root that mixes two runs: its rows would
/// overlap or carry labels of different models without anyone noticing.
pub fn check_consistent(root: &str, manifests: &[(String, ShardManifest)]) -> Result<(), CommitError> {
    let Some((first_uri, first)) = manifests.first() else { return Ok(()) };
    let describe = |m: &ShardManifest| -> [(&'static str, String); 3] {
        let teachers: Vec<String> =
            m.teachers.iter().map(|t| format!("{} ({:?}, model {})", t.name, t.task, short(&t.model_sha256))).collect();
        [
            ("plan", format!("input manifest {}", short(&m.input_manifest_sha256))),
            ("shards", format!("{} shards", m.num_shards)),
            ("teachers", format!("teachers [{}]", teachers.join(", "))),
        ]
    };
    let want = describe(first);
    for (uri, m) in &manifests[1..] {
        for ((_, a), (_, b)) in want.iter().zip(describe(m).iter()) {
            if a != b {
                return Err(CommitError::Inconsistent {
                    root: root.to_owned(),
                    first: first_uri.clone(),
                    first_has: a.clone(),
                    other: uri.clone(),
                    other_has: b.clone(),
                });
            }
        }
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Encode record batches as one Parquet file in memory.
///
/// The shard writer keeps at most one such file in memory at a time (bounded by its roll-over limits),
/// which keeps memory independent of shard size while letting the object store receive whole objects.
pub fn encode_parquet(
    batches: &[arrow_array::RecordBatch],
    schema: arrow_schema::SchemaRef,
    props: WriterProperties,
    what: &str,
) -> Result<Vec<u8>, CommitError> {
    let encode = |source| CommitError::Encode { what: what.to_owned(), source };
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props)).map_err(encode)?;
    for batch in batches {
        writer.write(batch).map_err(encode)?;
    }
    writer.close().map_err(encode)?;
    Ok(buf)
}

/// Writes one attempt's data files and commits them with a manifest.
pub struct ShardCommitter {
    root: Location,
    shard: ShardId,
    attempt: String,
    files: Vec<ManifestFile>,
    next_part: u32,
    lease: Option<Lease>,
}

impl ShardCommitter {
    /// Start an attempt of `shard` under `root` without a lease; `attempt` must be unique to this attempt.
    /// Only for outputs no janitor cleans while it runs (tests, fixtures): a janitor takes the files of an
    /// attempt without a lease for orphans once they are older than its grace period.
    pub fn new(root: Location, shard: ShardId, attempt: impl Into<String>) -> Self {
        Self { root, shard, attempt: attempt.into(), files: Vec::new(), next_part: 0, lease: None }
    }

    /// Start an attempt holding a lease with time-to-live `ttl`, refreshed on the current tokio runtime
    /// (see [`Lease`]) until the commit, which releases it. If the lease lapses, every later `put_file`
    /// and the commit fail with [`CommitError::LeaseLost`].
    pub async fn leased(
        root: Location,
        shard: ShardId,
        attempt: impl Into<String>,
        ttl: std::time::Duration,
    ) -> Result<Self, CommitError> {
        let attempt = attempt.into();
        let lease = Lease::acquire(&root, shard, &attempt, ttl).await?;
        Ok(Self { lease: Some(lease), ..Self::new(root, shard, attempt) })
    }

    /// The attempt id this committer writes under.
    pub fn attempt(&self) -> &str {
        &self.attempt
    }

    /// Store one data file of `kind` ("records" or "errors") holding `rows` rows.
    pub async fn put_file(&mut self, kind: &str, bytes: Vec<u8>, rows: u64) -> Result<(), CommitError> {
        if let Some(lease) = &self.lease {
            lease.check()?;
        }
        let rel = format!("data/{}/{}/{kind}-{:05}.parquet", self.shard.name(), self.attempt, self.next_part);
        self.next_part += 1;
        let path = self.root.child(&rel);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        // A plain put is atomic on every object_store backend (local files are written to a temporary name
        // first); the name is unique to the attempt, so it never replaces anything.
        self.root
            .store
            .put(&path, PutPayload::from(Bytes::from(bytes)))
            .await
            .map_err(|source| CommitError::Write { uri: self.root.uri_of(&path), source })?;
        self.files.push(ManifestFile { path: rel, kind: kind.to_owned(), bytes: size, sha256, rows });
        Ok(())
    }

    /// Start a data file of `kind` ("records" or "errors") that is streamed to the store as it is written
    /// (multipart upload on object stores, a staging file on local disk), so only the row group being
    /// encoded and one upload part are in memory, however large the file grows. It becomes visible at its
    /// name only once [`finish_file`](Self::finish_file) completes it, and a reader takes it only once the
    /// manifest names it.
    pub fn start_file(
        &mut self,
        kind: &str,
        schema: arrow_schema::SchemaRef,
        props: WriterProperties,
    ) -> Result<DataFile, CommitError> {
        if let Some(lease) = &self.lease {
            lease.check()?;
        }
        let rel = format!("data/{}/{}/{kind}-{:05}.parquet", self.shard.name(), self.attempt, self.next_part);
        self.next_part += 1;
        let path = self.root.child(&rel);
        let uri = self.root.uri_of(&path);
        let upload = HashingUpload {
            inner: object_store::buffered::BufWriter::with_capacity(self.root.store.clone(), path, UPLOAD_PART_BYTES),
            sha256: Sha256::new(),
            bytes: 0,
        };
        let writer = AsyncArrowWriter::try_new(upload, schema, Some(props))
            .map_err(|source| CommitError::Encode { what: uri.clone(), source })?;
        Ok(DataFile { writer, rel, uri, kind: kind.to_owned(), rows: 0 })
    }

    /// Complete a file from [`start_file`](Self::start_file) and record it for the manifest.
    pub async fn finish_file(&mut self, mut file: DataFile) -> Result<(), CommitError> {
        if let Some(lease) = &self.lease {
            lease.check()?;
        }
        file.writer.finish().await.map_err(|source| CommitError::Encode { what: file.uri.clone(), source })?;
        let upload = file.writer.into_inner();
        self.files.push(ManifestFile {
            path: file.rel,
            kind: file.kind,
            bytes: upload.bytes,
            sha256: hex::encode(upload.sha256.finalize()),
            rows: file.rows,
        });
        Ok(())
    }

    /// Commit: fill in the files and attempt id of `manifest` and write it with put-if-absent; then
    /// release the lease, whatever the outcome (a release that fails is logged: the lease expires anyway).
    pub async fn commit(mut self, manifest: ShardManifest) -> Result<CommitOutcome, CommitError> {
        let lease = self.lease.take();
        let outcome = match lease.as_ref().map(Lease::check).transpose() {
            Ok(_) => self.put_manifest(manifest).await,
            Err(lost) => Err(lost),
        };
        if let Some(lease) = lease {
            let uri = lease.uri().to_owned();
            if let Err(e) = lease.release().await {
                warn!(lease = %uri, error = %format!("{e:#}"), "releasing the lease failed; it will expire");
            }
        }
        outcome
    }

    async fn put_manifest(self, mut manifest: ShardManifest) -> Result<CommitOutcome, CommitError> {
        manifest.shard = self.shard.index;
        manifest.num_shards = self.shard.count;
        manifest.attempt = self.attempt.clone();
        manifest.files = self.files;
        let path = self.root.child(&self.shard.manifest_path());
        let uri = self.root.uri_of(&path);
        let body = manifest
            .to_json_bytes()
            .map_err(|e| CommitError::BadManifest { uri: uri.clone(), reason: e.to_string() })?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.root.store.put_opts(&path, PutPayload::from(body), opts).await {
            Ok(_) => Ok(CommitOutcome::Committed(manifest)),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                let existing =
                    read_manifest(&self.root, self.shard).await?.ok_or_else(|| CommitError::BadManifest {
                        uri: uri.clone(),
                        reason: "the store said it exists, but it cannot be read back".into(),
                    })?;
                Ok(settle(manifest, existing))
            }
            Err(source) => {
                // Ambiguous: the put may have landed before the error. Reading it back decides.
                match read_manifest(&self.root, self.shard).await {
                    Ok(Some(existing)) => Ok(settle(manifest, existing)),
                    _ => Err(CommitError::Ambiguous { uri, source }),
                }
            }
        }
    }
}

fn settle(mine: ShardManifest, existing: ShardManifest) -> CommitOutcome {
    if existing.attempt == mine.attempt {
        CommitOutcome::Committed(existing)
    } else {
        CommitOutcome::LostRace(existing)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use object_store::memory::InMemory;

    use super::*;
    use crate::lease::lease_path;

    const SHARD: ShardId = ShardId { index: 1, count: 4 };

    fn manifest() -> ShardManifest {
        ShardManifest { input_manifest_sha256: "0".repeat(64), ..Default::default() }
    }

    async fn exists(root: &Location, rel: &str) -> bool {
        match root.store.head(&root.child(rel)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_leased_attempt_holds_its_lease_from_before_its_files_until_its_commit() {
        let root = Location::from_store(Arc::new(InMemory::new()), "out", "memory:///out");
        let mut committer = ShardCommitter::leased(root.clone(), SHARD, "a1", Duration::from_secs(60)).await.unwrap();
        assert!(exists(&root, &lease_path(SHARD, "a1")).await);
        committer.put_file("records", b"rows".to_vec(), 0).await.unwrap();
        assert!(exists(&root, &lease_path(SHARD, "a1")).await);
        let outcome = committer.commit(manifest()).await.unwrap();
        assert!(matches!(outcome, CommitOutcome::Committed(_)), "{outcome:?}");
        assert!(!exists(&root, &lease_path(SHARD, "a1")).await, "the commit releases the lease");
        assert!(exists(&root, "data/shard-00001-of-00004/a1/records-00000.parquet").await);
    }

    #[tokio::test]
    async fn an_attempt_whose_lease_lapsed_neither_writes_nor_commits() {
        let root = Location::from_store(Arc::new(InMemory::new()), "out", "memory:///out");
        let mut committer = ShardCommitter::leased(root.clone(), SHARD, "a1", Duration::from_secs(60)).await.unwrap();
        committer.put_file("records", b"rows".to_vec(), 0).await.unwrap();
        committer.lease.as_ref().unwrap().force_lapse();
        let err = committer.put_file("records", b"more".to_vec(), 0).await.unwrap_err().to_string();
        assert!(err.contains("memory:///out/leases/shard-00001-of-00004/a1.json"), "{err}");
        assert!(!exists(&root, "data/shard-00001-of-00004/a1/records-00001.parquet").await);
        let err = committer.commit(manifest()).await.unwrap_err();
        assert!(matches!(err, CommitError::LeaseLost { .. }), "{err:?}");
        assert_eq!(read_manifest(&root, SHARD).await.unwrap(), None, "nothing was committed");
        assert!(!exists(&root, &lease_path(SHARD, "a1")).await, "a failed commit releases the lease too");
    }
}

#[cfg(test)]
mod consistency_tests {
    use super::*;
    use schemas::{ManifestTeacher, Task};

    fn manifest(shard: u64, n: u64, plan: char, model: char) -> (String, ShardManifest) {
        let m = ShardManifest {
            shard,
            num_shards: n,
            attempt: "a".into(),
            input_manifest_sha256: plan.to_string().repeat(64),
            teachers: vec![ManifestTeacher {
                name: "cls".into(),
                task: Task::Cls,
                model_sha256: model.to_string().repeat(64),
            }],
            ..Default::default()
        };
        (ShardId { index: shard, count: n }.manifest_path(), m)
    }

    #[test]
    fn a_root_mixing_plans_shard_counts_or_teachers_is_refused() {
        let same = [manifest(0, 4, 'a', 'b'), manifest(1, 4, 'a', 'b'), manifest(3, 4, 'a', 'b')];
        check_consistent("root", &same).unwrap();
        for (other, what) in [
            (manifest(3, 8, 'a', 'b'), "8 shards"),
            (manifest(3, 4, 'c', 'b'), "input manifest cccc"),
            (manifest(3, 4, 'a', 'd'), "model dddd"),
        ] {
            let err = check_consistent("root", &[manifest(0, 4, 'a', 'b'), other]).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
            assert!(err.contains("manifests/shard-00000-of-00004.json") && err.contains("new output root"), "{err}");
        }
    }
}

/// Size of one multipart upload part (object stores take parts of 5 MiB and more, but the last).
const UPLOAD_PART_BYTES: usize = 8 << 20;

/// A Parquet data file being streamed to the store; see [`ShardCommitter::start_file`].
pub struct DataFile {
    writer: AsyncArrowWriter<HashingUpload>,
    rel: String,
    uri: String,
    kind: String,
    rows: u64,
}

impl DataFile {
    /// Write `batch` as one row group (or more, if it is longer than the properties' row-group size).
    pub async fn write(&mut self, batch: &arrow_array::RecordBatch) -> Result<(), CommitError> {
        let encode = |source| CommitError::Encode { what: self.uri.clone(), source };
        self.writer.write(batch).await.map_err(encode)?;
        self.writer.flush().await.map_err(|source| CommitError::Encode { what: self.uri.clone(), source })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes encoded so far.
    pub fn bytes_written(&self) -> usize {
        self.writer.bytes_written()
    }

    /// Give up on the file: abort its upload so no part of it lingers in the store.
    pub async fn abort(self) {
        let mut upload = self.writer.into_inner();
        if let Err(e) = upload.inner.abort().await {
            warn!(uri = %self.uri, error = %e, "aborting an unfinished upload failed; the janitor or the bucket's lifecycle rule removes it");
        }
    }
}

/// The store upload under a [`DataFile`], hashing and counting the bytes on their way out.
struct HashingUpload {
    inner: object_store::buffered::BufWriter,
    sha256: Sha256,
    bytes: u64,
}

impl AsyncFileWriter for HashingUpload {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.sha256.update(&bs);
        self.bytes += bs.len() as u64;
        Box::pin(async move { self.inner.put(bs).await.map_err(|e| ParquetError::External(Box::new(e))) })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            self.inner.shutdown().await.map_err(|e| ParquetError::External(Box::new(e)))
        })
    }
}
