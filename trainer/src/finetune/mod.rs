//! Transfer: the student's ResNet + FPN, fine-tuned with a new head on a downstream task no teacher saw.
//!
//! This is how MuST judges a representation (supplementary §2.3): initialise the trunk from a pre-trained
//! checkpoint (or at random, the baseline), initialise the task head at random, train end to end with a
//! cosine learning rate and weight decay 1e-4, over a grid of learning rate × steps; the best point on the
//! validation split is reported on the test split. `linear_probe = true` freezes the trunk (batch-norm
//! statistics included) and trains the head alone: cheaper, and a second view of the same features.
//!
//! A run directory holds:
//! - `points/<lr>-<steps>.json`: one finished grid point (validation and test metrics). A re-run skips
//!   the points whose result is there and was made with the same settings, so a killed grid resumes;
//! - `metrics.jsonl`: `"kind": "finetune"` lines (loss by step, per point) and `"kind": "point"` results;
//! - `eval.json`: every point, and the chosen one; `curves.png`: losses and validation metric per point;
//! - `config.json`: the resolved configuration.

pub mod config;
pub mod data;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::checkpoint;
use crate::data::Augmentation;
use crate::error::{io_err, TrainError};
use crate::eval::host_f32;
use crate::loss::{depth_loss, normals_loss, segmentation_loss, LocalCount};
use crate::metrics::{self, ClsAccumulator, DepthAccumulator, NormalsAccumulator, Score, SegAccumulator};
use crate::metrics_log::MetricsLog;
use crate::model::{StudentConfig, StudentOutput};
use crate::optim::{learning_rate, Optimizer};
use crate::progress::{Progress, Short};
use crate::train::{select_device, Model};
pub use config::{DownstreamKind, FinetuneConfig, FinetuneOverrides};
use data::{epoch_order, Batcher, DownstreamBatch, DownstreamSet};

/// The result of one grid point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    pub lr: f64,
    pub steps: u64,
    /// Mean training loss over the last `log_every` steps.
    pub final_loss: f64,
    pub val: BTreeMap<String, Score>,
    pub test: BTreeMap<String, Score>,
    pub seconds: f64,
    /// The settings the point was made with; a re-run with other settings recomputes it.
    pub fingerprint: String,
}

/// Every grid point and the one chosen on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    pub kind: DownstreamKind,
    /// `random` or the checkpoint the trunk came from.
    pub init: String,
    pub linear_probe: bool,
    /// The validation metric the grid is chosen on (higher is better).
    pub selection_metric: String,
    pub points: Vec<PointResult>,
    /// Index into `points`.
    pub best: usize,
}

impl FinetuneReport {
    /// The chosen point.
    pub fn chosen(&self) -> &PointResult {
        &self.points[self.best]
    }

    /// The chosen point's test value of the selection metric.
    pub fn test_value(&self) -> f64 {
        self.chosen().test.get(&self.selection_metric).map_or(f64::NAN, |s| s.value)
    }

    /// A table for people: one line per grid point, the chosen one marked.
    pub fn table(&self) -> String {
        let metric = &self.selection_metric;
        let mut s = format!("{:>10} {:>7} {:>10} {:>12} {:>12}\n", "lr", "steps", "loss", "val", "test");
        for (i, p) in self.points.iter().enumerate() {
            let v = |m: &BTreeMap<String, Score>| m.get(metric).map_or("-".into(), |s| format!("{:.4}", s.value));
            let mark = if i == self.best { "  <- chosen on val" } else { "" };
            s.push_str(&format!(
                "{:>10} {:>7} {:>10} {:>12} {:>12}{mark}\n",
                Short(p.lr).to_string(),
                p.steps,
                Short(p.final_loss).to_string(),
                v(&p.val),
                v(&p.test)
            ));
        }
        let chosen = self.chosen();
        s.push_str(&format!("{metric} on test: {:.4}", self.test_value()));
        if let Some(b) = chosen.test.get(metric) {
            s.push_str(&format!(" (trivial baseline {:.4})", b.baseline));
        }
        for (name, score) in chosen.test.iter().filter(|(n, _)| *n != metric) {
            s.push_str(&format!("; {name} {:.4} (baseline {:.4})", score.value, score.baseline));
        }
        s.push('\n');
        s
    }
}

