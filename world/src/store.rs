//! The layout of a world store, and writing and reading it through any `object_store`.
//!
//! ```text
//! <root>/world.json                    WorldManifest: seed, size, class lists, depth encoding, split sizes
//! <root>/<split>/images/<id>.jpg       id = six-digit index; index % 4 == 3 is .png instead
//! <root>/<split>/labels.csv            `key,class`: image file name, scene class name (header line first)
//! <root>/<split>/instances.json        COCO instances: images by file name, boxes in pixels, object classes
//! <root>/<split>/seg/<id>.png          8-bit gray, seg class per pixel
//! <root>/<split>/depth/<id>.png        16-bit gray, round(depth_m * depth_png_scale) clamped to 65535
//! <root>/<split>/truth/<id>.json       TruthRecord: scene class, size, intrinsics, boxes (normalised)
//! ```
//!
//! The labels are in the formats people keep labels in (a class CSV, COCO JSON, PNG masks and 16-bit
//! depth PNGs; a labeler reads depth with `scale = 1 / depth_png_scale` metres per unit), so the demo labels
//! the world the way users label their own images; `truth/` keeps what only the world knows (the camera).
//! Other crates and the Python teacher script read exactly this layout, so it only changes with
//! `version`. Every split has full truth; `labelled_tasks` says which of it a split may be *trained*
//! on (pool and eval truth exist for measuring). `world.json` is written last, so a store without it
//! is incomplete. Rewriting into a used location overwrites files but does not delete extra ones
//! from an earlier, larger world: readers go by the counts in `world.json`.

use std::time::Instant;

use futures::TryStreamExt;
use object_store::{GetOptions, PutOptions, PutPayload};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use shards::Location;
use tracing::{debug, info};

use crate::codec::{decode_truth, encode_scene, ImageKind, Truth};
use crate::config::{
    Domain, Split, SplitCounts, WorldConfig, DEPTH_PNG_SCALE, MAX_DEPTH, OBJECT_CLASSES, SCENE_CLASSES, SEG_CLASSES,
};
use crate::labels::{encode_class_csv, encode_coco};
use crate::render::render;
use crate::WorldError;

/// Name of the manifest at the root of a store.
pub const MANIFEST_FILE: &str = "world.json";
/// Layout version written into `world.json` (2: labels in standard formats instead of sidecars).
pub const STORE_VERSION: u32 = 2;

/// Scenes rendered per rayon batch; two batches are in flight ahead of the writer.
const BATCH: u64 = 64;
/// Concurrent puts to the store.
const PUT_CONCURRENCY: usize = 32;

/// `world.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldManifest {
    pub version: u32,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub scene_classes: Vec<String>,
    pub object_classes: Vec<String>,
    pub seg_classes: Vec<String>,
    /// Depth of the sky in metres.
    pub max_depth: f32,
    /// Depth PNG value per metre.
    pub depth_png_scale: u32,
    pub splits: SplitTable,
}

/// The `splits` object of `world.json`, one entry per split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitTable {
    pub cls: SplitInfo,
    pub det: SplitInfo,
    pub seg: SplitInfo,
    pub depth: SplitInfo,
    pub pool: SplitInfo,
    pub eval: SplitInfo,
}

/// Size of one split and the tasks its truth may be trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub count: u64,
    pub labelled_tasks: Vec<String>,
}

impl WorldManifest {
    /// The manifest of a world with these settings and split sizes.
    pub fn new(cfg: &WorldConfig, counts: &SplitCounts) -> Self {
        let info = |split: Split| SplitInfo {
            count: counts.get(split),
            labelled_tasks: split.labelled_tasks().iter().map(|t| t.to_string()).collect(),
        };
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Self {
            version: STORE_VERSION,
            seed: cfg.seed(),
            width: cfg.width(),
            height: cfg.height(),
            scene_classes: names(&SCENE_CLASSES),
            object_classes: names(&OBJECT_CLASSES),
            seg_classes: names(&SEG_CLASSES),
            max_depth: MAX_DEPTH,
            depth_png_scale: DEPTH_PNG_SCALE,
            splits: SplitTable {
                cls: info(Split::Cls),
                det: info(Split::Det),
                seg: info(Split::Seg),
                depth: info(Split::Depth),
                pool: info(Split::Pool),
                eval: info(Split::Eval),
            },
        }
    }

