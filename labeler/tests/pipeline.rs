//! End-to-end labeler tests on a small synthetic world with the committed demo teachers: agreement with
//! ground truth, supervised rows, determinism, re-runs, broken inputs, injected store faults, concurrent
//! attempts, a SIGKILLed process and a janitor running during a live attempt.

#![allow(clippy::print_stderr)] // the agreement test reports the measured quality

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use labeler::config::LabelConfig;
use labeler::pipeline::{self, NoProgress, ShardOutcome};
use shards::{Location, ShardId};
use world::{Split, SplitCounts, WorldConfig};

const SEED: u64 = 11;

fn counts(pool: u64) -> SplitCounts {
    SplitCounts { cls: 8, det: 8, seg: 8, depth: 8, pool, eval: 0 }
}

fn pool_config(dir: &Path, pool: u64, run_extra: &str) -> (LabelConfig, String) {
    let world = small_world(SEED, counts(pool));
    let output = dir.join("out").to_string_lossy().into_owned();
    let datasets = [("pool", world.join("pool/images").to_string_lossy().into_owned(), None)];
    let file = write_config(dir, &output, &datasets, run_extra);
    (LabelConfig::load(&file, None).unwrap(), output)
}

fn plan_and_run(cfg: &LabelConfig, k: u64, n: u64, attempt: &str) -> ShardOutcome {
    if !Path::new(&cfg.output).join("inputs/index.json").exists() {
        pipeline::plan(cfg).unwrap();
    }
    pipeline::run_shard(cfg, ShardId { index: k, count: n }, attempt, &NoProgress).unwrap()
}

/// A config under `dir` labelling `images` (dataset "d") into `dir/out` with one teacher, whose
/// `[[teacher]]` fields are `teacher` (written to `dir/teachers_file`); returns the config's path.
fn one_teacher_config(dir: &Path, teachers_file: &str, teacher: &str, images: &Path, run_extra: &str) -> PathBuf {
    let teachers = dir.join(teachers_file);
    std::fs::write(&teachers, format!("[[teacher]]\n{teacher}")).unwrap();
    let cfg_file = dir.join("label.toml");
    std::fs::write(
        &cfg_file,
        format!(
            "teachers = [{:?}]\noutput = {:?}\n[run]\n{run_extra}\n[[dataset]]\nname = \"d\"\nlocation = {:?}\n",
            teachers.to_str().unwrap(),
            dir.join("out").to_str().unwrap(),
            images.to_str().unwrap()
        ),
    )
    .unwrap();
    cfg_file
}

fn index_of(key: &str) -> u64 {
    key.split('.').next().unwrap().parse().unwrap()
}

