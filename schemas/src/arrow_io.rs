//! Shared pieces of the typed-row <-> `RecordBatch` conversions: typed column lookup that names the
//! column at fault, null checks that name the row, and list columns built without per-row arrays.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::ArrowPrimitiveType;
use arrow_array::{Array, ArrayRef, BinaryArray, ListArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Schema};

use crate::record::ValidationError;
use crate::version::VersionError;

/// Why rows could not be turned into a batch or a batch into rows. Every variant names the column,
/// and the row where there is one.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("row {row} (key {key:?}) is not a valid record")]
    InvalidRecord {
        row: usize,
        key: String,
        #[source]
        source: ValidationError,
    },
    #[error("column {column} is missing")]
    MissingColumn { column: &'static str },
    #[error("column {column} has type {found}, expected {expected}")]
    WrongType { column: &'static str, expected: DataType, found: DataType },
    #[error("column {column}, row {row}: {problem}")]
    BadValue { column: &'static str, row: usize, problem: String },
    #[error(
        "column {column} would hold {len} values in one batch, more than 32-bit offsets allow; \
         convert fewer rows per batch"
    )]
    TooLarge { column: &'static str, len: usize },
    #[error("batch schema metadata")]
    Version(#[from] VersionError),
    #[error("assembling the record batch")]
    Arrow(#[from] ArrowError),
}

pub(crate) fn bad(column: &'static str, row: usize, problem: impl Into<String>) -> BatchError {
    BatchError::BadValue { column, row, problem: problem.into() }
}

/// The type of column `name` in one of this crate's schemas.
fn expected_type<'a>(schema: &'a Schema, name: &str) -> &'a DataType {
    match schema.field_with_name(name) {
        Ok(field) => field.data_type(),
        Err(_) => unreachable!("{name} is a column of the crate's schema"),
    }
}

/// Whether a column of type `found` can be read as `expected`. List element names and nullability are
/// not compared (other writers name the element `element`); null elements are rejected row by row.
fn readable_as(expected: &DataType, found: &DataType) -> bool {
    match (expected, found) {
        (DataType::List(e), DataType::List(f)) => readable_as(e.data_type(), f.data_type()),
        (DataType::Struct(e), DataType::Struct(f)) => {
            e.len() == f.len()
                && e.iter()
                    .zip(f.iter())
                    .all(|(e, f)| e.name() == f.name() && readable_as(e.data_type(), f.data_type()))
        }
        _ => expected == found,
    }
}

/// The column `name` of `batch`, which must have the type it has in `schema`.
pub(crate) fn column<'a>(
    batch: &'a RecordBatch,
    schema: &Schema,
    name: &'static str,
) -> Result<&'a ArrayRef, BatchError> {
    let expected = expected_type(schema, name);
    let col = batch.column_by_name(name).ok_or(BatchError::MissingColumn { column: name })?;
    if !readable_as(expected, col.data_type()) {
        return Err(BatchError::WrongType { column: name, expected: expected.clone(), found: col.data_type().clone() });
    }
    Ok(col)
}

/// A Utf8 column, read row by row.
pub(crate) struct Strings<'a> {
    name: &'static str,
    array: &'a StringArray,
}

impl<'a> Strings<'a> {
    pub fn get(batch: &'a RecordBatch, schema: &Schema, name: &'static str) -> Result<Self, BatchError> {
        Ok(Strings { name, array: column(batch, schema, name)?.as_string::<i32>() })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn optional(&self, row: usize) -> Option<&'a str> {
        self.array.is_valid(row).then(|| self.array.value(row))
    }

    pub fn required(&self, row: usize) -> Result<&'a str, BatchError> {
        self.optional(row).ok_or_else(|| bad(self.name, row, "is null"))
    }
}

/// A primitive column, read row by row.
pub(crate) struct Scalars<'a, T: ArrowPrimitiveType> {
    name: &'static str,
    array: &'a PrimitiveArray<T>,
}

impl<'a, T: ArrowPrimitiveType> Scalars<'a, T> {
    pub fn get(batch: &'a RecordBatch, schema: &Schema, name: &'static str) -> Result<Self, BatchError> {
        Ok(Scalars { name, array: column(batch, schema, name)?.as_primitive::<T>() })
    }

    pub fn optional(&self, row: usize) -> Option<T::Native> {
        self.array.is_valid(row).then(|| self.array.value(row))
    }

    pub fn required(&self, row: usize) -> Result<T::Native, BatchError> {
        self.optional(row).ok_or_else(|| bad(self.name, row, "is null"))
    }
}

/// A Binary column, read row by row.
pub(crate) struct Blobs<'a> {
    array: &'a BinaryArray,
}

