//! Loader throughput: read + decode + augment + collate, in samples per second of wall time and per
//! CPU-second (the honest "per core" figure: it charges the reader thread and Parquet decoding too).
//!
//! Shards are rendered from the synthetic `world` (JPEG images, all four tasks labelled at full image
//! resolution, as the labeler writes them) and committed once under `$TRAIN_BENCH_DIR` (default
//! `out/bench`) as `train-shards-128` (128×96 JPEGs) and `train-shards-640` (640×480 JPEGs), so that the
//! PyTorch baseline (`tools/bench/loader_pytorch.py`) reads the very same Parquet. They are rewritten only
//! when absent. Crops are 128 px and 640 px respectively, with the default augmentation (scale jitter
//! [0.5, 2], crop/pad, flip).
//!
//! Rows: one worker, the default worker count (= cores), and one worker reading only the cls and det
//! columns (how much of the cost is the full-resolution mask and depth). Results are printed as a table
//! and written to `$TRAIN_BENCH_DIR/train-loader-rust.json` for `tools/bench/train_table.py`.
//! `LOADER_BENCH_SECONDS` sets the measuring time per row (default 6).
//!
//! Last, batch mixing: the 128 px images again as one output root of four labeler datasets written
//! sorted (like the demo's pool and supervised sets, `train-shards-128-mixed`), read with
//! `interleave_datasets` off and on: the rate (interleaving must not cost), and the mean total-variation
//! distance between each batch's dataset histogram and the union's proportions.
#![allow(clippy::print_stdout)]

#[path = "../tests/data_support/mod.rs"]
mod data_support;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use data_support::*;
use image::codecs::jpeg::JpegEncoder;
use schemas::{ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ImageRecord, LabelSource, SegLabel};
use serde_json::json;
use trainer::data::{Loader, NumClasses, SamplerState, Task};
use world::{render, Split, WorldConfig, OBJECT_CLASSES, SCENE_CLASSES, SEG_CLASSES};

/// The two settings: name, source image size, crop, images, batch size.
const SETTINGS: [(&str, u32, u32, usize, u64, usize); 2] =
    [("128", 128, 96, 128, 1024, 32), ("640", 640, 480, 640, 256, 8)];
/// Rows per Parquet row group and shards per setting.
const ROW_GROUP_ROWS: usize = 32;
const SHARDS: u64 = 4;

fn record(cfg: &WorldConfig, index: u64) -> ImageRecord {
    let scene = render(cfg, Split::Pool, index);
    let (w, h) = (scene.width(), scene.height());
    let mut r = ImageRecord::new(format!("{index:06}"), "world", format!("world://pool/{index:06}.jpg"), w, h);
    let mut bytes = Cursor::new(Vec::new());
    scene.image.write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, scene.jpeg_quality)).unwrap();
    r.image = Some(bytes.into_inner());
    r.image_format = Some("jpeg".into());
    let mut probs = vec![0.0; SCENE_CLASSES.len()];
    probs[usize::from(scene.scene_class)] = 1.0;
    r.cls = Some(ClsLabel { source: LabelSource::Supervised, probs });
    r.det = Some(DetLabel {
        source: LabelSource::pseudo("det"),
        boxes: scene
            .boxes
            .iter()
            .map(|b| DetBox { x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1, class_id: u16::from(b.class_id), score: 0.9 })
            .collect(),
    });
    r.seg = Some(SegLabel {
        source: LabelSource::pseudo("seg"),
        height: h as u16,
        width: w as u16,
        mask: scene.seg.clone(),
    });
    r.depth = Some(DepthLabel {
        source: LabelSource::pseudo("depth"),
        kind: DepthKind::Metric,
        height: h as u16,
        width: w as u16,
        values: scene.depth.clone(),
    });
    r
}

/// Commit the shards of a setting under `root` unless they are there. Written to a sibling directory
/// and renamed, so an interrupted run never leaves a half-written set that would be taken as complete.
/// The labeler datasets of the mixed set and their shares of its images.
const MIXED: [(&str, u64); 4] = [("pool", 8), ("cls", 4), ("det", 2), ("seg", 2)];

fn ensure_shards(root: &Path, w: u32, h: u32, n: u64) -> (String, usize) {
    ensure_shards_of(root, w, h, n, false)
}

