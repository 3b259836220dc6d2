//! The multi-task student of MuST (§3.2, Fig. 3): a ResNet-FPN trunk shared by every task, with one small
//! head per task.
//!
//! - classification: a linear layer on average-pooled C5 (the ResNet design);
//! - detection: an FCOS head on P3–P7 (see [`fcos`] for why FCOS);
//! - pixel tasks (segmentation, depth, and surface normals, which only fine-tuning uses): P3–P7 are
//!   bilinearly resized to P2 and summed with P2 — no parameters in the fusion, as in the paper — then each
//!   task has its own head of three 3×3 conv + GroupNorm + ReLU layers and a 1×1 prediction; predictions
//!   are resized to the input size.
//!
//! Heads exist only for the tasks the config enables, so a checkpoint's variables say which tasks it has.
//! Depth and width are configurable; `StudentConfig::tiny` (ResNet-18 at width 0.25, 64 FPN channels) is
//! the CPU test model.

pub mod fcos;
mod fpn;
mod resnet;

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

pub use fcos::{DetOutput, Detection, LevelShape};

pub use crate::data::Task;

/// Supported ResNet depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum ResNetDepth {
    R18,
    R34,
    R50,
    R101,
    R152,
}

impl ResNetDepth {
    /// (bottleneck blocks?, blocks per stage).
    fn layout(self) -> (bool, [usize; 4]) {
        match self {
            ResNetDepth::R18 => (false, [2, 2, 2, 2]),
            ResNetDepth::R34 => (false, [3, 4, 6, 3]),
            ResNetDepth::R50 => (true, [3, 4, 6, 3]),
            ResNetDepth::R101 => (true, [3, 4, 23, 3]),
            ResNetDepth::R152 => (true, [3, 8, 36, 3]),
        }
    }
}

impl TryFrom<u32> for ResNetDepth {
    type Error = String;
    fn try_from(d: u32) -> Result<Self, String> {
        Ok(match d {
            18 => ResNetDepth::R18,
            34 => ResNetDepth::R34,
            50 => ResNetDepth::R50,
            101 => ResNetDepth::R101,
            152 => ResNetDepth::R152,
            other => return Err(format!("unsupported ResNet depth {other} (expected 18, 34, 50, 101 or 152)")),
        })
    }
}

impl From<ResNetDepth> for u32 {
    fn from(d: ResNetDepth) -> u32 {
        match d {
            ResNetDepth::R18 => 18,
            ResNetDepth::R34 => 34,
            ResNetDepth::R50 => 50,
            ResNetDepth::R101 => 101,
            ResNetDepth::R152 => 152,
        }
    }
}

/// A dense per-pixel task with its own head. Adding a task means a variant here, a loss in `loss`, and a
/// metric in `metrics`; the trunk and fusion do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelTask {
    Segmentation {
        classes: usize,
    },
    Depth,
    /// Unit surface normals in camera coordinates; never a pre-training task (fine-tuning only).
    Normals,
}

impl PixelTask {
    fn out_channels(self) -> i64 {
        match self {
            PixelTask::Segmentation { classes } => classes as i64,
            PixelTask::Depth => 1,
            PixelTask::Normals => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PixelTask::Segmentation { .. } => "seg",
            PixelTask::Depth => "depth",
            PixelTask::Normals => "normals",
        }
    }
}

/// Architecture of the student. `None`/`false` leaves a task's head out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    pub resnet_depth: ResNetDepth,
    /// Multiplies every channel count of the trunk, FPN and heads.
    pub width: f64,
    /// FPN channels before the width multiplier (256 in FPN and RetinaNet; the paper does not state its own).
    pub fpn_channels: usize,
    /// Conv layers in each FCOS tower (4 in FCOS).
    pub det_tower_convs: usize,
    /// Conv layers in each pixel head before the linear prediction (3 in the paper).
    pub pixel_head_convs: usize,
    pub num_classes: Option<usize>,
    pub num_det_classes: Option<usize>,
    pub num_seg_classes: Option<usize>,
    pub depth_head: bool,
    /// A surface-normal head (fine-tuning only; absent from pre-training checkpoints).
    #[serde(default)]
    pub normals_head: bool,
}

impl StudentConfig {
    /// A full-width ResNet-50 student with 256 FPN channels (the paper's teachers and student use ResNet-152
    /// with the same FPN; `resnet_depth = 152` in a config gives that).
    pub fn resnet50(num_classes: usize, num_det_classes: usize, num_seg_classes: usize) -> StudentConfig {
        StudentConfig {
            resnet_depth: ResNetDepth::R50,
            width: 1.0,
            fpn_channels: 256,
            det_tower_convs: 4,
            pixel_head_convs: 3,
            num_classes: Some(num_classes),
            num_det_classes: Some(num_det_classes),
            num_seg_classes: Some(num_seg_classes),
            depth_head: true,
            normals_head: false,
        }
    }

