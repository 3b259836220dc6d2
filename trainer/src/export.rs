//! `trainer export`: the student as files that PyTorch users and the labeler load, so the student can
//! label the pool again and a second-round student can learn from it (self-training's loop).
//!
//! From one checkpoint it writes, into one directory:
//! - `student.safetensors`: every student variable, the trunk under torchvision's ResNet names (see
//!   [`names`]), FPN and heads under `fpn.`, `det_head.`, `seg_head.`, `depth_head.`;
//! - `student.pt`: TorchScript of the student's exact forward, traced from the Rust code in evaluation mode
//!   (no second definition of the network; a method traced from Rust has one output, so the trace returns
//!   the outputs concatenated and the conversion script splits them back). Input `[1, 3, S, S]` RGB in [0, 1], the image letterboxed at
//!   the top left with ImageNet-mean padding as the trainer evaluates; the normalisation is inside. Outputs,
//!   in this order, for the heads the student has: `cls_logits` `[1, C]`, `det` `[1, 4 + K, A]` (FCOS decoded
//!   in the graph: cx, cy, w, h in input pixels, then per-class `sqrt(sigmoid(cls)·sigmoid(ctr))`, the
//!   layout of an Ultralytics raw head), `seg_logits` `[1, K, S, S]`, `depth` `[1, S, S]` (relative inverse
//!   depth), `normals` `[1, 3, S, S]`;
//! - `student.onnx`: the same graph through PyTorch's exporter (`tools/export/torchscript_to_onnx.py`),
//!   taking an image-sized `[1, 3, h, w]` input with max(h, w) = S and padding it inside, so the labeler's
//!   `keep_aspect` resize reproduces the trainer's letterbox exactly (see [`specs`]);
//! - `<name>-<task>.toml`: one labeler teacher spec per head with a labeler task.
//!
//! Tracing records every shape as a constant: the batch is 1 and the square side is the checkpoint's
//! evaluation size. The ONNX model's H and W are dynamic through the wrapper only.

mod names;
mod python;
mod specs;

use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;
use tch::{CModule, Device, Kind, Tensor};

use crate::checkpoint::{self, CheckpointError};
use crate::config::{Overrides, TrainConfig};
use crate::data::augment::{self, Geometry, MEAN, STD};
use crate::data::rng::Rng;
use crate::data::{Augmentation, Task};
use crate::error::TrainError;
use crate::model::{DetOutput, Student, StudentConfig};
use crate::train::Model;

pub use names::{exported_name, exported_tensors};
pub use specs::{class_names, ClassNames};

pub const WEIGHTS_FILE: &str = "student.safetensors";
pub const TORCHSCRIPT_FILE: &str = "student.pt";
pub const ONNX_FILE: &str = "student.onnx";
/// The ONNX model's input name.
pub const INPUT_NAME: &str = "images";

/// Why an export failed; each names the file or option concerned.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Options(String),
    #[error("converting to ONNX: {0}")]
    Onnx(String),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ExportError {
    ExportError::File { path: path.display().to_string(), reason: reason.to_string() }
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// A checkpoint directory, or a run directory (its newest checkpoint).
    pub checkpoint: PathBuf,
    pub out: PathBuf,
    /// The square input side S; default: `--config`'s, else the run's `config.json`
    /// (`eval.image_size`, else `data.image_size`).
    pub image_size: Option<u32>,
    /// The run's TOML config, to read the image size from.
    pub config: Option<PathBuf>,
    /// A labeler teacher spec file to take class names from (default `class0`, `class1`, …).
    pub classes: Option<PathBuf>,
    /// Teacher name prefix in the specs: `<name>-classification`, ….
    pub name: String,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The checkpoint exported, and its step.
    pub checkpoint: PathBuf,
    pub step: u64,
    pub image_size: u32,
    pub weights: PathBuf,
    pub torchscript: PathBuf,
    pub onnx: PathBuf,
    pub specs: Vec<PathBuf>,
    /// The model's outputs in order.
    pub outputs: Vec<&'static str>,
    /// The conversion script's own check (ONNX Runtime vs TorchScript), as it printed it.
    pub onnx_check: String,
}