impl<'a> Blobs<'a> {
    pub fn get(batch: &'a RecordBatch, schema: &Schema, name: &'static str) -> Result<Self, BatchError> {
        Ok(Blobs { array: column(batch, schema, name)?.as_binary::<i32>() })
    }

    pub fn optional(&self, row: usize) -> Option<&'a [u8]> {
        self.array.is_valid(row).then(|| self.array.value(row))
    }
}

/// A list column, read row by row.
pub(crate) struct Lists<'a> {
    name: &'static str,
    array: &'a ListArray,
}

impl<'a> Lists<'a> {
    pub fn get(batch: &'a RecordBatch, schema: &Schema, name: &'static str) -> Result<Self, BatchError> {
        Ok(Lists { name, array: column(batch, schema, name)?.as_list::<i32>() })
    }

    pub fn is_valid(&self, row: usize) -> bool {
        self.array.is_valid(row)
    }

    /// The flattened elements of every row.
    pub fn values(&self) -> &'a ArrayRef {
        self.array.values()
    }

    /// The element range of `row` in [`Self::values`] (`None` for a null row); no element may be null.
    pub fn range(&self, row: usize) -> Result<Option<Range<usize>>, BatchError> {
        if self.array.is_null(row) {
            return Ok(None);
        }
        let offsets = self.array.value_offsets();
        let range = offsets[row] as usize..offsets[row + 1] as usize;
        let values = self.array.values();
        if values.null_count() > 0 && range.clone().any(|i| values.is_null(i)) {
            return Err(bad(self.name, row, "has a null element"));
        }
        Ok(Some(range))
    }

    /// The elements of `row` of a list of primitives (`None` for a null row).
    pub fn primitives<T: ArrowPrimitiveType>(&self, row: usize) -> Result<Option<&'a [T::Native]>, BatchError> {
        let values: &'a PrimitiveArray<T> = self.array.values().as_primitive::<T>();
        Ok(self.range(row)?.map(|r| &values.values()[r]))
    }
}

/// Builds a `List<T>` column from per-row slices.
pub(crate) struct PrimitiveLists<T: ArrowPrimitiveType> {
    lengths: Vec<usize>,
    valid: Vec<bool>,
    values: Vec<T::Native>,
}

impl<T: ArrowPrimitiveType> PrimitiveLists<T> {
    pub fn with_capacity(rows: usize) -> Self {
        PrimitiveLists { lengths: Vec::with_capacity(rows), valid: Vec::with_capacity(rows), values: Vec::new() }
    }

    pub fn push(&mut self, row: Option<&[T::Native]>) {
        self.lengths.push(row.map_or(0, <[_]>::len));
        self.valid.push(row.is_some());
        self.values.extend_from_slice(row.unwrap_or_default());
    }

    pub fn finish(self, schema: &Schema, name: &'static str) -> Result<ArrayRef, BatchError> {
        let values = PrimitiveArray::<T>::new(ScalarBuffer::from(self.values), None);
        list_array(schema, name, self.lengths, self.valid, Arc::new(values))
    }
}

/// The `List` column `name` of `schema` from element counts, row validity and the flattened elements.
pub(crate) fn list_array(
    schema: &Schema,
    name: &'static str,
    lengths: Vec<usize>,
    valid: Vec<bool>,
    values: ArrayRef,
) -> Result<ArrayRef, BatchError> {
    let DataType::List(item) = expected_type(schema, name) else { unreachable!("{name} is a list column") };
    let len = values.len();
    let offsets =
        OffsetBuffer::<i32>::try_from_lengths(lengths).map_err(|_| BatchError::TooLarge { column: name, len })?;
    Ok(Arc::new(ListArray::try_new(item.clone(), offsets, values, nulls(valid))?))
}

/// A null buffer, or none when every row is valid.
pub(crate) fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|&v| v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

/// The Binary column `name` from optional byte strings, refusing more than 2 GiB in one batch.
pub(crate) fn binary_array<'a>(
    name: &'static str,
    rows: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
) -> Result<ArrayRef, BatchError> {
    let mut lengths = Vec::with_capacity(rows.len());
    let mut valid = Vec::with_capacity(rows.len());
    let mut bytes = Vec::new();
    for row in rows {
        lengths.push(row.map_or(0, <[u8]>::len));
        valid.push(row.is_some());
        bytes.extend_from_slice(row.unwrap_or_default());
    }
    let offsets = OffsetBuffer::<i32>::try_from_lengths(lengths)
        .map_err(|_| BatchError::TooLarge { column: name, len: bytes.len() })?;
    Ok(Arc::new(BinaryArray::try_new(offsets, bytes.into(), nulls(valid))?))
}
