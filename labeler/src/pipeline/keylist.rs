//! Key lists: a dataset's keys read from a file instead of listing its location.
//!
//! Listing a bucket of 300 million objects is 300,000 LIST requests, hours of them, and the listing
//! changes while it runs; most such buckets already have an S3 Inventory report, or the team has a key
//! list from the job that wrote the data. A key list is read as a stream (line by line, or Parquet row
//! group by row group, `.gz` files decompressed as they arrive), so its size does not matter here; the
//! entries go to the plan's external sort (`shards::inputs::Freezer`).
//!
//! Formats (`crate::config::KeyListFormat`):
//! - text: one key per line, relative to the dataset location; blank lines skipped; sizes unknown (0);
//! - CSV: a header row naming a `key` column and optionally a `size` column (any order, other columns
//!   ignored, names matched without regard to case), RFC 4180 quoting (a field may not span lines);
//! - S3 Inventory: the report's `manifest.json`. Its `fileSchema` names the columns of the CSV data files
//!   (gzip, no header, every key URL-encoded with `+` for a space) or its `fileFormat` is `Parquet`
//!   (columns `key` and `size`, keys as they are). Data files are found as the manifest names them, in the
//!   destination bucket: `<destination prefix>/<source bucket>/<config id>/data/…`, the manifest being at
//!   `<destination prefix>/<source bucket>/<config id>/<timestamp>/manifest.json`. Inventory keys are bucket
//!   keys: those under the dataset location's prefix are taken relative to it, the others skipped and
//!   counted. For a local dataset location (a directory) the keys are relative to the directory.
//!
//! A line that cannot be read is a plan error naming the file and the line.

use std::borrow::Cow;
use std::io::Write;
#[cfg(test)]
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use serde::Deserialize;
use shards::{Location, ObjectReader};

use super::PipelineError;
use crate::config::{DatasetConfig, KeyListFormat};

/// Largest inventory `manifest.json` read (it lists data files, not keys: a few hundred entries).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// What reading a key list found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyListCounts {
    /// Keys read (under the location's prefix or not).
    pub keys: u64,
    /// Inventory keys outside the dataset location's prefix, skipped.
    pub outside: u64,
}

/// Read the key list of `d` (which must have one), calling `each(key, size)` for every key relative to
/// `loc` (size 0 when the list does not say).
pub(super) async fn read_key_list(
    d: &DatasetConfig,
    loc: &Location,
    each: &mut dyn FnMut(String, u64) -> Result<(), PipelineError>,
) -> Result<KeyListCounts, PipelineError> {
    let file = d.key_list.as_deref().expect("read_key_list is called for datasets with a key list");
    let format = d.key_list_format.or_else(|| KeyListFormat::from_name(file)).unwrap_or(KeyListFormat::Text);
    let bad = |message: String| PipelineError::Plan { dataset: d.name.clone(), message };
    match format {
        KeyListFormat::Text | KeyListFormat::Csv => {
            let mut lines = Lines::open(file).await.map_err(bad)?;
            let mut counts = KeyListCounts::default();
            let mut columns: Option<(usize, Option<usize>)> = None;
            while let Some((number, line)) = lines.next_text().await.map_err(bad)? {
                let at = |reason: String| bad(format!("{file}: line {number}: {reason}"));
                if format == KeyListFormat::Text {
                    counts.keys += 1;
                    each(line.to_owned(), 0)?;
                    continue;
                }
                let fields = csv_fields(line).map_err(at)?;
                let Some((key, size)) = columns else {
                    columns = Some(csv_header(&fields).map_err(at)?);
                    continue;
                };
                let (key, size) = key_and_size(&fields, key, size).map_err(at)?;
                counts.keys += 1;
                each(key.into_owned(), size)?;
            }
            Ok(counts)
        }
        KeyListFormat::S3Inventory => read_inventory(d, loc, file, each).await,
    }
}

