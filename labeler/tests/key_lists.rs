//! Plans from key lists. A dataset planned from a key list that names the files a listing finds freezes
//! the same manifest (byte for byte when the list has the sizes: CSV with `size`, S3 Inventory; the same
//! keys in the same order from a text list, whose sizes are unknown); a packed Parquet dataset planned from
//! a list of its files gets the same row groups; and the external sort of `labeler plan --sort-run-keys`
//! freezes the bytes the in-memory sort does. The extension filter applies to listed and named keys alike.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use labeler::config::LabelConfig;
use labeler::pipeline::{self, PlanOptions};
use shards::inputs::{self, InputEntry, InputIndex};

/// Image files (not real images: planning opens nothing) and one file the extension filter drops.
const FILES: &[(&str, usize)] = &[
    ("a.jpg", 10),
    ("b c.png", 20),
    ("sub dir/é #1.jpg", 30),
    ("sub dir/z.JPEG", 40),
    ("plus+sign.jpg", 50),
    ("notes.txt", 5),
];

fn images(dir: &Path) -> PathBuf {
    let root = dir.join("images");
    for (name, size) in FILES {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![0u8; *size]).unwrap();
    }
    root
}

/// A config under `dir` with one dataset at `location` and `extra` TOML lines, output under `dir/<out>`.
fn config(dir: &Path, out: &str, location: &Path, extra: &str) -> LabelConfig {
    let teachers = workspace().join("teachers/demo.toml");
    let file = dir.join(format!("{out}.toml"));
    std::fs::write(
        &file,
        format!(
            "teachers = [{:?}]\noutput = {:?}\n\n[[dataset]]\nname = \"d\"\nlocation = {:?}\n{extra}\n",
            teachers.to_str().unwrap(),
            dir.join(out).to_str().unwrap(),
            location.to_str().unwrap()
        ),
    )
    .unwrap();
    LabelConfig::load(&file, None).unwrap()
}

/// Every entry of a frozen manifest.
fn entries(output: &str, index: &InputIndex) -> Vec<InputEntry> {
    let out = shards::open(output).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(inputs::read_shard(&out, index, 0, 1)).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_key_list_plans_what_a_listing_plans() {
    let dir = tempfile::tempdir().unwrap();
    let root = images(dir.path());
    let listed_cfg = config(dir.path(), "listed", &root, "");
    let listed = pipeline::plan(&listed_cfg).unwrap();
    assert_eq!(listed.total, 5, "the .txt file is not an image");
    let want = entries(&listed_cfg.output, &listed);

    // CSV with sizes, in another order, with a duplicate, the filtered file and a quoted key: the same bytes.
    let csv = dir.path().join("keys.csv");
    std::fs::write(
        &csv,
        "size,key\r\n50,plus+sign.jpg\r\n5,notes.txt\r\n10,a.jpg\r\n30,\"sub dir/é #1.jpg\"\r\n40,sub dir/z.JPEG\r\n\
         20,b c.png\r\n10,a.jpg\r\n",
    )
    .unwrap();
    let from_csv = pipeline::plan(&config(dir.path(), "csv", &root, "key_list = \"keys.csv\"")).unwrap();
    assert_eq!(from_csv, listed, "a CSV key list with sizes freezes the listing's manifest");

    // S3 Inventory (gzip CSV, URL-encoded keys, + for a space) over the same files: the same bytes.
    let report = dir.path().join("inv/dest-prefix/src-bucket/cfg");
    std::fs::create_dir_all(report.join("data")).unwrap();
    std::fs::create_dir_all(report.join("2026-01-01T01-00Z")).unwrap();
    let rows = "\"src-bucket\",\"b+c.png\",\"20\"\n\"src-bucket\",\"sub+dir%2F%C3%A9+%231.jpg\",\"30\"\n\
                \"src-bucket\",\"plus%2Bsign.jpg\",\"50\"\n\"src-bucket\",\"a.jpg\",\"10\"\n\
                \"src-bucket\",\"sub%20dir/z.JPEG\",\"40\"\n\"src-bucket\",\"notes.txt\",\"5\"\n";
    std::fs::write(report.join("data/one.csv.gz"), gzip(rows.as_bytes())).unwrap();
    std::fs::write(
        report.join("2026-01-01T01-00Z/manifest.json"),
        r#"{"sourceBucket": "src-bucket", "destinationBucket": "arn:aws:s3:::dest", "version": "2016-11-30",
            "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size",
            "files": [{"key": "dest-prefix/src-bucket/cfg/data/one.csv.gz", "size": 1, "MD5checksum": "x"}]}"#,
    )
    .unwrap();
    let inventory = format!("key_list = {:?}", report.join("2026-01-01T01-00Z/manifest.json").to_str().unwrap());
    let from_inventory = pipeline::plan(&config(dir.path(), "inventory", &root, &inventory)).unwrap();
    assert_eq!(from_inventory, listed, "an S3 Inventory over the same objects freezes the listing's manifest");

    // Text (gzip), sizes unknown: the same keys in the same order, sizes 0.
    std::fs::write(
        dir.path().join("keys.txt.gz"),
        gzip("sub dir/z.JPEG\n\na.jpg\nb c.png\nsub dir/é #1.jpg\r\nplus+sign.jpg\nnotes.txt".as_bytes()),
    )
    .unwrap();
    let text_cfg = config(dir.path(), "text", &root, "key_list = \"keys.txt.gz\"");
    let from_text = entries(&text_cfg.output, &pipeline::plan(&text_cfg).unwrap());
    let keys = |e: &[InputEntry]| e.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&from_text), keys(&want));
    assert!(from_text.iter().all(|e| e.size == 0));
}

