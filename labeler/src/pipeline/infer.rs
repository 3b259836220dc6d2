//! Inference stage: each worker owns one session per teacher, normalises a chunk's inputs into batch
//! tensors and runs them. A failed run is retried, then split to find the images that fail alone: those
//! become error rows; if every image fails alone, the runtime is at fault and the attempt fails.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use image::RgbImage;
use std::time::{Duration, Instant};

use schemas::{ErrorRecord, ImageRecord, Stage};
use shards::inputs::InputEntry;
use tracing::warn;

use super::decode::Decoded;
use super::fault::{self, Fault, FaultStage};
use super::records::{error_record, image_failure_record};
use super::{Chunk, PipelineError, StageClock};
use crate::decode;
use crate::teacher::{ImageFailure, RawOutput, Teacher, TeacherInput};

/// One input after inference: its record so far and each teacher's raw outputs (`None`: not needed).
pub(super) struct Inferred {
    pub(super) entry: InputEntry,
    pub(super) uri: String,
    pub(super) outcome: Result<(ImageRecord, Vec<Option<RawOutput>>), ErrorRecord>,
}

pub(super) fn inference_stage(
    mut teachers: Vec<Teacher>,
    rx: Arc<Mutex<Receiver<Chunk<Decoded>>>>,
    tx: SyncSender<Chunk<Inferred>>,
    fault: Option<Fault>,
    clocks: &BTreeMap<&'static str, StageClock>,
) -> Result<(), PipelineError> {
    loop {
        let chunk = match rx.lock().expect("decode queue lock").recv() {
            Ok(c) => c,
            Err(_) => break,
        };
        fault::hook(fault, FaultStage::Inference, chunk.first, chunk.items.len());
        let t = Instant::now();
        let session_before: f64 = teachers.iter().map(Teacher::session_seconds).sum();
        let items = infer_chunk(&mut teachers, chunk.items)?;
        clocks["inference"].add(t.elapsed());
        let session_after: f64 = teachers.iter().map(Teacher::session_seconds).sum();
        clocks["session"].add(Duration::from_secs_f64(session_after - session_before));
        if tx.send(Chunk { first: chunk.first, items, permits: chunk.permits }).is_err() {
            break;
        }
    }
    Ok(())
}

/// Run every teacher over the rows of a chunk that need it. Images are dropped once all teachers ran.
pub(super) fn infer_chunk(teachers: &mut [Teacher], items: Vec<Decoded>) -> Result<Vec<Inferred>, PipelineError> {
    let n_teachers = teachers.len();
    let mut rows: Vec<Inferred> = Vec::with_capacity(items.len());
    let mut images: Vec<Option<(decode::DecodedImage, Vec<Option<TeacherInput>>)>> = Vec::with_capacity(items.len());
    for d in items {
        match d.outcome {
            Ok((img, rec, inputs)) => {
                let outcome = Ok((rec, (0..n_teachers).map(|_| None).collect()));
                rows.push(Inferred { entry: d.entry, uri: d.uri, outcome });
                images.push(Some((img, inputs)));
            }
            Err(e) => {
                rows.push(Inferred { entry: d.entry, uri: d.uri, outcome: Err(e) });
                images.push(None);
            }
        }
    }
    for (t, teacher) in teachers.iter_mut().enumerate() {
        let todo: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].outcome.is_ok() && images[i].as_ref().is_some_and(|(_, inputs)| inputs[t].is_some()))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let batch: Vec<(&image::RgbImage, &TeacherInput)> = todo
            .iter()
            .map(|&i| {
                let (img, inputs) = images[i].as_ref().expect("decoded");
                (&img.rgb, inputs[t].as_ref().expect("needed"))
            })
            .collect();
        let name = teacher.spec().name.clone();
        let outcomes = run_isolating(teacher, &batch);
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        if failed == todo.len() && failed > 1 {
            // Every image failed even alone: the runtime is broken, not the images.
            let detail = outcomes.into_iter().find_map(Result::err).unwrap_or_default();
            return Err(PipelineError::Inference { teacher: name, images: failed, detail });
        }
        for (&i, outcome) in todo.iter().zip(outcomes) {
            let Inferred { entry, uri, outcome: row } = &mut rows[i];
            match outcome {
                Ok(Ok(raw)) => {
                    if let Ok((_, raws)) = row {
                        raws[t] = Some(raw);
                    }
                }
                Ok(Err(f)) => *row = Err(image_failure_record(entry, uri, &name, f)),
                Err(detail) => {
                    warn!(teacher = %name, key = %entry.key, error = %detail, "inference fails on this image alone");
                    *row = Err(error_record(entry, uri, Stage::Inference, "inference_failed", detail));
                }
            }
        }
    }
    Ok(rows)
}

/// One image's result from [`run_isolating`]: the teacher's own per-image outcome, or why the model run
/// failed with this image alone in the batch.
type Isolated = Result<Result<RawOutput, ImageFailure>, String>;

/// Run `teacher` over `batch`, isolating failures: a failed run (error or panic) is retried once, then the
/// batch is split in halves until each failure is pinned on single images, so one bad image costs only
/// its own row and a passing glitch costs nothing.
fn run_isolating(teacher: &mut Teacher, batch: &[(&RgbImage, &TeacherInput)]) -> Vec<Isolated> {
    let mut last = String::new();
    for _ in 0..2 {
        match catch_unwind(AssertUnwindSafe(|| teacher.infer(batch))) {
            Ok(Ok(raws)) if raws.len() == batch.len() => return raws.into_iter().map(Ok).collect(),
            Ok(Ok(raws)) => last = format!("the teacher returned {} results for {} images", raws.len(), batch.len()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("teacher {:?} panicked", teacher.spec().name),
        }
        warn!(teacher = %teacher.spec().name, images = batch.len(), error = %last, "a model run failed");
    }
    if batch.len() == 1 {
        return vec![Err(last)];
    }
    let (a, b) = batch.split_at(batch.len() / 2);
    let mut out = run_isolating(teacher, a);
    out.extend(run_isolating(teacher, b));
    out
}
