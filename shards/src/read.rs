//! Reading committed Parquet files back from any object store, with column projection.
//!
//! `ObjectReader` is the small `AsyncFileReader` the parquet crate asks users to write for object stores:
//! ranged reads for column chunks, a suffix read for the footer. Files are opened by the paths a committed
//! manifest names; their size and sha256 are known from the manifest, so the footer read needs no HEAD.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStream};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::store::Location;

/// An `AsyncFileReader` over one object of known size.
#[derive(Clone)]
pub struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl ObjectReader {
    /// Read `path` in `store`, whose size is `size` bytes.
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        Self { store, path, size }
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move { self.store.get_range(&self.path, range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata =
                ParquetMetaDataReader::new().with_arrow_reader_options(options).load_and_finish(self, size).await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Errors reading a Parquet file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{uri}: not a readable Parquet file")]
    Open {
        uri: String,
        #[source]
        source: ParquetError,
    },
    #[error("{uri}: column {column:?} is not in the file")]
    MissingColumn { uri: String, column: String },
    #[error("{uri}: reading record batches")]
    Batch {
        uri: String,
        #[source]
        source: ParquetError,
    },
}

/// An opened file: its footer metadata and a builder ready to stream.
pub struct OpenedFile {
    /// The file as a URI, for messages.
    pub uri: String,
    /// Key-value metadata from the footer.
    pub key_value: Vec<(String, String)>,
    /// Arrow schema of the file.
    pub schema: arrow_schema::SchemaRef,
    builder: ParquetRecordBatchStreamBuilder<ObjectReader>,
}

impl OpenedFile {
    /// Stream batches of `batch_rows` rows holding only `columns` (all columns if empty).
    pub fn stream(
        self,
        columns: &[&str],
        batch_rows: usize,
    ) -> Result<ParquetRecordBatchStream<ObjectReader>, ReadError> {
        let mut builder = self.builder.with_batch_size(batch_rows.max(1));
        if !columns.is_empty() {
            let fields = builder.parquet_schema();
            let mut roots = Vec::with_capacity(columns.len());
            for column in columns {
                let arrow_index = self
                    .schema
                    .index_of(column)
                    .map_err(|_| ReadError::MissingColumn { uri: self.uri.clone(), column: (*column).to_owned() })?;
                roots.push(arrow_index);
            }
            let mask = ProjectionMask::roots(fields, roots);
            builder = builder.with_projection(mask);
        }
        builder.build().map_err(|source| ReadError::Open { uri: self.uri, source })
    }
}

/// Open the Parquet file at `rel` (relative to `root`) whose size is `size`.
pub async fn open_file(root: &Location, rel: &str, size: u64) -> Result<OpenedFile, ReadError> {
    let path = root.child(rel);
    let uri = root.uri_of(&path);
    let reader = ObjectReader::new(root.store.clone(), path, size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|source| ReadError::Open { uri: uri.clone(), source })?;
    let key_value = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default())).collect())
        .unwrap_or_default();
    let schema = builder.schema().clone();
    Ok(OpenedFile { uri, key_value, schema, builder })
}

/// Read a whole file into memory (tests and small files).
pub async fn read_all(root: &Location, rel: &str, size: u64, columns: &[&str]) -> Result<Vec<RecordBatch>, ReadError> {
    let opened = open_file(root, rel, size).await?;
    let uri = opened.uri.clone();
    let mut stream = opened.stream(columns, 1024)?;
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        out.push(batch.map_err(|source| ReadError::Batch { uri: uri.clone(), source })?);
    }
    Ok(out)
}
