//! The janitor: deletes what dead attempts left behind, and nothing a running attempt still needs.
//!
//! Orphans are the data files of attempts that died or lost the race to commit, the lease objects they
//! left, and the staging files of puts cut short (local disks stage each put in `<name>#<n>` next to the
//! target; `list` never shows those). They cost only storage: readers never open a file no committed
//! manifest names. Deleting them must not hurt an attempt that is still running, which may commit at any
//! moment and whose manifest will then name its files. So the janitor deletes an object only when all of:
//!
//! - no committed manifest names it;
//! - the attempt it belongs to has no unexpired [lease](crate::lease) (a manifest staging file belongs to
//!   every attempt of its shard);
//! - it was last modified at least the grace period ago. The grace period covers what a lease cannot:
//!   files of attempts that hold none ([`crate::ShardCommitter::new`]), puts in flight outside any attempt,
//!   and clock skew between the janitor and the hosts that wrote the leases.
//!
//! Order matters, because attempts start and commit while the janitor runs. Data files and staging files
//! are listed before the leases: an attempt writes its lease before any file, so a live attempt whose file
//! was listed has its lease listed too. An attempt commits before it deletes its lease, so for an attempt
//! whose lease is gone the janitor reads its shard's manifest again before deleting anything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::commit::{committed_manifests, CommitError};
use crate::lease::{LeaseRecord, LEASES_DIR};
use crate::store::Location;

/// The directories under an output root the labeler writes, where staging leftovers can be.
const OUTPUT_DIRS: [&str; 4] = ["data", "manifests", LEASES_DIR, "inputs"];

/// When the janitor may delete something.
#[derive(Debug, Clone, Copy)]
pub struct JanitorPolicy {
    /// Nothing last modified less than this long before `now` is deleted.
    pub grace: Duration,
    /// The time leases and ages are judged at.
    pub now: SystemTime,
}

impl JanitorPolicy {
    /// Judge by the wall clock now, keeping everything younger than `grace`.
    pub fn at_now(grace: Duration) -> Self {
        Self { grace, now: SystemTime::now() }
    }

    fn is_old(&self, modified: SystemTime) -> bool {
        // A modification time after `now` (clock skew) counts as young.
        self.now.duration_since(modified).is_ok_and(|age| age >= self.grace)
    }
}

/// What the janitor did and left alone, each list sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JanitorReport {
    /// URIs of the objects deleted: data files, staging leftovers and leases of dead attempts.
    pub deleted: Vec<String>,
    /// Attempts with an unexpired lease, `shard-KKKKK-of-NNNNN/<attempt>`: nothing of theirs was touched.
    pub live_attempts: Vec<String>,
    /// URIs of orphans kept because they are younger than the grace period.
    pub young: Vec<String>,
}

/// The shard and attempt an output path belongs to, read from `data/<shard>/<attempt>/…` or
/// `leases/<shard>/<attempt>.json`.
fn attempt_of(rel: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["data", shard, attempt, _, ..] => Some(((*shard).to_owned(), (*attempt).to_owned())),
        [dir, shard, file] if *dir == LEASES_DIR => {
            file.strip_suffix(".json").map(|attempt| ((*shard).to_owned(), attempt.to_owned()))
        }
        _ => None,
    }
}

