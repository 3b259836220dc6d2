//! Training-step time of the student: forward + `task_losses` + weighted total + backward + optimiser
//! update, on a fixed synthetic batch held in memory (the loader is excluded; see `loader.rs`).
//!
//! The same step is written in PyTorch eager in `tools/bench/step_pytorch.py` (same architecture — the
//! trainable parameter counts are printed and must agree —, same losses, same synthetic batch, same
//! thread count). Both run the same libtorch, so the gap measures what the Rust side adds around it:
//! host-side target building, tensor creation and the per-parameter optimiser loop.
//!
//! Models: `r18` (ResNet-18, width 1.0, 256 FPN channels, 4-conv FCOS towers, 3-conv pixel heads) and
//! `tiny` (`StudentConfig::tiny`, the CPU model of `make train`). All four task heads, every row
//! labelled for every task. Environment: `STEP_BENCH_RUNS` (`model@pixels,...`; default
//! `r18@128,tiny@128,tiny@640`), `STEP_BENCH_BATCH` (8), `STEP_BENCH_THREADS` (number of cores),
//! `STEP_BENCH_SECONDS` (measuring time per run after 2 warm-up steps, 20; at least 4 steps),
//! `TRAIN_BENCH_DIR` (where the initial weights go; `out/bench`), `STEP_BENCH_JSON` (the results;
//! `$TRAIN_BENCH_DIR/train-step-rust.json`).
//!
//! Launched by torchrun (`WORLD_SIZE > 1`), it measures data-parallel scaling: each rank steps on
//! `STEP_BENCH_BATCH / WORLD_SIZE` samples, gradients are averaged with the trainer's c10d all-reduce
//! (and batch-norm buffers broadcast, as the trainer and PyTorch's DDP do), the all-reduce time is a
//! fifth phase, and samples/s counts the global batch. Rank 0 reports. `tools/bench/step_pytorch.py`
//! under torchrun is the same with `DistributedDataParallel` (gloo).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tch::nn::VarStore;
use tch::Device;
use trainer::batch::{Batch, BoxTarget};
use trainer::config::OptimSection;
use trainer::distributed::{GlobalCount, LocalCount, ProcessGroup, World};
use trainer::loss::{images_tensor, task_losses, DetTargets, Objective};
use trainer::model::{count_parameters, ResNetDepth, Student, StudentConfig};
use trainer::optim::Optimizer;

const CLS: usize = 8;
const DET: usize = 5;
const SEG: usize = 7;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn model(name: &str) -> StudentConfig {
    match name {
        "r18" => StudentConfig {
            resnet_depth: ResNetDepth::R18,
            width: 1.0,
            fpn_channels: 256,
            det_tower_convs: 4,
            pixel_head_convs: 3,
            num_classes: Some(CLS),
            num_det_classes: Some(DET),
            num_seg_classes: Some(SEG),
            depth_head: true,
            normals_head: false,
        },
        "tiny" => StudentConfig::tiny(CLS, DET, SEG),
        other => panic!("unknown model {other:?} (r18 or tiny)"),
    }
}