    /// The entry of `split`.
    pub fn split(&self, split: Split) -> &SplitInfo {
        let t = &self.splits;
        match split {
            Split::Cls => &t.cls,
            Split::Det => &t.det,
            Split::Seg => &t.seg,
            Split::Depth => &t.depth,
            Split::Pool => &t.pool,
            Split::Eval => &t.eval,
        }
    }

    /// How many images each split holds.
    pub fn split_counts(&self) -> SplitCounts {
        let count = |split| self.split(split).count;
        SplitCounts {
            cls: count(Split::Cls),
            det: count(Split::Det),
            seg: count(Split::Seg),
            depth: count(Split::Depth),
            pool: count(Split::Pool),
            eval: count(Split::Eval),
        }
    }

    /// The config that rendered this world (to re-render a scene exactly).
    pub fn config(&self) -> Result<WorldConfig, WorldError> {
        WorldConfig::try_new(self.seed, self.width, self.height)
    }
}

/// `<id>.jpg|png`: the image's file name, its key under `<split>/images`.
pub fn image_name(index: u64) -> String {
    format!("{index:06}.{}", ImageKind::of_index(index).extension())
}

/// `<split>/images/<id>.jpg|png`, relative to the store root.
pub fn image_path(split: Split, index: u64) -> String {
    format!("{split}/images/{}", image_name(index))
}

/// `<split>/truth/<id>.json`.
pub fn truth_path(split: Split, index: u64) -> String {
    format!("{split}/truth/{index:06}.json")
}

/// `<split>/seg/<id>.png`.
pub fn seg_path(split: Split, index: u64) -> String {
    format!("{split}/seg/{index:06}.png")
}

/// `<split>/depth/<id>.png`.
pub fn depth_path(split: Split, index: u64) -> String {
    format!("{split}/depth/{index:06}.png")
}

/// `<split>/labels.csv`: the scene class of every image.
pub fn class_csv_path(split: Split) -> String {
    format!("{split}/labels.csv")
}

/// `<split>/instances.json`: the boxes of every image, COCO style.
pub fn coco_path(split: Split) -> String {
    format!("{split}/instances.json")
}

/// What writing one split took.
#[derive(Clone, Debug)]
pub struct SplitSummary {
    pub split: Split,
    pub images: u64,
    /// Bytes of all files of the split (images and truth).
    pub bytes: u64,
    /// Bytes of the images alone.
    pub image_bytes: u64,
    pub seconds: f64,
}

/// What writing a store took.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    pub splits: Vec<SplitSummary>,
    pub manifest: WorldManifest,
    /// Bytes of all files, `world.json` included.
    pub bytes: u64,
    pub seconds: f64,
}

