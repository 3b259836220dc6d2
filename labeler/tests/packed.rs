//! Packed inputs end to end. img2dataset's WebDataset and Parquet layouts (the committed fixtures written
//! by tools/interop/make_img2dataset_fixtures.py) are labelled by the labeler binary on local disk and on
//! a real S3 server on loopback, with the same labels as the same images given as loose files. Damaged
//! containers still account for every input: the samples before the damage are labelled, and the damage
//! is an error row naming the container and the member or row. A location holding only tars, labelled as
//! loose files, is a plan error that names the format to use.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use common::moto::*;
use common::*;
use labeler::config::LabelConfig;
use labeler::pipeline::{self, NoProgress, ShardOutcome};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use schemas::{ErrorRecord, ImageRecord, Origin, Stage, Task};
use shards::ShardId;
use world::SplitCounts;

fn fixtures() -> PathBuf {
    workspace().join("labeler/tests/fixtures/img2dataset")
}

/// The sample keys of the fixture tar, in order.
const SAMPLES: [&str; 4] = ["000000000", "000000001", "000000003", "000000004"];

/// The fixture tar's JPEGs, written as loose files `<sample key>.jpg` under `dir`.
fn loose_copy(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let file = std::fs::File::open(fixtures().join("webdataset/00000.tar")).unwrap();
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".jpg") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// A label config under `dir` for `datasets` (name, location, extra TOML lines) with the demo teachers.
fn packed_config(dir: &Path, output: &str, datasets: &[(&str, String, &str)], run_extra: &str) -> PathBuf {
    let teachers = workspace().join("teachers/demo.toml");
    let mut text = format!(
        "teachers = [{:?}]\noutput = {output:?}\n\n[run]\nchunk_images = 3\nrow_group_rows = 4\n{run_extra}\n",
        teachers.to_str().unwrap()
    );
    for (name, location, extra) in datasets {
        text.push_str(&format!("\n[[dataset]]\nname = {name:?}\nlocation = {location:?}\n{extra}\n"));
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("label.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn labeler(args: &[&str], env: &[(&'static str, String)]) -> Output {
    let bin = env!("CARGO_BIN_EXE_labeler");
    Command::new(bin).args(args).envs(env.iter().cloned()).env("MUST_LOG", "warn").output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `s3://…/00000.tar#offset=1536&length=2416` → (1536, 2416).
fn member_range(uri: &str) -> (usize, usize) {
    let (_, fragment) = uri.rsplit_once("#offset=").unwrap_or_else(|| panic!("no member offset in {uri}"));
    let (offset, length) = fragment.split_once("&length=").unwrap();
    (offset.parse().unwrap(), length.parse().unwrap())
}

/// Check the rows of labelling `loose`, `web` and `pq` (the fixtures): keys, counts, byte locations, the
/// one failed download, and labels equal to the loose files' labels. `uri_prefix` is where the fixtures are.
fn check_img2dataset_rows(records: &[ImageRecord], errors: &[ErrorRecord], uri_prefix: &str) {
    let mut by_dataset: BTreeMap<&str, BTreeMap<&str, &ImageRecord>> = BTreeMap::new();
    for r in records {
        by_dataset.entry(&r.dataset).or_default().insert(&r.key, r);
    }
    let keys = |d: &str| by_dataset.get(d).map(|m| m.keys().map(|k| k.to_string()).collect::<Vec<_>>());
    let want = |f: &dyn Fn(&str) -> String| Some(SAMPLES.iter().map(|s| f(s)).collect::<Vec<_>>());
    assert_eq!(keys("loose"), want(&|s| format!("{s}.jpg")));
    assert_eq!(keys("web"), want(&|s| format!("00000.tar/{s}")));
    assert_eq!(keys("pq"), want(&|s| format!("00000.parquet/{s}")));
    let tar = std::fs::read(fixtures().join("webdataset/00000.tar")).unwrap();
    for s in SAMPLES {
        let loose = by_dataset["loose"][format!("{s}.jpg").as_str()];
        let web = by_dataset["web"][format!("00000.tar/{s}").as_str()];
        let pq = by_dataset["pq"][format!("00000.parquet/{s}").as_str()];
        // The fragment locates the member's bytes in the tar: the bytes stored, the loose file's bytes.
        assert!(
            web.source_uri.starts_with(&format!("{uri_prefix}/webdataset/00000.tar#offset=")),
            "{}",
            web.source_uri
        );
        let (offset, length) = member_range(&web.source_uri);
        assert_eq!(Some(&tar[offset..offset + length]), loose.image.as_deref(), "{}", web.source_uri);
        let row: u64 = s.parse().unwrap();
        assert_eq!(pq.source_uri, format!("{uri_prefix}/parquet/00000.parquet#row={row}"));
        for packed in [web, pq] {
            let mut same = packed.clone();
            same.key = loose.key.clone();
            same.dataset = loose.dataset.clone();
            same.source_uri = loose.source_uri.clone();
            assert_eq!(&same, loose, "{} labels differ from the loose file's", packed.key);
            assert_eq!(packed.origin(Task::Cls), Origin::Pseudo);
        }
    }
    // img2dataset keeps a failed download as a row with a null image: an error row naming file and row.
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(
        (e.dataset.as_str(), e.key.as_str(), e.stage, e.reason.as_str()),
        ("pq", "00000.parquet/000000002", Stage::Fetch, "no_image")
    );
    let file = format!("{uri_prefix}/parquet/00000.parquet");
    assert_eq!(e.source_uri, format!("{file}#row=2"));
    assert_eq!(e.detail, format!("row 2 of {file}: column `jpg` is null"));
}

fn img2dataset_datasets(loose: String, web: String, pq: String) -> Vec<(&'static str, String, &'static str)> {
    // The image column of img2dataset's Parquet is `jpg`, found without configuring it; `key` is its key.
    vec![("loose", loose, ""), ("web", web, "format = \"webdataset\""), ("pq", pq, "format = \"parquet\"")]
}

#[test]
fn img2dataset_layouts_label_like_the_same_images_as_loose_files_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose");
    loose_copy(&loose);
    let output = dir.path().join("out").to_string_lossy().into_owned();
    let at = |p: PathBuf| p.to_string_lossy().into_owned();
    let datasets = img2dataset_datasets(at(loose), at(fixtures().join("webdataset")), at(fixtures().join("parquet")));
    // One failed download in 13 inputs is over the default error limit of 5%.
    let config = packed_config(dir.path(), &output, &datasets, "max_error_fraction = 0.1");
    let cfg = config.to_str().unwrap();
    let planned = ok(labeler(&["plan", "--config", cfg], &[]));
    // 4 loose files, 1 tar and 1 Parquet row group: containers are planned, not their samples.
    assert!(planned.contains("planned 6 inputs"), "{planned}");
    let said = ok(labeler(&["run", "--config", cfg, "--shard", "0", "--num-shards", "1"], &[]));
    assert!(said.contains("13 inputs -> 12 labelled, 1 errors"), "{said}");
    // The datasets' locations as given, with their URIs as the store names them.
    let uri_prefix = shards::open(&at(fixtures())).unwrap().display;
    let records = read_records(&output);
    check_img2dataset_rows(&records, &read_errors(&output), &uri_prefix);
}

#[test]
fn img2dataset_layouts_label_from_a_bucket_like_the_same_images_as_loose_files() {
    let (_moto, port) = start_moto();
    create_bucket(port, "images");
    create_bucket(port, "shards");
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose");
    loose_copy(&loose);
    let images = bucket_store(port, "images");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut uploads = Vec::new();
    for sub in ["webdataset", "parquet"] {
        for entry in std::fs::read_dir(fixtures().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            uploads.push((format!("i2d/{sub}/{}", path.file_name().unwrap().to_str().unwrap()), path));
        }
    }
    for entry in std::fs::read_dir(&loose).unwrap() {
        let path = entry.unwrap().path();
        uploads.push((format!("loose/{}", path.file_name().unwrap().to_str().unwrap()), path));
    }
    for (key, path) in uploads {
        rt.block_on(images.put(&ObjPath::from(key), PutPayload::from(std::fs::read(&path).unwrap()))).unwrap();
    }
    let datasets = img2dataset_datasets(
        "s3://images/loose".into(),
        "s3://images/i2d/webdataset".into(),
        "s3://images/i2d/parquet".into(),
    );
    let config = packed_config(dir.path(), "s3://shards/run", &datasets, "max_error_fraction = 0.1");
    let cfg = config.to_str().unwrap();
    let env = s3_env(port);
    ok(labeler(&["plan", "--config", cfg], &env));
    // Two shards: the 6 planned entries split 3 + 3, the tar and the row group land in shard 1.
    for k in ["0", "1"] {
        ok(labeler(&["run", "--config", cfg, "--shard", k, "--num-shards", "2"], &env));
    }
    let status = ok(labeler(&["status", "--output", "s3://shards/run"], &env));
    assert!(status.contains("shards: 2 planned, 2 committed, 0 missing"), "{status}");
    // 6 plan entries (4 loose files, a tar, a row group) are 13 inputs once the containers are expanded.
    assert!(status.contains("plan: 6 inputs"), "{status}");
    assert!(status.contains("committed inputs: 13 -> 12 labelled rows + 1 error rows"), "{status}");
    let loc = shards::Location::from_store(bucket_store(port, "shards"), "run", "s3://shards/run");
    check_img2dataset_rows(&records_at(&loc), &errors_at(&loc), "s3://images/i2d");
}

#[test]
fn a_folder_of_tars_labelled_as_loose_files_is_a_plan_error_naming_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out");
    let web = fixtures().join("webdataset").to_string_lossy().into_owned();
    let config = packed_config(dir.path(), output.to_str().unwrap(), &[("web", web.clone(), "")], "");
    let out = labeler(&["plan", "--config", config.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "dataset \"web\": no images (extensions jpg, jpeg, png, gif, webp, bmp, tif, tiff) under {web}; found \
             1 .json, 1 .parquet, 1 .tar: set format = \"webdataset\""
        )),
        "{stderr}"
    );
    assert!(!output.join("inputs/index.json").exists(), "nothing may be planned");
}

