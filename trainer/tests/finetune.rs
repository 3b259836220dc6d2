//! `trainer finetune` end to end on small downstream sets written here in the documented layout (images/,
//! labels/ PNGs, labels.csv): every task kind trains and is scored against its trivial baseline, the grid
//! resumes by skipping finished points, a pre-trained trunk is loaded, and bad labels name their file.

// The measured numbers are printed for the test log (`--nocapture`).
#![allow(clippy::print_stdout)]

use std::path::Path;

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};
use tempfile::TempDir;
use trainer::checkpoint::{self, CheckpointState};
use trainer::finetune::{self, DownstreamKind, FinetuneConfig, FinetuneOptions, FinetuneOverrides};
use trainer::metrics;
use trainer::model::StudentConfig;
use trainer::train::Model;

const SIDE: u32 = 32;

/// Scene `i`: the left part (up to a per-image column) is "ground" (green, normal (0,-1,0), 4 m, class 1),
/// the rest is a "wall" (grey, normal (0,0,-1), 2 m, class 2); image class = whether the wall is wide.
fn scene(i: u32) -> (RgbImage, u32) {
    let split = 8 + (i * 7) % 16;
    let img = RgbImage::from_fn(SIDE, SIDE, |x, _| if x < split { Rgb([40, 160, 60]) } else { Rgb([150, 150, 150]) });
    (img, split)
}

fn encode_normal(n: [f32; 3]) -> [u16; 3] {
    n.map(|c| ((c + 1.0) / 2.0 * 65535.0).round() as u16)
}

fn write_split(root: &Path, kind: DownstreamKind, split: &str, first: u32, count: u32) {
    let dir = root.join(split);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("labels")).unwrap();
    let mut csv = String::from("image,label\n");
    for i in first..first + count {
        let (img, split_col) = scene(i);
        let name = format!("{i:06}");
        img.save(dir.join("images").join(format!("{name}.png"))).unwrap();
        let label = dir.join("labels").join(format!("{name}.png"));
        match kind {
            DownstreamKind::Classification => csv.push_str(&format!("{name}.png,{}\n", u32::from(split_col < 16))),
            DownstreamKind::Segmentation => {
                GrayImage::from_fn(SIDE, SIDE, |x, _| Luma([if x < split_col { 1 } else { 2 }])).save(&label).unwrap()
            }
            DownstreamKind::Depth => {
                let d: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_fn(SIDE, SIDE, |x, y| {
                    Luma([if y == 0 {
                        0
                    } else if x < split_col {
                        4000
                    } else {
                        2000
                    }])
                });
                d.save(&label).unwrap()
            }
            DownstreamKind::Normals => {
                let n: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(SIDE, SIDE, |x, y| {
                    if y == 0 {
                        Rgb([0, 0, 0])
                    } else if x < split_col {
                        Rgb(encode_normal([0.0, -1.0, 0.0]))
                    } else {
                        Rgb(encode_normal([0.0, 0.0, -1.0]))
                    }
                });
                n.save(&label).unwrap()
            }
        }
    }
    if kind == DownstreamKind::Classification {
        std::fs::write(dir.join("labels.csv"), csv).unwrap();
    }
}

fn write_task(root: &Path, kind: DownstreamKind) {
    write_split(root, kind, "train", 0, 16);
    write_split(root, kind, "val", 100, 6);
    write_split(root, kind, "test", 200, 8);
}

fn kind_name(kind: DownstreamKind) -> &'static str {
    match kind {
        DownstreamKind::Classification => "classification",
        DownstreamKind::Segmentation => "segmentation",
        DownstreamKind::Depth => "depth",
        DownstreamKind::Normals => "normals",
    }
}

