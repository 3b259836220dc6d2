//! What the loader is asked to do: which datasets, which tasks from each, and how to sample and augment.
//!
//! The struct deserialises from the trainer's TOML (unknown fields are rejected) and is checked once by
//! [`DataConfig::validate`] before any file is opened, so a typo fails before minutes of indexing.

pub use schemas::Task;
use serde::{Deserialize, Serialize};

use super::DataError;

/// One dataset: the output root of a labeler run (its committed shards) and the tasks to train from it.
///
/// Labels of tasks not listed are not read, even when the shards hold them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Name used in logs, errors and `Batch::keys`.
    pub name: String,
    /// Local path or object-store URL of the output root (the directory holding `manifests/`).
    pub location: String,
    /// Tasks whose labels are read from this dataset.
    pub tasks: Vec<Task>,
}

/// How samples are drawn from the union of datasets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Every image of the union equally likely (datasets weigh by their size), as in MuST §3.2.
    /// Each epoch visits every image exactly once.
    #[default]
    Uniform,
    /// Each sample first picks a dataset with equal probability, then the next image of that dataset's
    /// own epoch-wise shuffled sequence. Small datasets repeat more often.
    PerDataset,
}

/// Class counts of the student's heads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumClasses {
    /// Length of `cls_probs` in every row with a classification label.
    pub cls: usize,
    /// Box class ids must be below this.
    pub det: usize,
    /// Mask values must be below this or 255 (ignore).
    pub seg: usize,
}

/// Geometric augmentation. The image is first fitted into the square (longer side = `image_size`), then
/// scaled by a factor drawn uniformly from `[scale_min, scale_max]`, then cropped (at a random offset) or
/// padded (bottom/right) to the square, then flipped horizontally with probability 0.5 if `hflip`.
///
/// `Augmentation::none()` (scale 1, no flip) is the deterministic letterbox used for evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augmentation {
    pub scale_min: f32,
    pub scale_max: f32,
    pub hflip: bool,
}

impl Default for Augmentation {
    /// Scale jitter in [0.5, 2.0] and horizontal flips (MuST supplementary).
    fn default() -> Self {
        Self { scale_min: 0.5, scale_max: 2.0, hflip: true }
    }
}

impl Augmentation {
    /// No jitter, no flip: fit and pad.
    pub fn none() -> Self {
        Self { scale_min: 1.0, scale_max: 1.0, hflip: false }
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn default_prefetch() -> usize {
    4
}

fn yes() -> bool {
    true
}

fn default_shuffle_window() -> usize {
    4
}

/// Everything the loader needs. See the field docs for defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub datasets: Vec<DatasetSpec>,
    /// Side of the square training crop in pixels.
    pub image_size: usize,
    /// Samples per batch (a batch can be smaller only when images in it failed to decode, or at the
    /// end of a finite run).
    pub batch_size: usize,
    #[serde(default)]
    pub sampling: Sampling,
    /// Seeds the sample order and every augmentation.
    pub seed: u64,
    /// Decode/augment/collate threads (default: the number of cores).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Batches prepared ahead of the training step (default 4).
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Row groups pooled into one shuffle window (default 4). Memory holds about two windows of each
    /// sampling stream; larger windows mix samples from more files into each batch.
    #[serde(default = "default_shuffle_window")]
    pub shuffle_window: usize,
    /// Uniform sampling over several datasets: order each epoch's row groups so that every window holds
    /// each dataset in proportion to its rows (default true), so batches mix the union like i.i.d.
    /// draws. `false`: a plain size-weighted shuffle of row groups (batches then follow the few row
    /// groups, usually of one dataset each, that share a window).
    #[serde(default = "yes")]
    pub interleave_datasets: bool,
    pub num_classes: NumClasses,
    #[serde(default)]
    pub augment: Augmentation,
    /// Stop after this many passes over the data (only with `Uniform` sampling; `None`: never stop).
    #[serde(default)]
    pub passes: Option<u64>,
    /// This process's part of every batch in data-parallel training (set by the trainer from its
    /// process group, never from a file): `batch_size` is then the global batch.
    #[serde(skip)]
    pub rank: RankSlice,
}

/// Rank `rank` of `world` takes rows `[n·rank/world, n·(rank+1)/world)` of every global batch of `n`
/// rows, so the ranks' slices are disjoint, their union is the single-process batch, and the sampler
/// state (which counts global samples) is the same on every rank and for every world size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankSlice {
    pub rank: usize,
    pub world: usize,
}

