//! Frozen input manifests and the shard plan.
//!
//! Object listings come back in no guaranteed order and change while a job runs, so the set of inputs is
//! frozen once, before any shard starts: every entry (dataset, key, size) sorted and de-duplicated, written
//! as parts of at most `part_size` JSON lines plus an `index.json` that records each part's count and
//! sha256. Shard k of N is then the contiguous range `[k·T/N, (k+1)·T/N)` of the T sorted entries: a pure
//! function of (manifest, k, N). A shard job reads the index and only the parts its range overlaps, so a
//! manifest of hundreds of millions of keys never has to be read whole by one job.

use std::collections::BTreeSet;
use std::ops::Range;

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

/// Write `entries` (sorted and de-duplicated here) as a frozen manifest under `root/inputs/`.
///
/// A root holds one plan. Freezing the same entries again is a no-op that returns the existing index;
/// freezing different entries where a plan exists is an error ([`InputError::PlanExists`]), never an
/// overwrite: shards already labelled from the old plan would silently stop matching it. Part files are
/// named by their content and the index is written with put-if-absent, so two planners racing each other
/// cannot mix their parts: one index wins and the loser gets `PlanExists` (or the same index back).
pub async fn freeze(root: &Location, mut entries: Vec<InputEntry>, part_size: usize) -> Result<InputIndex, InputError> {
    entries.sort();
    entries.dedup_by(|a, b| a.dataset == b.dataset && a.key == b.key && a.row_group == b.row_group);
    let part_size = part_size.max(1);
    let mut parts = Vec::new();
    let mut bodies = Vec::new();
    let mut all_hashes = Sha256::new();
    for (i, chunk) in entries.chunks(part_size).enumerate() {
        let mut buf = Vec::with_capacity(chunk.len() * 64);
        for entry in chunk {
            serde_json::to_writer(&mut buf, entry).expect("serialising an input entry cannot fail");
            buf.push(b'\n');
        }
        let sha = sha256_hex(&buf);
        all_hashes.update(sha.as_bytes());
        parts.push(InputPart {
            path: format!("inputs/part-{i:05}-{}.jsonl", &sha[..16]),
            count: chunk.len() as u64,
            sha256: sha,
        });
        bodies.push(Bytes::from(buf));
    }
    let index = InputIndex {
        version: INPUT_MANIFEST_VERSION,
        total: entries.len() as u64,
        parts,
        sha256: hex::encode(all_hashes.finalize()),
    };
    if let Some(existing) = read_index_if_present(root).await? {
        return same_plan(root, existing, &index);
    }
    for (part, body) in index.parts.iter().zip(bodies) {
        put(root, &part.path, body).await?;
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