/// The fixed batch; `tools/bench/step_pytorch.py::synthetic_batch` builds the same one.
fn synthetic_batch(b: usize, s: usize) -> Batch {
    let sf = s as f32;
    let mut images = Vec::with_capacity(b * 3 * s * s);
    for i in 0..b {
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    images.push((0.05 * (x as f32 + 1.0) * (c as f32 + 1.0) + 0.07 * y as f32 + i as f32).sin());
                }
            }
        }
    }
    let mut cls_probs = vec![0.0; b * CLS];
    let boxes = (0..b)
        .map(|i| {
            cls_probs[i * CLS + i % CLS] = 1.0;
            let o = 0.015 * i as f32;
            [
                (0.03 + o, 0.05, 0.31 + o, 0.36),
                (0.39, 0.23, 0.86, 0.78),
                (0.16, 0.62, 0.28, 0.75),
                (0.0, 0.0, 1.0, 0.75),
            ]
            .iter()
            .enumerate()
            .map(|(k, &(x0, y0, x1, y1))| BoxTarget {
                x0: x0 * sf,
                y0: y0 * sf,
                x1: x1 * sf,
                y1: y1 * sf,
                class_id: ((i + k) % DET) as u16,
            })
            .collect()
        })
        .collect();
    let mut seg = Vec::with_capacity(b * s * s);
    let mut depth = Vec::with_capacity(b * s * s);
    let mut depth_valid = Vec::with_capacity(b * s * s);
    for i in 0..b {
        for y in 0..s {
            for x in 0..s {
                seg.push(if y < 4 { 255 } else { ((x * 7 / s + y * 3 / s + i) % SEG) as u8 });
                depth.push(1.0 + x as f32 / sf + 0.5 * y as f32 / sf + 0.1 * i as f32);
                depth_valid.push(u8::from(x >= 2));
            }
        }
    }
    Batch {
        size: b,
        image_size: s,
        images,
        num_classes: CLS,
        cls_probs,
        has_cls: vec![true; b],
        boxes,
        has_det: vec![true; b],
        seg,
        has_seg: vec![true; b],
        depth,
        depth_valid,
        has_depth: vec![true; b],
        keys: (0..b).map(|i| ("synthetic".to_owned(), i.to_string())).collect(),
    }
}

