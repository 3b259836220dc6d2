//! Bytes per image of the record encoding, against naive `f32`/`u8` arrays.
//!
//! Builds a realistic reference record (a 1000-class soft distribution, 20 boxes, a 160x160
//! segmentation mask of smooth regions with ignore pixels along boundaries, a 128x128 smooth depth map
//! with a little noise), writes 256 such records with `shards::encoding::record_writer_properties`
//! into an in-memory Parquet file, reads them back, and reports bytes per image, the compression
//! ratio, per-column sizes and the round-trip error. Exits non-zero if the file is less than 6x
//! smaller than the naive encoding or the round trip is not within tolerance.
//!
//! `cargo run --release -p shards --example bytes_per_image [-- --compare]`; `--compare` also
//! prints the size of each label column under alternative encodings.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use schemas::{
    batch_to_records, image_schema, records_to_batch, ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ImageRecord,
    LabelSource, SegLabel, SEG_IGNORE,
};

const RECORDS: usize = 256;
const BATCH: usize = 64;
const CLASSES: usize = 1000;
const BOXES: usize = 20;
const SEG_SIDE: usize = 160;
const DEPTH_SIDE: usize = 128;
const TARGET_RATIO: f64 = 6.0;
const TOLERANCE: f64 = 1e-3;

/// splitmix64: small, seeded, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// A filled shape on the unit square.
enum Shape {
    Ellipse { cx: f64, cy: f64, rx: f64, ry: f64 },
    Rect { x0: f64, y0: f64, x1: f64, y1: f64 },
}

impl Shape {
    fn random(rng: &mut Rng) -> Shape {
        let (cx, cy) = (rng.range(0.1, 0.9), rng.range(0.3, 0.9));
        let (rx, ry) = (rng.range(0.04, 0.18), rng.range(0.04, 0.18));
        if rng.below(2) == 0 {
            Shape::Ellipse { cx, cy, rx, ry }
        } else {
            Shape::Rect { x0: cx - rx, y0: cy - ry, x1: cx + rx, y1: cy + ry }
        }
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        match *self {
            Shape::Ellipse { cx, cy, rx, ry } => ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0,
            Shape::Rect { x0, y0, x1, y1 } => (x0..=x1).contains(&x) && (y0..=y1).contains(&y),
        }
    }
}

/// The scene both dense labels are rendered from: a wavy horizon, sky above, ground below, objects.
struct Scene {
    horizon: f64,
    amplitude: f64,
    frequency: f64,
    phase: f64,
    /// Shape, class, inverse depth.
    objects: Vec<(Shape, u8, f64)>,
}

impl Scene {
    fn random(rng: &mut Rng) -> Scene {
        let objects =
            (0..rng.below(4) + 3).map(|_| (Shape::random(rng), 4 + rng.below(17) as u8, rng.range(0.3, 1.0))).collect();
        Scene {
            horizon: rng.range(0.3, 0.5),
            amplitude: rng.range(0.01, 0.05),
            frequency: rng.range(1.0, 3.0),
            phase: rng.range(0.0, std::f64::consts::TAU),
            objects,
        }
    }

    fn horizon_at(&self, x: f64) -> f64 {
        self.horizon + self.amplitude * (std::f64::consts::TAU * self.frequency * x + self.phase).sin()
    }

    /// Class and inverse depth at a point of the unit square (objects drawn last win).
    fn at(&self, x: f64, y: f64) -> (u8, f64) {
        let h = self.horizon_at(x);
        let mut out = if y < h { (1, 0.02) } else { (2, 0.1 + 0.9 * (y - h) / (1.0 - h)) };
        for (shape, class, inv_depth) in &self.objects {
            if shape.contains(x, y) {
                out = (*class, *inv_depth);
            }
        }
        out
    }
}

/// A peaked softmax of random logits: top-1 probability around 0.75, a long tail.
fn softmax_distribution(rng: &mut Rng) -> Vec<f32> {
    let top = rng.below(CLASSES as u64) as usize;
    let logits: Vec<f64> = (0..CLASSES).map(|i| 2.0 * rng.normal() + if i == top { 10.0 } else { 0.0 }).collect();
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / total) as f32).collect()
}

