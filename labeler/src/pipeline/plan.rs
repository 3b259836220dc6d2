//! Planning: list every dataset once (or read its key list) and freeze the sorted input manifest every
//! shard job reads.
//!
//! Loose files are one entry each; packed datasets are planned over containers (a tar is one entry, a
//! Parquet file one entry per row group, read from its footer), never by opening samples. A dataset in
//! which nothing is found is an error, not an empty plan: it is almost always a wrong location or format,
//! and the message says what the location holds instead.
//!
//! Memory does not grow with the number of keys: listings and key lists are streamed into
//! `shards::inputs::Freezer`, which sorts runs of at most [`PlanOptions::run_entries`] entries, spills
//! them under [`PlanOptions::scratch`] and merges them into the manifest. Only a packed dataset's
//! container names are held (to read their footers), and there are thousands of them, not millions.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use shards::inputs::{self, Freezer, InputEntry, InputIndex};
use shards::Location;
use tracing::info;

use super::keylist::read_key_list;
use super::packed::{plan_parquet, ParquetColumns};
use super::{runtime, PipelineError};
use crate::config::{DatasetConfig, DatasetFormat, LabelConfig};
use crate::teacher::Teacher;

/// Footers of Parquet files read at once while planning.
const FOOTER_READS: usize = 16;

/// Where and in what pieces a plan sorts its entries.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Directory for the sorted runs a large plan spills (deleted when the plan is written); about 60
    /// bytes of disk per entry beyond the first run.
    pub scratch: PathBuf,
    /// Entries sorted in memory at once (about 150 bytes each).
    pub run_entries: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self { scratch: std::env::temp_dir(), run_entries: inputs::DEFAULT_RUN_ENTRIES }
    }
}

/// Freeze the inputs of every dataset in `cfg` under the output location, with the default options.
pub fn plan(cfg: &LabelConfig) -> Result<InputIndex, PipelineError> {
    plan_with(cfg, &PlanOptions::default())
}

/// Freeze the inputs of every dataset in `cfg` under the output location.
///
/// Every teacher is loaded first, so a spec that does not fit its model fails here, before a listing that
/// may take hours on a large bucket, rather than in every shard job afterwards.
pub fn plan_with(cfg: &LabelConfig, options: &PlanOptions) -> Result<InputIndex, PipelineError> {
    for entry in &cfg.teachers {
        Teacher::load(&entry.spec, &entry.file, &cfg.session_settings())?;
    }
    let rt = runtime()?;
    rt.block_on(async {
        let out = shards::open(&cfg.output)?;
        let mut freezer = Freezer::new(&options.scratch, options.run_entries);
        for d in &cfg.datasets {
            let loc = shards::open(&d.location)?;
            let before = freezer.pushed();
            plan_dataset(d, &loc, &mut freezer).await?;
            info!(dataset = %d.name, format = d.format.name(), entries = freezer.pushed() - before, location = %loc.display, "planned dataset");
        }
        info!(entries = freezer.pushed(), spilled_runs = freezer.runs(), "writing the input manifest");
        Ok(freezer.freeze(&out, inputs::DEFAULT_PART_SIZE).await?)
    })
}

/// The extension of a key's file name, lower case (`""` when it has none).
fn extension(key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default()
}

/// Call `each(key, size)` for every object of a dataset: its key list's keys, or a listing of `loc`.
/// Returns where they came from, for messages.
async fn objects(
    d: &DatasetConfig,
    loc: &Location,
    each: &mut dyn FnMut(String, u64) -> Result<(), PipelineError>,
) -> Result<String, PipelineError> {
    if let Some(list) = &d.key_list {
        let counts = read_key_list(d, loc, each).await?;
        info!(dataset = %d.name, key_list = %shards::redact_url(list), keys = counts.keys, outside_location = counts.outside, "read key list");
        let mut from = format!("{} (key list {}: {} keys", loc.display, shards::redact_url(list), counts.keys);
        if counts.outside > 0 {
            from.push_str(&format!(", {} of them outside the location", counts.outside));
        }
        from.push(')');
        return Ok(from);
    }
    let prefix = if loc.prefix.as_ref().is_empty() { None } else { Some(&loc.prefix) };
    let mut listing = loc.store.list(prefix);
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| inputs::InputError::List { uri: loc.display.clone(), source })?;
        if let Some(key) = loc.relative(&meta.location) {
            each(key, meta.size)?;
        }
    }
    Ok(loc.display.clone())
}

