//! Decode stage: untrusted bytes → RGB (with limits), supervised labels attached, and one resized input per
//! teacher that still has to label the image, on a rayon pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use fast_image_resize::Resizer;
use schemas::{ErrorRecord, ImageRecord, Stage};
use shards::inputs::InputEntry;

use super::fault::{self, Fault, FaultStage};
use super::fetch::Fetched;
use super::records::{error_record, schema_task};
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

/// How the decode stage treats each input.
pub(super) struct DecodeSettings {
    pub(super) limits: DecodeLimits,
    /// Decode JPEGs at reduced scale down to this side (`None`: always full size).
    pub(super) scaled_min_side: Option<u32>,
    pub(super) store_images: bool,
    pub(super) fault: Option<Fault>,
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
    let mut done = 0u64;
    for chunk in rx {
        fault::hook(settings.fault, FaultStage::Decode, chunk.first, chunk.items.len());
        let t = Instant::now();
        let first = chunk.first;
        let items: Vec<Decoded> = pool.install(|| {
            use rayon::prelude::*;
            chunk
                .items
                .into_par_iter()
                .enumerate()
                .map_init(Resizer::new, |resizer, (i, f)| {
                    decode_one(f, first + i as u64, settings, specs, resizer, datasets)
                })
                .collect()
        });
        clocks["decode"].add(t.elapsed());
        done += items.len() as u64;
        if tx.send(Chunk { seq: chunk.seq, first: chunk.first, items }).is_err() {
            break;
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
    let Fetched { entry, uri, bytes, truth } = f;
    let outcome = (|| {
        let bytes = bytes?;
        let decoded = match settings.scaled_min_side {
            Some(side) => decode::decode_scaled(&bytes, &settings.limits, side, side),
            None => decode::decode(&bytes, &settings.limits),
        }
        .map_err(|e| error_record(&entry, &uri, Stage::Decode, e.reason, e.detail))?;
        let mut rec =
            ImageRecord::new(entry.key.clone(), entry.dataset.clone(), uri.clone(), decoded.width, decoded.height);
        rec.image_format = Some(decoded.format.to_owned());
        if let Some(ctx) = datasets.get(&entry.dataset).and_then(|d| d.supervised.as_ref()) {
            let files = match &truth {
                Some(Err(e)) => return Err(e.clone()),
                Some(Ok(files)) => Some(files),
                None => None,
            };
            supervised_labels(&mut rec, &entry, &uri, ctx, files)?;
        }
        if settings.store_images {
            rec.image = Some(bytes.to_vec());
        }
        fault::hook(settings.fault, FaultStage::Prepare, image, 1);
        let inputs = specs
            .iter()
            .map(|spec| {
                rec.source(schema_task(spec.task)).is_none().then(|| TeacherInput::prepare(spec, &decoded.rgb, resizer))
            })
            .collect();
        Ok((decoded, rec, inputs))
    })();
    Decoded { entry, uri, outcome }
}
