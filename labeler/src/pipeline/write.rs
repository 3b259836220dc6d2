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
use super::records::schema_task;
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
    let mut records =
        FileRoller::new(schemas::image_schema(), record_props, cfg.run.file_rows as u64, cfg.run.file_bytes);
    let mut errors =
        FileRoller::new(schemas::error_schema(), error_props, cfg.run.file_rows as u64, cfg.run.file_bytes);
    let mut committer = rt.block_on(ShardCommitter::leased(out.clone(), shard, attempt, cfg.lease_ttl()))?;
    let mut stats = ShardStats::default();
    let mut pending: BTreeMap<u64, Vec<Result<ImageRecord, ErrorRecord>>> = BTreeMap::new();
    let mut next = 0u64;
    let mut rec_buf: Vec<ImageRecord> = Vec::new();
    let mut err_buf: Vec<ErrorRecord> = Vec::new();
    let row_group = cfg.run.row_group_rows;
    let put = |committer: &mut ShardCommitter, files: Vec<(Vec<u8>, u64)>, kind: &str| -> Result<(), PipelineError> {
        for (bytes, rows) in files {
            rt.block_on(committer.put_file(kind, bytes, rows))?;
        }
        Ok(())
    };
    let flush_records =
        |buf: &mut Vec<ImageRecord>, roller: &mut FileRoller| -> Result<Vec<(Vec<u8>, u64)>, PipelineError> {
            if buf.is_empty() {
                return Ok(Vec::new());
            }
            let batch = schemas::records_to_batch(buf).map_err(|e| PipelineError::Encode(e.to_string()))?;
            buf.clear();
            roller.write(&batch)
        };
    for chunk in rx {
        fault::hook(fault, FaultStage::Write, chunk.first, chunk.items.len());
        pending.insert(chunk.seq, chunk.items);
        while let Some(items) = pending.remove(&next) {
            next += 1;
            let t = Instant::now();
            let n = items.len() as u64;
            for item in items {
                match item {
                    Ok(rec) => {
                        stats.labelled += 1;
                        rec_buf.push(rec);
                    }
                    Err(e) => {
                        stats.errors += 1;
                        *stats.errors_by_reason.entry(e.reason.clone()).or_default() += 1;
                        err_buf.push(e);
                    }
                }
                if rec_buf.len() >= row_group {
                    let f = flush_records(&mut rec_buf, &mut records)?;
                    put(&mut committer, f, "records")?;
                }
            }
            clocks["write"].add(t.elapsed());
            progress.advance(n);
        }
    }
    let t = Instant::now();
    let f = flush_records(&mut rec_buf, &mut records)?;
    put(&mut committer, f, "records")?;
    let f = records.finish()?;
    put(&mut committer, f.into_iter().collect(), "records")?;
    // The errors file is always written (possibly empty) so every shard has the same shape.
    let batch = schemas::errors_to_batch(&err_buf).map_err(|e| PipelineError::Encode(e.to_string()))?;
    let f = errors.write(&batch)?;
    put(&mut committer, f, "errors")?;
    let f = errors.finish()?;
    put(&mut committer, f.into_iter().collect(), "errors")?;
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
            .map(|(spec, sha)| ManifestTeacher {
                name: spec.name.clone(),
                task: schema_task(spec.task),
                model_sha256: sha.clone(),
            })
            .collect(),
        ..Default::default()
    };
    clocks["write"].add(t.elapsed());
    Ok(Written { committer, manifest, stats })
}

/// Everything the write stage put, ready to commit.
pub(super) struct Written {
    pub(super) committer: ShardCommitter,
    /// The manifest without its files and attempt (the committer fills those in).
    pub(super) manifest: ShardManifest,
    pub(super) stats: ShardStats,
}
