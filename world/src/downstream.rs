//! Downstream datasets for transfer experiments: tasks no teacher was trained on, rendered from the
//! shifted [`Domain::Downstream`](crate::Domain::Downstream) world with exact truth.
//!
//! MuST's claim is that the multi-task student's representation transfers; measuring that needs data
//! the student never saw, of tasks it was not trained on, from a shifted distribution. Each task has its
//! own images (the task and split pick a random stream of their own, disjoint from the pre-training
//! splits' and from each other's) and every label is the renderer's truth, never a model's.
//!
//! ```text
//! <root>/downstream.json                        DownstreamManifest, written last (without it the set is incomplete)
//! <root>/<task>/<split>/images/<id>.png         RGB 8-bit PNG; id = six-digit zero-padded index
//! <root>/<task>/<split>/labels/<id>.png         pixel tasks: the label of the image with the same id
//! <root>/<task>/<split>/labels.csv              classification: header `image,label`, rows `000000.png,<class>`
//! ```
//! Tasks (directory names) are `normals`, `segmentation`, `depth` and `nearest_object`; splits are
//! `train`, `val` and `test`. Label encodings:
//! - `normals`: 16-bit RGB PNG, channel `c` = `round((n_c + 1) / 2 · 65535)` of the exact unit normal in
//!   camera coordinates (x right, y down, z forward); `(0, 0, 0)` where there is none (sky, and ground
//!   clamped to `FAR_GROUND_DEPTH`);
//! - `segmentation`: 8-bit grayscale PNG of indices into `SEG_CLASSES`; 255 would mean ignore (the world
//!   has no unknown pixels);
//! - `depth`: 16-bit grayscale PNG of `round(z_depth_m · 1000)` clamped to `1..=65535`; 0 = invalid (sky).
//!   The far ground keeps its clamped depth (59 500), as in the pre-training depth maps;
//! - `nearest_object`: the category (index into `OBJECT_CLASSES`) of the object nearest the camera, by
//!   the `depth` of its box (the billboard plane; the ball's centre), among the objects in the scene's
//!   box list. It asks what *and* how far, a property of the objects rather than of the scene class the
//!   classification teacher learnt. Image `id` is drawn until its nearest object is category `id % 5`
//!   (draw `k` of image `id` is stream index `id · 2¹⁶ + k`), so every image has one and the classes are
//!   exactly balanced over every five consecutive ids, whatever the domain's object mix.
//!
//! Writing goes through `object_store` like [`write_store`](crate::write_store) (local paths and bucket
//! URLs alike) and renders on the rayon pool; the bytes depend only on the config and the counts.

use std::time::Instant;

use image::{ImageBuffer, Rgb, RgbImage};
use serde::{Deserialize, Serialize};
use shards::Location;
use tracing::info;

use crate::codec::{encode_seg_png, png_encoder};
use crate::config::{
    WorldConfig, DEPTH_PNG_SCALE, FAR_GROUND_DEPTH, MAX_DEPTH, MAX_SPLIT_COUNT, OBJECT_CLASSES, SEG_CLASSES,
};
use crate::render::{render_stream, Scene};
use crate::store::{put, render_and_put};
use crate::WorldError;

/// Name of the manifest at the root of a downstream set.
pub const DOWNSTREAM_FILE: &str = "downstream.json";
/// `format` of `downstream.json`.
pub const DOWNSTREAM_FORMAT: &str = "must-downstream";
/// `version` of `downstream.json` and of the layout in the module docs.
pub const DOWNSTREAM_VERSION: u32 = 1;
/// Segmentation label value meaning "ignore" (never written by the world).
pub const SEG_IGNORE: u8 = 255;
/// Draws tried per `nearest_object` image before giving up (each succeeds with probability ≳ 0.05).
pub const NEAREST_OBJECT_DRAWS: u64 = 1 << 16;

/// A downstream task; its name is its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DownstreamTask {
    Normals,
    Segmentation,
    Depth,
    NearestObject,
}

impl DownstreamTask {
    /// All tasks, in the order they are written.
    pub const ALL: [DownstreamTask; 4] =
        [DownstreamTask::Normals, DownstreamTask::Segmentation, DownstreamTask::Depth, DownstreamTask::NearestObject];

