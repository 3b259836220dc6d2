//! The run fingerprint: everything that decides a shard's labels, recorded in its manifest. A re-run of a
//! committed shard compares fingerprints, so changing a model, a spec, a threshold, the plan or the
//! labeler is reported as drift instead of being a silent no-op that keeps the old labels.

use schemas::{FingerprintTeacher, RunFingerprint, ShardManifest};
use sha2::{Digest, Sha256};
use shards::inputs::InputIndex;

use super::LABELER_VERSION;
use crate::config::LabelConfig;
use crate::spec::TeacherSpec;

/// sha256 of a value's JSON, hex. Field order is the struct's, so equal values hash equally.
fn json_sha256(value: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(value).expect("JSON values serialise")))
}

/// sha256 of a teacher's effective spec without its model path: the model is identified by its bytes
/// (`model_sha256`), so moving the file or running from another machine is not drift.
pub(super) fn spec_sha256(spec: &TeacherSpec) -> String {
    let mut value = serde_json::to_value(spec).expect("teacher specs serialise");
    if let Some(map) = value.as_object_mut() {
        map.remove("model");
    }
    json_sha256(&value)
}

/// The fingerprint of labelling shards of `index` in `num_shards` with `teachers` (spec, model sha256).
pub(super) fn fingerprint(
    cfg: &LabelConfig,
    teachers: &[(TeacherSpec, String)],
    index: &InputIndex,
    num_shards: u64,
) -> RunFingerprint {
    RunFingerprint {
        labeler_version: LABELER_VERSION.to_owned(),
        input_manifest_sha256: index.sha256.clone(),
        num_shards,
        thresholds_sha256: json_sha256(&serde_json::to_value(cfg.thresholds).expect("thresholds serialise")),
        teachers: teachers
            .iter()
            .map(|(spec, sha)| FingerprintTeacher {
                name: spec.name.clone(),
                task: spec.task,
                model_sha256: sha.clone(),
                spec_sha256: spec_sha256(spec),
            })
            .collect(),
    }
}

/// What differs between a committed shard and this run; empty when this run would make the same labels.
/// Manifests written before fingerprints were recorded are compared on what they hold: the plan and the
/// teachers' models.
pub(super) fn drift(committed: &ShardManifest, now: &RunFingerprint) -> Vec<String> {
    if let Some(was) = &committed.fingerprint {
        return was.differences(now);
    }
    let mut out = Vec::new();
    if committed.input_manifest_sha256 != now.input_manifest_sha256 {
        out.push("input manifest sha256 differs".to_owned());
    }
    let was: Vec<_> = committed.teachers.iter().map(|t| (&t.name, t.task, &t.model_sha256)).collect();
    let is: Vec<_> = now.teachers.iter().map(|t| (&t.name, t.task, &t.model_sha256)).collect();
    if was != is {
        out.push("teachers or their models differ".to_owned());
    }
    out
}
