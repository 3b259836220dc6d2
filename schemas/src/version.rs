//! The schema version and the metadata keys that carry it.
//!
//! Every Arrow schema this crate builds carries `must.schema_version` and `must.record_kind` in its
//! metadata, and the Parquet writer repeats them in the file footer, so a reader can refuse a file it
//! does not understand before decoding a single row. The version changes whenever a column is added,
//! removed, renamed, retyped, or its meaning or encoding changes; readers accept only their own version.

use arrow_schema::Schema;

/// Version of the record schemas and the shard manifest described in `SCHEMA.md`.
pub const SCHEMA_VERSION: u32 = 1;

/// Metadata key (Arrow schema metadata and Parquet footer) holding [`SCHEMA_VERSION`] as decimal text.
pub const SCHEMA_VERSION_KEY: &str = "must.schema_version";

/// Metadata key holding the [`RecordKind`] of the rows in a schema or file.
pub const RECORD_KIND_KEY: &str = "must.record_kind";

/// Which of the two record kinds a schema or file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// One row per labelled image ([`crate::ImageRecord`]).
    Image,
    /// One row per input that could not be labelled ([`crate::ErrorRecord`]).
    Error,
}

impl RecordKind {
    /// The value stored under [`RECORD_KIND_KEY`].
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Image => "image",
            RecordKind::Error => "error",
        }
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a schema's version metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("schema metadata has no `{SCHEMA_VERSION_KEY}` key: not a MuST record file, or written before versioning")]
    Missing,
    #[error("schema metadata `{SCHEMA_VERSION_KEY}` is {found:?}, which is not a version number")]
    Unparseable { found: String },
    #[error("schema version is {found}, but this build reads only version {SCHEMA_VERSION}")]
    Mismatch { found: u32 },
    #[error("schema metadata `{RECORD_KIND_KEY}` is {found:?}, expected {expected:?}")]
    WrongKind { found: String, expected: &'static str },
}

/// Check that `schema` carries this build's [`SCHEMA_VERSION`] under [`SCHEMA_VERSION_KEY`].
///
/// Check a file's schema (`ParquetRecordBatchStreamBuilder::schema()`): the batches the Parquet
/// reader yields do not carry schema metadata.
pub fn check_schema_version(schema: &Schema) -> Result<(), VersionError> {
    let found = schema.metadata().get(SCHEMA_VERSION_KEY).ok_or(VersionError::Missing)?;
    let version: u32 = found.trim().parse().map_err(|_| VersionError::Unparseable { found: found.clone() })?;
    if version != SCHEMA_VERSION {
        return Err(VersionError::Mismatch { found: version });
    }
    Ok(())
}

/// Where metadata is present (batches built elsewhere may have lost it), it must say `kind` and this version.
pub(crate) fn check_metadata_if_present(schema: &Schema, kind: RecordKind) -> Result<(), VersionError> {
    if schema.metadata().contains_key(SCHEMA_VERSION_KEY) {
        check_schema_version(schema)?;
    }
    match schema.metadata().get(RECORD_KIND_KEY) {
        Some(found) if found != kind.as_str() => {
            Err(VersionError::WrongKind { found: found.clone(), expected: kind.as_str() })
        }
        _ => Ok(()),
    }
}

/// The metadata every schema of `kind` carries.
pub(crate) fn schema_metadata(kind: RecordKind) -> arrow_schema::Metadata {
    arrow_schema::Metadata::new()
        .with(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_string())
        .with(RECORD_KIND_KEY, kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};

    fn schema_with(metadata: &[(&str, &str)]) -> Schema {
        let metadata: arrow_schema::Metadata = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Schema::new_with_metadata(vec![Field::new("key", DataType::Utf8, false)], metadata)
    }

    #[test]
    fn accepts_this_version() {
        check_schema_version(&schema_with(&[(SCHEMA_VERSION_KEY, "1")])).unwrap();
        check_schema_version(&crate::image_schema()).unwrap();
        check_schema_version(&crate::error_schema()).unwrap();
    }

    #[test]
    fn refuses_missing_unparseable_and_other_versions() {
        let err = check_schema_version(&schema_with(&[])).unwrap_err();
        assert_eq!(err, VersionError::Missing);
        assert!(err.to_string().contains(SCHEMA_VERSION_KEY), "{err}");
        let err = check_schema_version(&schema_with(&[(SCHEMA_VERSION_KEY, "one")])).unwrap_err();
        assert!(matches!(err, VersionError::Unparseable { .. }), "{err}");
        let err = check_schema_version(&schema_with(&[(SCHEMA_VERSION_KEY, "2")])).unwrap_err();
        assert_eq!(err, VersionError::Mismatch { found: 2 });
        assert_eq!(err.to_string(), "schema version is 2, but this build reads only version 1");
    }

    #[test]
    fn record_kind_is_checked_when_present() {
        check_metadata_if_present(&schema_with(&[]), RecordKind::Image).unwrap();
        let err = check_metadata_if_present(&schema_with(&[(RECORD_KIND_KEY, "error")]), RecordKind::Image);
        assert!(matches!(err, Err(VersionError::WrongKind { .. })));
    }
}
