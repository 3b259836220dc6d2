//! The labeler against a real S3-compatible server on loopback: moto's server from the project venv
//! (`make setup`), started and stopped by this test. Images are read from a bucket, shards are written
//! to a bucket with S3 conditional puts (If-None-Match), and a re-run is a no-op. Supervised labels come from
//! the bucket too: a class CSV read at the start and a PNG mask per image fetched with the image.

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
    assert!(status.contains("2 committed shard(s): 24 labelled rows, 0 error rows"), "{status}");

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
}
