//! Where the shard index comes from when a batch engine runs the labeler.
//!
//! Explicit `--shard`/`--num-shards` win; otherwise the engine's variables: Kubernetes Indexed Job
//! (`JOB_COMPLETION_INDEX`, N must be passed), AWS Batch array (`AWS_BATCH_JOB_ARRAY_INDEX`,
//! `AWS_BATCH_JOB_ARRAY_SIZE`), Slurm array (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`), GCP Batch
//! (`BATCH_TASK_INDEX`, `BATCH_TASK_COUNT`). Missing or inconsistent values are errors. The attempt number
//! an engine exposes is only logged, never used to choose inputs.

use std::collections::HashMap;

/// A resolved shard index with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardAssignment {
    pub index: u64,
    pub count: u64,
    pub source: String,
    pub engine_attempt: Option<String>,
}

/// Why the shard could not be determined.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("no shard index: pass --shard (or run under a batch engine that sets one, e.g. JOB_COMPLETION_INDEX)")]
    MissingIndex,
    #[error("no number of shards: pass --num-shards (the {0} does not expose it)")]
    MissingCount(String),
    #[error("{var}={value:?} is not a non-negative integer")]
    NotANumber { var: String, value: String },
    #[error("shard index {index} (from {source_name}) is not below the number of shards {count}")]
    OutOfRange { index: u64, count: u64, source_name: String },
    #[error("--num-shards {flag} disagrees with {var}={env}")]
    Inconsistent { flag: u64, var: String, env: u64 },
    #[error("the number of shards must be at least 1")]
    ZeroShards,
}

const ENGINES: &[(&str, &str, Option<&str>, Option<&str>)] = &[
    ("Kubernetes Indexed Job", "JOB_COMPLETION_INDEX", None, None),
    (
        "AWS Batch array job",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        Some("AWS_BATCH_JOB_ARRAY_SIZE"),
        Some("AWS_BATCH_JOB_ATTEMPT"),
    ),
    ("Slurm job array", "SLURM_ARRAY_TASK_ID", Some("SLURM_ARRAY_TASK_COUNT"), Some("SLURM_RESTART_COUNT")),
    ("GCP Batch", "BATCH_TASK_INDEX", Some("BATCH_TASK_COUNT"), Some("BATCH_TASK_RETRY_ATTEMPT")),
];

fn number(env: &HashMap<String, String>, var: &str) -> Result<Option<u64>, EngineError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) => {
            v.trim().parse().map(Some).map_err(|_| EngineError::NotANumber { var: var.to_owned(), value: v.clone() })
        }
    }
}

/// Resolve the shard from flags and an environment (pass `std::env::vars().collect()`).
pub fn resolve(
    shard: Option<u64>,
    num_shards: Option<u64>,
    env: &HashMap<String, String>,
) -> Result<ShardAssignment, EngineError> {
    let engine = ENGINES.iter().find(|(_, idx, _, _)| env.contains_key(*idx));
    let engine_attempt = engine.and_then(|(_, _, _, a)| a.and_then(|a| env.get(a).cloned()));
    let env_count = match engine {
        Some((_, _, Some(count_var), _)) => number(env, count_var)?.map(|c| (c, (*count_var).to_owned())),
        _ => None,
    };
    let (index, source) = match (shard, engine) {
        (Some(k), _) => (k, "--shard".to_owned()),
        (None, Some((name, var, _, _))) => (number(env, var)?.expect("present"), format!("{name} ({var})")),
        (None, None) => return Err(EngineError::MissingIndex),
    };
    let count = match (num_shards, &env_count) {
        (Some(n), Some((e, var))) if shard.is_none() && n != *e => {
            return Err(EngineError::Inconsistent { flag: n, var: var.clone(), env: *e })
        }
        (Some(n), _) => n,
        (None, Some((e, _))) => *e,
        (None, None) => {
            return Err(EngineError::MissingCount(engine.map(|e| e.0).unwrap_or("command line").to_owned()))
        }
    };
    if count == 0 {
        return Err(EngineError::ZeroShards);
    }
    if index >= count {
        return Err(EngineError::OutOfRange { index, count, source_name: source });
    }
    Ok(ShardAssignment { index, count, source, engine_attempt })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn flags_win_over_engines() {
        let e = env(&[("JOB_COMPLETION_INDEX", "3")]);
        let a = resolve(Some(1), Some(4), &e).unwrap();
        assert_eq!((a.index, a.count, a.source.as_str()), (1, 4, "--shard"));
    }

    #[test]
    fn kubernetes_needs_the_count_passed() {
        let e = env(&[("JOB_COMPLETION_INDEX", "2")]);
        assert!(matches!(resolve(None, None, &e), Err(EngineError::MissingCount(_))));
        let a = resolve(None, Some(4), &e).unwrap();
        assert_eq!((a.index, a.count), (2, 4));
    }

    #[test]
    fn aws_slurm_gcp_give_both() {
        for (i, c, a) in [
            ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE", "AWS_BATCH_JOB_ATTEMPT"),
            ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_RESTART_COUNT"),
            ("BATCH_TASK_INDEX", "BATCH_TASK_COUNT", "BATCH_TASK_RETRY_ATTEMPT"),
        ] {
            let e = env(&[(i, "5"), (c, "8"), (a, "2")]);
            let got = resolve(None, None, &e).unwrap();
            assert_eq!((got.index, got.count), (5, 8), "{i}");
            assert_eq!(got.engine_attempt.as_deref(), Some("2"));
        }
    }

    #[test]
    fn missing_inconsistent_and_out_of_range_are_errors() {
        assert_eq!(resolve(None, Some(3), &env(&[])), Err(EngineError::MissingIndex));
        let e = env(&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert!(matches!(resolve(None, Some(5), &e), Err(EngineError::Inconsistent { .. })));
        assert!(matches!(resolve(Some(4), Some(4), &env(&[])), Err(EngineError::OutOfRange { .. })));
        let e = env(&[("JOB_COMPLETION_INDEX", "x")]);
        assert!(matches!(resolve(None, Some(2), &e), Err(EngineError::NotANumber { .. })));
        assert_eq!(resolve(Some(0), Some(0), &env(&[])), Err(EngineError::ZeroShards));
    }
}
