//! The exported student as a teacher: self-training's loop closed.
//!
//! - ONNX Runtime, through the labeler's own session and teacher loading, computes what tch computes:
//!   every head, on square and non-square inputs (the ONNX model pads non-square ones itself), and the
//!   in-graph FCOS decoding equals the trainer's host decoding.
//! - `labeler run` with the written specs labels world images (of another aspect than the model's square)
//!   into a committed shard whose labels are the trainer's own evaluation-time predictions on the same
//!   images, and a second-round student trains on that shard.
//!
//! Needs `make setup` (PyTorch's ONNX exporter runs in the project's Python; `$MUST_PYTHON`, else
//! `.venv/bin/python`).
#![allow(clippy::print_stdout)] // the tests report the differences they measured

use std::path::{Path, PathBuf};
use std::time::Instant;

use labeler::config::{load_teacher_file, LabelConfig};
use labeler::pipeline::{self, NoProgress};
use labeler::runtime::{self, SessionSettings};
use labeler::spec::Thresholds;
use labeler::teacher::Teacher;
use shards::ShardId;
use tch::{Device, Kind, Tensor};
use trainer::checkpoint::{self, CheckpointState};
use trainer::config::{Overrides, TrainConfig};
use trainer::data::SamplerState;
use trainer::export::{self, ExportOptions, ExportSummary};
use trainer::model::fcos::{decode, DecodeParams, Detection};
use trainer::model::StudentConfig;
use trainer::train::{self, Model, RunOptions};

/// ImageNet mean: the colour the trainer's letterbox pads with.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];

/// libtorch's generator is process-global and tests run on threads (and `train::run` seeds it too): each
/// test holds this for its whole run, so its seeded draws are its own.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SEEDED.lock().unwrap_or_else(|e| e.into_inner())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A checkpoint of a freshly initialised student (seeded), with batch-norm statistics that are not the
/// identity; `tweak` may change its variables first.
fn checkpoint_of(dir: &Path, config: &StudentConfig, seed: i64, tweak: impl Fn(&str, &mut Tensor)) -> PathBuf {
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
            tweak(&name, &mut t);
        }
    });
    let state = CheckpointState {
        format_version: checkpoint::FORMAT_VERSION,
        step: 1,
        sampler: SamplerState::default(),
        optimizer_updates: 1,
        loss_scale: 1.0,
        student: config.clone(),
    };
    checkpoint::save(&dir.join("run/checkpoints"), &state, &model.named_tensors(), &[], 1).unwrap()
}

fn export_to(checkpoint: &Path, out: &Path, size: u32, classes: Option<PathBuf>) -> ExportSummary {
    let opts = ExportOptions {
        checkpoint: checkpoint.to_owned(),
        out: out.to_owned(),
        image_size: Some(size),
        config: None,
        classes,
        name: "student".into(),
    };
    let summary = export::run(&opts).unwrap_or_else(|e| panic!("export failed: {e}"));
    println!("export: {}", summary.onnx_check);
    summary
}

fn host(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().view([-1])).unwrap()
}

/// `x` (`[1, 3, h, w]`, RGB in [0, 1]) at the top left of a `size`² canvas of the mean colour.
fn mean_canvas(x: &Tensor, size: i64) -> Tensor {
    let canvas = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]).repeat([1, 1, size, size]);
    let (h, w) = (x.size()[2], x.size()[3]);
    canvas.narrow(2, 0, h).narrow(3, 0, w).copy_(x);
    canvas
}

