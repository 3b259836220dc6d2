//! Data files: Parquet writer properties with the provenance footer, and files cut at a row or byte limit.

use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use shards::inputs::InputIndex;
use shards::ShardId;

use super::{PipelineError, LABELER_VERSION};
use crate::config::LabelConfig;
use crate::spec::TeacherSpec;

/// Footer key-value metadata: everything needed to know how the labels were made. No timestamps or
/// attempt ids, so re-runs are byte-identical.
pub(super) fn provenance(
    cfg: &LabelConfig,
    teachers: &[(TeacherSpec, String)],
    index: &InputIndex,
    shard: ShardId,
) -> Vec<KeyValue> {
    let teachers_json: Vec<_> = teachers
        .iter()
        .map(|(spec, sha)| {
            serde_json::json!({
                "name": spec.name, "task": spec.task, "model_sha256": sha,
                "model_file": spec.model.file_name().map(|f| f.to_string_lossy().into_owned()),
                "spec": spec,
            })
        })
        .collect();
    let kv = |k: &str, v: String| KeyValue::new(k.to_owned(), v);
    vec![
        kv("must.teachers", serde_json::to_string(&teachers_json).expect("json")),
        kv("must.thresholds", serde_json::to_string(&cfg.thresholds).expect("json")),
        kv("must.input_manifest_sha256", index.sha256.clone()),
        kv("must.shard", shard.index.to_string()),
        kv("must.num_shards", shard.count.to_string()),
        kv("must.labeler_version", LABELER_VERSION.to_owned()),
    ]
}

/// The crate's writer properties plus this run's row-group size and provenance footer.
pub(super) fn with_provenance(
    props: parquet::file::properties::WriterProperties,
    row_group_rows: Option<usize>,
    kv: &[KeyValue],
) -> parquet::file::properties::WriterProperties {
    let mut all: Vec<KeyValue> = props.key_value_metadata().cloned().unwrap_or_default();
    all.extend(kv.iter().cloned());
    let mut builder = props.into_builder().set_key_value_metadata(Some(all));
    if let Some(rows) = row_group_rows {
        builder = builder.set_max_row_group_row_count(Some(rows));
    }
    builder.build()
}

/// Rolls records into Parquet files of bounded size and hands them to the committer.
pub(super) struct FileRoller {
    schema: arrow_schema::SchemaRef,
    props: parquet::file::properties::WriterProperties,
    writer: Option<ArrowWriter<Vec<u8>>>,
    rows_in_file: u64,
    file_rows: u64,
    file_bytes: usize,
}

impl FileRoller {
    pub(super) fn new(
        schema: arrow_schema::SchemaRef,
        props: parquet::file::properties::WriterProperties,
        file_rows: u64,
        file_bytes: usize,
    ) -> Self {
        Self { schema, props, writer: None, rows_in_file: 0, file_rows, file_bytes }
    }

    /// Write `batch`, cutting files at `file_rows` rows (or `file_bytes`); returns the files completed.
    pub(super) fn write(&mut self, batch: &arrow_array::RecordBatch) -> Result<Vec<(Vec<u8>, u64)>, PipelineError> {
        let enc = |e: parquet::errors::ParquetError| PipelineError::Encode(e.to_string());
        let mut done = Vec::new();
        let mut offset = 0;
        if batch.num_rows() == 0 && self.writer.is_none() {
            // An empty batch still opens a file, so an empty errors file is written.
            self.writer =
                Some(ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(self.props.clone())).map_err(enc)?);
        }
        while offset < batch.num_rows() {
            if self.writer.is_none() {
                self.writer =
                    Some(ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(self.props.clone())).map_err(enc)?);
            }
            let room = (self.file_rows - self.rows_in_file) as usize;
            let take = room.min(batch.num_rows() - offset);
            let w = self.writer.as_mut().expect("writer");
            w.write(&batch.slice(offset, take)).map_err(enc)?;
            w.flush().map_err(enc)?;
            offset += take;
            self.rows_in_file += take as u64;
            if self.rows_in_file >= self.file_rows || w.bytes_written() >= self.file_bytes {
                done.extend(self.finish()?);
            }
        }
        Ok(done)
    }

    pub(super) fn finish(&mut self) -> Result<Option<(Vec<u8>, u64)>, PipelineError> {
        match self.writer.take() {
            None => Ok(None),
            Some(w) => {
                let bytes = w.into_inner().map_err(|e| PipelineError::Encode(e.to_string()))?;
                let rows = std::mem::take(&mut self.rows_in_file);
                Ok(Some((bytes, rows)))
            }
        }
    }
}