/// A put's staging file on local disk: `<name>#<digits>` (the names object_store's local store gives them).
fn staging_target(file_name: &str) -> Option<&str> {
    match file_name.split_once('#') {
        Some((target, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Some(target),
        _ => None,
    }
}

struct StagingFile {
    path: PathBuf,
    /// Output-relative path of the staging file, and of the object it was staging.
    rel: String,
    target: String,
    modified: SystemTime,
}

fn local_error(path: &FsPath, source: std::io::Error) -> CommitError {
    CommitError::Local { path: path.display().to_string(), source }
}

/// Every staging file under the output directories of `dir`.
fn staging_files(dir: &FsPath) -> Result<Vec<StagingFile>, CommitError> {
    fn walk(dir: &FsPath, rel: &str, out: &mut Vec<StagingFile>) -> Result<(), CommitError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(local_error(dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| local_error(dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().map_err(|e| local_error(&path, e))?;
            let child = format!("{rel}/{name}");
            if kind.is_dir() {
                walk(&path, &child, out)?;
            } else if let Some(target) = kind.is_file().then(|| staging_target(&name)).flatten() {
                let modified = entry.metadata().and_then(|m| m.modified()).map_err(|e| local_error(&path, e))?;
                out.push(StagingFile { target: format!("{rel}/{target}"), rel: child, path, modified });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for top in OUTPUT_DIRS {
        walk(&dir.join(top), top, &mut out)?;
    }
    Ok(out)
}

async fn list(root: &Location, dir: &str) -> Result<Vec<ObjectMeta>, CommitError> {
    let dir = root.child(dir);
    root.store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|source| CommitError::List { uri: root.uri_of(&dir), source })
}

struct ListedLease {
    meta: ObjectMeta,
    record: LeaseRecord,
}

/// Every lease under `root`, by (shard, attempt).
async fn read_leases(root: &Location) -> Result<BTreeMap<(String, String), ListedLease>, CommitError> {
    let mut out = BTreeMap::new();
    for meta in list(root, LEASES_DIR).await? {
        let Some(owner) = root.relative(&meta.location).as_deref().and_then(attempt_of) else { continue };
        let uri = root.uri_of(&meta.location);
        let bytes = match root.store.get(&meta.location).await {
            Ok(got) => got.bytes().await.map_err(|source| CommitError::Read { uri: uri.clone(), source })?,
            // Released between the listing and the read.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(source) => return Err(CommitError::Read { uri, source }),
        };
        let record: LeaseRecord = serde_json::from_slice(&bytes)
            .map_err(|e| CommitError::BadLease { uri: uri.clone(), reason: e.to_string() })?;
        out.insert(owner, ListedLease { meta, record });
    }
    Ok(out)
}

/// The files the committed manifest of the shard named `shard` names now, read once per shard.
async fn named_now<'a>(
    root: &Location,
    shard: &str,
    cache: &'a mut HashMap<String, HashSet<String>>,
) -> Result<&'a HashSet<String>, CommitError> {
    if !cache.contains_key(shard) {
        let path = root.child(&format!("manifests/{shard}.json"));
        let uri = root.uri_of(&path);
        let named = match root.store.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|source| CommitError::Read { uri: uri.clone(), source })?;
                let manifest = schemas::ShardManifest::from_json_bytes(&bytes)
                    .map_err(|e| CommitError::BadManifest { uri, reason: e.to_string() })?;
                manifest.files.into_iter().map(|f| f.path).collect()
            }
            Err(object_store::Error::NotFound { .. }) => HashSet::new(),
            Err(source) => return Err(CommitError::Read { uri, source }),
        };
        cache.insert(shard.to_owned(), named);
    }
    Ok(&cache[shard])
}

async fn delete(root: &Location, path: &Path) -> Result<(), CommitError> {
    match root.store.delete(path).await {
        // Gone already: another janitor, or the attempt released its lease.
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(CommitError::Delete { uri: root.uri_of(path), source }),
    }
}

