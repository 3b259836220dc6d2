//! The row-group index: what committed data exists, read from manifests and Parquet footers only.
//!
//! Every file is checked here, before training starts: schema version, presence and type of every column
//! the configured tasks need, and the row count the manifest promised. A file that fails names itself
//! (and the column) in the error. The index keeps one entry per row group and the footer of each file
//! (reused for every later read, so no footer is fetched twice); nothing grows with the number of rows.

use arrow_schema::{DataType, Schema};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::ProjectionMask;
use shards::{Location, ObjectReader};

use super::config::{DataConfig, Sampling, Task};
use super::rng::{hash_bytes, hash_words};
use super::DataError;

/// Footers fetched at once while indexing.
const FOOTER_CONCURRENCY: usize = 16;

/// Which tasks are read from a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskSet {
    pub cls: bool,
    pub det: bool,
    pub seg: bool,
    pub depth: bool,
}

impl TaskSet {
    pub(crate) fn of(tasks: &[Task]) -> Self {
        let has = |t| tasks.contains(&t);
        Self { cls: has(Task::Cls), det: has(Task::Det), seg: has(Task::Seg), depth: has(Task::Depth) }
    }
}

/// The Arrow type a column must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    Str,
    Bytes,
    U16,
    U32,
    F32,
    ListU8,
    ListU16,
    ListBoxes,
}

impl Want {
    fn describe(self) -> &'static str {
        match self {
            Want::Str => "Utf8",
            Want::Bytes => "Binary",
            Want::U16 => "UInt16",
            Want::U32 => "UInt32",
            Want::F32 => "Float32",
            Want::ListU8 => "List<UInt8>",
            Want::ListU16 => "List<UInt16>",
            Want::ListBoxes => "List<Struct{x0,y0,x1,y1: Float32, class_id: UInt16, ..}>",
        }
    }

    fn fits(self, dt: &DataType) -> bool {
        let list_of = |dt: &DataType, inner: &dyn Fn(&DataType) -> bool| match dt {
            DataType::List(f) | DataType::LargeList(f) => inner(f.data_type()),
            _ => false,
        };
        match self {
            Want::Str => matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
            Want::Bytes => matches!(dt, DataType::Binary | DataType::LargeBinary | DataType::BinaryView),
            Want::U16 => dt == &DataType::UInt16,
            Want::U32 => dt == &DataType::UInt32,
            Want::F32 => dt == &DataType::Float32,
            Want::ListU8 => list_of(dt, &|t| t == &DataType::UInt8),
            Want::ListU16 => list_of(dt, &|t| t == &DataType::UInt16),
            Want::ListBoxes => list_of(dt, &|t| match t {
                DataType::Struct(fields) => {
                    let has =
                        |name: &str, want: &DataType| fields.iter().any(|f| f.name() == name && f.data_type() == want);
                    ["x0", "y0", "x1", "y1"].iter().all(|n| has(n, &DataType::Float32))
                        && has("class_id", &DataType::UInt16)
                }
                _ => false,
            }),
        }
    }
}

/// The columns read for a dataset's tasks, with their required types.
pub(crate) fn columns_for(tasks: TaskSet) -> Vec<(&'static str, Want)> {
    use schemas::columns::*;
    let mut cols = vec![(KEY, Want::Str), (WIDTH, Want::U32), (HEIGHT, Want::U32), (IMAGE, Want::Bytes)];
    if tasks.cls {
        cols.extend([(CLS_ORIGIN, Want::Str), (CLS_PROBS, Want::ListU16)]);
    }
    if tasks.det {
        cols.extend([(DET_ORIGIN, Want::Str), (DET_BOXES, Want::ListBoxes)]);
    }
    if tasks.seg {
        cols.extend([
            (SEG_ORIGIN, Want::Str),
            (SEG_HEIGHT, Want::U16),
            (SEG_WIDTH, Want::U16),
            (SEG_MASK, Want::ListU8),
        ]);
    }
    if tasks.depth {
        cols.extend([
            (DEPTH_ORIGIN, Want::Str),
            (DEPTH_HEIGHT, Want::U16),
            (DEPTH_WIDTH, Want::U16),
            (DEPTH_KIND, Want::Str),
            (DEPTH_Q, Want::ListU16),
            (DEPTH_OFFSET, Want::F32),
            (DEPTH_SCALE, Want::F32),
        ]);
    }
    cols
}

