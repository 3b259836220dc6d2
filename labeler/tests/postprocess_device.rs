//! Device and host post-processing give the same labels: identical masks and boxes, probabilities and depth
//! within 1e-6, on the demo teachers (multi-scale segmentation with resampling, dynamic batches,
//! original-size detection) and on real-architecture exports (torchvision MobileNetV3, LR-ASPP, SSDlite and
//! a transformers DPT, made by tools/export/make_real_teachers.py), over images of several sizes.
//!
//! The device path runs here on the CPU provider, through the same I/O binding and graphs it uses on a GPU.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use common::{small_world, workspace};
use labeler::config::load_teacher_file;
use labeler::runtime::{Postprocess, SessionSettings};
use labeler::spec::{Task, Thresholds};
use labeler::teacher::{Prediction, Teacher};
use world::SplitCounts;

/// Pool images of the small world (96 px) and three larger gradients of different shapes.
fn images() -> Vec<image::RgbImage> {
    let world = small_world(5, SplitCounts { cls: 0, det: 0, seg: 0, depth: 0, pool: 6, eval: 0 });
    let mut out: Vec<image::RgbImage> = std::fs::read_dir(world.join("pool/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .map(|p| image::open(&p).unwrap().to_rgb8())
        .collect();
    assert!(out.len() >= 6, "the world wrote its pool");
    for (k, (w, h)) in [(640u32, 480u32), (300, 200), (200, 330)].into_iter().enumerate() {
        out.push(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) as u8).wrapping_mul(k as u8 + 3)])
        }));
    }
    out
}

fn settings(postprocess: Postprocess) -> SessionSettings {
    SessionSettings { postprocess, ..SessionSettings::cpu(1) }
}

/// Label `images` with every teacher of `spec_file` both ways and compare.
fn compare(spec_file: &Path, images: &[image::RgbImage]) {
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    for entry in load_teacher_file(spec_file, &Thresholds::default()).unwrap() {
        let name = &entry.spec.name;
        let mut device = Teacher::load(&entry.spec, &entry.file, &settings(Postprocess::Device)).unwrap();
        let mut host = Teacher::load(&entry.spec, &entry.file, &settings(Postprocess::Host)).unwrap();
        assert_eq!(device.postprocess_on_device(), entry.spec.task != Task::Det, "{name}");
        assert!(!host.postprocess_on_device());
        let (a, b) = (device.predict(&refs).unwrap(), host.predict(&refs).unwrap());
        assert_eq!(a.len(), images.len());
        for (k, (a, b)) in a.into_iter().zip(b).enumerate() {
            let (a, b) = (a.unwrap(), b.unwrap());
            match (&a, &b) {
                (Prediction::Classification(p), Prediction::Classification(q)) => {
                    assert_eq!(p.len(), q.len());
                    let worst = p.iter().zip(q).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                    assert!(worst <= 1e-6, "{name} image {k}: probabilities differ by {worst}");
                }
                (Prediction::Depth { height, width, values }, Prediction::Depth { height: h, width: w, values: v }) => {
                    assert_eq!((height, width), (h, w), "{name} image {k}");
                    let worst =
                        values.iter().zip(v).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0f32, f32::max);
                    assert!(worst <= 1e-6, "{name} image {k}: depth differs by {worst} (relative)");
                }
                // Masks (with their sizes) and boxes must be identical.
                _ => assert_eq!(a, b, "{name} image {k}"),
            }
        }
    }
}

#[test]
fn demo_teachers_label_the_same_on_the_device_and_on_the_host() {
    compare(&workspace().join("teachers/demo.toml"), &images());
}

/// The real-architecture exports, made once per target directory by the committed script.
fn real_teachers() -> PathBuf {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(|| Mutex::new(())).lock().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-teachers");
    if !dir.join("dpt.onnx").exists() {
        let python =
            std::env::var("MUST_PYTHON").unwrap_or_else(|_| workspace().join(".venv/bin/python").display().to_string());
        let out = Command::new(python)
            .arg(workspace().join("tools/export/make_real_teachers.py"))
            .args(["--out", dir.to_str().unwrap()])
            .output()
            .expect("running tools/export/make_real_teachers.py (run `make setup`)");
        assert!(out.status.success(), "make_real_teachers.py: {}", String::from_utf8_lossy(&out.stderr));
    }
    // teachers/real.toml, pointed at these files.
    let spec = std::fs::read_to_string(workspace().join("teachers/real.toml"))
        .unwrap()
        .replace("../out/real-teachers/", &format!("{}/", dir.display()));
    let file = dir.join("real.toml");
    std::fs::write(&file, spec).unwrap();
    file
}

#[test]
fn real_architecture_teachers_label_the_same_on_the_device_and_on_the_host() {
    let spec = real_teachers();
    let images = images();
    compare(&spec, &images[images.len() - 5..]);
}