/// A tar of `members` (name, bytes); `end` false leaves out the end-of-archive blocks.
fn tar_of(members: &[(String, Vec<u8>)], end: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    if end {
        bytes
    } else {
        bytes[..bytes.len() - 1024].to_vec()
    }
}

/// JPEGs of a small world's pool.
fn jpegs(n: usize) -> Vec<Vec<u8>> {
    let world = small_world(11, SplitCounts { cls: 8, det: 8, seg: 8, depth: 8, pool: 24, eval: 0 });
    let mut files: Vec<PathBuf> = std::fs::read_dir(world.join("pool/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files.iter().take(n).map(|p| std::fs::read(p).unwrap()).collect()
}

fn run_all(cfg: &LabelConfig, n: u64) {
    pipeline::plan(cfg).unwrap();
    for k in 0..n {
        let outcome = pipeline::run_shard(cfg, ShardId { index: k, count: n }, "a1", &NoProgress).unwrap();
        assert!(matches!(outcome, ShardOutcome::Committed { .. }), "{outcome:?}");
    }
}

#[test]
fn damaged_tars_keep_the_samples_before_the_damage_and_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    let img = jpegs(3);
    let sample = |key: &str, jpg: &[u8], cls: Option<&str>| {
        let mut m = vec![(format!("{key}.jpg"), jpg.to_vec()), (format!("{key}.json"), b"{}".to_vec())];
        if let Some(c) = cls {
            m.insert(0, (format!("{key}.cls"), c.as_bytes().to_vec()));
        }
        m
    };
    // a.tar: three good samples whose `.cls` holds the class (an index or a name), one without `.cls`.
    let classes =
        labeler::config::LabelConfig::load(&packed_config(dir.path(), "unused", &[("x", "x".into(), "")], ""), None)
            .unwrap()
            .teachers
            .iter()
            .find(|t| t.spec.task == labeler::spec::Task::Cls)
            .unwrap()
            .spec
            .classes
            .clone();
    let a: Vec<_> = [
        sample("s0", &img[0], Some("1")),
        sample("s1", &img[1], Some(&classes[2])),
        sample("s2", &img[2], Some("0\n")),
        sample("s3", &img[0], None),
        vec![("s4.json".to_owned(), b"{}".to_vec())],
    ]
    .concat();
    std::fs::write(web.join("a.tar"), tar_of(&a, true)).unwrap();
    // b.tar: the middle sample's image member is not an image.
    let b =
        [sample("s0", &img[0], Some("0")), sample("s1", b"not an image", Some("0")), sample("s2", &img[1], Some("0"))]
            .concat();
    std::fs::write(web.join("b.tar"), tar_of(&b, true)).unwrap();
    // c.tar: cut in the middle of the third sample's image.
    let c_members =
        [sample("s0", &img[0], Some("0")), sample("s1", &img[1], Some("0")), sample("s2", &img[2], Some("0"))].concat();
    let c = tar_of(&c_members, true);
    let s2_jpg = {
        let mut t = tar::Archive::new(c.as_slice());
        let e =
            t.entries().unwrap().map(|e| e.unwrap()).find(|e| e.path().unwrap().to_str() == Some("s2.jpg")).unwrap();
        (e.raw_file_position() + e.size() / 2) as usize
    };
    std::fs::write(web.join("c.tar"), &c[..s2_jpg]).unwrap();
    // d.tar: whole members, but cut before the end-of-archive blocks.
    let d = [sample("s0", &img[0], Some("0")), sample("s1", &img[1], Some("0"))].concat();
    std::fs::write(web.join("d.tar"), tar_of(&d, false)).unwrap();
    // e.tar: a whole tar without a single member.
    std::fs::write(web.join("e.tar"), tar_of(&[], true)).unwrap();
    // f.tar: not a tar at all.
    std::fs::write(web.join("f.tar"), b"not a tar, just text; ".repeat(40)).unwrap();

    let output = dir.path().join("out").to_string_lossy().into_owned();
    let extra = "format = \"webdataset\"\nsupervised = { classification = { member = \"cls\" } }";
    let config = packed_config(
        dir.path(),
        &output,
        &[("web", web.to_string_lossy().into_owned(), extra)],
        "max_error_fraction = 0.7",
    );
    let cfg = LabelConfig::load(&config, None).unwrap();
    // Two shards over six tars: containers, not samples, are what the plan cuts.
    run_all(&cfg, 2);

    let records = read_records(&output);
    let labelled: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        labelled,
        ["a.tar/s0", "a.tar/s1", "a.tar/s2", "b.tar/s0", "b.tar/s2", "c.tar/s0", "c.tar/s1", "d.tar/s0", "d.tar/s1"]
    );
    let class_of = |key: &str| {
        let r = records.iter().find(|r| r.key == key).unwrap();
        assert_eq!(r.origin(Task::Cls), Origin::Supervised);
        r.cls.as_ref().unwrap().probs.iter().position(|&p| p == 1.0).unwrap()
    };
    assert_eq!([class_of("a.tar/s0"), class_of("a.tar/s1"), class_of("a.tar/s2")], [1, 2, 0]);
    assert!(records.iter().all(|r| r.origin(Task::Det) == Origin::Pseudo && r.source_uri.contains(".tar#offset=")));

    let errors = read_errors(&output);
    let rows: Vec<(&str, Stage, &str)> = errors.iter().map(|e| (e.key.as_str(), e.stage, e.reason.as_str())).collect();
    assert_eq!(
        rows,
        [
            ("a.tar/s3", Stage::SupervisedLabel, "missing_label"),
            ("a.tar/s4", Stage::Fetch, "no_image"),
            ("b.tar/s1", Stage::Decode, "unsupported"),
            ("c.tar/s2", Stage::Fetch, "truncated"),
            ("d.tar", Stage::Fetch, "truncated"),
            ("e.tar", Stage::Fetch, "no_image"),
            ("f.tar", Stage::Fetch, "corrupt_container"),
        ],
        "{errors:#?}"
    );
    let uri = |tar: &str| format!("{}/{tar}", shards::open(web.to_str().unwrap()).unwrap().display);
    let detail = |key: &str| errors.iter().find(|e| e.key == key).unwrap().detail.clone();
    assert!(detail("a.tar/s3").contains(&format!("member .cls of {}", uri("a.tar"))), "{}", detail("a.tar/s3"));
    assert_eq!(
        detail("a.tar/s4"),
        format!(
            "sample \"s4\" of {} has members s4.json but none with an image extension (jpg, jpeg, png, webp)",
            uri("a.tar")
        )
    );
    assert_eq!(detail("e.tar"), format!("{} holds no sample", uri("e.tar")));
    assert!(detail("f.tar").starts_with(&format!("{}: unreadable tar header: ", uri("f.tar"))), "{}", detail("f.tar"));
    assert!(detail("b.tar/s1").starts_with(&format!("member s1.jpg of {}: ", uri("b.tar"))), "{}", detail("b.tar/s1"));
    let c_detail = detail("c.tar/s2");
    assert!(
        c_detail.starts_with(&format!("{}: member s2.jpg at byte ", uri("c.tar"))) && c_detail.contains("cut short"),
        "{c_detail}"
    );
    assert_eq!(
        detail("d.tar"),
        format!(
            "{}: ends at byte {} without the tar's end-of-archive blocks: the tar is truncated",
            uri("d.tar"),
            tar_of(&d, false).len()
        )
    );
}