/// Delete the orphans under `root` that `policy` allows (see the module docs); safe while attempts run.
pub async fn remove_orphans(root: &Location, policy: &JanitorPolicy) -> Result<JanitorReport, CommitError> {
    let committed = committed_manifests(root).await?;
    let named: HashSet<String> = committed.iter().flat_map(|(_, m)| m.files.iter().map(|f| f.path.clone())).collect();
    // Files first, leases after (see the module docs for why this order).
    let data = list(root, "data").await?;
    let staging = match &root.local_dir {
        Some(dir) => staging_files(dir)?,
        None => Vec::new(),
    };
    let leases = read_leases(root).await?;

    let live: BTreeSet<&(String, String)> =
        leases.iter().filter(|(_, l)| l.record.is_live_at(policy.now)).map(|(owner, _)| owner).collect();
    let live_shards: BTreeSet<&str> = live.iter().map(|(shard, _)| shard.as_str()).collect();
    let mut report = JanitorReport {
        live_attempts: live.iter().map(|(shard, attempt)| format!("{shard}/{attempt}")).collect(),
        ..JanitorReport::default()
    };
    let mut emptied: BTreeSet<(String, String)> = BTreeSet::new();
    let mut manifests_now = HashMap::new();

    for meta in data {
        let Some(rel) = root.relative(&meta.location) else { continue };
        if named.contains(&rel) {
            continue;
        }
        let owner = attempt_of(&rel);
        if let Some(owner) = &owner {
            if live.contains(owner) {
                continue;
            }
            // The lease is gone or expired: if the attempt committed since the manifests were read, its
            // manifest (written before the lease was released) names the file now.
            if named_now(root, &owner.0, &mut manifests_now).await?.contains(&rel) {
                continue;
            }
        }
        let uri = root.uri_of(&meta.location);
        if !policy.is_old(meta.last_modified.into()) {
            report.young.push(uri);
            continue;
        }
        delete(root, &meta.location).await?;
        report.deleted.push(uri);
        emptied.extend(owner);
    }

    for file in staging {
        let live_owner = match attempt_of(&file.target) {
            Some(owner) => live.contains(&owner),
            None => file
                .target
                .strip_prefix("manifests/")
                .and_then(|m| m.strip_suffix(".json"))
                .is_some_and(|shard| live_shards.contains(shard)),
        };
        if live_owner {
            continue;
        }
        let uri = format!("{}/{}", root.display.trim_end_matches('/'), file.rel);
        if !policy.is_old(file.modified) {
            report.young.push(uri);
            continue;
        }
        match std::fs::remove_file(&file.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(local_error(&file.path, e)),
        }
        report.deleted.push(uri);
    }

    for (owner, lease) in &leases {
        if live.contains(owner) {
            continue;
        }
        let uri = root.uri_of(&lease.meta.location);
        if !policy.is_old(lease.meta.last_modified.into()) {
            report.young.push(uri);
            continue;
        }
        delete(root, &lease.meta.location).await?;
        report.deleted.push(uri);
    }

    // Local disks keep the emptied directories of deleted attempts; drop them (a failure only means one
    // is not empty, or is in use again).
    if let Some(dir) = &root.local_dir {
        for (shard, attempt) in &emptied {
            let _ = std::fs::remove_dir(dir.join("data").join(shard).join(attempt));
        }
    }
    report.deleted.sort();
    report.young.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::PutPayload;

    use super::*;
    use crate::commit::{CommitOutcome, ShardCommitter, ShardId};
    use crate::lease::{lease_path, unix_ms};

    const S0: ShardId = ShardId { index: 0, count: 2 };
    const S1: ShardId = ShardId { index: 1, count: 2 };
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn memory() -> Location {
        Location::from_store(Arc::new(InMemory::new()), "out", "memory:///out")
    }

    async fn exists(root: &Location, rel: &str) -> bool {
        match root.store.head(&root.child(rel)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => panic!("{e}"),
        }
    }

    /// Write a lease of `attempt` of `shard` expiring at `expires_at`, as a running attempt would.
    async fn lease(root: &Location, shard: ShardId, attempt: &str, expires_at: SystemTime) {
        let record = LeaseRecord {
            attempt: attempt.to_owned(),
            shard: shard.name(),
            host: "test".into(),
            pid: 1,
            ttl_ms: 60_000,
            refreshed_at_unix_ms: unix_ms(expires_at) - 60_000,
            expires_at_unix_ms: unix_ms(expires_at),
        };
        let body = serde_json::to_vec(&record).unwrap();
        root.store.put(&root.child(&lease_path(shard, attempt)), PutPayload::from(body)).await.unwrap();
    }

    /// Two data files of an attempt that never commits; their output-relative paths.
    async fn orphan_files(root: &Location, shard: ShardId, attempt: &str) -> Vec<String> {
        let mut committer = ShardCommitter::new(root.clone(), shard, attempt);
        committer.put_file("records", b"rows".to_vec(), 0).await.unwrap();
        committer.put_file("errors", b"errs".to_vec(), 0).await.unwrap();
        let dir = format!("data/{}/{attempt}", shard.name());
        vec![format!("{dir}/records-00000.parquet"), format!("{dir}/errors-00001.parquet")]
    }

    fn uris(root: &Location, rels: &[String]) -> Vec<String> {
        let mut out: Vec<String> = rels.iter().map(|rel| format!("{}/{rel}", root.display)).collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_live_lease_protects_every_file_of_its_attempt() {
        let root = memory();
        let t0 = SystemTime::now();
        let files = orphan_files(&root, S0, "live").await;
        lease(&root, S0, "live", t0 + 2 * HOUR).await;
        // The files are long past the grace period, but the lease still holds.
        let report = remove_orphans(&root, &JanitorPolicy { grace: MINUTE, now: t0 + HOUR }).await.unwrap();
        assert_eq!(
            report,
            JanitorReport { live_attempts: vec!["shard-00000-of-00002/live".into()], ..JanitorReport::default() }
        );
        for rel in files.iter().chain([&lease_path(S0, "live")]) {
            assert!(exists(&root, rel).await, "{rel} was deleted");
        }
    }

    #[tokio::test]
    async fn files_and_lease_of_an_expired_attempt_are_deleted_once_old() {
        let root = memory();
        let t0 = SystemTime::now();
        let mut files = orphan_files(&root, S0, "dead").await;
        lease(&root, S0, "dead", t0 + MINUTE).await;
        let report = remove_orphans(&root, &JanitorPolicy { grace: HOUR, now: t0 + 2 * HOUR }).await.unwrap();
        files.push(lease_path(S0, "dead"));
        assert_eq!(report, JanitorReport { deleted: uris(&root, &files), ..JanitorReport::default() });
        for rel in &files {
            assert!(!exists(&root, rel).await, "{rel} is still there");
        }
    }

    #[tokio::test]
    async fn orphans_younger_than_the_grace_period_are_kept() {
        let root = memory();
        let mut files = orphan_files(&root, S0, "fresh").await;
        // An expired lease does not shorten the grace period.
        lease(&root, S0, "fresh", SystemTime::now() - Duration::from_secs(1)).await;
        files.push(lease_path(S0, "fresh"));
        let now = SystemTime::now();
        let report = remove_orphans(&root, &JanitorPolicy { grace: HOUR, now }).await.unwrap();
        assert_eq!(report, JanitorReport { young: uris(&root, &files), ..JanitorReport::default() });
        for rel in &files {
            assert!(exists(&root, rel).await, "{rel} was deleted");
        }
        let report = remove_orphans(&root, &JanitorPolicy { grace: HOUR, now: now + HOUR }).await.unwrap();
        assert_eq!(report.deleted, uris(&root, &files));
    }

    #[tokio::test]
    async fn committed_files_are_never_deleted() {
        let root = memory();
        let mut winner = ShardCommitter::new(root.clone(), S0, "winner");
        winner.put_file("records", b"rows".to_vec(), 0).await.unwrap();
        let manifest = schemas::ShardManifest { input_manifest_sha256: "0".repeat(64), ..Default::default() };
        let CommitOutcome::Committed(committed) = winner.commit(manifest).await.unwrap() else { panic!("lost") };
        // The winner's lease was left behind and has expired (its process died after the commit).
        lease(&root, S0, "winner", SystemTime::now()).await;
        let mut losers = orphan_files(&root, S0, "loser").await;
        losers.extend(orphan_files(&root, S1, "other").await);
        let far = SystemTime::now() + 240 * HOUR;
        let report = remove_orphans(&root, &JanitorPolicy { grace: Duration::ZERO, now: far }).await.unwrap();
        losers.push(lease_path(S0, "winner"));
        assert_eq!(report.deleted, uris(&root, &losers));
        assert!(report.young.is_empty() && report.live_attempts.is_empty(), "{report:?}");
        assert_eq!(committed.files.len(), 1);
        assert!(exists(&root, &committed.files[0].path).await);
    }

    #[tokio::test]
    async fn an_unreadable_lease_is_an_error_naming_it() {
        let root = memory();
        let path = root.child("leases/shard-00000-of-00002/x.json");
        root.store.put(&path, PutPayload::from_static(b"{ not json")).await.unwrap();
        let err = remove_orphans(&root, &JanitorPolicy::at_now(HOUR)).await.unwrap_err().to_string();
        assert_eq!(err.split(" is not valid").next(), Some("lease memory:///out/leases/shard-00000-of-00002/x.json"));
    }

    #[test]
    fn staging_names_are_those_of_object_stores_local_puts() {
        assert_eq!(staging_target("records-00001.parquet#1"), Some("records-00001.parquet"));
        assert_eq!(staging_target("shard-00000-of-00002.json#17"), Some("shard-00000-of-00002.json"));
        assert_eq!(staging_target("records-00001.parquet"), None);
        assert_eq!(staging_target("notes#v2"), None, "a valid object name, listed like any other");
        assert_eq!(staging_target("notes#"), None);
    }

    #[tokio::test]
    async fn staging_leftovers_go_unless_their_attempt_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::store::open(dir.path().to_str().unwrap()).unwrap();
        let t0 = SystemTime::now();
        lease(&root, S0, "live", t0 + 3 * HOUR).await;
        let live = [
            "data/shard-00000-of-00002/live/records-00003.parquet#1",
            "leases/shard-00000-of-00002/live.json#2",
            // A manifest put of shard 0 could be the live attempt's commit.
            "manifests/shard-00000-of-00002.json#1",
        ];
        let dead = [
            "data/shard-00001-of-00002/dead/records-00000.parquet#1",
            "leases/shard-00001-of-00002/dead.json#1",
            "manifests/shard-00001-of-00002.json#3",
            "inputs/index.json#1",
        ];
        for rel in live.iter().chain(&dead) {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"partial").unwrap();
        }
        let dead: Vec<String> = dead.iter().map(|s| s.to_string()).collect();
        let young = remove_orphans(&root, &JanitorPolicy { grace: 3 * HOUR, now: t0 + 2 * HOUR }).await.unwrap();
        assert_eq!(young.young, uris(&root, &dead));
        assert!(young.deleted.is_empty(), "{young:?}");
        let report = remove_orphans(&root, &JanitorPolicy { grace: HOUR, now: t0 + 2 * HOUR }).await.unwrap();
        assert_eq!(report.deleted, uris(&root, &dead));
        assert_eq!(report.live_attempts, ["shard-00000-of-00002/live"]);
        for rel in live {
            assert!(dir.path().join(rel).exists(), "{rel} was deleted");
        }
        for rel in &dead {
            assert!(!dir.path().join(rel).exists(), "{rel} is still there");
        }
    }
}
