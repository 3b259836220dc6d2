//! Bad input: every unusable file is an error naming the file (and column); an undecodable image is
//! skipped and counted; nothing panics.

mod data_support;

use data_support::*;
use trainer::data::{DataError, Loader, SamplerState, Task};

/// Commit `batch` (possibly doctored) as the only shard of a dataset and open a loader on it.
/// The temp dir is returned so the files outlive the loader.
fn load_one(
    batch: arrow_array::RecordBatch,
    tasks: Vec<Task>,
) -> (tempfile::TempDir, String, Result<Loader, DataError>) {
    let dir = tempfile::tempdir().unwrap();
    let (path, root) = local_root(dir.path(), "d");
    let rel = runtime().block_on(commit_batches(&root, 0, 1, &[batch], 8));
    let result = Loader::new(config(vec![spec("d", &path, tasks)], 32, 2), SamplerState::default());
    (dir, rel, result)
}

fn good_batch(n: usize) -> arrow_array::RecordBatch {
    let records: Vec<_> = (0..n).map(|i| full_record("d", &format!("k{i}"), 32, 24, i as u64)).collect();
    schemas::records_to_batch(&records).unwrap()
}

fn message(e: &DataError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[test]
fn wrong_schema_version_names_file_and_key() {
    let batch = with_metadata(&good_batch(2), schemas::SCHEMA_VERSION_KEY, "2");
    let (_dir, rel, result) = load_one(batch, all_tasks());
    let err = result.err().unwrap();
    let msg = message(&err);
    assert!(matches!(err, DataError::SchemaVersion { .. }), "{msg}");
    assert!(msg.contains(&rel) && msg.contains(schemas::SCHEMA_VERSION_KEY), "{msg}");
}

#[test]
fn an_error_records_file_is_not_taken_for_image_records() {
    let batch = with_metadata(&good_batch(2), schemas::RECORD_KIND_KEY, "error");
    let (_dir, rel, result) = load_one(batch, all_tasks());
    let msg = message(&result.err().unwrap());
    assert!(msg.contains(&rel) && msg.contains(schemas::RECORD_KIND_KEY), "{msg}");
}

#[test]
fn missing_column_names_file_and_column() {
    let batch = without_column(&good_batch(2), "seg_mask");
    let (_dir, rel, result) = load_one(batch.clone(), all_tasks());
    let err = result.err().unwrap();
    let msg = message(&err);
    assert!(matches!(err, DataError::Column { ref column, .. } if column == "seg_mask"), "{msg}");
    assert!(msg.contains(&rel) && msg.contains("seg_mask"), "{msg}");
    // Without the segmentation task the same file is fine: only needed columns are checked and read.
    let (_dir2, _, ok) = load_one(batch, vec![Task::Cls, Task::Depth]);
    ok.unwrap().next_batch().unwrap();
}

#[test]
fn wrongly_typed_column_names_file_column_and_types() {
    let good = good_batch(2);
    // Replace `width` (UInt32) by a Utf8 column of the same name.
    let i = good.schema().index_of("width").unwrap();
    let mut fields: Vec<_> = good.schema().fields().iter().cloned().collect();
    fields[i] = std::sync::Arc::new(arrow_schema::Field::new("width", arrow_schema::DataType::Utf8, false));
    let schema = std::sync::Arc::new(arrow_schema::Schema::new_with_metadata(fields, good.schema().metadata().clone()));
    let mut columns = good.columns().to_vec();
    columns[i] = std::sync::Arc::new(arrow_array::StringArray::from(vec!["32", "32"]));
    let batch = arrow_array::RecordBatch::try_new(schema, columns).unwrap();
    let (_dir, rel, result) = load_one(batch, all_tasks());
    let msg = message(&result.err().unwrap());
    assert!(msg.contains(&rel) && msg.contains("\"width\"") && msg.contains("UInt32"), "{msg}");
}

#[test]
fn garbage_and_truncated_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();

    let (path, root) = local_root(dir.path(), "garbage");
    let rel = rt.block_on(commit_bytes(&root, 0, 1, b"this is not parquet at all, just bytes".to_vec(), 3));
    let err = Loader::new(config(vec![spec("g", &path, all_tasks())], 32, 2), SamplerState::default()).err().unwrap();
    let msg = message(&err);
    assert!(matches!(err, DataError::Footer { .. }), "{msg}");
    assert!(msg.contains(&rel), "{msg}");

    // A file cut short after its commit: the manifest's size no longer matches what is stored.
    let (path, root) = local_root(dir.path(), "truncated");
    let rel = rt.block_on(commit_batches(&root, 0, 1, &[good_batch(3)], 8));
    let file = dir.path().join("truncated").join(&rel);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = Loader::new(config(vec![spec("t", &path, all_tasks())], 32, 2), SamplerState::default()).err().unwrap();
    let msg = message(&err);
    assert!(msg.contains(&rel), "{msg}");

    // Garbage in the middle (footer intact): the error comes when the row group is read, naming the file.
    let (path, root) = local_root(dir.path(), "corrupt-pages");
    let rel = rt.block_on(commit_batches(&root, 0, 1, &[good_batch(3)], 8));
    let file = dir.path().join("corrupt-pages").join(&rel);
    let mut bytes = std::fs::read(&file).unwrap();
    let footer = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    let end = bytes.len() - 8 - footer;
    for b in &mut bytes[4..end] {
        *b = 0xA5;
    }
    std::fs::write(&file, &bytes).unwrap();
    match Loader::new(config(vec![spec("c", &path, all_tasks())], 32, 2), SamplerState::default()) {
        Err(e) => assert!(message(&e).contains(&rel), "{}", message(&e)),
        Ok(mut loader) => {
            let e = loader.next_batch().expect_err("corrupt pages cannot give a batch");
            let msg = message(&e);
            assert!(msg.contains(&rel), "{msg}");
        }
    }
}

