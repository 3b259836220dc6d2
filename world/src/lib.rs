//! A synthetic world with exact ground truth, so the whole MuST pipeline can be tested without data.
//!
//! A level pinhole camera looks over a ground plane under a sky; the background picks one of eight
//! scene classes, and up to five objects of five categories stand on the plane. [`render`] turns
//! `(config, split, index)` into a [`Scene`]: the image plus its scene class, boxes, per-pixel
//! segmentation and metric depth, and the camera intrinsics. Rendering is a pure function of its
//! arguments, so every test, teacher and student sees the same world from a seed alone.
//!
//! [`write_store`] writes splits of scenes to any `object_store` location in the layout documented in
//! the `store` module: images, and labels in standard formats (class CSV, COCO boxes, PNG masks, 16-bit
//! depth PNGs) that the labeler reads like any user's, plus the world's own truth records.
//! [`read_manifest`], [`read_truth`] and [`decode_truth`] read it back.
//!
//! [`write_downstream`] writes datasets for transfer experiments (surface normals, segmentation, depth
//! and the category of the nearest object) from the shifted [`Domain::Downstream`] world, in the layout
//! documented in the `downstream` module. Every [`Scene`] carries exact per-pixel surface normals too.
//!
//! ```
//! use world::{render, Split, WorldConfig, SEG_CLASSES};
//!
//! let cfg = WorldConfig::try_new(7, 64, 64)?;
//! let scene = render(&cfg, Split::Eval, 0);
//! assert_eq!(scene.seg.len(), 64 * 64);
//! assert!(scene.seg.iter().all(|&s| (s as usize) < SEG_CLASSES.len()));
//! # Ok::<(), world::WorldError>(())
//! ```

mod camera;
mod codec;
mod config;
mod downstream;
mod error;
mod labels;
mod preview;
mod render;
mod store;
mod texture;

pub use camera::{normals_from_depth, Intrinsics};
pub use codec::{
    decode_truth, encode_depth_png, encode_scene, encode_seg_png, EncodedScene, ImageKind, Truth, TruthRecord,
};
pub use config::{
    Domain, Split, SplitCounts, WorldConfig, DEPTH_PNG_SCALE, DOWNSTREAM_EXPOSURE, DOWNSTREAM_GROUND_CONTRAST,
    DOWNSTREAM_HUE_DEGREES, DOWNSTREAM_LIGHT_TINT, DOWNSTREAM_OBJECT_WEIGHTS, FAR_GROUND_DEPTH, MAX_DEPTH,
    MAX_SPLIT_COUNT, OBJECT_CLASSES, SCENE_CLASSES, SEG_CLASSES, SEG_FIRST_OBJECT, SEG_GROUND, SEG_SKY, TASKS,
};
pub use downstream::{
    depth_label_value, downstream_csv_path, downstream_image_path, downstream_label_path, downstream_name,
    encode_depth_label, encode_normals_label, encode_rgb_png, nearest_object, normal_label_value, render_downstream,
    write_downstream, DownstreamCounts, DownstreamManifest, DownstreamSplit, DownstreamSplitSummary, DownstreamSummary,
    DownstreamTask, DownstreamTasks, TaskInfo, DOWNSTREAM_FILE, DOWNSTREAM_FORMAT, DOWNSTREAM_VERSION,
    NEAREST_OBJECT_DRAWS, SEG_IGNORE,
};
pub use error::WorldError;
pub use labels::{encode_class_csv, encode_coco};
pub use preview::{preview, SEG_PALETTE};
pub use render::{render, GtBox, Scene, MAX_OBJECTS, MIN_BOX_PIXELS, MIN_VISIBLE_FRACTION};
pub use store::{
    class_csv_path, coco_path, depth_path, image_name, image_path, read_image, read_manifest, read_truth, seg_path,
    truth_path, write_store, SplitInfo, SplitSummary, SplitTable, WorldManifest, WriteSummary, MANIFEST_FILE,
    STORE_VERSION,
};
