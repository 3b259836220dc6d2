//! The labeler: runs teacher ONNX models over a shard of an image store and commits Parquet shards of
//! pseudo labels (MuST §3.1).
//!
//! Layers, each usable alone: `spec` (teacher specs in TOML, validated), `runtime` (the one ONNX Runtime
//! environment), `teacher` (a session checked against its spec, batched inference), `preprocess` and
//! `postprocess` (pure image → tensor → label functions), `decode` (untrusted image bytes → RGB), `labels`
//! (supervised labels from CSV, class folders, COCO, PNG masks and depth maps).

pub mod config;
pub mod decode;
pub mod engine;
pub mod labels;
pub mod pipeline;
pub mod postgraph;
pub mod postprocess;
pub mod preprocess;
pub mod render;
pub mod runtime;
pub mod spec;
pub mod teacher;
