//! What may be committed: a shard commits only when every stage ended cleanly, every input is a row, the
//! error rows stay under the limit, and the run matches what the output root already holds (one plan, one
//! shard count, one configuration per committed shard). Each test drives the real pipeline with the
//! committed demo teachers on a small synthetic world.

mod common;

use std::path::Path;

use common::*;
use labeler::config::LabelConfig;
use labeler::pipeline::{self, Fault, FaultStage, NoProgress, PipelineError, ShardOptions, ShardOutcome};
use shards::ShardId;
use world::SplitCounts;

const ONE: ShardId = ShardId { index: 0, count: 1 };

fn pool_config(dir: &Path, pool: u64, run_extra: &str) -> (LabelConfig, String) {
    let world = small_world(11, SplitCounts { cls: 8, det: 8, seg: 8, depth: 8, pool, eval: 0 });
    let output = dir.join("out").to_string_lossy().into_owned();
    let datasets = [("pool", world.join("pool/images").to_string_lossy().into_owned(), None)];
    let file = write_config(dir, &output, &datasets, run_extra);
    (LabelConfig::load(&file, None).unwrap(), output)
}

fn manifests(output: &str) -> Vec<String> {
    match std::fs::read_dir(Path::new(output).join("manifests")) {
        Ok(dir) => dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_stage_dying_mid_shard_commits_nothing_and_the_rerun_equals_a_clean_run() {
    let run_extra = "chunk_images = 4\nfile_rows = 8";
    let clean_dir = tempfile::tempdir().unwrap();
    let (clean_cfg, clean_out) = pool_config(clean_dir.path(), 24, run_extra);
    pipeline::plan(&clean_cfg).unwrap();
    pipeline::run_shard(&clean_cfg, ONE, "clean", &NoProgress).unwrap();
    let clean = committed_files(Path::new(&clean_out));

    for (stage, named) in [
        (FaultStage::Fetch, "fetch"),
        (FaultStage::Decode, "decode"),
        (FaultStage::Prepare, "decode"),
        (FaultStage::Inference, "inference"),
        (FaultStage::Postprocess, "postprocess"),
        (FaultStage::Write, "write"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, output) = pool_config(dir.path(), 24, run_extra);
        pipeline::plan(&cfg).unwrap();
        let out = shards::open(&output).unwrap();
        let options = ShardOptions { fault: Some(Fault { stage, image: 9 }), ..Default::default() };
        let err = pipeline::run_shard_with(&cfg, &out, ONE, "faulty", &NoProgress, options)
            .expect_err("a dying stage must fail the attempt");
        let text = err.to_string();
        assert!(matches!(err, PipelineError::StageFailed { stage: s, .. } if s == named), "{stage:?}: {text}");
        assert!(text.contains(&format!("the {named} stage failed")) && text.contains("at image 9"), "{text}");
        assert!(manifests(&output).is_empty(), "{stage:?} left a manifest: {:?}", manifests(&output));
        assert!(read_records(&output).is_empty(), "readers must see nothing of a failed attempt");

        let rerun = pipeline::run_shard(&cfg, ONE, "rerun", &NoProgress).unwrap();
        let ShardOutcome::Committed { manifest, .. } = rerun else { panic!("{stage:?}: the re-run must commit") };
        assert_eq!(manifest.inputs, Some(24));
        assert_eq!(manifest.counts.labelled_rows + manifest.counts.error_rows, 24);
        assert_eq!(committed_files(Path::new(&output)), clean, "{stage:?}: the re-run differs from a clean run");
    }
}

#[test]
fn a_changed_configuration_or_shard_count_is_drift_not_a_silent_noop() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, output) = pool_config(dir.path(), 12, "");
    pipeline::plan(&cfg).unwrap();
    let two = |k| ShardId { index: k, count: 2 };
    assert!(matches!(pipeline::run_shard(&cfg, two(0), "a", &NoProgress).unwrap(), ShardOutcome::Committed { .. }));
    // The same configuration again: a no-op.
    let again = pipeline::run_shard(&cfg, two(0), "b", &NoProgress).unwrap();
    assert!(matches!(again, ShardOutcome::AlreadyCommitted { .. }), "{again:?}");

    // Another threshold: the committed shard's labels would be stale, so the re-run says what changed.
    let mut changed = cfg.clone();
    changed.thresholds.box_score = 0.7;
    let err = pipeline::run_shard(&changed, two(0), "c", &NoProgress).unwrap_err().to_string();
    assert!(err.contains("different configuration") && err.contains("thresholds sha256"), "{err}");
    assert!(err.contains("new output root"), "{err}");

    // Another teacher model: named by teacher.
    let mut other_model = cfg.clone();
    let t = &mut other_model.teachers[0];
    let copy = dir.path().join("copy.onnx");
    let mut bytes = std::fs::read(&t.spec.model).unwrap();
    bytes.extend_from_slice(b"\0"); // trailing bytes change the hash, not the model
    std::fs::write(&copy, bytes).unwrap();
    t.spec.model = copy;
    let name = t.spec.name.clone();
    let err = pipeline::run_shard(&other_model, two(0), "d", &NoProgress).unwrap_err().to_string();
    assert!(err.contains(&format!("teacher {name:?} model sha256")), "{err}");

    // Another shard count over the same root: refused before any work, whichever shard is asked for.
    let err = pipeline::run_shard(&cfg, ShardId { index: 3, count: 8 }, "e", &NoProgress).unwrap_err().to_string();
    assert!(err.contains("labelled with 2 shards") && err.contains("--num-shards 2"), "{err}");
    assert_eq!(manifests(&output), ["shard-00000-of-00002.json"]);

    // A different plan over the same root is refused; the old plan stays.
    let mut more = cfg.clone();
    more.datasets[0].extensions = vec!["jpg".into()];
    let err = pipeline::plan(&more).unwrap_err().to_string();
    assert!(err.contains("already holds a different plan"), "{err}");
    assert!(matches!(pipeline::run_shard(&cfg, two(1), "f", &NoProgress).unwrap(), ShardOutcome::Committed { .. }));
}

