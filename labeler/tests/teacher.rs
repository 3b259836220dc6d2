//! `Teacher` accounting used by the benchmarks: session time and runs, and output replay (which must still
//! give one label per image while running each model only once per input shape).

mod common;

use common::workspace;
use labeler::config::load_teacher_file;
use labeler::runtime::SessionSettings;
use labeler::spec::Thresholds;
use labeler::teacher::{Prediction, Teacher};

fn demo_teacher(name: &str) -> Teacher {
    let file = workspace().join("teachers/demo.toml");
    let entries = load_teacher_file(&file, &Thresholds::default()).unwrap();
    let entry = entries.iter().find(|e| e.spec.name == name).unwrap();
    Teacher::load(&entry.spec, &entry.file, &SessionSettings::cpu(1)).unwrap()
}

fn images(n: u32, w: u32, h: u32) -> Vec<image::RgbImage> {
    (0..n)
        .map(|k| image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3 + k * 40) as u8, (y * 5) as u8, 90])))
        .collect()
}

#[test]
fn session_runs_and_time_are_counted_per_batch_and_scale() {
    // The segmenter runs three scales in dynamic batches of up to 16: 20 images are 2 batches per scale.
    let mut t = demo_teacher("demo-segmenter");
    let imgs = images(20, 96, 96);
    let refs: Vec<_> = imgs.iter().collect();
    let out = t.predict(&refs).unwrap();
    assert_eq!(out.len(), 20);
    assert_eq!(t.session_runs(), 6);
    assert!(t.session_seconds() > 0.0);
}

#[test]
fn replay_runs_each_shape_once_and_still_labels_every_image() {
    let mut t = demo_teacher("demo-classifier");
    t.replay_outputs();
    let imgs = images(16, 96, 96);
    let refs: Vec<_> = imgs.iter().collect();
    let first = t.predict(&refs).unwrap();
    assert_eq!(t.session_runs(), 1);
    // The same shape again: replayed, no run; a new batch size is a new shape and runs once.
    let second = t.predict(&refs).unwrap();
    assert_eq!(t.session_runs(), 1);
    assert_eq!(first, second);
    let third = t.predict(&refs[..5]).unwrap();
    assert_eq!(t.session_runs(), 2);
    assert_eq!(third.len(), 5);
    for p in first.iter().chain(&third) {
        let Ok(Prediction::Classification(probs)) = p else { panic!("expected a class distribution, got {p:?}") };
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
}
