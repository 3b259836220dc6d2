//! Post-processing stage: raw teacher outputs → pseudo labels (softmax, thresholds, boxes, masks, depth),
//! validated records, on a rayon pool off the inference workers.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use schemas::{ErrorRecord, ImageRecord, Stage};

use super::fault::{self, Fault, FaultStage};
use super::infer::Inferred;
use super::records::{apply_prediction, error_record, image_failure_record};
use super::{Chunk, StageClock};
use crate::spec::TeacherSpec;
use crate::teacher::Teacher;

pub(super) fn postprocess_stage(
    rx: Receiver<Chunk<Inferred>>,
    tx: SyncSender<Chunk<Result<ImageRecord, ErrorRecord>>>,
    threads: usize,
    specs: &[TeacherSpec],
    fault: Option<Fault>,
    clocks: &BTreeMap<&'static str, StageClock>,
) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("post-processing thread pool");
    for chunk in rx {
        fault::hook(fault, FaultStage::Postprocess, chunk.first, chunk.items.len());
        let t = Instant::now();
        let items: Vec<Result<ImageRecord, ErrorRecord>> = pool.install(|| {
            use rayon::prelude::*;
            chunk.items.into_par_iter().map(|item| finish_one(item, specs)).collect()
        });
        clocks["postprocess"].add(t.elapsed());
        if tx.send(Chunk { first: chunk.first, items, permits: chunk.permits }).is_err() {
            break;
        }
    }
}

/// Turn one row's raw outputs into pseudo labels. A panic or a record that does not validate becomes an
/// error row, never a bad row in a shard.
pub(super) fn finish_one(item: Inferred, specs: &[TeacherSpec]) -> Result<ImageRecord, ErrorRecord> {
    let Inferred { entry, uri, outcome } = item;
    let (mut rec, raws) = outcome?;
    for (spec, raw) in specs.iter().zip(raws) {
        let Some(raw) = raw else { continue };
        match catch_unwind(AssertUnwindSafe(|| Teacher::finish(spec, raw))) {
            Ok(Ok(pred)) => apply_prediction(&mut rec, spec, pred),
            Ok(Err(f)) => return Err(image_failure_record(&entry, &uri, &spec.name, f)),
            Err(_) => {
                let detail = format!("teacher {:?} panicked in post-processing", spec.name);
                return Err(error_record(&entry, &uri, Stage::Postprocess, "panic", detail));
            }
        }
    }
    rec.validate().map_err(|e| error_record(&entry, &uri, Stage::Postprocess, "invalid_output", e.to_string()))?;
    Ok(rec)
}