/// δ<1.25 of predicted inverse depth against metric truth after least-squares scale/shift alignment.
fn delta_125(pred_inv: &[f32], truth_depth: &[f32]) -> f64 {
    let t: Vec<f64> = truth_depth.iter().map(|&d| 1.0 / d as f64).collect();
    let p: Vec<f64> = pred_inv.iter().map(|&v| v as f64).collect();
    let n = p.len() as f64;
    let (mp, mt) = (p.iter().sum::<f64>() / n, t.iter().sum::<f64>() / n);
    let cov: f64 = p.iter().zip(&t).map(|(a, b)| (a - mp) * (b - mt)).sum();
    let var: f64 = p.iter().map(|a| (a - mp).powi(2)).sum();
    let s = if var > 0.0 { cov / var } else { 0.0 };
    let good = p
        .iter()
        .zip(truth_depth)
        .filter(|(a, &d)| {
            let inv = (s * (*a - mp) + mt).max(1.0 / 60.0);
            let pd = 1.0 / inv;
            let r = (pd / d as f64).max(d as f64 / pd);
            r < 1.25
        })
        .count();
    good as f64 / n
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[test]
fn pseudo_labels_agree_with_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, output) = pool_config(dir.path(), 64, "");
    let outcome = plan_and_run(&cfg, 0, 1, "a");
    assert!(matches!(outcome, ShardOutcome::Committed { .. }), "{outcome:?}");
    let records = read_records(&output);
    assert_eq!(records.len(), 64, "every pool image is labelled");
    let world_cfg = WorldConfig::try_new(SEED, 96, 96).unwrap();
    let (mut top1, mut matched, mut truth_boxes, mut pred_boxes) = (0usize, 0usize, 0usize, 0usize);
    let (mut seg_ok, mut seg_n, mut ignored) = (0usize, 0usize, 0usize);
    let mut delta = 0.0;
    for rec in &records {
        let scene = world::render(&world_cfg, Split::Pool, index_of(&rec.key));
        assert_eq!((rec.width, rec.height), (96, 96));
        for task in schemas::Task::ALL {
            assert_eq!(rec.origin(task), schemas::Origin::Pseudo, "{task} of {}", rec.key);
        }
        let probs = &rec.cls.as_ref().unwrap().probs;
        let best = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        top1 += (best == scene.scene_class as usize) as usize;
        let boxes = &rec.det.as_ref().unwrap().boxes;
        assert!(boxes.iter().all(|b| b.score >= 0.5), "boxes below the 0.5 threshold were kept");
        pred_boxes += boxes.len();
        truth_boxes += scene.boxes.len();
        for t in &scene.boxes {
            if boxes.iter().any(|b| {
                b.class_id == t.class_id as u16 && iou([b.x0, b.y0, b.x1, b.y1], [t.x0, t.y0, t.x1, t.y1]) >= 0.5
            }) {
                matched += 1;
            }
        }
        let seg = rec.seg.as_ref().unwrap();
        assert_eq!((seg.width, seg.height), (96, 96));
        for (p, t) in seg.mask.iter().zip(&scene.seg) {
            if *p == 255 {
                ignored += 1;
            } else {
                seg_n += 1;
                seg_ok += (p == t) as usize;
            }
        }
        let depth = rec.depth.as_ref().unwrap();
        assert_eq!(depth.kind, schemas::DepthKind::InverseRelative);
        assert_eq!((depth.width, depth.height), (128, 128), "depth stays at the teacher's resolution");
        // Compare at the truth's resolution: nearest sample of the 128x128 prediction.
        let pred: Vec<f32> = (0..96 * 96)
            .map(|i| {
                let (x, y) = (i % 96, i / 96);
                depth.values[(y * 128 / 96) * 128 + x * 128 / 96]
            })
            .collect();
        delta += delta_125(&pred, &scene.depth);
    }
    let n = records.len() as f64;
    let accuracy = top1 as f64 / n;
    let recall = matched as f64 / truth_boxes.max(1) as f64;
    let seg_acc = seg_ok as f64 / seg_n.max(1) as f64;
    let delta = delta / n;
    eprintln!("top1 {accuracy:.3} box recall@0.5 {recall:.3} ({pred_boxes} predicted / {truth_boxes} true) seg pixel acc {seg_acc:.3} (ignored {ignored}) delta<1.25 {delta:.3}");
    // The demo teachers' held-out quality is in tools/teachers/QUALITY.md; these bounds sit below it.
    assert!(accuracy >= 0.9, "classification top-1 {accuracy}");
    assert!(recall >= 0.75, "box recall {recall}");
    assert!(seg_acc >= 0.93, "segmentation pixel accuracy {seg_acc}");
    assert!(delta >= 0.85, "depth delta<1.25 {delta}");
}

/// The supervised sources of each labelled split of the world, in the formats the world writes.
fn world_supervised(world: &Path, split: &str) -> String {
    let at = |part: &str| world.join(split).join(part).to_string_lossy().into_owned();
    match split {
        "cls" => format!("{{ classification = {{ csv = {:?} }} }}", at("labels.csv")),
        "det" => format!("{{ detection = {{ coco = {:?} }} }}", at("instances.json")),
        "seg" => format!("{{ segmentation = {{ masks = {:?}, extension = \"png\" }} }}", at("seg")),
        _ => format!("{{ depth = {{ maps = {:?}, format = \"png16\", scale = 0.001 }} }}", at("depth")),
    }
}

#[test]
fn supervised_labels_are_kept_and_teachers_fill_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let world = small_world(SEED, counts(16));
    let output = dir.path().join("out").to_string_lossy().into_owned();
    let datasets: Vec<_> = ["cls", "det", "seg", "depth"]
        .into_iter()
        .map(|split| {
            let images = world.join(split).join("images").to_string_lossy().into_owned();
            (split, images, Some(world_supervised(&world, split)))
        })
        .collect();
    let file = write_config(dir.path(), &output, &datasets, "");
    let cfg = LabelConfig::load(&file, None).unwrap();
    plan_and_run(&cfg, 0, 1, "a");
    assert!(read_errors(&output).is_empty(), "{:?}", read_errors(&output));
    let records = read_records(&output);
    assert_eq!(records.len(), 32);
    let world_cfg = WorldConfig::try_new(SEED, 96, 96).unwrap();
    let mut boxes = 0;
    for rec in &records {
        let split: Split = rec.dataset.parse().unwrap();
        let scene = world::render(&world_cfg, split, index_of(&rec.key));
        let supervised = match split {
            Split::Cls => schemas::Task::Cls,
            Split::Det => schemas::Task::Det,
            Split::Seg => schemas::Task::Seg,
            _ => schemas::Task::Depth,
        };
        for task in schemas::Task::ALL {
            let want = if task == supervised { schemas::Origin::Supervised } else { schemas::Origin::Pseudo };
            assert_eq!(rec.origin(task), want, "{} {task}", rec.key);
        }
        match split {
            Split::Cls => {
                let probs = &rec.cls.as_ref().unwrap().probs;
                assert_eq!(probs[scene.scene_class as usize], 1.0);
                assert_eq!(probs.iter().sum::<f32>(), 1.0);
            }
            Split::Det => {
                // COCO pixel boxes back to fractions: equal up to rounding.
                let got = &rec.det.as_ref().unwrap().boxes;
                assert_eq!(got.len(), scene.boxes.len(), "{}", rec.key);
                for (g, t) in got.iter().zip(&scene.boxes) {
                    assert_eq!(g.class_id, t.class_id as u16);
                    assert_eq!(g.score, 1.0);
                    for (a, b) in [(g.x0, t.x0), (g.y0, t.y0), (g.x1, t.x1), (g.y1, t.y1)] {
                        assert!((a - b).abs() < 1e-4, "{} box {g:?} vs {t:?}", rec.key);
                    }
                }
                boxes += got.len();
            }
            Split::Seg => assert_eq!(rec.seg.as_ref().unwrap().mask, scene.seg),
            _ => {
                let d = rec.depth.as_ref().unwrap();
                assert_eq!(d.kind, schemas::DepthKind::Metric);
                for (a, b) in d.values.iter().zip(&scene.depth) {
                    assert!((a - b).abs() < 2e-3 * 60.0, "{a} vs {b}");
                }
            }
        }
    }
    assert!(boxes > 0, "the det split has boxes");
}