/// Push the entries of one dataset into `freezer`; an error when there are none.
async fn plan_dataset(d: &DatasetConfig, loc: &Location, freezer: &mut Freezer) -> Result<(), PipelineError> {
    // Everything found that is not taken, counted by extension, for the message when nothing is taken.
    let others: RefCell<BTreeMap<String, u64>> = RefCell::default();
    let wanted = |ext: &str| match d.format {
        DatasetFormat::Files => d.extensions.iter().any(|e| e == ext),
        DatasetFormat::Webdataset => ext == "tar",
        DatasetFormat::Parquet => ext == "parquet",
    };
    let take = |key: &str| {
        let ext = extension(key);
        let ok = wanted(&ext);
        if !ok {
            *others.borrow_mut().entry(ext).or_default() += 1;
        }
        ok
    };
    let before = freezer.pushed();
    let (from, looked_for) = match d.format {
        DatasetFormat::Files => {
            let from = objects(d, loc, &mut |key, size| {
                if take(&key) {
                    freezer.push(InputEntry::object(d.name.clone(), key, size))?;
                }
                Ok(())
            })
            .await?;
            (from, format!("images (extensions {})", d.extensions.join(", ")))
        }
        DatasetFormat::Webdataset | DatasetFormat::Parquet => {
            let mut containers = Vec::new();
            let from = match &d.pattern {
                Some(p) => {
                    containers = named(d, loc, p).await?;
                    loc.display.clone()
                }
                None => {
                    objects(d, loc, &mut |key, size| {
                        if take(&key) {
                            containers.push(InputEntry::object(d.name.clone(), key, size));
                        }
                        Ok(())
                    })
                    .await?
                }
            };
            if d.format == DatasetFormat::Webdataset {
                for tar in containers {
                    freezer.push(tar)?;
                }
                (from, "WebDataset shards (.tar)".to_owned())
            } else {
                let columns = ParquetColumns { image: d.image_column.clone(), key: d.key_column.clone() };
                let none = if containers.is_empty() { "Parquet files" } else { "rows in its Parquet files" };
                let mut groups = futures::stream::iter(containers.iter())
                    .map(|f| async {
                        // A key list without sizes: the footer is found from the end, so the size is needed.
                        let size = if f.size == 0 { head(d, loc, &f.key).await? } else { f.size };
                        plan_parquet(&d.name, loc, &f.key, size, &columns).await
                    })
                    .buffered(FOOTER_READS);
                while let Some(entries) = groups.try_next().await? {
                    for e in entries {
                        freezer.push(e)?;
                    }
                }
                (from, none.to_owned())
            }
        }
    };
    if freezer.pushed() == before {
        return Err(PipelineError::Plan {
            dataset: d.name.clone(),
            message: nothing_found(&from, &looked_for, &others.borrow(), d.format, d.key_list.is_some()),
        });
    }
    Ok(())
}

/// The size of `key` under `loc`, by a HEAD request.
async fn head(d: &DatasetConfig, loc: &Location, key: &str) -> Result<u64, PipelineError> {
    let path = loc.child(key);
    loc.store.head(&path).await.map(|m| m.size).map_err(|e| PipelineError::Plan {
        dataset: d.name.clone(),
        message: format!("{} cannot be read: {}", loc.uri_of(&path), shards::describe_store_error(&e)),
    })
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
fn nothing_found(
    loc: &str,
    looked_for: &str,
    others: &BTreeMap<String, u64>,
    format: DatasetFormat,
    key_list: bool,
) -> String {
    let mut found: Vec<(&String, &u64)> = others.iter().collect();
    found.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let list: Vec<String> = found
        .iter()
        .take(5)
        .map(|(ext, n)| if ext.is_empty() { format!("{n} without extension") } else { format!("{n} .{ext}") })
        .collect();
    let mut message = format!("no {looked_for} under {loc}");
    if list.is_empty() {
        message.push_str(if key_list {
            "; the key list names nothing under the location"
        } else {
            "; the location is empty or does not exist"
        });
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
        let m = nothing_found("/d/web", "images (extensions jpg, png)", &others, DatasetFormat::Files, false);
        assert_eq!(
            m,
            "no images (extensions jpg, png) under /d/web; found 2 .json, 1 .tar: set format = \"webdataset\""
        );
        let others = BTreeMap::from([("jpg".to_owned(), 3)]);
        let m = nothing_found("/d", "WebDataset shards (.tar)", &others, DatasetFormat::Webdataset, false);
        assert!(m.ends_with("found 3 .jpg: set format = \"files\""), "{m}");
        let m = nothing_found("/d", "images (extensions jpg)", &BTreeMap::new(), DatasetFormat::Files, false);
        assert!(m.ends_with("the location is empty or does not exist"), "{m}");
        assert_eq!(extension("a.b/c"), "");
        assert_eq!(extension("x/0001.TAR"), "tar");
    }
}
