//! A training run's configuration: one TOML file plus command-line overrides, validated once, here.
//!
//! ```toml
//! out = "../out/train"                    # run directory: metrics.jsonl, checkpoints/, curves.png
//!
//! [data]                                  # trainer::data::DataConfig
//! image_size = 96
//! batch_size = 16
//! seed = 0
//! num_classes = { cls = 8, det = 5, seg = 7 }
//! [[data.datasets]]
//! name = "demo"
//! location = "../out/shards"              # a labeler output root (local path or object_store URL)
//! tasks = ["classification", "detection", "segmentation", "depth"]
//!
//! [model]                                 # the architecture; tasks and classes come from [data]
//! resnet_depth = 18
//! width = 0.25
//!
//! [optim]
//! optimizer = "sgd"                       # sgd | adamw
//! lr = 0.08
//! steps = 600
//! warmup_steps = 50
//!
//! [loss.teacher.detection]                # w_i = (b_s * lr_t,i) / (b_t,i * lr_s), MuST §3.2
//! batch_size = 256
//! lr = 0.32
//! ```
//! Relative paths are resolved against the config file's directory, so a config works from any working
//! directory. Unknown keys and bad values are errors naming the file and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, DatasetSpec, Task};
use crate::model::{ResNetDepth, StudentConfig};

/// A config problem, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: field `{field}`: {reason}")]
    Invalid { file: String, field: String, reason: String },
}

/// The student's architecture. Which heads exist and their class counts follow from `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    #[serde(default = "default_depth")]
    pub resnet_depth: ResNetDepth,
    #[serde(default = "one")]
    pub width: f64,
    #[serde(default = "default_fpn_channels")]
    pub fpn_channels: usize,
    #[serde(default = "default_tower_convs")]
    pub det_tower_convs: usize,
    #[serde(default = "default_head_convs")]
    pub pixel_head_convs: usize,
}

fn default_depth() -> ResNetDepth {
    ResNetDepth::R50
}
fn one() -> f64 {
    1.0
}
fn default_fpn_channels() -> usize {
    256
}
fn default_tower_convs() -> usize {
    4
}
fn default_head_convs() -> usize {
    3
}

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// SGD with (optionally Nesterov) momentum (the paper does not name its optimiser).
    Sgd,
    /// Adam with decoupled weight decay.
    Adamw,
}

/// Optimiser and schedule: linear warm-up to `lr`, then cosine decay to 0 at `steps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub optimizer: OptimizerKind,
    /// Peak learning rate of the student (lr_s in the task weights).
    pub lr: f64,
    /// Training steps (batches).
    pub steps: u64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Applied to weights of rank > 1 only (not to biases or norm parameters).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this value (none by default).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
}

fn default_momentum() -> f64 {
    0.9
}
fn default_weight_decay() -> f64 {
    1e-4
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

/// How a task's teacher was trained: its batch size and learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherHyper {
    pub batch_size: usize,
    pub lr: f64,
}

/// Task weighting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSection {
    /// Per task, the teacher's training batch size and learning rate; gives w_i = (b_s·lr_t)/(b_t·lr_s).
    /// Tasks without an entry weigh 1.
    #[serde(default)]
    pub teacher: BTreeMap<Task, TeacherHyper>,
    /// Per-task weights that replace the computed ones (the paper picks depth's by sweep).
    #[serde(default)]
    pub weights: BTreeMap<Task, f64>,
    /// Learned uncertainty weighting (Kendall et al. 2018) on top of the weights.
    #[serde(default)]
    pub uncertainty: bool,
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(format!("unknown device {other:?} (expected auto, cpu or cuda)")),
        }
    }
}