#[test]
fn onnx_runtime_matches_tch_on_every_head() {
    let _serial = serial();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = StudentConfig::tiny(4, 3, 5);
    let ckpt = checkpoint_of(dir.path(), &config, 7, |_, _| {});
    let out = dir.path().join("export");
    let summary = export_to(&ckpt, &out, 64, None);
    assert_eq!(summary.outputs, ["cls_logits", "det", "seg_logits", "depth"]);
    assert_eq!(summary.specs.len(), 4);

    // The labeler accepts every spec as written: the same checks `labeler probe` makes.
    let settings = SessionSettings::cpu(1);
    for file in &summary.specs {
        for entry in load_teacher_file(file, &Thresholds::default()).unwrap() {
            let teacher = Teacher::load(&entry.spec, &entry.file, &settings)
                .unwrap_or_else(|e| panic!("{}: the labeler refuses the spec: {e}", file.display()));
            println!("{}: {}", entry.spec.name, teacher.describe());
        }
    }

    let (model, _, _) = export::load_student(&ckpt).unwrap();
    let mut session = runtime::session("student", &summary.onnx, &settings).unwrap();
    let forward = export::ExportedForward::new(&model.student, 64);
    for (h, w) in [(64, 64), (40, 64), (64, 48)] {
        tch::manual_seed(h * w);
        let x = Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu));
        let input = ort::value::Tensor::from_array((vec![1i64, 3, h, w], host(&x))).unwrap();
        let got = session.run(ort::inputs![export::INPUT_NAME => input]).unwrap();
        let want = tch::no_grad(|| forward.forward(&mean_canvas(&x, 64)));
        for (o, want) in export::outputs(&config).iter().zip(want) {
            let want = if o.dense { want.narrow(-2, 0, h).narrow(-1, 0, w) } else { want };
            let (shape, data) = got[o.name].try_extract_tensor::<f32>().unwrap();
            assert_eq!(shape.to_vec(), want.size(), "{} at {h}x{w}", o.name);
            let want = host(&want);
            assert!(data.iter().chain(&want).all(|v| v.is_finite()), "{} at {h}x{w}: not finite", o.name);
            let diff = data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scale = want.iter().map(|v| v.abs()).fold(1f32, f32::max);
            println!("{h}x{w} {:<10} max |ORT - tch| = {diff:.2e} (scale {scale:.2})", o.name);
            assert!(diff <= 1e-4 * scale, "{} at {h}x{w}: ORT and tch differ by {diff} (scale {scale})", o.name);
        }
        if (h, w) == (64, 64) {
            check_decoding(&model, &x, &got);
        }
    }
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}

/// The graph's `det` output holds, per location and class, the box and score the trainer's host decoding
/// (`fcos::decode`, without thresholds or NMS) gives.
fn check_decoding(model: &Model, x: &Tensor, got: &ort::session::SessionOutputs) {
    let mean = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&[0.229f32, 0.224, 0.225]).view([1, 3, 1, 1]);
    let out = tch::no_grad(|| model.student.forward_t(&((x - mean) / std), false));
    let det = out.det.unwrap();
    let k = det.cls.size()[2] as usize;
    let all =
        DecodeParams { score_threshold: -1.0, pre_nms_top_n: usize::MAX, nms_iou: 2.0, max_detections: usize::MAX };
    let want = decode(&host(&det.cls), &host(&det.reg), &host(&det.ctr), k, &det.levels, 64.0, &all);
    let (shape, data) = got["det"].try_extract_tensor::<f32>().unwrap();
    let a = shape[2] as usize;
    assert_eq!(want.len(), a * k, "one candidate per location and class");
    let mut from_graph: Vec<Detection> = Vec::with_capacity(a * k);
    for i in 0..a {
        let (cx, cy, bw, bh) = (data[i], data[a + i], data[2 * a + i], data[3 * a + i]);
        for c in 0..k {
            let (x0, y0) = (cx - bw / 2.0, cy - bh / 2.0);
            let score = data[(4 + c) * a + i];
            from_graph.push(Detection { x0, y0, x1: x0 + bw, y1: y0 + bh, score, class_id: c as u16 });
        }
    }
    // Each host candidate has its twin in the graph's output: same class, box and score.
    let mut worst = 0f32;
    for w in &want {
        let distance = |g: &Detection| {
            [(g.x0, w.x0), (g.y0, w.y0), (g.x1, w.x1), (g.y1, w.y1)]
                .iter()
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
                + 100.0 * (g.score - w.score).abs()
        };
        let best = from_graph.iter().filter(|g| g.class_id == w.class_id).map(distance).fold(f32::INFINITY, f32::min);
        worst = worst.max(best);
    }
    println!("det decoding: {} candidates, max difference (px + 100·score) {worst:.2e}", want.len());
    assert!(worst < 1e-3, "in-graph boxes differ from fcos::decode: {worst} (px + 100·score)");
}

/// PNGs of world pool scenes, `width`×`height`, in `dir/images`; returns the directory.
fn world_images(dir: &Path, width: u32, height: u32, count: u64) -> PathBuf {
    let cfg = world::WorldConfig::try_new(5, width, height).unwrap();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..count {
        let scene = world::render(&cfg, world::Split::Pool, i);
        scene.image.save(images.join(format!("{i:03}.png"))).unwrap();
    }
    images
}

