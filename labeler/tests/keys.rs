//! Any name the store can hold is a key: one good JPEG copied under names with every character
//! `object_store` would percent-encode, non-ASCII letters, spaces, nested folders with spaces and names
//! that already look percent-encoded is planned and labelled, on local disk and on S3 (moto on loopback),
//! and every copy ends as a labelled row whose `key` is the name it was given, with no error rows.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::moto::*;
use common::*;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use world::SplitCounts;

/// Every name is held as is by both local disk (Linux) and S3, so none is skipped on either. Names that
/// neither `object_store` nor this corpus covers: ASCII control characters, `.`/`..` parts and empty
/// parts (`a//b.jpg`), which `object_store` cannot represent at all; on local disk also a name ending in
/// `#` and digits only, which `LocalFileSystem` keeps for its own in-progress uploads.
const NAMES: &[&str] = &[
    "plain.jpg",
    "with space.jpg",
    " leading and trailing space .jpg",
    "per%cent.jpg",
    "a%20b.jpg",
    "%2F.jpg",
    "%25.jpg",
    "%zz%.jpg",
    "hash#1.jpg",
    "question?mark.jpg",
    "star*.jpg",
    "[brackets].jpg",
    "caret^.jpg",
    "pipe|.jpg",
    "tilde~.jpg",
    "back\\slash.jpg",
    "quotes\"'`.jpg",
    "{curly}<angle>.jpg",
    "plus+equals=amp&semi;.jpg",
    "colon:at@comma,.jpg",
    "é.jpg",
    "漢字.jpg",
    "emoji 📷.jpg",
    "UPPER.JPG",
    "folder with spaces/sub folder/x y.jpg",
    "nested/é dir/#?%.jpg",
    "nested/漢 字/[1] ~^|.jpeg",
];

fn run(bin: &str, args: &[&str], env: &[(&'static str, String)]) -> String {
    let out = Command::new(bin).args(args).envs(env.iter().cloned()).env("MUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "labeler {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Plan and label `location` into `output` with one shard, then check its rows.
fn label_and_check(
    config_dir: &Path,
    location: &str,
    output: &str,
    env: &[(&'static str, String)],
    out: &shards::Location,
) {
    let config = write_config(config_dir, output, &[("odd", location.to_owned(), None)], "");
    let cfg = config.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_labeler");
    let planned = run(bin, &["plan", "--config", cfg], env);
    assert!(planned.contains(&format!("planned {} inputs", NAMES.len())), "{planned}");
    let said = run(bin, &["run", "--config", cfg, "--shard", "0", "--num-shards", "1"], env);
    assert!(said.contains("committed"), "{said}");

    let errors = errors_at(out);
    assert!(errors.is_empty(), "{errors:#?}");
    let records = records_at(out);
    let keys: BTreeSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, NAMES.iter().copied().collect(), "labelled keys differ from the names given");
    assert_eq!(records.len(), NAMES.len());
    // Every row is the same image, so every row has the same labels (up to batching noise).
    let first = &records[0].cls.as_ref().expect("a classification label").probs;
    for r in &records {
        let probs = &r.cls.as_ref().unwrap_or_else(|| panic!("{} has no classification label", r.key)).probs;
        assert!(probs.iter().zip(first).all(|(a, b)| (a - b).abs() < 1e-3), "{}: {probs:?} vs {first:?}", r.key);
        assert!(r.source_uri.ends_with(&format!("/{}", r.key)), "{} from {}", r.key, r.source_uri);
    }
}

fn good_jpeg() -> Vec<u8> {
    let world = small_world(11, SplitCounts { cls: 8, det: 8, seg: 8, depth: 8, pool: 24, eval: 0 });
    std::fs::read(world.join("pool/images/000000.jpg")).unwrap()
}

#[test]
fn odd_names_round_trip_on_local_disk() {
    let jpeg = good_jpeg();
    let dir = tempfile::tempdir().unwrap();
    // The dataset's own folder has a space, a `#` and a non-ASCII letter.
    let images = dir.path().join("my images #1/é");
    for name in NAMES {
        let file = images.join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, &jpeg).unwrap();
    }
    let output = dir.path().join("out").to_string_lossy().into_owned();
    let out = shards::open(&output).unwrap();
    label_and_check(dir.path(), images.to_str().unwrap(), &output, &[], &out);
}

#[test]
fn odd_names_round_trip_on_s3() {
    let jpeg = good_jpeg();
    let (_moto, port) = start_moto();
    create_bucket(port, "images");
    create_bucket(port, "shards");
    let images = bucket_store(port, "images");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for name in NAMES {
        // The object's name exactly as given (`Path::parse` keeps it; `Path::from` would encode it).
        let key = ObjPath::parse(format!("my photos/{name}")).unwrap();
        rt.block_on(images.put(&key, PutPayload::from(jpeg.clone()))).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = shards::Location::from_store(bucket_store(port, "shards"), "keys", "s3://shards/keys");
    label_and_check(dir.path(), "s3://images/my photos", "s3://shards/keys", &s3_env(port), &out);
}