/// A dataset as indexed.
pub(crate) struct DatasetIndex {
    pub name: String,
    pub location: Location,
    pub tasks: TaskSet,
    pub rows: u64,
    pub files: usize,
}

/// One record file named by a committed manifest.
pub(crate) struct FileIndex {
    pub dataset: u32,
    pub uri: String,
    pub path: Path,
    pub size: u64,
    pub meta: ArrowReaderMetadata,
    pub projection: ProjectionMask,
}

/// One non-empty row group.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupIndex {
    pub file: u32,
    pub row_group: u32,
    pub rows: u64,
}

/// The whole index; see the module docs.
pub(crate) struct Index {
    pub datasets: Vec<DatasetIndex>,
    pub files: Vec<FileIndex>,
    pub groups: Vec<GroupIndex>,
    /// The interleaving stratum of every group: one per (configured dataset, labeler dataset), so that
    /// the labeler's datasets inside one output root (the demo's pool and supervised sets) mix as well
    /// as configured datasets do. The labeler dataset of a group comes from the `dataset` column's
    /// statistics in the footer; groups without a single one share their configured dataset's stratum.
    pub strata: Vec<u32>,
    /// Hash of everything that determines the sample order (files, row-group sizes, sampling settings).
    pub fingerprint: u64,
}

impl Index {
    /// `(dataset, rows)` of every row group, for the sequencer.
    pub(crate) fn group_sizes(&self) -> Vec<(u32, u64)> {
        self.groups.iter().map(|g| (self.files[g.file as usize].dataset, g.rows)).collect()
    }
}

/// Check the schema of one file against the columns a dataset needs; returns the projection.
///
/// The Arrow schema read back from a file carries the footer's key-value metadata too, so the version
/// and record kind are found whether the writer put them in the Arrow schema or only in the footer.
pub(crate) fn check_schema(
    uri: &str,
    schema: &Schema,
    tasks: TaskSet,
    parquet_schema: &parquet::schema::types::SchemaDescriptor,
) -> Result<ProjectionMask, DataError> {
    schemas::check_schema_version(schema).map_err(|e| DataError::SchemaVersion {
        uri: uri.to_owned(),
        key: schemas::SCHEMA_VERSION_KEY,
        reason: e.to_string(),
    })?;
    let image_kind = schemas::RecordKind::Image.as_str();
    if let Some(kind) = schema.metadata().get(schemas::RECORD_KIND_KEY) {
        if kind != image_kind {
            return Err(DataError::SchemaVersion {
                uri: uri.to_owned(),
                key: schemas::RECORD_KIND_KEY,
                reason: format!("record kind is {kind:?}, expected {image_kind:?}"),
            });
        }
    }
    let mut roots = Vec::new();
    for (name, want) in columns_for(tasks) {
        let (i, field) = schema.column_with_name(name).ok_or_else(|| DataError::Column {
            uri: uri.to_owned(),
            column: name.to_owned(),
            reason: "missing from the file, but the configured tasks need it".into(),
        })?;
        if !want.fits(field.data_type()) {
            return Err(DataError::Column {
                uri: uri.to_owned(),
                column: name.to_owned(),
                reason: format!("has type {}, expected {}", field.data_type(), want.describe()),
            });
        }
        roots.push(i);
    }
    Ok(ProjectionMask::roots(parquet_schema, roots))
}

/// A row group as its footer describes it: rows, and the one labeler dataset all of them belong to
/// (from the `dataset` column's exact min = max statistics), if any.
type FooterGroup = (u64, Option<String>);

struct Pending {
    dataset: u32,
    rel: String,
    size: u64,
    rows: u64,
}

