//! No secret reaches a log line, a row or a manifest: the labeler runs against S3 (moto on loopback) with
//! a secret as its AWS secret key, in an unrelated variable, and in the userinfo and query string of its
//! locations, at debug log level, with one image deleted after planning so a fetch fails and an error row
//! is written; then everything it printed and everything in the output bucket is searched for the secret.

mod common;

use std::process::Command;

use common::moto::*;
use common::*;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use world::SplitCounts;

const SECRET: &str = "Sekr1t-4b7e-DO-NOT-LEAK";

#[test]
fn secrets_never_reach_logs_rows_or_manifests() {
    let (_moto, port) = start_moto();
    create_bucket(port, "images");
    create_bucket(port, "shards");
    let world = small_world(11, SplitCounts { cls: 8, det: 8, seg: 8, depth: 8, pool: 24, eval: 0 });
    let images = bucket_store(port, "images");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for name in ["000000.jpg", "000001.jpg", "000002.jpg", "000003.png"] {
        let bytes = std::fs::read(world.join("pool/images").join(name)).unwrap();
        rt.block_on(images.put(&ObjPath::from(format!("photos/{name}")), PutPayload::from(bytes))).unwrap();
    }

    // moto takes any credentials, so the secret key is really used to sign every request.
    let mut env = s3_env(port);
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()));
    env.push(("TOKEN", SECRET.to_owned()));
    env.push(("MUST_LOG", "debug".to_owned()));
    let images_location = format!("s3://AKIDEXAMPLE:{SECRET}@images/photos?X-Amz-Security-Token={SECRET}");
    let output = format!("s3://shards/run?sig={SECRET}#{SECRET}");
    let dir = tempfile::tempdir().unwrap();
    // One of the four images is deleted below on purpose: allow that many error rows.
    let config = write_config(dir.path(), &output, &[("pool", images_location, None)], "max_error_fraction = 0.5\n");
    let cfg = config.to_str().unwrap();

    let bin = env!("CARGO_BIN_EXE_labeler");
    let mut printed = String::new();
    let mut run = |args: &[&str], ok: bool| {
        let out = Command::new(bin).args(args).envs(env.iter().cloned()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.success(), ok, "labeler {args:?}: {text}");
        printed.push_str(&text);
        text
    };
    let planned = run(&["plan", "--config", cfg], true);
    assert!(planned.contains("planned 4 inputs") && planned.contains("s3://shards/run/inputs"), "{planned}");
    rt.block_on(images.delete(&ObjPath::from("photos/000001.jpg"))).unwrap();
    let said = run(&["run", "--config", cfg, "--shard", "0", "--num-shards", "1"], true);
    assert!(said.contains("3 labelled, 1 errors"), "{said}");
    let status = run(&["status", "--output", &output], true);
    assert!(status.contains("committed inputs: 4 -> 3 labelled rows + 1 error rows"), "{status}");
    // Locations that cannot be opened, one of them quoted back in the store's own message.
    let failed = run(&["status", "--output", &format!("nosuchscheme://user:{SECRET}@x/y?q={SECRET}")], false);
    assert!(failed.contains("nosuchscheme://x/y"), "{failed}");
    run(&["status", "--output", &format!("az://user:{SECRET}@container/p?sig={SECRET}")], false);
    // The debug log really was on (so it was searched too).
    assert!(printed.contains("DEBUG"), "{printed}");
    assert!(!printed.contains(SECRET), "the secret was printed:\n{printed}");

    let out = shards::Location::from_store(bucket_store(port, "shards"), "run", "s3://shards/run");
    let errors = errors_at(&out);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!((e.key.as_str(), e.reason.as_str()), ("000001.jpg", "not_found"), "{e:?}");
    assert_eq!(e.source_uri, "s3://images/photos/000001.jpg");
    // A short kind and status, not the server's XML or the request URL.
    assert_eq!(e.detail, "not found (HTTP 404)");
    let records = records_at(&out);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.source_uri, format!("s3://images/photos/{}", r.key));
    }

    // Every byte in the output bucket: input manifest, shard manifest, Parquet files and their footers.
    let shards_store = bucket_store(port, "shards");
    let objects: Vec<_> = rt.block_on(shards_store.list(None).try_collect::<Vec<_>>()).unwrap();
    assert!(objects.iter().any(|m| m.location.as_ref().starts_with("run/manifests/")), "{objects:?}");
    for meta in objects {
        let bytes = rt.block_on(async { shards_store.get(&meta.location).await.unwrap().bytes().await.unwrap() });
        let found = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
        assert!(!found, "{} holds the secret", meta.location);
    }
}
