//! Shards: where the labeler's output meets the trainer's input.
//!
//! This crate owns everything about *files* of records: opening stores by URL, freezing an image store
//! into a sorted input manifest, the deterministic shard plan, Parquet encoding choices, and the
//! commit protocol (attempt-unique data files under a lease, a manifest written with put-if-absent) and the
//! janitor that deletes what dead attempts left. It knows the record schema from `schemas` but nothing
//! about teachers or students.

mod commit;
pub mod encoding;
pub mod inputs;
mod janitor;
pub mod lease;
mod read;
mod redact;
pub mod store;

pub use commit::{
    check_consistent, committed_manifests, encode_parquet, read_manifest, CommitError, CommitOutcome, DataFile,
    ShardCommitter, ShardId,
};
pub use janitor::{remove_orphans, JanitorPolicy, JanitorReport};
pub use lease::{Lease, LeaseRecord};
pub use read::{open_file, read_all, ObjectReader, OpenedFile, ReadError};

pub use redact::{describe_store_error, redact_url};
pub use store::{open, resolve_location, Location, OpenError};