fn boxes(rng: &mut Rng) -> Vec<DetBox> {
    (0..BOXES)
        .map(|_| {
            let (cx, cy, w, h) = (rng.unit(), rng.unit(), rng.range(0.02, 0.4), rng.range(0.02, 0.4));
            DetBox {
                x0: (cx - w / 2.0).clamp(0.0, 1.0) as f32,
                y0: (cy - h / 2.0).clamp(0.0, 1.0) as f32,
                x1: (cx + w / 2.0).clamp(0.0, 1.0) as f32,
                y1: (cy + h / 2.0).clamp(0.0, 1.0) as f32,
                class_id: 1 + rng.below(90) as u16,
                score: rng.range(0.5, 1.0) as f32,
            }
        })
        .collect()
}

/// Class per pixel; pixels next to a different class (and some of their neighbours) get the ignore
/// label, as the max-probability < 0.5 rule does along object boundaries.
fn mask(scene: &Scene, rng: &mut Rng) -> Vec<u8> {
    let n = SEG_SIDE;
    let centre = |i: usize| (i as f64 + 0.5) / n as f64;
    let clean: Vec<u8> = (0..n * n).map(|i| scene.at(centre(i % n), centre(i / n)).0).collect();
    let mut out = clean.clone();
    for y in 0..n {
        for x in 0..n {
            let c = clean[y * n + x];
            let differs = [(0, 1), (1, 0)].iter().any(|&(dx, dy)| {
                let (xx, yy) = (x + dx, y + dy);
                xx < n && yy < n && clean[yy * n + xx] != c
            });
            if differs {
                out[y * n + x] = SEG_IGNORE;
                if rng.below(3) == 0 && x + 1 < n {
                    out[y * n + x + 1] = SEG_IGNORE;
                }
            }
        }
    }
    out
}

/// Inverse depth: far sky, a ground plane getting nearer towards the bottom, objects at constant
/// depth, and Gaussian noise with a standard deviation of 1e-3 of the map's range.
fn depth(scene: &Scene, rng: &mut Rng) -> Vec<f32> {
    let n = DEPTH_SIDE;
    let centre = |i: usize| (i as f64 + 0.5) / n as f64;
    let clean: Vec<f64> = (0..n * n).map(|i| scene.at(centre(i % n), centre(i / n)).1).collect();
    let (lo, hi) = clean.iter().fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let noise = 1e-3 * (hi - lo);
    clean.iter().map(|&v| (v + noise * rng.normal()) as f32).collect()
}

fn reference_record(seed: u64) -> ImageRecord {
    let mut rng = Rng(seed);
    let scene = Scene::random(&mut rng);
    let key = format!("train/n{:08}/{:08}.jpg", rng.below(100_000_000), seed);
    let mut record = ImageRecord::new(key.clone(), "imagenet", format!("s3://images/{key}"), 500, 375);
    record.image_format = Some("jpeg".into());
    record.cls =
        Some(ClsLabel { source: LabelSource::pseudo("efficientnet_b7"), probs: softmax_distribution(&mut rng) });
    record.det = Some(DetLabel { source: LabelSource::pseudo("faster_rcnn"), boxes: boxes(&mut rng) });
    record.seg = Some(SegLabel {
        source: LabelSource::pseudo("deeplabv3"),
        height: SEG_SIDE as u16,
        width: SEG_SIDE as u16,
        mask: mask(&scene, &mut rng),
    });
    record.depth = Some(DepthLabel {
        source: LabelSource::pseudo("midas_small"),
        kind: DepthKind::InverseRelative,
        height: DEPTH_SIDE as u16,
        width: DEPTH_SIDE as u16,
        values: depth(&scene, &mut rng),
    });
    record
}