/// How a fine-tuning run is driven from the outside.
#[derive(Clone, Default)]
pub struct FinetuneOptions {
    pub progress: Option<Arc<dyn Progress>>,
}

/// Where the trunk's weights come from.
struct Init {
    description: String,
    trunk: StudentConfig,
    tensors: Vec<(String, Tensor)>,
    checkpoint_step: Option<u64>,
}

/// Trunk variables: everything under the student's ResNet and FPN.
fn is_trunk(name: &str) -> bool {
    name.starts_with("student.backbone.") || name.starts_with("student.fpn.")
}

fn load_init(cfg: &FinetuneConfig) -> Result<Init, TrainError> {
    match &cfg.init.checkpoint {
        Some(path) => {
            let loaded = checkpoint::load(Path::new(path))?;
            let tensors = loaded.model.into_iter().filter(|(n, _)| is_trunk(n)).collect();
            Ok(Init {
                description: loaded.path.display().to_string(),
                trunk: loaded.state.student,
                tensors,
                checkpoint_step: Some(loaded.state.step),
            })
        }
        None => {
            let m = cfg.model.as_ref().ok_or_else(|| TrainError::Torch("random init needs [model]".into()))?;
            let trunk = StudentConfig {
                resnet_depth: m.resnet_depth,
                width: m.width,
                fpn_channels: m.fpn_channels,
                det_tower_convs: m.det_tower_convs,
                pixel_head_convs: m.pixel_head_convs,
                num_classes: None,
                num_det_classes: None,
                num_seg_classes: None,
                depth_head: false,
                normals_head: false,
            };
            Ok(Init { description: "random".into(), trunk, tensors: Vec::new(), checkpoint_step: None })
        }
    }
}

/// The pre-training architecture with only the downstream task's head.
fn downstream_student(trunk: &StudentConfig, kind: DownstreamKind, classes: Option<usize>) -> StudentConfig {
    StudentConfig {
        num_classes: (kind == DownstreamKind::Classification).then(|| classes.unwrap_or(1)),
        num_det_classes: None,
        num_seg_classes: (kind == DownstreamKind::Segmentation).then(|| classes.unwrap_or(1)),
        depth_head: kind == DownstreamKind::Depth,
        normals_head: kind == DownstreamKind::Normals,
        ..trunk.clone()
    }
}

/// A fresh model for one grid point: new head from `init_seed`, trunk copied from `init`.
fn build_model(cfg: &FinetuneConfig, init: &Init, device: Device) -> Result<Model, TrainError> {
    let student = downstream_student(&init.trunk, cfg.task.kind, cfg.task.num_classes);
    let model = Model::seeded_student(&student, device, cfg.run.init_seed);
    if !init.tensors.is_empty() {
        let given: BTreeMap<&str, &Tensor> = init.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, var) in model.vs.variables().iter_mut().filter(|(n, _)| is_trunk(n)) {
            let src = given.get(name.as_str()).ok_or_else(|| TrainError::Resume {
                path: init.description.clone(),
                reason: format!("the checkpoint has no tensor {name:?}"),
            })?;
            if src.size() != var.size() {
                return Err(TrainError::Resume {
                    path: init.description.clone(),
                    reason: format!("tensor {name:?} has shape {:?}, the model {:?}", src.size(), var.size()),
                });
            }
            tch::no_grad(|| var.copy_(src));
        }
    }
    if cfg.grid.linear_probe {
        for (name, var) in model.vs.variables().iter_mut() {
            if is_trunk(name) {
                let _ = var.set_requires_grad(false);
            }
        }
    }
    Ok(model)
}

fn images_tensor(b: &DownstreamBatch, device: Device) -> Tensor {
    let s = b.image_size as i64;
    Tensor::from_slice(&b.images).view([b.size as i64, 3, s, s]).to_device(device)
}