/// Progress as the pipeline reports it.
#[derive(Default)]
struct Counted {
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl pipeline::Progress for Counted {
    fn start(&self, total: u64) {
        self.total.store(total, std::sync::atomic::Ordering::SeqCst);
    }
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }
    fn grow(&self, n: u64) {
        self.total.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn parquet_rows_with_null_or_broken_images_are_error_rows_naming_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hf");
    std::fs::create_dir_all(&data).unwrap();
    let img = jpegs(2);
    // Hugging Face datasets' image struct {bytes, path}; no key column, so rows are keyed by number.
    let fields =
        Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
    let mut bytes = BinaryBuilder::new();
    let mut paths = StringBuilder::new();
    let rows: [(Option<&[u8]>, bool); 5] =
        [(Some(&img[0]), true), (None, false), (None, true), (Some(b"garbage"), true), (Some(&img[1]), true)];
    for (i, (b, _)) in rows.iter().enumerate() {
        bytes.append_option(*b);
        paths.append_value(format!("img{i}.jpg"));
    }
    let valid: Vec<bool> = rows.iter().map(|(_, v)| *v).collect();
    let image = StructArray::new(
        fields.clone(),
        vec![Arc::new(bytes.finish()) as ArrayRef, Arc::new(paths.finish())],
        Some(valid.into()),
    );
    assert_eq!(image.null_count(), 1);
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Struct(fields), true),
        Field::new("label", DataType::Int64, false),
    ]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(image), Arc::new(Int64Array::from(vec![0i64; 5]))]).unwrap();
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(3)).build();
    let file = std::fs::File::create(data.join("train-00000.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let output = dir.path().join("out").to_string_lossy().into_owned();
    let config = packed_config(
        dir.path(),
        &output,
        &[("hf", data.to_string_lossy().into_owned(), "format = \"parquet\"")],
        "max_error_fraction = 0.7",
    );
    let cfg = LabelConfig::load(&config, None).unwrap();
    pipeline::plan(&cfg).unwrap();
    // Progress starts at the plan's 2 row groups and grows to the 5 rows they hold.
    let progress = Counted::default();
    let outcome = pipeline::run_shard(&cfg, ShardId { index: 0, count: 1 }, "a1", &progress).unwrap();
    assert!(matches!(outcome, ShardOutcome::Committed { .. }), "{outcome:?}");
    let counted = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((counted(&progress.total), counted(&progress.done)), (5, 5));
    let out = shards::open(&output).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(rt.block_on(shards::inputs::read_index(&out)).unwrap().total, 2, "one entry per row group");

    let file = format!("{}/train-00000.parquet", shards::open(data.to_str().unwrap()).unwrap().display);
    let records = read_records(&output);
    let got: Vec<(&str, &str)> = records.iter().map(|r| (r.key.as_str(), r.source_uri.as_str())).collect();
    let (row0, row4) = (format!("{file}#row=0"), format!("{file}#row=4"));
    assert_eq!(got, [("train-00000.parquet/0", row0.as_str()), ("train-00000.parquet/4", row4.as_str())]);
    assert_eq!(records[1].image.as_deref(), Some(img[1].as_slice()));
    let errors = read_errors(&output);
    let rows: Vec<(&str, Stage, &str, String)> =
        errors.iter().map(|e| (e.key.as_str(), e.stage, e.reason.as_str(), e.detail.clone())).collect();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert_eq!(
        rows[0],
        ("train-00000.parquet/1", Stage::Fetch, "no_image", format!("row 1 of {file}: column `image` is null"))
    );
    assert_eq!(
        rows[1],
        ("train-00000.parquet/2", Stage::Fetch, "no_image", format!("row 2 of {file}: column `image` is null"))
    );
    assert_eq!((rows[2].0, rows[2].1, rows[2].2), ("train-00000.parquet/3", Stage::Decode, "unsupported"));
    assert!(rows[2].3.starts_with(&format!("row 3 of {file}: ")), "{}", rows[2].3);
    assert_eq!(errors[2].source_uri, format!("{file}#row=3"));
}

#[test]
fn a_brace_pattern_names_the_tars_and_a_missing_one_is_a_plan_error() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    std::fs::create_dir_all(web.join("s")).unwrap();
    let img = jpegs(1);
    for name in ["00000", "00001", "extra"] {
        let members = [(format!("{name}x.jpg"), img[0].clone())];
        std::fs::write(web.join(format!("s/{name}.tar")), tar_of(&members, true)).unwrap();
    }
    let location = web.to_string_lossy().into_owned();
    let config = |out: &str, pattern: &str| {
        let extra = format!("format = \"webdataset\"\npattern = {pattern:?}");
        let file = packed_config(dir.path(), out, &[("web", location.clone(), &extra)], "");
        LabelConfig::load(&file, None).unwrap()
    };
    let output = dir.path().join("out").to_string_lossy().into_owned();
    // Only the tars the pattern names, not `extra.tar` beside them.
    run_all(&config(&output, "s/{00000..00001}.tar"), 1);
    let keys: Vec<String> = read_records(&output).into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["s/00000.tar/00000x", "s/00001.tar/00001x"]);
    let cfg = config(&dir.path().join("out2").to_string_lossy(), "s/{00000..00002}.tar");
    let err = pipeline::plan(&cfg).unwrap_err().to_string();
    let missing = format!("{location}/s/00002.tar");
    assert!(
        err.starts_with(&format!(
            "dataset \"web\": pattern \"s/{{00000..00002}}.tar\" names {missing}, which cannot be read"
        )),
        "{err}"
    );
}

