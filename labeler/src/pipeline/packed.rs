//! Packed datasets: WebDataset tars and Parquet image columns, read as containers.
//!
//! Stores of hundreds of millions of images keep them packed, thousands to a tar or a Parquet file, so a
//! plan lists containers, not samples: a tar is one manifest entry, a Parquet file one entry per row
//! group (only its footer is read to count them). A shard job expands each container into its samples as
//! it streams it, so the shard plan stays a pure function of the frozen manifest and no sample is opened
//! before its shard runs.
//!
//! Every sample ends as a label row or an error row, and so does damage: a member that is not an image
//! fails in the decode stage like a loose file; a tar cut short keeps the samples before the cut, and the
//! cut itself becomes an error row naming the container and the offset; a Parquet row whose image is null
//! becomes an error row naming the file and the row.
//!
//! Naming: a sample's key is `<container path>/<sample key>`, the container path relative to the dataset
//! location (with its `.tar` / `.parquet`), the sample key WebDataset's (member name up to the first dot of
//! its file name) or the Parquet key column's value (else the row's number in its file). Its `source_uri`
//! is the container's URI with a fragment that locates the bytes again: `#offset=<byte>&length=<bytes>`
//! for a tar member (one range request), `#row=<row in file>` for a Parquet row. A damaged
//! container's own error row is keyed by the container path alone.
//!
//! Tars are read as one streamed GET through the `tar` crate; a stream that breaks and is not already
//! resumed by the store client (the HTTP stores resume by range themselves) is resumed here with a range
//! request from the byte reached, up to the run's retries; Parquet row groups through the async reader, projected to the image and key columns, a batch of
//! `chunk_images` rows at a time. Samples go on to the pipeline's chunks and byte budgets as they come.

use std::collections::BTreeSet;
use std::io::{self, Read};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};
use bytes::{Buf, Bytes};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::{GetOptions, GetRange};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use shards::inputs::InputEntry;
use shards::{Location, ObjectReader};
use tracing::warn;

use super::fetch::Retry;
use super::supervised::SideMembers;
use super::PipelineError;

/// Largest side member (`.cls`, `.json`, …) kept with a sample.
const MAX_SIDE_MEMBER_BYTES: u64 = 1 << 20;

/// One sample of a container, ready for the fetch stage to hand on.
pub(super) struct Sample {
    /// `<container path>/<sample key>`, or the container path for the container's own error row.
    pub(super) key: String,
    /// The container's URI, with a fragment locating the sample's bytes when there are any.
    pub(super) uri: String,
    /// Where the bytes came from, for error messages (`member 000001.jpg of s3://b/00000.tar`).
    pub(super) origin: String,
    /// The image bytes, or why the sample has none (`reason`, `detail`).
    pub(super) bytes: Result<Bytes, Problem>,
    pub(super) side: SideMembers,
}

impl Sample {
    /// The error row of a whole container (damage that belongs to no sample), keyed by its path.
    fn container_error(key: &str, container: &str, reason: &'static str, detail: String) -> Sample {
        Sample {
            key: key.to_owned(),
            uri: container.to_owned(),
            origin: container.to_owned(),
            bytes: Err((reason, detail)),
            side: SideMembers::new(),
        }
    }
}

/// What a tar is searched for.
pub(super) struct TarOptions<'a> {
    /// Image member extensions, in order of preference.
    pub(super) image_extensions: &'a [String],
    /// Side member extensions kept with a sample (the supervised class member).
    pub(super) side_extensions: &'a [String],
    pub(super) max_image_bytes: u64,
    pub(super) retry: Retry,
}

/// Why a streamed read stopped early.
enum StreamFailure {
    /// The object is gone: the container's own fault.
    Missing(String),
    /// The store kept failing: the attempt fails.
    Store(PipelineError),
}

/// `Read` over one object, streamed from the store by the runtime, resumed from its position with a range
/// request when the stream breaks (up to the retries).
struct StoreReader<'a> {
    rt: &'a tokio::runtime::Runtime,
    loc: &'a Location,
    path: object_store::path::Path,
    retry: Retry,
    pos: u64,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    buf: Bytes,
    /// The object ended (a read returned nothing more).
    eof: bool,
    failure: Option<StreamFailure>,
}