fn missing_head(kind: DownstreamKind) -> TrainError {
    TrainError::Torch(format!("the fine-tuning model has no {kind:?} head"))
}

/// The task's loss on one batch.
fn loss(kind: DownstreamKind, out: &StudentOutput, b: &DownstreamBatch, device: Device) -> Result<Tensor, TrainError> {
    let (n, s) = (b.size as i64, b.image_size as i64);
    let present = Tensor::ones([n], (Kind::Float, device));
    Ok(match kind {
        DownstreamKind::Classification => {
            let logits = out.cls.as_ref().ok_or_else(|| missing_head(kind))?;
            logits.cross_entropy_for_logits(&Tensor::from_slice(&b.classes).to_device(device))
        }
        DownstreamKind::Segmentation => {
            let logits = out.seg.as_ref().ok_or_else(|| missing_head(kind))?;
            let target = Tensor::from_slice(&b.seg).view([n, s, s]).to_kind(Kind::Int64).to_device(device);
            segmentation_loss(logits, &target, &present, &LocalCount)
        }
        DownstreamKind::Depth => {
            let pred = out.depth.as_ref().ok_or_else(|| missing_head(kind))?;
            let target = Tensor::from_slice(&b.depth).view([n, s, s]).to_device(device);
            let valid = Tensor::from_slice(&b.valid).view([n, s, s]).to_kind(Kind::Float).to_device(device);
            depth_loss(pred, &target, &valid, &present, &LocalCount)
        }
        DownstreamKind::Normals => {
            let pred = out.normals.as_ref().ok_or_else(|| missing_head(kind))?;
            let target = Tensor::from_slice(&b.normals).view([n, 3, s, s]).to_device(device);
            let valid = Tensor::from_slice(&b.valid).view([n, s, s]).to_kind(Kind::Float).to_device(device);
            normals_loss(pred, &target, &valid, &LocalCount)
        }
    })
}

/// Metrics of `model` on one pass over `set`, letterboxed as in evaluation (no jitter, no flip).
fn evaluate(
    model: &Model,
    set: &DownstreamSet,
    cfg: &FinetuneConfig,
    constant_normal: [f32; 3],
    device: Device,
) -> Result<BTreeMap<String, Score>, TrainError> {
    let kind = cfg.task.kind;
    let mut batcher = Batcher::new(set, cfg.data.image_size, Augmentation::none());
    let mut cls = ClsAccumulator::default();
    let mut seg = SegAccumulator::new(cfg.task.num_classes.unwrap_or(1));
    let mut depth = DepthAccumulator::default();
    let mut normals = NormalsAccumulator::new(constant_normal);
    let indices: Vec<usize> = (0..set.len()).collect();
    for chunk in indices.chunks(cfg.data.eval_batch_size) {
        let b = batcher.batch(chunk, 0, 0, false).map_err(|e| TrainError::Torch(e.to_string()))?;
        let out = tch::no_grad(|| model.student.forward_t(&images_tensor(&b, device), false));
        let plane = b.image_size * b.image_size;
        match kind {
            DownstreamKind::Classification => {
                let logits = host_f32(out.cls.as_ref().ok_or_else(|| missing_head(kind))?)?;
                let k = logits.len() / b.size;
                for (row, &c) in b.classes.iter().enumerate() {
                    let mut target = vec![0f32; k];
                    target[c as usize] = 1.0;
                    cls.add(&logits[row * k..(row + 1) * k], &target);
                }
            }
            DownstreamKind::Segmentation => {
                let logits = out.seg.as_ref().ok_or_else(|| missing_head(kind))?;
                let pred = logits.argmax(1, false).to_kind(Kind::Uint8).to_device(Device::Cpu).contiguous().view([-1]);
                let pred = Vec::<u8>::try_from(&pred).map_err(|e| TrainError::Torch(format!("copying masks: {e}")))?;
                for row in 0..b.size {
                    let r = row * plane..(row + 1) * plane;
                    seg.add(&pred[r.clone()], &b.seg[r]);
                }
            }
            DownstreamKind::Depth => {
                let pred = host_f32(out.depth.as_ref().ok_or_else(|| missing_head(kind))?)?;
                for row in 0..b.size {
                    let r = row * plane..(row + 1) * plane;
                    depth.add(&pred[r.clone()], &b.depth[r.clone()], &b.valid[r]);
                }
            }
            DownstreamKind::Normals => {
                let pred = host_f32(out.normals.as_ref().ok_or_else(|| missing_head(kind))?)?;
                for row in 0..b.size {
                    let r3 = row * 3 * plane..(row + 1) * 3 * plane;
                    normals.add(&pred[r3.clone()], &b.normals[r3], &b.valid[row * plane..(row + 1) * plane]);
                }
            }
        }
    }
    let mut scores = BTreeMap::new();
    let mut put = |name: &str, v: Option<(f64, f64)>| {
        if let Some((value, baseline)) = v {
            scores.insert(name.to_owned(), Score { value, baseline });
        }
    };
    match kind {
        DownstreamKind::Classification => put(metrics::CLS_TOP1, cls.top1().zip(cls.majority_baseline())),
        DownstreamKind::Segmentation => put(metrics::SEG_MIOU, seg.miou().zip(seg.constant_baseline())),
        DownstreamKind::Depth => put(metrics::DEPTH_DELTA1, depth.delta1().zip(depth.constant_baseline())),
        DownstreamKind::Normals => {
            put(metrics::NORMALS_UNDER_11_25, normals.under_11_25());
            put(metrics::NORMALS_MEAN_DEGREES, normals.mean_degrees());
        }
    }
    Ok(scores)
}

