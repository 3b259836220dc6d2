//! A run's `metrics.jsonl`: one JSON object per line, appended as the run goes and read back for plots.
//!
//! Every line carries a `kind` (`train`, `eval`, `finetune`, ...) and a `step`; a resumed run cuts the log
//! back to its checkpoint's step, so the file always describes one uninterrupted run.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_err, TrainError};

/// Appends JSON lines to `metrics.jsonl`, flushing each so a killed run loses at most one line.
pub(crate) struct MetricsLog {
    path: PathBuf,
    file: fs::File,
}

impl MetricsLog {
    /// Opens the log, keeping only records at or before `step` (all of them are dropped for a new run).
    pub(crate) fn open(path: &Path, keep_through: Option<u64>) -> Result<MetricsLog, TrainError> {
        match keep_through {
            Some(step) => Self::open_keeping(path, |v| v["step"].as_u64().is_some_and(|s| s <= step)),
            None => Self::open_keeping(path, |_| false),
        }
    }

    /// Opens the log, keeping the records for which `keep` is true.
    pub(crate) fn open_keeping(
        path: &Path,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<MetricsLog, TrainError> {
        let mut kept = Vec::new();
        if let Ok(f) = fs::File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io_err(path))?;
                if serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| keep(&v)) {
                    kept.push(line);
                }
            }
        }
        let mut file = fs::File::create(path).map_err(io_err(path))?;
        for line in kept {
            writeln!(file, "{line}").map_err(io_err(path))?;
        }
        Ok(MetricsLog { path: path.to_owned(), file })
    }

    pub(crate) fn write(&mut self, value: &serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.file, "{value}").and_then(|_| self.file.flush()).map_err(io_err(&self.path))
    }
}

/// Reads every record of a run's `metrics.jsonl`.
pub fn read_metrics(run: &Path) -> Result<Vec<serde_json::Value>, TrainError> {
    let path = run.join("metrics.jsonl");
    let f = fs::File::open(&path).map_err(io_err(&path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io_err(&path))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| TrainError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1)),
        })?;
        out.push(v);
    }
    Ok(out)
}
