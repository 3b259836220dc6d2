//! The training run: loader → student → losses → optimiser, with metrics, checkpoints and evaluation.
//!
//! A run lives in one directory (`out` in the config):
//! - `metrics.jsonl`: one JSON object per logged step (`"kind": "train"`) and per evaluation
//!   (`"kind": "eval"`), readable with pandas/DuckDB/Polars;
//! - `checkpoints/step-*/`: see [`crate::checkpoint`];
//! - `curves.png`: losses, learning rate and evaluation metrics (redrawn at every evaluation and at the end);
//! - `config.json`: the resolved configuration the run used.
//!
//! Starting a run whose directory holds a checkpoint continues it: the model, optimiser, loss scale and
//! sampler position are restored, `metrics.jsonl` is cut back to the checkpoint's step, and the following
//! steps repeat exactly what the interrupted run would have done (same batches, same augmentation, same
//! updates). To start over, delete the directory or pass another `--out`.
//!
//! Launched by torchrun, Slurm or a Kubernetes job with `WORLD_SIZE > 1`, the same loop runs data-parallel
//! (see [`crate::distributed`]): every process takes its slice of each global batch, gradients are
//! averaged before each step, and only rank 0 writes the run directory. Every rank reads the same
//! checkpoint on resume, which may have been taken at another world size.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, CheckpointState};
use crate::config::{ConfigError, DeviceChoice, TrainConfig};
use crate::data::{DataError, Loader, RankSlice, SamplerState};
use crate::distributed::{self, GlobalCount, LocalCount, ProcessGroup, World};
use crate::error::{io_err, TrainError};
use crate::eval::{evaluate, EvalReport};
use crate::loss::{images_tensor, task_losses, Objective};
use crate::metrics_log::MetricsLog;
use crate::model::{Student, StudentConfig};
use crate::optim::{learning_rate, Optimizer};
use crate::progress::{Progress, Short};

/// The device for a choice; asking for CUDA without a visible GPU is an error, not a fall-back.
pub fn select_device(choice: DeviceChoice) -> Result<Device, TrainError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => {
            Err(TrainError::Device("--device cuda was asked for, but libtorch sees no CUDA device".into()))
        }
    }
}

/// The student with its loss weighting, in one variable store (so both are trained and checkpointed).
#[derive(Debug)]
pub struct Model {
    pub vs: VarStore,
    pub student: Student,
    pub objective: Objective,
}

/// libtorch's generator is process-global: hold this while seeding and drawing initial weights, so that
/// two models built at once (threads, tests) still get exactly their seed's weights.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Model {
    /// A freshly initialised model for `cfg` (seeded by `run.init_seed`).
    pub fn new(cfg: &TrainConfig, device: Device) -> Model {
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(cfg.run.init_seed as i64);
        let vs = VarStore::new(device);
        let student = Student::new(&(vs.root() / "student"), &cfg.student());
        let objective =
            Objective::new(&(vs.root() / "objective"), &cfg.tasks(), cfg.task_weights(), cfg.loss.uncertainty);
        Model { vs, student, objective }
    }

    /// A model with only the student (for evaluation and inference), built for `config`.
    pub fn student_only(config: &StudentConfig, device: Device) -> Model {
        let vs = VarStore::new(device);
        let student = Student::new(&(vs.root() / "student"), config);
        let objective = Objective::new(&(vs.root() / "objective"), &[], BTreeMap::new(), false);
        Model { vs, student, objective }
    }

    /// A student-only model whose initial weights are drawn from `seed` (fine-tuning's new heads).
    pub fn seeded_student(config: &StudentConfig, device: Device, seed: u64) -> Model {
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed as i64);
        Model::student_only(config, device)
    }

    /// Every variable by name, sorted (trainable and buffers such as batch-norm statistics).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Trainable variables by name.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.named_tensors().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }

    /// Copies `tensors` into the model's variables. With `strict`, every variable must be present and
    /// nothing else; otherwise only the `student/` variables are required (evaluation ignores the rest).
    pub fn load(&mut self, tensors: Vec<(String, Tensor)>, strict: bool, path: &Path) -> Result<(), TrainError> {
        let fail = |reason: String| TrainError::Resume { path: path.display().to_string(), reason };
        let mut given: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in &mut vars {
            match given.remove(name.as_str()) {
                Some(t) if t.size() == var.size() => tch::no_grad(|| var.copy_(&t)),
                Some(t) => {
                    return Err(fail(format!("tensor {name:?} has shape {:?}, the model {:?}", t.size(), var.size())))
                }
                None if strict || name.starts_with("student.") => {
                    return Err(fail(format!(
                        "tensor {name:?} is missing (was the checkpoint made for another model?)"
                    )))
                }
                None => {}
            }
        }
        if strict {
            if let Some(extra) = given.keys().next() {
                return Err(fail(format!("tensor {extra:?} is not a variable of this model")));
            }
        }
        Ok(())
    }
}

