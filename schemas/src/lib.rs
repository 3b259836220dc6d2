//! Schemas: the contract between the labeler, which writes shards, and the trainer, which reads them.
//!
//! Neither of those crates depends on the other; both depend on this one. It defines the two row
//! kinds of a shard (an [`ImageRecord`] per labelled image, an [`ErrorRecord`] per input that could
//! not be labelled) as typed Rust values and as Arrow schemas, the conversions between the two, the
//! rules a row must satisfy, and the [`ShardManifest`] that commits a shard. Column names, types and
//! the decoding of quantised columns are documented for other languages in `SCHEMA.md`; any change to
//! them bumps [`SCHEMA_VERSION`].
//!
//! It depends on Arrow only, so it builds and tests in seconds.
//!
//! ```
//! use schemas::{batch_to_records, records_to_batch, ClsLabel, ImageRecord, LabelSource};
//!
//! let mut record = ImageRecord::new("a/b.jpg", "demo", "file:///data/a/b.jpg", 640, 480);
//! record.cls = Some(ClsLabel { source: LabelSource::pseudo("resnet50"), probs: vec![0.25, 0.75] });
//! let batch = records_to_batch(&[record])?;
//! let back = batch_to_records(&batch)?;
//! // Probabilities are stored as u16 in units of 1/65535.
//! let probs = &back[0].cls.as_ref().unwrap().probs;
//! assert!((probs[1] - 0.75).abs() < 1e-5);
//! # Ok::<(), schemas::BatchError>(())
//! ```

mod arrow_io;
pub mod columns;
mod error_record;
mod image_batch;
mod manifest;
mod quant;
mod record;
mod version;

#[cfg(test)]
mod fixtures;

pub use arrow_io::BatchError;
pub use error_record::{batch_to_errors, error_schema, errors_to_batch, ErrorRecord, Stage};
pub use image_batch::{batch_to_records, image_schema, records_to_batch};
pub use manifest::{
    FingerprintTeacher, ManifestCounts, ManifestError, ManifestFile, ManifestTeacher, RunFingerprint, ShardManifest,
};
pub use quant::{
    dequantize_depth, dequantize_probs, quantize_depth, quantize_probs, QuantizedDepth, DEPTH_BITS_METRIC,
    DEPTH_BITS_RELATIVE, PROB_SCALE,
};
pub use record::{
    validate_mask_classes, ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ImageRecord, LabelSource, Origin,
    SegLabel, Task, ValidationError, PROB_SUM_TOLERANCE, SEG_IGNORE,
};
pub use version::{
    check_schema_version, RecordKind, VersionError, RECORD_KIND_KEY, SCHEMA_VERSION, SCHEMA_VERSION_KEY,
};