impl Default for RankSlice {
    fn default() -> Self {
        RankSlice { rank: 0, world: 1 }
    }
}

impl RankSlice {
    /// The index range of this rank's rows in a global batch of `n` rows.
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        n * self.rank / self.world..n * (self.rank + 1) / self.world
    }
}

impl DataConfig {
    /// A config with defaults for everything but the data and the geometry.
    pub fn new(datasets: Vec<DatasetSpec>, image_size: usize, batch_size: usize, num_classes: NumClasses) -> Self {
        Self {
            datasets,
            image_size,
            batch_size,
            sampling: Sampling::default(),
            seed: 0,
            workers: default_workers(),
            prefetch: default_prefetch(),
            shuffle_window: default_shuffle_window(),
            interleave_datasets: true,
            num_classes,
            augment: Augmentation::default(),
            passes: None,
            rank: RankSlice::default(),
        }
    }

    /// Check the settings that need no I/O.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |reason: String| Err(DataError::Config { reason });
        if self.datasets.is_empty() {
            return bad("no datasets configured".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for d in &self.datasets {
            if d.name.is_empty() {
                return bad(format!("dataset at {:?} has an empty name", shards::redact_url(&d.location)));
            }
            if !names.insert(d.name.as_str()) {
                return bad(format!("dataset name {:?} is used twice", d.name));
            }
            if d.tasks.is_empty() {
                return bad(format!("dataset {:?} lists no tasks", d.name));
            }
            for task in &d.tasks {
                let classes = match task {
                    Task::Cls => self.num_classes.cls,
                    Task::Det => self.num_classes.det,
                    Task::Seg => self.num_classes.seg,
                    Task::Depth => 1,
                };
                if classes == 0 {
                    return bad(format!(
                        "dataset {:?} trains {} but num_classes.{} is 0",
                        d.name,
                        task.name(),
                        task.as_str()
                    ));
                }
            }
        }
        if self.num_classes.seg > 255 {
            return bad(format!(
                "num_classes.seg is {}, but mask values are bytes with 255 meaning ignore",
                self.num_classes.seg
            ));
        }
        if !(8..=4096).contains(&self.image_size) {
            return bad(format!("image_size {} is outside 8..=4096", self.image_size));
        }
        if self.batch_size == 0 {
            return bad("batch_size is 0".into());
        }
        if self.rank.world == 0 || self.rank.rank >= self.rank.world {
            return bad(format!("rank {} of a world of {}", self.rank.rank, self.rank.world));
        }
        if !self.batch_size.is_multiple_of(self.rank.world) {
            return bad(format!(
                "batch_size {} is the global batch and must divide evenly over the {} processes",
                self.batch_size, self.rank.world
            ));
        }
        if self.workers == 0 || self.prefetch == 0 || self.shuffle_window == 0 {
            return bad("workers, prefetch and shuffle_window must be at least 1".into());
        }
        let a = self.augment;
        if !(a.scale_min.is_finite() && a.scale_max.is_finite() && a.scale_min > 0.0 && a.scale_min <= a.scale_max) {
            return bad(format!("augment scale range [{}, {}] is not a positive interval", a.scale_min, a.scale_max));
        }
        if self.passes.is_some() && self.sampling != Sampling::Uniform {
            return bad("passes can only be set with uniform sampling".into());
        }
        if self.passes == Some(0) {
            return bad("passes is 0".into());
        }
        Ok(())
    }
}