/// The `key` and `size` columns of a CSV key list's header.
fn csv_header(fields: &[Cow<'_, str>]) -> Result<(usize, Option<usize>), String> {
    let find = |name: &str| fields.iter().position(|f| f.trim().eq_ignore_ascii_case(name));
    let key = find("key").ok_or_else(|| {
        format!(
            "the header row has no `key` column (it has {}); a CSV key list starts with a header such as `key,size`",
            fields.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ")
        )
    })?;
    Ok((key, find("size")))
}

/// The key and size of one row; an empty size is 0 (unknown).
fn key_and_size<'a>(
    fields: &'a [Cow<'a, str>],
    key: usize,
    size: Option<usize>,
) -> Result<(Cow<'a, str>, u64), String> {
    let k = fields.get(key).ok_or_else(|| format!("has {} field(s), no key in column {}", fields.len(), key + 1))?;
    if k.is_empty() {
        return Err("the key is empty".into());
    }
    let size = match size.and_then(|i| fields.get(i)).map(|s| s.trim()) {
        None | Some("") => 0,
        Some(s) => s.parse().map_err(|_| format!("size {s:?} is not a number of bytes"))?,
    };
    Ok((k.clone(), size))
}

/// The fields of one CSV line (RFC 4180: fields in double quotes may hold commas and `""` for a quote).
fn csv_fields(line: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chunk = quoted;
            loop {
                let Some(end) = chunk.find('"') else {
                    return Err("a quoted field is not closed (fields may not span lines)".into());
                };
                value.push_str(&chunk[..end]);
                chunk = &chunk[end + 1..];
                if let Some(after) = chunk.strip_prefix('"') {
                    value.push('"');
                    chunk = after;
                } else {
                    break;
                }
            }
            fields.push(Cow::Owned(value));
            match chunk.strip_prefix(',') {
                Some(after) => rest = after,
                None if chunk.is_empty() => return Ok(fields),
                None => return Err(format!("text after a closing quote: {chunk:?}")),
            }
        } else {
            match rest.find(',') {
                Some(i) => {
                    fields.push(Cow::Borrowed(&rest[..i]));
                    rest = &rest[i + 1..];
                }
                None => {
                    fields.push(Cow::Borrowed(rest));
                    return Ok(fields);
                }
            }
        }
    }
}

/// Decode an S3 Inventory CSV key: URL-encoded, `+` for a space.
fn decode_inventory_key(encoded: &str) -> Result<String, String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = encoded.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(
                    hex.ok_or_else(|| format!("key {encoded:?} has a `%` that is not followed by two hex digits"))?,
                );
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("key {encoded:?} does not decode to UTF-8"))
}

/// A location and an object name inside it for a file given as a path or URL.
fn open_file(file: &str) -> Result<(Location, String), String> {
    let (dir, name) = file.rsplit_once('/').ok_or_else(|| format!("{file} is not a file path or URL"))?;
    let dir = if dir.is_empty() { "/" } else { dir };
    let loc = shards::open(dir).map_err(|e| format!("{file}: {e}"))?;
    Ok((loc, name.to_owned()))
}

/// The lines of an object, read as a stream (gunzipped as they arrive when the name ends in `.gz`).
struct Lines {
    uri: String,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    gunzip: Option<flate2::write::MultiGzDecoder<Vec<u8>>>,
    pending: Vec<u8>,
    start: usize,
    ended: bool,
    /// The number of the line `next` returned last (1-based).
    number: u64,
}

impl Lines {
    async fn open(file: &str) -> Result<Self, String> {
        let (loc, name) = open_file(file)?;
        Self::open_in(&loc, &name, name.ends_with(".gz")).await
    }

    async fn open_in(loc: &Location, key: &str, gzip: bool) -> Result<Self, String> {
        let path = loc.child(key);
        let uri = loc.uri_of(&path);
        let got = loc.store.get(&path).await.map_err(|e| format!("{uri}: {}", shards::describe_store_error(&e)))?;
        Ok(Self {
            uri,
            stream: got.into_stream(),
            gunzip: gzip.then(|| flate2::write::MultiGzDecoder::new(Vec::new())),
            pending: Vec::new(),
            start: 0,
            ended: false,
            number: 0,
        })
    }

    /// The next non-empty line as text, without its line ending, and its number (from 1); `None` at the end.
    async fn next_text(&mut self) -> Result<Option<(u64, &str)>, String> {
        loop {
            let Some((number, mut range)) = self.next().await? else { return Ok(None) };
            let line = std::str::from_utf8(&self.pending[range.clone()])
                .map_err(|e| format!("{}: line {number}: is not UTF-8 ({e})", self.uri))?;
            if line.ends_with('\r') {
                range.end -= 1;
            }
            if !range.is_empty() {
                // Validated above; borrowed again here so the loop's next read is not held by this borrow.
                return Ok(Some((number, std::str::from_utf8(&self.pending[range]).expect("valid UTF-8"))));
            }
        }
    }