/// Render and write a whole world into `loc`, `world.json` last. Scenes are rendered and encoded on
/// the rayon pool; puts run concurrently on the async runtime. The bytes depend only on `cfg` and
/// `counts`, never on thread counts or timing.
///
/// A store holds the pre-training world only (`world.json` records no domain): a config in another
/// [`Domain`] is an error; downstream data is written by [`write_downstream`](crate::write_downstream).
pub async fn write_store(cfg: &WorldConfig, loc: &Location, counts: &SplitCounts) -> Result<WriteSummary, WorldError> {
    if cfg.domain() != Domain::Pretrain {
        return Err(WorldError::Config {
            reason: format!(
                "a world store holds the pre-training world, not the {} domain (use write_downstream)",
                cfg.domain()
            ),
        });
    }
    counts.validate()?;
    let started = Instant::now();
    let mut splits = Vec::with_capacity(Split::ALL.len());
    for split in Split::ALL {
        let summary = write_split(*cfg, loc, split, counts.get(split)).await?;
        info!(
            split = %split,
            images = summary.images,
            bytes = summary.bytes,
            seconds = summary.seconds,
            "split written"
        );
        splits.push(summary);
    }
    let manifest = WorldManifest::new(cfg, counts);
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| WorldError::Json { what: MANIFEST_FILE.to_owned(), source })?;
    let manifest_bytes = put(loc, MANIFEST_FILE.to_owned(), json).await?;
    let bytes = splits.iter().map(|s| s.bytes).sum::<u64>() + manifest_bytes;
    Ok(WriteSummary { splits, manifest, bytes, seconds: started.elapsed().as_secs_f64() })
}

async fn write_split(cfg: WorldConfig, loc: &Location, split: Split, count: u64) -> Result<SplitSummary, WorldError> {
    let started = Instant::now();
    // Per scene: image bytes, scene class and boxes, in index order, for the split-wide label files.
    let (bytes, kept) = render_and_put(loc, split.name(), count, move |index| {
        let enc = encode_scene(&render(&cfg, split, index), index)?;
        let image_bytes = enc.image.len() as u64;
        let files = vec![
            (image_path(split, index), enc.image),
            (truth_path(split, index), enc.truth_json),
            (seg_path(split, index), enc.seg_png),
            (depth_path(split, index), enc.depth_png),
        ];
        Ok((files, (image_bytes, enc.record.scene_class, enc.record.boxes)))
    })
    .await?;
    let image_bytes = kept.iter().map(|(n, _, _)| n).sum();
    let names: Vec<String> = (0..count).map(image_name).collect();
    let csv = encode_class_csv(names.iter().zip(&kept).map(|(name, (_, class, _))| (name.as_str(), *class)));
    let coco = encode_coco(
        cfg.width(),
        cfg.height(),
        names
            .iter()
            .zip(&kept)
            .enumerate()
            .map(|(index, (name, (_, _, boxes)))| (index as u64, name.as_str(), boxes.as_slice())),
    )?;
    let bytes = bytes + put(loc, class_csv_path(split), csv).await? + put(loc, coco_path(split), coco).await?;
    Ok(SplitSummary { split, images: count, bytes, image_bytes, seconds: started.elapsed().as_secs_f64() })
}

/// What rendering one item gives: its files (path relative to the root, bytes) and what the caller keeps.
pub(crate) type Rendered<T> = (Vec<(String, Vec<u8>)>, T);

/// Renders items `0..count` with `render_one` on the rayon pool and puts their files into `loc`
/// concurrently; returns the bytes put and what each item kept, in index order. `what` names the set
/// in errors and logs.
pub(crate) async fn render_and_put<T, F>(
    loc: &Location,
    what: &str,
    count: u64,
    render_one: F,
) -> Result<(u64, Vec<T>), WorldError>
where
    T: Send + 'static,
    F: Fn(u64) -> Result<Rendered<T>, WorldError> + Send + Sync + 'static,
{
    // Rendering runs on a blocking thread feeding rayon; a bounded channel keeps it at most two
    // batches ahead of the writer, so memory stays flat for any count.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<Rendered<T>>, WorldError>>(2);
    let name = what.to_owned();
    let producer = tokio::task::spawn_blocking(move || {
        let mut start = 0;
        while start < count {
            let end = (start + BATCH).min(count);
            let batch: Result<Vec<Rendered<T>>, WorldError> = (start..end).into_par_iter().map(&render_one).collect();
            let failed = batch.is_err();
            if tx.blocking_send(batch).is_err() || failed {
                return;
            }
            debug!(set = %name, done = end, count, "batch rendered");
            start = end;
        }
    });

    let mut kept: Vec<T> = Vec::with_capacity(count as usize);
    let files = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|batch| (batch, rx)) })
        .map_ok(|batch| {
            let mut files: Vec<Result<(String, Vec<u8>), WorldError>> = Vec::with_capacity(batch.len() * 4);
            for (item_files, item) in batch {
                kept.push(item);
                files.extend(item_files.into_iter().map(Ok));
            }
            futures::stream::iter(files)
        })
        .try_flatten();
    let bytes = files
        .map_ok(|(path, data)| put(loc, path, data))
        .try_buffer_unordered(PUT_CONCURRENCY)
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await;
    // Join the producer before reporting, so a render panic is reported as such.
    let joined = producer.await;
    let bytes = bytes?;
    joined.map_err(|e| WorldError::Render { split: what.to_owned(), reason: e.to_string() })?;
    if kept.len() as u64 != count {
        return Err(WorldError::Render {
            split: what.to_owned(),
            reason: format!("{} of {count} scenes arrived", kept.len()),
        });
    }
    Ok((bytes, kept))
}

