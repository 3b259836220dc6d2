//! Planning: list every dataset once and freeze the sorted input manifest every shard job reads.
//!
//! Loose files are one entry each; packed datasets are planned over containers (a tar is one entry, a
//! Parquet file one entry per row group, read from its footer), never by opening samples. A dataset in
//! which nothing is found is an error, not an empty plan: it is almost always a wrong location or format,
//! and the message says what the location holds instead.

use std::cell::RefCell;
use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use shards::inputs::{self, InputEntry, InputIndex};
use shards::Location;
use tracing::info;

use super::packed::{plan_parquet, ParquetColumns};
use super::{runtime, PipelineError};
use crate::config::{DatasetConfig, DatasetFormat, LabelConfig};
use crate::teacher::Teacher;

/// Footers of Parquet files read at once while planning.
const FOOTER_READS: usize = 16;

/// Freeze the inputs of every dataset in `cfg` under the output location.
///
/// Every teacher is loaded first, so a spec that does not fit its model fails here, before a listing that
/// may take hours on a large bucket, rather than in every shard job afterwards.
pub fn plan(cfg: &LabelConfig) -> Result<InputIndex, PipelineError> {
    for entry in &cfg.teachers {
        Teacher::load(&entry.spec, &entry.file, &cfg.session_settings())?;
    }
    let rt = runtime()?;
    rt.block_on(async {
        let out = shards::open(&cfg.output)?;
        let mut entries = Vec::new();
        for d in &cfg.datasets {
            let loc = shards::open(&d.location)?;
            let listed = plan_dataset(d, &loc).await?;
            info!(dataset = %d.name, format = d.format.name(), entries = listed.len(), location = %loc.display, "listed dataset");
            entries.extend(listed);
        }
        Ok(inputs::freeze(&out, entries, inputs::DEFAULT_PART_SIZE).await?)
    })
}

/// The extension of a key's file name, lower case (`""` when it has none).
fn extension(key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default()
}

/// The entries of one dataset, by its format; an error when there are none.
async fn plan_dataset(d: &DatasetConfig, loc: &Location) -> Result<Vec<InputEntry>, PipelineError> {
    // Everything listed that is not taken, counted by extension, for the message when nothing is taken.
    let others: RefCell<BTreeMap<String, u64>> = RefCell::default();
    let sources = [(d.name.clone(), loc.clone())];
    let take = |wanted: fn(&DatasetConfig, &str) -> bool| {
        let others = &others;
        move |key: &str| {
            let ext = extension(key);
            let ok = wanted(d, &ext);
            if !ok {
                *others.borrow_mut().entry(ext).or_default() += 1;
            }
            ok
        }
    };
    let (entries, looked_for) = match d.format {
        DatasetFormat::Files => {
            let listed = inputs::list_entries(&sources, take(|d, ext| d.extensions.iter().any(|e| e == ext))).await?;
            (listed, format!("images (extensions {})", d.extensions.join(", ")))
        }
        DatasetFormat::Webdataset => {
            let tars = match &d.pattern {
                Some(p) => named(d, loc, p).await?,
                None => inputs::list_entries(&sources, take(|_, ext| ext == "tar")).await?,
            };
            (tars, "WebDataset shards (.tar)".to_owned())
        }
        DatasetFormat::Parquet => {
            let files = match &d.pattern {
                Some(p) => named(d, loc, p).await?,
                None => inputs::list_entries(&sources, take(|_, ext| ext == "parquet")).await?,
            };
            let columns = ParquetColumns { image: d.image_column.clone(), key: d.key_column.clone() };
            let groups: Vec<Vec<InputEntry>> = futures::stream::iter(files.iter())
                .map(|f| plan_parquet(&d.name, loc, &f.key, f.size, &columns))
                .buffered(FOOTER_READS)
                .try_collect()
                .await?;
            let none = if files.is_empty() { "Parquet files" } else { "rows in its Parquet files" };
            (groups.into_iter().flatten().collect(), none.to_owned())
        }
    };
    if entries.is_empty() {
        return Err(PipelineError::Plan {
            dataset: d.name.clone(),
            message: nothing_found(&loc.display, &looked_for, &others.borrow(), d.format),
        });
    }
    Ok(entries)
}