/// One output of the exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedOutput {
    pub name: &'static str,
    /// The labeler task it serves (normals have none).
    pub task: Option<Task>,
    /// Per-pixel at the input size (cropped with the input in the ONNX model).
    pub dense: bool,
}

/// The outputs of the exported model for a student of `config`, in order.
pub fn outputs(config: &StudentConfig) -> Vec<ExportedOutput> {
    let o = |name, task, dense| ExportedOutput { name, task, dense };
    let mut v = Vec::new();
    if config.num_classes.is_some() {
        v.push(o("cls_logits", Some(Task::Cls), false));
    }
    if config.num_det_classes.is_some() {
        v.push(o("det", Some(Task::Det), false));
    }
    if config.num_seg_classes.is_some() {
        v.push(o("seg_logits", Some(Task::Seg), true));
    }
    if config.depth_head {
        v.push(o("depth", Some(Task::Depth), true));
    }
    if config.normals_head {
        v.push(o("normals", None, true));
    }
    v
}

/// The student of a checkpoint on the CPU, in a frozen variable store (tracing needs tensors that do
/// not require gradients), with the checkpoint's state.
pub fn load_student(path: &Path) -> Result<(Model, checkpoint::CheckpointState, PathBuf), ExportError> {
    let loaded = checkpoint::load(path)?;
    let mut model = Model::student_only(&loaded.state.student, Device::Cpu);
    model.load(loaded.model, false, &loaded.path)?;
    model.vs.freeze();
    Ok((model, loaded.state, loaded.path))
}

/// The exported forward: `images` `[B, 3, S, S]` RGB in [0, 1] (letterboxed, mean-padded) → the tensors
/// of [`outputs`], computed by the student's own forward in evaluation mode. This is what is traced.
///
/// Its constants (normalisation, detection locations) are made before tracing: the tracer records a
/// tensor made from host data inside the traced closure as the allocation without the data.
#[derive(Debug)]
pub struct ExportedForward<'a> {
    student: &'a Student,
    size: i64,
    mean: Tensor,
    std: Tensor,
    /// Per detection location: x and y of its centre and its stride, each `[1, A]`.
    locations: Option<[Tensor; 3]>,
}

impl<'a> ExportedForward<'a> {
    /// The forward at `size`² (one dry run finds the detection levels).
    pub fn new(student: &'a Student, size: u32) -> Self {
        let s = i64::from(size);
        let probe = Tensor::zeros([1, 3, s, s], (Kind::Float, Device::Cpu));
        let levels = tch::no_grad(|| student.forward_t(&probe, false)).det.map(|d| d.levels);
        let locations = levels.map(|levels| {
            let (mut xs, mut ys, mut strides) = (Vec::new(), Vec::new(), Vec::new());
            for level in &levels {
                for i in 0..level.h {
                    for j in 0..level.w {
                        xs.push((j as f32 + 0.5) * level.stride);
                        ys.push((i as f32 + 0.5) * level.stride);
                        strides.push(level.stride);
                    }
                }
            }
            [&xs, &ys, &strides].map(|v| Tensor::from_slice(v).view([1, -1]))
        });
        let channel = |v: &[f32; 3]| Tensor::from_slice(v).view([1, 3, 1, 1]);
        ExportedForward { student, size: s, mean: channel(&MEAN), std: channel(&STD), locations }
    }

    pub fn forward(&self, images: &Tensor) -> Vec<Tensor> {
        let out = self.student.forward_t(&((images - &self.mean) / &self.std), false);
        let mut v = Vec::new();
        v.extend(out.cls);
        if let (Some(det), Some(locations)) = (&out.det, &self.locations) {
            v.push(decoded_detections(det, locations, self.size));
        }
        v.extend(out.seg);
        v.extend(out.depth);
        v.extend(out.normals);
        v
    }
}