/// A `.npy` file of little-endian float32 values with shape `(height, width)`.
fn npy_f32(values: &[f32], width: u32, height: u32) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({height}, {width}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

#[test]
fn class_folders_masks_and_npy_depth_with_each_bad_label_in_an_error_row() {
    let dir = tempfile::tempdir().unwrap();
    let world = small_world(SEED, counts(16));
    let world_cfg = WorldConfig::try_new(SEED, 96, 96).unwrap();
    let (images, masks, depth) = (dir.path().join("images"), dir.path().join("masks"), dir.path().join("depth"));
    // The seg split in the ImageFolder layout, `<scene class>/<id>.jpg`, with masks and depth maps mirroring
    // the keys. Image 1 has no mask, image 2's mask has another size, image 3 is in a folder that is no
    // class, image 4 is in no folder.
    let mut index_of_key = BTreeMap::new();
    let mut bad = BTreeMap::new();
    for index in 0..8u64 {
        let scene = world::render(&world_cfg, Split::Seg, index);
        let folder = match index {
            3 => "mystery/".to_owned(),
            4 => String::new(),
            _ => format!("{}/", world::SCENE_CLASSES[scene.scene_class as usize]),
        };
        let key = format!("{folder}{}", world::image_name(index));
        let stem = format!("{folder}{index:06}");
        for d in [&images, &masks, &depth] {
            std::fs::create_dir_all(d.join(&folder)).unwrap();
        }
        std::fs::copy(world.join(world::image_path(Split::Seg, index)), images.join(&key)).unwrap();
        let mask = masks.join(format!("{stem}.png"));
        match index {
            1 => {}
            2 => image::GrayImage::new(48, 96).save(&mask).unwrap(),
            _ => {
                std::fs::copy(world.join(world::seg_path(Split::Seg, index)), &mask).unwrap();
            }
        }
        std::fs::write(depth.join(format!("{stem}.npy")), npy_f32(&scene.depth, 96, 96)).unwrap();
        match index {
            1 => bad.insert(key.clone(), ("missing_label", mask)),
            2 => bad.insert(key.clone(), ("invalid_label", mask)),
            3 => bad.insert(key.clone(), ("invalid_label", images.join("mystery"))),
            4 => bad.insert(key.clone(), ("missing_label", images.join(&key))),
            _ => None,
        };
        index_of_key.insert(key, index);
    }
    let supervised = format!(
        "{{ classification = {{ folders = true }}, segmentation = {{ masks = {:?} }}, \
         depth = {{ maps = {:?}, format = \"npy\" }} }}",
        masks.to_str().unwrap(),
        depth.to_str().unwrap()
    );
    let output = dir.path().join("out").to_string_lossy().into_owned();
    let datasets = [("folders", images.to_string_lossy().into_owned(), Some(supervised))];
    // Half the inputs are bad on purpose: the default error limit would stop the shard.
    let run_extra = "max_error_fraction = 1.0\n";
    let cfg = LabelConfig::load(&write_config(dir.path(), &output, &datasets, run_extra), None).unwrap();
    plan_and_run(&cfg, 0, 1, "a");

    let errors: BTreeMap<String, schemas::ErrorRecord> =
        read_errors(&output).into_iter().map(|e| (e.key.clone(), e)).collect();
    assert_eq!(errors.keys().collect::<Vec<_>>(), bad.keys().collect::<Vec<_>>(), "{errors:?}");
    for (key, (reason, file)) in &bad {
        let e = &errors[key];
        assert_eq!((e.stage, e.reason.as_str()), (schemas::Stage::SupervisedLabel, *reason), "{e:?}");
        let file = file.to_string_lossy();
        assert!(e.detail.contains(file.as_ref()) && e.detail.contains(key.as_str()), "{e:?} should name {file}");
    }
    let records = read_records(&output);
    assert_eq!(records.len(), 4);
    for rec in &records {
        let scene = world::render(&world_cfg, Split::Seg, index_of_key[&rec.key]);
        assert_eq!(rec.origin(schemas::Task::Cls), schemas::Origin::Supervised);
        assert_eq!(rec.origin(schemas::Task::Det), schemas::Origin::Pseudo);
        assert_eq!(rec.cls.as_ref().unwrap().probs[scene.scene_class as usize], 1.0);
        assert_eq!(rec.seg.as_ref().unwrap().mask, scene.seg);
        let d = rec.depth.as_ref().unwrap();
        assert_eq!((d.kind, d.source.clone()), (schemas::DepthKind::Metric, schemas::LabelSource::Supervised));
        // Exact in the .npy; the record's 16-bit quantisation is within range / 131070.
        for (a, b) in d.values.iter().zip(&scene.depth) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
}

#[test]
fn a_broken_csv_or_coco_file_stops_the_shard_naming_the_file_and_line_or_category() {
    let dir = tempfile::tempdir().unwrap();
    let world = small_world(SEED, counts(16));
    let csv = dir.path().join("labels.csv");
    std::fs::write(&csv, "key,class\n000000.jpg,meadow\n000001.jpg,volcano\n").unwrap();
    let coco = dir.path().join("instances.json");
    // Every category renamed: the det split's boxes use some of them.
    let text =
        std::fs::read_to_string(world.join("det/instances.json")).unwrap().replace("\"name\":\"", "\"name\":\"toy ");
    std::fs::write(&coco, text).unwrap();
    for (name, supervised, wants) in [
        (
            "csv",
            format!("{{ classification = {{ csv = {:?} }} }}", csv.to_str().unwrap()),
            vec!["line 3", "\"volcano\""],
        ),
        (
            "coco",
            format!("{{ detection = {{ coco = {:?} }} }}", coco.to_str().unwrap()),
            vec!["category \"toy ", "not one of the detection teacher's"],
        ),
    ] {
        let run_dir = dir.path().join(name);
        let output = run_dir.join("out").to_string_lossy().into_owned();
        let images = world.join(if name == "csv" { "cls/images" } else { "det/images" });
        let datasets = [(name, images.to_string_lossy().into_owned(), Some(supervised))];
        let cfg = LabelConfig::load(&write_config(&run_dir, &output, &datasets, ""), None).unwrap();
        pipeline::plan(&cfg).unwrap();
        let err = pipeline::run_shard(&cfg, ShardId { index: 0, count: 1 }, "a", &NoProgress).unwrap_err().to_string();
        let file = if name == "csv" { &csv } else { &coco };
        assert!(err.contains(file.to_str().unwrap()), "{err}");
        for w in wants {
            assert!(err.contains(w), "{err} lacks {w}");
        }
        assert!(read_records(&output).is_empty());
    }
}

#[test]
fn reruns_are_noops_and_the_same_shard_is_byte_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (cfg_a, out_a) = pool_config(a.path(), 40, "file_rows = 16");
    let (cfg_b, out_b) = pool_config(b.path(), 40, "file_rows = 16");
    for k in 0..2 {
        assert!(matches!(plan_and_run(&cfg_a, k, 2, "first"), ShardOutcome::Committed { .. }));
        assert!(matches!(plan_and_run(&cfg_b, k, 2, "other"), ShardOutcome::Committed { .. }));
    }
    let again = plan_and_run(&cfg_a, 1, 2, "second");
    match again {
        ShardOutcome::AlreadyCommitted { manifest } => assert_eq!(manifest.attempt, "first"),
        other => panic!("re-running a committed shard must be a no-op, got {other:?}"),
    }
    let files_a = committed_files(Path::new(&out_a));
    let files_b = committed_files(Path::new(&out_b));
    assert!(files_a.len() >= 4, "two shards of 20 rows in files of 16 rows: {files_a:?}");
    assert_eq!(files_a, files_b, "the same shards must give byte-identical Parquet");
}

#[test]
fn broken_and_unusual_inputs_each_end_in_exactly_one_place() {
    let dir = tempfile::tempdir().unwrap();
    let world = small_world(SEED, counts(16));
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let good = std::fs::read(world.join("pool/images/000000.jpg")).unwrap();
    let png = std::fs::read(world.join("pool/images/000003.png")).unwrap();
    std::fs::write(images.join("good.jpg"), &good).unwrap();
    std::fs::write(images.join("good_png_named.jpg"), &png).unwrap();
    std::fs::write(images.join("empty.jpg"), b"").unwrap();
    std::fs::write(images.join("text.jpg"), b"this is not an image\n").unwrap();
    std::fs::write(images.join("truncated.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(images.join("truncated.png"), &png[..png.len() - 20]).unwrap();
    std::fs::write(
        images.join("random.png"),
        (0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>(),
    )
    .unwrap();
    // A PNG that claims 40000x40000 pixels: refused by limits before any allocation.
    std::fs::write(images.join("bomb.png"), bomb_png(40_000, 40_000)).unwrap();
    // A grey 16-bit PNG is converted, not refused.
    let grey =
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(50, 30, |x, y| image::Luma([(x * 1000 + y) as u16]));
    grey.save(images.join("grey16.png")).unwrap();
    std::fs::write(images.join("notes.txt"), b"not listed: wrong extension").unwrap();
    let output = dir.path().join("out").to_string_lossy().into_owned();
    // Seven of nine inputs are broken on purpose: over the default error limit, so raise it.
    let file = write_config(
        dir.path(),
        &output,
        &[("odd", images.to_string_lossy().into_owned(), None)],
        "max_error_fraction = 1.0",
    );
    let cfg = LabelConfig::load(&file, None).unwrap();
    plan_and_run(&cfg, 0, 1, "a");
    let records = read_records(&output);
    let errors = read_errors(&output);
    let labelled: BTreeMap<String, (u32, u32)> = records.iter().map(|r| (r.key.clone(), (r.width, r.height))).collect();
    let failed: BTreeMap<String, String> = errors.iter().map(|e| (e.key.clone(), e.reason.clone())).collect();
    assert_eq!(labelled.len() + failed.len(), 9, "labelled {labelled:?} failed {failed:?}");
    assert!(labelled.keys().all(|k| !failed.contains_key(k)));
    assert_eq!(labelled["good.jpg"], (96, 96));
    assert_eq!(labelled["good_png_named.jpg"], (96, 96), "format comes from content, not the name");
    assert_eq!(labelled["grey16.png"], (50, 30));
    assert_eq!(failed["empty.jpg"], "empty");
    assert_eq!(failed["truncated.jpg"], "truncated");
    assert_eq!(failed["truncated.png"], "truncated");
    assert_eq!(failed["bomb.png"], "too_large");
    assert!(["unsupported", "undecodable"].contains(&failed["text.jpg"].as_str()), "{failed:?}");
    assert!(["unsupported", "undecodable"].contains(&failed["random.png"].as_str()), "{failed:?}");
    for e in &errors {
        assert!(!e.detail.is_empty() && e.source_uri.ends_with(&e.key), "{e:?}");
    }
}

/// A PNG with a valid IHDR claiming `w`×`h` and a tiny IDAT.
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn faulty_output(output: &str, fault: Fault) -> (Location, Arc<FaultyStore>) {
    let inner = shards::open(output).unwrap();
    let faulty = Arc::new(FaultyStore::new(inner.store.clone(), fault));
    (Location::from_store(faulty.clone(), "", output), faulty)
}

#[test]
fn injected_store_faults_then_rerun_equal_a_clean_run() {
    let clean_dir = tempfile::tempdir().unwrap();
    let (clean_cfg, clean_out) = pool_config(clean_dir.path(), 40, "file_rows = 16");
    plan_and_run(&clean_cfg, 0, 1, "clean");
    let clean = committed_files(Path::new(&clean_out));
    for fault in [Fault::DataPut(0), Fault::DataPut(2), Fault::BeforeManifest, Fault::AfterManifest] {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, output) = pool_config(dir.path(), 40, "file_rows = 16");
        pipeline::plan(&cfg).unwrap();
        let (loc, store) = faulty_output(&output, fault);
        let first = pipeline::run_shard_at(&cfg, &loc, ShardId { index: 0, count: 1 }, "faulty", &NoProgress);
        assert!(store.fired(), "{fault:?} never fired");
        let manifest_exists = Path::new(&output).join("manifests/shard-00000-of-00001.json").exists();
        match fault {
            Fault::AfterManifest => {
                // Ambiguous commit: reading the manifest back shows this attempt won.
                assert!(matches!(first, Ok(ShardOutcome::Committed { .. })), "{fault:?}: {first:?}");
                assert!(manifest_exists);
            }
            _ => {
                let err = format!("{:?}", first.expect_err("the fault must fail the attempt"));
                assert!(err.contains("injected fault"), "{fault:?}: {err}");
                assert!(!manifest_exists, "{fault:?} left a manifest");
                assert!(read_records(&output).is_empty(), "readers must see nothing of a failed attempt");
            }
        }
        let rerun = pipeline::run_shard(&cfg, ShardId { index: 0, count: 1 }, "rerun", &NoProgress).unwrap();
        if fault == Fault::AfterManifest {
            assert!(matches!(rerun, ShardOutcome::AlreadyCommitted { .. }));
        } else {
            assert!(matches!(rerun, ShardOutcome::Committed { .. }));
        }
        assert_eq!(committed_files(Path::new(&output)), clean, "{fault:?}: the re-run differs from a clean run");
    }
}

#[test]
fn concurrent_attempts_leave_exactly_one_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, output) = pool_config(dir.path(), 24, "");
    pipeline::plan(&cfg).unwrap();
    let outcomes: Vec<ShardOutcome> = std::thread::scope(|s| {
        let hs: Vec<_> = ["left", "right"]
            .into_iter()
            .map(|a| {
                let cfg = &cfg;
                s.spawn(move || pipeline::run_shard(cfg, ShardId { index: 0, count: 1 }, a, &NoProgress).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let manifests: Vec<_> = std::fs::read_dir(Path::new(&output).join("manifests")).unwrap().collect();
    assert_eq!(manifests.len(), 1);
    let winners = outcomes.iter().filter(|o| matches!(o, ShardOutcome::Committed { .. })).count();
    assert_eq!(winners, 1, "{outcomes:?}");
    assert_eq!(read_records(&output).len(), 24, "readers see exactly the winner's rows");
}

#[test]
fn a_sigkilled_labeler_leaves_nothing_and_its_rerun_equals_a_clean_run() {
    let clean_dir = tempfile::tempdir().unwrap();
    let (clean_cfg, clean_out) = pool_config(clean_dir.path(), 160, "file_rows = 16\nchunk_images = 8");
    plan_and_run(&clean_cfg, 0, 1, "clean");
    let clean = committed_files(Path::new(&clean_out));

    let dir = tempfile::tempdir().unwrap();
    // A short lease for the run that is killed, so the janitor below need not wait a minute for it to
    // expire; the re-run holds the default one.
    let (cfg, output) = pool_config(dir.path(), 160, "file_rows = 16\nchunk_images = 8\nlease_seconds = 5");
    let images = small_world(SEED, counts(160)).join("pool/images").to_string_lossy().into_owned();
    let rerun_config =
        write_config(&dir.path().join("rerun"), &output, &[("pool", images, None)], "file_rows = 16\nchunk_images = 8");
    pipeline::plan(&cfg).unwrap();
    let bin = env!("CARGO_BIN_EXE_labeler");
    let mut child = Command::new(bin)
        .args(["run", "--config", cfg.file.to_str().unwrap(), "--shard", "0", "--num-shards", "1"])
        .env("MUST_LOG", "warn")
        .spawn()
        .unwrap();
    // Kill it once it has written at least one data file: mid-shard, after some output exists.
    let data = Path::new(&output).join("data");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let written = walk(&data).iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).count();
        if written >= 1 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the labeler finished before it could be killed");
        assert!(std::time::Instant::now() < deadline, "no data file appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        !Path::new(&output).join("manifests").exists()
            || std::fs::read_dir(Path::new(&output).join("manifests")).unwrap().next().is_none()
    );
    assert!(read_records(&output).is_empty(), "a killed run must leave nothing a reader would take");
    let rerun = Command::new(bin)
        .args(["run", "--config", rerun_config.to_str().unwrap(), "--shard", "0", "--num-shards", "1"])
        .env("MUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    assert_eq!(committed_files(Path::new(&output)), clean, "the re-run must equal a clean run");
    // The killed attempt's files are orphans once its lease has expired; the janitor removes exactly those
    // (with its staging leftovers and its lease), and nothing the committed manifest names.
    let leases = Path::new(&output).join("leases");
    wait_until_every_lease_expired(&leases);
    let before = walk(&data).len();
    let janitor = Command::new(bin).args(["janitor", "--output", &output, "--grace-seconds", "0"]).output().unwrap();
    assert!(janitor.status.success(), "{}", String::from_utf8_lossy(&janitor.stderr));
    assert!(walk(&data).len() < before);
    assert_eq!(walk(&data).len(), clean.len(), "only committed files are left: {:?}", walk(&data));
    assert_eq!(walk(&leases), Vec::<std::path::PathBuf>::new());
    assert_eq!(committed_files(Path::new(&output)), clean);
}

/// Wait until every lease under `dir` has expired. Only for leases no process refreshes any more (they
/// expire for certain); bounded so a bug cannot hang the test.
fn wait_until_every_lease_expired(dir: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let live = walk(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")).any(|p| {
            let lease: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            lease["expires_at_unix_ms"].as_u64().unwrap() >= now_ms
        });
        if !live {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "a lease under {} never expired", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_janitor_during_a_live_attempt_deletes_nothing_of_it_and_the_attempt_still_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, output) = pool_config(dir.path(), 40, "file_rows = 8");
    pipeline::plan(&cfg).unwrap();
    let out = Path::new(&output);
    let shard = ShardId { index: 0, count: 1 };
    let plain = shards::open(&output).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let janitor = |plain: &Location| {
        rt.block_on(shards::remove_orphans(plain, &shards::JanitorPolicy::at_now(std::time::Duration::ZERO))).unwrap()
    };
    // A dead attempt of the same shard (no lease): the janitor must still delete its files.
    rt.block_on(async {
        let mut dead = shards::ShardCommitter::new(plain.clone(), shard, "dead");
        dead.put_file("records", b"partial".to_vec(), 0).await.unwrap();
    });
    // The live attempt is held at its second data put: its lease and first data file exist by then.
    let (loc, store) = faulty_output(&output, Fault::HoldDataPut(1));
    let live_dir = out.join("data/shard-00000-of-00001/live");
    let lease = out.join("leases/shard-00000-of-00001/live.json");
    let staging = live_dir.join("records-00099.parquet#1");
    let sorted = |mut files: Vec<std::path::PathBuf>| {
        files.sort();
        files
    };
    std::thread::scope(|s| {
        let attempt = s.spawn(|| pipeline::run_shard_at(&cfg, &loc, shard, "live", &NoProgress));
        assert!(store.wait_held(std::time::Duration::from_secs(600)), "the attempt never reached its second put");
        assert!(lease.exists(), "a running attempt holds a lease");
        // What a put in flight looks like on local disk (object_store stages it next to its target).
        std::fs::write(&staging, b"in flight").unwrap();
        let before = sorted(walk(&live_dir));
        assert_eq!(before, [live_dir.join("records-00000.parquet"), staging.clone()]);

        let report = janitor(&plain);
        assert_eq!(report.live_attempts, ["shard-00000-of-00001/live"]);
        assert_eq!(report.deleted, [format!("{output}/data/shard-00000-of-00001/dead/records-00000.parquet")]);
        assert_eq!(sorted(walk(&live_dir)), before, "the janitor touched the live attempt");
        assert!(lease.exists());

        store.release_hold();
        let outcome = attempt.join().unwrap().unwrap();
        assert!(matches!(outcome, ShardOutcome::Committed { .. }), "{outcome:?}");
    });
    assert!(!lease.exists(), "the commit released the lease");
    // Every file the manifest names exists and matches its sha256.
    let committed = committed_files(out);
    assert_eq!(read_records(&output).len() + read_errors(&output).len(), 40);
    // With the attempt over, the janitor takes the one thing it left that no manifest names.
    let report = janitor(&plain);
    assert_eq!(report.deleted, [format!("{output}/data/shard-00000-of-00001/live/records-00099.parquet#1")]);
    assert!(report.live_attempts.is_empty() && report.young.is_empty(), "{report:?}");
    assert_eq!(committed_files(out), committed);
    assert_eq!(walk(&out.join("data")).len(), committed.len());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_spec_that_does_not_fit_its_model_fails_before_any_image_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let model = workspace().join("tools/teachers/onnx/classifier.onnx");
    let cfg_file = one_teacher_config(
        dir.path(),
        "bad.toml",
        &format!(
            "name = \"wrong-classes\"\nmodel = {:?}\npreset = \"torchvision-classification\"\ninput_size = [96, 96]\n\
             resize = {{ kind = \"stretch\" }}\nclasses = [\"a\", \"b\", \"c\"]\n",
            model.to_str().unwrap()
        ),
        Path::new("/nonexistent/never/read"),
        "",
    );
    let cfg = LabelConfig::load(&cfg_file, None).unwrap();
    // Planning loads every teacher before it lists a dataset (the location above does not exist).
    let err = pipeline::plan(&cfg).unwrap_err().to_string();
    assert!(err.contains("wrong-classes") && err.contains("bad.toml") && err.contains("`classes`"), "{err}");
}

#[test]
fn committed_shards_open_in_pyarrow_and_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, output) = pool_config(dir.path(), 16, "");
    plan_and_run(&cfg, 0, 1, "a");
    let python = std::env::var_os("MUST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(python.exists(), "{} is missing: run `make setup`", python.display());
    let script = r#"
import glob, json, sys, duckdb, numpy as np, pyarrow.parquet as pq
out = sys.argv[1]
files = [f"{out}/{f['path']}" for m in glob.glob(f"{out}/manifests/*.json") for f in json.load(open(m))["files"] if f["kind"] == "records"]
t = pq.read_table(files)
assert t.schema.metadata[b"must.schema_version"] == b"1", t.schema.metadata
row = t.slice(0, 1).to_pylist()[0]
p = np.asarray(row["cls_probs"]) / 65535
assert abs(p.sum() - 1) < 2e-3, p.sum()
mask = np.asarray(row["seg_mask"], np.uint8).reshape(row["seg_height"], row["seg_width"])
assert set(np.unique(mask)) <= set(range(7)) | {255}
depth = row["depth_offset"] + row["depth_scale"] * np.asarray(row["depth_q"], np.float32)
assert depth.size == row["depth_height"] * row["depth_width"]
n, pseudo = duckdb.sql(f"select count(*), count(*) filter (where det_origin = 'pseudo') from read_parquet({files!r})").fetchone()
print(n, pseudo)
"#;
    let out = Command::new(&python).args(["-c", script, &output]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "16 16");
}

#[test]
fn scaled_decode_is_off_when_a_teacher_takes_the_image_at_its_own_size() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().to_string_lossy().into_owned();
    // The demo detector takes the image as it is (torchvision detection): no reduced-scale decoding.
    let file = write_config(&dir.path().join("a"), "out", &[("pool", images.clone(), None)], "");
    assert_eq!(pipeline::scaled_decode_min_side(&LabelConfig::load(&file, None).unwrap()), None);
    // Without it, the largest input decides: the segmenter's 96 px at scale 1.25.
    let onnx = workspace().join("tools/teachers/onnx");
    let teachers = dir.path().join("teachers.toml");
    std::fs::write(
        &teachers,
        format!(
            "[[teacher]]\nname = \"c\"\nmodel = {:?}\npreset = \"torchvision-classification\"\ninput_size = [96, 96]\n\
             batch = \"dynamic\"\nclasses = [\"meadow\", \"desert\", \"snowfield\", \"night\", \"sunset\", \"beach\", \
             \"forest\", \"city\"]\n\n[[teacher]]\nname = \"s\"\nmodel = {:?}\npreset = \"torchvision-segmentation\"\n\
             input_size = [96, 96]\nbatch = \"dynamic\"\nscales = [0.75, 1.0, 1.25]\nclasses = [\"sky\", \"ground\", \
             \"ball\", \"crate\", \"cone\", \"ring\", \"pillar\"]\n",
            onnx.join("classifier.onnx"),
            onnx.join("segmenter.onnx")
        ),
    )
    .unwrap();
    let config = dir.path().join("b.toml");
    std::fs::write(
        &config,
        format!("teachers = [{teachers:?}]\noutput = \"out\"\n\n[[dataset]]\nname = \"pool\"\nlocation = {images:?}\n"),
    )
    .unwrap();
    assert_eq!(pipeline::scaled_decode_min_side(&LabelConfig::load(&config, None).unwrap()), Some(120));
}

#[test]
fn host_only_replay_run_still_ends_every_input_in_a_row_and_reports_stages() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, output) = pool_config(dir.path(), 24, "");
    pipeline::plan(&cfg).unwrap();
    let loc = shards::open(&output).unwrap();
    let options = pipeline::ShardOptions { replay_outputs: true, ..Default::default() };
    let outcome =
        pipeline::run_shard_with(&cfg, &loc, ShardId { index: 0, count: 1 }, "replay", &NoProgress, options).unwrap();
    let ShardOutcome::Committed { stats, .. } = outcome else { panic!("not committed: {outcome:?}") };
    assert_eq!(stats.labelled + stats.errors, stats.inputs);
    assert_eq!(read_records(&output).len() as u64, stats.labelled);
    for stage in ["fetch", "decode", "inference", "session", "write"] {
        assert!(stats.stage_seconds.contains_key(stage), "{stage} missing from {:?}", stats.stage_seconds);
    }
    assert!(stats.stage_seconds["session"] <= stats.stage_seconds["inference"]);
    if cfg!(target_os = "linux") {
        assert!(stats.peak_rss_bytes.unwrap() > 0);
    }
}

#[test]
fn a_model_run_that_fails_is_split_until_the_one_bad_image_is_an_error_row() {
    // A teacher whose runs fail whenever the batch holds a bright image (tests/fixtures/make_fails_on_bright.py):
    // the batch of eight fails, is retried, then split in halves until only the white image's run fails.
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..11 {
        let (name, level) = if i == 5 { ("white.jpg".to_owned(), 255) } else { (format!("grey{i:02}.jpg"), 128) };
        image::RgbImage::from_pixel(40, 30, image::Rgb([level, level, level])).save(images.join(name)).unwrap();
    }
    let model = workspace().join("labeler/tests/fixtures/fails_on_bright.onnx");
    let cfg_file = one_teacher_config(
        dir.path(),
        "fails.toml",
        &format!(
            "name = \"fails-on-bright\"\nmodel = {:?}\npreset = \"torchvision-classification\"\n\
             input_size = [32, 32]\nresize = {{ kind = \"stretch\" }}\nbatch = \"dynamic\"\nbatch_size = 8\n\
             classes = [\"a\", \"b\", \"c\"]\n",
            model.to_str().unwrap()
        ),
        &images,
        "max_error_fraction = 0.5\n",
    );
    let cfg = LabelConfig::load(&cfg_file, None).unwrap();
    plan_and_run(&cfg, 0, 1, "a");
    let output = dir.path().join("out").to_string_lossy().into_owned();
    let errors = read_errors(&output);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(
        (e.key.as_str(), e.stage, e.reason.as_str()),
        ("white.jpg", schemas::Stage::Inference, "inference_failed")
    );
    assert!(e.detail.contains("Gather"), "the runtime's reason is kept: {e:?}");
    let records = read_records(&output);
    assert_eq!(records.len(), 10);
    for r in &records {
        assert!(r.key.starts_with("grey"), "{}", r.key);
        let cls = r.cls.as_ref().expect("every grey image is labelled");
        assert!((cls.probs.iter().sum::<f32>() - 1.0).abs() < 1e-3, "{cls:?}");
    }
}