/// A grid point's name in `points/` and in the log.
fn point_id(lr: f64, steps: u64) -> String {
    format!("lr{lr}-steps{steps}")
}

/// Everything a point's result depends on besides `lr` and `steps`.
fn fingerprint(cfg: &FinetuneConfig, init: &Init) -> String {
    let settings = json!({
        "task": cfg.task, "init": init.description, "init_step": init.checkpoint_step, "model": cfg.model,
        "data": cfg.data, "optim": cfg.optim, "linear_probe": cfg.grid.linear_probe, "init_seed": cfg.run.init_seed,
    });
    let text = settings.to_string();
    format!("{:016x}", crate::data::rng::hash_bytes(0, text.as_bytes()))
}

struct Sets {
    train: DownstreamSet,
    val: DownstreamSet,
    test: DownstreamSet,
    /// The training set's mean normal: the constant baseline of the normals metric.
    constant_normal: [f32; 3],
}

/// Trains one grid point and evaluates it on validation and test.
#[allow(clippy::too_many_arguments)]
fn run_point(
    cfg: &FinetuneConfig,
    init: &Init,
    sets: &Sets,
    lr: f64,
    steps: u64,
    device: Device,
    log: &mut MetricsLog,
    progress: Option<&dyn Progress>,
) -> Result<PointResult, TrainError> {
    let t0 = Instant::now();
    let id = point_id(lr, steps);
    let model = build_model(cfg, init, device)?;
    let optim = cfg.optim_for(lr, steps);
    let mut optimizer = Optimizer::new(&optim, model.trainable());
    let mut batcher = Batcher::new(&sets.train, cfg.data.image_size, cfg.data.augment);
    let (kind, bs, seed) = (cfg.task.kind, cfg.data.batch_size, cfg.data.seed);
    let train_mode = !cfg.grid.linear_probe;
    if let Some(p) = progress {
        p.start(&id, steps, 0);
    }
    let (mut window_loss, mut window_steps, mut final_loss) = (0.0, 0u64, f64::NAN);
    for step in 0..steps {
        let indices = epoch_order(sets.train.len(), seed, step, bs);
        let batch = batcher.batch(&indices, seed, step, true).map_err(|e| TrainError::Torch(e.to_string()))?;
        let out = model.student.forward_t(&images_tensor(&batch, device), train_mode);
        let total = loss(kind, &out, &batch, device)?;
        let value = total.double_value(&[]);
        if !value.is_finite() {
            return Err(TrainError::NonFinite { step, what: format!("fine-tuning loss ({id})"), value });
        }
        optimizer.zero_grad();
        total.backward();
        if let Some(max) = optim.clip_grad_norm {
            let norm = optimizer.grad_norm();
            if norm > max {
                optimizer.scale_grads(max / norm);
            }
        }
        let lr_now = learning_rate(step, lr, optim.warmup_steps, steps);
        optimizer.step(lr_now);
        window_loss += value;
        window_steps += 1;
        let done = step + 1;
        if done % cfg.run.log_every == 0 || done == steps {
            final_loss = window_loss / window_steps as f64;
            log.write(&json!({
                "kind": "finetune", "point": id, "lr": lr, "steps": steps, "step": done,
                "lr_now": lr_now, "loss": final_loss,
            }))?;
            match progress {
                Some(p) => p.update(done, &format!("{id} loss {}", Short(final_loss))),
                None => tracing::info!(point = %id, step = done, loss = %Short(final_loss), "finetune"),
            }
            window_loss = 0.0;
            window_steps = 0;
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    let val = evaluate(&model, &sets.val, cfg, sets.constant_normal, device)?;
    let test = evaluate(&model, &sets.test, cfg, sets.constant_normal, device)?;
    Ok(PointResult {
        lr,
        steps,
        final_loss,
        val,
        test,
        seconds: t0.elapsed().as_secs_f64(),
        fingerprint: fingerprint(cfg, init),
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn read_point(path: &Path, fingerprint: &str) -> Option<PointResult> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice::<PointResult>(&text).ok().filter(|p| p.fingerprint == fingerprint)
}

/// Runs (or finishes) the grid of `cfg`; returns every point and the chosen one.
pub fn run(cfg: &FinetuneConfig, opts: &FinetuneOptions) -> Result<FinetuneReport, TrainError> {
    let device = select_device(cfg.run.device)?;
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let points_dir = cfg.out.join("points");
    fs::create_dir_all(&points_dir).map_err(io_err(&points_dir))?;
    let config_json = cfg.out.join("config.json");
    let text = serde_json::to_vec_pretty(cfg).map_err(|e| TrainError::Torch(format!("encoding the config: {e}")))?;
    fs::write(&config_json, text).map_err(io_err(&config_json))?;

    let init = load_init(cfg)?;
    let read = |split: &str| {
        DownstreamSet::read(&cfg.task.location, split, cfg.task.kind, cfg.task.num_classes)
            .map_err(|e| TrainError::Torch(e.to_string()))
    };
    let train = read(&cfg.task.train_split)?;
    let constant_normal = train.mean_normal();
    let sets = Sets { constant_normal, train, val: read(&cfg.task.val_split)?, test: read(&cfg.task.test_split)? };
    tracing::info!(
        kind = ?cfg.task.kind, init = %init.description, linear_probe = cfg.grid.linear_probe,
        train = sets.train.len(), val = sets.val.len(), test = sets.test.len(), "fine-tuning"
    );
    let print = fingerprint(cfg, &init);
    let grid: Vec<(f64, u64)> =
        cfg.grid.lr.iter().flat_map(|&lr| cfg.grid.steps.iter().map(move |&s| (lr, s))).collect();
    let finished: BTreeMap<String, PointResult> = grid
        .iter()
        .filter_map(|&(lr, s)| {
            let id = point_id(lr, s);
            read_point(&points_dir.join(format!("{id}.json")), &print).map(|p| (id, p))
        })
        .collect();
    // Keep the log lines of finished points only; an interrupted point starts over.
    let mut log = MetricsLog::open_keeping(&cfg.out.join("metrics.jsonl"), |v| {
        v["point"].as_str().is_some_and(|p| finished.contains_key(p))
    })?;
    let mut points = Vec::with_capacity(grid.len());
    for (lr, steps) in grid {
        let id = point_id(lr, steps);
        if let Some(done) = finished.get(&id) {
            tracing::info!(point = %id, "already done");
            points.push(done.clone());
            continue;
        }
        let result = run_point(cfg, &init, &sets, lr, steps, device, &mut log, opts.progress.as_deref())?;
        let path = points_dir.join(format!("{id}.json"));
        let bytes = serde_json::to_vec_pretty(&result).map_err(|e| TrainError::Torch(e.to_string()))?;
        write_atomic(&path, &bytes)?;
        log.write(&json!({
            "kind": "point", "point": id, "lr": lr, "steps": steps, "step": steps,
            "val": result.val, "test": result.test, "seconds": result.seconds,
        }))?;
        let metric = cfg.task.kind.selection_metric();
        tracing::info!(
            point = %id,
            val = %Short(result.val.get(metric).map_or(f64::NAN, |s| s.value)),
            seconds = %Short(result.seconds),
            "point done"
        );
        points.push(result);
    }
    let metric = cfg.task.kind.selection_metric();
    let value = |p: &PointResult| p.val.get(metric).map_or(f64::NEG_INFINITY, |s| s.value);
    // Ties go to the earlier point (the smaller learning rate, then fewer steps).
    let best = (0..points.len()).fold(0, |best, i| if value(&points[i]) > value(&points[best]) { i } else { best });
    let report = FinetuneReport {
        kind: cfg.task.kind,
        init: init.description.clone(),
        linear_probe: cfg.grid.linear_probe,
        selection_metric: metric.to_owned(),
        points,
        best,
    };
    let eval_path = cfg.out.join("eval.json");
    let bytes = serde_json::to_vec_pretty(&report).map_err(|e| TrainError::Torch(e.to_string()))?;
    write_atomic(&eval_path, &bytes)?;
    if let Err(e) = crate::plot::draw_finetune(&cfg.out) {
        tracing::warn!(error = %e, "could not draw the curves");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(linear_probe: bool) -> FinetuneConfig {
        let text = format!(
            "out = \"run\"\n[task]\nkind = \"normals\"\nlocation = \"d\"\n[model]\nresnet_depth = 18\nwidth = 0.25\n\
             fpn_channels = 64\n[data]\nimage_size = 32\nbatch_size = 2\n[grid]\nlr = [0.1]\nsteps = [2]\n\
             linear_probe = {linear_probe}\n"
        );
        FinetuneConfig::parse(&text, Path::new("/x/ft.toml"), &FinetuneOverrides::default()).unwrap()
    }

    #[test]
    fn the_trunk_comes_from_the_checkpoint_and_a_probe_trains_only_the_head() {
        let cfg = config(true);
        let random = load_init(&cfg).unwrap();
        // A "pre-trained" trunk: another seed's weights, with a pre-training head that must not be copied.
        let pre =
            Model::seeded_student(&StudentConfig { num_classes: Some(3), ..random.trunk.clone() }, Device::Cpu, 9);
        let tensors: Vec<(String, Tensor)> = pre.named_tensors().into_iter().filter(|(n, _)| is_trunk(n)).collect();
        let init = Init { description: "pre".into(), trunk: random.trunk.clone(), tensors, checkpoint_step: Some(1) };

        let model = build_model(&cfg, &init, Device::Cpu).unwrap();
        let pre_vars = pre.named_tensors().into_iter().collect::<BTreeMap<_, _>>();
        let mut copied = 0;
        for (name, t) in model.named_tensors() {
            if is_trunk(&name) {
                assert!(t.equal(&pre_vars[&name]), "{name} was not copied");
                copied += 1;
            }
        }
        assert!(copied > 20, "only {copied} trunk tensors");
        let trainable: Vec<String> = model.trainable().into_iter().map(|(n, _)| n).collect();
        assert!(
            !trainable.is_empty() && trainable.iter().all(|n| n.starts_with("student.normals_head.")),
            "{trainable:?}"
        );

        // End to end: every trunk weight is trainable, and a trunk tensor the checkpoint lacks is an error.
        let full = build_model(&config(false), &init, Device::Cpu).unwrap();
        assert!(full.trainable().iter().any(|(n, _)| n.starts_with("student.backbone.")));
        let mut partial = init;
        partial.tensors.retain(|(n, _)| !n.starts_with("student.fpn."));
        let e = build_model(&cfg, &partial, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("student.fpn.") && e.contains("pre"), "{e}");
    }
}