    /// ResNet-18 at width 0.25 (64 FPN channels, 2-conv FCOS towers): the CPU test model.
    pub fn tiny(num_classes: usize, num_det_classes: usize, num_seg_classes: usize) -> StudentConfig {
        StudentConfig {
            resnet_depth: ResNetDepth::R18,
            width: 0.25,
            det_tower_convs: 2,
            ..StudentConfig::resnet50(num_classes, num_det_classes, num_seg_classes)
        }
    }

    /// Pixel tasks in head order.
    pub fn pixel_tasks(&self) -> Vec<PixelTask> {
        let mut v = Vec::new();
        if let Some(classes) = self.num_seg_classes {
            v.push(PixelTask::Segmentation { classes });
        }
        if self.depth_head {
            v.push(PixelTask::Depth);
        }
        if self.normals_head {
            v.push(PixelTask::Normals);
        }
        v
    }

    /// Tasks that have a head, in [`Task::ALL`] order.
    pub fn tasks(&self) -> Vec<Task> {
        let has = |t: Task| match t {
            Task::Cls => self.num_classes.is_some(),
            Task::Det => self.num_det_classes.is_some(),
            Task::Seg => self.num_seg_classes.is_some(),
            Task::Depth => self.depth_head,
        };
        Task::ALL.into_iter().filter(|&t| has(t)).collect()
    }

    /// Checks the values a config file could get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.width > 0.0 && self.width <= 4.0) {
            return Err(format!("model.width must be in (0, 4], got {}", self.width));
        }
        if self.fpn_channels == 0 {
            return Err("model.fpn_channels must be positive".into());
        }
        for (name, v) in [
            ("num_classes", self.num_classes),
            ("num_det_classes", self.num_det_classes),
            ("num_seg_classes", self.num_seg_classes),
        ] {
            if v == Some(0) {
                return Err(format!("model.{name} must be positive when set (omit it to drop the head)"));
            }
        }
        if self.num_classes.is_none() && self.num_det_classes.is_none() && self.pixel_tasks().is_empty() {
            return Err("the model has no task head: set at least one of num_classes, num_det_classes, num_seg_classes, depth_head".into());
        }
        Ok(())
    }
}

/// Channel count `c` scaled by the width multiplier, rounded to a multiple of 8 (at least 8).
pub(crate) fn scaled_channels(c: i64, width: f64) -> i64 {
    (((c as f64 * width) / 8.0).round() as i64 * 8).max(8)
}

#[derive(Debug)]
struct PixelHead {
    layers: Vec<(nn::Conv2D, nn::GroupNorm)>,
    pred: nn::Conv2D,
}

impl PixelHead {
    fn new(p: nn::Path, channels: i64, convs: usize, out: i64) -> PixelHead {
        let layers = (0..convs)
            .map(|i| {
                let conv = nn::conv2d(
                    &p / format!("conv{i}"),
                    channels,
                    channels,
                    3,
                    nn::ConvConfig { padding: 1, bias: false, ..Default::default() },
                );
                (conv, fcos::group_norm(&p / format!("gn{i}"), channels))
            })
            .collect();
        let pred = nn::conv2d(&p / "pred", channels, out, 1, Default::default());
        PixelHead { layers, pred }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut h = xs.shallow_clone();
        for (conv, gn) in &self.layers {
            h = h.apply(conv).apply(gn).relu();
        }
        h.apply(&self.pred)
    }
}

/// Everything the student predicts for a batch.
#[derive(Debug)]
pub struct StudentOutput {
    /// `[B, C]` classification logits.
    pub cls: Option<Tensor>,
    pub det: Option<DetOutput>,
    /// `[B, K, S, S]` segmentation logits at input resolution.
    pub seg: Option<Tensor>,
    /// `[B, S, S]` predicted inverse depth (up to scale and shift) at input resolution.
    pub depth: Option<Tensor>,
    /// `[B, 3, S, S]` unit surface normals at input resolution.
    pub normals: Option<Tensor>,
}

/// The multi-task student network. Its variables live in the `nn::Path` it was built under.
#[derive(Debug)]
pub struct Student {
    config: StudentConfig,
    backbone: resnet::ResNet,
    fpn: fpn::Fpn,
    cls_head: Option<nn::Linear>,
    det_head: Option<fcos::FcosHead>,
    pixel_heads: Vec<(PixelTask, PixelHead)>,
}