/// Connections that break mid-body while a tar streams: the read resumes where it stopped (here the S3
/// client's own retry resumes it by range before the labeler's reader sees an error) and every sample is
/// labelled from the right bytes.
#[test]
fn a_tar_read_cut_off_mid_stream_is_resumed_and_labelled_whole() {
    let (_moto, moto_port) = start_moto();
    let proxy = common::proxy::FaultProxy::start(moto_port);
    create_bucket(moto_port, "images");
    create_bucket(moto_port, "shards");
    let img = jpegs(3);
    let members: Vec<(String, Vec<u8>)> =
        img.iter().enumerate().map(|(i, b)| (format!("s{i}.jpg"), b.clone())).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tar = tar_of(&members, true);
    rt.block_on(bucket_store(moto_port, "images").put(&ObjPath::from("web/00000.tar"), PutPayload::from(tar))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let datasets = [("web", "s3://images/web".to_owned(), "format = \"webdataset\"")];
    let config = packed_config(dir.path(), "s3://shards/run", &datasets, "retry_backoff_ms = 10");
    let cfg = config.to_str().unwrap();
    let env = s3_env(proxy.port);
    ok(labeler(&["plan", "--config", cfg], &env));
    // The next two reads of the tar break halfway through the body.
    *proxy.state.cut_body.lock().unwrap() = Some("/images/web/00000.tar".into());
    proxy.state.cuts_left.store(2, std::sync::atomic::Ordering::SeqCst);
    let said = ok(labeler(&["run", "--config", cfg, "--shard", "0", "--num-shards", "1"], &env));
    assert!(said.contains("3 inputs -> 3 labelled, 0 errors"), "{said}");
    assert_eq!(proxy.state.faults.load(std::sync::atomic::Ordering::SeqCst), 2, "both cuts were served");
    let loc = shards::Location::from_store(bucket_store(moto_port, "shards"), "run", "s3://shards/run");
    let records = records_at(&loc);
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["00000.tar/s0", "00000.tar/s1", "00000.tar/s2"]);
    for (r, bytes) in records.iter().zip(&img) {
        assert_eq!(r.image.as_deref(), Some(bytes.as_slice()), "{}", r.key);
    }
}
