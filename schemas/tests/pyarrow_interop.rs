//! Files this crate describes must read the same in Python: write records and errors to Parquet, then
//! let `tools/interop/check_schema.py` check them with pyarrow and duckdb against `SCHEMA.md`.
//!
//! Needs the project's Python environment (`make setup`); the interpreter is `$MUST_PYTHON`, else
//! `<workspace>/.venv/bin/python`. Without one the test fails rather than skipping, so CI cannot pass
//! without having run the check.

use std::path::{Path, PathBuf};
use std::process::Command;

use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use schemas::{
    error_schema, errors_to_batch, image_schema, records_to_batch, ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel,
    ErrorRecord, ImageRecord, LabelSource, RecordKind, SegLabel, Stage, RECORD_KIND_KEY, SCHEMA_VERSION,
    SCHEMA_VERSION_KEY, SEG_IGNORE,
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("schemas sits in the workspace").to_path_buf()
}

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MUST_PYTHON") {
        let python = PathBuf::from(python);
        assert!(
            python.exists(),
            "MUST_PYTHON is {}, which does not exist: run `make setup` (it creates .venv with pyarrow, duckdb, numpy)",
            python.display()
        );
        return python;
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the interop check: MUST_PYTHON is unset and {} does not exist. \
         Run `make setup` (it creates .venv with pyarrow, duckdb, numpy), or point MUST_PYTHON at a Python that has them.",
        venv.display()
    );
    venv
}

/// A small deterministic generator, enough to make the dense labels non-trivial.
fn lcg(seed: &mut u64) -> u32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*seed >> 33) as u32
}

fn records() -> Vec<ImageRecord> {
    let mut seed = 7;
    // Every task supervised or pseudo, with image bytes and a realistically shaped dense label.
    let mut full = ImageRecord::new("train/cat 01.jpg", "demo", "s3://bucket/train/cat%2001.jpg", 640, 427);
    full.image_format = Some("jpeg".into());
    full.image = Some(vec![0xff, 0xd8, 0xff, 0xdb, 0x00, 0x43, 0x00, 0xff, 0xd9]);
    full.cls = Some(ClsLabel { source: LabelSource::Supervised, probs: vec![0.0, 0.0, 1.0, 0.0] });
    full.det = Some(DetLabel {
        source: LabelSource::pseudo("faster_rcnn"),
        boxes: vec![
            DetBox { x0: 0.125, y0: 0.2, x1: 0.75, y1: 0.9, class_id: 17, score: 0.93 },
            DetBox { x0: 0.0, y0: 0.0, x1: 1.0, y1: 1.0, class_id: 1, score: 0.5 },
        ],
    });
    let (h, w) = (16u16, 24u16);
    let mask = (0..usize::from(h) * usize::from(w))
        .map(|i| match (i % usize::from(w), i / usize::from(w)) {
            (11, _) => SEG_IGNORE,
            (x, y) if x < 11 && y < 5 => 0,
            (x, _) if x < 11 => 7,
            _ => 20,
        })
        .collect();
    full.seg = Some(SegLabel { source: LabelSource::pseudo("deeplabv3"), height: h, width: w, mask });
    let (dh, dw) = (12u16, 10u16);
    let values = (0..usize::from(dh) * usize::from(dw))
        .map(|i| 0.1 + (i / usize::from(dw)) as f32 * 0.07 + (lcg(&mut seed) % 1000) as f32 * 1e-6)
        .collect();
    full.depth = Some(DepthLabel {
        source: LabelSource::pseudo("midas_small"),
        kind: DepthKind::InverseRelative,
        height: dh,
        width: dw,
        values,
    });

    // A soft classification label only; every other task absent.
    let mut soft = ImageRecord::new("train/dog.png", "demo", "s3://bucket/train/dog.png", 32, 16);
    soft.image_format = Some("png".into());
    let weights: Vec<f32> = (0..100).map(|_| (lcg(&mut seed) % 1000) as f32 + 1.0).collect();
    let total: f32 = weights.iter().sum();
    soft.cls =
        Some(ClsLabel { source: LabelSource::pseudo("resnet50"), probs: weights.iter().map(|w| w / total).collect() });

    // Supervised detection with no objects, metric constant depth, supervised segmentation.
    let mut sparse = ImageRecord::new("val/empty.webp", "other", "file:///data/val/empty.webp", 3, 2);
    sparse.det = Some(DetLabel { source: LabelSource::Supervised, boxes: vec![] });
    sparse.seg =
        Some(SegLabel { source: LabelSource::Supervised, height: 2, width: 3, mask: vec![1, 1, 2, 2, 255, 0] });
    sparse.depth = Some(DepthLabel {
        source: LabelSource::Supervised,
        kind: DepthKind::Metric,
        height: 2,
        width: 3,
        values: vec![4.25; 6],
    });

    // Nothing known but the image itself.
    let bare = ImageRecord::new("val/unlabelled.jpg", "other", "file:///data/val/unlabelled.jpg", 1, 1);
    vec![full, soft, sparse, bare]
}

fn errors() -> Vec<ErrorRecord> {
    let error = |key: &str, stage, reason: &str, detail: &str| ErrorRecord {
        key: key.into(),
        dataset: "demo".into(),
        source_uri: format!("s3://bucket/{key}"),
        stage,
        reason: reason.into(),
        detail: detail.into(),
    };
    vec![
        error("train/broken.jpg", Stage::Decode, "truncated", "JPEG ends before its EOI marker"),
        error("train/huge.png", Stage::Fetch, "too_large", "object is 3.2 GB, limit 64 MB"),
        error("train/odd.jpg", Stage::SupervisedLabel, "invalid_label", ""),
    ]
}

fn properties(kind: RecordKind) -> WriterProperties {
    WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            KeyValue::new(SCHEMA_VERSION_KEY.to_owned(), SCHEMA_VERSION.to_string()),
            KeyValue::new(RECORD_KIND_KEY.to_owned(), kind.as_str().to_owned()),
        ]))
        .build()
}

fn write_parquet(path: &Path, batch: &arrow_array::RecordBatch, kind: RecordKind) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties(kind))).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

fn run_check(parquet: &Path, expected: &Path) {
    let script = workspace_root().join("tools/interop/check_schema.py");
    let python = python();
    let output = Command::new(&python)
        .arg(&script)
        .arg(parquet)
        .arg(expected)
        .output()
        .unwrap_or_else(|e| panic!("running {} {}: {e}", python.display(), script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        script.display(),
        output.status
    );
    assert!(stdout.contains("ok"), "unexpected output:\n{stdout}\n{stderr}");
}

#[test]
fn image_records_read_back_in_pyarrow_and_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let records = records();
    let batch = records_to_batch(&records).unwrap();
    assert_eq!(batch.schema(), image_schema());
    let parquet = dir.path().join("records.parquet");
    write_parquet(&parquet, &batch, RecordKind::Image);
    let expected = dir.path().join("records.json");
    let json = serde_json::json!({ "kind": "image", "records": records });
    std::fs::write(&expected, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    run_check(&parquet, &expected);
}

#[test]
fn error_records_read_back_in_pyarrow_and_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let errors = errors();
    let batch = errors_to_batch(&errors).unwrap();
    assert_eq!(batch.schema(), error_schema());
    let parquet = dir.path().join("errors.parquet");
    write_parquet(&parquet, &batch, RecordKind::Error);
    let expected = dir.path().join("errors.json");
    let json = serde_json::json!({ "kind": "error", "records": errors });
    std::fs::write(&expected, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    run_check(&parquet, &expected);
}
