//! The error record: one row for every input that could not be labelled.
//!
//! Every input ends in exactly one place, a label row or an error row, so a run can be audited
//! (`count(records) + count(errors) == count(inputs)`) and failed inputs retried by key. `stage` says
//! where it failed, `reason` is a short machine-stable code suitable for counting and grouping (the
//! manifest counts errors per reason), and `detail` is free text for people.

use std::sync::{Arc, LazyLock};

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::arrow_io::{bad, BatchError, Strings};
use crate::columns::*;
use crate::record::ValidationError;
use crate::version::{check_metadata_if_present, schema_metadata, RecordKind};

/// The pipeline stage at which an input failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    List,
    Fetch,
    Decode,
    Preprocess,
    Inference,
    Postprocess,
    SupervisedLabel,
    Write,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 8] = [
        Stage::List,
        Stage::Fetch,
        Stage::Decode,
        Stage::Preprocess,
        Stage::Inference,
        Stage::Postprocess,
        Stage::SupervisedLabel,
        Stage::Write,
    ];

    /// The value stored in the `stage` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::List => "list",
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::Postprocess => "postprocess",
            Stage::SupervisedLabel => "supervised_label",
            Stage::Write => "write",
        }
    }

    /// Parse a stored `stage` value.
    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == s)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest accepted `reason` code.
const MAX_REASON_LEN: usize = 64;

/// One input that could not be labelled: one row of an errors file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRecord {
    /// The input's key (path relative to the store root), as in image records.
    pub key: String,
    pub dataset: String,
    pub source_uri: String,
    pub stage: Stage,
    /// Machine-stable code such as `undecodable`, `truncated`, `too_large`, `unsupported`, `io`,
    /// `timeout`, `panic`, `invalid_label`: lowercase ASCII letters, digits and `_`, at most 64 bytes.
    pub reason: String,
    /// Human-readable explanation (the error chain); may be empty.
    pub detail: String,
}

impl ErrorRecord {
    /// Check the rules of the schema: a non-empty `dataset` and `source_uri`, and a well-formed `reason`.
    ///
    /// The key may be empty: a listing failure at the store root has no narrower key.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.dataset.is_empty() {
            return Err(ValidationError::new(DATASET, "is empty"));
        }
        if self.source_uri.is_empty() {
            return Err(ValidationError::new(SOURCE_URI, "is empty"));
        }
        let well_formed = !self.reason.is_empty()
            && self.reason.len() <= MAX_REASON_LEN
            && self.reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return Err(ValidationError::new(
                REASON,
                format!("{:?} is not a reason code (1 to {MAX_REASON_LEN} of a-z, 0-9, _)", self.reason),
            ));
        }
        Ok(())
    }
}

static ERROR_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields = [KEY, DATASET, SOURCE_URI, STAGE, REASON, DETAIL].map(|name| Field::new(name, DataType::Utf8, false));
    Arc::new(Schema::new_with_metadata(fields.to_vec(), schema_metadata(RecordKind::Error)))
});

/// The Arrow schema of error records, with `must.schema_version` and `must.record_kind` = `error`.
pub fn error_schema() -> SchemaRef {
    ERROR_SCHEMA.clone()
}

/// Validate and convert error records to one record batch of [`error_schema`].
pub fn errors_to_batch(errors: &[ErrorRecord]) -> Result<RecordBatch, BatchError> {
    for (row, error) in errors.iter().enumerate() {
        error.validate().map_err(|source| BatchError::InvalidRecord { row, key: error.key.clone(), source })?;
    }
    let column = |f: fn(&ErrorRecord) -> &str| -> ArrayRef {
        Arc::new(errors.iter().map(|e| Some(f(e))).collect::<StringArray>())
    };
    let columns = vec![
        column(|e| &e.key),
        column(|e| &e.dataset),
        column(|e| &e.source_uri),
        column(|e| e.stage.as_str()),
        column(|e| &e.reason),
        column(|e| &e.detail),
    ];
    Ok(RecordBatch::try_new(error_schema(), columns)?)
}