/// Index the committed record files of every dataset.
pub(crate) async fn build(cfg: &DataConfig, locations: Vec<Location>) -> Result<Index, DataError> {
    let mut datasets = Vec::with_capacity(cfg.datasets.len());
    let mut pending = Vec::new();
    for (d, (spec, location)) in cfg.datasets.iter().zip(locations).enumerate() {
        let manifests = shards::committed_manifests(&location)
            .await
            .map_err(|source| DataError::Manifests { dataset: spec.name.clone(), source: Box::new(source) })?;
        // A root mixing plans, shard counts or teachers holds duplicate or inconsistent rows: refuse it.
        shards::check_consistent(&location.display, &manifests)
            .map_err(|source| DataError::Manifests { dataset: spec.name.clone(), source: Box::new(source) })?;
        let mut files = 0;
        for (_, manifest) in &manifests {
            for file in manifest.files.iter().filter(|f| f.kind == "records") {
                files += 1;
                pending.push(Pending { dataset: d as u32, rel: file.path.clone(), size: file.bytes, rows: file.rows });
            }
        }
        datasets.push(DatasetIndex {
            name: spec.name.clone(),
            location,
            tasks: TaskSet::of(&spec.tasks),
            rows: 0,
            files,
        });
    }

    let datasets_ref = &datasets;
    let opened: Vec<(FileIndex, Vec<FooterGroup>)> = futures::stream::iter(pending)
        .map(|p| async move { open_footer(&datasets_ref[p.dataset as usize], p).await })
        .buffered(FOOTER_CONCURRENCY)
        .try_collect()
        .await?;

    let mut files = Vec::with_capacity(opened.len());
    let mut groups = Vec::new();
    let mut strata = Vec::new();
    let mut stratum_ids: std::collections::HashMap<(u32, Option<String>), u32> = std::collections::HashMap::new();
    let mut fp = hash_words(&[
        cfg.seed,
        match cfg.sampling {
            Sampling::Uniform => 0,
            Sampling::PerDataset => 1,
        },
        cfg.shuffle_window as u64,
        u64::from(cfg.interleave_datasets),
    ]);
    for d in &datasets {
        fp = hash_bytes(fp, d.name.as_bytes());
    }
    for (f, (file, sizes)) in opened.into_iter().enumerate() {
        fp = hash_bytes(fp ^ u64::from(file.dataset), file.path.as_ref().as_bytes());
        for (rg, (rows, source)) in sizes.into_iter().enumerate() {
            fp = hash_words(&[fp, rows]);
            if cfg.interleave_datasets {
                fp = hash_bytes(fp, source.as_deref().unwrap_or("").as_bytes());
            }
            datasets[file.dataset as usize].rows += rows;
            if rows > 0 {
                groups.push(GroupIndex { file: f as u32, row_group: rg as u32, rows });
                let next = stratum_ids.len() as u32;
                strata.push(*stratum_ids.entry((file.dataset, source)).or_insert(next));
            }
        }
        files.push(file);
    }
    for d in &datasets {
        tracing::info!(dataset = %d.name, location = %d.location.display, files = d.files, rows = d.rows, "indexed committed shards");
    }
    Ok(Index { datasets, files, groups, strata, fingerprint: fp })
}

async fn open_footer(dataset: &DatasetIndex, p: Pending) -> Result<(FileIndex, Vec<FooterGroup>), DataError> {
    let path = dataset.location.child(&p.rel);
    let uri = dataset.location.uri_of(&path);
    let mut reader = ObjectReader::new(dataset.location.store.clone(), path.clone(), p.size);
    let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
        .await
        .map_err(|source| DataError::Footer { uri: uri.clone(), source: Box::new(source) })?;
    let parquet_meta = meta.metadata().clone();
    let projection = check_schema(&uri, meta.schema(), dataset.tasks, parquet_meta.file_metadata().schema_descr())?;
    let column =
        parquet_meta.file_metadata().schema_descr().columns().iter().position(|c| c.path().string() == "dataset");
    let groups: Vec<FooterGroup> = parquet_meta
        .row_groups()
        .iter()
        .map(|rg| {
            let stats = column.and_then(|c| rg.column(c).statistics());
            let single = stats
                .and_then(|s| Some((s.min_bytes_opt()?, s.max_bytes_opt()?, s.min_is_exact() && s.max_is_exact())))
                .filter(|(min, max, exact)| *exact && min == max)
                .and_then(|(min, _, _)| std::str::from_utf8(min).ok().map(str::to_owned));
            (rg.num_rows().max(0) as u64, single)
        })
        .collect();
    let found: u64 = groups.iter().map(|g| g.0).sum();
    if found != p.rows {
        return Err(DataError::RowCount { uri, manifest: p.rows, found });
    }
    Ok((FileIndex { dataset: p.dataset, uri, path, size: p.size, meta, projection }, groups))
}