fn main() {
    let batch_size: usize = env("STEP_BENCH_BATCH", 8);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads: usize = env("STEP_BENCH_THREADS", cores);
    let seconds: f64 = env("STEP_BENCH_SECONDS", 20.0);
    let runs: String = env("STEP_BENCH_RUNS", "r18@128,tiny@128,tiny@640".to_owned());
    let out_dir = std::env::var("TRAIN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/bench"));
    tch::set_num_threads(threads as i32);
    let world = World::from_env().expect("launcher variables");
    let group = (world.size > 1)
        .then(|| ProcessGroup::join(&world, Device::Cpu, Duration::from_secs(600)).expect("joining the group"));
    let norm: &dyn GlobalCount = match &group {
        Some(g) => g,
        None => &LocalCount,
    };
    let global_batch = batch_size;
    assert!(batch_size.is_multiple_of(world.size), "STEP_BENCH_BATCH must divide over WORLD_SIZE");
    let batch_size = batch_size / world.size;
    let root = world.is_root();
    let optim: OptimSection = toml::from_str("optimizer = \"sgd\"\nlr = 0.01\nsteps = 1000\nmomentum = 0.9").unwrap();
    let device = Device::Cpu;

    let mut rows = Vec::new();
    if root {
        println!("| model | batch × px | ranks × threads | trainable params | FCOS positives | ms/step (median) | ms/step (mean) | all-reduce ms | samples/s |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    for run in runs.split(',').filter(|m| !m.is_empty()) {
        let (name, size) = run.split_once('@').unwrap_or((run, "128"));
        let size: usize = size.parse().expect("STEP_BENCH_RUNS: model@pixels");
        let batch = synthetic_batch(batch_size, size);
        let cfg = model(name);
        tch::manual_seed(0);
        let vs = VarStore::new(device);
        let student = Student::new(&(vs.root() / "student"), &cfg);
        let objective = Objective::new(&(vs.root() / "objective"), &cfg.tasks(), BTreeMap::new(), false);
        let (trainable, buffers) = count_parameters(&vs);
        let params: Vec<(String, tch::Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let grads_of: Vec<tch::Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        let bn_buffers: Vec<tch::Tensor> =
            vs.variables().into_iter().filter(|(_, t)| !t.requires_grad()).map(|(_, t)| t).collect();
        let mut optimizer = Optimizer::new(&optim, params);
        // Parity check with the PyTorch script: the host-side FCOS assignment must give the same positives.
        let positives = tch::no_grad(|| {
            let out = student.forward_t(&images_tensor(&batch, device).unwrap(), true);
            let rows: Vec<&[BoxTarget]> = batch.boxes.iter().map(Vec::as_slice).collect();
            let t = DetTargets::from_boxes(&rows, &out.det.unwrap().levels, device);
            t.labels.ge(0).sum(tch::Kind::Int64).int64_value(&[])
        });
        // Parity check of architecture and losses: the initial weights go to an npz file that the PyTorch
        // script loads (by name) before computing its own losses on the same batch.
        let mut weights: Vec<(String, tch::Tensor)> =
            vs.variables().into_iter().map(|(k, t)| (k.replace('/', "."), t)).collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        if root {
            std::fs::create_dir_all(&out_dir).unwrap();
            tch::Tensor::write_npz(&weights, out_dir.join(format!("train-step-weights-{name}-{size}.npz"))).unwrap();
        }
        let initial: BTreeMap<&str, f64> = {
            let out = student.forward_t(&images_tensor(&batch, device).unwrap(), true);
            let losses = task_losses(&out, &batch, device, &LocalCount).unwrap();
            losses.losses.iter().map(|(t, l)| (t.as_str(), l.double_value(&[]))).collect()
        };
        // One step; returns the seconds spent in forward, losses (with the weighted total), zero-grad +
        // backward, the optimiser update and the gradient all-reduce. Everything is synchronous on the CPU.
        let mut step = || {
            let t0 = Instant::now();
            let x = images_tensor(&batch, device).unwrap();
            let out = student.forward_t(&x, true);
            let t1 = Instant::now();
            let losses = task_losses(&out, &batch, device, norm).unwrap();
            let total = objective.total(&losses);
            let t2 = Instant::now();
            optimizer.zero_grad();
            total.backward();
            let t3 = Instant::now();
            if let Some(g) = &group {
                g.average_gradients(&grads_of, 25 << 20).unwrap();
                g.broadcast_from_root(&bn_buffers).unwrap();
            }
            let t4 = Instant::now();
            optimizer.step(optim.lr);
            let loss = total.double_value(&[]);
            assert!(loss.is_finite(), "loss {loss}");
            [t1 - t0, t2 - t1, t3 - t2, t4.elapsed(), t4 - t3].map(|d| d.as_secs_f64())
        };
        for _ in 0..2 {
            step();
        }
        let start = Instant::now();
        let mut phases = Vec::new();
        while phases.len() < 4 || start.elapsed() < Duration::from_secs_f64(seconds) {
            phases.push(step());
        }
        let median_of = |f: &dyn Fn(&[f64; 5]) -> f64| {
            let mut v: Vec<f64> = phases.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] * 1e3
        };
        let median = median_of(&|p| p.iter().sum()) / 1e3;
        let mean = phases.iter().map(|p| p.iter().sum::<f64>()).sum::<f64>() / phases.len() as f64;
        let parts: Vec<f64> = (0..5).map(|i| median_of(&|p| p[i])).collect();
        if root {
            println!(
                "| {name} | {global_batch} × {size} | {} × {threads} | {trainable} | {positives} | {:.1} | {:.1} | {:.1} | {:.1} |",
                world.size,
                median * 1e3,
                mean * 1e3,
                parts[4],
                global_batch as f64 / median
            );
        }
        rows.push(json!({
            "model": name, "batch": global_batch, "size": size, "threads": threads, "ranks": world.size,
            "trainable_params": trainable, "buffers": buffers, "det_positives": positives, "initial_losses": initial,
            "steps": phases.len(),
            "ms_phases": {"forward": parts[0], "losses": parts[1], "backward": parts[2], "update": parts[3], "allreduce": parts[4]},
            "ms_median": median * 1e3, "ms_mean": mean * 1e3,
            "samples_per_s": global_batch as f64 / median,
        }));
    }
    if !root {
        return;
    }
    let file =
        std::env::var("STEP_BENCH_JSON").map(PathBuf::from).unwrap_or_else(|_| out_dir.join("train-step-rust.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&json!({"cores": cores, "rows": rows})).unwrap()).unwrap();
}
