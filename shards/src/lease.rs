//! Leases: how a janitor tells a running attempt from a dead one.
//!
//! An attempt's data files are orphans only once the attempt can no longer commit them, and an object
//! store cannot say whether the process that wrote them is alive. So a running attempt holds a lease: a
//! small object `leases/shard-KKKKK-of-NNNNN/<attempt>.json` stating until when (wall clock, unix
//! milliseconds) the attempt promises to be alive. A background task rewrites it every third of its
//! time-to-live while the attempt runs; the committer deletes it after the manifest put. A process that
//! dies simply stops refreshing, and the lease expires on its own.
//!
//! The promise cuts both ways. The janitor leaves every file of an attempt with an unexpired lease alone
//! ([`crate::remove_orphans`]); in return an attempt whose lease may have lapsed — a refresh could not be
//! written in time, so a janitor may have judged it dead and deleted its files — refuses to write or commit
//! anything more ([`Lease::check`]) and fails, for the batch engine to retry. It refuses already when less
//! than a third of the time-to-live is left, so the manifest put has that long to land before a janitor
//! could see the lease expired. A lapse is permanent for the attempt: a later successful refresh does not
//! bring back files a janitor may have deleted meanwhile.
//!
//! Leases are judged by the janitor's wall clock against the attempt host's: the janitor's grace period
//! (nothing younger is ever deleted) is what covers clock skew between hosts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::commit::{CommitError, ShardId};
use crate::store::Location;

/// The lease object as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The attempt holding the lease.
    pub attempt: String,
    /// The shard's name (`shard-00003-of-00016`).
    pub shard: String,
    /// Host and process of the attempt, for people reading the object.
    pub host: String,
    pub pid: u32,
    /// Time-to-live the attempt refreshes with.
    pub ttl_ms: u64,
    /// When this version was written (unix milliseconds, the attempt host's clock).
    pub refreshed_at_unix_ms: u64,
    /// Until when the attempt promises to be alive (unix milliseconds, the attempt host's clock).
    pub expires_at_unix_ms: u64,
}

impl LeaseRecord {
    /// Whether the lease still holds at `now`.
    pub fn is_live_at(&self, now: SystemTime) -> bool {
        unix_ms(now) < self.expires_at_unix_ms
    }
}

/// Path of the lease of `attempt` of `shard`, relative to the output root.
pub fn lease_path(shard: ShardId, attempt: &str) -> String {
    format!("{LEASES_DIR}/{}/{attempt}.json", shard.name())
}

/// The directory under the output root that holds every lease.
pub const LEASES_DIR: &str = "leases";

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What the attempt knows about its own lease, by its monotonic clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseState {
    ttl: Duration,
    /// The lease is certainly unexpired before this instant: the start of the last successful write plus
    /// the time-to-live (the written `expires_at` is the wall clock at that start plus the same ttl).
    valid_until: Instant,
    /// At some point the lease may have been expired in the store; permanent.
    lapsed: bool,
}

impl LeaseState {
    fn new(ttl: Duration, written_at: Instant) -> Self {
        Self { ttl, valid_until: written_at + ttl, lapsed: false }
    }

    /// A write that started at `started` landed by `finished`.
    fn written(&mut self, started: Instant, finished: Instant) {
        if finished >= self.valid_until {
            // The old version may have expired before the new one landed.
            self.lapsed = true;
        }
        self.valid_until = self.valid_until.max(started + self.ttl);
    }

    /// Whether the attempt may still write and commit at `now`: not lapsed, and at least a third of the
    /// time-to-live left for the write to land in.
    fn check(&mut self, now: Instant) -> Result<(), String> {
        if now >= self.valid_until {
            self.lapsed = true;
        }
        if self.lapsed {
            return Err("the lease expired before it could be refreshed; a janitor may have deleted this \
                        attempt's files"
                .into());
        }
        let left = self.valid_until - now;
        if left < self.ttl / 3 {
            return Err(format!(
                "only {} ms of the {} ms lease are left and it could not be refreshed",
                left.as_millis(),
                self.ttl.as_millis()
            ));
        }
        Ok(())
    }
}

/// A held lease: refreshed by a task on the tokio runtime that acquired it until released or dropped.
///
/// The task runs on the runtime current at [`Lease::acquire`]; that runtime must keep running tasks while
/// the attempt runs (a multi-thread runtime does; a current-thread one only while something blocks on it).
/// Dropping a lease stops the refreshes and leaves the object to expire; [`Lease::release`] deletes it.
pub struct Lease {
    root: Location,
    path: Path,
    uri: String,
    state: Arc<Mutex<LeaseState>>,
    stop: Arc<Notify>,
    refresher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("uri", &self.uri).field("state", &self.state).finish()
    }
}