/// Bytes per image of the naive encoding: f32 probabilities, 6 x 4 bytes per box, u8 mask, f32 depth.
fn naive_bytes(r: &ImageRecord) -> usize {
    let cls = r.cls.as_ref().map_or(0, |c| 4 * c.probs.len());
    let det = r.det.as_ref().map_or(0, |d| 24 * d.boxes.len());
    let seg = r.seg.as_ref().map_or(0, |s| s.mask.len());
    let depth = r.depth.as_ref().map_or(0, |d| 4 * d.values.len());
    cls + det + seg + depth
}

struct RoundTrip {
    max_prob_error: f64,
    max_depth_error: f64,
    exact: bool,
}

fn compare(written: &[ImageRecord], read: &[ImageRecord]) -> RoundTrip {
    let mut out = RoundTrip { max_prob_error: 0.0, max_depth_error: 0.0, exact: written.len() == read.len() };
    for (a, b) in written.iter().zip(read) {
        let (pa, pb) = (&a.cls.as_ref().unwrap().probs, &b.cls.as_ref().unwrap().probs);
        for (x, y) in pa.iter().zip(pb) {
            out.max_prob_error = out.max_prob_error.max(f64::from((x - y).abs()));
        }
        let (da, db) = (&a.depth.as_ref().unwrap().values, &b.depth.as_ref().unwrap().values);
        let (lo, hi) = da.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        for (x, y) in da.iter().zip(db) {
            out.max_depth_error = out.max_depth_error.max(f64::from((x - y).abs()) / f64::from(hi - lo));
        }
        out.exact &= a.seg == b.seg && a.det == b.det && a.key == b.key;
    }
    out
}

type Error = Box<dyn std::error::Error>;

fn encode(records: &[ImageRecord], props: WriterProperties) -> Result<Vec<u8>, Error> {
    let mut file = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut file, image_schema(), Some(props))?;
    for chunk in records.chunks(BATCH) {
        writer.write(&records_to_batch(chunk)?)?;
    }
    writer.close()?;
    Ok(file)
}

/// Compressed bytes per top-level column, and the leaf paths of each.
fn column_sizes(metadata: &ParquetMetaData) -> BTreeMap<String, (i64, Vec<ColumnPath>)> {
    let mut out: BTreeMap<String, (i64, Vec<ColumnPath>)> = BTreeMap::new();
    for row_group in metadata.row_groups() {
        for column in row_group.columns() {
            let entry = out.entry(column.column_path().parts()[0].clone()).or_default();
            entry.0 += column.compressed_size();
            if !entry.1.contains(column.column_path()) {
                entry.1.push(column.column_path().clone());
            }
        }
    }
    out
}

/// Size of each label column under alternative encodings, everything else as chosen.
fn compare_alternatives(
    records: &[ImageRecord],
    sizes: &BTreeMap<String, (i64, Vec<ColumnPath>)>,
) -> Result<(), Error> {
    let zstd = |level| Compression::ZSTD(ZstdLevel::try_new(level).expect("valid level"));
    let alternatives = [
        ("dictionary + zstd(3)", None, true, zstd(3)),
        ("dictionary + zstd(9)", None, true, zstd(9)),
        ("PLAIN + zstd(3)", Some(Encoding::PLAIN), false, zstd(3)),
        ("PLAIN + zstd(6)", Some(Encoding::PLAIN), false, zstd(6)),
        ("PLAIN + zstd(9)", Some(Encoding::PLAIN), false, zstd(9)),
        ("PLAIN + zstd(12)", Some(Encoding::PLAIN), false, zstd(12)),
        ("DELTA_BINARY_PACKED + zstd(3)", Some(Encoding::DELTA_BINARY_PACKED), false, zstd(3)),
        ("DELTA_BINARY_PACKED, uncompressed", Some(Encoding::DELTA_BINARY_PACKED), false, Compression::UNCOMPRESSED),
        ("BYTE_STREAM_SPLIT + zstd(3) [1]", Some(Encoding::BYTE_STREAM_SPLIT), false, zstd(3)),
        ("BYTE_STREAM_SPLIT + zstd(9) [1]", Some(Encoding::BYTE_STREAM_SPLIT), false, zstd(9)),
    ];
    for column in ["cls_probs", "det_boxes", "seg_mask", "depth_q"] {
        println!("{column}, bytes/image:");
        for (name, encoding, dictionary, compression) in &alternatives {
            if column == "det_boxes" && *encoding == Some(Encoding::DELTA_BINARY_PACKED) {
                continue; // integers only
            }
            let mut builder = shards::encoding::record_writer_properties().into_builder();
            for path in &sizes[column].1 {
                builder = builder
                    .set_column_dictionary_enabled(path.clone(), *dictionary)
                    .set_column_compression(path.clone(), *compression);
                // Integer leaves (class_id) cannot take every encoding; they stay as chosen.
                let float = path.parts().last().is_some_and(|leaf| leaf != "class_id");
                if let (Some(encoding), true) = (encoding, float || column != "det_boxes") {
                    builder = builder.set_column_encoding(path.clone(), *encoding);
                }
            }
            let start = Instant::now();
            let file = encode(records, builder.build())?;
            let rate = RECORDS as f64 / start.elapsed().as_secs_f64();
            let metadata = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(file))?.metadata().clone();
            let bytes = column_sizes(&metadata)[column].0;
            println!(
                "  {name:<36} {:>8.1}   (whole file written at {rate:.0} images/s)",
                bytes as f64 / RECORDS as f64
            );
        }
    }
    println!("[1] not readable by duckdb 1.4 for integer columns (BYTE_STREAM_SPLIT is FLOAT/DOUBLE only there)");
    Ok(())
}

