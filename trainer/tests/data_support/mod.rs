//! Shared by the data tests and the loader benchmark: synthetic records and committed shards.
//!
//! Shards are written exactly as the labeler commits them (`schemas::records_to_batch`,
//! `shards::encode_parquet`, `ShardCommitter`), so the loader is tested against the real contract.
#![allow(dead_code)]

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::RecordBatch;
use image::{ImageFormat, Rgb, RgbImage};
use parquet::file::properties::WriterProperties;
use schemas::{ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ImageRecord, LabelSource, SegLabel, ShardManifest};
use shards::{Location, ShardCommitter, ShardId};
use trainer::data::{DataConfig, DatasetSpec, NumClasses, Task};

pub const CLASSES: NumClasses = NumClasses { cls: 4, det: 3, seg: 5 };

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A local output root in a temp dir.
pub fn local_root(dir: &std::path::Path, name: &str) -> (String, Location) {
    let path = dir.join(name);
    let s = path.to_str().unwrap().to_owned();
    let loc = shards::open(&s).unwrap();
    (s, loc)
}

/// An encoded image of `w`×`h`: a gradient with a bright rectangle over the middle.
pub fn encode_image(w: u32, h: u32, seed: u64, format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        let inside = x >= w / 4 && x < 3 * w / 4 && y >= h / 4 && y < 3 * h / 4;
        if inside {
            Rgb([240, 240, 240])
        } else {
            Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, (seed.wrapping_mul(37) % 256) as u8])
        }
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A record with every task labelled (cls supervised, the rest pseudo) and an image.
pub fn full_record(dataset: &str, key: &str, w: u32, h: u32, seed: u64) -> ImageRecord {
    let mut r = ImageRecord::new(key, dataset, format!("file:///{dataset}/{key}"), w, h);
    r.image = Some(encode_image(w, h, seed, ImageFormat::Png));
    r.image_format = Some("png".into());
    let class = (seed % 4) as usize;
    let mut probs = vec![0.0; 4];
    probs[class] = 1.0;
    r.cls = Some(ClsLabel { source: LabelSource::Supervised, probs });
    r.det = Some(DetLabel {
        source: LabelSource::pseudo("det-teacher"),
        boxes: vec![DetBox { x0: 0.25, y0: 0.25, x1: 0.75, y1: 0.75, class_id: (seed % 3) as u16, score: 0.9 }],
    });
    let (mw, mh) = ((w / 2).max(1) as u16, (h / 2).max(1) as u16);
    let mask = (0..mh)
        .flat_map(|y| {
            (0..mw).map(move |x| {
                let inside = x >= mw / 4 && x < 3 * mw / 4 && y >= mh / 4 && y < 3 * mh / 4;
                if inside {
                    2
                } else {
                    0
                }
            })
        })
        .collect();
    r.seg = Some(SegLabel { source: LabelSource::pseudo("seg-teacher"), height: mh, width: mw, mask });
    let (dw, dh) = (w.min(64) as u16, h.min(64) as u16);
    r.depth = Some(DepthLabel {
        source: LabelSource::pseudo("depth-teacher"),
        kind: DepthKind::InverseRelative,
        height: dh,
        width: dw,
        values: (0..u32::from(dh) * u32::from(dw)).map(|i| (i % 7) as f32 * 0.1).collect(),
    });
    r
}

/// A record with only an image (no labels).
pub fn image_only(dataset: &str, key: &str, w: u32, h: u32) -> ImageRecord {
    let mut r = ImageRecord::new(key, dataset, format!("file:///{dataset}/{key}"), w, h);
    r.image = Some(encode_image(w, h, 0, ImageFormat::Jpeg));
    r.image_format = Some("jpeg".into());
    r
}

pub fn props(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder().set_max_row_group_row_count(Some(row_group_rows)).build()
}

/// Encode `batches` into one file and commit it as shard `index` of `count`.
pub async fn commit_batches(
    root: &Location,
    index: u64,
    count: u64,
    batches: &[RecordBatch],
    row_group_rows: usize,
) -> String {
    let schema = batches[0].schema();
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let bytes = shards::encode_parquet(batches, schema, props(row_group_rows), "test shard").unwrap();
    commit_bytes(root, index, count, bytes, rows).await
}

