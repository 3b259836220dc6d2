//! The labeler against a real S3-compatible server on loopback: moto's server from the project venv
//! (`make setup`), started and stopped by this test. Images are read from a bucket, shards are written
//! to a bucket with S3 conditional puts (If-None-Match), a re-run is a no-op, and the janitor deletes a
//! dead attempt's files but neither a live attempt's nor committed ones. Supervised labels come from the
//! bucket too: a class CSV read at the start and a PNG mask per image fetched with the image.

mod common;

use std::process::Command;

use common::moto::*;
use common::*;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use world::SplitCounts;

#[test]
fn labels_a_bucket_into_a_bucket_and_reruns_are_noops() {
    let (_moto, port) = start_moto();
    create_bucket(port, "images");
    create_bucket(port, "shards");
    let world = small_world(11, SplitCounts { cls: 8, det: 8, seg: 8, depth: 8, pool: 24, eval: 0 });
    let images = bucket_store(port, "images");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for entry in std::fs::read_dir(world.join("pool/images")).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("photos/{}", path.file_name().unwrap().to_str().unwrap());
        rt.block_on(images.put(&ObjPath::from(key), PutPayload::from(std::fs::read(&path).unwrap()))).unwrap();
    }
    let mut uploads = vec![("labels.csv".to_owned(), world.join("pool/labels.csv"))];
    for entry in std::fs::read_dir(world.join("pool/seg")).unwrap() {
        let path = entry.unwrap().path();
        uploads.push((format!("masks/{}", path.file_name().unwrap().to_str().unwrap()), path));
    }
    for (key, path) in uploads {
        rt.block_on(images.put(&ObjPath::from(key), PutPayload::from(std::fs::read(&path).unwrap()))).unwrap();
    }
    let supervised =
        "{ classification = { csv = \"s3://images/labels.csv\" }, segmentation = { masks = \"s3://images/masks\" } }";
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "s3://shards/run1",
        &[("pool", "s3://images/photos".into(), Some(supervised.to_owned()))],
        "",
    );
    let bin = env!("CARGO_BIN_EXE_labeler");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).envs(s3_env(port)).env("MUST_LOG", "warn").output().unwrap();
        assert!(out.status.success(), "labeler {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cfg = config.to_str().unwrap();
    run(&["plan", "--config", cfg]);
    for k in ["0", "1"] {
        let said = run(&["run", "--config", cfg, "--shard", k, "--num-shards", "2"]);
        assert!(said.contains("committed"), "{said}");
    }
    let again = run(&["run", "--config", cfg, "--shard", "1", "--num-shards", "2"]);
    assert!(again.contains("already committed"), "{again}");
    let status = run(&["status", "--output", "s3://shards/run1"]);
    assert!(status.contains("plan: 24 inputs"), "{status}");
    assert!(status.contains("shards: 2 planned, 2 committed, 0 missing"), "{status}");
    assert!(status.contains("committed inputs: 24 -> 24 labelled rows + 0 error rows"), "{status}");

    // Read the committed shards back through the S3 API.
    let shards_store = bucket_store(port, "shards");
    let loc = shards::Location::from_store(shards_store.clone(), "run1", "s3://shards/run1");
    let manifests = rt.block_on(shards::committed_manifests(&loc)).unwrap();
    assert_eq!(manifests.len(), 2);
    let mut rows = 0;
    for (_, m) in &manifests {
        for f in m.files.iter().filter(|f| f.kind == "records") {
            for batch in rt.block_on(shards::read_all(&loc, &f.path, f.bytes, &[])).unwrap() {
                let recs = schemas::batch_to_records(&batch).unwrap();
                assert!(recs.iter().all(|r| r.source_uri.starts_with("s3://images/photos/")
                    && r.origin(schemas::Task::Cls) == schemas::Origin::Supervised
                    && r.origin(schemas::Task::Seg) == schemas::Origin::Supervised
                    && r.origin(schemas::Task::Det) == schemas::Origin::Pseudo));
                rows += recs.len();
            }
        }
    }
    assert_eq!(rows, 24);
    // The server honours put-if-absent: a second conditional put of a manifest is refused.
    let manifest_path = ObjPath::from("run1/manifests/shard-00000-of-00002.json");
    let second = rt.block_on(shards_store.put_opts(
        &manifest_path,
        PutPayload::from_static(b"{}"),
        object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() },
    ));
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })),
        "{second:?}"
    );

    // The janitor over S3: the committing runs released their leases; a dead attempt's file goes, a live
    // attempt's file and lease stay, and so does every committed file.
    let put = |key: &str, body: Vec<u8>| {
        rt.block_on(shards_store.put(&ObjPath::from(key), PutPayload::from(body))).unwrap();
    };
    put("run1/data/shard-00000-of-00002/dead/records-00000.parquet", b"partial".to_vec());
    put("run1/data/shard-00000-of-00002/live/records-00000.parquet", b"partial".to_vec());
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let lease = shards::LeaseRecord {
        attempt: "live".into(),
        shard: "shard-00000-of-00002".into(),
        host: "elsewhere".into(),
        pid: 1,
        ttl_ms: 3_600_000,
        refreshed_at_unix_ms: now_ms,
        expires_at_unix_ms: now_ms + 3_600_000,
    };
    put("run1/leases/shard-00000-of-00002/live.json", serde_json::to_vec(&lease).unwrap());
    let said = run(&["janitor", "--output", "s3://shards/run1", "--grace-seconds", "0"]);
    assert!(said.contains("deleted s3://shards/run1/data/shard-00000-of-00002/dead/records-00000.parquet\n"), "{said}");
    assert!(said.contains("deleted 1 object(s); kept 0 younger than 0 s; 1 live attempt(s) left alone"), "{said}");
    let live =
        rt.block_on(shards_store.head(&ObjPath::from("run1/data/shard-00000-of-00002/live/records-00000.parquet")));
    assert!(live.is_ok(), "{live:?}");
    let status = run(&["status", "--output", "s3://shards/run1"]);
    assert!(status.contains("shards: 2 planned, 2 committed, 0 missing"), "{status}");
    assert!(status.contains("committed inputs: 24 -> 24 labelled rows + 0 error rows"), "{status}");
    for (_, m) in &manifests {
        for f in &m.files {
            let head = rt.block_on(shards_store.head(&ObjPath::from(format!("run1/{}", f.path)))).unwrap();
            assert_eq!(head.size, f.bytes, "{}", f.path);
        }
    }
}

