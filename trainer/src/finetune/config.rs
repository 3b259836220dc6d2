//! A fine-tuning run's configuration: one TOML file, validated once, here.
//!
//! ```toml
//! out = "../out/finetune/normals"          # run directory: metrics.jsonl, eval.json, points/, curves.png
//!
//! [task]
//! kind = "normals"                        # classification | segmentation | depth | normals
//! location = "../out/downstream/normals"  # holds train/, val/, test/ (see `finetune::data`)
//! num_classes = 7                         # classification and segmentation only
//!
//! [init]
//! checkpoint = "../out/train"             # a run directory (its newest checkpoint) or a checkpoint;
//!                                         # omit it for the random-init baseline (then [model] is used)
//! [data]
//! image_size = 96
//! batch_size = 16
//!
//! [grid]                                  # every lr × steps pair is one fine-tuning from the same start
//! lr = [0.01, 0.03, 0.1]
//! steps = [150, 300]
//! linear_probe = false                    # true: freeze ResNet + FPN, train the new head only
//! ```
//! Relative paths are resolved against the config file's directory. Unknown keys and bad values are
//! errors naming the file and the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, DeviceChoice, ModelSection, OptimSection, OptimizerKind};
use crate::data::Augmentation;

/// The downstream task a fine-tuning run learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownstreamKind {
    Classification,
    Segmentation,
    Depth,
    Normals,
}

impl DownstreamKind {
    /// The metric the grid is chosen on (higher is better for each).
    pub fn selection_metric(self) -> &'static str {
        match self {
            DownstreamKind::Classification => crate::metrics::CLS_TOP1,
            DownstreamKind::Segmentation => crate::metrics::SEG_MIOU,
            DownstreamKind::Depth => crate::metrics::DEPTH_DELTA1,
            DownstreamKind::Normals => crate::metrics::NORMALS_UNDER_11_25,
        }
    }
}

/// What to learn, and where its labelled splits are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    pub kind: DownstreamKind,
    /// A local directory holding one directory per split.
    pub location: String,
    /// Classes of a classification or segmentation task.
    #[serde(default)]
    pub num_classes: Option<usize>,
    #[serde(default = "default_train")]
    pub train_split: String,
    #[serde(default = "default_val")]
    pub val_split: String,
    #[serde(default = "default_test")]
    pub test_split: String,
}

fn default_train() -> String {
    "train".into()
}
fn default_val() -> String {
    "val".into()
}
fn default_test() -> String {
    "test".into()
}

/// Where the trunk (ResNet + FPN) starts from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSection {
    /// A pre-training run directory or checkpoint directory; `None`: random initialisation.
    #[serde(default)]
    pub checkpoint: Option<String>,
}

/// Images and batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneData {
    /// Side of the square the images are letterboxed (and scale-jittered) into.
    pub image_size: usize,
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// Scale jitter [0.5, 2.0] and horizontal flips, as in the paper's fine-tuning (supplementary §2.3).
    #[serde(default)]
    pub augment: Augmentation,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
}

fn default_eval_batch() -> usize {
    32
}

/// The learning-rate × steps grid (supplementary §2.3: "an extensive grid search of the combinations of
/// learning rate and training steps").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSection {
    pub lr: Vec<f64>,
    pub steps: Vec<u64>,
    /// Freeze ResNet + FPN (batch-norm statistics too) and train only the new head.
    #[serde(default)]
    pub linear_probe: bool,
}

/// The update rule shared by every grid point (the point gives `lr` and `steps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneOptim {
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerKind,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// 1e-4, as in the paper's fine-tuning.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
}

fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Sgd
}
fn default_momentum() -> f64 {
    0.9
}
fn default_weight_decay() -> f64 {
    1e-4
}

impl Default for FinetuneOptim {
    fn default() -> Self {
        FinetuneOptim {
            optimizer: default_optimizer(),
            momentum: default_momentum(),
            nesterov: false,
            weight_decay: default_weight_decay(),
            warmup_steps: 0,
            clip_grad_norm: None,
        }
    }
}

