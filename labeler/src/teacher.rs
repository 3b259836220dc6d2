//! A loaded teacher: its ONNX Runtime session, checked against its spec, and batched inference that
//! turns images into pseudo labels.
//!
//! `Teacher::load` compares the spec with the model's declared inputs and outputs (names, dtypes, ranks,
//! static sizes, class counts) so a mismatch is reported — naming the teacher, the spec file and the
//! field — before any image is read. Sessions take `&mut self` to run, so each inference worker owns
//! its own `Teacher`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fast_image_resize::Resizer;
use image::RgbImage;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use sha2::{Digest, Sha256};

use crate::postgraph::{Held, PostGraph, PostGraphError};
use crate::postprocess;
use crate::preprocess::{self, input_size_for, Resized};
use crate::runtime::{self, Postprocess, Provider, RuntimeError, SessionSettings};
use crate::spec::{Batch, DetectionFormat, Layout, OutputRef, Resize, ScoreKind, Task, TeacherSpec};
use schemas::DetBox;

/// A pseudo label for one image from one teacher.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Classification(Vec<f32>),
    Detection(Vec<DetBox>),
    Segmentation { height: usize, width: usize, mask: Vec<u8> },
    Depth { height: usize, width: usize, values: Vec<f32> },
}

/// A per-image failure inside a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFailure {
    pub stage: &'static str,
    pub reason: &'static str,
    pub detail: String,
}

/// Errors loading a teacher or running a whole batch.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("teacher {teacher:?} in {file}: field `{field}`: {reason}")]
    Mismatch { teacher: String, file: String, field: String, reason: String },
    #[error("teacher {teacher:?}: reading model {path}")]
    Model {
        teacher: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("teacher {teacher:?}: inference failed: {message}")]
    Inference { teacher: String, message: String },
    #[error(transparent)]
    PostGraph(#[from] PostGraphError),
}

/// A teacher ready to run.
pub struct Teacher {
    spec: TeacherSpec,
    session: Session,
    input_name: String,
    outputs: BTreeMap<String, String>,
    model_sha256: String,
    resizer: Resizer,
    /// Time spent inside `Session::run` since load, and how many runs.
    session_time: Duration,
    session_runs: u64,
    /// Benchmarks only: per (images, height, width), the outputs of the first run, reused for later batches.
    replay: Option<HashMap<(usize, usize, usize), Vec<ScaleOutput>>>,
    /// Post-processing on the teacher's provider (`None`: on the host, in `Teacher::finish`).
    device: Option<DevicePost>,
}

