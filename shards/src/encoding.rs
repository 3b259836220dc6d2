//! Parquet encoding choices for record files.
//!
//! Records are written once and read many times (every epoch of every student), so the choices
//! favour small files and cheap projection over write speed:
//!
//! * zstd for everything that is not already compressed; the `image` column holds JPEG/PNG bytes as
//!   stored in the source and is written uncompressed, since compressing it again costs time for nothing;
//! * chunk-level statistics only for the big list and binary columns, whose min/max prune nothing
//!   while page statistics and column indexes would cost footer bytes per page; no dictionary for
//!   them either, except `seg_mask`, whose few class ids in long runs are what dictionary/RLE is for;
//! * per-column value encodings chosen by measurement (`cargo run --release -p shards --example
//!   bytes_per_image`), see [`record_writer_properties`];
//! * small row groups ([`MAX_ROW_GROUP_ROWS`], [`MAX_ROW_GROUP_BYTES`]), because a reader holds a
//!   whole row group of every projected column in memory;
//! * byte-for-byte determinism: no timestamps, a fixed `created_by`, and only the schema version and
//!   record kind in the footer (no attempt ids), so re-running a shard gives identical files.

use arrow_schema::Schema;
use parquet::arrow::ArrowSchemaConverter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{
    EnabledStatistics, WriterProperties, WriterPropertiesBuilder, WriterVersion, DEFAULT_CREATED_BY,
};
use parquet::schema::types::ColumnPath;
use schemas::{columns, RecordKind, RECORD_KIND_KEY, SCHEMA_VERSION, SCHEMA_VERSION_KEY};

/// Most rows in one row group.
///
/// Readers hold a row group of each projected column, so callers should also cut files (and hence
/// row groups) by bytes when rows carry image bytes; [`MAX_ROW_GROUP_BYTES`] is the writer's own cap.
pub const MAX_ROW_GROUP_ROWS: usize = 1024;

/// Most (estimated, encoded) bytes in one row group; the writer starts a new one beyond this.
pub const MAX_ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// The `created_by` of every file: fixed per build (no host, no time), in the
/// `<app> version <v> (build <b>)` form readers parse to recognise the writer.
pub fn created_by() -> String {
    format!("{DEFAULT_CREATED_BY} (build must-shards-{})", env!("CARGO_PKG_VERSION"))
}

/// zstd level of compressed columns (see [`record_writer_properties`] for what higher levels buy).
const ZSTD_LEVEL: i32 = 3;

/// zstd level of the small label columns (probabilities, boxes, masks): a few hundred bytes per image,
/// where a higher level costs little time.
const ZSTD_LEVEL_SMALL: i32 = 9;

/// Writer properties for files of image records ([`schemas::image_schema`]).
///
/// Value encodings, measured on the reference records of the `bytes_per_image` example (bytes per
/// image of the column; `--compare` prints the full table with write speeds):
///
/// | column | chosen | alternatives |
/// |---|---|---|
/// | `cls_probs` | dictionary + zstd(9): 806 | PLAIN + zstd(9) 853, DELTA_BINARY_PACKED 1260 |
/// | `det_boxes` | BYTE_STREAM_SPLIT (floats; `class_id` PLAIN) + zstd(9): 342 | PLAIN 360, dictionary 503 |
/// | `seg_mask` | dictionary (RLE indices) + zstd(9): 544 | PLAIN + zstd(9) 659, DELTA_BINARY_PACKED 1335 |
/// | `depth_q` (10-bit codes) | DELTA_BINARY_PACKED + zstd(3): 13710 | PLAIN + zstd(3) 14903, + zstd(6) 12578, dictionary + zstd(9) 13560 |
/// | `image` | PLAIN, uncompressed | (already compressed) |
///
/// Everything here must stay readable by common readers: BYTE_STREAM_SPLIT on integer columns
/// measured best for `cls_probs` (616) and `depth_q` (11809), but duckdb 1.4 reads it only for
/// FLOAT/DOUBLE, so it is used for the box coordinates alone. `depth_q` could be 8% smaller with
/// PLAIN + zstd(6), at a third of the write speed. DELTA_BINARY_PACKED does worse on smooth maps than
/// one might expect because one object boundary in a 128-value block widens every miniblock of it.
pub fn record_writer_properties() -> WriterProperties {
    let image = image_schema_paths();
    let mut builder = common(RecordKind::Image);
    for (top, path) in image {
        builder = match top.as_str() {
            columns::IMAGE => builder
                .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path.clone(), Encoding::PLAIN)
                .set_column_statistics_enabled(path, EnabledStatistics::Chunk),
            columns::CLS_PROBS | columns::SEG_MASK => blob(builder, path.clone())
                .set_column_dictionary_enabled(path.clone(), true)
                .set_column_compression(path, zstd(ZSTD_LEVEL_SMALL)),
            columns::DEPTH_Q => blob(builder, path.clone()).set_column_encoding(path, Encoding::DELTA_BINARY_PACKED),
            columns::DET_BOXES if path.parts().last().is_some_and(|leaf| leaf == columns::BOX_CLASS_ID) => {
                blob(builder, path.clone()).set_column_compression(path, zstd(ZSTD_LEVEL_SMALL))
            }
            columns::DET_BOXES => blob(builder, path.clone())
                .set_column_encoding(path.clone(), Encoding::BYTE_STREAM_SPLIT)
                .set_column_compression(path, zstd(ZSTD_LEVEL_SMALL)),
            _ => builder,
        };
    }
    builder.build()
}

