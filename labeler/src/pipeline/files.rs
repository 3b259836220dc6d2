//! Data files: Parquet writer properties with the provenance footer, and files cut at a row or byte limit
//! and streamed to the store while they are written.

use parquet::file::metadata::KeyValue;
use shards::inputs::InputIndex;
use shards::{DataFile, ShardCommitter, ShardId};

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

/// Rolls rows into Parquet files of bounded size, each streamed to the store as it is written.
pub(super) struct FileRoller {
    kind: &'static str,
    schema: arrow_schema::SchemaRef,
    props: parquet::file::properties::WriterProperties,
    file: Option<DataFile>,
    file_rows: u64,
    file_bytes: usize,
    /// Write one (empty) file even when no row comes, so every shard has the same shape.
    at_least_one: bool,
    files_done: usize,
}

impl FileRoller {
    pub(super) fn new(
        kind: &'static str,
        schema: arrow_schema::SchemaRef,
        props: parquet::file::properties::WriterProperties,
        file_rows: u64,
        file_bytes: usize,
        at_least_one: bool,
    ) -> Self {
        Self { kind, schema, props, file: None, file_rows, file_bytes, at_least_one, files_done: 0 }
    }

    /// Write `batch`, cutting files at `file_rows` rows (or once `file_bytes` are encoded).
    pub(super) async fn write(
        &mut self,
        committer: &mut ShardCommitter,
        batch: &arrow_array::RecordBatch,
    ) -> Result<(), PipelineError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let file = match &mut self.file {
                Some(f) => f,
                None => self.file.insert(committer.start_file(self.kind, self.schema.clone(), self.props.clone())?),
            };
            let take = ((self.file_rows - file.rows()) as usize).min(batch.num_rows() - offset);
            file.write(&batch.slice(offset, take)).await?;
            offset += take;
            if file.rows() >= self.file_rows || file.bytes_written() >= self.file_bytes {
                self.finish(committer).await?;
            }
        }
        Ok(())
    }

    /// Complete the open file, if any.
    pub(super) async fn finish(&mut self, committer: &mut ShardCommitter) -> Result<(), PipelineError> {
        if self.file.is_none() && self.at_least_one && self.files_done == 0 {
            self.file = Some(committer.start_file(self.kind, self.schema.clone(), self.props.clone())?);
        }
        if let Some(file) = self.file.take() {
            committer.finish_file(file).await?;
            self.files_done += 1;
        }
        Ok(())
    }

    /// Abort the open file's upload (the attempt failed).
    pub(super) async fn abort(&mut self) {
        if let Some(file) = self.file.take() {
            file.abort().await;
        }
    }
}