/// The FCOS outputs as `[B, 4 + K, A]`: boxes as `fcos::decode` makes them (location ∓ distance·stride,
/// clipped to the `size`² input) written as cx, cy, w, h, then the per-class scores it ranks them by.
fn decoded_detections(det: &DetOutput, [x, y, s]: &[Tensor; 3], size: i64) -> Tensor {
    let side = size as f64;
    let d = |k: i64| det.reg.select(2, k) * s;
    let x0 = (x - d(0)).clamp(0.0, side);
    let y0 = (y - d(1)).clamp(0.0, side);
    let x1 = (x + d(2)).clamp(0.0, side);
    let y1 = (y + d(3)).clamp(0.0, side);
    let boxes = Tensor::stack(&[(&x0 + &x1) * 0.5, (&y0 + &y1) * 0.5, &x1 - &x0, &y1 - &y0], 1);
    let scores = (det.cls.sigmoid() * det.ctr.sigmoid().unsqueeze(-1)).sqrt().permute([0, 2, 1]);
    Tensor::cat(&[boxes, scores], 1)
}

/// An image as the trainer evaluates it: letterboxed into `size`² (longer side to `size`, top left,
/// bilinear) and normalised, `[1, 3, size, size]`, with the scaled image's `[width, height]`.
pub fn eval_input(img: &RgbImage, size: u32) -> Result<(Tensor, [u32; 2]), String> {
    let g = Geometry::draw(img.width(), img.height(), size, &Augmentation::none(), &mut Rng::keyed(&[0]));
    let s = size as usize;
    let mut pixels = vec![0f32; 3 * s * s];
    augment::render_image(img, &g, &mut fast_image_resize::Resizer::new(), &mut pixels)?;
    Ok((Tensor::from_slice(&pixels).view([1, 3, size as i64, size as i64]), [g.sw, g.sh]))
}

/// The square input side: `--image-size`, else `--config`'s, else the `config.json` of the run that
/// holds the checkpoint.
fn image_size(opts: &ExportOptions, checkpoint_dir: &Path) -> Result<u32, ExportError> {
    if let Some(size) = opts.image_size {
        return Ok(size);
    }
    if let Some(file) = &opts.config {
        let cfg = TrainConfig::load(file, &Overrides::default()).map_err(TrainError::from)?;
        let size = cfg.eval.as_ref().and_then(|e| e.image_size).unwrap_or(cfg.data.image_size);
        return u32::try_from(size).map_err(|_| file_err(file, format!("image size {size} is too large")));
    }
    let mut tried = Vec::new();
    for dir in checkpoint_dir.ancestors().take(3) {
        let path = dir.join("config.json");
        if !path.is_file() {
            tried.push(path.display().to_string());
            continue;
        }
        let text = fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(&path, e))?;
        let size = json
            .pointer("/eval/image_size")
            .and_then(|v| v.as_u64())
            .or_else(|| json.pointer("/data/image_size").and_then(|v| v.as_u64()))
            .ok_or_else(|| file_err(&path, "no data.image_size (is this a trainer run's config.json?)"))?;
        return u32::try_from(size).map_err(|_| file_err(&path, format!("image size {size} is too large")));
    }
    Err(ExportError::Options(format!(
        "cannot tell the input size: pass --image-size or --config (no run config.json at {})",
        tried.join(", ")
    )))
}

/// Traces [`ExportedForward`] at `size`² and saves the TorchScript module to `path`; returns the shapes
/// of the outputs. A traced method saved from Rust must have a single output, so the module returns the
/// outputs flattened and concatenated, `[1, Σ sizes]`; the conversion script splits them back.
fn trace_packed(student: &Student, size: u32, path: &Path) -> Result<Vec<Vec<i64>>, ExportError> {
    let s = i64::from(size);
    // Any values do (nothing in the forward depends on them); zeros leave libtorch's generator alone.
    let example = Tensor::zeros([1, 3, s, s], (Kind::Float, Device::Cpu));
    let forward = ExportedForward::new(student, size);
    let shapes = tch::no_grad(|| forward.forward(&example)).iter().map(|t| t.size()).collect();
    let module = tch::no_grad(|| {
        CModule::create_by_tracing("MustStudent", "forward", &[example], &mut |inputs| {
            let flat: Vec<Tensor> = forward.forward(&inputs[0]).iter().map(|t| t.reshape([1, -1])).collect();
            vec![Tensor::cat(&flat, 1)]
        })
    })
    .map_err(|e| file_err(path, format!("tracing the student: {e}")))?;
    module.save(path).map_err(|e| file_err(path, e))?;
    Ok(shapes)
}