    /// The directory name of the task.
    pub fn name(self) -> &'static str {
        match self {
            DownstreamTask::Normals => "normals",
            DownstreamTask::Segmentation => "segmentation",
            DownstreamTask::Depth => "depth",
            DownstreamTask::NearestObject => "nearest_object",
        }
    }

    /// The label kind recorded in `downstream.json`: `normals`, `segmentation`, `depth` or `classification`.
    pub fn kind(self) -> &'static str {
        match self {
            DownstreamTask::NearestObject => "classification",
            other => other.name(),
        }
    }
}

impl std::fmt::Display for DownstreamTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A split of a downstream task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DownstreamSplit {
    Train,
    Val,
    Test,
}

impl DownstreamSplit {
    /// All splits, in the order they are written.
    pub const ALL: [DownstreamSplit; 3] = [DownstreamSplit::Train, DownstreamSplit::Val, DownstreamSplit::Test];

    /// The directory name of the split.
    pub fn name(self) -> &'static str {
        match self {
            DownstreamSplit::Train => "train",
            DownstreamSplit::Val => "val",
            DownstreamSplit::Test => "test",
        }
    }
}

impl std::fmt::Display for DownstreamSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The random stream of a task's split: a tag of its own, unlike every pre-training split's.
pub(crate) fn stream_tag(task: DownstreamTask, split: DownstreamSplit) -> u64 {
    0x6473_7472_6d00_0000 | (task as u64 + 1) << 8 | (split as u64 + 1)
}

/// Images per split of every task (the `splits` object of each task in `downstream.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownstreamCounts {
    pub train: u64,
    pub val: u64,
    pub test: u64,
}

impl Default for DownstreamCounts {
    /// 300 to fine-tune on, 100 to choose with, 500 to report.
    fn default() -> Self {
        Self { train: 300, val: 100, test: 500 }
    }
}

impl DownstreamCounts {
    /// The count of `split`.
    pub fn get(&self, split: DownstreamSplit) -> u64 {
        match split {
            DownstreamSplit::Train => self.train,
            DownstreamSplit::Val => self.val,
            DownstreamSplit::Test => self.test,
        }
    }