/// Run bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    #[serde(default)]
    pub device: DeviceChoice,
    /// Mixed precision (autocast + loss scaling); only ever used on CUDA.
    #[serde(default = "yes")]
    pub mixed_precision: bool,
    /// libtorch intra-op threads (0: libtorch's default).
    #[serde(default)]
    pub threads: usize,
    /// Seeds the model's initial weights.
    #[serde(default)]
    pub init_seed: u64,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Checkpoint every this many steps (and always at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (the newest).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Evaluate every this many steps (0: only at the end), when `[eval]` is configured.
    #[serde(default)]
    pub eval_every: u64,
    /// Data-parallel runs (`WORLD_SIZE > 1`): batch-norm statistics over the global batch instead of
    /// each process's slice (what MuST's student and Zoph et al. train with).
    #[serde(default)]
    pub sync_batch_norm: bool,
    /// Data-parallel runs: seconds a collective may wait for the other processes before the run fails
    /// (a process that died, or a rank 0 evaluating for longer than this). Default 1800, as PyTorch's.
    #[serde(default = "default_dist_timeout")]
    pub dist_timeout_s: u64,
    /// Data-parallel runs: gradients are all-reduced in flat buckets of at most this many MiB.
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            device: DeviceChoice::Auto,
            mixed_precision: true,
            threads: 0,
            init_seed: 0,
            log_every: default_log_every(),
            checkpoint_every: default_checkpoint_every(),
            keep_checkpoints: default_keep(),
            eval_every: 0,
            sync_batch_norm: false,
            dist_timeout_s: default_dist_timeout(),
            bucket_mb: default_bucket_mb(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_log_every() -> u64 {
    10
}
fn default_checkpoint_every() -> u64 {
    100
}
fn default_keep() -> usize {
    2
}
fn default_dist_timeout() -> u64 {
    1800
}
fn default_bucket_mb() -> f64 {
    25.0
}

/// The labelled shard set to evaluate on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub datasets: Vec<DatasetSpec>,
    /// Evaluation side (default: the training `image_size`); images are letterboxed into it.
    #[serde(default)]
    pub image_size: Option<usize>,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Evaluate at most this many images (default: all).
    #[serde(default)]
    pub max_images: Option<u64>,
}

fn default_eval_batch() -> usize {
    32
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    out: String,
    data: DataConfig,
    #[serde(default = "default_model")]
    model: ModelSection,
    optim: OptimSection,
    #[serde(default)]
    loss: LossSection,
    #[serde(default)]
    run: RunSection,
    #[serde(default)]
    eval: Option<EvalSection>,
}

fn default_model() -> ModelSection {
    ModelSection {
        resnet_depth: default_depth(),
        width: 1.0,
        fpn_channels: default_fpn_channels(),
        det_tower_convs: default_tower_convs(),
        pixel_head_convs: default_head_convs(),
    }
}

/// A loaded, validated run configuration. Paths are resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    /// The file it came from (for messages).
    pub file: PathBuf,
    /// Run directory (local path).
    pub out: PathBuf,
    pub data: DataConfig,
    pub model: ModelSection,
    pub optim: OptimSection,
    pub loss: LossSection,
    pub run: RunSection,
    pub eval: Option<EvalSection>,
}

/// Command-line overrides, applied before validation.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub out: Option<PathBuf>,
    pub steps: Option<u64>,
    pub device: Option<DeviceChoice>,
    pub workers: Option<usize>,
    pub threads: Option<usize>,
}