fn run(alternatives: bool) -> Result<bool, Error> {
    let records: Vec<ImageRecord> = (0..RECORDS as u64).map(|i| reference_record(0x5eed_0000 + i)).collect();
    let naive = naive_bytes(&records[0]);

    let start = Instant::now();
    let file = encode(&records, shards::encoding::record_writer_properties())?;
    let write_time = start.elapsed();
    let start = Instant::now();
    let builder = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(file.clone()))?;
    let sizes = column_sizes(builder.metadata());
    let per_column: BTreeMap<String, i64> = sizes.iter().map(|(k, (bytes, _))| (k.clone(), *bytes)).collect();
    let mut read = Vec::new();
    for batch in builder.build()? {
        read.extend(batch_to_records(&batch?)?);
    }
    let read_time = start.elapsed();
    let check = compare(&records, &read);

    let per_image = file.len() as f64 / RECORDS as f64;
    let ratio = naive as f64 / per_image;
    println!("{RECORDS} reference records, {} bytes of Parquet", file.len());
    println!("naive encoding:   {naive} bytes/image (f32 probs, 24-byte boxes, u8 mask, f32 depth)");
    println!("Parquet encoding: {per_image:.0} bytes/image, {ratio:.1}x smaller (whole file, footer included)");
    println!("per column, bytes/image (compressed column chunks):");
    let mut by_size: Vec<_> = per_column.into_iter().collect();
    by_size.sort_by_key(|(_, bytes)| -bytes);
    for (column, bytes) in by_size {
        println!("  {column:<14} {:>8.1}", bytes as f64 / RECORDS as f64);
    }
    let rate = |t: Duration| RECORDS as f64 / t.as_secs_f64();
    println!(
        "records -> Parquet: {:.0} images/s; Parquet -> records: {:.0} images/s (one thread)",
        rate(write_time),
        rate(read_time)
    );
    println!("max |p - p'|:                 {:.2e}", check.max_prob_error);
    println!("max |d - d'| / range(d):      {:.2e}", check.max_depth_error);
    println!("masks and boxes identical:    {}", check.exact);

    let ok =
        ratio >= TARGET_RATIO && check.max_prob_error <= TOLERANCE && check.max_depth_error <= TOLERANCE && check.exact;
    if !ok {
        eprintln!("FAILED: want >= {TARGET_RATIO}x, errors <= {TOLERANCE}, identical masks and boxes");
    }
    if alternatives {
        compare_alternatives(&records, &sizes)?;
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let compare = std::env::args().skip(1).any(|a| a == "--compare");
    match run(compare) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