/// Writer properties for files of error records ([`schemas::error_schema`]): small text columns,
/// zstd throughout, dictionaries for the repetitive `dataset`, `stage` and `reason`.
pub fn error_writer_properties() -> WriterProperties {
    common(RecordKind::Error).build()
}

/// What every record file shares: footer metadata, determinism, row-group sizing, zstd by default.
fn common(kind: RecordKind) -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_created_by(created_by())
        .set_key_value_metadata(Some(vec![
            KeyValue::new(SCHEMA_VERSION_KEY.to_owned(), SCHEMA_VERSION.to_string()),
            KeyValue::new(RECORD_KIND_KEY.to_owned(), kind.as_str().to_owned()),
        ]))
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(zstd(ZSTD_LEVEL))
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(MAX_ROW_GROUP_BYTES))
}

/// A big list column: compressed, no dictionary unless the caller re-enables it, chunk statistics only.
fn blob(builder: WriterPropertiesBuilder, path: ColumnPath) -> WriterPropertiesBuilder {
    builder
        .set_column_compression(path.clone(), zstd(ZSTD_LEVEL))
        .set_column_dictionary_enabled(path.clone(), false)
        .set_column_statistics_enabled(path, EnabledStatistics::Chunk)
}

fn zstd(level: i32) -> Compression {
    Compression::ZSTD(ZstdLevel::try_new(level).expect("a valid zstd level"))
}

/// Every leaf column path of the image schema, with the top-level column it belongs to.
///
/// Parquet names leaves of nested columns by their full path (`det_boxes.list.item.x0`); deriving
/// them from the schema keeps these settings in step with how the Arrow writer lays columns out.
fn image_schema_paths() -> Vec<(String, ColumnPath)> {
    leaf_paths(&schemas::image_schema())
}