#[test]
fn a_malformed_key_list_names_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = images(dir.path());
    std::fs::write(dir.path().join("keys.csv"), "key,size\na.jpg,10\nb c.png,twenty\n").unwrap();
    let cfg = config(dir.path(), "bad", &root, "key_list = \"keys.csv\"");
    let err = pipeline::plan(&cfg).unwrap_err().to_string();
    let file = dir.path().join("keys.csv");
    assert!(err.contains(&format!("{}: line 3: size \"twenty\" is not a number", file.display())), "{err}");

    std::fs::write(dir.path().join("keys.csv"), "name,size\na.jpg,10\n").unwrap();
    let err = pipeline::plan(&cfg).unwrap_err().to_string();
    assert!(err.contains("keys.csv: line 1: the header row has no `key` column"), "{err}");

    // Keys that name no image: the message says the key list named nothing, not that the location is empty.
    std::fs::write(dir.path().join("keys.txt"), "notes.txt\n").unwrap();
    let cfg = config(dir.path(), "none", &root, "key_list = \"keys.txt\"");
    let err = pipeline::plan(&cfg).unwrap_err().to_string();
    assert!(err.contains("key list") && err.contains("found 1 .txt"), "{err}");
}

#[test]
fn a_parquet_dataset_from_a_key_list_is_planned_over_its_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let parquet = workspace().join("labeler/tests/fixtures/img2dataset/parquet");
    let listed = pipeline::plan(&config(dir.path(), "listed", &parquet, "format = \"parquet\"")).unwrap();
    assert!(listed.total >= 1);
    // The text list has no sizes: each Parquet file is sized by a HEAD request, so the manifest is the same.
    std::fs::write(dir.path().join("files.txt"), "00000.parquet\n00000_stats.json\n").unwrap();
    let from_list =
        pipeline::plan(&config(dir.path(), "from-list", &parquet, "format = \"parquet\"\nkey_list = \"files.txt\""))
            .unwrap();
    assert_eq!(from_list, listed);
}

