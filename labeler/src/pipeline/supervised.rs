//! Supervised labels a dataset already has: read next to its images and written into the record, so the
//! teachers only fill the other tasks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use schemas::{ClsLabel, DepthLabel, DetBox, DetLabel, ErrorRecord, ImageRecord, LabelSource, SegLabel, Stage};
use shards::inputs::InputEntry;
use shards::Location;

use super::records::error_record;
use super::PipelineError;
use crate::spec::Task;

/// Everything a dataset brings besides images.
#[derive(Clone)]
pub(super) struct DatasetCtx {
    pub(super) images: Location,
    pub(super) supervised: Option<SupervisedCtx>,
}

#[derive(Clone)]
pub(super) enum SupervisedCtx {
    World { truth: Location, tasks: Vec<Task>, depth_png_scale: f32 },
    Table(Arc<HashMap<String, u16>>),
}

pub(super) fn load_class_table(file: &str, classes: usize) -> Result<HashMap<String, u16>, PipelineError> {
    let bad = |reason: String| PipelineError::Supervised { file: file.to_owned(), reason };
    let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("key")) {
            continue;
        }
        let (key, class) =
            line.rsplit_once(',').ok_or_else(|| bad(format!("line {}: expected `key,class_id`", i + 1)))?;
        let class: u16 =
            class.trim().parse().map_err(|_| bad(format!("line {}: class id {class:?} is not a number", i + 1)))?;
        if class as usize >= classes {
            return Err(bad(format!("line {}: class id {class} is not below the {classes} classes", i + 1)));
        }
        out.insert(key.trim().to_owned(), class);
    }
    Ok(out)
}

/// Build the supervised part of a record.
pub(super) fn supervised_labels(
    rec: &mut ImageRecord,
    f_entry: &InputEntry,
    uri: &str,
    ctx: &SupervisedCtx,
    truth: Option<&[Bytes; 3]>,
    class_counts: &HashMap<Task, usize>,
) -> Result<(), ErrorRecord> {
    let bad = |detail: String| error_record(f_entry, uri, Stage::SupervisedLabel, "invalid_label", detail);
    let one_hot = |class: usize, n: usize| -> Result<Vec<f32>, ErrorRecord> {
        if class >= n {
            return Err(bad(format!("class id {class} is not below the {n} classes")));
        }
        let mut v = vec![0f32; n];
        v[class] = 1.0;
        Ok(v)
    };
    match ctx {
        SupervisedCtx::Table(table) => {
            if let Some(&class) = table.get(&f_entry.key) {
                let n = class_counts[&Task::Classification];
                rec.cls = Some(ClsLabel { source: LabelSource::Supervised, probs: one_hot(class as usize, n)? });
            }
        }
        SupervisedCtx::World { tasks, depth_png_scale, .. } => {
            let [json, seg, depth] = truth.ok_or_else(|| bad("no ground truth fetched".into()))?;
            let t = world::decode_truth(json, seg, depth, *depth_png_scale).map_err(|e| bad(format!("{e:#}")))?;
            if (t.width, t.height) != (rec.width, rec.height) {
                return Err(bad(format!(
                    "ground truth is {}x{} but the image is {}x{}",
                    t.width, t.height, rec.width, rec.height
                )));
            }
            for task in tasks {
                match task {
                    Task::Classification => {
                        let n = class_counts[task];
                        rec.cls = Some(ClsLabel {
                            source: LabelSource::Supervised,
                            probs: one_hot(t.scene_class as usize, n)?,
                        });
                    }
                    Task::Detection => {
                        let n = class_counts[task];
                        let mut boxes = Vec::with_capacity(t.boxes.len());
                        for b in &t.boxes {
                            if b.class_id as usize >= n {
                                return Err(bad(format!("box class {} is not below the {n} classes", b.class_id)));
                            }
                            boxes.push(DetBox {
                                x0: b.x0,
                                y0: b.y0,
                                x1: b.x1,
                                y1: b.y1,
                                class_id: b.class_id as u16,
                                score: 1.0,
                            });
                        }
                        rec.det = Some(DetLabel { source: LabelSource::Supervised, boxes });
                    }
                    Task::Segmentation => {
                        rec.seg = Some(SegLabel {
                            source: LabelSource::Supervised,
                            height: t.height as u16,
                            width: t.width as u16,
                            mask: t.seg.clone(),
                        });
                    }
                    Task::Depth => {
                        rec.depth = Some(DepthLabel {
                            source: LabelSource::Supervised,
                            kind: schemas::DepthKind::Metric,
                            height: t.height as u16,
                            width: t.width as u16,
                            values: t.depth.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// `depth_png_scale` from the `world.json` next to a world truth directory (`<root>/<split>/truth`).
pub(super) fn world_depth_scale(truth_location: &str) -> f32 {
    let path = PathBuf::from(truth_location);
    path.parent()
        .and_then(|p| p.parent())
        .map(|root| root.join("world.json"))
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("depth_png_scale").and_then(|s| s.as_f64()))
        .map(|s| s as f32)
        .unwrap_or(1000.0)
}
