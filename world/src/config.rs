//! Validated settings of a world, its class lists, and the six splits.
//!
//! A world is a pure function of [`WorldConfig`]: the same `(seed, split, index)` always renders the same
//! scene. Splits draw from disjoint random streams, so no scene repeats across them.
//!
//! [`Domain`] says which distribution a config renders: the pre-training world every store, teacher and
//! student uses, or the shifted downstream world that transfer experiments fine-tune and test on (see
//! [`Domain::Downstream`] for what changes and why).

use std::fmt;
use std::str::FromStr;

use crate::WorldError;

/// Scene classes, chosen by the background (sky and ground). Index = `scene_class`.
pub const SCENE_CLASSES: [&str; 8] = ["meadow", "desert", "snowfield", "night", "sunset", "beach", "forest", "city"];

/// Object categories. Index = `GtBox::class_id`; segmentation class = `class_id + 2`.
pub const OBJECT_CLASSES: [&str; 5] = ["ball", "crate", "cone", "ring", "pillar"];

/// Per-pixel semantic classes: sky, ground, then the object categories in [`OBJECT_CLASSES`] order.
pub const SEG_CLASSES: [&str; 7] = ["sky", "ground", "ball", "crate", "cone", "ring", "pillar"];

/// Segmentation class of the sky.
pub const SEG_SKY: u8 = 0;
/// Segmentation class of the ground plane.
pub const SEG_GROUND: u8 = 1;
/// Segmentation class of object category 0; category `c` is `SEG_FIRST_OBJECT + c`.
pub const SEG_FIRST_OBJECT: u8 = 2;

/// Depth of the sky in metres. Only sky pixels have this depth: ground farther than this is clamped
/// to [`FAR_GROUND_DEPTH`].
pub const MAX_DEPTH: f32 = 60.0;
/// Depth of ground pixels whose true distance exceeds [`MAX_DEPTH`] (the rows just under the horizon).
pub const FAR_GROUND_DEPTH: f32 = MAX_DEPTH - 0.5;
/// Depth PNG value = `round(depth_m * DEPTH_PNG_SCALE)`, clamped to 65535 (millimetres).
pub const DEPTH_PNG_SCALE: u32 = 1000;

/// Task names as they appear in `world.json` (`labelled_tasks`).
pub const TASKS: [&str; 4] = ["classification", "detection", "segmentation", "depth"];

/// Largest image count of one split: ids are six zero-padded digits.
pub const MAX_SPLIT_COUNT: u64 = 1_000_000;

const MIN_SIDE: u32 = 32;
const MAX_SIDE: u32 = 4096;

/// Which distribution a world renders.
///
/// Transfer experiments need downstream data that is *not* the pre-training data: another seed alone
/// would only give new samples of the same distribution. The downstream domain keeps the world (the
/// same camera model, ground plane, scene classes and object shapes, so every truth is as exact) and
/// shifts three things a representation has to cope with, each clearly visible in a picture:
/// - lighting: a warm low sun, the whole image graded by [`DOWNSTREAM_LIGHT_TINT`] at a lower exposure
///   ([`DOWNSTREAM_EXPOSURE`] instead of 0.92–1.08);
/// - textures: the base sky and ground tones rotated [`DOWNSTREAM_HUE_DEGREES`] in hue around the grey
///   axis and the two ground tones pushed apart by [`DOWNSTREAM_GROUND_CONTRAST`] (higher-contrast
///   ground); object colours keep their hue, so a category still looks like itself;
/// - the object mix: categories drawn with [`DOWNSTREAM_OBJECT_WEIGHTS`] (crates and pillars common,
///   balls and cones rare) instead of uniformly.
///
/// The domain is also mixed into the random key, so a downstream scene never shares its layout with a
/// pre-training scene of the same seed, split and index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Domain {
    /// The world every store, teacher and student is built from.
    #[default]
    Pretrain,
    /// The shifted world of downstream (transfer) datasets.
    Downstream,
}