impl TrainConfig {
    /// Read, resolve and validate `file`.
    pub fn load(file: &Path, overrides: &Overrides) -> Result<TrainConfig, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { file: file.display().to_string(), source })?;
        Self::parse(&text, file, overrides)
    }

    /// Like [`TrainConfig::load`] for text already read; `file` names it and anchors relative paths.
    pub fn parse(text: &str, file: &Path, overrides: &Overrides) -> Result<TrainConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { file: file.display().to_string(), message: e.to_string() })?;
        let base = file.parent().unwrap_or(Path::new(".")).to_owned();
        let mut data = raw.data;
        for d in &mut data.datasets {
            d.location = shards::resolve_location(&d.location, &base);
        }
        let mut eval = raw.eval;
        if let Some(e) = &mut eval {
            for d in &mut e.datasets {
                d.location = shards::resolve_location(&d.location, &base);
            }
        }
        let mut cfg = TrainConfig {
            file: file.to_owned(),
            out: PathBuf::from(shards::resolve_location(&raw.out, &base)),
            data,
            model: raw.model,
            optim: raw.optim,
            loss: raw.loss,
            run: raw.run,
            eval,
        };
        if let Some(out) = &overrides.out {
            cfg.out = out.clone();
        }
        if let Some(steps) = overrides.steps {
            cfg.optim.steps = steps;
        }
        if let Some(device) = overrides.device {
            cfg.run.device = device;
        }
        if let Some(workers) = overrides.workers {
            cfg.data.workers = workers;
        }
        if let Some(threads) = overrides.threads {
            cfg.run.threads = threads;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.display().to_string(), field: field.to_owned(), reason: reason.into() }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.data.validate().map_err(|e| self.invalid("data", e.to_string()))?;
        self.student().validate().map_err(|reason| self.invalid("model", reason))?;
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(self.invalid("optim.lr", format!("must be a positive number, got {}", o.lr)));
        }
        if o.steps == 0 {
            return Err(self.invalid("optim.steps", "must be at least 1"));
        }
        if o.warmup_steps >= o.steps {
            return Err(self
                .invalid("optim.warmup_steps", format!("{} is not below optim.steps ({})", o.warmup_steps, o.steps)));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(self.invalid("optim.momentum", format!("must be in [0, 1), got {}", o.momentum)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(self.invalid("optim.weight_decay", format!("must be ≥ 0, got {}", o.weight_decay)));
        }
        for (field, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(self.invalid(field, format!("must be in [0, 1), got {v}")));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(self.invalid("optim.eps", "must be positive"));
        }
        if let Some(c) = o.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(self.invalid("optim.clip_grad_norm", format!("must be positive, got {c}")));
            }
        }
        let tasks = self.tasks();
        for (task, t) in &self.loss.teacher {
            let field = format!("loss.teacher.{}", serde_key(*task));
            if !tasks.contains(task) {
                return Err(self.invalid(&field, "no dataset trains this task"));
            }
            if t.batch_size == 0 || !(t.lr.is_finite() && t.lr > 0.0) {
                return Err(self.invalid(&field, "batch_size and lr must be positive"));
            }
        }
        for (task, w) in &self.loss.weights {
            let field = format!("loss.weights.{}", serde_key(*task));
            if !tasks.contains(task) {
                return Err(self.invalid(&field, "no dataset trains this task"));
            }
            if !(w.is_finite() && *w >= 0.0) {
                return Err(self.invalid(&field, format!("must be ≥ 0, got {w}")));
            }
        }
        if self.run.log_every == 0 || self.run.checkpoint_every == 0 {
            return Err(self.invalid("run", "log_every and checkpoint_every must be at least 1"));
        }
        if self.run.keep_checkpoints == 0 {
            return Err(self.invalid("run.keep_checkpoints", "must be at least 1"));
        }
        if self.run.dist_timeout_s == 0 {
            return Err(self.invalid("run.dist_timeout_s", "must be at least 1"));
        }
        if !(self.run.bucket_mb.is_finite() && self.run.bucket_mb > 0.0) {
            return Err(self.invalid("run.bucket_mb", format!("must be positive, got {}", self.run.bucket_mb)));
        }
        if let Some(e) = &self.eval {
            if e.datasets.is_empty() {
                return Err(self.invalid("eval.datasets", "list at least one dataset"));
            }
            if e.batch_size == 0 {
                return Err(self.invalid("eval.batch_size", "must be at least 1"));
            }
            if let Some(eval_data) = self.eval_data() {
                eval_data.validate().map_err(|err| self.invalid("eval", err.to_string()))?;
            }
        }
        Ok(())
    }

    /// Tasks trained: those any dataset lists, in [`Task::ALL`] order.
    pub fn tasks(&self) -> Vec<Task> {
        Task::ALL.into_iter().filter(|t| self.data.datasets.iter().any(|d| d.tasks.contains(t))).collect()
    }

    /// The student network for this run: the `[model]` architecture with one head per trained task.
    pub fn student(&self) -> StudentConfig {
        let tasks = self.tasks();
        let m = &self.model;
        let nc = self.data.num_classes;
        StudentConfig {
            resnet_depth: m.resnet_depth,
            width: m.width,
            fpn_channels: m.fpn_channels,
            det_tower_convs: m.det_tower_convs,
            pixel_head_convs: m.pixel_head_convs,
            num_classes: tasks.contains(&Task::Cls).then_some(nc.cls),
            num_det_classes: tasks.contains(&Task::Det).then_some(nc.det),
            num_seg_classes: tasks.contains(&Task::Seg).then_some(nc.seg),
            depth_head: tasks.contains(&Task::Depth),
            normals_head: false,
        }
    }

    /// Loss weight per trained task: the override if set, else `(b_s·lr_t)/(b_t·lr_s)` if the teacher's
    /// hyper-parameters are given, else 1.
    pub fn task_weights(&self) -> BTreeMap<Task, f64> {
        let (b_s, lr_s) = (self.data.batch_size as f64, self.optim.lr);
        self.tasks()
            .into_iter()
            .map(|task| {
                let w = match (self.loss.weights.get(&task), self.loss.teacher.get(&task)) {
                    (Some(&w), _) => w,
                    (None, Some(t)) => (b_s * t.lr) / (t.batch_size as f64 * lr_s),
                    (None, None) => 1.0,
                };
                (task, w)
            })
            .collect()
    }

    /// The loader config for evaluation: one deterministic pass, no augmentation.
    pub fn eval_data(&self) -> Option<DataConfig> {
        self.eval.as_ref().map(|e| {
            let mut d = self.data.clone();
            d.datasets = e.datasets.clone();
            d.image_size = e.image_size.unwrap_or(self.data.image_size);
            d.batch_size = e.batch_size;
            d.sampling = crate::data::Sampling::Uniform;
            d.passes = Some(1);
            d.augment = crate::data::Augmentation::none();
            d
        })
    }
}

