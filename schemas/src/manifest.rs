//! The shard manifest: the small JSON object whose existence commits a shard.
//!
//! Readers only open files a committed manifest names, and trust its sizes, hashes and counts, so the
//! manifest is checked on the way out (`to_json_bytes`) and on the way in (`from_json_bytes`) against
//! the same rules: this schema version, a shard index inside the plan, well-formed hashes, relative
//! file paths, and counts that agree with the files. Unknown fields are refused rather than ignored,
//! since a field this build does not know may change what the files mean.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::record::Task;
use crate::version::SCHEMA_VERSION;

/// The manifest of one committed shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardManifest {
    /// [`SCHEMA_VERSION`] of the manifest and of every file it names.
    pub schema_version: u32,
    /// Zero-based shard index k.
    pub shard: u64,
    /// Number of shards N in the plan.
    pub num_shards: u64,
    /// Id of the attempt whose files these are (unique per attempt).
    pub attempt: String,
    /// sha256 (lowercase hex) of the frozen input manifest the shard plan was cut from.
    pub input_manifest_sha256: String,
    /// Version of the labeler that wrote the shard.
    pub labeler_version: String,
    /// Every data file of the shard.
    pub files: Vec<ManifestFile>,
    pub counts: ManifestCounts,
    /// The teachers whose predictions the shard holds.
    pub teachers: Vec<ManifestTeacher>,
    /// Inputs of the shard in the plan; `labelled_rows + error_rows` equals it (checked). Absent in
    /// manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<u64>,
    /// Everything that decides the shard's labels. A re-run of a committed shard compares its own
    /// fingerprint with this one, so a changed model, spec, threshold or plan is an error, not a silent no-op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<RunFingerprint>,
}

/// What decides a shard's labels: the plan, the shard count, the labeler and every teacher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFingerprint {
    pub labeler_version: String,
    /// sha256 of the frozen input manifest.
    pub input_manifest_sha256: String,
    /// Number of shards N of the plan.
    pub num_shards: u64,
    /// sha256 of the effective thresholds (box score, pixel confidence, temperature) as JSON.
    pub thresholds_sha256: String,
    pub teachers: Vec<FingerprintTeacher>,
}

/// One teacher in a [`RunFingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintTeacher {
    pub name: String,
    pub task: Task,
    /// sha256 of the model file.
    pub model_sha256: String,
    /// sha256 of the effective spec (presets applied, overrides included) as JSON.
    pub spec_sha256: String,
}

impl RunFingerprint {
    /// What differs between `self` (committed) and `now`, one readable line each; empty when equal.
    pub fn differences(&self, now: &RunFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, was: &dyn std::fmt::Display, is: &dyn std::fmt::Display| {
            let (was, is) = (was.to_string(), is.to_string());
            if was != is {
                out.push(format!("{name}: committed {was}, now {is}"));
            }
        };
        field("labeler version", &self.labeler_version, &now.labeler_version);
        field("input manifest sha256", &self.input_manifest_sha256, &now.input_manifest_sha256);
        field("number of shards", &self.num_shards, &now.num_shards);
        field("thresholds sha256", &self.thresholds_sha256, &now.thresholds_sha256);
        let names = |f: &RunFingerprint| f.teachers.iter().map(|t| t.name.clone()).collect::<Vec<_>>().join(", ");
        field("teachers", &names(self), &names(now));
        for old in &self.teachers {
            let Some(new) = now.teachers.iter().find(|t| t.name == old.name) else { continue };
            let short = |s: &str| s.get(..12).unwrap_or(s).to_owned();
            field(&format!("teacher {:?} task", old.name), &format!("{:?}", old.task), &format!("{:?}", new.task));
            field(
                &format!("teacher {:?} model sha256", old.name),
                &short(&old.model_sha256),
                &short(&new.model_sha256),
            );
            field(&format!("teacher {:?} spec sha256", old.name), &short(&old.spec_sha256), &short(&new.spec_sha256));
        }
        out
    }
}