/// Run bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneRun {
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub threads: usize,
    /// Seeds the new head (and the whole network for random init).
    #[serde(default)]
    pub init_seed: u64,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
}

fn default_log_every() -> u64 {
    25
}

impl Default for FinetuneRun {
    fn default() -> Self {
        FinetuneRun { device: DeviceChoice::Auto, threads: 0, init_seed: 0, log_every: default_log_every() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    out: String,
    task: TaskSection,
    #[serde(default)]
    init: InitSection,
    #[serde(default)]
    model: Option<ModelSection>,
    data: FinetuneData,
    grid: GridSection,
    #[serde(default)]
    optim: FinetuneOptim,
    #[serde(default)]
    run: FinetuneRun,
}

/// A loaded, validated fine-tuning configuration. Paths are resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinetuneConfig {
    pub file: PathBuf,
    pub out: PathBuf,
    pub task: TaskSection,
    pub init: InitSection,
    /// The architecture for random initialisation (ignored when a checkpoint gives it).
    pub model: Option<ModelSection>,
    pub data: FinetuneData,
    pub grid: GridSection,
    pub optim: FinetuneOptim,
    pub run: FinetuneRun,
}

/// Command-line overrides, applied before validation.
#[derive(Debug, Clone, Default)]
pub struct FinetuneOverrides {
    pub out: Option<PathBuf>,
    /// Replace `[init] checkpoint`.
    pub checkpoint: Option<String>,
    pub device: Option<DeviceChoice>,
    pub threads: Option<usize>,
    pub linear_probe: Option<bool>,
}

impl FinetuneConfig {
    /// Read, resolve and validate `file`.
    pub fn load(file: &Path, overrides: &FinetuneOverrides) -> Result<FinetuneConfig, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { file: file.display().to_string(), source })?;
        Self::parse(&text, file, overrides)
    }

    /// Like [`FinetuneConfig::load`] for text already read; `file` names it and anchors relative paths.
    pub fn parse(text: &str, file: &Path, overrides: &FinetuneOverrides) -> Result<FinetuneConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { file: file.display().to_string(), message: e.to_string() })?;
        let base = file.parent().unwrap_or(Path::new(".")).to_owned();
        let mut task = raw.task;
        task.location = shards::resolve_location(&task.location, &base);
        let mut init = raw.init;
        if let Some(c) = overrides.checkpoint.clone() {
            init.checkpoint = Some(c);
        }
        init.checkpoint = init.checkpoint.map(|c| shards::resolve_location(&c, &base));
        let mut cfg = FinetuneConfig {
            file: file.to_owned(),
            out: PathBuf::from(shards::resolve_location(&raw.out, &base)),
            task,
            init,
            model: raw.model,
            data: raw.data,
            grid: raw.grid,
            optim: raw.optim,
            run: raw.run,
        };
        if let Some(out) = &overrides.out {
            cfg.out = out.clone();
        }
        if let Some(device) = overrides.device {
            cfg.run.device = device;
        }
        if let Some(threads) = overrides.threads {
            cfg.run.threads = threads;
        }
        if let Some(probe) = overrides.linear_probe {
            cfg.grid.linear_probe = probe;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.display().to_string(), field: field.to_owned(), reason: reason.into() }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let needs_classes = matches!(self.task.kind, DownstreamKind::Classification | DownstreamKind::Segmentation);
        match (needs_classes, self.task.num_classes) {
            (true, None) => return Err(self.invalid("task.num_classes", "required for this kind of task")),
            (true, Some(0)) => return Err(self.invalid("task.num_classes", "must be at least 1")),
            (true, Some(k)) if self.task.kind == DownstreamKind::Segmentation && k > 255 => {
                return Err(self.invalid("task.num_classes", "at most 255 (255 is the ignore label)"))
            }
            (false, Some(_)) => {
                return Err(self.invalid("task.num_classes", "only classification and segmentation have classes"))
            }
            _ => {}
        }
        if self.init.checkpoint.is_none() && self.model.is_none() {
            return Err(
                self.invalid("model", "random initialisation ([init] without checkpoint) needs a [model] section")
            );
        }
        if self.data.image_size < 32 || self.data.batch_size == 0 || self.data.eval_batch_size == 0 {
            return Err(self.invalid("data", "image_size must be at least 32 and batch sizes at least 1"));
        }
        let a = &self.data.augment;
        if !(a.scale_min > 0.0 && a.scale_min <= a.scale_max) {
            return Err(self.invalid("data.augment", "need 0 < scale_min ≤ scale_max"));
        }
        if self.grid.lr.is_empty() || self.grid.steps.is_empty() {
            return Err(self.invalid("grid", "list at least one lr and one steps value"));
        }
        if let Some(lr) = self.grid.lr.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
            return Err(self.invalid("grid.lr", format!("every value must be positive, got {lr}")));
        }
        if let Some(s) = self.grid.steps.iter().find(|s| **s <= self.optim.warmup_steps) {
            return Err(self.invalid("grid.steps", format!("{s} is not above optim.warmup_steps")));
        }
        let o = &self.optim;
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(self.invalid("optim.momentum", format!("must be in [0, 1), got {}", o.momentum)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(self.invalid("optim.weight_decay", format!("must be ≥ 0, got {}", o.weight_decay)));
        }
        if o.clip_grad_norm.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(self.invalid("optim.clip_grad_norm", "must be positive"));
        }
        if self.run.log_every == 0 {
            return Err(self.invalid("run.log_every", "must be at least 1"));
        }
        Ok(())
    }

    /// The full optimiser settings of one grid point.
    pub fn optim_for(&self, lr: f64, steps: u64) -> OptimSection {
        let o = &self.optim;
        OptimSection {
            optimizer: o.optimizer,
            lr,
            steps,
            warmup_steps: o.warmup_steps,
            momentum: o.momentum,
            nesterov: o.nesterov,
            weight_decay: o.weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_grad_norm: o.clip_grad_norm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
out = "run"
[task]
kind = "segmentation"
location = "down/seg"
num_classes = 7
[init]
checkpoint = "../pre"
[data]
image_size = 64
batch_size = 8
[grid]
lr = [0.01, 0.1]
steps = [20, 40]
"#;

    fn parse(text: &str) -> Result<FinetuneConfig, ConfigError> {
        FinetuneConfig::parse(text, Path::new("/cfg/ft.toml"), &FinetuneOverrides::default())
    }

    #[test]
    fn paths_resolve_against_the_file_and_defaults_follow_the_paper() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.out, PathBuf::from("/cfg/run"));
        assert_eq!(c.task.location, "/cfg/down/seg");
        assert_eq!(c.init.checkpoint.as_deref(), Some("/cfg/../pre"));
        assert_eq!(c.optim.weight_decay, 1e-4);
        assert_eq!(c.optim.optimizer, OptimizerKind::Sgd);
        assert_eq!(c.optim_for(0.1, 40).steps, 40);
    }

    #[test]
    fn errors_name_the_field() {
        let no_classes = GOOD.replace("num_classes = 7\n", "");
        let e = parse(&no_classes).unwrap_err().to_string();
        assert!(e.contains("/cfg/ft.toml") && e.contains("task.num_classes"), "{e}");
        let random_without_model = GOOD.replace("checkpoint = \"../pre\"\n", "");
        let e = parse(&random_without_model).unwrap_err().to_string();
        assert!(e.contains("`model`"), "{e}");
        let bad_lr = GOOD.replace("lr = [0.01, 0.1]", "lr = [0.01, -1.0]");
        let e = parse(&bad_lr).unwrap_err().to_string();
        assert!(e.contains("grid.lr"), "{e}");
        let unknown = GOOD.replace("[grid]", "[grid]\nlearning_rate = 1");
        let e = parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("learning_rate"), "{e}");
    }
}