#[test]
fn row_count_disagreeing_with_the_manifest_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, root) = local_root(dir.path(), "d");
    let batch = good_batch(3);
    let bytes = shards::encode_parquet(std::slice::from_ref(&batch), batch.schema(), props(8), "x").unwrap();
    let rel = runtime().block_on(commit_bytes(&root, 0, 1, bytes, 5));
    let err = Loader::new(config(vec![spec("d", &path, all_tasks())], 32, 2), SamplerState::default()).err().unwrap();
    let msg = message(&err);
    assert!(matches!(err, DataError::RowCount { manifest: 5, found: 3, .. }), "{msg}");
    assert!(msg.contains(&rel), "{msg}");
}

#[test]
fn labels_that_break_the_config_name_file_column_and_key() {
    // Four classes in the file, but the config says three.
    let dir = tempfile::tempdir().unwrap();
    let (path, root) = local_root(dir.path(), "d");
    let rel = runtime().block_on(commit_batches(&root, 0, 1, &[good_batch(2)], 8));
    let mut cfg = config(vec![spec("d", &path, vec![Task::Cls])], 32, 2);
    cfg.num_classes.cls = 3;
    let mut loader = Loader::new(cfg, SamplerState::default()).unwrap();
    let err = loader.next_batch().err().unwrap();
    let msg = message(&err);
    assert!(msg.contains(&rel) && msg.contains("cls_probs") && msg.contains("\"k0\""), "{msg}");
    // The loader stays failed rather than hanging or panicking.
    assert!(loader.next_batch().is_err());

    // Mask class 2 with only two seg classes.
    let mut cfg = config(vec![spec("d", &path, vec![Task::Seg])], 32, 2);
    cfg.num_classes.seg = 2;
    let err = Loader::new(cfg, SamplerState::default()).unwrap().next_batch().err().unwrap();
    let msg = message(&err);
    assert!(msg.contains(&rel) && msg.contains("seg_mask"), "{msg}");
}

#[test]
fn undecodable_images_are_skipped_and_counted() {
    let mut records: Vec<_> = (0..6).map(|i| full_record("d", &format!("k{i}"), 32, 24, i)).collect();
    records[1].image = Some(b"\x89PNG but not really".to_vec());
    let mut truncated = records[4].image.clone().unwrap();
    truncated.truncate(40);
    records[4].image = Some(truncated);
    records[5].image = None;
    let dir = tempfile::tempdir().unwrap();
    let (path, root) = local_root(dir.path(), "d");
    runtime().block_on(write_shard(&root, 0, 1, &records[..5], 8));
    let mut cfg = config(vec![spec("d", &path, all_tasks())], 32, 5);
    cfg.passes = Some(1);
    let mut loader = Loader::new(cfg, SamplerState::default()).unwrap();
    let batch = loader.next_batch().unwrap();
    assert_eq!(batch.size, 3);
    assert_eq!(batch.images.len(), 3 * 3 * 32 * 32);
    let mut keys: Vec<_> = batch.keys.iter().map(|(_, k)| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["k0", "k2", "k3"]);
    assert_eq!(loader.skipped_images(), 2);
    assert!(matches!(loader.next_batch(), Err(DataError::Exhausted)));

    // A row with no image at all breaks the contract: a named error.
    let (path, root) = local_root(dir.path(), "e");
    let rel = runtime().block_on(write_shard(&root, 0, 1, &records[5..], 8));
    let mut loader = Loader::new(config(vec![spec("e", &path, all_tasks())], 32, 1), SamplerState::default()).unwrap();
    let msg = message(&loader.next_batch().err().unwrap());
    assert!(msg.contains(&rel) && msg.contains("image") && msg.contains("k5"), "{msg}");
}

#[test]
fn config_mistakes_are_reported_before_reading() {
    let mut cfg = config(vec![spec("d", "/nonexistent", all_tasks())], 32, 2);
    cfg.num_classes.det = 0;
    let msg = Loader::new(cfg, SamplerState::default()).err().unwrap().to_string();
    assert!(msg.contains("num_classes.det"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let (path, _) = local_root(dir.path(), "empty");
    let msg = Loader::new(config(vec![spec("empty", &path, all_tasks())], 32, 2), SamplerState::default())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("no committed records"), "{msg}");
}

#[test]
fn a_root_labelled_with_two_shard_counts_is_refused_naming_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (path, root) = local_root(dir.path(), "mixed");
    // Shard 0 of 2 and shard 1 of 4 overlap: together they hold some images twice.
    rt.block_on(commit_batches(&root, 0, 2, &[good_batch(3)], 8));
    rt.block_on(commit_batches(&root, 1, 4, &[good_batch(3)], 8));
    let err = Loader::new(config(vec![spec("m", &path, all_tasks())], 32, 2), SamplerState::default()).err().unwrap();
    let msg = message(&err);
    assert!(msg.contains("shard-00000-of-00002.json") && msg.contains("shard-00001-of-00004.json"), "{msg}");
    assert!(msg.contains("2 shards") && msg.contains("4 shards") && msg.contains("disagree"), "{msg}");
}
