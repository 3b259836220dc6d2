//! `trainer export` from the command line: the safetensors trunk loads into torchvision's ResNet with
//! `strict=True` and gives the student's logits; errors name what is missing.
//!
//! Needs the project's Python environment (`make setup`): the interpreter is `$MUST_PYTHON`, else
//! `<workspace>/.venv/bin/python`. Without one the test fails rather than skipping.
#![allow(clippy::print_stdout)] // the tests report the differences they measured

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use trainer::checkpoint::{self, CheckpointState};
use trainer::data::SamplerState;
use trainer::model::{ResNetDepth, StudentConfig};
use trainer::train::Model;

/// Held while seeding libtorch's process-global generator and drawing from it.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let python =
        std::env::var_os("MUST_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(python.exists(), "no Python at {} (run `make setup`, or set MUST_PYTHON)", python.display());
    python
}

/// A run directory with one checkpoint of a freshly initialised student (seeded) whose batch-norm
/// statistics are not the identity, so evaluation mode is visible in the outputs, and the run's
/// `config.json` naming the image size.
fn run_dir(dir: &Path, config: &StudentConfig, image_size: u32, seed: i64) -> (PathBuf, Model) {
    // libtorch's generator is process-global and tests run on threads: hold it while drawing.
    let _seeded = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let model = Model::student_only(config, Device::Cpu);
    tch::no_grad(|| {
        // In name order: the draws must not follow a hash map's order.
        for (name, mut t) in model.named_tensors() {
            if name.ends_with("running_mean") {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            } else if name.ends_with("running_var") {
                t.copy_(&(Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) + 0.5));
            }
        }
    });
    let run = dir.join("run");
    let state = CheckpointState {
        format_version: checkpoint::FORMAT_VERSION,
        step: 5,
        sampler: SamplerState::default(),
        optimizer_updates: 5,
        loss_scale: 1.0,
        student: config.clone(),
    };
    checkpoint::save(&run.join("checkpoints"), &state, &model.named_tensors(), &[], 1).unwrap();
    let json = format!("{{\"data\": {{\"image_size\": {image_size}}}, \"eval\": null}}");
    std::fs::write(run.join("config.json"), json).unwrap();
    (run, model)
}

fn export(args: &[&str], python: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.arg("export").args(args).env("MUST_LOG", "warn");
    if let Some(p) = python {
        cmd.env("MUST_PYTHON", p);
    }
    cmd.output().unwrap()
}

#[test]
fn safetensors_trunk_loads_into_torchvision_resnet18_and_gives_the_students_logits() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // A width-1.0 ResNet-18 student with a classification head and, so that the FPN is exported too, a
    // small segmentation head.
    let config = StudentConfig {
        resnet_depth: ResNetDepth::R18,
        width: 1.0,
        fpn_channels: 32,
        num_det_classes: None,
        depth_head: false,
        pixel_head_convs: 1,
        ..StudentConfig::tiny(10, 1, 3)
    };
    let (run, model) = run_dir(dir.path(), &config, 64, 11);
    let out = dir.path().join("export");
    let o = export(&["--checkpoint", run.to_str().unwrap(), "--out", out.to_str().unwrap()], Some(&python()));
    assert!(o.status.success(), "export failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("input 64px") && stdout.contains("cls_logits, seg_logits"), "{stdout}");
    for file in ["student.safetensors", "student.pt", "student.onnx", "student-classification.toml"] {
        assert!(out.join(file).is_file(), "{file} missing; export printed:\n{stdout}");
    }
    assert!(!out.join("student-detection.toml").exists(), "no detection head, no detection spec");

    // The student's logits in tch on a normalised input, next to the input, for the Python side.
    let x = {
        let _seeded = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(3);
        Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu))
    };
    let logits = tch::no_grad(|| model.student.forward_t(&x, false)).cls.unwrap();
    let expected = dir.path().join("expected.safetensors");
    Tensor::write_safetensors(&[("input", &x), ("cls_logits", &logits)], &expected).unwrap();
    let check = Command::new(python())
        .arg(workspace().join("tools/export/check_torchvision.py"))
        .args(["--weights", out.join("student.safetensors").to_str().unwrap(), "--depth", "18"])
        .args(["--expected", expected.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    println!("torchvision resnet18 vs tch: {}", report.trim());
    assert!(check.status.success(), "{report}\n{}", String::from_utf8_lossy(&check.stderr));
    let json: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert!(json["max_abs_diff"].as_f64().unwrap() < 1e-4, "{json}");
    assert_eq!(json["fpn_tensors"].as_u64(), Some(20), "4 inner + 4 layer blocks + p6 + p7, weight and bias");
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn export_errors_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = StudentConfig { num_det_classes: None, ..StudentConfig::tiny(3, 1, 2) };
    let (run, _) = run_dir(dir.path(), &config, 64, 1);
    let out = dir.path().join("export");
    let (run_s, out_s) = (run.to_str().unwrap(), out.to_str().unwrap());

    // No Python with torch: the message names the variable and the missing file.
    let o = export(&["--checkpoint", run_s, "--out", out_s], Some(Path::new("/nonexistent/python")));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("MUST_PYTHON") && err.contains("/nonexistent/python"), "{err}");

    // No size anywhere: the message names the flags and where it looked.
    std::fs::remove_file(run.join("config.json")).unwrap();
    let o = export(&["--checkpoint", run_s, "--out", out_s], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--image-size") && err.contains("config.json"), "{err}");

    // Class names that do not fit the heads: the message names the file and both counts.
    let classes = dir.path().join("teachers.toml");
    std::fs::write(
        &classes,
        "[[teacher]]\nname = \"c\"\nmodel = \"c.onnx\"\ntask = \"classification\"\nclasses = [\"a\"]\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["export", "--checkpoint", run_s, "--out", out_s, "--image-size", "64", "--classes"])
        .arg(&classes)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("teachers.toml") && err.contains("lists 1 classes"), "{err}");

    // Not a checkpoint.
    let o = export(&["--checkpoint", out_s, "--out", out_s], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no complete checkpoint"), "{err}");
}