/// How a run is driven from the outside.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Where progress goes (a bar on a terminal); without it the run logs a line every `log_every` steps.
    pub progress: Option<Arc<dyn Progress>>,
    /// Stop after this many steps of this invocation (the run itself is not finished; used to split a
    /// run into several jobs, and by tests).
    pub stop_after: Option<u64>,
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    pub out: PathBuf,
    /// The step the run started from (0, or the checkpoint it resumed).
    pub started_at: u64,
    /// Steps completed in total.
    pub step: u64,
    /// Whether the configured number of steps is done.
    pub finished: bool,
    pub final_eval: Option<EvalReport>,
    pub skipped_images: u64,
}

/// Dynamic loss scaling for mixed precision: grow after a run of finite steps, halve and skip on overflow.
#[derive(Debug, Clone, Copy)]
struct LossScale {
    scale: f64,
    good: u64,
}

impl LossScale {
    const GROWTH_INTERVAL: u64 = 2000;
}

/// Runs (or continues) the training run configured by `cfg`; data-parallel when the launcher's
/// environment says so (see [`World::from_env`]).
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<RunSummary, TrainError> {
    let world = World::from_env()?;
    let device = match select_device(cfg.run.device)? {
        // One GPU per process: torchrun's LOCAL_RANK picks it.
        Device::Cuda(_) if world.size > 1 => Device::Cuda(world.local_rank),
        d => d,
    };
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let group = if world.size > 1 {
        let timeout = std::time::Duration::from_secs(cfg.run.dist_timeout_s);
        let group = Arc::new(ProcessGroup::join(&world, device, timeout)?);
        tracing::info!(
            rank = world.rank,
            world = world.size,
            backend = if device.is_cuda() { "nccl" } else { "gloo" },
            "joined the process group"
        );
        if cfg.run.sync_batch_norm {
            distributed::enable_sync_batch_norm(group.clone());
        }
        Some(group)
    } else {
        None
    };
    let root = world.is_root();
    let norm: &dyn GlobalCount = match &group {
        Some(g) => g.as_ref(),
        None => &LocalCount,
    };
    let mixed = cfg.run.mixed_precision && device.is_cuda();
    fs::create_dir_all(&cfg.out).map_err(io_err(&cfg.out))?;
    let config_json = cfg.out.join("config.json");
    // The record names dataset locations without any credentials written into their URLs.
    let mut recorded = cfg.clone();
    let eval_datasets = recorded.eval.iter_mut().flat_map(|e| e.datasets.iter_mut());
    for d in recorded.data.datasets.iter_mut().chain(eval_datasets) {
        d.location = shards::redact_url(&d.location);
    }
    let text =
        serde_json::to_vec_pretty(&recorded).map_err(|e| TrainError::Torch(format!("encoding the config: {e}")))?;
    if root {
        fs::write(&config_json, text).map_err(io_err(&config_json))?;
    }

    let ckpt_dir = cfg.out.join("checkpoints");
    let mut model = Model::new(cfg, device);
    let mut optimizer = Optimizer::new(&cfg.optim, model.trainable());
    let mut scale = LossScale { scale: if mixed { 65536.0 } else { 1.0 }, good: 0 };
    let (start, sampler) = match checkpoint::latest(&ckpt_dir)? {
        Some(path) => {
            let loaded = checkpoint::load(&path)?;
            if loaded.state.student != cfg.student() {
                return Err(TrainError::Resume {
                    path: path.display().to_string(),
                    reason: "the checkpoint's [model] or task heads differ from the config".into(),
                });
            }
            model.load(loaded.model, true, &path)?;
            optimizer
                .load_state(loaded.optimizer, loaded.state.optimizer_updates)
                .map_err(|e| TrainError::Resume { path: path.display().to_string(), reason: e.to_string() })?;
            scale.scale = loaded.state.loss_scale;
            tracing::info!(checkpoint = %path.display(), step = loaded.state.step, "resuming");
            (loaded.state.step, loaded.state.sampler)
        }
        None => (0, SamplerState::default()),
    };
    // Same starting point on every rank: rank 0's weights and buffers (DDP does the same at construction).
    let model_buffers: Vec<Tensor> =
        model.named_tensors().into_iter().filter(|(_, t)| !t.requires_grad()).map(|(_, t)| t).collect();
    let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, t)| t).collect();
    if let Some(g) = &group {
        g.broadcast_from_root(&model.named_tensors().into_iter().map(|(_, t)| t).collect::<Vec<_>>())?;
    }
    let bucket_bytes = (cfg.run.bucket_mb * (1 << 20) as f64) as usize;
    let mut log =
        if root { Some(MetricsLog::open(&cfg.out.join("metrics.jsonl"), (start > 0).then_some(start))?) } else { None };
    let total_steps = cfg.optim.steps;
    if start >= total_steps {
        tracing::info!(step = start, "the run is already finished");
        return Ok(RunSummary {
            out: cfg.out.clone(),
            started_at: start,
            step: start,
            finished: true,
            final_eval: None,
            skipped_images: 0,
        });
    }
    let mut data = cfg.data.clone();
    data.rank = RankSlice { rank: world.rank, world: world.size };
    let mut loader = Loader::new(data, sampler)?;
    for (name, rows) in loader.dataset_rows() {
        tracing::info!(dataset = %name, rows, "training data");
    }
    let (parameters, buffers) = crate::model::count_parameters(&model.vs);
    tracing::info!(parameters, buffers, device = ?device, mixed_precision = mixed, "student");

    let bar = opts.progress.as_deref().filter(|_| root);
    if let Some(bar) = bar {
        bar.start("train", total_steps, start);
    }
    let stop_at = opts.stop_after.map_or(total_steps, |n| (start + n).min(total_steps));
    let mut step = start;
    let mut window = Window::default();
    let mut final_eval = None;
    let mut exhausted = false;
    while step < stop_at {
        let t0 = Instant::now();
        let batch = match loader.next_batch() {
            Ok(b) => b,
            Err(DataError::Exhausted) => {
                exhausted = true;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let t_data = t0.elapsed().as_secs_f64();
        let lr = learning_rate(step, cfg.optim.lr, cfg.optim.warmup_steps, total_steps);
        let x = images_tensor(&batch, device)?;
        let (losses, total) = tch::autocast(mixed, || -> Result<_, TrainError> {
            let out = model.student.forward_t(&x, true);
            let losses = task_losses(&out, &batch, device, norm)?;
            let total = model.objective.total(&losses);
            Ok((losses, total))
        })?;
        if let Some(e) = distributed::take_forward_error() {
            return Err(e.into());
        }
        let total_value = total.double_value(&[]);
        if !total_value.is_finite() {
            return Err(TrainError::NonFinite { step, what: "total loss".into(), value: total_value });
        }
        optimizer.zero_grad();
        (&total * scale.scale).backward();
        if let Some(g) = &group {
            if let Some(e) = distributed::take_forward_error() {
                return Err(e.into());
            }
            g.average_gradients(&params, bucket_bytes)?;
            if !cfg.run.sync_batch_norm {
                // Per-rank batch-norm statistics: rank 0's running averages are the model's (DDP's
                // broadcast_buffers), so every rank evaluates and checkpoints the same model.
                g.broadcast_from_root(&model_buffers)?;
            }
        }
        let mut norm = optimizer.grad_norm();
        if mixed && !norm.is_finite() {
            scale.scale /= 2.0;
            scale.good = 0;
            tracing::warn!(
                step,
                scale = scale.scale,
                "gradient overflow; skipping the update and lowering the loss scale"
            );
        } else {
            if !norm.is_finite() {
                return Err(TrainError::NonFinite { step, what: "gradient norm".into(), value: norm });
            }
            if scale.scale != 1.0 {
                optimizer.scale_grads(1.0 / scale.scale);
                norm /= scale.scale;
            }
            if let Some(max) = cfg.optim.clip_grad_norm {
                if norm > max {
                    optimizer.scale_grads(max / norm);
                }
            }
            optimizer.step(lr);
            if mixed {
                scale.good += 1;
                if scale.good >= LossScale::GROWTH_INTERVAL {
                    scale.scale *= 2.0;
                    scale.good = 0;
                }
            }
        }
        step += 1;
        let step_values = StepValues::of(&losses, total_value, batch.size, group.as_deref())?;
        window.add(&step_values, t0.elapsed().as_secs_f64(), t_data);

        if step % cfg.run.log_every == 0 || step == stop_at {
            let record = window.record(step, lr, norm);
            if let Some(log) = log.as_mut() {
                log.write(&record)?;
            }
            match bar {
                Some(bar) => bar.update(
                    step,
                    &format!("loss {} | {} samples/s", Short(window.mean_total()), Short(window.samples_per_s())),
                ),
                None if root => tracing::info!(
                    step,
                    loss = %Short(window.mean_total()),
                    lr = %Short(lr),
                    samples_per_s = %Short(window.samples_per_s()),
                    data_wait = %Short(window.data_fraction()),
                    "train"
                ),
                None => {}
            }
            window = Window::default();
        }
        let last = step == total_steps;
        if root && (step % cfg.run.checkpoint_every == 0 || last || step == stop_at) {
            save_checkpoint(cfg, &ckpt_dir, &model, &optimizer, step, loader.state(), scale.scale)?;
        }
        let eval_now = cfg.eval.is_some() && (last || (cfg.run.eval_every > 0 && step % cfg.run.eval_every == 0));
        if let (true, Some(log)) = (eval_now, log.as_mut()) {
            let report = run_eval(cfg, &model, device, step, log)?;
            if let Some(bar) = bar {
                bar.println(&report.table());
            }
            final_eval = Some(report);
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    if root && exhausted && step < total_steps {
        save_checkpoint(cfg, &ckpt_dir, &model, &optimizer, step, loader.state(), scale.scale)?;
        tracing::info!(step, "the configured passes over the data are done");
    }
    let finished = step >= total_steps || exhausted;
    if root {
        if let Err(e) = crate::plot::draw_run(&cfg.out) {
            tracing::warn!(error = %e, "could not draw the curves");
        }
    }
    Ok(RunSummary {
        out: cfg.out.clone(),
        started_at: start,
        step,
        finished,
        final_eval,
        skipped_images: loader.skipped_images(),
    })
}

fn save_checkpoint(
    cfg: &TrainConfig,
    dir: &Path,
    model: &Model,
    optimizer: &Optimizer,
    step: u64,
    sampler: SamplerState,
    loss_scale: f64,
) -> Result<(), TrainError> {
    let (optim_tensors, updates) = optimizer.state();
    let state = CheckpointState {
        format_version: checkpoint::FORMAT_VERSION,
        step,
        sampler,
        optimizer_updates: updates,
        loss_scale,
        student: cfg.student(),
    };
    let path = checkpoint::save(dir, &state, &model.named_tensors(), &optim_tensors, cfg.run.keep_checkpoints)?;
    tracing::debug!(checkpoint = %path.display(), "saved");
    Ok(())
}

fn run_eval(
    cfg: &TrainConfig,
    model: &Model,
    device: Device,
    step: u64,
    log: &mut MetricsLog,
) -> Result<EvalReport, TrainError> {
    let (Some(data), Some(section)) = (cfg.eval_data(), cfg.eval.as_ref()) else {
        return Err(TrainError::Torch("evaluation asked for without [eval]".into()));
    };
    let t0 = Instant::now();
    let report = evaluate(&model.student, device, data, section.max_images)?;
    log.write(&json!({
        "kind": "eval",
        "step": step,
        "images": report.images,
        "seconds": t0.elapsed().as_secs_f64(),
        "metrics": report.scores,
    }))?;
    for (name, s) in &report.scores {
        tracing::info!(step, metric = %name, value = %Short(s.value), baseline = %Short(s.baseline), "eval");
    }
    let path = cfg.out.join("eval.json");
    let text = serde_json::to_vec_pretty(&json!({"step": step, "report": report}))
        .map_err(|e| TrainError::Torch(format!("encoding the report: {e}")))?;
    fs::write(&path, text).map_err(io_err(&path))?;
    if let Err(e) = crate::plot::draw_run(&cfg.out) {
        tracing::warn!(error = %e, "could not draw the curves");
    }
    Ok(report)
}

/// Evaluates the newest checkpoint of a run (or a checkpoint directory) on the config's `[eval]` set.
pub fn evaluate_checkpoint(cfg: &TrainConfig, checkpoint_path: &Path) -> Result<EvalReport, TrainError> {
    let device = select_device(cfg.run.device)?;
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let loaded = checkpoint::load(checkpoint_path)?;
    let mut model = Model::student_only(&loaded.state.student, device);
    model.load(loaded.model, false, &loaded.path)?;
    let (Some(data), Some(section)) = (cfg.eval_data(), cfg.eval.as_ref()) else {
        return Err(TrainError::Config(ConfigError::Invalid {
            file: cfg.file.display().to_string(),
            field: "eval".into(),
            reason: "no [eval] section: name the labelled shards to evaluate on".into(),
        }));
    };
    evaluate(&model.student, device, data, section.max_images)
}

/// One step's logged numbers; in data-parallel runs the mean over ranks (losses) or the sum (samples,
/// rows present), from one small all-reduce.
#[derive(Debug, Default)]
struct StepValues {
    total: f64,
    samples: f64,
    /// Loss and rows present of each task.
    tasks: Vec<(&'static str, f64, f64)>,
    parts: Vec<(&'static str, f64)>,
}

impl StepValues {
    fn of(
        losses: &crate::loss::TaskLosses,
        total: f64,
        samples: usize,
        group: Option<&ProcessGroup>,
    ) -> Result<StepValues, TrainError> {
        let mut v = StepValues { total, samples: samples as f64, ..Default::default() };
        for (task, l) in &losses.losses {
            let present = losses.present.get(task).copied().unwrap_or(0) as f64;
            v.tasks.push((task.as_str(), l.double_value(&[]), present));
        }
        for (name, l) in &losses.parts {
            v.parts.push((name, l.to_kind(Kind::Double).double_value(&[])));
        }
        let Some(g) = group else { return Ok(v) };
        let mut flat = vec![v.total, v.samples];
        flat.extend(v.tasks.iter().flat_map(|t| [t.1, t.2]));
        flat.extend(v.parts.iter().map(|p| p.1));
        let t = Tensor::from_slice(&flat);
        g.all_reduce_sum(&t)?;
        let sum = Vec::<f64>::try_from(&t).map_err(|e| TrainError::Torch(e.to_string()))?;
        let ranks = g.world().size as f64;
        v.total = sum[0] / ranks;
        v.samples = sum[1];
        for (i, t) in v.tasks.iter_mut().enumerate() {
            (t.1, t.2) = (sum[2 + 2 * i] / ranks, sum[3 + 2 * i]);
        }
        let base = 2 + 2 * v.tasks.len();
        for (i, p) in v.parts.iter_mut().enumerate() {
            p.1 = sum[base + i] / ranks;
        }
        Ok(v)
    }
}

/// Running means over the steps between two log lines.
#[derive(Debug, Default)]
struct Window {
    steps: u64,
    samples: f64,
    seconds: f64,
    data_seconds: f64,
    total: f64,
    tasks: BTreeMap<&'static str, (f64, u64)>,
    parts: BTreeMap<&'static str, f64>,
}

impl Window {
    fn add(&mut self, v: &StepValues, seconds: f64, data: f64) {
        self.steps += 1;
        self.samples += v.samples;
        self.seconds += seconds;
        self.data_seconds += data;
        self.total += v.total;
        for &(task, loss, present) in &v.tasks {
            // A task with no rows in this batch contributes an exact 0 that says nothing: leave it out.
            if present > 0.0 {
                let e = self.tasks.entry(task).or_default();
                e.0 += loss;
                e.1 += 1;
            }
        }
        for &(name, l) in &v.parts {
            *self.parts.entry(name).or_default() += l;
        }
    }

    fn mean_total(&self) -> f64 {
        self.total / self.steps.max(1) as f64
    }

    fn samples_per_s(&self) -> f64 {
        self.samples / self.seconds.max(1e-9)
    }

    fn data_fraction(&self) -> f64 {
        self.data_seconds / self.seconds.max(1e-9)
    }

    fn record(&self, step: u64, lr: f64, grad_norm: f64) -> serde_json::Value {
        let tasks: BTreeMap<&str, f64> = self.tasks.iter().map(|(k, (s, n))| (*k, s / *n as f64)).collect();
        let parts: BTreeMap<&str, f64> = self.parts.iter().map(|(k, s)| (*k, s / self.steps as f64)).collect();
        json!({
            "kind": "train",
            "step": step,
            "lr": lr,
            "loss": self.mean_total(),
            "tasks": tasks,
            "parts": parts,
            "grad_norm": grad_norm,
            "samples_per_s": self.samples_per_s(),
            "data_wait_fraction": self.data_fraction(),
        })
    }
}