/// A teacher's post-processing graphs, built on first use per form, and where its outputs are kept.
struct DevicePost {
    settings: SessionSettings,
    /// Memory the teacher's output is bound to: the provider's device, so it stays there for the graph.
    memory: MemoryInfo<'static>,
    /// Graphs by form: classification, or segmentation/depth with and without resampling.
    graphs: HashMap<GraphForm, PostGraph>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GraphForm {
    Classification,
    Segmentation { resize: bool },
    Depth { rank: usize },
}

fn dims(vt: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match vt {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
        _ => None,
    }
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

impl Teacher {
    /// Load `spec`'s model (declared in `spec_file`) and check it against the spec.
    pub fn load(spec: &TeacherSpec, spec_file: &Path, settings: &SessionSettings) -> Result<Self, TeacherError> {
        let model_sha256 = file_sha256(&spec.model).map_err(|source| TeacherError::Model {
            teacher: spec.name.clone(),
            path: spec.model.clone(),
            source,
        })?;
        let session = runtime::session(&spec.name, &spec.model, settings)?;
        let file = spec_file.display().to_string();
        let (input_name, outputs) = check(spec, &file, &session)?;
        let device = device_post(spec, settings).map_err(|e| TeacherError::Inference {
            teacher: spec.name.clone(),
            message: format!("device memory for post-processing: {e}"),
        })?;
        Ok(Self {
            spec: spec.clone(),
            session,
            input_name,
            outputs,
            model_sha256,
            resizer: Resizer::new(),
            session_time: Duration::ZERO,
            session_runs: 0,
            replay: None,
            device,
        })
    }

    /// Whether this teacher's post-processing runs in graphs on its provider (`[run] postprocess`, and
    /// the teacher's task and resize allow it).
    pub fn postprocess_on_device(&self) -> bool {
        self.device.is_some()
    }

    /// The validated spec.
    pub fn spec(&self) -> &TeacherSpec {
        &self.spec
    }

    /// sha256 of the model file.
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    /// Seconds spent inside ONNX Runtime's `Session::run` since this teacher was loaded: the inference
    /// itself, without pre- and post-processing.
    pub fn session_seconds(&self) -> f64 {
        self.session_time.as_secs_f64()
    }

    /// How many times the model has run since this teacher was loaded.
    pub fn session_runs(&self) -> u64 {
        self.session_runs
    }

    /// For benchmarks of the host-side work: from now on the model runs once per distinct input shape and
    /// later batches of that shape get a copy of that run's outputs, so pre-processing, output extraction
    /// and post-processing all still happen but inference almost never does. The labels are wrong; never
    /// use this for real labels.
    pub fn replay_outputs(&mut self) {
        self.replay.get_or_insert_with(HashMap::new);
    }

    /// A description of the model's inputs and outputs, for `labeler probe`.
    pub fn describe(&self) -> String {
        let io = |outlets: &[ort::value::Outlet]| {
            outlets
                .iter()
                .map(|o| match dims(o.dtype()) {
                    Some((ty, shape)) => format!("{}: {ty:?}{shape:?}", o.name()),
                    None => format!("{}: {:?}", o.name(), o.dtype()),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("inputs [{}] outputs [{}]", io(self.session.inputs()), io(self.session.outputs()))
    }

    fn fail(&self, message: impl std::fmt::Display) -> TeacherError {
        TeacherError::Inference { teacher: self.spec.name.clone(), message: message.to_string() }
    }

    /// Label `images`: [`TeacherInput::prepare`], [`Teacher::infer`] and [`Teacher::finish`] in one call. The
    /// result has one entry per image, in order. An error is returned only when the whole batch could not
    /// run (the caller then records every image of it as an inference error).
    pub fn predict(&mut self, images: &[&RgbImage]) -> Result<Vec<Result<Prediction, ImageFailure>>, TeacherError> {
        let inputs: Vec<TeacherInput> =
            images.iter().map(|img| TeacherInput::prepare(&self.spec, img, &mut self.resizer)).collect();
        let items: Vec<(&RgbImage, &TeacherInput)> = images.iter().copied().zip(&inputs).collect();
        let raw = self.infer(&items)?;
        Ok(raw.into_iter().map(|r| r.and_then(|r| Teacher::finish(&self.spec, r))).collect())
    }

    /// Run the model over prepared images (each with the decoded image it was prepared from), batching
    /// images that share an input size. Returns each image's raw outputs, for [`Teacher::finish`]; an error
    /// only when a whole batch could not run.
    pub fn infer(
        &mut self,
        items: &[(&RgbImage, &TeacherInput)],
    ) -> Result<Vec<Result<RawOutput, ImageFailure>>, TeacherError> {
        let n_scales = self.spec.scales.len();
        let mut outs: Vec<Result<Vec<(ScaleOutput, preprocess::Transform)>, ImageFailure>> =
            Vec::with_capacity(items.len());
        for (_, input) in items {
            match input.scales.iter().find_map(|s| s.as_ref().err()) {
                Some(f) => outs.push(Err(f.clone())),
                None => outs.push(Ok(Vec::with_capacity(n_scales))),
            }
        }
        // Units: images that share their first scale's input size, a model batch at a time. A unit runs at
        // every scale before the next unit starts, so only one unit's outputs are held for the device
        // post-processing. Within a unit, each scale's images are batched by input size (all of them,
        // unless the resize keeps aspect).
        let batch = self.spec.batch.size();
        let size_at = |i: usize, scale: usize| -> Option<(u32, u32)> {
            match (&outs[i], &items[i].1.scales[scale]) {
                (Ok(_), Ok(r)) => Some((r.transform.height, r.transform.width)),
                _ => None,
            }
        };
        let mut units: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        for i in 0..items.len() {
            if let Some(size) = size_at(i, 0) {
                units.entry(size).or_default().push(i);
            }
        }
        // (unit, scale, height, width, images)
        let mut jobs: Vec<(usize, usize, usize, usize, Vec<usize>)> = Vec::new();
        for (unit, members) in units.values().flat_map(|m| m.chunks(batch)).enumerate() {
            for scale in 0..n_scales {
                let mut groups: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
                for &i in members {
                    if let Some(size) = size_at(i, scale) {
                        groups.entry(size).or_default().push(i);
                    }
                }
                for ((h, w), group) in groups {
                    for chunk in group.chunks(batch) {
                        jobs.push((unit, scale, h as usize, w as usize, chunk.to_vec()));
                    }
                }
            }
        }
        // The next batch's tensor is filled on a helper thread while the model runs on this one, so the
        // session waits for no host work when a core is free.
        let spec = self.spec.clone();
        let tensor_for = |job: &(usize, usize, usize, usize, Vec<usize>)| {
            let (_, scale, h, w, members) = job;
            let refs: Vec<(&RgbImage, &Resized)> =
                members.iter().map(|&i| (items[i].0, items[i].1.scales[*scale].as_ref().expect("grouped"))).collect();
            batch_tensor(&spec, &refs, *h, *w)
        };
        std::thread::scope(|scope| -> Result<(), TeacherError> {
            // One helper per call (not per batch: each new thread costs a stack and a malloc arena), at most
            // one tensor ahead. If a batch fails, dropping `ready` stops the helper.
            let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
            let (jobs, tensor_for) = (&jobs, &tensor_for);
            scope.spawn(move || {
                for job in jobs {
                    if ready_tx.send(tensor_for(job)).is_err() {
                        break;
                    }
                }
            });
            // Dense outputs are finished per unit, here: only a unit's worth of them is ever held.
            let dense = matches!(self.spec.task, Task::Seg | Task::Depth);
            let mut unit_members: Vec<usize> = Vec::new();
            for (k, (unit, scale, h, w, members)) in jobs.iter().enumerate() {
                let (shape, data) = ready.recv().expect("the batch tensor helper stopped early");
                let transforms: Vec<preprocess::Transform> =
                    members.iter().map(|&i| items[i].1.scales[*scale].as_ref().expect("grouped").transform).collect();
                let got = self.run_batch(shape, data, &transforms, *h, *w)?;
                for (&i, o) in members.iter().zip(got) {
                    if let Ok(v) = &mut outs[i] {
                        v.push(o);
                    }
                }
                if !dense {
                    continue;
                }
                if *scale == 0 {
                    unit_members.extend(members);
                }
                if jobs.get(k + 1).is_none_or(|next| next.0 != *unit) {
                    // The unit ran at every scale: its held outputs become labels and are released.
                    for i in unit_members.drain(..) {
                        if let Ok(v) = &mut outs[i] {
                            let (width, height) = (items[i].1.width, items[i].1.height);
                            let t = v[0].1;
                            let done = if self.device.is_some() {
                                self.finish_held(width, height, v)?
                            } else {
                                let raw = RawOutput { width, height, scales: std::mem::take(v) };
                                ScaleOutput::Final(Teacher::finish(&self.spec, raw))
                            };
                            *v = vec![(done, t)];
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(outs
            .into_iter()
            .zip(items)
            .map(|(o, (_, input))| o.map(|scales| RawOutput { width: input.width, height: input.height, scales }))
            .collect())
    }

    /// Run one batch tensor (or replay a cached result of the same shape) and attach each image's transform.
    fn run_batch(
        &mut self,
        shape: Vec<i64>,
        data: Vec<f32>,
        transforms: &[preprocess::Transform],
        h: usize,
        w: usize,
    ) -> Result<Vec<(ScaleOutput, preprocess::Transform)>, TeacherError> {
        let n = transforms.len();
        let run_n = run_rows(&self.spec, n);
        let replay_key = (n, h, w);
        let out = match self.replay.as_ref().and_then(|r| r.get(&replay_key)) {
            Some(cached) => cached.iter().take(n).cloned().collect(),
            None => {
                let out = self.run_session(shape, data, run_n, n)?;
                if let Some(r) = self.replay.as_mut() {
                    r.insert(replay_key, out.clone());
                }
                out
            }
        };
        let out = if self.device.is_some() && self.spec.task == Task::Cls { self.classify_held(out)? } else { out };
        Ok(out.into_iter().zip(transforms.iter().copied()).collect())
    }

    /// Run the model on one batch tensor and split its outputs into `n` per-image outputs.
    fn run_session(
        &mut self,
        shape: Vec<i64>,
        data: Vec<f32>,
        run_n: usize,
        n: usize,
    ) -> Result<Vec<ScaleOutput>, TeacherError> {
        let tensor = Tensor::from_array((shape, data)).map_err(|e| self.fail(e))?;
        if self.device.is_some() {
            return self.run_session_held(tensor, n);
        }
        let input_name = self.input_name.clone();
        let outputs = self.outputs.clone();
        let task = self.spec.task;
        let format = self.spec.detection_format;
        let started = Instant::now();
        let session_outputs = self
            .session
            .run(ort::inputs![input_name.as_str() => tensor])
            .map_err(|e| TeacherError::Inference { teacher: self.spec.name.clone(), message: e.to_string() })?;
        self.session_time += started.elapsed();
        self.session_runs += 1;
        // Borrowed views of the outputs: each image's part is copied out once, below.
        let get_f32 = |role: &str| -> Result<(Vec<i64>, &[f32]), String> {
            let name = &outputs[role];
            let (shape, data) = session_outputs[name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("output {name:?} ({role}): {e}"))?;
            Ok((shape.to_vec(), data))
        };
        let mut out = Vec::with_capacity(n);
        let name = self.spec.name.clone();
        let fail = |m: String| TeacherError::Inference { teacher: name.clone(), message: m };
        match (task, format) {
            (Task::Det, Some(DetectionFormat::BoxesLabelsScores | DetectionFormat::BoxesScoresLabels)) => {
                let (_, boxes) = get_f32("boxes").map_err(fail)?;
                let (_, scores) = get_f32("scores").map_err(fail)?;
                let labels_name = &outputs["labels"];
                let labels_value = &session_outputs[labels_name.as_str()];
                let labels: Vec<i64> = match labels_value.try_extract_tensor::<i64>() {
                    Ok((_, l)) => l.to_vec(),
                    Err(_) => labels_value
                        .try_extract_tensor::<f32>()
                        .map_err(|e| fail(format!("output {labels_name:?} (labels): {e}")))?
                        .1
                        .iter()
                        .map(|&v| v as i64)
                        .collect(),
                };
                if boxes.len() != scores.len() * 4 || labels.len() != scores.len() {
                    return Err(fail(format!(
                        "detection outputs disagree: {} box values, {} labels, {} scores",
                        boxes.len(),
                        labels.len(),
                        scores.len()
                    )));
                }
                out.push(ScaleOutput::Boxes { boxes: boxes.to_vec(), labels, scores: scores.to_vec() });
            }
            (Task::Det, Some(DetectionFormat::YoloRaw)) => {
                let (shape, data) = get_f32("output").map_err(fail)?;
                let per = data.len() / run_n.max(1);
                let anchors = *shape.last().unwrap_or(&0) as usize;
                for k in 0..n {
                    out.push(ScaleOutput::Yolo { data: data[k * per..(k + 1) * per].to_vec(), anchors });
                }
            }
            (Task::Det, _) => {
                let (_, data) = get_f32("output").map_err(fail)?;
                let per = data.len() / run_n.max(1);
                for k in 0..n {
                    out.push(ScaleOutput::YoloNms { data: data[k * per..(k + 1) * per].to_vec() });
                }
            }
            (Task::Cls, _) => {
                let (_, data) = get_f32("scores").map_err(fail)?;
                let per = data.len() / run_n.max(1);
                for k in 0..n {
                    out.push(ScaleOutput::Scores(data[k * per..(k + 1) * per].to_vec()));
                }
            }
            (Task::Seg, _) => {
                let (shape, data) = get_f32("scores").map_err(fail)?;
                let (oh, ow) = (shape[shape.len() - 2] as usize, shape[shape.len() - 1] as usize);
                let per = data.len() / run_n.max(1);
                for k in 0..n {
                    out.push(ScaleOutput::Dense { data: data[k * per..(k + 1) * per].to_vec(), h: oh, w: ow });
                }
            }
            (Task::Depth, _) => {
                let (shape, data) = get_f32("depth").map_err(fail)?;
                let (oh, ow) = (shape[shape.len() - 2] as usize, shape[shape.len() - 1] as usize);
                let per = oh * ow;
                for k in 0..n {
                    out.push(ScaleOutput::Dense { data: data[k * per..(k + 1) * per].to_vec(), h: oh, w: ow });
                }
            }
        }
        Ok(out)
    }

    /// Run the model for device post-processing: its one output that the graph reads is bound to the
    /// provider's memory (on a GPU it never comes to the host) and held, whole, for each of the `n` images.
    fn run_session_held(&mut self, tensor: Tensor<f32>, n: usize) -> Result<Vec<ScaleOutput>, TeacherError> {
        let role = match self.spec.task {
            Task::Depth => "depth",
            _ => "scores",
        };
        let name = self.outputs[role].clone();
        let fail = |e: ort::Error| TeacherError::Inference { teacher: self.spec.name.clone(), message: e.to_string() };
        let memory = &self.device.as_ref().expect("device post-processing").memory;
        let mut binding = self.session.create_binding().map_err(fail)?;
        binding.bind_input(self.input_name.as_str(), &tensor).map_err(fail)?;
        binding.bind_output_to_device(name.as_str(), memory).map_err(fail)?;
        let started = Instant::now();
        let mut outputs = self.session.run_binding(&binding).map_err(fail)?;
        self.session_time += started.elapsed();
        self.session_runs += 1;
        let value = outputs.remove(name.as_str()).ok_or_else(|| TeacherError::Inference {
            teacher: self.spec.name.clone(),
            message: format!("no output {name:?}"),
        })?;
        drop(outputs);
        let value = Arc::new(value);
        Ok((0..n).map(|row| ScaleOutput::Held { value: value.clone(), row }).collect())
    }

    /// Classification with device post-processing: one graph run per batch turns the held scores into
    /// class distributions (also for replayed outputs, so a benchmark still counts this work).
    fn classify_held(&mut self, out: Vec<ScaleOutput>) -> Result<Vec<ScaleOutput>, TeacherError> {
        let Some(ScaleOutput::Held { value, .. }) = out.first() else { return Ok(out) };
        let value = value.clone();
        let nc = self.spec.classes.len();
        let graph =
            self.device.as_mut().expect("device post-processing").graph(&self.spec, GraphForm::Classification)?;
        let (probs, finite) = graph.classify(&value)?;
        let k = probs.len() / finite.len().max(1);
        Ok(out
            .into_iter()
            .map(|o| {
                let ScaleOutput::Held { row, .. } = o else { return o };
                ScaleOutput::Final(if k != nc {
                    Err(invalid_output(format!("{k} class scores for {nc} classes")))
                } else if !finite[row] {
                    Err(invalid_output("non-finite class scores".into()))
                } else {
                    Ok(Prediction::Classification(probs[row * k..(row + 1) * k].to_vec()))
                })
            })
            .collect())
    }

    /// Segmentation and depth with device post-processing: one image's held outputs (one per scale) →
    /// its finished label.
    fn finish_held(
        &mut self,
        img_w: u32,
        img_h: u32,
        scales: &[(ScaleOutput, preprocess::Transform)],
    ) -> Result<ScaleOutput, TeacherError> {
        let mut held = Vec::with_capacity(scales.len());
        let mut dims = Vec::with_capacity(scales.len());
        for (o, _) in scales {
            let ScaleOutput::Held { value, row } = o else { return Err(self.fail("output not held for the device")) };
            let shape = value.shape().to_vec();
            let (h, w) = (shape[shape.len() - 2] as usize, shape[shape.len() - 1] as usize);
            held.push(Held { value: value.as_ref(), row: *row });
            dims.push((shape.len(), h, w));
        }
        let (spec, device) = (&self.spec, self.device.as_mut().expect("device post-processing"));
        let t = scales[0].1;
        match spec.task {
            Task::Seg => {
                let nc = spec.classes.len();
                let [bh, bw] = input_size_for(spec, img_w, img_h, 1.0);
                let (gw, gh) = base_grid(spec, t, bw, bh);
                if let Some(bad) = held.iter().find(|h| h.value.shape().get(1) != Some(&(nc as i64))) {
                    let c = bad.value.shape().get(1).copied().unwrap_or(0);
                    return Ok(ScaleOutput::Final(Err(invalid_output(format!("{c} class planes for {nc} classes")))));
                }
                let resize = dims.iter().any(|&(_, h, w)| (h, w) != (gh, gw));
                let graph = device.graph(spec, GraphForm::Segmentation { resize })?;
                Ok(ScaleOutput::Final(match graph.segment(&held, resize.then_some((gh, gw)))? {
                    Some((mask, height, width)) => Ok(Prediction::Segmentation { height, width, mask }),
                    None => Err(invalid_output("non-finite segmentation scores".into())),
                }))
            }
            _ => {
                let (rank, oh, ow) = dims[0];
                let r = output_rect(&t, ow, oh);
                let gw = ((r[2] - r[0]).round() as usize).max(1);
                let gh = ((r[3] - r[1]).round() as usize).max(1);
                let values = if (gw, gh) == (ow, oh) {
                    // The output is the image's grid: no graph, only the row to copy.
                    let (_, data) = held[0]
                        .value
                        .try_extract_tensor::<f32>()
                        .map_err(|e| TeacherError::Inference { teacher: spec.name.clone(), message: e.to_string() })?;
                    let row = &data[held[0].row * oh * ow..(held[0].row + 1) * oh * ow];
                    postprocess::all_finite(row).then(|| row.to_vec())
                } else {
                    device.graph(spec, GraphForm::Depth { rank })?.resample_depth(held.remove(0), (gh, gw))?
                };
                Ok(ScaleOutput::Final(match values {
                    Some(values) => Ok(Prediction::Depth { height: gh, width: gw, values }),
                    None => Err(invalid_output("non-finite depth values".into())),
                }))
            }
        }
    }

    /// Post-process one image's raw outputs into its pseudo label (soft distribution, thresholded boxes,
    /// mask with the ignore label, depth map). Needs only the spec, so it can run on any thread.
    pub fn finish(spec: &TeacherSpec, raw: RawOutput) -> Result<Prediction, ImageFailure> {
        let RawOutput { width: img_w, height: img_h, scales: outs } = raw;
        let nc = spec.classes.len();
        let post = invalid_output;
        if let Some((ScaleOutput::Final(_), _)) = outs.first() {
            let Some((ScaleOutput::Final(done), _)) = outs.into_iter().next() else { unreachable!() };
            return done;
        }
        match spec.task {
            Task::Cls => {
                let (o, _) = outs.into_iter().next().ok_or_else(|| post("no output".into()))?;
                let ScaleOutput::Scores(s) = o else { return Err(post("unexpected output".into())) };
                if s.len() != nc {
                    return Err(post(format!("{} class scores for {nc} classes", s.len())));
                }
                if s.iter().any(|v| !v.is_finite()) {
                    return Err(post("non-finite class scores".into()));
                }
                Ok(Prediction::Classification(postprocess::class_distribution(&s, spec.output_kind, spec.temperature)))
            }
            Task::Det => {
                let (o, t) = outs.into_iter().next().ok_or_else(|| post("no output".into()))?;
                let dets = match o {
                    ScaleOutput::Boxes { boxes, labels, scores } => {
                        let (d, _bad) = postprocess::from_boxes_labels_scores(
                            &t,
                            &boxes,
                            &labels,
                            &scores,
                            spec.label_offset,
                            nc,
                            spec.box_threshold,
                            spec.max_detections,
                        );
                        d
                    }
                    ScaleOutput::Yolo { data, anchors } => postprocess::from_yolo_raw(
                        &t,
                        &data,
                        nc,
                        anchors,
                        spec.box_threshold,
                        spec.nms_iou,
                        spec.max_detections,
                    ),
                    ScaleOutput::YoloNms { data } => {
                        postprocess::from_yolo_nms(&t, &data, nc, spec.box_threshold, spec.max_detections)
                    }
                    _ => return Err(post("unexpected output".into())),
                };
                Ok(Prediction::Detection(dets))
            }
            Task::Seg => {
                let [bh, bw] = input_size_for(spec, img_w, img_h, 1.0);
                for (o, _) in &outs {
                    match o {
                        ScaleOutput::Dense { data, .. } if !postprocess::all_finite(data) => {
                            return Err(post("non-finite segmentation scores".into()))
                        }
                        ScaleOutput::Dense { .. } => {}
                        _ => return Err(post("unexpected output".into())),
                    }
                }
                // One scale whose output is the mask's grid: straight from the logits, no probability planes.
                if let [(ScaleOutput::Dense { data, h: oh, w: ow }, t)] = outs.as_slice() {
                    let (gw, gh) = base_grid(spec, *t, bw, bh);
                    if spec.output_kind == ScoreKind::Logits
                        && data.len() == nc * oh * ow
                        && (gw, gh) == (*ow, *oh)
                        && covers_output(t, *ow, *oh)
                    {
                        let mask = postprocess::mask_from_logits(data, nc, spec.seg_threshold);
                        return Ok(Prediction::Segmentation { height: gh, width: gw, mask });
                    }
                }
                // The base grid is the scale-1 input region showing the image.
                let mut acc: Option<(Vec<f32>, usize, usize)> = None;
                let n_scales = outs.len() as f32;
                for so in outs {
                    let (o, t) = so;
                    let ScaleOutput::Dense { mut data, h: oh, w: ow } = o else {
                        return Err(post("unexpected output".into()));
                    };
                    if data.len() != nc * oh * ow {
                        return Err(post(format!("{} values for {nc} classes of {oh}x{ow}", data.len())));
                    }
                    if spec.output_kind == ScoreKind::Logits {
                        postprocess::softmax_planes(&mut data, nc);
                    }
                    // Output may be at a stride of the input: map the content rect into output pixels.
                    let r = output_rect(&t, ow, oh);
                    let (_, gw, gh) = acc.as_ref().map(|a| (0, a.1, a.2)).unwrap_or_else(|| {
                        let base = base_grid(spec, t, bw, bh);
                        (0, base.0, base.1)
                    });
                    let res = postprocess::resample(&data, nc, ow, oh, r, gw, gh);
                    match &mut acc {
                        None => acc = Some((res, gw, gh)),
                        Some((a, _, _)) => a.iter_mut().zip(&res).for_each(|(x, y)| *x += y),
                    }
                }
                let (mut probs, gw, gh) = acc.ok_or_else(|| post("no output".into()))?;
                if n_scales > 1.0 {
                    probs.iter_mut().for_each(|p| *p /= n_scales);
                }
                let mask = postprocess::mask_from_probabilities(&probs, nc, spec.seg_threshold);
                Ok(Prediction::Segmentation { height: gh, width: gw, mask })
            }
            Task::Depth => {
                let (o, t) = outs.into_iter().next().ok_or_else(|| post("no output".into()))?;
                let ScaleOutput::Dense { data, h: oh, w: ow } = o else {
                    return Err(post("unexpected output".into()));
                };
                if data.iter().any(|v| !v.is_finite()) {
                    return Err(post("non-finite depth values".into()));
                }
                let r = output_rect(&t, ow, oh);
                let gw = ((r[2] - r[0]).round() as usize).max(1);
                let gh = ((r[3] - r[1]).round() as usize).max(1);
                let values =
                    if gw == ow && gh == oh { data } else { postprocess::resample(&data, 1, ow, oh, r, gw, gh) };
                Ok(Prediction::Depth { height: gh, width: gw, values })
            }
        }
    }
}

/// A post-processing failure: the teacher's output for this image is not a valid label.
fn invalid_output(detail: String) -> ImageFailure {
    ImageFailure { stage: "postprocess", reason: "invalid_output", detail }
}

/// The device post-processing of `spec` under `settings`, or `None` when it runs on the host: when asked
/// (`postprocess = "host"`, or `"auto"` on the CPU provider, where the labeler's vectorised loops measured
/// faster than ONNX Runtime's kernels for these reductions: BENCHMARKS.md), for detection (its outputs are
/// already compact) and for letterboxed dense teachers (their outputs are cropped to the image's region
/// first, which the host does).
fn device_post(spec: &TeacherSpec, settings: &SessionSettings) -> Result<Option<DevicePost>, ort::Error> {
    let dense_letterbox =
        matches!(spec.task, Task::Seg | Task::Depth) && matches!(spec.resize, Resize::Letterbox { .. });
    let on_host = match settings.postprocess {
        Postprocess::Host => true,
        Postprocess::Auto => settings.provider == Provider::Cpu,
        Postprocess::Device => false,
    };
    if on_host || spec.task == Task::Det || dense_letterbox {
        return Ok(None);
    }
    let device = match settings.provider {
        Provider::Cpu => AllocationDevice::CPU,
        Provider::Cuda | Provider::Tensorrt => AllocationDevice::CUDA,
    };
    let memory = MemoryInfo::new(device, 0, AllocatorType::Device, MemoryType::Default)?;
    // On the CPU the graphs run on the calling thread: their work is small next to a teacher's, and idle
    // intra-op threads spinning after each of the many small runs would cost more than they save.
    let settings = match settings.provider {
        Provider::Cpu => SessionSettings { intra_threads: 1, spin_wait: false, ..*settings },
        _ => *settings,
    };
    Ok(Some(DevicePost { settings, memory, graphs: HashMap::new() }))
}

impl DevicePost {
    fn graph(&mut self, spec: &TeacherSpec, form: GraphForm) -> Result<&mut PostGraph, PostGraphError> {
        if !self.graphs.contains_key(&form) {
            let (name, settings) = (&spec.name, &self.settings);
            let graph = match form {
                GraphForm::Classification => {
                    PostGraph::classification(name, settings, spec.output_kind, spec.temperature)?
                }
                GraphForm::Segmentation { resize } => PostGraph::segmentation(
                    name,
                    settings,
                    spec.scales.len(),
                    resize,
                    spec.output_kind,
                    spec.seg_threshold,
                )?,
                GraphForm::Depth { rank } => PostGraph::depth(name, settings, rank)?,
            };
            self.graphs.insert(form, graph);
        }
        Ok(self.graphs.get_mut(&form).expect("inserted above"))
    }
}

/// The part of a dense output (`ow`×`oh`, possibly at a stride of the input) that shows the image, in
/// output pixels.
fn output_rect(t: &preprocess::Transform, ow: usize, oh: usize) -> [f32; 4] {
    let (rect, _, _) = postprocess::dense_grid(t);
    let sx = ow as f32 / t.width as f32;
    let sy = oh as f32 / t.height as f32;
    [rect[0] * sx, rect[1] * sy, rect[2] * sx, rect[3] * sy]
}

/// Whether the image fills the whole `ow`×`oh` output (no letterbox bars to crop away).
fn covers_output(t: &preprocess::Transform, ow: usize, oh: usize) -> bool {
    let r = output_rect(t, ow, oh);
    let close = |a: f32, b: f32| (a - b).abs() < 1e-3;
    close(r[0], 0.0) && close(r[1], 0.0) && close(r[2], ow as f32) && close(r[3], oh as f32)
}

/// The scale-1 grid size of the region showing the image, in input pixels.
fn base_grid(spec: &TeacherSpec, t: preprocess::Transform, bw: u32, bh: u32) -> (usize, usize) {
    match spec.resize {
        Resize::Letterbox { .. } => {
            // Content size at scale 1: the letterbox fit inside bw×bh.
            let aspect = t.scale_x / t.scale_y;
            let (cw, ch) = if aspect >= bw as f32 / bh as f32 {
                (bw as f32, bw as f32 / aspect)
            } else {
                (bh as f32 * aspect, bh as f32)
            };
            ((cw.round() as usize).max(1), (ch.round() as usize).max(1))
        }
        _ => (bw as usize, bh as usize),
    }
}

/// Rows of the tensor that carries `n` images: the model's static batch (padded), or `n`.
fn run_rows(spec: &TeacherSpec, n: usize) -> usize {
    match spec.batch {
        Batch::Static(size) => size,
        Batch::Dynamic(_) => n,
    }
}

/// The input tensor of one batch: its shape and the normalised images (padded to a static batch size).
fn batch_tensor(spec: &TeacherSpec, items: &[(&RgbImage, &Resized)], h: usize, w: usize) -> (Vec<i64>, Vec<f32>) {
    let plane = 3 * h * w;
    let run_n = run_rows(spec, items.len());
    let mut data = vec![0f32; run_n * plane];
    for ((img, r), dst) in items.iter().zip(data.chunks_exact_mut(plane)) {
        preprocess::normalize_into(r.hwc(img), spec, dst);
    }
    let shape = match spec.layout {
        Layout::Nchw => vec![run_n as i64, 3, h as i64, w as i64],
        Layout::Chw => vec![3, h as i64, w as i64],
    };
    (shape, data)
}

/// One decoded image resized for one teacher at each of its scales (the costly part of preprocessing,
/// done on the decode workers; normalisation happens when the batch tensor is filled).
#[derive(Debug, Clone)]
pub struct TeacherInput {
    width: u32,
    height: u32,
    scales: Vec<Result<Resized, ImageFailure>>,
}

impl TeacherInput {
    /// Resize `img` for `spec` at every configured scale. A failure is kept and reported for this image.
    pub fn prepare(spec: &TeacherSpec, img: &RgbImage, resizer: &mut Resizer) -> Self {
        Self::prepare_shared(spec, img, resizer, &mut preprocess::SharedResizes::default())
    }

    /// [`TeacherInput::prepare`], sharing resized inputs with the other teachers of the same image.
    pub fn prepare_shared(
        spec: &TeacherSpec,
        img: &RgbImage,
        resizer: &mut Resizer,
        shared: &mut preprocess::SharedResizes,
    ) -> Self {
        let scales = spec
            .scales
            .iter()
            .map(|&scale| {
                preprocess::resize_shared(img, spec, scale, resizer, shared).map_err(|e| ImageFailure {
                    stage: "preprocess",
                    reason: "unsupported",
                    detail: e.to_string(),
                })
            })
            .collect();
        Self { width: img.width(), height: img.height(), scales }
    }
}

/// One image's raw model outputs at every scale, before post-processing ([`Teacher::finish`]).
#[derive(Debug)]
pub struct RawOutput {
    width: u32,
    height: u32,
    /// Per scale: the output and the transform from that scale's input back to the image.
    scales: Vec<(ScaleOutput, preprocess::Transform)>,
}

/// Raw per-image output of one scale, before post-processing.
#[derive(Debug, Clone)]
enum ScaleOutput {
    /// Device post-processing: the batch output the image's row is in, kept where the teacher left it
    /// until the graph runs.
    Held {
        value: Arc<DynValue>,
        row: usize,
    },
    /// Device post-processing: the finished label, or why the output was invalid.
    Final(Result<Prediction, ImageFailure>),
    Scores(Vec<f32>),
    Boxes {
        boxes: Vec<f32>,
        labels: Vec<i64>,
        scores: Vec<f32>,
    },
    Yolo {
        data: Vec<f32>,
        anchors: usize,
    },
    YoloNms {
        data: Vec<f32>,
    },
    Dense {
        data: Vec<f32>,
        h: usize,
        w: usize,
    },
}

/// Check the spec against the session; returns the input name and the role → output name map.
fn check(
    spec: &TeacherSpec,
    file: &str,
    session: &Session,
) -> Result<(String, BTreeMap<String, String>), TeacherError> {
    let err = |field: &str, reason: String| TeacherError::Mismatch {
        teacher: spec.name.clone(),
        file: file.to_owned(),
        field: field.to_owned(),
        reason,
    };
    let inputs = session.inputs();
    let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
    let input = match &spec.input_name {
        Some(n) => inputs
            .iter()
            .find(|i| i.name() == n)
            .ok_or_else(|| err("input_name", format!("model has no input {n:?}; its inputs are {names:?}")))?,
        None if inputs.len() == 1 => &inputs[0],
        None => {
            return Err(err("input_name", format!("model has {} inputs {names:?}; name the image input", inputs.len())))
        }
    };
    let (ty, shape) = dims(input.dtype()).ok_or_else(|| err("input_name", "input is not a tensor".into()))?;
    if ty != TensorElementType::Float32 {
        return Err(err(
            "input_name",
            format!("input {:?} is {ty:?}; only float32 image inputs are supported", input.name()),
        ));
    }
    let want_rank = match spec.layout {
        Layout::Nchw => 4,
        Layout::Chw => 3,
    };
    if shape.len() != want_rank {
        return Err(err(
            "layout",
            format!(
                "input {:?} has rank {} ({shape:?}) but layout {:?} needs rank {want_rank}",
                input.name(),
                shape.len(),
                spec.layout
            ),
        ));
    }
    let off = if spec.layout == Layout::Nchw { 1 } else { 0 };
    if shape[off] != 3 && shape[off] != -1 {
        return Err(err("layout", format!("input shape {shape:?} does not have 3 channels at axis {off}")));
    }
    if spec.layout == Layout::Nchw {
        match (shape[0], spec.batch) {
            (n, Batch::Dynamic(_)) if n > 0 => {
                return Err(err("batch", format!("the model has a static batch of {n}; set batch = {n}")))
            }
            (n, Batch::Static(b)) if n > 0 && n as usize != b => {
                return Err(err("batch", format!("the model's batch is {n}, the spec says {b}")))
            }
            _ => {}
        }
    }
    let (mh, mw) = (shape[off + 1], shape[off + 2]);
    let dynamic_needed = matches!(spec.resize, Resize::KeepAspect { .. } | Resize::Original) || spec.scales != [1.0];
    if mh > 0 && mw > 0 {
        if dynamic_needed {
            return Err(err(
                if spec.scales != [1.0] { "scales" } else { "resize" },
                format!("the model's input size is fixed at {mh}x{mw}; multi-scale, keep-aspect and original-size inputs need dynamic H and W (set input_size and resize = stretch or letterbox)"),
            ));
        }
        if [mh as u32, mw as u32] != spec.input_size {
            return Err(err(
                "input_size",
                format!("the model expects {mh}x{mw} (HxW), the spec says {:?}", spec.input_size),
            ));
        }
    }
    if matches!(spec.task, Task::Seg | Task::Depth) && matches!(spec.resize, Resize::ShorterSideCrop { .. }) {
        return Err(err(
            "resize",
            "dense teachers must see the whole image: use stretch, letterbox or keep_aspect".into(),
        ));
    }

    // Outputs: resolve each role.
    let outs = session.outputs();
    let out_names: Vec<&str> = outs.iter().map(|o| o.name()).collect();
    let resolve = |role: &str, r: &OutputRef| -> Result<usize, TeacherError> {
        match r {
            OutputRef::Name(n) => out_names.iter().position(|o| o == n).ok_or_else(|| {
                err(&format!("outputs.{role}"), format!("model has no output {n:?}; its outputs are {out_names:?}"))
            }),
            OutputRef::Index(i) if *i < outs.len() => Ok(*i),
            OutputRef::Index(i) => Err(err(
                &format!("outputs.{role}"),
                format!("output index {i} but the model has {} outputs {out_names:?}", outs.len()),
            )),
        }
    };
    let mut roles: BTreeMap<String, usize> = BTreeMap::new();
    let explicit_names = spec.outputs.values().all(|r| matches!(r, OutputRef::Name(_)));
    if spec.task == Task::Det
        && matches!(
            spec.detection_format,
            Some(DetectionFormat::BoxesLabelsScores | DetectionFormat::BoxesScoresLabels)
        )
        && !explicit_names
    {
        // Positions differ between exporters (R-CNN: boxes, labels, scores; RetinaNet: boxes, scores,
        // labels): identify by dtype and shape instead.
        for (i, o) in outs.iter().enumerate() {
            if let Some((ty, s)) = dims(o.dtype()) {
                let role = match (ty, s.len()) {
                    (TensorElementType::Float32, 2) => "boxes",
                    (TensorElementType::Int64 | TensorElementType::Int32, 1) => "labels",
                    (TensorElementType::Float32, 1) => "scores",
                    _ => continue,
                };
                roles.entry(role.to_owned()).or_insert(i);
            }
        }
        for role in ["boxes", "labels", "scores"] {
            if !roles.contains_key(role) {
                return Err(err(
                    &format!("outputs.{role}"),
                    format!("no output looks like {role} (boxes [K,4] f32, labels [K] int64, scores [K] f32); outputs are {out_names:?}"),
                ));
            }
        }
    } else {
        for (role, r) in &spec.outputs {
            roles.insert(role.clone(), resolve(role, r)?);
        }
    }
    // Shape checks per task.
    let nc = spec.classes.len() as i64;
    let shape_of = |i: usize| dims(outs[i].dtype()).unwrap_or((TensorElementType::Undefined, vec![]));
    match spec.task {
        Task::Cls => {
            let (t, s) = shape_of(roles["scores"]);
            if t != TensorElementType::Float32 || s.len() != 2 {
                return Err(err("outputs.scores", format!("expected float32 [N, classes], model gives {t:?}{s:?}")));
            }
            if s[1] > 0 && s[1] != nc {
                return Err(err("classes", format!("the model has {} classes, the spec lists {nc}", s[1])));
            }
        }
        Task::Seg => {
            let (t, s) = shape_of(roles["scores"]);
            if t != TensorElementType::Float32 || s.len() != 4 {
                return Err(err(
                    "outputs.scores",
                    format!("expected float32 [N, classes, H, W], model gives {t:?}{s:?}"),
                ));
            }
            if s[1] > 0 && s[1] != nc {
                return Err(err("classes", format!("the model has {} classes, the spec lists {nc}", s[1])));
            }
            if nc > 255 {
                return Err(err("classes", "at most 255 segmentation classes (255 is the ignore label)".into()));
            }
        }
        Task::Depth => {
            let (t, s) = shape_of(roles["depth"]);
            if t != TensorElementType::Float32 || !(s.len() == 3 || (s.len() == 4 && (s[1] == 1 || s[1] == -1))) {
                return Err(err(
                    "outputs.depth",
                    format!("expected float32 [N, H, W] or [N, 1, H, W], model gives {t:?}{s:?}"),
                ));
            }
        }
        Task::Det => match spec.detection_format {
            Some(DetectionFormat::YoloRaw) => {
                let (_, s) = shape_of(roles["output"]);
                if s.len() != 3 || (s[1] > 0 && s[1] != 4 + nc) {
                    return Err(err("classes", format!("YOLO output {s:?} should be [B, 4 + {nc} classes, anchors]")));
                }
            }
            Some(DetectionFormat::YoloNms) => {
                let (_, s) = shape_of(roles["output"]);
                if s.len() != 3 || (s[2] > 0 && s[2] != 6) {
                    return Err(err("outputs.output", format!("YOLO NMS output {s:?} should be [B, K, 6]")));
                }
            }
            _ => {
                let (_, s) = shape_of(roles["boxes"]);
                if s.len() != 2 || (s[1] > 0 && s[1] != 4) {
                    return Err(err("outputs.boxes", format!("boxes output {s:?} should be [K, 4]")));
                }
            }
        },
    }
    let names = roles.into_iter().map(|(role, i)| (role, outs[i].name().to_owned())).collect();
    Ok((input.name().to_owned(), names))
}