#[test]
fn spilled_sort_runs_freeze_the_same_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let root = images(dir.path());
    let keys: String = (0..500).map(|i| format!("k/{:03}.jpg\n", (i * 337) % 500)).collect();
    std::fs::write(dir.path().join("keys.txt"), keys).unwrap();
    let memory = pipeline::plan(&config(dir.path(), "memory", &root, "key_list = \"keys.txt\"")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let options = PlanOptions { scratch: scratch.path().to_owned(), run_entries: 7 };
    let spilled =
        pipeline::plan_with(&config(dir.path(), "spilled", &root, "key_list = \"keys.txt\""), &options).unwrap();
    assert_eq!(spilled, memory);
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "the spilled runs are deleted");

    // The binary's flags reach the sort.
    let cfg = dir.path().join("memory.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_labeler"))
        .args(["plan", "--config", cfg.to_str().unwrap(), "--output", dir.path().join("cli").to_str().unwrap()])
        .args(["--scratch", scratch.path().to_str().unwrap(), "--sort-run-keys", "3"])
        .env("MUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("planned 500 inputs in 1 part(s)") && said.contains(&memory.sha256), "{said}");
}

/// On S3 (moto on loopback): an inventory report in another bucket, read through the store, plans what a
/// listing of the dataset's prefix plans; the keys of the bucket outside the prefix are skipped.
#[test]
fn an_s3_inventory_on_s3_plans_what_listing_the_prefix_plans() {
    use common::moto::*;
    use object_store::path::Path as ObjPath;
    use object_store::{ObjectStoreExt, PutPayload};

    let (_moto, port) = start_moto();
    for bucket in ["photos", "inv"] {
        create_bucket(port, bucket);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let photos = bucket_store(port, "photos");
    let mut rows = String::new();
    for (key, size) in [("set/a b.jpg", 3usize), ("set/sub/é.png", 4), ("other/c.jpg", 5), ("set/readme.txt", 6)] {
        rt.block_on(photos.put(&ObjPath::parse(key).unwrap(), PutPayload::from(vec![1u8; size]))).unwrap();
        let encoded = key.replace(' ', "+").replace('é', "%C3%A9").replace('/', "%2F");
        rows.push_str(&format!("\"photos\",\"{encoded}\",\"{size}\",\"2026-01-01T00:00:00.000Z\"\n"));
    }
    let inv = bucket_store(port, "inv");
    let report = "reports/photos/cfg";
    rt.block_on(inv.put(&ObjPath::parse(format!("{report}/data/1.csv.gz")).unwrap(), gzip(rows.as_bytes()).into()))
        .unwrap();
    let manifest = format!(
        r#"{{"sourceBucket": "photos", "destinationBucket": "arn:aws:s3:::inv", "fileFormat": "CSV",
            "fileSchema": "Bucket, Key, Size, LastModifiedDate",
            "files": [{{"key": "{report}/data/1.csv.gz", "size": 1, "MD5checksum": ""}}]}}"#
    );
    let manifest_key = format!("{report}/2026-01-01T01-00Z/manifest.json");
    rt.block_on(inv.put(&ObjPath::parse(&manifest_key).unwrap(), PutPayload::from(manifest.into_bytes()))).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let teachers = workspace().join("teachers/demo.toml");
    let plan = |name: &str, extra: &str| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "teachers = [{:?}]\noutput = {:?}\n\n[[dataset]]\nname = \"d\"\nlocation = \"s3://photos/set\"\n{extra}\n",
                teachers.to_str().unwrap(),
                dir.path().join(name).to_str().unwrap(),
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_labeler"))
            .args(["plan", "--config", file.to_str().unwrap()])
            .envs(s3_env(port))
            .env("MUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = plan("listed", "");
    let from_inventory = plan("inventory", &format!("key_list = \"s3://inv/{manifest_key}\""));
    assert!(listed.starts_with("planned 2 inputs"), "{listed}");
    let sha = |said: &str| said.rsplit_once("sha256 ").map(|(_, s)| s.trim().to_owned()).unwrap();
    assert_eq!(sha(&from_inventory), sha(&listed), "{from_inventory}");
}
