//! Checkpoints that a killed run can always resume from.
//!
//! A checkpoint is a directory `<run>/checkpoints/step-NNNNNNNN/` with
//! - `model.safetensors`: every variable of the model (weights, batch-norm statistics, learned task
//!   log-variances), readable from Python with `safetensors`;
//! - `optimizer.safetensors`: the optimiser's buffers;
//! - `state.json`: step, sampler position, optimiser update count, loss scale and the student's
//!   architecture (checked on resume).
//!
//! It is written into a temporary sibling directory, every file is synced, and the directory is then
//! renamed into place: a reader (or a resumed run) sees a complete checkpoint or none. The newest
//! complete one wins; older ones beyond `keep` are deleted after a new one lands.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::SamplerState;
use crate::model::StudentConfig;

pub const FORMAT_VERSION: u32 = 1;
const MODEL_FILE: &str = "model.safetensors";
const OPTIM_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";

/// The small part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    pub format_version: u32,
    /// Training steps completed.
    pub step: u64,
    pub sampler: SamplerState,
    pub optimizer_updates: u64,
    /// Mixed-precision loss scale (1 when unused).
    pub loss_scale: f64,
    pub student: StudentConfig,
}

/// A checkpoint problem, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Tensors {
        path: String,
        #[source]
        source: tch::TchError,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.display().to_string(), source }
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn parse_step(name: &str) -> Option<u64> {
    name.strip_prefix("step-").filter(|s| s.len() == 8).and_then(|s| s.parse().ok())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    let host: Vec<(&str, Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&host, path)
        .map_err(|source| CheckpointError::Tensors { path: path.display().to_string(), source })?;
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    Tensor::read_safetensors(path)
        .map_err(|source| CheckpointError::Tensors { path: path.display().to_string(), source })
}

/// Saves a checkpoint under `dir` (the run's `checkpoints/` directory) atomically; returns its path.
pub fn save(
    dir: &Path,
    state: &CheckpointState,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let final_dir = dir.join(step_dir_name(state.step));
    let tmp = dir.join(format!(".tmp-{}-{}", step_dir_name(state.step), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    write_tensors(&tmp.join(MODEL_FILE), model)?;
    write_tensors(&tmp.join(OPTIM_FILE), optimizer)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| CheckpointError::Invalid {
        path: tmp.display().to_string(),
        reason: format!("cannot encode state: {e}"),
    })?;
    write_synced(&tmp.join(STATE_FILE), &json)?;
    if final_dir.exists() {
        // The same step was checkpointed before (a re-run of a killed run); the run is deterministic,
        // so the existing one is equivalent. Keep it.
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    } else {
        fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    prune(dir, keep)?;
    Ok(final_dir)
}

/// Complete checkpoints under `dir`, oldest first. Temporary directories of interrupted saves are ignored.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        if let Some(step) = name.to_str().and_then(parse_step) {
            if entry.path().join(STATE_FILE).is_file() {
                found.push((step, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    Ok(list(dir)?.pop().map(|(_, p)| p))
}

fn prune(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let all = list(dir)?;
    let drop = all.len().saturating_sub(keep.max(1));
    for (_, path) in &all[..drop] {
        fs::remove_dir_all(path).map_err(io(path))?;
    }
    // Leftovers of saves killed half-way.
    for entry in fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".tmp-") && !name.ends_with(&format!("-{}", std::process::id())) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub state: CheckpointState,
    pub model: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
}

/// Reads the checkpoint directory `path` (or, when `path` is a run's `checkpoints/` directory or a run
/// directory, its newest checkpoint).
pub fn load(path: &Path) -> Result<Loaded, CheckpointError> {
    let dir = if path.join(STATE_FILE).is_file() {
        path.to_owned()
    } else {
        let candidates = [path.to_owned(), path.join("checkpoints")];
        let mut found = None;
        for c in &candidates {
            if let Some(p) = latest(c)? {
                found = Some(p);
                break;
            }
        }
        found.ok_or_else(|| CheckpointError::Invalid {
            path: path.display().to_string(),
            reason: "no complete checkpoint here (expected state.json, or checkpoints/step-*/state.json)".into(),
        })?
    };
    let state_path = dir.join(STATE_FILE);
    let text = fs::read(&state_path).map_err(io(&state_path))?;
    let state: CheckpointState = serde_json::from_slice(&text)
        .map_err(|e| CheckpointError::Invalid { path: state_path.display().to_string(), reason: e.to_string() })?;
    if state.format_version != FORMAT_VERSION {
        return Err(CheckpointError::Invalid {
            path: state_path.display().to_string(),
            reason: format!("format_version {} (this trainer reads {FORMAT_VERSION})", state.format_version),
        });
    }
    let model = read_tensors(&dir.join(MODEL_FILE))?;
    let optimizer = read_tensors(&dir.join(OPTIM_FILE))?;
    Ok(Loaded { path: dir, state, model, optimizer })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> CheckpointState {
        CheckpointState {
            format_version: FORMAT_VERSION,
            step,
            sampler: SamplerState::default(),
            optimizer_updates: step,
            loss_scale: 1.0,
            student: StudentConfig::tiny(3, 2, 4),
        }
    }

    #[test]
    fn saves_atomically_keeps_the_newest_and_ignores_partial_saves() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoints");
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        for step in [10, 20, 30] {
            save(&ckpt, &state(step), &[("w".into(), &w * step as f64)], &[], 2).unwrap();
        }
        let steps: Vec<u64> = list(&ckpt).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
        // A save killed before its rename leaves a temp dir, and one killed before state.json a dir without
        // it: neither is taken.
        fs::create_dir_all(ckpt.join(".tmp-step-00000040-1")).unwrap();
        fs::create_dir_all(ckpt.join("step-00000050")).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.state.step, 30);
        let v: Vec<f32> = Vec::try_from(&loaded.model[0].1).unwrap();
        assert_eq!(v, vec![30.0, 60.0, 90.0]);
    }

    #[test]
    fn missing_or_foreign_checkpoints_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()) && err.contains("no complete checkpoint"), "{err}");
        let ckpt = dir.path().join("checkpoints");
        let path = save(&ckpt, &state(1), &[], &[], 1).unwrap();
        let text = fs::read_to_string(path.join(STATE_FILE))
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 9");
        fs::write(path.join(STATE_FILE), text).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("state.json") && err.contains("format_version 9"), "{err}");
        fs::write(path.join(MODEL_FILE), b"not tensors").unwrap();
        fs::write(path.join(STATE_FILE), serde_json::to_vec(&state(1)).unwrap()).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains(MODEL_FILE), "{err}");
    }
}
