//! Downstream datasets: the written layout and encodings decode back to the renderer's exact truth.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use image::DynamicImage;
use world::{
    downstream_csv_path, downstream_image_path, downstream_label_path, nearest_object, render, render_downstream,
    write_downstream, write_store, Domain, DownstreamCounts, DownstreamManifest, DownstreamSplit, DownstreamSummary,
    DownstreamTask, Split, SplitCounts, WorldConfig, DOWNSTREAM_FILE, OBJECT_CLASSES, SEG_CLASSES, SEG_SKY,
};

const COUNTS: DownstreamCounts = DownstreamCounts { train: 5, val: 2, test: 3 };

fn downstream_cfg() -> WorldConfig {
    WorldConfig::try_new(11, 48, 48).unwrap().with_domain(Domain::Downstream)
}

async fn write(dir: &Path, counts: &DownstreamCounts) -> DownstreamSummary {
    let loc = shards::open(dir.to_str().unwrap()).unwrap();
    write_downstream(&downstream_cfg(), &loc, counts).await.unwrap()
}

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap()
}

#[tokio::test]
async fn layout_and_encodings_round_trip_to_the_render_truth() {
    let dir = tempfile::tempdir().unwrap();
    let summary = write(dir.path(), &COUNTS).await;
    let cfg = downstream_cfg();
    let files = files(dir.path());

    // Exactly the documented files.
    let mut expected = BTreeSet::from([DOWNSTREAM_FILE.to_owned()]);
    for task in DownstreamTask::ALL {
        for split in DownstreamSplit::ALL {
            for id in 0..COUNTS.get(split) {
                expected.insert(downstream_image_path(task, split, id));
                if task != DownstreamTask::NearestObject {
                    expected.insert(downstream_label_path(task, split, id));
                }
            }
            if task == DownstreamTask::NearestObject {
                expected.insert(downstream_csv_path(task, split));
            }
        }
    }
    assert_eq!(files.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(files.contains_key("normals/train/images/000000.png"));
    assert!(files.contains_key("nearest_object/test/labels.csv"));

    // downstream.json, as the fine-tuning loader reads it.
    let json: serde_json::Value = serde_json::from_slice(&files[DOWNSTREAM_FILE]).unwrap();
    assert_eq!(json["format"], "must-downstream");
    assert_eq!(json["version"], 1);
    assert_eq!(
        (json["seed"].as_u64(), json["width"].as_u64(), json["height"].as_u64()),
        (Some(11), Some(48), Some(48))
    );
    assert_eq!(json["domain"], "downstream");
    assert!(json["shift"].as_str().unwrap().len() > 40, "{}", json["shift"]);
    let tasks = json["tasks"].as_object().unwrap();
    assert_eq!(
        tasks.keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            &"depth".to_owned(),
            &"nearest_object".to_owned(),
            &"normals".to_owned(),
            &"segmentation".to_owned()
        ])
    );
    for (name, kind) in [
        ("normals", "normals"),
        ("segmentation", "segmentation"),
        ("depth", "depth"),
        ("nearest_object", "classification"),
    ] {
        assert_eq!(tasks[name]["kind"], kind);
        assert_eq!(tasks[name]["splits"], serde_json::json!({"train": 5, "val": 2, "test": 3}));
        assert!(tasks[name]["encoding"].as_str().is_some());
    }
    assert_eq!(tasks["segmentation"]["classes"], serde_json::json!(SEG_CLASSES));
    assert_eq!(tasks["segmentation"]["ignore"], 255);
    assert_eq!(tasks["depth"]["png_scale"], 1000);
    assert_eq!(tasks["depth"]["invalid"], 0);
    assert_eq!(tasks["nearest_object"]["classes"], serde_json::json!(OBJECT_CLASSES));
    let manifest: DownstreamManifest = serde_json::from_slice(&files[DOWNSTREAM_FILE]).unwrap();
    assert_eq!(manifest, summary.manifest);

    for task in DownstreamTask::ALL {
        for split in DownstreamSplit::ALL {
            let mut csv = String::from("image,label\n");
            for id in 0..COUNTS.get(split) {
                let scene = render_downstream(&cfg, task, split, id).unwrap();
                let at = format!("{task}/{split}/{id}");
                let DynamicImage::ImageRgb8(img) = decode(&files[&downstream_image_path(task, split, id)]) else {
                    panic!("{at}: image is not 8-bit RGB");
                };
                assert_eq!(img, scene.image, "{at}");
                let label = files.get(&downstream_label_path(task, split, id)).map(|png| decode(png));
                match (task, label) {
                    (DownstreamTask::Normals, Some(DynamicImage::ImageRgb16(img))) => {
                        for (px, normal) in img.pixels().zip(&scene.normals) {
                            match normal {
                                None => assert_eq!(px.0, [0, 0, 0], "{at}"),
                                Some(n) => {
                                    let decoded = px.0.map(|v| v as f32 / 65535.0 * 2.0 - 1.0);
                                    assert_ne!(px.0, [0, 0, 0], "{at}");
                                    for c in 0..3 {
                                        // Half a quantisation step of (n + 1) / 2 is 1/65535 in n.
                                        assert!((decoded[c] - n[c]).abs() <= 1.0 / 65535.0 + 1e-6, "{at}: {n:?}");
                                    }
                                }
                            }
                        }
                    }
                    (DownstreamTask::Segmentation, Some(DynamicImage::ImageLuma8(img))) => {
                        assert_eq!(img.into_raw(), scene.seg, "{at}");
                    }
                    (DownstreamTask::Depth, Some(DynamicImage::ImageLuma16(img))) => {
                        for ((&v, &d), &seg) in img.as_raw().iter().zip(&scene.depth).zip(&scene.seg) {
                            assert_eq!(v == 0, seg == SEG_SKY, "{at}: {v} at depth {d}");
                            if v != 0 {
                                assert!((v as f32 - d * 1000.0).abs() <= 0.5 + 1e-3, "{at}: {v} mm for {d} m");
                            }
                        }
                    }
                    (DownstreamTask::NearestObject, None) => {
                        let class = nearest_object(&scene).unwrap();
                        let nearest = scene.boxes.iter().min_by(|a, b| a.depth.total_cmp(&b.depth)).unwrap();
                        assert_eq!(class, nearest.class_id, "{at}");
                        assert_eq!(class as u64, id % 5, "{at}");
                        csv.push_str(&format!("{id:06}.png,{class}\n"));
                    }
                    (task, label) => panic!("{at}: unexpected label {:?} for {task}", label.map(|l| l.color())),
                }
            }
            if task == DownstreamTask::NearestObject {
                assert_eq!(String::from_utf8(files[&downstream_csv_path(task, split)].clone()).unwrap(), csv);
            }
        }
    }

    // The summary counts the nearest-object classes; train's five images show each class once.
    let train = summary
        .splits
        .iter()
        .find(|s| s.task == DownstreamTask::NearestObject && s.split == DownstreamSplit::Train)
        .unwrap();
    assert_eq!(train.class_counts, Some(vec![1; 5]));
    assert!(summary
        .splits
        .iter()
        .filter(|s| s.task != DownstreamTask::NearestObject)
        .all(|s| s.class_counts.is_none()));
}