impl StoreReader<'_> {
    async fn next_bytes(&mut self) -> Result<Option<Bytes>, StreamFailure> {
        let mut tries = 0;
        let mut wait = self.retry.backoff;
        loop {
            let error = if let Some(stream) = &mut self.stream {
                match stream.next().await {
                    Some(Ok(b)) if b.is_empty() => continue,
                    Some(Ok(b)) => return Ok(Some(b)),
                    None => return Ok(None),
                    Some(Err(e)) => {
                        self.stream = None;
                        e
                    }
                }
            } else {
                let range = (self.pos > 0).then_some(GetRange::Offset(self.pos));
                match self.loc.store.get_opts(&self.path, GetOptions { range, ..Default::default() }).await {
                    Ok(got) => {
                        self.stream = Some(got.into_stream());
                        continue;
                    }
                    Err(e @ object_store::Error::NotFound { .. }) => {
                        return Err(StreamFailure::Missing(shards::describe_store_error(&e)))
                    }
                    Err(e) => e,
                }
            };
            tries += 1;
            let uri = self.loc.uri_of(&self.path);
            if tries >= self.retry.attempts.max(1) {
                return Err(StreamFailure::Store(PipelineError::Store {
                    uri,
                    tries,
                    detail: format!("at byte {}: {}", self.pos, shards::describe_store_error(&error)),
                }));
            }
            warn!(%uri, at = self.pos, tries, error = %shards::describe_store_error(&error), "read failed; resuming");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.retry.max_backoff);
        }
    }
}

impl Read for StoreReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.buf.is_empty() {
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf[..n]);
                self.buf.advance(n);
                self.pos += n as u64;
                return Ok(n);
            }
            if self.eof || out.is_empty() {
                return Ok(0);
            }
            let rt = self.rt;
            match rt.block_on(self.next_bytes()) {
                Ok(Some(b)) => self.buf = b,
                Ok(None) => {
                    self.eof = true;
                    return Ok(0);
                }
                Err(f) => {
                    self.failure = Some(f);
                    return Err(io::Error::other("the store read failed"));
                }
            }
        }
    }
}

/// WebDataset's split of a member name: the sample key is the name up to the first dot of its file name,
/// the extension the rest (`a/b/0001.seg.png` → `a/b/0001`, `seg.png`).
fn split_member(name: &str) -> (&str, &str) {
    let start = name.rfind('/').map_or(0, |i| i + 1);
    match name[start..].find('.') {
        Some(dot) => (&name[..start + dot], &name[start + dot + 1..]),
        None => (name, ""),
    }
}