/// Upload the pool of a small world to `images/photos/` and write a config labelling it into `output`
/// through the endpoint on `port` (the proxy).
fn bucket_pool(moto_port: u16, dir: &std::path::Path, output: &str, run_extra: &str) -> std::path::PathBuf {
    create_bucket(moto_port, "images");
    create_bucket(moto_port, "shards");
    let world = small_world(11, SplitCounts { cls: 8, det: 8, seg: 8, depth: 8, pool: 24, eval: 0 });
    let images = bucket_store(moto_port, "images");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for entry in std::fs::read_dir(world.join("pool/images")).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("photos/{}", path.file_name().unwrap().to_str().unwrap());
        rt.block_on(images.put(&ObjPath::from(key), PutPayload::from(std::fs::read(&path).unwrap()))).unwrap();
    }
    write_config(dir, output, &[("pool", "s3://images/photos".into(), None)], run_extra)
}

fn committed_manifest_count(moto_port: u16) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let loc = shards::Location::from_store(bucket_store(moto_port, "shards"), "run", "s3://shards/run");
    rt.block_on(shards::committed_manifests(&loc)).unwrap().len()
}

#[test]
fn throttling_and_resets_are_retried_and_the_shard_commits_whole() {
    let (_moto, moto_port) = start_moto();
    let proxy = common::proxy::FaultProxy::start(moto_port);
    let dir = tempfile::tempdir().unwrap();
    let config = bucket_pool(moto_port, dir.path(), "s3://shards/run", "retry_backoff_ms = 20");
    let cfg = config.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_labeler");
    let run =
        |args: &[&str]| Command::new(bin).args(args).envs(s3_env(proxy.port)).env("MUST_LOG", "warn").output().unwrap();
    let planned = run(&["plan", "--config", cfg]);
    assert!(planned.status.success(), "{}", String::from_utf8_lossy(&planned.stderr));
    // The next 12 reads of images fail: 503 Slow Down and reset connections, alternately. (Only image reads:
    // the store client's own retries, 10 per request, would absorb them all on the first read of the plan.)
    *proxy.state.fail_only.lock().unwrap() = Some("/images/photos/".into());
    proxy.state.fail_next.store(12, std::sync::atomic::Ordering::SeqCst);
    let out = run(&["run", "--config", cfg, "--shard", "0", "--num-shards", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(proxy.state.faults.load(std::sync::atomic::Ordering::SeqCst), 12, "every fault was served");
    assert!(stdout.contains("24 inputs -> 24 labelled, 0 errors"), "{stdout}");
    assert_eq!(committed_manifest_count(moto_port), 1);
}

#[test]
fn access_denied_on_one_object_fails_the_attempt_and_commits_nothing() {
    let (_moto, moto_port) = start_moto();
    let proxy = common::proxy::FaultProxy::start(moto_port);
    let dir = tempfile::tempdir().unwrap();
    let config = bucket_pool(moto_port, dir.path(), "s3://shards/run", "retry_backoff_ms = 10\nfetch_retries = 2");
    let cfg = config.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_labeler");
    let run =
        |args: &[&str]| Command::new(bin).args(args).envs(s3_env(proxy.port)).env("MUST_LOG", "warn").output().unwrap();
    assert!(run(&["plan", "--config", cfg]).status.success());
    *proxy.state.forbid.lock().unwrap() = Some("photos/000005.jpg".into());
    let out = run(&["run", "--config", cfg, "--shard", "0", "--num-shards", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 403 must fail the attempt: {stderr}");
    assert!(stderr.contains("000005.jpg") && stderr.contains("nothing was committed"), "{stderr}");
    assert_eq!(proxy.state.faults.load(std::sync::atomic::Ordering::SeqCst), 3, "tried 1 + 2 retries");
    assert_eq!(committed_manifest_count(moto_port), 0, "nothing may be committed");
    // Access restored: the re-run commits the whole shard.
    *proxy.state.forbid.lock().unwrap() = None;
    let out = run(&["run", "--config", cfg, "--shard", "0", "--num-shards", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(committed_manifest_count(moto_port), 1);
}