    /// The byte range in `pending` of the next line without its `\n`, and its number (from 1); `None` at the end.
    async fn next(&mut self) -> Result<Option<(u64, std::ops::Range<usize>)>, String> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.pending[self.start..]) {
                let line = self.start..self.start + i;
                self.start += i + 1;
                self.number += 1;
                return Ok(Some((self.number, line)));
            }
            if self.ended {
                if self.start < self.pending.len() {
                    let line = self.start..self.pending.len();
                    self.start = self.pending.len();
                    self.number += 1;
                    return Ok(Some((self.number, line)));
                }
                return Ok(None);
            }
            self.pending.drain(..self.start);
            self.start = 0;
            let chunk = self.stream.next().await;
            let gunzip_error = |e: std::io::Error| format!("{}: not a readable gzip file: {e}", self.uri);
            match chunk {
                Some(Ok(bytes)) => match &mut self.gunzip {
                    Some(gz) => {
                        gz.write_all(&bytes).map_err(gunzip_error)?;
                        self.pending.append(gz.get_mut());
                    }
                    None => self.pending.extend_from_slice(&bytes),
                },
                Some(Err(e)) => return Err(format!("{}: {}", self.uri, shards::describe_store_error(&e))),
                None => {
                    self.ended = true;
                    if let Some(gz) = &mut self.gunzip {
                        gz.try_finish().map_err(gunzip_error)?;
                        self.pending.append(gz.get_mut());
                    }
                }
            }
        }
    }
}

/// An S3 Inventory `manifest.json`, the fields read here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InventoryManifest {
    source_bucket: String,
    file_format: String,
    #[serde(default)]
    file_schema: String,
    files: Vec<InventoryFile>,
}

#[derive(Debug, Deserialize)]
struct InventoryFile {
    key: String,
    size: Option<u64>,
}

/// The root of the destination bucket's copy a manifest at `manifest` belongs to, from one of its data
/// file keys (see the module doc for the layout).
fn inventory_root<'a>(manifest: &'a str, data_key: &str) -> Result<&'a str, String> {
    let layout = || {
        format!(
            "data file {data_key:?} is not where S3 Inventory puts it: the manifest should be at \
             <bucket>/<destination prefix>/<source bucket>/<config id>/<timestamp>/manifest.json and its data \
             files under <bucket>/<destination prefix>/<source bucket>/<config id>/data/"
        )
    };
    let (report, _) = data_key.rsplit_once("/data/").ok_or_else(layout)?;
    let dir = manifest.rsplit_once('/').map(|(d, _)| d).ok_or_else(layout)?;
    let (parent, _timestamp) = dir.rsplit_once('/').ok_or_else(layout)?;
    let root = parent.strip_suffix(report).and_then(|r| r.strip_suffix('/')).ok_or_else(layout)?;
    Ok(if root.is_empty() { "/" } else { root })
}

/// The bucket of an `s3://` location.
fn s3_bucket(display: &str) -> Option<&str> {
    display.strip_prefix("s3://").map(|rest| rest.split('/').next().unwrap_or(rest))
}

