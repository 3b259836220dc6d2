//! Loader throughput: read + decode + augment + collate, in samples per second and per worker core.
//!
//! Shards are written to a temp dir from the synthetic `world` (JPEG images, all four tasks labelled at
//! full image resolution, as the labeler writes them) through the same helpers the data tests use.
//! Two settings: 128 px crops from 128×96 images, and 640 px crops from 640×480 images.
//! `LOADER_BENCH_SECONDS` sets the measuring time per row (default 6).
#![allow(clippy::print_stdout)]

#[path = "../tests/data_support/mod.rs"]
mod data_support;

use std::io::Cursor;
use std::time::{Duration, Instant};

use data_support::*;
use image::codecs::jpeg::JpegEncoder;
use schemas::{ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ImageRecord, LabelSource, SegLabel};
use trainer::data::{Loader, NumClasses, SamplerState, Task};
use world::{render, Split, WorldConfig, OBJECT_CLASSES, SCENE_CLASSES, SEG_CLASSES};

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

struct Row {
    setting: String,
    workers: usize,
    samples_per_s: f64,
}

fn measure(path: &str, tasks: Vec<Task>, size: usize, batch: usize, workers: usize, seconds: f64) -> f64 {
    let classes = NumClasses { cls: SCENE_CLASSES.len(), det: OBJECT_CLASSES.len(), seg: SEG_CLASSES.len() };
    let mut cfg = trainer::data::DataConfig::new(vec![spec("world", path, tasks)], size, batch, classes);
    cfg.workers = workers;
    cfg.prefetch = 2 * workers;
    cfg.seed = 1;
    let mut loader = Loader::new(cfg, SamplerState::default()).unwrap();
    for _ in 0..2 {
        loader.next_batch().unwrap();
    }
    let start = Instant::now();
    let mut samples = 0usize;
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        samples += loader.next_batch().unwrap().size;
    }
    samples as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::var("LOADER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6.0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut rows = Vec::new();
    for (name, w, h, crop, n, batch) in [
        ("128 px crop, 128×96 JPEG", 128u32, 96u32, 128usize, 512u64, 32usize),
        ("640 px crop, 640×480 JPEG", 640, 480, 640, 96, 8),
    ] {
        let world = WorldConfig::try_new(5, w, h).unwrap();
        let (path, root) = local_root(dir.path(), &format!("w{w}"));
        let records: Vec<ImageRecord> = (0..n).map(|i| record(&world, i)).collect();
        let jpeg_bytes: usize = records.iter().map(|r| r.image.as_ref().unwrap().len()).sum();
        rt.block_on(async {
            for (s, chunk) in records.chunks(records.len() / 4).enumerate() {
                write_shard(&root, s as u64, 4, chunk, 32).await;
            }
        });
        println!("{name}: {n} images, mean JPEG {} KiB", jpeg_bytes / n as usize / 1024);
        let mut counts = vec![1usize];
        if cores > 1 {
            counts.push(cores);
        }
        for workers in counts {
            let rate = measure(&path, all_tasks(), crop, batch, workers, seconds);
            rows.push(Row { setting: format!("{name}, all tasks"), workers, samples_per_s: rate });
        }
        // Without the full-resolution mask and depth lists: how much of the cost is reading labels.
        let rate = measure(&path, vec![Task::Classification, Task::Detection], crop, batch, 1, seconds);
        rows.push(Row { setting: format!("{name}, cls+det only"), workers: 1, samples_per_s: rate });
    }
    println!();
    println!("| setting | workers | samples/s | samples/s per worker |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} |",
            r.setting,
            r.workers,
            r.samples_per_s,
            r.samples_per_s / r.workers as f64
        );
    }
    println!("({cores} cores; the reader thread and Parquet decoding share them with the workers)");
}