impl Domain {
    /// `"pretrain"` or `"downstream"`, as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Domain::Pretrain => "pretrain",
            Domain::Downstream => "downstream",
        }
    }

    /// One sentence describing how this domain differs from the pre-training world.
    pub fn shift(self) -> String {
        match self {
            Domain::Pretrain => "none: the pre-training distribution".to_owned(),
            Domain::Downstream => {
                let weights: Vec<String> = OBJECT_CLASSES
                    .iter()
                    .zip(DOWNSTREAM_OBJECT_WEIGHTS)
                    .map(|(name, w)| format!("{name} {w}"))
                    .collect();
                format!(
                    "warm low-sun lighting (image graded by {DOWNSTREAM_LIGHT_TINT:?} at exposure {}-{} instead of \
                     0.92-1.08), sky and ground tones rotated {DOWNSTREAM_HUE_DEGREES} degrees in hue with the \
                     ground contrast x{DOWNSTREAM_GROUND_CONTRAST}, and object categories drawn with weights {} \
                     instead of uniformly",
                    DOWNSTREAM_EXPOSURE.0,
                    DOWNSTREAM_EXPOSURE.1,
                    weights.join(", ")
                )
            }
        }
    }

    /// Mixed into the random key of every stream; zero for the pre-training world, so its scenes stay
    /// what they always were.
    pub(crate) fn stream_tag(self) -> u64 {
        match self {
            Domain::Pretrain => 0,
            Domain::Downstream => 0x646f_776e_7368_6966,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Domain {
    type Err = WorldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Domain::Pretrain, Domain::Downstream].into_iter().find(|d| d.name() == s).ok_or_else(|| WorldError::Config {
            reason: format!("unknown domain {s:?} (expected pretrain or downstream)"),
        })
    }
}

/// Downstream lighting: every pixel of the image is multiplied by this tint (a warm, low sun).
pub const DOWNSTREAM_LIGHT_TINT: [f32; 3] = [1.10, 0.96, 0.78];
/// Downstream exposure range (the pre-training world draws from 0.92..1.08).
pub const DOWNSTREAM_EXPOSURE: (f32, f32) = (0.78, 0.92);
/// Downstream texture hue shift: sky and ground colours rotate this far around the grey axis.
pub const DOWNSTREAM_HUE_DEGREES: f32 = 25.0;
/// Downstream ground contrast: the two ground tones move this many times farther from their mean.
pub const DOWNSTREAM_GROUND_CONTRAST: f32 = 1.6;
/// Downstream object mix: probability of each category of [`OBJECT_CLASSES`] per placed object.
pub const DOWNSTREAM_OBJECT_WEIGHTS: [f32; 5] = [0.15, 0.25, 0.15, 0.20, 0.25];

/// Validated settings of a world. Construct with [`WorldConfig::try_new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorldConfig {
    seed: u64,
    width: u32,
    height: u32,
    domain: Domain,
}

impl Default for WorldConfig {
    /// Seed 7, 96×96, the pre-training domain: the demo world.
    fn default() -> Self {
        Self { seed: 7, width: 96, height: 96, domain: Domain::Pretrain }
    }
}

impl WorldConfig {
    /// A pre-training world of `width`×`height` images (each side in 32..=4096).
    pub fn try_new(seed: u64, width: u32, height: u32) -> Result<Self, WorldError> {
        for (name, side) in [("width", width), ("height", height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&side) {
                return Err(WorldError::Config { reason: format!("{name} {side} is outside {MIN_SIDE}..={MAX_SIDE}") });
            }
        }
        Ok(Self { seed, width, height, domain: Domain::Pretrain })
    }

    /// The same world in `domain`.
    pub fn with_domain(self, domain: Domain) -> Self {
        Self { domain, ..self }
    }

    /// The distribution this config renders.
    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// The world seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Image width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Image height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }
}

/// One subset of the world. The four teacher splits are labelled for one task each; `pool` is the
/// unlabelled pool the teachers pseudo-label; `eval` is held out and labelled for everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Cls,
    Det,
    Seg,
    Depth,
    Pool,
    Eval,
}

impl Split {
    /// All splits, in the order they are written.
    pub const ALL: [Split; 6] = [Split::Cls, Split::Det, Split::Seg, Split::Depth, Split::Pool, Split::Eval];