/// Traces the student into a packed module, then lets the conversion script write `student.pt` and
/// `student.onnx` from it (the packed trace is removed); returns the script's own ORT check.
fn trace_and_convert(
    student: &Student,
    state: &checkpoint::CheckpointState,
    outs: &[ExportedOutput],
    size: u32,
    dir: &Path,
) -> Result<String, ExportError> {
    let packed = dir.join(".student-packed.pt");
    let shapes = trace_packed(student, size, &packed)?;
    let list: Vec<String> = outs
        .iter()
        .zip(&shapes)
        .map(|(o, shape)| {
            let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
            format!("{}:{}:{}", o.name, if o.dense { "dense" } else { "static" }, dims.join("x"))
        })
        .collect();
    let mean: Vec<String> = MEAN.iter().map(|m| m.to_string()).collect();
    let metadata = serde_json::json!({
        "input": format!("{INPUT_NAME}: [1, 3, h, w] RGB in [0, 1], max(h, w) = {size}"),
        "image_size": size,
        "outputs": outs.iter().map(|o| o.name).collect::<Vec<_>>(),
        "checkpoint_step": state.step,
        "student": state.student,
    });
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for (flag, value) in [
        ("--packed", packed.as_os_str().to_owned()),
        ("--torchscript", dir.join(TORCHSCRIPT_FILE).into_os_string()),
        ("--onnx", dir.join(ONNX_FILE).into_os_string()),
        ("--size", size.to_string().into()),
        ("--mean", mean.join(",").into()),
        ("--outputs", list.join(",").into()),
        ("--input-name", INPUT_NAME.into()),
        ("--metadata", metadata.to_string().into()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    let converted = python::convert(&args).map_err(ExportError::Onnx);
    let _ = fs::remove_file(&packed);
    converted
}

/// Exports the checkpoint in `opts.checkpoint` (see the module docs for what is written).
pub fn run(opts: &ExportOptions) -> Result<ExportSummary, ExportError> {
    if opts.name.trim().is_empty() {
        return Err(ExportError::Options("--name must not be empty".into()));
    }
    let (model, state, ckpt) = load_student(&opts.checkpoint)?;
    let size = image_size(opts, &ckpt)?;
    if size < 32 {
        return Err(ExportError::Options(format!("image size {size} is below 32 (the stride of C5)")));
    }
    let config = &state.student;
    let classes = class_names(config, opts.classes.as_deref()).map_err(ExportError::Options)?;
    fs::create_dir_all(&opts.out).map_err(|e| file_err(&opts.out, e))?;

    let weights = opts.out.join(WEIGHTS_FILE);
    let tensors = exported_tensors(&model.named_tensors(), state.step).map_err(|e| file_err(&ckpt, e))?;
    Tensor::write_safetensors(&tensors, &weights).map_err(|e| file_err(&weights, e))?;

    let outs = outputs(config);
    let (torchscript, onnx) = (opts.out.join(TORCHSCRIPT_FILE), opts.out.join(ONNX_FILE));
    let onnx_check = trace_and_convert(&model.student, &state, &outs, size, &opts.out)?;

    let heads: Vec<specs::HeadSpec> =
        outs.iter().filter_map(|o| o.task.map(|task| specs::HeadSpec { task, output: o.name })).collect();
    let specs = specs::write(&opts.out, &opts.name, ONNX_FILE, size, &heads, &classes)
        .map_err(|(path, e)| file_err(&path, e))?;
    Ok(ExportSummary {
        checkpoint: ckpt,
        step: state.step,
        image_size: size,
        weights,
        torchscript,
        onnx,
        specs,
        outputs: outs.iter().map(|o| o.name).collect(),
        onnx_check,
    })
}
