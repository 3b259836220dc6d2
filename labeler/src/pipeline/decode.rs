//! Decode stage: untrusted bytes → RGB (with limits), supervised labels attached, and one resized input per
//! teacher that still has to label the image, on a rayon pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use fast_image_resize::Resizer;
use schemas::{ErrorRecord, ImageRecord, Stage};
use shards::inputs::InputEntry;

use super::budget::{cut, ByteBudget};
use super::fault::{self, Fault, FaultStage};
use super::fetch::Fetched;
use super::records::error_record;
use super::supervised::{supervised_labels, DatasetCtx};
use super::{Chunk, StageClock};
use crate::config::LabelConfig;
use crate::decode::{self, DecodeLimits};
use crate::spec::TeacherSpec;
use crate::teacher::TeacherInput;

/// The smallest image side every teacher's largest input still needs, so a JPEG may be decoded at reduced
/// scale down to it; `None` when some teacher takes the image at its own size (no reduction is safe).
pub fn scaled_decode_min_side(cfg: &LabelConfig) -> Option<u32> {
    let mut side = 0u32;
    for t in &cfg.teachers {
        if t.spec.resize == crate::spec::Resize::Original {
            return None;
        }
        let scale = t.spec.scales.iter().copied().fold(1.0f32, f32::max);
        side = side.max(((t.spec.input_size[0].max(t.spec.input_size[1]) as f32) * scale).ceil() as u32);
    }
    Some(side)
}

/// One decoded input, resized for every teacher that still has to label it.
pub(super) struct Decoded {
    pub(super) entry: InputEntry,
    pub(super) uri: String,
    pub(super) outcome: Result<(decode::DecodedImage, ImageRecord, Vec<Option<TeacherInput>>), ErrorRecord>,
}

/// Bytes of resized teacher inputs one image needs (an input at the image's own size counts as the image).
fn teacher_input_bytes(specs: &[TeacherSpec]) -> u64 {
    specs
        .iter()
        .filter(|s| s.resize != crate::spec::Resize::Original)
        .map(|s| {
            let area = s.input_size[0] as f64 * s.input_size[1] as f64 * 3.0;
            s.scales.iter().map(|&k| area * (k as f64) * (k as f64)).sum::<f64>() as u64
        })
        .sum()
}

/// How the decode stage treats each input.
pub(super) struct DecodeSettings {
    pub(super) limits: DecodeLimits,
    /// Decode JPEGs at reduced scale down to this side (`None`: always full size).
    pub(super) scaled_min_side: Option<u32>,
    pub(super) store_images: bool,
    pub(super) fault: Option<Fault>,
    /// Decoded pixels (and resized teacher inputs) the stages after decoding may hold at once.
    pub(super) budget: Arc<ByteBudget>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn decode_stage(
    rx: Receiver<Chunk<Fetched>>,
    tx: SyncSender<Chunk<Decoded>>,
    threads: usize,
    settings: &DecodeSettings,
    specs: &[TeacherSpec],
    datasets: &HashMap<String, DatasetCtx>,
    clocks: &BTreeMap<&'static str, StageClock>,
) -> u64 {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("decode thread pool");
    let per_image_inputs = teacher_input_bytes(specs);
    let part_bytes = (settings.budget.capacity() / 4).max(1);
    let mut done = 0u64;
    for chunk in rx {
        fault::hook(settings.fault, FaultStage::Decode, chunk.first, chunk.items.len());
        // Decode in parts whose pixels fit a quarter of the budget, each holding its bytes before it is
        // decoded: sizes come from the image headers, so a run of large images cannot all be decoded at once.
        let sizes: Vec<u64> = chunk
            .items
            .iter()
            .map(|f| f.bytes.as_ref().map_or(0, |b| decode::decoded_size_hint(b) + per_image_inputs))
            .collect();
        let parts = cut(&sizes, usize::MAX, part_bytes);
        // The encoded bytes stay held only when the records carry them to the writer; then the last part
        // holds them, so they are returned once the whole chunk is written.
        let mut fetched_permits = if settings.store_images { chunk.permits } else { Vec::new() };
        let mut items = chunk.items.into_iter();
        let last = parts.len().saturating_sub(1);
        for (p, range) in parts.into_iter().enumerate() {
            let permit = settings.budget.acquire(sizes[range.clone()].iter().sum());
            let first = chunk.first + range.start as u64;
            let part: Vec<Fetched> = items.by_ref().take(range.len()).collect();
            let t = Instant::now();
            let decoded: Vec<Decoded> = pool.install(|| {
                use rayon::prelude::*;
                part.into_par_iter()
                    .enumerate()
                    .map_init(Resizer::new, |resizer, (i, f)| {
                        decode_one(f, first + i as u64, settings, specs, resizer, datasets)
                    })
                    .collect()
            });
            clocks["decode"].add(t.elapsed());
            done += decoded.len() as u64;
            let mut permits = vec![permit];
            if p == last {
                permits.append(&mut fetched_permits);
            }
            if tx.send(Chunk { first, items: decoded, permits }).is_err() {
                return done;
            }
        }
    }
    done
}

/// Decode one input, attach its supervised labels, and resize it for every teacher whose task it still lacks.
pub(super) fn decode_one(
    f: Fetched,
    image: u64,
    settings: &DecodeSettings,
    specs: &[TeacherSpec],
    resizer: &mut Resizer,
    datasets: &HashMap<String, DatasetCtx>,
) -> Decoded {
    let Fetched { entry, uri, bytes, truth, origin, side } = f;
    // A packed sample's errors say where its bytes are.
    let detail = |d: String| match &origin {
        Some(o) => format!("{o}: {d}"),
        None => d,
    };
    let outcome = (|| {
        let bytes = bytes?;
        let decoded = match settings.scaled_min_side {
            Some(side) => decode::decode_scaled(&bytes, &settings.limits, side, side),
            None => decode::decode(&bytes, &settings.limits),
        }
        .map_err(|e| error_record(&entry, &uri, Stage::Decode, e.reason, detail(e.detail)))?;
        let mut rec =
            ImageRecord::new(entry.key.clone(), entry.dataset.clone(), uri.clone(), decoded.width, decoded.height);
        rec.image_format = Some(decoded.format.to_owned());
        if let Some(ctx) = datasets.get(&entry.dataset).and_then(|d| d.supervised.as_ref()) {
            let files = match &truth {
                Some(Err(e)) => return Err(e.clone()),
                Some(Ok(files)) => Some(files),
                None => None,
            };
            supervised_labels(&mut rec, &entry, &uri, ctx, files, Some(&side))?;
        }
        if settings.store_images {
            rec.image = Some(bytes.to_vec());
        }
        fault::hook(settings.fault, FaultStage::Prepare, image, 1);
        let mut shared = crate::preprocess::SharedResizes::default();
        let inputs = specs
            .iter()
            .map(|spec| {
                rec.source(spec.task)
                    .is_none()
                    .then(|| TeacherInput::prepare_shared(spec, &decoded.rgb, resizer, &mut shared))
            })
            .collect();
        Ok((decoded, rec, inputs))
    })();
    Decoded { entry, uri, outcome }
}