async fn read_inventory(
    d: &DatasetConfig,
    loc: &Location,
    file: &str,
    each: &mut dyn FnMut(String, u64) -> Result<(), PipelineError>,
) -> Result<KeyListCounts, PipelineError> {
    let bad = |message: String| PipelineError::Plan { dataset: d.name.clone(), message };
    let (dir, name) = open_file(file).map_err(bad)?;
    let bytes = super::fetch::get_bytes(&dir, &name, MAX_MANIFEST_BYTES, &super::fetch::Retry::default())
        .await
        .map_err(|e| match e {
            super::fetch::ReadError::Input { detail, .. } => bad(format!("{file}: {detail}")),
            super::fetch::ReadError::Store(e) => e,
        })?;
    let manifest: InventoryManifest = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("{file}: line {}: not an S3 Inventory manifest: {e}", e.line())))?;
    if let Some(bucket) = s3_bucket(&loc.display) {
        if bucket != manifest.source_bucket {
            return Err(bad(format!(
                "{file}: the inventory is of bucket {:?}, the dataset location {} is in bucket {bucket:?}",
                manifest.source_bucket, loc.display
            )));
        }
    }
    let prefix = loc.prefix.as_ref();
    let mut counts = KeyListCounts::default();
    let mut take = |key: String, size: u64, counts: &mut KeyListCounts| -> Result<(), PipelineError> {
        counts.keys += 1;
        let relative = if prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(prefix).and_then(|k| k.strip_prefix('/')).map(str::to_owned)
        };
        match relative {
            Some(k) if !k.is_empty() => each(k, size),
            _ => {
                counts.outside += 1;
                Ok(())
            }
        }
    };
    let format = manifest.file_format.to_ascii_lowercase();
    let schema: Vec<String> = manifest.file_schema.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    for data in &manifest.files {
        let root = inventory_root(file, &data.key).map_err(|m| bad(format!("{file}: {m}")))?;
        let root = shards::open(root).map_err(|e| bad(format!("{file}: {e}")))?;
        let uri = root.uri_of(&root.child(&data.key));
        match format.as_str() {
            "csv" => {
                let key_col = schema
                    .iter()
                    .position(|c| c == "key")
                    .ok_or_else(|| bad(format!("{file}: fileSchema {:?} has no `Key` column", manifest.file_schema)))?;
                let size_col = schema.iter().position(|c| c == "size");
                let mut lines = Lines::open_in(&root, &data.key, data.key.ends_with(".gz")).await.map_err(bad)?;
                while let Some((number, line)) = lines.next_text().await.map_err(bad)? {
                    let at = |reason: String| bad(format!("{uri}: line {number}: {reason}"));
                    let fields = csv_fields(line).map_err(at)?;
                    let (key, size) = key_and_size(&fields, key_col, size_col).map_err(at)?;
                    let key = decode_inventory_key(&key).map_err(at)?;
                    take(key, size, &mut counts)?;
                }
            }
            "parquet" => {
                let size = match data.size {
                    Some(s) => s,
                    None => {
                        root.store
                            .head(&root.child(&data.key))
                            .await
                            .map_err(|e| bad(format!("{uri}: {}", shards::describe_store_error(&e))))?
                            .size
                    }
                };
                read_inventory_parquet(&root, &data.key, size, &uri, &mut |k, s| take(k, s, &mut counts))
                    .await
                    .map_err(bad)??;
            }
            other => {
                return Err(bad(format!(
                    "{file}: fileFormat {other:?} is not read here; configure the inventory as CSV or Parquet"
                )))
            }
        }
    }
    Ok(counts)
}

/// The `key` and `size` columns of an inventory Parquet file, row group by row group. The outer error is
/// the file's, the inner one the callback's.
async fn read_inventory_parquet(
    root: &Location,
    key: &str,
    size: u64,
    uri: &str,
    each: &mut dyn FnMut(String, u64) -> Result<(), PipelineError>,
) -> Result<Result<(), PipelineError>, String> {
    let fail = |e: parquet::errors::ParquetError| format!("{uri}: not a readable Parquet file: {e}");
    let reader = ObjectReader::new(root.store.clone(), root.child(key), size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(fail)?;
    let fields = builder.schema().fields().clone();
    let find = |name: &str| fields.iter().position(|f| f.name().eq_ignore_ascii_case(name));
    let key_col = find("key").ok_or_else(|| format!("{uri}: has no `key` column"))?;
    let size_col = find("size");
    let leaves: Vec<usize> = [Some(key_col), size_col].into_iter().flatten().collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), leaves);
    let mut stream = builder.with_projection(mask).build().map_err(fail)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(fail)?;
        let keys = batch.column_by_name(fields[key_col].name()).expect("projected").clone();
        let sizes = size_col.map(|i| batch.column_by_name(fields[i].name()).expect("projected").clone());
        for row in 0..batch.num_rows() {
            let Some(k) = super::packed::key_value(&keys, row) else {
                return Err(format!("{uri}: row group {}: the key of a row is null or not a string", row));
            };
            let s = sizes.as_ref().and_then(|c| int_value(c, row)).unwrap_or(0);
            if let Err(e) = each(k, s) {
                return Ok(Err(e));
            }
        }
    }
    Ok(Ok(()))
}

