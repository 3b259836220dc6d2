//! Planning: list every dataset once and freeze the sorted input manifest every shard job reads.

use std::collections::HashMap;

use shards::inputs::{self, InputIndex};
use tracing::info;

use super::{runtime, PipelineError};
use crate::config::LabelConfig;
use crate::teacher::Teacher;

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
        let mut sources = Vec::new();
        for d in &cfg.datasets {
            sources.push((d.name.clone(), shards::open(&d.location)?));
        }
        let exts: HashMap<String, Vec<String>> =
            cfg.datasets.iter().map(|d| (d.name.clone(), d.extensions.clone())).collect();
        let mut entries = Vec::new();
        for (name, loc) in &sources {
            let allowed = &exts[name];
            let listed = inputs::list_entries(&[(name.clone(), loc.clone())], |key| {
                let ext = key.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
                allowed.contains(&ext)
            })
            .await?;
            info!(dataset = %name, images = listed.len(), location = %loc.display, "listed dataset");
            entries.extend(listed);
        }
        Ok(inputs::freeze(&out, entries, inputs::DEFAULT_PART_SIZE).await?)
    })
}