#[tokio::test]
async fn the_writer_is_deterministic() {
    let counts = DownstreamCounts { train: 4, val: 1, test: 2 };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(a.path(), &counts).await;
    write(b.path(), &counts).await;
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert_eq!(fa.len(), 1 + 4 * 7 + 3 * 7 + 3);
    assert!(fa == fb, "two runs wrote different bytes");
}

#[test]
fn downstream_images_are_their_own_and_never_pretraining_images() {
    let down = downstream_cfg();
    let same_seed = WorldConfig::try_new(11, 48, 48).unwrap();
    let demo_seed = WorldConfig::try_new(7, 48, 48).unwrap();
    let mut pretrain = HashSet::new();
    for cfg in [same_seed, demo_seed] {
        for split in Split::ALL {
            for index in 0..20 {
                pretrain.insert(render(&cfg, split, index).image.into_raw());
            }
        }
    }
    let mut seen = HashSet::new();
    for task in DownstreamTask::ALL {
        for split in DownstreamSplit::ALL {
            for id in 0..20 {
                let image = render_downstream(&down, task, split, id).unwrap().image.into_raw();
                assert!(!pretrain.contains(&image), "{task}/{split}/{id} is a pre-training image");
                assert!(seen.insert(image), "{task}/{split}/{id} repeats another downstream image");
            }
        }
    }
}

#[test]
fn nearest_object_classes_are_balanced_and_every_image_has_one() {
    let cfg = downstream_cfg();
    let mut counts = [0u32; 5];
    for id in 0..40 {
        let scene = render_downstream(&cfg, DownstreamTask::NearestObject, DownstreamSplit::Test, id).unwrap();
        counts[nearest_object(&scene).expect("a boxed object") as usize] += 1;
    }
    assert_eq!(counts, [8; 5]);
}

#[tokio::test]
async fn bad_configs_are_rejected_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let loc = shards::open(dir.path().to_str().unwrap()).unwrap();
    let err = write_store(&downstream_cfg(), &loc, &SplitCounts::uniform(1)).await.unwrap_err();
    assert!(err.to_string().contains("pre-training"), "{err}");
    let huge = DownstreamCounts { train: 1, val: 2_000_000, test: 1 };
    let err = write_downstream(&downstream_cfg(), &loc, &huge).await.unwrap_err();
    assert!(format!("{err}").contains("val"), "{err}");
    assert!(files(dir.path()).is_empty());
}

#[test]
fn the_cli_writes_a_downstream_set_with_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_world"))
        .args(["downstream", "--out", dir.path().to_str().unwrap(), "--width", "48", "--height", "48"])
        .args(["--train", "5", "--val", "1", "--test", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ball 1, crate 1, cone 1, ring 1, pillar 1"), "{stdout}");
    let manifest: DownstreamManifest =
        serde_json::from_slice(&std::fs::read(dir.path().join(DOWNSTREAM_FILE)).unwrap()).unwrap();
    assert_eq!((manifest.seed, manifest.domain.as_str()), (11, "downstream"));
    assert_eq!(manifest.tasks.depth.splits, DownstreamCounts { train: 5, val: 1, test: 1 });
    let csv = std::fs::read_to_string(dir.path().join("nearest_object/train/labels.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("image,label"));
    assert_eq!(csv.lines().count(), 6);
}