impl Lease {
    /// Write the lease of `attempt` of `shard` under `root`, valid for `ttl`, and start refreshing it every
    /// `ttl / 3` on the current tokio runtime.
    pub async fn acquire(root: &Location, shard: ShardId, attempt: &str, ttl: Duration) -> Result<Lease, CommitError> {
        let path = root.child(&lease_path(shard, attempt));
        let uri = root.uri_of(&path);
        let writer = Writer {
            root: root.clone(),
            path: path.clone(),
            uri: uri.clone(),
            template: LeaseRecord {
                attempt: attempt.to_owned(),
                shard: shard.name(),
                host: host_name(),
                pid: std::process::id(),
                ttl_ms: ttl.as_millis() as u64,
                refreshed_at_unix_ms: 0,
                expires_at_unix_ms: 0,
            },
            ttl,
        };
        let started = Instant::now();
        writer.write().await?;
        let state = Arc::new(Mutex::new(LeaseState::new(ttl, started)));
        let stop = Arc::new(Notify::new());
        let refresher = tokio::spawn(refresh(writer, state.clone(), stop.clone()));
        Ok(Lease { root: root.clone(), path, uri, state, stop, refresher: Some(refresher) })
    }

    /// The lease object's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// `Ok` while the attempt may still write and commit: the lease never lapsed and at least a third of
    /// its time-to-live is left. Otherwise an error naming the lease; the attempt must stop.
    pub fn check(&self) -> Result<(), CommitError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.check(Instant::now()).map_err(|reason| CommitError::LeaseLost { uri: self.uri.clone(), reason })
    }

    /// Stop refreshing (after a refresh in flight lands) and delete the lease object.
    pub async fn release(mut self) -> Result<(), CommitError> {
        self.stop.notify_one();
        if let Some(mut task) = self.refresher.take() {
            let ttl = self.state.lock().unwrap_or_else(|p| p.into_inner()).ttl;
            if tokio::time::timeout(ttl, &mut task).await.is_err() {
                task.abort();
            }
        }
        match self.root.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(CommitError::Write { uri: self.uri.clone(), source }),
        }
    }

    /// Whether the lease has lapsed for good.
    #[cfg(test)]
    pub(crate) fn is_lapsed(&self) -> bool {
        self.state.lock().unwrap().lapsed
    }

    /// Make the lease lapse, as if a refresh had landed too late.
    #[cfg(test)]
    pub(crate) fn force_lapse(&self) {
        self.state.lock().unwrap().lapsed = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.take() {
            task.abort();
        }
    }
}

/// Writes versions of one lease object.
struct Writer {
    root: Location,
    path: Path,
    uri: String,
    template: LeaseRecord,
    ttl: Duration,
}

impl Writer {
    async fn write(&self) -> Result<(), CommitError> {
        let now = SystemTime::now();
        let record = LeaseRecord {
            refreshed_at_unix_ms: unix_ms(now),
            expires_at_unix_ms: unix_ms(now + self.ttl),
            ..self.template.clone()
        };
        let body = serde_json::to_vec_pretty(&record).expect("a lease record is always valid JSON");
        self.root
            .store
            .put(&self.path, PutPayload::from(Bytes::from(body)))
            .await
            .map(|_| ())
            .map_err(|source| CommitError::Write { uri: self.uri.clone(), source })
    }
}