fn config(dir: &Path, kind: DownstreamKind, init: Option<&Path>, lrs: &str, steps: &str) -> FinetuneConfig {
    let classes = match kind {
        DownstreamKind::Classification => "num_classes = 2\n",
        DownstreamKind::Segmentation => "num_classes = 3\n",
        _ => "",
    };
    let init = init.map(|p| format!("[init]\ncheckpoint = {:?}\n", p.display().to_string())).unwrap_or_default();
    let text = format!(
        r#"out = "run"
[task]
kind = "{}"
location = "data"
{classes}
{init}
[model]
resnet_depth = 18
width = 0.25
fpn_channels = 64
pixel_head_convs = 1
[data]
image_size = {SIDE}
batch_size = 8
augment = {{ scale_min = 0.8, scale_max = 1.25, hflip = true }}
[grid]
lr = {lrs}
steps = {steps}
[optim]
optimizer = "adamw"
[run]
device = "cpu"
threads = 1
log_every = 5
"#,
        kind_name(kind)
    );
    let file = dir.join("ft.toml");
    std::fs::write(&file, text).unwrap();
    FinetuneConfig::load(&file, &FinetuneOverrides::default()).unwrap()
}

#[test]
fn every_kind_fine_tunes_and_is_scored_against_its_baseline() {
    for kind in
        [DownstreamKind::Classification, DownstreamKind::Segmentation, DownstreamKind::Depth, DownstreamKind::Normals]
    {
        let dir = TempDir::new().unwrap();
        write_task(&dir.path().join("data"), kind);
        let cfg = config(dir.path(), kind, None, "[0.003]", "[40]");
        let report = finetune::run(&cfg, &FinetuneOptions::default()).unwrap();
        let chosen = report.chosen();
        let metric = kind.selection_metric();
        let test = chosen.test[metric];
        println!(
            "{kind:?}: {metric} test {:.3} (baseline {:.3}), loss {:.4}",
            test.value, test.baseline, chosen.final_loss
        );
        assert!(chosen.final_loss.is_finite());
        assert!((0.0..=1.0).contains(&test.value), "{test:?}");
        assert!(test.value > test.baseline, "{kind:?}: {metric} {test:?} is not above its trivial baseline");
        if kind == DownstreamKind::Normals {
            let degrees = chosen.test[metrics::NORMALS_MEAN_DEGREES];
            assert!(degrees.value < degrees.baseline, "{degrees:?}");
        }
        for file in ["eval.json", "metrics.jsonl", "curves.png", "config.json"] {
            assert!(cfg.out.join(file).is_file(), "{file} is missing");
        }
    }
}

#[test]
fn the_grid_picks_on_validation_and_a_rerun_skips_finished_points() {
    let dir = TempDir::new().unwrap();
    write_task(&dir.path().join("data"), DownstreamKind::Segmentation);
    let cfg = config(dir.path(), DownstreamKind::Segmentation, None, "[0.0001, 0.003]", "[6, 12]");
    let first = finetune::run(&cfg, &FinetuneOptions::default()).unwrap();
    assert_eq!(first.points.len(), 4);
    let best_val = first.chosen().val[&first.selection_metric].value;
    assert!(first.points.iter().all(|p| p.val[&first.selection_metric].value <= best_val));
    print!("{}", first.table());

    // A killed grid: one point's result is gone, and the log holds a half-written point.
    let lost = cfg.out.join("points").join("lr0.003-steps12.json");
    std::fs::remove_file(&lost).unwrap();
    let log = cfg.out.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"kind\":\"finetune\",\"point\":\"lr0.003-steps12\",\"step\":5,\"loss\":9.0}\n");
    std::fs::write(&log, text).unwrap();
    let kept_mtime =
        std::fs::metadata(cfg.out.join("points").join("lr0.0001-steps6.json")).unwrap().modified().unwrap();

    let second = finetune::run(&cfg, &FinetuneOptions::default()).unwrap();
    // The same points and choice; numbers equal up to JSON's float round trip (and seconds differ).
    assert_eq!(second.best, first.best);
    for (a, b) in second.points.iter().zip(&first.points) {
        assert_eq!((a.lr, a.steps), (b.lr, b.steps));
        assert!((a.final_loss - b.final_loss).abs() < 1e-9, "{} vs {}", a.final_loss, b.final_loss);
        for (x, y) in a.val.values().chain(a.test.values()).zip(b.val.values().chain(b.test.values())) {
            assert!((x.value - y.value).abs() < 1e-9 && (x.baseline - y.baseline).abs() < 1e-9, "{x:?} vs {y:?}");
        }
    }
    let untouched = std::fs::metadata(cfg.out.join("points").join("lr0.0001-steps6.json")).unwrap().modified().unwrap();
    assert_eq!(untouched, kept_mtime, "a finished point was recomputed");
    let lines = std::fs::read_to_string(&log).unwrap();
    let point_lines = lines.lines().filter(|l| l.contains("\"kind\":\"point\"")).count();
    assert_eq!(point_lines, 4, "one result line per point:\n{lines}");
    assert!(!lines.contains("\"loss\":9.0"), "the interrupted point's lines were kept");
}

