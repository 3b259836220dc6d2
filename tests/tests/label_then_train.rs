//! The whole MuST path on a small synthetic world: the labeler runs the committed demo teachers over
//! labelled subsets and an unlabelled pool, commits shards; the trainer learns one student from those
//! shards alone and is evaluated against the world's ground truth (committed as shards by the labeler
//! too). With a small budget the student must beat the trivial baseline on every task.

use std::path::{Path, PathBuf};

use labeler::config::LabelConfig;
use labeler::pipeline::{self, NoProgress};
use shards::ShardId;
use trainer::config::{Overrides, TrainConfig};
use trainer::train::{self, RunOptions};
use world::{SplitCounts, WorldConfig};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write_world(dir: &Path) -> PathBuf {
    let root = dir.join("world");
    let cfg = WorldConfig::try_new(21, 96, 96).unwrap();
    let counts = SplitCounts { cls: 160, det: 160, seg: 160, depth: 160, pool: 240, eval: 60 };
    let loc = shards::open(root.to_str().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(world::write_store(&cfg, &loc, &counts)).unwrap();
    root
}

/// Plans and labels every shard of the label config `text` (written to `dir/name.toml`).
fn label(dir: &Path, name: &str, text: &str, num_shards: u64) -> u64 {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let cfg = LabelConfig::load(&file, None).unwrap();
    pipeline::plan(&cfg).unwrap();
    let mut labelled = 0;
    for index in 0..num_shards {
        let outcome = pipeline::run_shard(&cfg, ShardId { index, count: num_shards }, "e2e", &NoProgress).unwrap();
        labelled += match outcome {
            pipeline::ShardOutcome::Committed { stats, .. } => stats.labelled,
            other => panic!("shard {index} not committed: {other:?}"),
        };
    }
    labelled
}

#[test]
fn a_student_trained_on_committed_pseudo_labels_beats_trivial_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let world = write_world(dir.path());
    let w = |split: &str, part: &str| world.join(split).join(part).display().to_string();
    let teachers = workspace().join("teachers/demo.toml").display().to_string();
    let shards_out = dir.path().join("shards");
    let eval_out = dir.path().join("eval-shards");

    // Each labelled split's truth in the formats the world writes: a class CSV, COCO boxes, PNG masks and
    // 16-bit depth PNGs in millimetres.
    let supervised = |split: &str, tasks: &[&str]| {
        let entries: Vec<String> = tasks
            .iter()
            .map(|task| match *task {
                "classification" => format!("classification = {{ csv = {:?} }}", w(split, "labels.csv")),
                "detection" => format!("detection = {{ coco = {:?} }}", w(split, "instances.json")),
                "segmentation" => format!("segmentation = {{ masks = {:?} }}", w(split, "seg")),
                _ => format!("depth = {{ maps = {:?}, format = \"png16\", scale = 0.001 }}", w(split, "depth")),
            })
            .collect();
        format!("{{ {} }}", entries.join(", "))
    };
    let mut train_cfg = format!("teachers = [{teachers:?}]\noutput = {:?}\n[run]\nrow_group_rows = 64\n", shards_out);
    for (split, task) in [("cls", "classification"), ("det", "detection"), ("seg", "segmentation"), ("depth", "depth")]
    {
        train_cfg.push_str(&format!(
            "[[dataset]]\nname = {split:?}\nlocation = {:?}\nsupervised = {}\n",
            w(split, "images"),
            supervised(split, &[task])
        ));
    }
    train_cfg.push_str(&format!("[[dataset]]\nname = \"pool\"\nlocation = {:?}\n", w("pool", "images")));
    let labelled = label(dir.path(), "label", &train_cfg, 2);
    assert_eq!(labelled, 880);

    let eval_cfg = format!(
        "teachers = [{teachers:?}]\noutput = {:?}\n[[dataset]]\nname = \"eval\"\nlocation = {:?}\nsupervised = {}\n",
        eval_out,
        w("eval", "images"),
        supervised("eval", &["classification", "detection", "segmentation", "depth"])
    );
    assert_eq!(label(dir.path(), "eval", &eval_cfg, 1), 60);

    // The demo's training config, pointed at these shards, with a small budget.
    let demo = std::fs::read_to_string(workspace().join("configs/demo-train.toml")).unwrap();
    let text = demo
        .replace("\"../out/shards\"", &format!("{:?}", shards_out.display().to_string()))
        .replace("\"../out/eval-shards\"", &format!("{:?}", eval_out.display().to_string()));
    assert!(text.contains(&shards_out.display().to_string()) && text.contains(&eval_out.display().to_string()));
    let file = dir.path().join("train.toml");
    std::fs::write(&file, text).unwrap();
    let overrides = Overrides { out: Some(dir.path().join("run")), steps: Some(300), ..Default::default() };
    let mut cfg = TrainConfig::load(&file, &overrides).unwrap();
    cfg.optim.warmup_steps = 30;
    cfg.run.eval_every = 0;
    let summary = train::run(&cfg, &RunOptions::default()).unwrap();
    assert!(summary.finished);
    assert_eq!(summary.skipped_images, 0);
    let report = summary.final_eval.expect("evaluated at the end");
    assert_eq!(report.images, 60);
    assert_eq!(report.scores.len(), 4, "{}", report.table());
    assert!(report.beats_baselines(), "the student does not beat every trivial baseline:\n{}", report.table());
    assert!(dir.path().join("run/curves.png").is_file());
}
