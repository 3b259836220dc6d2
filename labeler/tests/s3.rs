//! The labeler against a real S3-compatible server on loopback: moto's server from the project venv
//! (`make setup`), started and stopped by this test. Images are read from a bucket, shards are written
//! to a bucket with S3 conditional puts (If-None-Match), and a re-run is a no-op.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use world::SplitCounts;

struct Moto(Child);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> std::path::PathBuf {
    std::env::var_os("MUST_PYTHON").map(Into::into).unwrap_or_else(|| workspace().join(".venv/bin/python"))
}

fn start_moto() -> (Moto, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let py = python();
    assert!(py.exists(), "{} is missing: run `make setup`", py.display());
    let child = Command::new(&py)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (moto, port)
}

fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {reply}");
}

fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
    ]
}

fn bucket_store(port: u16, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()
            .unwrap(),
    )
}

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
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "s3://shards/run1", &[("pool", "s3://images/photos".into(), None)], "");
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
                assert!(recs.iter().all(|r| r.source_uri.starts_with("s3://images/photos/") && r.cls.is_some()));
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