impl Student {
    /// Builds the network under `p`. The config must have passed [`StudentConfig::validate`].
    pub fn new(p: &nn::Path, config: &StudentConfig) -> Student {
        let width = config.width;
        let backbone = resnet::ResNet::new(p / "backbone", config.resnet_depth, width);
        let c = backbone.out_channels();
        let f = scaled_channels(config.fpn_channels as i64, width);
        let fpn = fpn::Fpn::new(p / "fpn", c, f);
        let cls_head = config.num_classes.map(|k| nn::linear(p / "cls_head", c[3], k as i64, Default::default()));
        let det_head =
            config.num_det_classes.map(|k| fcos::FcosHead::new(p / "det_head", f, k as i64, config.det_tower_convs));
        let pixel_heads = config
            .pixel_tasks()
            .into_iter()
            .map(|t| {
                let head =
                    PixelHead::new(p / format!("{}_head", t.name()), f, config.pixel_head_convs, t.out_channels());
                (t, head)
            })
            .collect();
        Student { config: config.clone(), backbone, fpn, cls_head, det_head, pixel_heads }
    }

    pub fn config(&self) -> &StudentConfig {
        &self.config
    }

    /// `images`: `[B, 3, S, S]` normalised RGB. `train` selects batch statistics in the trunk's BatchNorm.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> StudentOutput {
        let size = images.size();
        let (h, w) = (size[2], size[3]);
        let c = self.backbone.forward_t(images, train);
        let cls = self.cls_head.as_ref().map(|head| c[3].mean_dim([2i64, 3].as_slice(), false, None).apply(head));
        let needs_fpn = self.det_head.is_some() || !self.pixel_heads.is_empty();
        let p = if needs_fpn { self.fpn.forward(&c) } else { Vec::new() };
        let det = self.det_head.as_ref().map(|head| head.forward(&p[1..]));
        let mut seg = None;
        let mut depth = None;
        let mut normals = None;
        if !self.pixel_heads.is_empty() {
            let p2 = &p[0];
            let s2 = p2.size();
            let fused = p[1..].iter().fold(p2.shallow_clone(), |acc, level| {
                acc + level.upsample_bilinear2d([s2[2], s2[3]], false, None, None)
            });
            for (task, head) in &self.pixel_heads {
                let out = head.forward(&fused).upsample_bilinear2d([h, w], false, None, None);
                match task {
                    PixelTask::Segmentation { .. } => seg = Some(out),
                    PixelTask::Depth => depth = Some(out.squeeze_dim(1)),
                    PixelTask::Normals => normals = Some(unit_vectors(&out)),
                }
            }
        }
        StudentOutput { cls, det, seg, depth, normals }
    }
}

/// `[B, 3, H, W]` scaled to unit length along dim 1 (a zero vector stays near zero instead of dividing by 0).
fn unit_vectors(v: &Tensor) -> Tensor {
    let norm = v.square().sum_dim_intlist([1i64].as_slice(), true, v.kind()).sqrt().clamp_min(1e-6);
    v / norm
}

/// Number of scalar parameters in a var store (trainable and buffers alike are counted separately).
pub fn count_parameters(vs: &nn::VarStore) -> (i64, i64) {
    let mut trainable = 0;
    let mut buffers = 0;
    for t in vs.variables().values() {
        let n: i64 = t.size().iter().product();
        if t.requires_grad() {
            trainable += n;
        } else {
            buffers += n;
        }
    }
    (trainable, buffers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn tiny_student_output_shapes() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = StudentConfig::tiny(10, 3, 5);
        cfg.validate().unwrap();
        let model = Student::new(&vs.root(), &cfg);
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let out = model.forward_t(&x, true);
        assert_eq!(out.cls.unwrap().size(), vec![2, 10]);
        let det = out.det.unwrap();
        // 64² input: P3 8×8, P4 4×4, P5 2×2, P6 1×1, P7 1×1.
        let n = 64 + 16 + 4 + 1 + 1;
        assert_eq!(det.cls.size(), vec![2, n, 3]);
        assert_eq!(det.reg.size(), vec![2, n, 4]);
        assert_eq!(det.ctr.size(), vec![2, n]);
        assert_eq!(fcos::num_locations(&det.levels), n as usize);
        assert_eq!(out.seg.unwrap().size(), vec![2, 5, 64, 64]);
        assert_eq!(out.depth.unwrap().size(), vec![2, 64, 64]);
    }

    #[test]
    fn heads_follow_the_config() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = StudentConfig { num_det_classes: None, depth_head: false, ..StudentConfig::tiny(4, 1, 2) };
        let model = Student::new(&vs.root(), &cfg);
        let out = model.forward_t(&Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)), false);
        assert!(out.cls.is_some() && out.det.is_none() && out.seg.is_some() && out.depth.is_none());
        assert!(vs.variables().keys().all(|k| !k.starts_with("det_head") && !k.starts_with("depth_head")));
    }

    #[test]
    fn widths_scale_channels() {
        assert_eq!(scaled_channels(64, 0.25), 16);
        assert_eq!(scaled_channels(256, 0.25), 64);
        assert_eq!(scaled_channels(64, 0.05), 8);
        assert_eq!(scaled_channels(64, 1.0), 64);
        assert!(ResNetDepth::try_from(20).is_err());
    }
}
