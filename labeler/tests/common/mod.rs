//! Shared fixtures for the labeler's integration tests: a small synthetic world, configs pointing at it
//! and the committed demo teachers, and a fault-injecting object store.

#![allow(dead_code)]

pub mod moto;
pub mod proxy;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use world::{SplitCounts, WorldConfig};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A small world (96 px) under target/tmp, generated once per `(layout version, seed, counts)` and reused.
pub fn small_world(seed: u64, counts: SplitCounts) -> PathBuf {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(|| Mutex::new(())).lock().unwrap();
    // The layout version is in the name, so a world cached by an earlier layout is not reused.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "world-v{}-{seed}-{}-{}-{}-{}-{}-{}",
        world::STORE_VERSION,
        counts.cls,
        counts.det,
        counts.seg,
        counts.depth,
        counts.pool,
        counts.eval
    ));
    if !dir.join("world.json").exists() {
        let cfg = WorldConfig::try_new(seed, 96, 96).unwrap();
        let tmp = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        let loc = shards::open(tmp.to_str().unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(world::write_store(&cfg, &loc, &counts)).unwrap();
        std::fs::rename(&tmp, &dir).unwrap();
    }
    dir
}

/// Write a label config for `datasets` (name, images dir, optional supervised TOML) into `dir`.
pub fn write_config(dir: &Path, output: &str, datasets: &[(&str, String, Option<String>)], run_extra: &str) -> PathBuf {
    let teachers = workspace().join("teachers/demo.toml");
    let mut text = format!(
        "teachers = [{:?}]\noutput = {:?}\n\n[run]\n{}{}{run_extra}\n",
        teachers.to_str().unwrap(),
        output,
        if run_extra.contains("chunk_images") { "" } else { "chunk_images = 16\n" },
        if run_extra.contains("row_group_rows") { "" } else { "row_group_rows = 8\n" },
    );
    for (name, location, supervised) in datasets {
        text.push_str(&format!("\n[[dataset]]\nname = {name:?}\nlocation = {location:?}\n"));
        if let Some(s) = supervised {
            text.push_str(&format!("supervised = {s}\n"));
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("label.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// sha256 and size of every file a committed manifest names, by path inside the attempt directory.
pub fn committed_files(output: &Path) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(output.join("manifests")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let m = schemas::ShardManifest::from_json_bytes(&bytes).unwrap();
        for f in m.files {
            // Strip the attempt directory: data/shard-x/<attempt>/name.parquet → shard-x/name.parquet.
            let parts: Vec<&str> = f.path.split('/').collect();
            let key = format!("{}/{}", parts[1], parts[3]);
            let actual = std::fs::read(output.join(&f.path)).unwrap();
            let sha = sha256_hex(&actual);
            assert_eq!(sha, f.sha256, "file {} does not match its manifest", f.path);
            out.insert(key, (sha, f.bytes));
        }
    }
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Read every committed record under `output`.
pub fn read_records(output: &str) -> Vec<schemas::ImageRecord> {
    records_at(&shards::open(output).unwrap())
}

/// Read every committed error row under `output`.
pub fn read_errors(output: &str) -> Vec<schemas::ErrorRecord> {
    errors_at(&shards::open(output).unwrap())
}

/// Every committed record under an opened output location (a bucket the test reaches directly).
pub fn records_at(loc: &shards::Location) -> Vec<schemas::ImageRecord> {
    committed_batches(loc, "records").iter().flat_map(|b| schemas::batch_to_records(b).unwrap()).collect()
}

/// Every committed error row under an opened output location.
pub fn errors_at(loc: &shards::Location) -> Vec<schemas::ErrorRecord> {
    committed_batches(loc, "errors").iter().flat_map(|b| schemas::batch_to_errors(b).unwrap()).collect()
}

fn committed_batches(loc: &shards::Location, kind: &str) -> Vec<arrow_array::RecordBatch> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let manifests = rt.block_on(shards::committed_manifests(loc)).unwrap();
    let mut out = Vec::new();
    for (_, m) in manifests {
        for f in m.files.iter().filter(|f| f.kind == kind) {
            out.extend(rt.block_on(shards::read_all(loc, &f.path, f.bytes, &[])).unwrap());
        }
    }
    out
}

/// When a `FaultyStore` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The n-th put of a data file (0-based) fails with a server error; nothing is written.
    DataPut(usize),
    /// The manifest put fails before anything is written.
    BeforeManifest,
    /// The manifest is written, then the store reports an error (an ambiguous commit).
    AfterManifest,
    /// The n-th put of a data file (0-based) waits, unwritten, until [`FaultyStore::release_hold`]: the
    /// attempt stays alive, mid-shard, for as long as a test needs.
    HoldDataPut(usize),
}

/// An object store that fails (or holds a put) once, as told, and otherwise passes through.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    fault: Fault,
    data_puts: AtomicUsize,
    fired: AtomicUsize,
    held: Mutex<bool>,
    held_changed: Condvar,
    released: tokio::sync::Notify,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, fault: Fault) -> Self {
        Self {
            inner,
            fault,
            data_puts: AtomicUsize::new(0),
            fired: AtomicUsize::new(0),
            held: Mutex::new(false),
            held_changed: Condvar::new(),
            released: tokio::sync::Notify::new(),
        }
    }
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst) > 0
    }
    /// Wait until the put of a `HoldDataPut` fault is being held (at most `timeout`); whether it is.
    pub fn wait_held(&self, timeout: std::time::Duration) -> bool {
        let held = self.held.lock().unwrap();
        *self.held_changed.wait_timeout_while(held, timeout, |held| !*held).unwrap().0
    }
    /// Let the held put go on.
    pub fn release_hold(&self) {
        self.released.notify_one();
    }
    fn injected(what: &str) -> object_store::Error {
        object_store::Error::Generic { store: "FaultyStore", source: format!("injected fault: {what}").into() }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let is_manifest = location.as_ref().contains("manifests/");
        let is_data = location.as_ref().contains("data/");
        if is_data {
            let n = self.data_puts.fetch_add(1, Ordering::SeqCst);
            if self.fault == Fault::DataPut(n) {
                self.fired.fetch_add(1, Ordering::SeqCst);
                return Err(Self::injected("data put"));
            }
            if self.fault == Fault::HoldDataPut(n) {
                self.fired.fetch_add(1, Ordering::SeqCst);
                *self.held.lock().unwrap() = true;
                self.held_changed.notify_all();
                self.released.notified().await;
            }
        }
        if is_manifest && self.fault == Fault::BeforeManifest && self.fired.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Self::injected("before manifest put"));
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        if is_manifest && self.fault == Fault::AfterManifest && self.fired.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Self::injected("after manifest put (timeout)"));
        }
        Ok(result)
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    async fn get_ranges(&self, location: &ObjPath, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &ObjPath, to: &ObjPath, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