/// Rewrite the lease every `ttl / 3`; after a failure, retry every `ttl / 20` until a write lands.
async fn refresh(writer: Writer, state: Arc<Mutex<LeaseState>>, stop: Arc<Notify>) {
    let period = writer.ttl / 3;
    let retry = (writer.ttl / 20).max(Duration::from_millis(10));
    let mut wait = period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.notified() => return,
        }
        let started = Instant::now();
        let result = writer.write().await;
        let finished = Instant::now();
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let was_lapsed = s.lapsed;
        match result {
            Ok(()) => {
                s.written(started, finished);
                wait = period;
            }
            Err(e) => {
                if finished >= s.valid_until {
                    s.lapsed = true;
                }
                warn!(lease = %writer.uri, error = %format!("{e:#}"), "refreshing the lease failed; retrying");
                wait = retry;
            }
        }
        if s.lapsed && !was_lapsed {
            error!(
                lease = %writer.uri,
                "LEASE LAPSED: it could not be refreshed before it expired; a janitor may delete this attempt's \
                 files, so the attempt will not commit"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
        PutOptions, PutResult,
    };

    const SHARD: ShardId = ShardId { index: 2, count: 5 };

    #[test]
    fn a_fresh_lease_allows_writing_until_two_thirds_of_it_are_gone() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut s = LeaseState::new(ttl, t0);
        assert!(s.check(t0).is_ok());
        assert!(s.check(t0 + Duration::from_secs(39)).is_ok());
        let err = s.check(t0 + Duration::from_secs(41)).unwrap_err();
        assert!(err.contains("ms of the 60000 ms lease are left"), "{err}");
        // Not lapsed yet: a refresh restores it.
        s.written(t0 + Duration::from_secs(41), t0 + Duration::from_secs(42));
        assert!(s.check(t0 + Duration::from_secs(50)).is_ok());
    }

    #[test]
    fn a_refresh_that_lands_after_expiry_lapses_the_lease_for_good() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut s = LeaseState::new(ttl, t0);
        // Started in time, landed too late: the store may have held an expired lease in between.
        s.written(t0 + Duration::from_secs(59), t0 + Duration::from_secs(61));
        let err = s.check(t0 + Duration::from_secs(62)).unwrap_err();
        assert!(err.contains("expired before it could be refreshed"), "{err}");
        s.written(t0 + Duration::from_secs(70), t0 + Duration::from_secs(71));
        assert!(s.check(t0 + Duration::from_secs(72)).is_err(), "a lapse is permanent");
    }

    #[test]
    fn checking_after_expiry_lapses_the_lease() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(Duration::from_secs(3), t0);
        assert!(s.check(t0 + Duration::from_secs(3)).is_err());
        s.written(t0 + Duration::from_secs(3), t0 + Duration::from_secs(3));
        assert!(s.check(t0 + Duration::from_secs(3)).is_err());
    }

    async fn read_record(root: &Location, attempt: &str) -> Option<LeaseRecord> {
        match root.store.get(&root.child(&lease_path(SHARD, attempt))).await {
            Ok(got) => Some(serde_json::from_slice(&got.bytes().await.unwrap()).unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn acquire_writes_the_lease_and_release_deletes_it() {
        let root = Location::from_store(Arc::new(InMemory::new()), "out", "memory:///out");
        let before = unix_ms(SystemTime::now());
        let lease = Lease::acquire(&root, SHARD, "a1", Duration::from_secs(60)).await.unwrap();
        assert_eq!(lease.uri(), "memory:///out/leases/shard-00002-of-00005/a1.json");
        let record = read_record(&root, "a1").await.expect("the lease object exists once acquired");
        assert_eq!((record.attempt.as_str(), record.shard.as_str()), ("a1", "shard-00002-of-00005"));
        assert_eq!(record.pid, std::process::id());
        assert!(record.refreshed_at_unix_ms >= before);
        assert_eq!(record.expires_at_unix_ms, record.refreshed_at_unix_ms + 60_000);
        assert!(record.is_live_at(SystemTime::now()));
        assert!(!record.is_live_at(SystemTime::now() + Duration::from_secs(61)));
        lease.check().unwrap();
        lease.release().await.unwrap();
        assert_eq!(read_record(&root, "a1").await, None);
    }

    #[tokio::test]
    async fn the_lease_is_rewritten_while_held() {
        let root = Location::from_store(Arc::new(InMemory::new()), "", "memory://");
        let lease = Lease::acquire(&root, SHARD, "a1", Duration::from_millis(300)).await.unwrap();
        let first = read_record(&root, "a1").await.unwrap();
        // Wait for a newer version (the refresher runs while this task sleeps); bounded, not timed.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = read_record(&root, "a1").await.unwrap();
            if now.expires_at_unix_ms > first.expires_at_unix_ms {
                break;
            }
            assert!(Instant::now() < deadline, "the lease was never refreshed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(lease);
        assert!(read_record(&root, "a1").await.is_some(), "a dropped lease is left to expire");
    }

    /// Fails every put under `leases/` while `failing` is set.
    #[derive(Debug)]
    struct FailingLeases {
        inner: InMemory,
        failing: AtomicBool,
    }

    impl std::fmt::Display for FailingLeases {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "FailingLeases")
        }
    }

    #[async_trait]
    impl ObjectStore for FailingLeases {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            if location.as_ref().starts_with("leases/") && self.failing.load(Ordering::SeqCst) {
                return Err(object_store::Error::Generic { store: "FailingLeases", source: "injected".into() });
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_lease_that_cannot_be_refreshed_stops_the_attempt_for_good() {
        let store = Arc::new(FailingLeases { inner: InMemory::new(), failing: AtomicBool::new(false) });
        let root = Location::from_store(store.clone(), "", "memory://");
        let lease = Lease::acquire(&root, SHARD, "a1", Duration::from_millis(300)).await.unwrap();
        store.failing.store(true, Ordering::SeqCst);
        // Every refresh fails from now on, so the lease must run out; wait for that (bounded, not timed).
        let deadline = Instant::now() + Duration::from_secs(60);
        let err = loop {
            match lease.check() {
                Err(e) => break e.to_string(),
                Ok(()) => assert!(Instant::now() < deadline, "the lease never ran out"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(err.contains("leases/shard-00002-of-00005/a1.json"), "{err}");
        // Let the refreshes land again: the attempt stays stopped once the lease has lapsed.
        let lapsed_version = read_record(&root, "a1").await.unwrap();
        while !lease.is_lapsed() {
            assert!(Instant::now() < deadline, "the lease never lapsed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.failing.store(false, Ordering::SeqCst);
        while read_record(&root, "a1").await.unwrap() == lapsed_version {
            assert!(Instant::now() < deadline, "the lease was never refreshed again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(lease.check().is_err(), "a lapsed lease does not come back");
    }
}
