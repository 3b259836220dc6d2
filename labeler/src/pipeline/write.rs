//! Write stage: re-orders chunks into input order, encodes row groups and files and puts them under the
//! attempt's directory, holding the attempt's lease from before the first file. It does not commit: it
//! hands back the committer and the manifest, and the shard commits only once every stage has ended
//! cleanly and every input is accounted for (see `mod.rs`).

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use schemas::{ErrorRecord, ImageRecord, ManifestCounts, ManifestTeacher, ShardManifest};
use shards::inputs::InputIndex;
use shards::{Location, ShardCommitter, ShardId};

use super::fault::{self, Fault, FaultStage};
use super::files::{provenance, with_provenance, FileRoller};
use super::{Chunk, PipelineError, Progress, ShardStats, StageClock, LABELER_VERSION};
use crate::config::LabelConfig;
use crate::spec::TeacherSpec;

#[allow(clippy::too_many_arguments)]
pub(super) fn write_stage(
    cfg: &LabelConfig,
    rt: &tokio::runtime::Runtime,
    out: &Location,
    shard: ShardId,
    attempt: &str,
    teachers: &[(TeacherSpec, String)],
    index: &InputIndex,
    rx: Receiver<Chunk<Result<ImageRecord, ErrorRecord>>>,
    progress: &dyn Progress,
    fault: Option<Fault>,
    clocks: &BTreeMap<&'static str, StageClock>,
) -> Result<Written, PipelineError> {
    let kv = provenance(cfg, teachers, index, shard);
    let record_props = with_provenance(shards::encoding::record_writer_properties(), Some(cfg.run.row_group_rows), &kv);
    let error_props = with_provenance(shards::encoding::error_writer_properties(), None, &kv);
    let (file_rows, file_bytes) = (cfg.run.file_rows as u64, cfg.run.file_bytes);
    let mut records = FileRoller::new("records", schemas::image_schema(), record_props, file_rows, file_bytes, false);
    let mut errors = FileRoller::new("errors", schemas::error_schema(), error_props, file_rows, file_bytes, true);
    let mut committer = rt.block_on(ShardCommitter::leased(out.clone(), shard, attempt, cfg.lease_ttl()))?;
    let result = write_rows(cfg, rt, &mut committer, &mut records, &mut errors, rx, progress, fault, clocks);
    let stats = match result {
        Ok(stats) => stats,
        Err(e) => {
            rt.block_on(async {
                records.abort().await;
                errors.abort().await;
            });
            return Err(e);
        }
    };
    let manifest = ShardManifest {
        schema_version: schemas::SCHEMA_VERSION,
        shard: shard.index,
        num_shards: shard.count,
        attempt: attempt.to_owned(),
        input_manifest_sha256: index.sha256.clone(),
        labeler_version: LABELER_VERSION.to_owned(),
        files: Vec::new(),
        counts: ManifestCounts {
            labelled_rows: stats.labelled,
            error_rows: stats.errors,
            errors_by_reason: stats.errors_by_reason.clone(),
        },
        teachers: teachers
            .iter()
            .map(|(spec, sha)| ManifestTeacher { name: spec.name.clone(), task: spec.task, model_sha256: sha.clone() })
            .collect(),
        ..Default::default()
    };
    Ok(Written { committer, manifest, stats })
}

/// Rows held before they are encoded as one row group: at most `row_group_rows`, and at most this many
/// bytes of stored images, so a batch's Binary column stays far below Arrow's 2 GiB offset limit and
/// memory stays bounded when `store_images = true` with large images.
const ROW_GROUP_IMAGE_BYTES: usize = 64 << 20;

/// Re-order chunks into input order and stream their rows into the record and error files.
#[allow(clippy::too_many_arguments)]
fn write_rows(
    cfg: &LabelConfig,
    rt: &tokio::runtime::Runtime,
    committer: &mut ShardCommitter,
    records: &mut FileRoller,
    errors: &mut FileRoller,
    rx: Receiver<Chunk<Result<ImageRecord, ErrorRecord>>>,
    progress: &dyn Progress,
    fault: Option<Fault>,
    clocks: &BTreeMap<&'static str, StageClock>,
) -> Result<ShardStats, PipelineError> {
    let mut stats = ShardStats::default();
    let mut pending: BTreeMap<u64, Chunk<Result<ImageRecord, ErrorRecord>>> = BTreeMap::new();
    let mut next = 0u64;
    let mut rec_buf: Vec<ImageRecord> = Vec::new();
    let mut rec_image_bytes = 0usize;
    let mut err_buf: Vec<ErrorRecord> = Vec::new();
    let row_group = cfg.run.row_group_rows;
    // Encode the held rows as one row group of `roller`'s file.
    fn flush<T>(
        rt: &tokio::runtime::Runtime,
        buf: &mut Vec<T>,
        to_batch: fn(&[T]) -> Result<arrow_array::RecordBatch, schemas::BatchError>,
        committer: &mut ShardCommitter,
        roller: &mut FileRoller,
    ) -> Result<(), PipelineError> {
        if buf.is_empty() {
            return Ok(());
        }
        let batch = to_batch(buf).map_err(|e| PipelineError::Encode(e.to_string()))?;
        buf.clear();
        rt.block_on(roller.write(committer, &batch))
    }
    for chunk in rx {
        fault::hook(fault, FaultStage::Write, chunk.first, chunk.items.len());
        pending.insert(chunk.first, chunk);
        // A chunk's byte permits are returned when it is dropped here, once its rows are written.
        while let Some(chunk) = pending.remove(&next) {
            let t = Instant::now();
            let n = chunk.items.len() as u64;
            next += n;
            for item in chunk.items {
                match item {
                    Ok(rec) => {
                        stats.labelled += 1;
                        rec_image_bytes += rec.image.as_ref().map_or(0, Vec::len);
                        rec_buf.push(rec);
                    }
                    Err(e) => {
                        stats.errors += 1;
                        *stats.errors_by_reason.entry(e.reason.clone()).or_default() += 1;
                        err_buf.push(e);
                    }
                }
                if rec_buf.len() >= row_group || rec_image_bytes >= ROW_GROUP_IMAGE_BYTES {
                    flush(rt, &mut rec_buf, schemas::records_to_batch, committer, records)?;
                    rec_image_bytes = 0;
                }
                if err_buf.len() >= row_group {
                    flush(rt, &mut err_buf, schemas::errors_to_batch, committer, errors)?;
                }
            }
            clocks["write"].add(t.elapsed());
            progress.advance(n);
        }
    }
    let t = Instant::now();
    flush(rt, &mut rec_buf, schemas::records_to_batch, committer, records)?;
    flush(rt, &mut err_buf, schemas::errors_to_batch, committer, errors)?;
    rt.block_on(async {
        records.finish(committer).await?;
        errors.finish(committer).await
    })?;
    clocks["write"].add(t.elapsed());
    Ok(stats)
}

/// Everything the write stage put, ready to commit.
pub(super) struct Written {
    pub(super) committer: ShardCommitter,
    /// The manifest without its files and attempt (the committer fills those in).
    pub(super) manifest: ShardManifest,
    pub(super) stats: ShardStats,
}