/// Convert a record batch of [`error_schema`] back to typed error records, refusing missing or
/// mistyped columns by name and invalid rows by row.
pub fn batch_to_errors(batch: &RecordBatch) -> Result<Vec<ErrorRecord>, BatchError> {
    check_metadata_if_present(&batch.schema(), RecordKind::Error)?;
    let schema = &*ERROR_SCHEMA;
    let [key, dataset, source_uri, stage, reason, detail] =
        [KEY, DATASET, SOURCE_URI, STAGE, REASON, DETAIL].map(|name| Strings::get(batch, schema, name));
    let (key, dataset, source_uri, stage, reason, detail) = (key?, dataset?, source_uri?, stage?, reason?, detail?);
    (0..batch.num_rows())
        .map(|row| {
            let stage_text = stage.required(row)?;
            let record = ErrorRecord {
                key: key.required(row)?.to_owned(),
                dataset: dataset.required(row)?.to_owned(),
                source_uri: source_uri.required(row)?.to_owned(),
                stage: Stage::parse(stage_text)
                    .ok_or_else(|| bad(STAGE, row, format!("is {stage_text:?}, not a known stage")))?,
                reason: reason.required(row)?.to_owned(),
                detail: detail.required(row)?.to_owned(),
            };
            record.validate().map_err(|source| BatchError::InvalidRecord { row, key: record.key.clone(), source })?;
            Ok(record)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<ErrorRecord> {
        vec![
            ErrorRecord {
                key: "train/bad.jpg".into(),
                dataset: "demo".into(),
                source_uri: "file:///data/train/bad.jpg".into(),
                stage: Stage::Decode,
                reason: "truncated".into(),
                detail: "JPEG ends before its EOI marker".into(),
            },
            ErrorRecord {
                key: String::new(),
                dataset: "demo".into(),
                source_uri: "s3://bucket/".into(),
                stage: Stage::SupervisedLabel,
                reason: "invalid_label".into(),
                detail: String::new(),
            },
        ]
    }

    #[test]
    fn round_trip() {
        let errors = sample();
        let batch = errors_to_batch(&errors).unwrap();
        assert_eq!(batch.schema(), error_schema());
        assert_eq!(batch_to_errors(&batch).unwrap(), errors);
    }

    #[test]
    fn stages_parse_back() {
        for stage in Stage::ALL {
            assert_eq!(Stage::parse(stage.as_str()), Some(stage));
            assert_eq!(serde_json::to_string(&stage).unwrap(), format!("\"{stage}\""));
        }
        assert_eq!(Stage::parse("Decode"), None);
    }

    #[test]
    fn malformed_reasons_are_refused() {
        for reason in ["", "Truncated", "too large", "x".repeat(65).as_str(), "trunc-ated"] {
            let mut errors = sample();
            errors[1].reason = reason.to_owned();
            match errors_to_batch(&errors) {
                Err(BatchError::InvalidRecord { row: 1, source, .. }) => assert_eq!(source.field, "reason"),
                other => panic!("{reason:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_stage_and_missing_column_are_named() {
        let batch = errors_to_batch(&sample()).unwrap();
        let mut columns = batch.columns().to_vec();
        columns[3] = Arc::new(StringArray::from(vec!["decode", "upload"]));
        let b = RecordBatch::try_new(batch.schema(), columns).unwrap();
        match batch_to_errors(&b) {
            Err(BatchError::BadValue { column: STAGE, row: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        let mut b = batch.clone();
        b.remove_column(5);
        assert!(matches!(batch_to_errors(&b), Err(BatchError::MissingColumn { column: DETAIL })));
    }

    #[test]
    fn image_batches_are_not_error_batches() {
        let batch = crate::records_to_batch(&[]).unwrap();
        assert!(matches!(batch_to_errors(&batch), Err(BatchError::Version(_))));
    }
}
