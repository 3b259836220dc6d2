//! Runs of the trainer: exact resume (in process and after a SIGKILL of the real binary), atomic
//! checkpoints, metrics and curves, and errors that name the file and field.

mod data_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use data_support::*;
use trainer::config::{Overrides, TrainConfig};
use trainer::metrics_log::read_metrics;
use trainer::train::{self, RunOptions};

fn config_text(a: &str, b: &str, out: &Path, steps: u64) -> String {
    format!(
        r#"
out = "{out}"
[data]
image_size = 64
batch_size = 6
seed = 5
workers = 2
prefetch = 2
num_classes = {{ cls = 4, det = 3, seg = 5 }}
[[data.datasets]]
name = "a"
location = "{a}"
tasks = ["classification", "detection", "segmentation", "depth"]
[[data.datasets]]
name = "b"
location = "{b}"
tasks = ["classification", "segmentation"]
[model]
resnet_depth = 18
width = 0.125
fpn_channels = 64
det_tower_convs = 1
pixel_head_convs = 1
[optim]
optimizer = "sgd"
lr = 0.02
steps = {steps}
warmup_steps = 2
clip_grad_norm = 5.0
[loss]
uncertainty = true
[run]
device = "cpu"
threads = 1
log_every = 1
checkpoint_every = 3
keep_checkpoints = 2
[eval]
batch_size = 8
datasets = [{{ name = "a", location = "{a}", tasks = ["classification", "detection", "segmentation", "depth"] }}]
"#,
        out = out.display()
    )
}

fn load(dir: &Path, text: &str) -> TrainConfig {
    let file = dir.join("train.toml");
    std::fs::write(&file, text).unwrap();
    TrainConfig::load(&file, &Overrides::default()).unwrap()
}

/// (step, total loss, per-task losses) of every train record.
fn train_losses(run: &Path) -> Vec<(u64, String)> {
    read_metrics(run)
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| (r["step"].as_u64().unwrap(), format!("{} {}", r["loss"], r["tasks"])))
        .collect()
}

/// Asserts two runs ended with bit-identical weights, naming the first tensor that differs.
fn assert_same_model(a: &Path, b: &Path) {
    let (ta, tb) = (checkpoint_tensors(a), checkpoint_tensors(b));
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(va == vb, "tensor {na} differs between the runs");
    }
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_two_datasets(dir.path());
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    let cfg = load(dir.path(), &config_text(&a, &b, &whole, 8));
    let summary = train::run(&cfg, &RunOptions::default()).unwrap();
    assert!(summary.finished && summary.step == 8);
    let report = summary.final_eval.expect("the run ends with an evaluation");
    assert_eq!(report.images, 40);
    assert_eq!(report.scores.len(), 4, "{report:?}");

    let cfg = load(dir.path(), &config_text(&a, &b, &split, 8));
    let first = train::run(&cfg, &RunOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    assert_eq!((first.step, first.finished), (4, false));
    let second = train::run(&cfg, &RunOptions::default()).unwrap();
    assert_eq!((second.started_at, second.step, second.finished), (4, 8, true));

    let (w, s) = (train_losses(&whole), train_losses(&split));
    assert_eq!(w.len(), 8);
    assert_eq!(w, s, "losses of the resumed run differ from the uninterrupted run");
    assert_same_model(&whole, &split);
    // Checkpoints: the newest two are kept, and curves were drawn.
    let kept: Vec<u64> = trainer::checkpoint::list(&split.join("checkpoints")).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(kept, vec![6, 8]);
    assert!(split.join("curves.png").is_file() && split.join("eval.json").is_file());
    // A finished run does nothing more.
    let again = train::run(&cfg, &RunOptions::default()).unwrap();
    assert_eq!((again.started_at, again.step), (8, 8));
}

fn trainer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trainer"))
}

#[test]
fn a_killed_trainer_process_resumes_to_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_two_datasets(dir.path());
    let whole = dir.path().join("whole");
    let killed = dir.path().join("killed");
    let steps = 24;
    let cfg = load(dir.path(), &config_text(&a, &b, &whole, steps));
    train::run(&cfg, &RunOptions::default()).unwrap();

    let file = dir.path().join("killed.toml");
    std::fs::write(&file, config_text(&a, &b, &killed, steps)).unwrap();
    let mut child = Command::new(trainer_bin())
        .args(["train", "--config", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has checkpointed at least once (so the re-run resumes rather than restarts).
    let deadline = Instant::now() + Duration::from_secs(300);
    let checkpoints = killed.join("checkpoints");
    while trainer::checkpoint::list(&checkpoints).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let resumed_from = trainer::checkpoint::list(&checkpoints).unwrap().last().unwrap().0;
    assert!(resumed_from >= 3);
    // The kill must land mid-run, or the re-run below would prove nothing.
    assert!(resumed_from < steps, "the child finished before it was killed");

    let status = Command::new(trainer_bin())
        .args(["train", "--config", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(train_losses(&whole), train_losses(&killed));
    assert_same_model(&whole, &killed);
}

fn run_bin(args: &[&str]) -> (bool, String) {
    let out = Command::new(trainer_bin()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_binary_names_the_file_and_field_of_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_two_datasets(dir.path());
    let out = dir.path().join("run");
    let file = dir.path().join("bad.toml");
    let file_s = file.to_str().unwrap();

    std::fs::write(&file, config_text(&a, &b, &out, 4).replace("warmup_steps = 2", "warmup_steps = 2\nwarmup = 1"))
        .unwrap();
    let (ok, err) = run_bin(&["train", "--config", file_s]);
    assert!(!ok && err.contains(file_s) && err.contains("warmup"), "{err}");

    std::fs::write(&file, config_text(&a, &b, &out, 4).replace("cls = 4", "cls = 0")).unwrap();
    let (ok, err) = run_bin(&["train", "--config", file_s]);
    assert!(!ok && err.contains(file_s) && err.contains("num_classes.cls"), "{err}");

    // A shard whose class count does not fit the config: the error names the file, column and key.
    std::fs::write(&file, config_text(&a, &b, &out, 4).replace("cls = 4", "cls = 3")).unwrap();
    let (ok, err) = run_bin(&["train", "--config", file_s]);
    assert!(!ok && err.contains(".parquet") && err.contains("cls_probs"), "{err}");

    // A corrupt shard file is a named error, not a panic.
    let data_file = find_parquet(Path::new(&b)).expect("a records file");
    std::fs::write(&data_file, b"PAR1 this is not a parquet file PAR1").unwrap();
    std::fs::write(&file, config_text(&a, &b, &out, 4)).unwrap();
    let (ok, err) = run_bin(&["train", "--config", file_s]);
    assert!(
        !ok && err.contains(data_file.file_name().unwrap().to_str().unwrap()) && !err.contains("panicked"),
        "{err}"
    );

    // Evaluating a run that has no checkpoint says so.
    let (ok, err) = run_bin(&["eval", "--config", file_s, "--checkpoint", dir.path().to_str().unwrap()]);
    assert!(!ok && err.contains("no complete checkpoint"), "{err}");
}

fn find_parquet(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_parquet(&p) {
                return Some(found);
            }
        } else if p.extension().is_some_and(|e| e == "parquet") {
            return Some(p);
        }
    }
    None
}