/// One data file of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Path relative to the output root, `/`-separated.
    pub path: String,
    /// [`ManifestFile::RECORDS`] or [`ManifestFile::ERRORS`].
    pub kind: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256 of the file's bytes, lowercase hex.
    pub sha256: String,
    /// Number of rows.
    pub rows: u64,
}

impl ManifestFile {
    /// `kind` of a file of image records.
    pub const RECORDS: &'static str = "records";
    /// `kind` of a file of error records.
    pub const ERRORS: &'static str = "errors";
}

/// Row counts of a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCounts {
    /// Rows in all `records` files.
    pub labelled_rows: u64,
    /// Rows in all `errors` files.
    pub error_rows: u64,
    /// Error rows per `reason` code; sums to `error_rows`.
    pub errors_by_reason: BTreeMap<String, u64>,
}

/// A teacher whose predictions a shard holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestTeacher {
    /// The name stored in `<task>_teacher`.
    pub name: String,
    pub task: Task,
    /// sha256 of the model file, lowercase hex.
    pub model_sha256: String,
}

/// Why a manifest could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON of the expected shape")]
    Json(#[from] serde_json::Error),
    #[error("manifest field {field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ManifestError {
    ManifestError::Invalid { field: field.into(), problem: problem.into() }
}

impl Default for ShardManifest {
    /// An empty manifest of this schema version, to be filled in by the writer.
    fn default() -> Self {
        ShardManifest {
            schema_version: SCHEMA_VERSION,
            shard: 0,
            num_shards: 0,
            attempt: String::new(),
            input_manifest_sha256: String::new(),
            labeler_version: String::new(),
            files: Vec::new(),
            counts: ManifestCounts::default(),
            teachers: Vec::new(),
            inputs: None,
            fingerprint: None,
        }
    }
}

impl ShardManifest {
    /// Validate, then serialise as pretty-printed JSON (deterministic: maps are sorted).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parse and validate a manifest.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: ShardManifest = serde_json::from_slice(bytes)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Check the manifest's rules (see the module documentation).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(invalid(
                "schema_version",
                format!("is {}, but this build reads only version {SCHEMA_VERSION}", self.schema_version),
            ));
        }
        if self.num_shards == 0 {
            return Err(invalid("num_shards", "is 0"));
        }
        if self.shard >= self.num_shards {
            return Err(invalid("shard", format!("is {}, not below num_shards {}", self.shard, self.num_shards)));
        }
        if self.attempt.is_empty() {
            return Err(invalid("attempt", "is empty"));
        }
        check_sha256("input_manifest_sha256", &self.input_manifest_sha256)?;
        let mut paths = BTreeSet::new();
        let (mut labelled, mut errors) = (0u64, 0u64);
        for (i, file) in self.files.iter().enumerate() {
            check_relative_path(&format!("files[{i}].path"), &file.path)?;
            if !paths.insert(file.path.as_str()) {
                return Err(invalid(format!("files[{i}].path"), format!("{:?} is listed twice", file.path)));
            }
            check_sha256(&format!("files[{i}].sha256"), &file.sha256)?;
            let total = match file.kind.as_str() {
                ManifestFile::RECORDS => &mut labelled,
                ManifestFile::ERRORS => &mut errors,
                other => {
                    return Err(invalid(
                        format!("files[{i}].kind"),
                        format!("is {other:?}, expected records or errors"),
                    ))
                }
            };
            *total = total.checked_add(file.rows).ok_or_else(|| invalid(format!("files[{i}].rows"), "overflows"))?;
        }
        let counts = &self.counts;
        if counts.labelled_rows != labelled {
            return Err(invalid(
                "counts.labelled_rows",
                format!("is {}, but the records files hold {labelled} rows", counts.labelled_rows),
            ));
        }
        if counts.error_rows != errors {
            return Err(invalid(
                "counts.error_rows",
                format!("is {}, but the errors files hold {errors} rows", counts.error_rows),
            ));
        }
        let by_reason = counts.errors_by_reason.values().try_fold(0u64, |acc, &n| acc.checked_add(n));
        if by_reason != Some(errors) {
            return Err(invalid(
                "counts.errors_by_reason",
                format!(
                    "sums to {}, but error_rows is {errors}",
                    by_reason.map_or("more than 2^64".into(), |n| n.to_string())
                ),
            ));
        }
        if let Some(inputs) = self.inputs {
            if labelled.checked_add(errors) != Some(inputs) {
                return Err(invalid(
                    "inputs",
                    format!("is {inputs}, but the files hold {labelled} labelled + {errors} error rows"),
                ));
            }
        }
        if let Some(f) = &self.fingerprint {
            if f.num_shards != self.num_shards || f.input_manifest_sha256 != self.input_manifest_sha256 {
                return Err(invalid("fingerprint", "disagrees with num_shards or input_manifest_sha256"));
            }
        }
        for (i, teacher) in self.teachers.iter().enumerate() {
            if teacher.name.is_empty() {
                return Err(invalid(format!("teachers[{i}].name"), "is empty"));
            }
            check_sha256(&format!("teachers[{i}].model_sha256"), &teacher.model_sha256)?;
        }
        Ok(())
    }
}