/// Writes the set once; with `mixed`, records are split into the `MIXED` datasets in that order.
fn ensure_shards_of(root: &Path, w: u32, h: u32, n: u64, mixed: bool) -> (String, usize) {
    let bytes_of = |dir: &Path| -> usize {
        let files = walk(dir);
        let parquet = files.iter().filter(|p| p.extension().is_some_and(|e| e == "parquet"));
        parquet.map(|p| p.metadata().unwrap().len() as usize).sum()
    };
    if root.join("manifests").is_dir() {
        return (root.to_str().unwrap().to_owned(), bytes_of(root));
    }
    let tmp = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let world = WorldConfig::try_new(5, w, h).unwrap();
    let parts: u64 = MIXED.iter().map(|m| m.1).sum();
    let records: Vec<ImageRecord> = (0..n)
        .map(|i| {
            let mut r = record(&world, i);
            if mixed {
                let slot = i * parts / n;
                let mut acc = 0;
                let name = MIXED.iter().find(|m| {
                    acc += m.1;
                    slot < acc
                });
                let name = name.map_or("pool", |m| m.0);
                r.dataset = name.to_owned();
                r.key = format!("{name}-{}", r.key);
            }
            r
        })
        .collect();
    let loc = shards::open(tmp.to_str().unwrap()).unwrap();
    // The labeler's encodings and compression, with smaller row groups than its default so that even
    // the 640 px set spans several shuffle windows.
    let props = shards::encoding::record_writer_properties()
        .into_builder()
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    runtime().block_on(async {
        for (s, chunk) in records.chunks((records.len() as u64).div_ceil(SHARDS) as usize).enumerate() {
            let batch = schemas::records_to_batch(chunk).unwrap();
            let bytes =
                shards::encode_parquet(std::slice::from_ref(&batch), batch.schema(), props.clone(), "bench").unwrap();
            commit_bytes(&loc, s as u64, SHARDS, bytes, chunk.len() as u64).await;
        }
    });
    std::fs::rename(&tmp, root).unwrap();
    (root.to_str().unwrap().to_owned(), bytes_of(root))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// CPU seconds used by this process so far (all threads), from `/proc/self/stat` (ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

struct Rate {
    wall: f64,
    per_cpu: f64,
    cpu_util: f64,
}

fn measure(path: &str, tasks: Vec<Task>, size: usize, batch: usize, workers: usize, seconds: f64) -> Rate {
    measure_with(path, tasks, size, batch, workers, seconds, true).0
}

/// The rate, and the mean total-variation distance of each batch's dataset histogram (key prefixes of
/// the `MIXED` datasets) from their shares.
fn measure_with(
    path: &str,
    tasks: Vec<Task>,
    size: usize,
    batch: usize,
    workers: usize,
    seconds: f64,
    interleave: bool,
) -> (Rate, f64) {
    let classes = NumClasses { cls: SCENE_CLASSES.len(), det: OBJECT_CLASSES.len(), seg: SEG_CLASSES.len() };
    let mut cfg = trainer::data::DataConfig::new(vec![spec("world", path, tasks)], size, batch, classes);
    cfg.workers = workers;
    cfg.prefetch = 2 * workers;
    cfg.seed = 1;
    cfg.interleave_datasets = interleave;
    let mut loader = Loader::new(cfg, SamplerState::default()).unwrap();
    for _ in 0..3 {
        loader.next_batch().unwrap();
    }
    let parts: u64 = MIXED.iter().map(|m| m.1).sum();
    let (mut tv_sum, mut batches) = (0.0, 0usize);
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let mut samples = 0usize;
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        let b = loader.next_batch().unwrap();
        samples += b.size;
        let tv: f64 = MIXED
            .iter()
            .map(|(name, share)| {
                let n = b.keys.iter().filter(|(_, k)| k.starts_with(&format!("{name}-"))).count();
                (n as f64 / b.size as f64 - *share as f64 / parts as f64).abs()
            })
            .sum();
        tv_sum += tv / 2.0;
        batches += 1;
    }
    let (wall, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    // Stop the loader before the next row so its prefetching does not overlap the next measurement.
    drop(loader);
    let rate = Rate { wall: samples as f64 / wall, per_cpu: samples as f64 / cpu.max(1e-3), cpu_util: cpu / wall };
    (rate, tv_sum / batches.max(1) as f64)
}

fn main() {
    let seconds: f64 = std::env::var("LOADER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6.0);
    let out_dir = std::env::var("TRAIN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/bench"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut rows = Vec::new();
    println!("| setting | workers | samples/s (wall) | CPU cores busy | samples per CPU-second |");
    println!("|---|---|---|---|---|");
    for (name, w, h, crop, n, batch) in SETTINGS {
        let (path, bytes) = ensure_shards(&out_dir.join(format!("train-shards-{name}")), w, h, n);
        let mut runs = vec![(1usize, all_tasks(), "all tasks")];
        if cores > 1 {
            runs.push((cores, all_tasks(), "all tasks"));
        }
        runs.push((1, vec![Task::Cls, Task::Det], "cls+det only"));
        for (workers, tasks, what) in runs {
            let r = measure(&path, tasks, crop, batch, workers, seconds);
            println!(
                "| {crop} px crop, {w}×{h} JPEG, {what} | {workers} | {:.0} | {:.2} | {:.0} |",
                r.wall, r.cpu_util, r.per_cpu
            );
            rows.push(json!({
                "setting": name, "crop": crop, "source": format!("{w}x{h}"), "images": n,
                "parquet_bytes_per_image": bytes / n as usize, "batch": batch, "tasks": what, "workers": workers,
                "samples_per_s": r.wall, "cpu_util": r.cpu_util, "samples_per_cpu_s": r.per_cpu,
            }));
        }
    }
    println!("({cores} cores; the reader thread and Parquet decoding run next to the workers and are charged)");

    // Batch mixing over one root of four labeler datasets written sorted: interleaving off, on, off, on
    // (alternating, so load drifts hit both), 1 worker, 128 px.
    let (name, w, h, crop, n, batch) = SETTINGS[0];
    let (path, _) = ensure_shards_of(&out_dir.join(format!("train-shards-{name}-mixed")), w, h, n, true);
    println!(
        "\n| interleave_datasets | samples/s (wall) | samples per CPU-second | mean TV of a batch from the union |"
    );
    println!("|---|---|---|---|");
    let mut mixing = Vec::new();
    for interleave in [false, true, false, true] {
        let (r, tv) = measure_with(&path, all_tasks(), crop, batch, 1, seconds, interleave);
        println!("| {interleave} | {:.0} | {:.0} | {tv:.3} |", r.wall, r.per_cpu);
        mixing.push(json!({"interleave": interleave, "samples_per_s": r.wall, "samples_per_cpu_s": r.per_cpu, "mean_tv": tv, "batch": batch}));
    }
    let file = out_dir.join("train-loader-rust.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&json!({"cores": cores, "rows": rows, "mixing": mixing})).unwrap())
        .unwrap();
}