#[test]
fn too_many_error_rows_fail_the_attempt_with_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let world = small_world(11, SplitCounts { cls: 8, det: 8, seg: 8, depth: 8, pool: 12, eval: 0 });
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for entry in std::fs::read_dir(world.join("pool/images")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, images.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(images.join("broken-1.jpg"), b"not an image").unwrap();
    std::fs::write(images.join("broken-2.jpg"), b"").unwrap();
    let output = dir.path().join("out").to_string_lossy().into_owned();
    let datasets = [("pool", images.to_string_lossy().into_owned(), None)];
    // 2 of 14 inputs broken: 14% is over the default 5%.
    let cfg = LabelConfig::load(&write_config(dir.path(), &output, &datasets, ""), None).unwrap();
    pipeline::plan(&cfg).unwrap();
    let err = pipeline::run_shard(&cfg, ONE, "a", &NoProgress).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PipelineError::TooManyErrors { errors: 2, inputs: 14, .. }), "{text}");
    assert!(text.contains("empty: 1") && text.contains("max_error_fraction"), "{text}");
    assert!(manifests(&output).is_empty());

    // With a limit that allows them, the same shard commits and keeps both error rows.
    let cfg =
        LabelConfig::load(&write_config(dir.path(), &output, &datasets, "max_error_fraction = 0.2"), None).unwrap();
    let ShardOutcome::Committed { manifest, .. } = pipeline::run_shard(&cfg, ONE, "b", &NoProgress).unwrap() else {
        panic!("must commit under the raised limit")
    };
    assert_eq!((manifest.counts.labelled_rows, manifest.counts.error_rows, manifest.inputs), (12, 2, Some(14)));
}
