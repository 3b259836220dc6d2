//! Inference stage: each worker owns one session per teacher, normalises a chunk's inputs into batch
//! tensors and runs them. A failed batch becomes error rows for its images; nothing else runs here.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemas::{ErrorRecord, ImageRecord, Stage};
use shards::inputs::InputEntry;
use tracing::warn;

use super::decode::Decoded;
use super::records::{error_record, image_failure_record};
use super::{Chunk, StageClock};
use crate::decode;
use crate::teacher::{RawOutput, Teacher, TeacherInput};

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
    clocks: &BTreeMap<&'static str, StageClock>,
) {
    loop {
        let chunk = match rx.lock().expect("decode queue lock").recv() {
            Ok(c) => c,
            Err(_) => break,
        };
        let t = Instant::now();
        let session_before: f64 = teachers.iter().map(Teacher::session_seconds).sum();
        let items = infer_chunk(&mut teachers, chunk.items);
        clocks["inference"].add(t.elapsed());
        let session_after: f64 = teachers.iter().map(Teacher::session_seconds).sum();
        clocks["session"].add(Duration::from_secs_f64(session_after - session_before));
        if tx.send(Chunk { seq: chunk.seq, items }).is_err() {
            break;
        }
    }
}

/// Run every teacher over the rows of a chunk that need it. Images are dropped once all teachers ran.
pub(super) fn infer_chunk(teachers: &mut [Teacher], items: Vec<Decoded>) -> Vec<Inferred> {
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
        let result = catch_unwind(AssertUnwindSafe(|| teacher.infer(&batch)));
        let failure: Option<(&str, String)> = match result {
            Ok(Ok(raws)) => {
                for (&i, raw) in todo.iter().zip(raws) {
                    let Inferred { entry, uri, outcome } = &mut rows[i];
                    match raw {
                        Ok(raw) => {
                            if let Ok((_, raws)) = outcome {
                                raws[t] = Some(raw);
                            }
                        }
                        Err(f) => *outcome = Err(image_failure_record(entry, uri, &name, f)),
                    }
                }
                None
            }
            Ok(Err(e)) => {
                warn!(teacher = %name, error = %e, "a batch failed in inference; its images become error rows");
                Some(("inference_failed", e.to_string()))
            }
            Err(_) => Some(("panic", format!("teacher {name:?} panicked"))),
        };
        if let Some((reason, detail)) = failure {
            for &i in &todo {
                let Inferred { entry, uri, outcome } = &mut rows[i];
                *outcome = Err(error_record(entry, uri, Stage::Inference, reason, detail.clone()));
            }
        }
    }
    rows
}