fn check_sha256(field: &str, value: &str) -> Result<(), ManifestError> {
    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(invalid(field, format!("{value:?} is not a sha256 in lowercase hex")));
    }
    Ok(())
}

fn check_relative_path(field: &str, path: &str) -> Result<(), ManifestError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        return Err(invalid(field, format!("{path:?} is not a relative path below the output root")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn sample() -> ShardManifest {
        ShardManifest {
            schema_version: SCHEMA_VERSION,
            shard: 3,
            num_shards: 16,
            attempt: "20250101-abcdef".into(),
            input_manifest_sha256: hash('a'),
            labeler_version: "0.1.0".into(),
            files: vec![
                ManifestFile {
                    path: "data/shard-00003-of-00016/20250101-abcdef/records-00000.parquet".into(),
                    kind: ManifestFile::RECORDS.into(),
                    bytes: 1234,
                    sha256: hash('b'),
                    rows: 100,
                },
                ManifestFile {
                    path: "data/shard-00003-of-00016/20250101-abcdef/errors-00001.parquet".into(),
                    kind: ManifestFile::ERRORS.into(),
                    bytes: 56,
                    sha256: hash('c'),
                    rows: 3,
                },
            ],
            counts: ManifestCounts {
                labelled_rows: 100,
                error_rows: 3,
                errors_by_reason: [("truncated".to_owned(), 2), ("io".to_owned(), 1)].into_iter().collect(),
            },
            teachers: vec![ManifestTeacher { name: "midas".into(), task: Task::Depth, model_sha256: hash('d') }],
            inputs: Some(103),
            fingerprint: Some(fingerprint()),
        }
    }

    fn fingerprint() -> RunFingerprint {
        RunFingerprint {
            labeler_version: "0.1.0".into(),
            input_manifest_sha256: hash('a'),
            num_shards: 16,
            thresholds_sha256: hash('e'),
            teachers: vec![FingerprintTeacher {
                name: "midas".into(),
                task: Task::Depth,
                model_sha256: hash('d'),
                spec_sha256: hash('f'),
            }],
        }
    }

    #[test]
    fn inputs_must_equal_labelled_plus_error_rows() {
        let mut m = sample();
        m.inputs = Some(104);
        assert_eq!(problem_field(&m), "inputs");
        m.inputs = None;
        assert!(m.to_json_bytes().is_ok(), "manifests from before `inputs` was recorded still read");
    }

    #[test]
    fn fingerprint_differences_name_what_changed() {
        let a = fingerprint();
        assert!(a.differences(&a).is_empty());
        let mut b = a.clone();
        b.num_shards = 8;
        b.teachers[0].model_sha256 = hash('9');
        let d = b.differences(&a);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("number of shards: committed 8, now 16"), "{d:?}");
        assert!(d[1].contains("teacher \"midas\" model sha256"), "{d:?}");
        let mut m = sample();
        m.fingerprint = Some(b);
        assert_eq!(problem_field(&m), "fingerprint", "a fingerprint must agree with the manifest's own plan");
    }

    fn problem_field(m: &ShardManifest) -> String {
        match m.to_json_bytes() {
            Err(ManifestError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid manifest, got {other:?}"),
        }
    }

    #[test]
    fn json_round_trip_is_deterministic() {
        let m = sample();
        let bytes = m.to_json_bytes().unwrap();
        assert_eq!(ShardManifest::from_json_bytes(&bytes).unwrap(), m);
        assert_eq!(m.clone().to_json_bytes().unwrap(), bytes);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"task\": \"depth\""), "{text}");
        assert!(text.find("\"io\"").unwrap() < text.find("\"truncated\"").unwrap(), "reasons are sorted");
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused() {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().to_json_bytes().unwrap()).unwrap();
        value["surprise"] = serde_json::json!(1);
        let err = ShardManifest::from_json_bytes(value.to_string().as_bytes()).unwrap_err();
        assert!(format!("{:#}", anyhow_like(&err)).contains("surprise"), "{err:?}");
        assert!(matches!(ShardManifest::from_json_bytes(b"{"), Err(ManifestError::Json(_))));
    }

    /// The error and its sources on one line, as binaries print them.
    fn anyhow_like(err: &dyn std::error::Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut m = sample();
        m.schema_version = 2;
        assert_eq!(problem_field(&m), "schema_version");
        let mut m = sample();
        m.shard = 16;
        assert_eq!(problem_field(&m), "shard");
        let mut m = sample();
        m.num_shards = 0;
        assert_eq!(problem_field(&m), "num_shards");
        let mut m = sample();
        m.attempt.clear();
        assert_eq!(problem_field(&m), "attempt");
        let mut m = sample();
        m.input_manifest_sha256 = hash('A');
        assert_eq!(problem_field(&m), "input_manifest_sha256");
        let mut m = sample();
        m.files[1].kind = "logs".into();
        assert_eq!(problem_field(&m), "files[1].kind");
        for path in ["", "/abs/x.parquet", "data/../x", "data//x", "data\\x"] {
            let mut m = sample();
            m.files[0].path = path.into();
            assert_eq!(problem_field(&m), "files[0].path", "{path:?}");
        }
        let mut m = sample();
        m.files[1].path = m.files[0].path.clone();
        assert_eq!(problem_field(&m), "files[1].path");
        let mut m = sample();
        m.files[0].sha256 = "abc".into();
        assert_eq!(problem_field(&m), "files[0].sha256");
        let mut m = sample();
        m.counts.labelled_rows = 99;
        assert_eq!(problem_field(&m), "counts.labelled_rows");
        let mut m = sample();
        m.counts.error_rows = 4;
        assert_eq!(problem_field(&m), "counts.error_rows");
        let mut m = sample();
        m.counts.errors_by_reason.insert("panic".into(), 1);
        assert_eq!(problem_field(&m), "counts.errors_by_reason");
        let mut m = sample();
        m.teachers[0].model_sha256.pop();
        assert_eq!(problem_field(&m), "teachers[0].model_sha256");
    }

    #[test]
    fn refused_on_read_as_well() {
        let mut m = sample();
        m.counts.labelled_rows = 7;
        let bytes = serde_json::to_vec(&m).unwrap();
        let err = ShardManifest::from_json_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("counts.labelled_rows"), "{err}");
    }

    #[test]
    fn default_is_this_version() {
        assert_eq!(ShardManifest::default().schema_version, SCHEMA_VERSION);
    }
}