/// Why a sample has no bytes: an error row's reason and detail.
type Problem = (&'static str, String);

/// The image member of a sample.
struct ImageMember {
    name: String,
    /// Rank of its extension among the image extensions (lower is preferred).
    rank: usize,
    /// Offset of its data in the tar.
    offset: u64,
    bytes: Result<Bytes, Problem>,
}

/// A sample being gathered from consecutive members.
struct Pending {
    key: String,
    image: Option<ImageMember>,
    side: SideMembers,
    members: Vec<String>,
}

/// Stream the tar `key` under `loc` and hand on each sample to `emit` (which returns `false` to stop).
/// Only a store failure that outlives the retries is an error; everything about the tar is a row.
pub(super) fn read_tar(
    rt: &tokio::runtime::Runtime,
    loc: &Location,
    key: &str,
    opts: &TarOptions,
    emit: &mut dyn FnMut(Sample) -> Result<bool, PipelineError>,
) -> Result<(), PipelineError> {
    let path = loc.child(key);
    let container = loc.uri_of(&path);
    let reader = StoreReader {
        rt,
        loc,
        path,
        retry: opts.retry,
        pos: 0,
        stream: None,
        buf: Bytes::new(),
        eof: false,
        failure: None,
    };
    let mut archive = tar::Archive::new(reader);
    let mut pending: Option<Pending> = None;
    let mut samples = 0u64;
    // The damage that ended the tar early: the sample it hit (if any), reason and detail.
    let mut damage: Option<(Option<String>, &'static str, String)> = None;
    let finish = |p: Pending, hit: Option<&Problem>| -> Sample {
        let (uri, origin, bytes) = match (p.image, hit) {
            (_, Some((reason, detail))) => {
                (container.clone(), format!("sample {:?} of {container}", p.key), Err((*reason, detail.clone())))
            }
            (Some(ImageMember { name, offset, bytes, .. }), None) => {
                let length = bytes.as_ref().map_or(0, |b| b.len());
                (format!("{container}#offset={offset}&length={length}"), format!("member {name} of {container}"), bytes)
            }
            (None, None) => (
                container.clone(),
                format!("sample {:?} of {container}", p.key),
                Err((
                    "no_image",
                    format!(
                        "sample {:?} of {container} has members {} but none with an image extension ({})",
                        p.key,
                        p.members.join(", "),
                        opts.image_extensions.join(", ")
                    ),
                )),
            ),
        };
        Sample { key: format!("{key}/{}", p.key), uri, origin, bytes, side: p.side }
    };
    let mut stopped = false;
    match archive.entries() {
        Err(e) => damage = Some((None, "corrupt_container", format!("{container}: not a tar: {e}"))),
        Ok(entries) => {
            for item in entries {
                let mut entry = match item {
                    Ok(e) => e,
                    Err(e) => {
                        // Where the object simply ended, the tar was cut short; else it is corrupt.
                        damage = Some((None, "corrupt_container", format!("{container}: unreadable tar header: {e}")));
                        break;
                    }
                };
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let name = name.trim_start_matches("./").to_owned();
                let (sample_key, ext) = split_member(&name);
                let ext = ext.to_ascii_lowercase();
                if pending.as_ref().is_some_and(|p| p.key != sample_key) {
                    samples += 1;
                    if !emit(finish(pending.take().expect("pending"), None))? {
                        stopped = true;
                        break;
                    }
                }
                let p = pending.get_or_insert_with(|| Pending {
                    key: sample_key.to_owned(),
                    image: None,
                    side: SideMembers::new(),
                    members: Vec::new(),
                });
                p.members.push(name.clone());
                let (offset, size) = (entry.raw_file_position(), entry.size());
                let rank = opts.image_extensions.iter().position(|e| *e == ext);
                let wanted_image = rank.is_some_and(|r| p.image.as_ref().is_none_or(|have| r < have.rank));
                let wanted_side = opts.side_extensions.contains(&ext) && size <= MAX_SIDE_MEMBER_BYTES;
                if wanted_image && size > opts.max_image_bytes {
                    let detail = format!(
                        "member {name} of {container}: {size} bytes is over the limit of {}",
                        opts.max_image_bytes
                    );
                    p.image =
                        Some(ImageMember { name, rank: rank.unwrap_or(0), offset, bytes: Err(("too_large", detail)) });
                    continue;
                }
                if !(wanted_image || wanted_side) {
                    continue;
                }
                let mut data = Vec::with_capacity(size as usize);
                let read = entry.read_to_end(&mut data);
                if read.is_err() || (data.len() as u64) < size {
                    let what = match read {
                        Err(e) => e.to_string(),
                        Ok(_) => format!("{} of its {size} bytes are there", data.len()),
                    };
                    damage = Some((
                        Some(sample_key.to_owned()),
                        "truncated",
                        format!("{container}: member {name} at byte {offset} is cut short ({what}): the tar is truncated or corrupt"),
                    ));
                    break;
                }
                if wanted_image {
                    p.image = Some(ImageMember { name, rank: rank.unwrap_or(0), offset, bytes: Ok(Bytes::from(data)) });
                } else {
                    p.side.insert(ext, Bytes::from(data));
                }
            }
        }
    }
    let reader = archive.into_inner();
    match reader.failure {
        Some(StreamFailure::Store(e)) => return Err(e),
        Some(StreamFailure::Missing(detail)) => {
            damage =
                Some((None, if reader.pos == 0 { "not_found" } else { "truncated" }, format!("{container}: {detail}")));
        }
        None => {}
    }
    if stopped {
        return Ok(());
    }
    if let Some((_, reason @ "corrupt_container", detail)) = &mut damage {
        if reader.eof {
            *reason = "truncated";
            detail.push_str(": the tar is truncated");
        }
    }
    if damage.is_none() && reader.eof {
        damage = Some((
            None,
            "truncated",
            format!(
                "{container}: ends at byte {} without the tar's end-of-archive blocks: the tar is truncated",
                reader.pos
            ),
        ));
    }
    // The sample the damage hit is its error row; else the samples before it are whole, and the damage
    // gets a row of its own, keyed by the container.
    if let Some(p) = pending.take() {
        let hit = matches!(&damage, Some((Some(k), ..)) if *k == p.key);
        let reason = damage.as_ref().map(|(_, r, d)| (*r, d.clone()));
        samples += 1;
        if !emit(finish(p, if hit { reason.as_ref() } else { None }))? {
            return Ok(());
        }
        if hit {
            return Ok(());
        }
    }
    let container_row = |reason: &'static str, detail: String| Sample::container_error(key, &container, reason, detail);
    if let Some((_, reason, detail)) = damage {
        emit(container_row(reason, detail))?;
    } else if samples == 0 {
        emit(container_row("no_image", format!("{container} holds no sample")))?;
    }
    Ok(())
}

/// The columns of a Parquet image dataset, as configured.
#[derive(Debug, Clone)]
pub(super) struct ParquetColumns {
    pub(super) image: Option<String>,
    pub(super) key: Option<String>,
}

/// Columns tried in turn when the image column is not configured.
const IMAGE_COLUMNS: [&str; 4] = ["image", "jpg", "png", "webp"];

/// How a file's image and key columns are read: root column indices and the image's shape.
#[derive(Debug, Clone)]
struct Resolved {
    image: usize,
    image_name: String,
    /// The image is a struct (`{bytes, path}`, Hugging Face datasets) whose `bytes` field holds it.
    image_in_struct: bool,
    key: Option<usize>,
}

fn is_binary(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
}

fn is_key_type(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

impl ParquetColumns {
    /// Find the configured (or default) columns in `schema`; the error names the column and what is wrong.
    fn resolve(&self, schema: &Schema) -> Result<Resolved, String> {
        let (image, image_name) = match &self.image {
            Some(name) => (schema.index_of(name).map_err(|_| format!("has no image column `{name}`"))?, name.clone()),
            None => IMAGE_COLUMNS
                .iter()
                .find_map(|c| schema.index_of(c).ok().map(|i| (i, (*c).to_owned())))
                .ok_or_else(|| {
                    format!(
                        "has none of the image columns {} (columns: {}); set `image_column`",
                        IMAGE_COLUMNS.join(", "),
                        schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                    )
                })?,
        };
        let image_in_struct = match schema.field(image).data_type() {
            t if is_binary(t) => false,
            DataType::Struct(fields) if fields.find("bytes").is_some_and(|(_, f)| is_binary(f.data_type())) => true,
            t => {
                return Err(format!(
                    "image column `{image_name}` is {t}, not Binary or a struct with a Binary `bytes` field"
                ))
            }
        };
        let key = match &self.key {
            Some(name) => Some(schema.index_of(name).map_err(|_| format!("has no key column `{name}`"))?),
            None => schema.index_of("key").ok(),
        };
        if let Some(k) = key {
            let t = schema.field(k).data_type();
            if !is_key_type(t) {
                return Err(format!("key column `{}` is {t}, not a string or an integer", schema.field(k).name()));
            }
        }
        Ok(Resolved { image, image_name, image_in_struct, key })
    }
}

/// Retry a store read made through the Parquet reader while the store keeps failing; a missing file and a
/// broken file come back as `Ok(Err(..))` (the container's fault).
async fn open_parquet(
    loc: &Location,
    key: &str,
    size: u64,
    retry: &Retry,
) -> Result<Result<(ObjectReader, ArrowReaderMetadata), Problem>, PipelineError> {
    let path = loc.child(key);
    let uri = loc.uri_of(&path);
    let mut tries = 0;
    let mut wait = retry.backoff;
    loop {
        let mut reader = ObjectReader::new(loc.store.clone(), path.clone(), size);
        let error = match ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await {
            Ok(meta) => return Ok(Ok((reader, meta))),
            Err(e) => e,
        };
        match store_error(&error) {
            None => return Ok(Err(("corrupt_container", format!("{uri}: not a readable Parquet file: {error}")))),
            Some(object_store::Error::NotFound { .. }) => {
                return Ok(Err(("not_found", format!("{uri}: {}", describe_parquet_error(&error)))))
            }
            Some(_) => {}
        }
        tries += 1;
        if tries >= retry.attempts.max(1) {
            return Err(PipelineError::Store { uri, tries, detail: describe_parquet_error(&error) });
        }
        warn!(%uri, tries, error = %describe_parquet_error(&error), "read failed; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(retry.max_backoff);
    }
}

/// The store error inside a Parquet reader error, if it is one.
fn store_error(e: &ParquetError) -> Option<&object_store::Error> {
    match e {
        ParquetError::External(inner) => inner.downcast_ref::<object_store::Error>(),
        _ => None,
    }
}

fn describe_parquet_error(e: &ParquetError) -> String {
    match store_error(e) {
        Some(s) => shards::describe_store_error(s),
        None => e.to_string(),
    }
}

/// Plan a Parquet file: one entry per non-empty row group, after checking that its columns fit. Reads the
/// footer only. A file whose columns do not fit is a plan error naming the file and the column.
pub(super) async fn plan_parquet(
    dataset: &str,
    loc: &Location,
    key: &str,
    size: u64,
    columns: &ParquetColumns,
) -> Result<Vec<InputEntry>, PipelineError> {
    let uri = loc.uri_of(&loc.child(key));
    let bad =
        |message: String| PipelineError::Plan { dataset: dataset.to_owned(), message: format!("{uri} {message}") };
    let (_, meta) = open_parquet(loc, key, size, &Retry::default())
        .await?
        .map_err(|(_, detail)| PipelineError::Plan { dataset: dataset.to_owned(), message: detail })?;
    columns.resolve(meta.schema()).map_err(bad)?;
    Ok(meta
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| rg.num_rows() > 0)
        .map(|(i, _)| InputEntry { row_group: Some(i as u64), ..InputEntry::object(dataset, key, size) })
        .collect())
}

/// The string value of row `i` of a key column (a string, or an integer written out), `None` when null.
pub(super) fn key_value(col: &ArrayRef, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(i).to_owned(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(i).to_owned(),
        DataType::Utf8View => col.as_string_view().value(i).to_owned(),
        _ => integer_value(col, i),
    })
}

fn integer_value(col: &ArrayRef, i: usize) -> String {
    use arrow_array::types::*;
    match col.data_type() {
        DataType::Int8 => col.as_primitive::<Int8Type>().value(i).to_string(),
        DataType::Int16 => col.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Int32 => col.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => col.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::UInt8 => col.as_primitive::<UInt8Type>().value(i).to_string(),
        DataType::UInt16 => col.as_primitive::<UInt16Type>().value(i).to_string(),
        DataType::UInt32 => col.as_primitive::<UInt32Type>().value(i).to_string(),
        DataType::UInt64 => col.as_primitive::<UInt64Type>().value(i).to_string(),
        t => unreachable!("key columns are checked to be strings or integers, not {t}"),
    }
}

/// The bytes of row `i` of a Binary column, `None` when null.
fn binary_value(col: &dyn Array, i: usize) -> Option<Bytes> {
    if col.is_null(i) {
        return None;
    }
    Some(Bytes::copy_from_slice(match col.data_type() {
        DataType::Binary => col.as_binary::<i32>().value(i),
        DataType::LargeBinary => col.as_binary::<i64>().value(i),
        DataType::BinaryView => col.as_binary_view().value(i),
        t => unreachable!("image columns are checked to be Binary, not {t}"),
    }))
}

/// Read row group `entry.row_group` of the Parquet file `entry.key` a batch of `batch_rows` rows at a time,
/// handing on each row as a sample. Only a store failure that outlives the retries is an error.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_row_group(
    rt: &tokio::runtime::Runtime,
    loc: &Location,
    entry: &InputEntry,
    columns: &ParquetColumns,
    batch_rows: usize,
    max_image_bytes: u64,
    retry: &Retry,
    emit: &mut dyn FnMut(Sample) -> Result<bool, PipelineError>,
) -> Result<(), PipelineError> {
    let key = entry.key.as_str();
    let container = loc.uri_of(&loc.child(key));
    let container_row = |reason: &'static str, detail: String| Sample::container_error(key, &container, reason, detail);
    let group = entry.row_group.unwrap_or(0) as usize;
    let (reader, meta) = match rt.block_on(open_parquet(loc, key, entry.size, retry))? {
        Ok(opened) => opened,
        Err((reason, detail)) => {
            emit(container_row(reason, detail))?;
            return Ok(());
        }
    };
    let groups: Vec<u64> = meta.metadata().row_groups().iter().map(|g| g.num_rows() as u64).collect();
    if group >= groups.len() {
        let detail =
            format!("{container}: row group {group} is gone (the file has {}): changed since the plan", groups.len());
        emit(container_row("not_found", detail))?;
        return Ok(());
    }
    let resolved = match columns.resolve(meta.schema()) {
        Ok(r) => r,
        Err(message) => {
            emit(container_row("corrupt_container", format!("{container} {message}")))?;
            return Ok(());
        }
    };
    let first_row: u64 = groups[..group].iter().sum();
    let mut roots: BTreeSet<usize> = BTreeSet::from([resolved.image]);
    roots.extend(resolved.key);
    let mask = ProjectionMask::roots(meta.parquet_schema(), roots.iter().copied());
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
        .with_row_groups(vec![group])
        .with_projection(mask)
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| PipelineError::Store { uri: container.clone(), tries: 1, detail: e.to_string() })?;
    // Columns of the projected batches, in schema order.
    let image_at = roots.iter().position(|&r| r == resolved.image).expect("projected");
    let key_at = resolved.key.map(|k| roots.iter().position(|&r| r == k).expect("projected"));
    let mut row = first_row;
    let group_rows = groups[group];
    while let Some(batch) = rt.block_on(stream.next()) {
        let batch: RecordBatch = match batch {
            Ok(b) => b,
            Err(e) if store_error(&e).is_some() => {
                return Err(PipelineError::Store {
                    uri: container.clone(),
                    tries: 1,
                    detail: describe_parquet_error(&e),
                })
            }
            Err(e) => {
                let detail = format!(
                    "{container}: row group {group} is unreadable from row {row} ({} rows not labelled): {e}",
                    first_row + group_rows - row
                );
                emit(container_row("corrupt_container", detail))?;
                return Ok(());
            }
        };
        let image_col = batch.column(image_at);
        let image: &dyn Array = if resolved.image_in_struct {
            image_col.as_struct().column_by_name("bytes").expect("checked").as_ref()
        } else {
            image_col.as_ref()
        };
        let struct_nulls = resolved.image_in_struct.then(|| image_col.as_ref());
        for i in 0..batch.num_rows() {
            let sample_key = key_at.and_then(|k| key_value(batch.column(k), i)).unwrap_or_else(|| row.to_string());
            let where_ = format!("row {row} of {container}");
            let bytes = match struct_nulls.filter(|s| s.is_null(i)).map_or_else(|| binary_value(image, i), |_| None) {
                None => Err(("no_image", format!("{where_}: column `{}` is null", resolved.image_name))),
                Some(b) if b.len() as u64 > max_image_bytes => {
                    Err(("too_large", format!("{where_}: {} bytes is over the limit of {max_image_bytes}", b.len())))
                }
                Some(b) => Ok(b),
            };
            let sample = Sample {
                key: format!("{key}/{sample_key}"),
                uri: format!("{container}#row={row}"),
                origin: where_,
                bytes,
                side: SideMembers::new(),
            };
            row += 1;
            if !emit(sample)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_member("000001.jpg"), ("000001", "jpg"));
        assert_eq!(split_member("a.b/c/0001.seg.png"), ("a.b/c/0001", "seg.png"));
        assert_eq!(split_member("noext"), ("noext", ""));
    }
}