/// A task's name as written in config files.
fn serde_key(task: Task) -> &'static str {
    match task {
        Task::Cls => "classification",
        Task::Det => "detection",
        Task::Seg => "segmentation",
        Task::Depth => "depth",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
out = "run"
[data]
image_size = 64
batch_size = 8
seed = 1
num_classes = { cls = 8, det = 5, seg = 7 }
[[data.datasets]]
name = "demo"
location = "shards"
tasks = ["classification", "detection", "segmentation", "depth"]
[model]
resnet_depth = 18
width = 0.25
[optim]
optimizer = "sgd"
lr = 0.1
steps = 100
warmup_steps = 10
[loss.teacher.detection]
batch_size = 256
lr = 0.32
[loss.weights]
depth = 2.5
"#;

    fn parse(text: &str) -> Result<TrainConfig, ConfigError> {
        TrainConfig::parse(text, Path::new("/cfg/train.toml"), &Overrides::default())
    }

    #[test]
    fn a_good_config_resolves_paths_and_derives_the_student_and_weights() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.out, PathBuf::from("/cfg/run"));
        assert_eq!(cfg.data.datasets[0].location, "/cfg/shards");
        let s = cfg.student();
        assert_eq!(
            (s.num_classes, s.num_det_classes, s.num_seg_classes, s.depth_head),
            (Some(8), Some(5), Some(7), true)
        );
        let w = cfg.task_weights();
        // detection: (8 · 0.32) / (256 · 0.1) = 0.1
        assert!((w[&Task::Det] - 0.1).abs() < 1e-12);
        assert_eq!(w[&Task::Depth], 2.5);
        assert_eq!(w[&Task::Cls], 1.0);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file_and_key() {
        let err = parse(&GOOD.replace("warmup_steps = 10", "warmup_steps = 10\nwarmpu = 3")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/cfg/train.toml") && msg.contains("warmpu"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("lr = 0.1", "lr = -1.0", "optim.lr"),
            ("warmup_steps = 10", "warmup_steps = 100", "optim.warmup_steps"),
            ("depth = 2.5", "depth = -1.0", "loss.weights.depth"),
            ("width = 0.25", "width = 0.0", "model"),
            ("batch_size = 8", "batch_size = 0", "data"),
        ];
        for (from, to, field) in cases {
            let err = parse(&GOOD.replacen(from, to, 1)).unwrap_err();
            assert!(matches!(&err, ConfigError::Invalid { field: f, .. } if f == field), "{from} -> {to}: {err}");
        }
    }

    #[test]
    fn overrides_apply_before_validation() {
        let o = Overrides { steps: Some(5), ..Default::default() };
        let err = TrainConfig::parse(GOOD, Path::new("/cfg/train.toml"), &o).unwrap_err();
        assert!(err.to_string().contains("optim.warmup_steps"), "{err}");
        let o = Overrides { steps: Some(500), out: Some("/elsewhere".into()), ..Default::default() };
        let cfg = TrainConfig::parse(GOOD, Path::new("/cfg/train.toml"), &o).unwrap();
        assert_eq!((cfg.optim.steps, cfg.out.as_path()), (500, Path::new("/elsewhere")));
    }
}