pub(crate) async fn put(loc: &Location, relative: String, data: Vec<u8>) -> Result<u64, WorldError> {
    let path = loc.child(&relative);
    let len = data.len() as u64;
    loc.store
        .put_opts(&path, PutPayload::from(data), PutOptions::default())
        .await
        .map_err(|source| WorldError::Put { path: loc.uri_of(&path), source })?;
    Ok(len)
}

async fn get(loc: &Location, relative: &str) -> Result<bytes::Bytes, WorldError> {
    let path = loc.child(relative);
    let err = |source| WorldError::Get { path: loc.uri_of(&path), source };
    let result = loc.store.get_opts(&path, GetOptions::default()).await.map_err(err)?;
    result.bytes().await.map_err(err)
}

/// Read and parse `world.json`.
pub async fn read_manifest(loc: &Location) -> Result<WorldManifest, WorldError> {
    let bytes = get(loc, MANIFEST_FILE).await?;
    serde_json::from_slice(&bytes)
        .map_err(|source| WorldError::Json { what: loc.uri_of(&loc.child(MANIFEST_FILE)), source })
}

/// Read and decode the truth of scene `index` of `split`.
pub async fn read_truth(
    loc: &Location,
    manifest: &WorldManifest,
    split: Split,
    index: u64,
) -> Result<Truth, WorldError> {
    let (json_path, seg_png_path, depth_png_path) =
        (truth_path(split, index), seg_path(split, index), depth_path(split, index));
    let (json, seg, depth) =
        futures::try_join!(get(loc, &json_path), get(loc, &seg_png_path), get(loc, &depth_png_path))?;
    decode_truth(&json, &seg, &depth, manifest.depth_png_scale as f32).map_err(|e| match e {
        WorldError::Truth { what, reason } => {
            WorldError::Truth { what: format!("{what} of {}", loc.uri_of(&loc.child(&json_path))), reason }
        }
        other => other,
    })
}