    /// Checks every count fits six-digit ids.
    pub fn validate(&self) -> Result<(), WorldError> {
        for split in DownstreamSplit::ALL {
            let count = self.get(split);
            if count > MAX_SPLIT_COUNT {
                return Err(WorldError::Config {
                    reason: format!(
                        "downstream split {split} has {count} images; at most {MAX_SPLIT_COUNT} fit six-digit ids"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Render image `id` of `split` of `task`. Pure: the same arguments always give the same scene.
///
/// The config's domain is used as given (`world downstream` uses [`Domain::Downstream`](crate::Domain::Downstream)). For
/// `nearest_object` the scene is the first draw whose [`nearest_object`] is category `id % 5`; the error
/// (never seen in practice) says when [`NEAREST_OBJECT_DRAWS`] draws all missed.
pub fn render_downstream(
    cfg: &WorldConfig,
    task: DownstreamTask,
    split: DownstreamSplit,
    id: u64,
) -> Result<Scene, WorldError> {
    let tag = stream_tag(task, split);
    if task != DownstreamTask::NearestObject {
        return Ok(render_stream(cfg, tag, id));
    }
    let target = (id % OBJECT_CLASSES.len() as u64) as u8;
    for draw in 0..NEAREST_OBJECT_DRAWS {
        let scene = render_stream(cfg, tag, id * NEAREST_OBJECT_DRAWS + draw);
        if nearest_object(&scene) == Some(target) {
            return Ok(scene);
        }
    }
    Err(WorldError::Render {
        split: format!("{task}/{split}"),
        reason: format!(
            "no draw of image {id} in {NEAREST_OBJECT_DRAWS} has a {} nearest",
            OBJECT_CLASSES[target as usize]
        ),
    })
}

/// The category of the object nearest the camera (smallest box `depth`) among the scene's boxes, or
/// `None` without boxes. Ties go to the first box.
pub fn nearest_object(scene: &Scene) -> Option<u8> {
    scene.boxes.iter().min_by(|a, b| a.depth.total_cmp(&b.depth)).map(|b| b.class_id)
}

/// `<id>.png`: the file name of image `id` (and of its pixel label).
pub fn downstream_name(id: u64) -> String {
    format!("{id:06}.png")
}

/// `<task>/<split>/images/<id>.png`, relative to the root.
pub fn downstream_image_path(task: DownstreamTask, split: DownstreamSplit, id: u64) -> String {
    format!("{task}/{split}/images/{}", downstream_name(id))
}

/// `<task>/<split>/labels/<id>.png`, relative to the root (pixel tasks).
pub fn downstream_label_path(task: DownstreamTask, split: DownstreamSplit, id: u64) -> String {
    format!("{task}/{split}/labels/{}", downstream_name(id))
}

/// `<task>/<split>/labels.csv`, relative to the root (classification).
pub fn downstream_csv_path(task: DownstreamTask, split: DownstreamSplit) -> String {
    format!("{task}/{split}/labels.csv")
}

/// RGB 8-bit PNG of an image.
pub fn encode_rgb_png(image: &RgbImage) -> Result<Vec<u8>, WorldError> {
    let mut out = Vec::new();
    image
        .write_with_encoder(png_encoder(&mut out))
        .map_err(|source| WorldError::Encode { what: "image PNG".to_owned(), source })?;
    Ok(out)
}

/// The depth label value of a pixel: `round(depth · 1000)` clamped to `1..=65535`, 0 on the sky.
pub fn depth_label_value(depth: f32) -> u16 {
    if depth >= MAX_DEPTH {
        0
    } else {
        (depth * DEPTH_PNG_SCALE as f32).round().clamp(1.0, u16::MAX as f32) as u16
    }
}

/// The normal label value of a pixel: `round((n_c + 1) / 2 · 65535)` per channel, `[0, 0, 0]` without one.
pub fn normal_label_value(normal: Option<[f32; 3]>) -> [u16; 3] {
    normal.map_or([0; 3], |n| n.map(|c| ((c + 1.0) / 2.0 * u16::MAX as f32).round().clamp(0.0, u16::MAX as f32) as u16))
}

/// 16-bit grayscale PNG of a scene's depth label (values from [`depth_label_value`]).
pub fn encode_depth_label(scene: &Scene) -> Result<Vec<u8>, WorldError> {
    let values: Vec<u16> = scene.depth.iter().map(|&d| depth_label_value(d)).collect();
    let img: ImageBuffer<image::Luma<u16>, Vec<u16>> = ImageBuffer::from_raw(scene.width(), scene.height(), values)
        .ok_or_else(|| size_error("depth label PNG", scene.depth.len(), scene))?;
    write_png(&img, "depth label PNG")
}

/// 16-bit RGB PNG of a scene's normal label (values from [`normal_label_value`]).
pub fn encode_normals_label(scene: &Scene) -> Result<Vec<u8>, WorldError> {
    let values: Vec<u16> = scene.normals.iter().flat_map(|&n| normal_label_value(n)).collect();
    let img: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_raw(scene.width(), scene.height(), values)
        .ok_or_else(|| size_error("normal label PNG", scene.normals.len(), scene))?;
    write_png(&img, "normal label PNG")
}

fn size_error(what: &str, values: usize, scene: &Scene) -> WorldError {
    WorldError::Truth {
        what: what.to_owned(),
        reason: format!("{values} values for a {}x{} image", scene.width(), scene.height()),
    }
}

fn write_png<P>(img: &ImageBuffer<P, Vec<u16>>, what: &str) -> Result<Vec<u8>, WorldError>
where
    P: image::Pixel<Subpixel = u16> + image::PixelWithColorType,
{
    let mut out = Vec::new();
    img.write_with_encoder(png_encoder(&mut out))
        .map_err(|source| WorldError::Encode { what: what.to_owned(), source })?;
    Ok(out)
}

/// `downstream.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DownstreamManifest {
    /// Always [`DOWNSTREAM_FORMAT`].
    pub format: String,
    pub version: u32,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// [`Domain::name`](crate::Domain::name) of the rendered world.
    pub domain: String,
    /// One sentence describing how the domain differs from the pre-training world.
    pub shift: String,
    pub tasks: DownstreamTasks,
}

/// The `tasks` object of `downstream.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DownstreamTasks {
    pub normals: TaskInfo,
    pub segmentation: TaskInfo,
    pub depth: TaskInfo,
    pub nearest_object: TaskInfo,
}

/// One task of `downstream.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// `normals`, `segmentation`, `depth` or `classification`.
    pub kind: String,
    /// Class names, label value = index (segmentation and classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Segmentation label value meaning "ignore".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<u8>,
    /// Depth label units per metre.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png_scale: Option<u32>,
    /// Depth label value meaning "invalid".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<u16>,
    pub splits: DownstreamCounts,
    /// How the labels are stored, in words.
    pub encoding: String,
}

impl DownstreamManifest {
    /// The manifest of a downstream set with these settings and split sizes.
    pub fn new(cfg: &WorldConfig, counts: &DownstreamCounts) -> Self {
        let names = |list: &[&str]| Some(list.iter().map(|s| s.to_string()).collect());
        let task = |task: DownstreamTask, encoding: String| TaskInfo {
            kind: task.kind().to_owned(),
            classes: None,
            ignore: None,
            png_scale: None,
            invalid: None,
            splits: *counts,
            encoding,
        };
        Self {
            format: DOWNSTREAM_FORMAT.to_owned(),
            version: DOWNSTREAM_VERSION,
            seed: cfg.seed(),
            width: cfg.width(),
            height: cfg.height(),
            domain: cfg.domain().name().to_owned(),
            shift: cfg.domain().shift(),
            tasks: DownstreamTasks {
                normals: task(
                    DownstreamTask::Normals,
                    format!(
                        "labels/<id>.png, 16-bit RGB: channel c = round((n_c + 1) / 2 * 65535) of the unit surface \
                         normal in camera coordinates (x right, y down, z forward); (0, 0, 0) = invalid (sky, and \
                         ground clamped to {FAR_GROUND_DEPTH} m)"
                    ),
                ),
                segmentation: TaskInfo {
                    classes: names(&SEG_CLASSES),
                    ignore: Some(SEG_IGNORE),
                    ..task(
                        DownstreamTask::Segmentation,
                        format!(
                            "labels/<id>.png, 8-bit grayscale: index into classes; {SEG_IGNORE} = ignore (none here)"
                        ),
                    )
                },
                depth: TaskInfo {
                    png_scale: Some(DEPTH_PNG_SCALE),
                    invalid: Some(0),
                    ..task(
                        DownstreamTask::Depth,
                        format!(
                            "labels/<id>.png, 16-bit grayscale: round(z-depth in metres * {DEPTH_PNG_SCALE}) clamped \
                             to 1..=65535; 0 = invalid (sky); ground beyond {FAR_GROUND_DEPTH} m holds {}",
                            depth_label_value(FAR_GROUND_DEPTH)
                        ),
                    )
                },
                nearest_object: TaskInfo {
                    classes: names(&OBJECT_CLASSES),
                    ..task(
                        DownstreamTask::NearestObject,
                        "labels.csv, header image,label: label = index into classes of the object nearest the \
                         camera (smallest z of its billboard plane, the ball's centre) among the scene's boxed \
                         objects; image id shows class id % 5"
                            .to_owned(),
                    )
                },
            },
        }
    }
}

/// What writing one split of one task took.
#[derive(Clone, Debug)]
pub struct DownstreamSplitSummary {
    pub task: DownstreamTask,
    pub split: DownstreamSplit,
    pub images: u64,
    /// Bytes of all files of the split.
    pub bytes: u64,
    pub seconds: f64,
    /// Images per label class (`nearest_object` only), indexed like `OBJECT_CLASSES`.
    pub class_counts: Option<Vec<u64>>,
}

/// What writing a downstream set took.
#[derive(Clone, Debug)]
pub struct DownstreamSummary {
    pub splits: Vec<DownstreamSplitSummary>,
    pub manifest: DownstreamManifest,
    /// Bytes of all files, `downstream.json` included.
    pub bytes: u64,
    pub seconds: f64,
}

/// Render and write every split of every downstream task into `loc`, `downstream.json` last (layout in
/// the module docs). The bytes depend only on `cfg` and `counts`, never on thread counts or timing.
pub async fn write_downstream(
    cfg: &WorldConfig,
    loc: &Location,
    counts: &DownstreamCounts,
) -> Result<DownstreamSummary, WorldError> {
    counts.validate()?;
    let started = Instant::now();
    let mut splits = Vec::with_capacity(DownstreamTask::ALL.len() * DownstreamSplit::ALL.len());
    for task in DownstreamTask::ALL {
        for split in DownstreamSplit::ALL {
            let summary = write_task_split(*cfg, loc, task, split, counts.get(split)).await?;
            info!(task = %task, split = %split, images = summary.images, bytes = summary.bytes, seconds = summary.seconds, "downstream split written");
            splits.push(summary);
        }
    }
    let manifest = DownstreamManifest::new(cfg, counts);
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| WorldError::Json { what: DOWNSTREAM_FILE.to_owned(), source })?;
    let manifest_bytes = put(loc, DOWNSTREAM_FILE.to_owned(), json).await?;
    let bytes = splits.iter().map(|s| s.bytes).sum::<u64>() + manifest_bytes;
    Ok(DownstreamSummary { splits, manifest, bytes, seconds: started.elapsed().as_secs_f64() })
}

async fn write_task_split(
    cfg: WorldConfig,
    loc: &Location,
    task: DownstreamTask,
    split: DownstreamSplit,
    count: u64,
) -> Result<DownstreamSplitSummary, WorldError> {
    let started = Instant::now();
    let (bytes, labels) = render_and_put(loc, &format!("{task}/{split}"), count, move |id| {
        let scene = render_downstream(&cfg, task, split, id)?;
        let mut files = vec![(downstream_image_path(task, split, id), encode_rgb_png(&scene.image)?)];
        let label_png = match task {
            DownstreamTask::Normals => Some(encode_normals_label(&scene)?),
            DownstreamTask::Segmentation => Some(encode_seg_png(&scene.seg, scene.width(), scene.height())?),
            DownstreamTask::Depth => Some(encode_depth_label(&scene)?),
            DownstreamTask::NearestObject => None,
        };
        files.extend(label_png.map(|png| (downstream_label_path(task, split, id), png)));
        Ok((files, nearest_object(&scene)))
    })
    .await?;
    let (mut bytes, mut class_counts) = (bytes, None);
    if task == DownstreamTask::NearestObject {
        let mut csv = String::from("image,label\n");
        let mut counts = vec![0u64; OBJECT_CLASSES.len()];
        for (id, label) in labels.iter().enumerate() {
            // `render_downstream` only returns scenes that have a nearest object.
            let class = label.ok_or_else(|| WorldError::Render {
                split: format!("{task}/{split}"),
                reason: format!("image {id} has no boxed object"),
            })?;
            counts[class as usize] += 1;
            csv.push_str(&format!("{},{class}\n", downstream_name(id as u64)));
        }
        bytes += put(loc, downstream_csv_path(task, split), csv.into_bytes()).await?;
        class_counts = Some(counts);
    }
    Ok(DownstreamSplitSummary {
        task,
        split,
        images: count,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        class_counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Domain, Split};

    #[test]
    fn stream_tags_are_distinct_from_each_other_and_from_the_pretraining_splits() {
        let mut tags: Vec<u64> = Split::ALL.iter().map(|s| s.stream_tag()).collect();
        for task in DownstreamTask::ALL {
            for split in DownstreamSplit::ALL {
                tags.push(stream_tag(task, split));
            }
        }
        let n = tags.len();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), n);
    }

    #[test]
    fn label_values_follow_the_documented_encodings() {
        assert_eq!(depth_label_value(MAX_DEPTH), 0);
        assert_eq!(depth_label_value(FAR_GROUND_DEPTH), 59_500);
        assert_eq!(depth_label_value(3.2114), 3211);
        assert_eq!(depth_label_value(0.0001), 1);
        assert_eq!(normal_label_value(None), [0, 0, 0]);
        assert_eq!(normal_label_value(Some([0.0, -1.0, 0.0])), [32768, 0, 32768]);
        assert_eq!(normal_label_value(Some([1.0, 0.0, -1.0])), [65535, 32768, 0]);
    }

    #[test]
    fn nearest_object_is_the_smallest_box_depth() {
        let cfg = WorldConfig::try_new(4, 64, 64).unwrap().with_domain(Domain::Downstream);
        for id in 0..10 {
            let scene = render_downstream(&cfg, DownstreamTask::NearestObject, DownstreamSplit::Val, id).unwrap();
            let nearest = scene.boxes.iter().fold(None::<&crate::GtBox>, |best, b| match best {
                Some(n) if n.depth <= b.depth => Some(n),
                _ => Some(b),
            });
            assert_eq!(nearest.map(|b| b.class_id), Some((id % 5) as u8), "image {id}");
        }
    }
}