/// Every image record of the committed shards under `root`.
fn committed_records(root: &Path) -> Vec<schemas::ImageRecord> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let loc = shards::open(root.to_str().unwrap()).unwrap();
        let mut records = Vec::new();
        for (_, manifest) in shards::committed_manifests(&loc).await.unwrap() {
            for f in manifest.files.iter().filter(|f| f.kind == schemas::ManifestFile::RECORDS) {
                for batch in shards::read_all(&loc, &f.path, f.bytes, &[]).await.unwrap() {
                    records.extend(schemas::batch_to_records(&batch).unwrap());
                }
            }
        }
        records
    })
}

/// The trainer's own predictions for one image at evaluation: boxes normalised to the image like the
/// labeler's (clipped to it; boxes outside it dropped), and the dense outputs cropped to the image.
struct TchPrediction {
    probs: Vec<f32>,
    boxes: Vec<[f32; 5]>,
    mask: Vec<u8>,
    depth: Vec<f32>,
    size: [u32; 2],
}

fn tch_prediction(model: &Model, image: &Path, side: u32, params: &DecodeParams) -> TchPrediction {
    let img = image::open(image).unwrap().into_rgb8();
    let (x, [sw, sh]) = export::eval_input(&img, side).unwrap();
    let out = tch::no_grad(|| model.student.forward_t(&x, false));
    let probs = host(&out.cls.unwrap().softmax(-1, Kind::Float));
    let det = out.det.unwrap();
    let k = det.cls.size()[2] as usize;
    let found = decode(&host(&det.cls), &host(&det.reg), &host(&det.ctr), k, &det.levels, side as f32, params);
    let (fw, fh) = (sw as f32, sh as f32);
    let boxes = found
        .iter()
        .map(|d| {
            [
                (d.x0 / fw).clamp(0.0, 1.0),
                (d.y0 / fh).clamp(0.0, 1.0),
                (d.x1 / fw).clamp(0.0, 1.0),
                (d.y1 / fh).clamp(0.0, 1.0),
                d.score,
            ]
        })
        .filter(|b| b[2] > b[0] && b[3] > b[1])
        .collect();
    let crop = |t: Tensor| t.narrow(-2, 0, i64::from(sh)).narrow(-1, 0, i64::from(sw));
    let mask = crop(out.seg.unwrap().argmax(1, false)).to_kind(Kind::Uint8);
    let mask = Vec::<u8>::try_from(&mask.contiguous().view([-1])).unwrap();
    let depth = host(&crop(out.depth.unwrap()));
    TchPrediction { probs, boxes, mask, depth, size: [sw, sh] }
}

