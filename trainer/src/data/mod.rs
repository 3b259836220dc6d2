//! Committed label shards → augmented, collated [`Batch`](crate::batch::Batch)es, ahead of the training step.
//!
//! Why it is built this way:
//! - **Only committed data.** The loader lists committed manifests (`shards::committed_manifests`) and
//!   opens only the record files they name, with the sizes they record; files of failed or in-flight
//!   attempts are never seen.
//! - **Memory bounded by row groups.** At start it reads only Parquet footers and keeps one entry per row
//!   group. Samples are drawn window by window (a few row groups, see [`DataConfig::shuffle_window`]),
//!   and only the columns the configured tasks need are fetched.
//! - **Exact resume.** The order is a pure function of the index, the seed and a small
//!   [`SamplerState`]; augmentation is seeded per sample by `(seed, step)`, so neither depends on thread
//!   timing or the number of workers, and a checkpointed state replays the same batches.
//! - **Bad input is an error, not a panic.** A file with the wrong schema version or columns, or that is
//!   not Parquet, fails the loader with an error naming the file (and column). A label that breaks the
//!   contract (wrong length, class out of range) is also fatal and names file, column and key: it means
//!   the labeler and trainer disagree. Only an image that does not decode is skipped: it is counted
//!   ([`Loader::skipped_images`]) and logged with its dataset and key, and its batch is one sample short.

pub(crate) mod augment;
mod config;
mod index;
mod loader;
pub(crate) mod rng;
pub(crate) mod rows;
mod sampler;

pub use config::{Augmentation, DataConfig, DatasetSpec, NumClasses, RankSlice, Sampling, Task};
pub use loader::Loader;
pub use sampler::{SamplerState, StreamState};

/// Errors of the data pipeline; each names the file, column or setting concerned.
///
/// Sources from other crates are boxed to keep `Result<_, DataError>` small on hot paths.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data config: {reason}")]
    Config { reason: String },
    #[error("dataset {dataset:?}: cannot open {location:?}")]
    Open {
        dataset: String,
        location: String,
        #[source]
        source: Box<shards::OpenError>,
    },
    #[error("dataset {dataset:?}: listing committed shards")]
    Manifests {
        dataset: String,
        #[source]
        source: Box<shards::CommitError>,
    },
    #[error("{uri}: not a readable Parquet file")]
    Footer {
        uri: String,
        #[source]
        source: Box<parquet::errors::ParquetError>,
    },
    #[error("{uri}: metadata {key:?}: {reason}")]
    SchemaVersion { uri: String, key: &'static str, reason: String },
    #[error("{uri}: column {column:?}: {reason}")]
    Column { uri: String, column: String, reason: String },
    #[error("{uri}: the manifest says {manifest} rows, the file holds {found}")]
    RowCount { uri: String, manifest: u64, found: u64 },
    #[error("{uri}: reading row group {row_group}")]
    Read {
        uri: String,
        row_group: usize,
        #[source]
        source: Box<parquet::errors::ParquetError>,
    },
    #[error("{what} no committed records")]
    Empty { what: String },
    #[error("sampler state does not fit this config: {reason}")]
    State { reason: String },
    #[error("data loader failed: {reason}")]
    Worker { reason: String },
    #[error("the configured passes over the data are done")]
    Exhausted,
}