#[test]
fn fine_tuning_and_a_linear_probe_start_from_a_pretrained_checkpoint() {
    let dir = TempDir::new().unwrap();
    write_task(&dir.path().join("data"), DownstreamKind::Normals);
    // A "pre-trained" checkpoint: a seeded student with every pre-training head.
    let pre = StudentConfig { fpn_channels: 64, pixel_head_convs: 1, ..StudentConfig::tiny(4, 3, 5) };
    let model = Model::seeded_student(&pre, tch::Device::Cpu, 42);
    let state = CheckpointState {
        format_version: checkpoint::FORMAT_VERSION,
        step: 7,
        sampler: Default::default(),
        optimizer_updates: 7,
        loss_scale: 1.0,
        student: pre.clone(),
    };
    let ckpt_root = dir.path().join("pre").join("checkpoints");
    checkpoint::save(&ckpt_root, &state, &model.named_tensors(), &[], 1).unwrap();

    let cfg = config(dir.path(), DownstreamKind::Normals, Some(&dir.path().join("pre")), "[0.003]", "[4]");
    let from_pre = finetune::run(&cfg, &FinetuneOptions::default()).unwrap();
    assert!(from_pre.init.contains("step-"), "init {:?} names the checkpoint", from_pre.init);

    let mut probe_cfg = cfg.clone();
    probe_cfg.out = dir.path().join("probe");
    probe_cfg.grid.linear_probe = true;
    let probe = finetune::run(&probe_cfg, &FinetuneOptions::default()).unwrap();
    assert!(probe.linear_probe);
    assert_ne!(probe.chosen().test, from_pre.chosen().test, "the probe and full fine-tuning should differ");
}

#[test]
fn bad_downstream_labels_name_their_file() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("data");
    write_task(&root, DownstreamKind::Depth);
    // An 8-bit depth map: the wrong encoding, not silently rescaled.
    GrayImage::from_pixel(SIDE, SIDE, Luma([3])).save(root.join("val").join("labels").join("000101.png")).unwrap();
    let cfg = config(dir.path(), DownstreamKind::Depth, None, "[0.003]", "[2]");
    let e = finetune::run(&cfg, &FinetuneOptions::default()).unwrap_err().to_string();
    assert!(e.contains("000101.png") && e.contains("16-bit"), "{e}");

    write_task(&root, DownstreamKind::Classification);
    std::fs::write(root.join("test").join("labels.csv"), "image,label\n000200.png,7\n").unwrap();
    let cfg = config(dir.path(), DownstreamKind::Classification, None, "[0.003]", "[2]");
    let e = finetune::run(&cfg, &FinetuneOptions::default()).unwrap_err().to_string();
    assert!(e.contains("labels.csv") && e.contains("line 2") && e.contains("num_classes"), "{e}");
}