/// Commit arbitrary bytes as the single records file of a shard; returns the file's relative path.
pub async fn commit_bytes(root: &Location, index: u64, count: u64, bytes: Vec<u8>, rows: u64) -> String {
    let mut committer = ShardCommitter::new(root.clone(), ShardId { index, count }, format!("attempt-{index}"));
    committer.put_file("records", bytes, rows).await.unwrap();
    let mut manifest = ShardManifest { input_manifest_sha256: "0".repeat(64), ..Default::default() };
    manifest.counts.labelled_rows = rows;
    match committer.commit(manifest).await.unwrap() {
        shards::CommitOutcome::Committed(m) => m.files[0].path.clone(),
        other => panic!("not committed: {other:?}"),
    }
}

/// Write `records` as shard `index` of `count` (row groups of `row_group_rows`).
pub async fn write_shard(
    root: &Location,
    index: u64,
    count: u64,
    records: &[ImageRecord],
    row_group_rows: usize,
) -> String {
    let batch = schemas::records_to_batch(records).unwrap();
    commit_batches(root, index, count, &[batch], row_group_rows).await
}

/// Write `n` full records for `dataset` in `shards` shards; keys are `{dataset}-{i:04}`.
pub async fn write_dataset(
    root: &Location,
    dataset: &str,
    n: usize,
    shards: usize,
    w: u32,
    h: u32,
    row_group_rows: usize,
) {
    let per = n.div_ceil(shards);
    for s in 0..shards {
        let records: Vec<ImageRecord> = (s * per..((s + 1) * per).min(n))
            .map(|i| full_record(dataset, &format!("{dataset}-{i:04}"), w, h, i as u64))
            .collect();
        if !records.is_empty() {
            write_shard(root, s as u64, shards as u64, &records, row_group_rows).await;
        }
    }
}

pub fn all_tasks() -> Vec<Task> {
    Task::ALL.to_vec()
}

pub fn spec(name: &str, location: &str, tasks: Vec<Task>) -> DatasetSpec {
    DatasetSpec { name: name.into(), location: location.into(), tasks }
}

pub fn config(datasets: Vec<DatasetSpec>, image_size: usize, batch_size: usize) -> DataConfig {
    let mut cfg = DataConfig::new(datasets, image_size, batch_size, CLASSES);
    cfg.workers = 2;
    cfg.prefetch = 2;
    cfg.seed = 11;
    cfg
}

/// Drop a column from a batch (and its schema), keeping the schema metadata.
pub fn without_column(batch: &RecordBatch, name: &str) -> RecordBatch {
    let i = batch.schema().index_of(name).unwrap();
    let mut b = batch.clone();
    b.remove_column(i);
    b
}

/// The same batch under a schema with different metadata.
pub fn with_metadata(batch: &RecordBatch, key: &str, value: &str) -> RecordBatch {
    let mut meta = batch.schema().metadata().clone();
    meta.insert(key.to_owned(), value.to_owned());
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
    RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap()
}

/// Two datasets of full records under `dir`, as the training-run tests use them: `a` (40 images of
/// 64×48 in 2 shards) and `b` (24 of 48×64 in 1 shard), row groups of 8; returns their locations.
pub fn write_two_datasets(dir: &std::path::Path) -> (String, String) {
    let rt = runtime();
    let (a, loc_a) = local_root(dir, "a");
    let (b, loc_b) = local_root(dir, "b");
    rt.block_on(async {
        write_dataset(&loc_a, "a", 40, 2, 64, 48, 8).await;
        write_dataset(&loc_b, "b", 24, 1, 48, 64, 8).await;
    });
    (a, b)
}

/// Every tensor of the newest checkpoint of `run`, by name, as f32 values.
pub fn checkpoint_tensors(run: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let loaded = trainer::checkpoint::load(run).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = loaded
        .model
        .into_iter()
        .map(|(n, t)| (n, Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