fn leaf_paths(schema: &Schema) -> Vec<(String, ColumnPath)> {
    let descriptor = ArrowSchemaConverter::new().convert(schema).expect("the record schema converts to Parquet");
    descriptor.columns().iter().map(|c| (c.path().parts()[0].clone(), c.path().clone())).collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use schemas::{
        errors_to_batch, records_to_batch, ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ErrorRecord, ImageRecord,
        LabelSource, SegLabel, Stage,
    };

    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// Enough rows and pixels to exercise the chosen encodings across pages, with every origin.
    fn records(n: usize) -> Vec<ImageRecord> {
        let mut seed = 11;
        (0..n)
            .map(|i| {
                let mut r =
                    ImageRecord::new(format!("img/{i:04}.jpg"), "demo", format!("s3://b/img/{i:04}.jpg"), 64, 48);
                let source = |teacher: &str| match i % 3 {
                    0 => Some(LabelSource::Supervised),
                    1 => Some(LabelSource::pseudo(teacher)),
                    _ => None,
                };
                r.image_format = Some("jpeg".into());
                r.image = (i % 2 == 0).then(|| (0..100 + i).map(|b| b as u8).collect());
                r.cls = source("resnet").map(|source| {
                    let w: Vec<f32> = (0..50).map(|_| (lcg(&mut seed) % 100) as f32 + 0.5).collect();
                    let total: f32 = w.iter().sum();
                    ClsLabel { source, probs: w.iter().map(|v| v / total).collect() }
                });
                r.det = source("detr").map(|source| DetLabel {
                    source,
                    boxes: (0..i % 5)
                        .map(|k| DetBox {
                            x0: 0.1,
                            y0: 0.1 * k as f32,
                            x1: 0.9,
                            y1: 0.95,
                            class_id: k as u16,
                            score: 0.75,
                        })
                        .collect(),
                });
                r.seg = source("deeplab").map(|source| SegLabel {
                    source,
                    height: 20,
                    width: 30,
                    mask: (0..600).map(|p| if p % 30 == 15 { 255 } else { ((p / 30) / 7 + i % 4) as u8 }).collect(),
                });
                r.depth = source("midas").map(|source| DepthLabel {
                    source,
                    kind: DepthKind::InverseRelative,
                    height: 16,
                    width: 16,
                    values: (0..256).map(|p| (p / 16) as f32 * 0.05 + (lcg(&mut seed) % 100) as f32 * 1e-5).collect(),
                });
                r
            })
            .collect()
    }

    fn errors() -> Vec<ErrorRecord> {
        (0..5)
            .map(|i| ErrorRecord {
                key: format!("bad/{i}.jpg"),
                dataset: "demo".into(),
                source_uri: format!("s3://b/bad/{i}.jpg"),
                stage: if i % 2 == 0 { Stage::Decode } else { Stage::Fetch },
                reason: if i % 2 == 0 { "truncated".into() } else { "timeout".into() },
                detail: format!("attempt {i}"),
            })
            .collect()
    }

    fn write(batch: &arrow_array::RecordBatch, props: WriterProperties) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
        buf
    }

    #[test]
    fn files_are_byte_identical_across_writes() {
        let batch = records_to_batch(&records(30)).unwrap();
        assert_eq!(write(&batch, record_writer_properties()), write(&batch, record_writer_properties()));
        let batch = errors_to_batch(&errors()).unwrap();
        assert_eq!(write(&batch, error_writer_properties()), write(&batch, error_writer_properties()));
    }

    #[test]
    fn round_trip_through_chosen_encodings() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let records = records(60);
        let file = write(&records_to_batch(&records).unwrap(), record_writer_properties());
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file)).unwrap();
        schemas::check_schema_version(builder.schema()).unwrap();
        let mut back = Vec::new();
        for batch in builder.build().unwrap() {
            back.extend(schemas::batch_to_records(&batch.unwrap()).unwrap());
        }
        assert_eq!(back.len(), records.len());
        for (a, b) in records.iter().zip(&back) {
            assert_eq!((&a.key, &a.image, &a.det, &a.seg), (&b.key, &b.image, &b.det, &b.seg));
        }
    }

    fn python() -> PathBuf {
        if let Some(python) = std::env::var_os("MUST_PYTHON") {
            return PathBuf::from(python);
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        assert!(
            venv.exists(),
            "no Python for the interop check: MUST_PYTHON is unset and {} does not exist; run `make setup`",
            venv.display()
        );
        venv
    }

    /// pyarrow and duckdb read files written with these properties (DELTA_BINARY_PACKED lists,
    /// dictionary-encoded lists, zstd) and decode them as `SCHEMA.md` says.
    #[test]
    fn pyarrow_and_duckdb_read_the_chosen_encodings() {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/interop/check_schema.py");
        let cases = [
            (
                "image",
                write(&records_to_batch(&records(60)).unwrap(), record_writer_properties()),
                serde_json::to_value(records(60)).unwrap(),
            ),
            (
                "error",
                write(&errors_to_batch(&errors()).unwrap(), error_writer_properties()),
                serde_json::to_value(errors()).unwrap(),
            ),
        ];
        for (kind, file, expected) in cases {
            let parquet = dir.path().join(format!("{kind}.parquet"));
            let json = dir.path().join(format!("{kind}.json"));
            std::fs::write(&parquet, file).unwrap();
            std::fs::write(&json, serde_json::json!({ "kind": kind, "records": expected }).to_string()).unwrap();
            let python = python();
            let output = std::process::Command::new(&python)
                .arg(&script)
                .arg(&parquet)
                .arg(&json)
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}; run `make setup`", python.display()));
            assert!(
                output.status.success(),
                "check_schema.py failed on the {kind} file:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    #[test]
    fn every_blob_column_has_a_setting() {
        let props = record_writer_properties();
        let paths = image_schema_paths();
        for (top, path) in &paths {
            let compression = props.compression(path);
            if top == columns::IMAGE {
                assert_eq!(compression, Compression::UNCOMPRESSED);
            } else {
                assert!(matches!(compression, Compression::ZSTD(_)), "{path}");
            }
        }
        let depth: Vec<_> = paths.iter().filter(|(top, _)| top == columns::DEPTH_Q).collect();
        assert_eq!(depth.len(), 1);
        assert_eq!(props.encoding(&depth[0].1), Some(Encoding::DELTA_BINARY_PACKED));
        assert!(!props.dictionary_enabled(&depth[0].1));
        assert_eq!(paths.iter().filter(|(top, _)| top == columns::DET_BOXES).count(), 6);
    }

    #[test]
    fn footer_carries_version_and_no_timestamp() {
        let props = record_writer_properties();
        let kv = props.key_value_metadata().unwrap();
        assert!(kv.iter().any(|kv| kv.key == SCHEMA_VERSION_KEY && kv.value.as_deref() == Some("1")));
        assert!(kv.iter().any(|kv| kv.key == RECORD_KIND_KEY && kv.value.as_deref() == Some("image")));
        assert_eq!(props.created_by(), created_by());
        let errors = error_writer_properties();
        assert!(errors.key_value_metadata().unwrap().iter().any(|kv| kv.value.as_deref() == Some("error")));
    }
}