/// Objects read at once to size the containers a pattern names.
const HEADS: usize = 32;

/// The containers `pattern` names under `loc`, sized by a HEAD each instead of a listing; every one must
/// be there (a pattern names what the dataset is).
async fn named(d: &DatasetConfig, loc: &Location, pattern: &str) -> Result<Vec<InputEntry>, PipelineError> {
    let names = crate::config::expand_braces(pattern)
        .map_err(|message| PipelineError::Plan { dataset: d.name.clone(), message })?;
    futures::stream::iter(names)
        .map(|name| async move {
            let path = loc.child(&name);
            match loc.store.head(&path).await {
                Ok(meta) => Ok(InputEntry::object(d.name.clone(), name, meta.size)),
                Err(e) => Err(PipelineError::Plan {
                    dataset: d.name.clone(),
                    message: format!(
                        "pattern {pattern:?} names {}, which cannot be read: {}",
                        loc.uri_of(&path),
                        shards::describe_store_error(&e)
                    ),
                }),
            }
        })
        .buffered(HEADS)
        .try_collect()
        .await
}

/// "no images under <loc> (extensions jpg, png); found 1 .tar: set format = "webdataset"".
fn nothing_found(loc: &str, looked_for: &str, others: &BTreeMap<String, u64>, format: DatasetFormat) -> String {
    let mut found: Vec<(&String, &u64)> = others.iter().collect();
    found.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let list: Vec<String> = found
        .iter()
        .take(5)
        .map(|(ext, n)| if ext.is_empty() { format!("{n} without extension") } else { format!("{n} .{ext}") })
        .collect();
    let mut message = format!("no {looked_for} under {loc}");
    if list.is_empty() {
        message.push_str("; the location is empty or does not exist");
        return message;
    }
    message.push_str(&format!("; found {}", list.join(", ")));
    if found.len() > 5 {
        message.push_str(&format!(" and {} other extension(s)", found.len() - 5));
    }
    let hint = [("tar", DatasetFormat::Webdataset), ("parquet", DatasetFormat::Parquet)]
        .into_iter()
        .find(|(ext, f)| *f != format && others.contains_key(*ext))
        .map(|(_, f)| f)
        .or_else(|| {
            let images = crate::config::default_extensions();
            (format != DatasetFormat::Files && others.keys().any(|e| images.contains(e)))
                .then_some(DatasetFormat::Files)
        });
    match hint {
        Some(f) => message.push_str(&format!(": set format = {:?}", f.name())),
        None if format == DatasetFormat::Files => message.push_str(": set `extensions` to include them"),
        None => {}
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_dataset_says_what_the_location_holds() {
        let others = BTreeMap::from([("tar".to_owned(), 1), ("json".to_owned(), 2)]);
        let m = nothing_found("/d/web", "images (extensions jpg, png)", &others, DatasetFormat::Files);
        assert_eq!(
            m,
            "no images (extensions jpg, png) under /d/web; found 2 .json, 1 .tar: set format = \"webdataset\""
        );
        let others = BTreeMap::from([("jpg".to_owned(), 3)]);
        let m = nothing_found("/d", "WebDataset shards (.tar)", &others, DatasetFormat::Webdataset);
        assert!(m.ends_with("found 3 .jpg: set format = \"files\""), "{m}");
        let m = nothing_found("/d", "images (extensions jpg)", &BTreeMap::new(), DatasetFormat::Files);
        assert!(m.ends_with("the location is empty or does not exist"), "{m}");
        assert_eq!(extension("a.b/c"), "");
        assert_eq!(extension("x/0001.TAR"), "tar");
    }
}