/// Read the stored image bytes of scene `index` of `split`.
pub async fn read_image(loc: &Location, split: Split, index: u64) -> Result<bytes::Bytes, WorldError> {
    get(loc, &image_path(split, index)).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::ObjectStore;

    use super::*;

    fn small_counts() -> SplitCounts {
        SplitCounts { cls: 5, det: 4, seg: 3, depth: 3, pool: 6, eval: 2 }
    }

    async fn all_files(loc: &Location) -> BTreeMap<String, Vec<u8>> {
        let listed: Vec<_> = loc.store.list(Some(&loc.prefix)).try_collect().await.unwrap();
        let mut files = BTreeMap::new();
        for meta in listed {
            let rel = loc.relative(&meta.location).unwrap();
            files.insert(rel.clone(), get(loc, &rel).await.unwrap().to_vec());
        }
        files
    }

    fn memory() -> Location {
        Location::from_store(Arc::new(InMemory::new()) as Arc<dyn ObjectStore>, "w", "memory:///w")
    }

    #[tokio::test]
    async fn store_round_trips_through_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let loc = shards::open(dir.path().to_str().unwrap()).unwrap();
        let cfg = WorldConfig::try_new(3, 64, 48).unwrap();
        let counts = small_counts();
        let summary = write_store(&cfg, &loc, &counts).await.unwrap();
        assert_eq!(summary.splits.len(), 6);

        let manifest = read_manifest(&loc).await.unwrap();
        assert_eq!(manifest, summary.manifest);
        assert_eq!(manifest.split_counts(), counts);
        assert_eq!(manifest.config().unwrap(), cfg);
        assert_eq!(manifest.split(Split::Eval).labelled_tasks.len(), 4);
        assert!(manifest.split(Split::Pool).labelled_tasks.is_empty());

        for split in Split::ALL {
            for index in 0..counts.get(split) {
                let truth = read_truth(&loc, &manifest, split, index).await.unwrap();
                truth.check(manifest.max_depth).unwrap();
                let scene = render(&cfg, split, index);
                assert_eq!(truth.seg, scene.seg);
                assert_eq!(truth.boxes, scene.boxes);
                assert_eq!(truth.scene_class, scene.scene_class);
                let img = image::load_from_memory(&read_image(&loc, split, index).await.unwrap()).unwrap();
                assert_eq!((img.width(), img.height()), (64, 48));
            }
        }
        let on_disk = std::fs::read_dir(dir.path().join("cls/images")).unwrap().count();
        assert_eq!(on_disk, 5);
        assert!(dir.path().join("det/images/000003.png").is_file());
        assert!(dir.path().join("det/images/000002.jpg").is_file());
        assert!(dir.path().join("seg/depth/000000.png").is_file());
        assert!(dir.path().join("world.json").is_file());
        // The split-wide label files list every image by its file name.
        let csv = std::fs::read_to_string(dir.path().join("det/labels.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 1 + 4, "{csv}");
        let class = render(&cfg, Split::Det, 3).scene_class as usize;
        assert_eq!(lines[4], format!("000003.png,{}", SCENE_CLASSES[class]));
        let coco: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("det/instances.json")).unwrap()).unwrap();
        assert_eq!(coco["images"].as_array().unwrap().len(), 4);
        assert_eq!(coco["images"][3]["file_name"], "000003.png");
        let boxes: usize = (0..4).map(|i| render(&cfg, Split::Det, i).boxes.len()).sum();
        assert_eq!(coco["annotations"].as_array().unwrap().len(), boxes);
    }

    #[tokio::test]
    async fn same_config_writes_identical_bytes_and_seeds_differ() {
        let counts = SplitCounts::uniform(4);
        let cfg = WorldConfig::try_new(11, 64, 64).unwrap();
        let (a, b, c) = (memory(), memory(), memory());
        write_store(&cfg, &a, &counts).await.unwrap();
        write_store(&cfg, &b, &counts).await.unwrap();
        let other = WorldConfig::try_new(12, 64, 64).unwrap();
        write_store(&other, &c, &counts).await.unwrap();

        let (fa, fb, fc) = (all_files(&a).await, all_files(&b).await, all_files(&c).await);
        assert_eq!(fa.len(), 6 * 4 * 4 + 6 * 2 + 1, "four files per scene, two per split, world.json");
        assert_eq!(fa, fb);
        let differing = fa.iter().filter(|(k, v)| fc.get(*k) != Some(v)).count();
        assert!(differing > fa.len() * 3 / 4, "only {differing} files differ between seeds");
    }

    #[tokio::test]
    async fn oversized_split_is_rejected_before_writing() {
        let loc = memory();
        let mut counts = SplitCounts::uniform(1);
        counts.pool = 2_000_000;
        let err = write_store(&WorldConfig::default(), &loc, &counts).await.unwrap_err();
        assert!(err.to_string().contains("pool"), "{err}");
        assert!(all_files(&loc).await.is_empty());
    }
}