fn int_value(col: &ArrayRef, i: usize) -> Option<u64> {
    use arrow_array::types::*;
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Int64 => u64::try_from(col.as_primitive::<Int64Type>().value(i)).ok(),
        DataType::UInt64 => Some(col.as_primitive::<UInt64Type>().value(i)),
        DataType::Int32 => u64::try_from(col.as_primitive::<Int32Type>().value(i)).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn dataset(key_list: &Path, format: &str) -> DatasetConfig {
        toml::from_str(&format!(
            "name = \"d\"\nlocation = \"unused\"\nkey_list = {:?}\nkey_list_format = {format:?}",
            key_list.to_str().unwrap()
        ))
        .unwrap()
    }

    /// The keys (with sizes) a key list gives for a dataset at `loc`, or the error's message.
    fn read(d: &DatasetConfig, loc: &Location) -> Result<(Vec<(String, u64)>, KeyListCounts), String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut got = Vec::new();
        let counts = rt
            .block_on(read_key_list(d, loc, &mut |k, s| {
                got.push((k, s));
                Ok(())
            }))
            .map_err(|e| e.to_string())?;
        Ok((got, counts))
    }

    fn memory(prefix: &str, display: &str) -> Location {
        Location::from_store(Arc::new(object_store::memory::InMemory::new()), prefix, display)
    }

    /// An inventory report under `dir` whose one data file is `data` (named `name`), in `format`.
    fn inventory(dir: &Path, format: &str, schema: &str, name: &str, data: &[u8]) -> PathBuf {
        let report = dir.join("dest/photos-bucket/cfg");
        std::fs::create_dir_all(report.join("data")).unwrap();
        std::fs::create_dir_all(report.join("2026-01-01T01-00Z")).unwrap();
        std::fs::write(report.join("data").join(name), data).unwrap();
        let manifest = report.join("2026-01-01T01-00Z/manifest.json");
        std::fs::write(
            &manifest,
            serde_json::json!({
                "sourceBucket": "photos-bucket", "destinationBucket": "arn:aws:s3:::dest", "version": "2016-11-30",
                "fileFormat": format, "fileSchema": schema,
                "files": [{"key": format!("dest/photos-bucket/cfg/data/{name}"), "size": data.len(), "MD5checksum": ""}]
            })
            .to_string(),
        )
        .unwrap();
        manifest
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn text_lists_skip_blank_lines_and_keep_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.txt");
        std::fs::write(&file, "a.jpg\r\n\n b .jpg\nsub/c.png").unwrap();
        let (keys, counts) = read(&dataset(&file, "text"), &memory("", "memory:///")).unwrap();
        assert_eq!(keys, [("a.jpg".into(), 0), (" b .jpg".into(), 0), ("sub/c.png".into(), 0)]);
        assert_eq!(counts, KeyListCounts { keys: 3, outside: 0 });
    }

    #[test]
    fn csv_lists_find_their_columns_by_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.csv");
        std::fs::write(&file, "Size,other,KEY\n7,x,\"a,b.jpg\"\n,y,c.jpg\n").unwrap();
        let (keys, _) = read(&dataset(&file, "csv"), &memory("", "memory:///")).unwrap();
        assert_eq!(keys, [("a,b.jpg".into(), 7), ("c.jpg".into(), 0)]);
        std::fs::write(&file, "key\n\"open.jpg\n").unwrap();
        let err = read(&dataset(&file, "csv"), &memory("", "memory:///")).unwrap_err();
        assert!(err.contains(&format!("{}: line 2: a quoted field is not closed", file.display())), "{err}");
    }

    #[test]
    fn inventory_csv_keys_are_decoded_and_kept_under_the_location() {
        let dir = tempfile::tempdir().unwrap();
        let rows = "\"photos-bucket\",\"images%2Fa+b.jpg\",\"3\",\"x\"\n\
                    \"photos-bucket\",\"images/%C3%A9%2B.jpg\",\"4\",\"x\"\n\
                    \"photos-bucket\",\"elsewhere/c.jpg\",\"5\",\"x\"\n\
                    \"photos-bucket\",\"images-other/d.jpg\",\"6\",\"x\"\n\
                    \"photos-bucket\",\"images/\",\"0\",\"x\"\n";
        let manifest =
            inventory(dir.path(), "CSV", "Bucket, Key, Size, LastModifiedDate", "1.csv.gz", &gzip(rows.as_bytes()));
        let d = dataset(&manifest, "s3-inventory");
        let (keys, counts) = read(&d, &memory("images", "s3://photos-bucket/images")).unwrap();
        assert_eq!(keys, [("a b.jpg".into(), 3), ("é+.jpg".into(), 4)]);
        assert_eq!(counts, KeyListCounts { keys: 5, outside: 3 });
        // The whole bucket: every key, as the bucket names it.
        let (keys, _) = read(&d, &memory("", "s3://photos-bucket")).unwrap();
        assert_eq!(keys.len(), 5);
        let err = read(&d, &memory("images", "s3://another-bucket/images")).unwrap_err();
        assert!(
            err.contains("the inventory is of bucket \"photos-bucket\"") && err.contains("another-bucket"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_inventory_row_names_the_data_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let rows = "\"photos-bucket\",\"a.jpg\",\"1\"\n\"photos-bucket\",\"b%zz.jpg\",\"1\"\n";
        let manifest = inventory(dir.path(), "CSV", "Bucket, Key, Size", "2.csv.gz", &gzip(rows.as_bytes()));
        let err = read(&dataset(&manifest, "s3-inventory"), &memory("", "memory:///")).unwrap_err();
        assert!(
            err.contains("dest/photos-bucket/cfg/data/2.csv.gz: line 2:") && err.contains("two hex digits"),
            "{err}"
        );
        let manifest = inventory(dir.path(), "ORC", "", "3.orc", b"x");
        let err = read(&dataset(&manifest, "s3-inventory"), &memory("", "memory:///")).unwrap_err();
        assert!(err.contains("fileFormat \"orc\" is not read here"), "{err}");
    }

    #[test]
    fn inventory_parquet_keys_are_read_as_they_are() {
        use arrow_array::{Int64Array, RecordBatch, StringArray};
        let dir = tempfile::tempdir().unwrap();
        let batch = RecordBatch::try_from_iter([
            ("bucket", Arc::new(StringArray::from(vec!["photos-bucket"; 3])) as ArrayRef),
            ("key", Arc::new(StringArray::from(vec!["images/a+b%20.jpg", "images/c.jpg", "x/d.jpg"])) as ArrayRef),
            ("size", Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])) as ArrayRef),
        ])
        .unwrap();
        let mut bytes = Vec::new();
        let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(2)).build();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let manifest = inventory(dir.path(), "Parquet", "message s3.inventory {}", "1.parquet", &bytes);
        let (keys, counts) =
            read(&dataset(&manifest, "s3-inventory"), &memory("images", "s3://photos-bucket/images")).unwrap();
        assert_eq!(keys, [("a+b%20.jpg".into(), 1), ("c.jpg".into(), 0)]);
        assert_eq!(counts, KeyListCounts { keys: 3, outside: 1 });
    }

    #[test]
    fn csv_fields_follow_rfc_4180() {
        let f = |l: &str| csv_fields(l).unwrap().into_iter().map(|c| c.into_owned()).collect::<Vec<_>>();
        assert_eq!(f("a,b,,c"), ["a", "b", "", "c"]);
        assert_eq!(f(r#""a,b","say ""hi""",3"#), ["a,b", "say \"hi\"", "3"]);
        assert_eq!(f(r#""""#), [""]);
        assert!(csv_fields(r#""open,b"#).unwrap_err().contains("not closed"));
        assert!(csv_fields(r#""a"x,b"#).unwrap_err().contains("after a closing quote"));
    }

    #[test]
    fn inventory_keys_are_url_decoded_with_plus_for_space() {
        assert_eq!(decode_inventory_key("a+b%2Bc%2Fd%C3%A9.jpg").unwrap(), "a b+c/dé.jpg");
        assert_eq!(decode_inventory_key("plain/x.jpg").unwrap(), "plain/x.jpg");
        assert!(decode_inventory_key("bad%zz.jpg").unwrap_err().contains("two hex digits"));
        assert!(decode_inventory_key("bad%C3.jpg").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn inventory_data_files_are_found_beside_the_manifest() {
        let data = "inv/src/cfg/data/1.csv.gz";
        assert_eq!(inventory_root("s3://dest/inv/src/cfg/2026-01-01T01-00Z/manifest.json", data).unwrap(), "s3://dest");
        assert_eq!(inventory_root("/tmp/d/inv/src/cfg/2026-01-01T01-00Z/manifest.json", data).unwrap(), "/tmp/d");
        let err = inventory_root("/tmp/d/other/2026-01-01T01-00Z/manifest.json", data).unwrap_err();
        assert!(err.contains("inv/src/cfg/data/1.csv.gz"), "{err}");
        assert_eq!(s3_bucket("s3://b/p/q"), Some("b"));
        assert_eq!(s3_bucket("/local"), None);
    }
}