#[test]
fn the_student_labels_world_images_and_a_second_round_student_learns_from_them() {
    let _serial = serial();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Landscape images into a 64² student: the labeler resizes them to 64×48 and the model pads them.
    let images = world_images(dir.path(), 80, 60, 8);

    // The demo teachers' classes (8 scenes, 5 objects, 7 segments), so the names carry over. The detection
    // head is made confident of class 0 at every location with boxes of 0.6 strides: then the box set does
    // not hinge on near-equal scores, and no two boxes overlap enough for NMS, so the labeler's boxes can be
    // compared one to one with the trainer's decoding.
    let config = StudentConfig::tiny(8, 5, 7);
    let ckpt = checkpoint_of(dir.path(), &config, 3, |name, t: &mut Tensor| {
        if name.ends_with("det_head.cls_logits.bias") {
            let bias: Vec<f32> = (0..5).map(|c| if c == 0 { 3.0 } else { -3.0 }).collect();
            t.copy_(&Tensor::from_slice(&bias));
        } else if name.ends_with("det_head.bbox_pred.bias") {
            let _ = t.fill_(0.3);
        }
    });
    let out = dir.path().join("export");
    let summary = export_to(&ckpt, &out, 64, Some(workspace().join("teachers/demo.toml")));

    // Round 2's labels: the exported student as the teacher of every task. Thresholds: no pixel ignored
    // (the random student is never confident) and room for every box.
    let shards_out = dir.path().join("shards");
    let teachers: Vec<String> = summary.specs.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    let label_cfg = format!(
        "teachers = [{}]\noutput = {:?}\n[thresholds]\nbox_score = 0.5\nseg_confidence = 0.0\nmax_detections = 1000\n\
         [[dataset]]\nname = \"pool\"\nlocation = {:?}\n",
        teachers.join(", "),
        shards_out.display().to_string(),
        images.display().to_string()
    );
    let file = dir.path().join("label.toml");
    std::fs::write(&file, label_cfg).unwrap();
    let cfg = LabelConfig::load(&file, None).unwrap();
    pipeline::plan(&cfg).unwrap();
    match pipeline::run_shard(&cfg, ShardId { index: 0, count: 1 }, "e2e", &NoProgress).unwrap() {
        pipeline::ShardOutcome::Committed { stats, .. } => assert_eq!(stats.labelled, 8),
        other => panic!("shard not committed: {other:?}"),
    }

    // The labels are the trainer's evaluation-time predictions on the same images.
    let (model, _, _) = export::load_student(&ckpt).unwrap();
    let params = DecodeParams { score_threshold: 0.5, pre_nms_top_n: 10_000, nms_iou: 0.6, max_detections: 10_000 };
    let records = committed_records(&shards_out);
    assert_eq!(records.len(), 8);
    let (mut worst_prob, mut worst_box, mut worst_depth, mut boxes, mut pixels, mut disagree) =
        (0f32, 0f32, 0f32, 0, 0, 0);
    for r in &records {
        let want = tch_prediction(&model, &images.join(&r.key), 64, &params);
        let cls = r.cls.as_ref().expect("classified");
        assert_eq!(cls.source, schemas::LabelSource::pseudo("student-classification"));
        for (p, q) in cls.probs.iter().zip(&want.probs) {
            worst_prob = worst_prob.max((p - q).abs());
        }
        let det = r.det.as_ref().expect("detected");
        let mut got: Vec<[f32; 5]> = det.boxes.iter().map(|b| [b.x0, b.y0, b.x1, b.y1, b.score]).collect();
        assert!(det.boxes.iter().all(|b| b.class_id == 0));
        let mut want_boxes = want.boxes.clone();
        assert_eq!(got.len(), want_boxes.len(), "{}: labeler and trainer keep different boxes", r.key);
        let order = |a: &[f32; 5], b: &[f32; 5]| (a[0], a[1]).partial_cmp(&(b[0], b[1])).unwrap();
        got.sort_by(order);
        want_boxes.sort_by(order);
        for (g, w) in got.iter().zip(&want_boxes) {
            worst_box = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(worst_box, f32::max);
        }
        boxes += got.len();
        let seg = r.seg.as_ref().expect("segmented");
        assert_eq!([u32::from(seg.width), u32::from(seg.height)], want.size, "{}: mask size", r.key);
        pixels += seg.mask.len();
        disagree += seg.mask.iter().zip(&want.mask).filter(|(a, b)| a != b).count();
        let depth = r.depth.as_ref().expect("depth");
        assert_eq!([u32::from(depth.width), u32::from(depth.height)], want.size, "{}: depth size", r.key);
        let (lo, hi) = want.depth.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let step = (hi - lo) / 1023.0;
        for (a, b) in depth.values.iter().zip(&want.depth) {
            worst_depth = worst_depth.max((a - b).abs() / step.max(1e-12));
        }
    }
    println!(
        "labels vs tch: class probs {worst_prob:.1e}; {boxes} boxes, corners {worst_box:.1e}; \
         masks {disagree}/{pixels} pixels differ; depth within {worst_depth:.2} quantisation steps"
    );
    assert!(worst_prob < 1e-4, "class distributions differ by {worst_prob}");
    assert!(boxes > 0 && worst_box < 1e-4, "{boxes} boxes, corners differ by {worst_box}");
    assert!(disagree * 1000 <= pixels, "{disagree} of {pixels} mask pixels differ");
    assert!(worst_depth <= 0.51, "depth differs by {worst_depth} quantisation steps");

    // A second-round student trains on the student's pseudo labels.
    let train_toml = format!(
        "out = {:?}\n[data]\nimage_size = 64\nbatch_size = 4\nseed = 0\nworkers = 1\nnum_classes = {{ cls = 8, det = 5, seg = 7 }}\n\
         [[data.datasets]]\nname = \"round2\"\nlocation = {:?}\n\
         tasks = [\"classification\", \"detection\", \"segmentation\", \"depth\"]\n\
         [model]\nresnet_depth = 18\nwidth = 0.25\ndet_tower_convs = 2\n\
         [optim]\noptimizer = \"adamw\"\nlr = 0.001\nsteps = 3\nwarmup_steps = 1\n[run]\ndevice = \"cpu\"\n",
        dir.path().join("round2").display().to_string(),
        shards_out.display().to_string()
    );
    let file = dir.path().join("train.toml");
    std::fs::write(&file, train_toml).unwrap();
    let cfg = TrainConfig::load(&file, &Overrides::default()).unwrap();
    let summary = train::run(&cfg, &RunOptions::default()).unwrap();
    assert!(summary.finished && summary.step == 3 && summary.skipped_images == 0, "{summary:?}");
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}