    /// The directory name of the split in a store.
    pub fn name(self) -> &'static str {
        match self {
            Split::Cls => "cls",
            Split::Det => "det",
            Split::Seg => "seg",
            Split::Depth => "depth",
            Split::Pool => "pool",
            Split::Eval => "eval",
        }
    }

    /// The tasks whose labels this split may be trained or evaluated on (names from [`TASKS`]).
    pub fn labelled_tasks(self) -> &'static [&'static str] {
        match self {
            Split::Cls => &TASKS[0..1],
            Split::Det => &TASKS[1..2],
            Split::Seg => &TASKS[2..3],
            Split::Depth => &TASKS[3..4],
            Split::Pool => &[],
            Split::Eval => &TASKS,
        }
    }

    /// A constant mixed into the random key of the split, so splits never share a stream.
    pub(crate) fn stream_tag(self) -> u64 {
        match self {
            Split::Cls => 0x636c_7300_0000_0001,
            Split::Det => 0x6465_7400_0000_0002,
            Split::Seg => 0x7365_6700_0000_0003,
            Split::Depth => 0x6465_7074_6800_0004,
            Split::Pool => 0x706f_6f6c_0000_0005,
            Split::Eval => 0x6576_616c_0000_0006,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = WorldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::ALL.into_iter().find(|split| split.name() == s).ok_or_else(|| WorldError::Config {
            reason: format!("unknown split {s:?} (expected one of cls, det, seg, depth, pool, eval)"),
        })
    }
}

/// How many images each split holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitCounts {
    pub cls: u64,
    pub det: u64,
    pub seg: u64,
    pub depth: u64,
    pub pool: u64,
    pub eval: u64,
}

impl Default for SplitCounts {
    /// The demo sizes: 1200 per teacher split, 2000 unlabelled, 300 held out.
    fn default() -> Self {
        Self { cls: 1200, det: 1200, seg: 1200, depth: 1200, pool: 2000, eval: 300 }
    }
}

impl SplitCounts {
    /// The same count for every split (tests).
    pub fn uniform(count: u64) -> Self {
        Self { cls: count, det: count, seg: count, depth: count, pool: count, eval: count }
    }

    /// The count of `split`.
    pub fn get(&self, split: Split) -> u64 {
        match split {
            Split::Cls => self.cls,
            Split::Det => self.det,
            Split::Seg => self.seg,
            Split::Depth => self.depth,
            Split::Pool => self.pool,
            Split::Eval => self.eval,
        }
    }

    /// Images over all splits.
    pub fn total(&self) -> u64 {
        Split::ALL.iter().map(|&s| self.get(s)).sum()
    }

    /// Checks every count fits six-digit ids.
    pub fn validate(&self) -> Result<(), WorldError> {
        for split in Split::ALL {
            let count = self.get(split);
            if count > MAX_SPLIT_COUNT {
                return Err(WorldError::Config {
                    reason: format!("split {split} has {count} images; at most {MAX_SPLIT_COUNT} fit six-digit ids"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_round_trip() {
        for split in Split::ALL {
            assert_eq!(split.name().parse::<Split>().unwrap(), split);
        }
        assert!("train".parse::<Split>().is_err());
    }

    #[test]
    fn stream_tags_differ() {
        let mut tags: Vec<u64> = Split::ALL.iter().map(|s| s.stream_tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), Split::ALL.len());
    }

    #[test]
    fn config_rejects_tiny_and_huge_images() {
        assert!(WorldConfig::try_new(1, 16, 96).is_err());
        assert!(WorldConfig::try_new(1, 96, 5000).is_err());
        assert!(WorldConfig::try_new(1, 640, 480).is_ok());
    }

    #[test]
    fn domain_defaults_to_pretrain_and_downstream_weights_sum_to_one() {
        assert_eq!(WorldConfig::default().domain(), Domain::Pretrain);
        assert_eq!(WorldConfig::try_new(3, 64, 64).unwrap().domain(), Domain::Pretrain);
        let down = WorldConfig::try_new(3, 64, 64).unwrap().with_domain(Domain::Downstream);
        assert_eq!((down.domain(), down.seed(), down.width()), (Domain::Downstream, 3, 64));
        assert!((DOWNSTREAM_OBJECT_WEIGHTS.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(Domain::Pretrain.stream_tag(), 0, "the pre-training keys must not change");
    }

    #[test]
    fn seg_classes_extend_object_classes() {
        assert_eq!(&SEG_CLASSES[SEG_FIRST_OBJECT as usize..], &OBJECT_CLASSES);
        assert_eq!(SEG_CLASSES[SEG_SKY as usize], "sky");
        assert_eq!(SEG_CLASSES[SEG_GROUND as usize], "ground");
    }
}
