//! Post-processing graphs: the per-class and per-pixel work of pseudo labelling, run by ONNX Runtime on the
//! teacher's own execution provider.
//!
//! A 21-class segmentation teacher at 320×320 emits 8.6 MB of float logits per image. Moving them to the host
//! and running softmax, resampling, argmax and the confidence rule there made post-processing the largest
//! host cost per image, and on a GPU it would make the host, not the accelerator, the price of labelling.
//! These graphs do that work where the teacher ran: only the u8 class map (or the class distribution, or
//! the resampled depth) crosses to the host. With a GPU provider the teacher's outputs are bound to device
//! memory (`Teacher`'s I/O binding) and fed straight to the graph. On the CPU provider the graphs run too
//! (`postprocess = "device"`, and in the tests), but ONNX Runtime's reductions over the class axis are slower
//! there than the labeler's vectorised loops, so `"auto"` keeps the loops on the CPU (BENCHMARKS.md).
//!
//! The graphs are built in memory through ONNX Runtime's model editor API, with symbolic batch, class and
//! spatial axes, so one graph serves every class count and size a teacher produces. They compute the same
//! expressions as [`crate::postprocess`] (the tests compare the two on every task), which stays as the host
//! path (`[run] postprocess = "host"`) and the reference.

use std::path::Path;

use ort::editor::{Graph, Model, Node, Opset, ONNX_DOMAIN};
use ort::operator::Attribute;
use ort::session::Session;
use ort::value::{DynValue, Outlet, Shape, SymbolicDimensions, Tensor, TensorElementType, ValueType};
use schemas::SEG_IGNORE;

use crate::runtime::{self, RuntimeError, SessionSettings};
use crate::spec::ScoreKind;

/// ONNX opset of the graphs (ReduceMax with an `axes` attribute, ReduceSum with an `axes` input).
const OPSET: u32 = 17;

/// A built post-processing graph and the session that runs it.
pub struct PostGraph {
    session: Session,
}

/// One image's place in a batch output held for the graph.
pub struct Held<'v> {
    pub value: &'v DynValue,
    pub row: usize,
}

/// Errors building or running a graph.
#[derive(Debug, thiserror::Error)]
pub enum PostGraphError {
    #[error("teacher {teacher:?}: building its post-processing graph: {message}")]
    Build { teacher: String, message: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("post-processing graph: {0}")]
    Run(String),
}

fn run_err(e: impl std::fmt::Display) -> PostGraphError {
    PostGraphError::Run(e.to_string())
}

/// A graph under construction: nodes named in order, constants added once each.
struct Builder {
    graph: Graph,
    nodes: usize,
    constants: Vec<String>,
}

type BuildResult<T> = Result<T, ort::Error>;

impl Builder {
    fn new() -> BuildResult<Self> {
        Ok(Self { graph: Graph::new()?, nodes: 0, constants: Vec::new() })
    }

    /// Add `op(inputs)` and return its output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<Attribute>) -> BuildResult<String> {
        let out = format!("{}_{}", op.to_ascii_lowercase(), self.nodes + 1);
        self.named_node(op, inputs, &out, attributes)?;
        Ok(out)
    }

    /// Add `op(inputs) -> out` (a graph output's name).
    fn named_node(&mut self, op: &str, inputs: &[&str], out: &str, attributes: Vec<Attribute>) -> BuildResult<()> {
        self.nodes += 1;
        let name = format!("n{}", self.nodes);
        self.graph.add_node(Node::new(op, ONNX_DOMAIN, name, inputs, [out], attributes)?)
    }

    /// A constant tensor (added on first use).
    fn constant<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        &mut self,
        name: &str,
        shape: &[i64],
        values: &[T],
    ) -> BuildResult<String> {
        if !self.constants.iter().any(|c| c == name) {
            // Initializers must own memory from ONNX Runtime's allocator.
            let mut t = Tensor::<T>::new(&ort::memory::Allocator::default(), shape.to_vec())?;
            t.extract_tensor_mut().1.clone_from_slice(values);
            self.graph.add_initializer(name, t, false)?;
            self.constants.push(name.to_owned());
        }
        Ok(name.to_owned())
    }

    /// `ReduceSum(x · 0)` over `axes` (all axes when `None`): NaN exactly when a value is NaN or ±∞.
    fn finite_check(&mut self, x: &str, axes: Option<&[i64]>) -> BuildResult<String> {
        let zero = self.constant("zero", &[], &[0f32])?;
        let z = self.node("Mul", &[x, &zero], vec![])?;
        let keep = vec![Attribute::new("keepdims", 0i64)?];
        match axes {
            Some(a) => {
                let axes = self.constant(&format!("axes_{a:?}"), &[a.len() as i64], a)?;
                self.node("ReduceSum", &[&z, &axes], keep)
            }
            None => self.node("ReduceSum", &[&z], keep),
        }
    }

    /// Bilinear resampling of `[N, C, H, W]` onto `size` (`[h, w]`), sampling at pixel centres with edge
    /// clamping: [`crate::postprocess::resample`] over the whole source.
    fn resize_to(&mut self, x: &str, size: &str) -> BuildResult<String> {
        let shape = self.node("Shape", &[x], vec![])?;
        let (start, end) = (self.constant("zero_i", &[1], &[0i64])?, self.constant("two_i", &[1], &[2i64])?);
        let head = self.node("Slice", &[&shape, &start, &end], vec![])?;
        let sizes = self.node("Concat", &[&head, size], vec![Attribute::new("axis", 0i64)?])?;
        self.node(
            "Resize",
            &[x, "", "", &sizes],
            vec![
                Attribute::new("mode", "linear".to_string())?,
                Attribute::new("coordinate_transformation_mode", "half_pixel".to_string())?,
            ],
        )
    }

    fn finish(self, inputs: Vec<Outlet>, outputs: Vec<Outlet>) -> BuildResult<Model> {
        let mut graph = self.graph;
        graph.set_inputs(inputs)?;
        graph.set_outputs(outputs)?;
        let mut model = Model::new([Opset::new(ONNX_DOMAIN, OPSET)?])?;
        model.set_graph(graph)?;
        Ok(model)
    }
}

fn tensor(name: &str, ty: TensorElementType, dims: &[&str]) -> Outlet {
    let dtype = ValueType::Tensor {
        ty,
        shape: Shape::new(dims.iter().map(|d| d.parse::<i64>().unwrap_or(-1))),
        dimension_symbols: SymbolicDimensions::new(dims.iter().map(|d| {
            if d.parse::<i64>().is_ok() {
                String::new()
            } else {
                (*d).to_owned()
            }
        })),
    };
    Outlet::new(name, dtype)
}

use TensorElementType::{Float32 as F32, Int64 as I64, Uint8 as U8};

/// Classification: the soft class distribution (`crate::postprocess::class_distribution`).
fn classification_model(kind: ScoreKind, temperature: f32) -> BuildResult<Model> {
    let mut b = Builder::new()?;
    let last = b.constant("last_axis", &[1], &[-1i64])?;
    let probs = match kind {
        ScoreKind::Logits => {
            let t = b.constant("temperature", &[], &[temperature])?;
            let scaled = b.node("Div", &["scores", &t], vec![])?;
            b.node("Softmax", &[&scaled], vec![Attribute::new("axis", -1i64)?])?
        }
        ScoreKind::Probabilities => {
            let zero = b.constant("zero", &[], &[0f32])?;
            let mut p = b.node("Max", &["scores", &zero], vec![])?;
            if temperature != 1.0 {
                let e = b.constant("exponent", &[], &[1.0 / temperature])?;
                p = b.node("Pow", &[&p, &e], vec![])?;
            }
            let sum = b.node("ReduceSum", &[&p, &last], vec![Attribute::new("keepdims", 1i64)?])?;
            let tiny = b.constant("tiny", &[], &[f32::MIN_POSITIVE])?;
            let sum = b.node("Max", &[&sum, &tiny], vec![])?;
            b.node("Div", &[&p, &sum], vec![])?
        }
    };
    b.named_node("Identity", &[&probs], "probs", vec![])?;
    let check = b.finite_check("scores", Some(&[-1]))?;
    b.named_node("Identity", &[&check], "check", vec![])?;
    b.finish(
        vec![tensor("scores", F32, &["n", "k"])],
        vec![tensor("probs", F32, &["n", "k"]), tensor("check", F32, &["n"])],
    )
}

/// Segmentation over `scales` outputs: per-scale softmax, resampling onto the mask's grid when `resize`,
/// the average, then argmax with the ignore label below `threshold` (`Teacher::finish`'s host path). One
/// scale of logits at the mask's own grid takes the short form of `postprocess::mask_from_logits`.
fn segmentation_model(scales: usize, resize: bool, kind: ScoreKind, threshold: f32) -> BuildResult<Model> {
    let mut b = Builder::new()?;
    let mut inputs = Vec::new();
    let mut picked = Vec::new();
    for s in 0..scales {
        let (scores, row) = (format!("scores{s}"), format!("row{s}"));
        inputs.push(tensor(&scores, F32, &[&format!("b{s}"), "c", &format!("h{s}"), &format!("w{s}")]));
        inputs.push(tensor(&row, I64, &["1"]));
        picked.push(b.node("Gather", &[&scores, &row], vec![Attribute::new("axis", 0i64)?])?);
    }
    if resize {
        inputs.push(tensor("size", I64, &["2"]));
    }
    let class_axis = || -> BuildResult<Vec<Attribute>> {
        Ok(vec![Attribute::new("axis", 1i64)?, Attribute::new("keepdims", 0i64)?])
    };
    let (confidence, class) = if scales == 1 && !resize && kind == ScoreKind::Logits {
        let x = picked[0].as_str();
        let max = b.node("ReduceMax", &[x], vec![Attribute::new("axes", &[1i64][..])?])?;
        let shifted = b.node("Sub", &[x, &max], vec![])?;
        let e = b.node("Exp", &[&shifted], vec![])?;
        let axes = b.constant("axes_[1]", &[1], &[1i64])?;
        let sum = b.node("ReduceSum", &[&e, &axes], vec![Attribute::new("keepdims", 0i64)?])?;
        (b.node("Reciprocal", &[&sum], vec![])?, b.node("ArgMax", &[x], class_axis()?)?)
    } else {
        let mut planes = Vec::new();
        for x in &picked {
            let mut p = x.clone();
            if kind == ScoreKind::Logits {
                p = b.node("Softmax", &[&p], vec![Attribute::new("axis", 1i64)?])?;
            }
            if resize {
                p = b.resize_to(&p, "size")?;
            }
            planes.push(p);
        }
        let mut avg = planes[0].clone();
        if scales > 1 {
            let refs: Vec<&str> = planes.iter().map(String::as_str).collect();
            let sum = b.node("Sum", &refs, vec![])?;
            let n = b.constant("scale_count", &[], &[scales as f32])?;
            avg = b.node("Div", &[&sum, &n], vec![])?;
        }
        let keep0 = vec![Attribute::new("axes", &[1i64][..])?, Attribute::new("keepdims", 0i64)?];
        (b.node("ReduceMax", &[&avg], keep0)?, b.node("ArgMax", &[&avg], class_axis()?)?)
    };
    let t = b.constant("threshold", &[], &[threshold])?;
    let low = b.node("Less", &[&confidence, &t], vec![])?;
    let class = b.node("Cast", &[&class], vec![Attribute::new("to", 2i64)?])?; // 2: UINT8
    let ignore = b.constant("ignore", &[], &[SEG_IGNORE])?;
    b.named_node("Where", &[&low, &ignore, &class], "mask", vec![])?;
    let checks: Vec<String> = picked.iter().map(|x| b.finite_check(x, None)).collect::<BuildResult<_>>()?;
    let refs: Vec<&str> = checks.iter().map(String::as_str).collect();
    b.named_node("Sum", &refs, "check", vec![])?;
    b.finish(inputs, vec![tensor("mask", U8, &["1", "h", "w"]), tensor("check", F32, &[])])
}

/// Depth resampled onto the grid of the image's region (`postprocess::resample` with one channel).
fn depth_model(rank: usize) -> BuildResult<Model> {
    let mut b = Builder::new()?;
    let dims: &[&str] = if rank == 4 { &["b", "1", "h", "w"] } else { &["b", "h", "w"] };
    let mut x = b.node("Gather", &["depth", "row"], vec![Attribute::new("axis", 0i64)?])?;
    if rank == 3 {
        let axes = b.constant("axes_[1]", &[1], &[1i64])?;
        x = b.node("Unsqueeze", &[&x, &axes], vec![])?;
    }
    let check = b.finite_check(&x, None)?;
    b.named_node("Identity", &[&check], "check", vec![])?;
    let resized = b.resize_to(&x, "size")?;
    b.named_node("Identity", &[&resized], "values", vec![])?;
    b.finish(
        vec![tensor("depth", F32, dims), tensor("row", I64, &["1"]), tensor("size", I64, &["2"])],
        vec![tensor("values", F32, &["1", "1", "oh", "ow"]), tensor("check", F32, &[])],
    )
}

impl PostGraph {
    fn build(
        teacher: &str,
        settings: &SessionSettings,
        model: impl FnOnce() -> BuildResult<Model>,
    ) -> Result<Self, PostGraphError> {
        let name = Path::new("<post-processing graph>");
        let build = |e: ort::Error| PostGraphError::Build { teacher: teacher.to_owned(), message: e.to_string() };
        runtime::environment_for(settings.provider)?; // the editor API needs the library loaded
        let model = model().map_err(build)?;
        let session = model.into_session(&runtime::builder(teacher, name, settings)?).map_err(build)?;
        Ok(Self { session })
    }

    /// The classification graph of a teacher: `scores [N, K]` → `probs [N, K]`, `check [N]`.
    pub fn classification(
        teacher: &str,
        settings: &SessionSettings,
        kind: ScoreKind,
        temperature: f32,
    ) -> Result<Self, PostGraphError> {
        Self::build(teacher, settings, || classification_model(kind, temperature))
    }

    /// The segmentation graph of a teacher with `scales` inference scales; `resize` when an output must be
    /// resampled onto the mask's grid: `scores{s} [B_s, C, H_s, W_s]` and `row{s} [1]` for each scale (plus
    /// `size [2]` when resizing) → `mask [1, h, w]` u8, `check []`.
    pub fn segmentation(
        teacher: &str,
        settings: &SessionSettings,
        scales: usize,
        resize: bool,
        kind: ScoreKind,
        threshold: f32,
    ) -> Result<Self, PostGraphError> {
        Self::build(teacher, settings, || segmentation_model(scales, resize, kind, threshold))
    }

    /// The depth resampling graph for a depth output of `rank` 3 (`[B, H, W]`) or 4 (`[B, 1, H, W]`):
    /// `depth`, `row [1]`, `size [2]` → `values [1, 1, h, w]`, `check []`.
    pub fn depth(teacher: &str, settings: &SessionSettings, rank: usize) -> Result<Self, PostGraphError> {
        Self::build(teacher, settings, || depth_model(rank))
    }

    /// Class distributions of a batch of class scores `[N, K]`: `N·K` probabilities, and per row whether
    /// its scores were all finite.
    pub fn classify(&mut self, scores: &DynValue) -> Result<(Vec<f32>, Vec<bool>), PostGraphError> {
        let out = self.session.run(ort::inputs!["scores" => scores]).map_err(run_err)?;
        let (_, probs) = out["probs"].try_extract_tensor::<f32>().map_err(run_err)?;
        let (_, check) = out["check"].try_extract_tensor::<f32>().map_err(run_err)?;
        Ok((probs.to_vec(), check.iter().map(|c| *c == 0.0).collect()))
    }

    /// One image's mask from its row in each scale's batch output: `(mask, height, width)`, or `None` when
    /// a score was not finite. `size` is the mask's grid `(height, width)` when the graph resamples.
    pub fn segment(
        &mut self,
        held: &[Held<'_>],
        size: Option<(usize, usize)>,
    ) -> Result<Option<(Vec<u8>, usize, usize)>, PostGraphError> {
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(2 * held.len() + 1);
        for (s, h) in held.iter().enumerate() {
            inputs.push((format!("scores{s}"), h.value.into()));
            inputs.push((format!("row{s}"), row_tensor(h.row)?.into()));
        }
        if let Some((gh, gw)) = size {
            inputs.push(("size".to_owned(), size_tensor(gh, gw)?.into()));
        }
        let out = self.session.run(inputs).map_err(run_err)?;
        let (_, check) = out["check"].try_extract_tensor::<f32>().map_err(run_err)?;
        if check.first().is_none_or(|c| *c != 0.0) {
            return Ok(None);
        }
        let (shape, mask) = out["mask"].try_extract_tensor::<u8>().map_err(run_err)?;
        Ok(Some((mask.to_vec(), shape[1] as usize, shape[2] as usize)))
    }

    /// One image's depth resampled to `(height, width)`, or `None` when a value was not finite.
    pub fn resample_depth(&mut self, held: Held<'_>, size: (usize, usize)) -> Result<Option<Vec<f32>>, PostGraphError> {
        let out = self
            .session
            .run(ort::inputs![
                "depth" => held.value,
                "row" => row_tensor(held.row)?,
                "size" => size_tensor(size.0, size.1)?
            ])
            .map_err(run_err)?;
        let (_, check) = out["check"].try_extract_tensor::<f32>().map_err(run_err)?;
        if check.first().is_none_or(|c| *c != 0.0) {
            return Ok(None);
        }
        let (_, values) = out["values"].try_extract_tensor::<f32>().map_err(run_err)?;
        Ok(Some(values.to_vec()))
    }
}

fn row_tensor(row: usize) -> Result<Tensor<i64>, PostGraphError> {
    Tensor::from_array((vec![1i64], vec![row as i64])).map_err(run_err)
}

fn size_tensor(h: usize, w: usize) -> Result<Tensor<i64>, PostGraphError> {
    Tensor::from_array((vec![2i64], vec![h as i64, w as i64])).map_err(run_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postprocess;

    /// Deterministic values in [-4, 4).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect()
    }

    fn value(shape: &[i64], data: Vec<f32>) -> DynValue {
        runtime::environment().expect("ONNX Runtime (run `make setup`)");
        Tensor::from_array((shape.to_vec(), data)).unwrap().into_dyn()
    }

    fn settings() -> SessionSettings {
        SessionSettings::cpu(1)
    }

    #[test]
    fn classification_matches_the_host_distribution() {
        let (n, k) = (3, 10);
        let scores = values(n * k, 1);
        for (kind, temperature) in [(ScoreKind::Logits, 1.0), (ScoreKind::Logits, 2.5), (ScoreKind::Probabilities, 0.5)]
        {
            let input: Vec<f32> = match kind {
                ScoreKind::Logits => scores.clone(),
                ScoreKind::Probabilities => scores.iter().map(|v| v.abs() / 4.0).collect(),
            };
            let mut g = PostGraph::classification("t", &settings(), kind, temperature).unwrap();
            let (probs, finite) = g.classify(&value(&[n as i64, k as i64], input.clone())).unwrap();
            assert_eq!(finite, vec![true; n]);
            for (row, got) in input.chunks(k).zip(probs.chunks(k)) {
                let want = postprocess::class_distribution(row, kind, temperature);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-6, "{kind:?} T={temperature}: {a} vs {b}");
                }
            }
        }
        let mut bad = scores.clone();
        bad[k + 3] = f32::NAN;
        let mut g = PostGraph::classification("t", &settings(), ScoreKind::Logits, 1.0).unwrap();
        assert_eq!(g.classify(&value(&[n as i64, k as i64], bad)).unwrap().1, vec![true, false, true]);
    }

    #[test]
    fn one_scale_of_logits_gives_the_host_mask() {
        let (b, c, h, w) = (2, 5, 7, 9);
        let logits = values(b * c * h * w, 2);
        let batch = value(&[b as i64, c as i64, h as i64, w as i64], logits.clone());
        let mut g = PostGraph::segmentation("t", &settings(), 1, false, ScoreKind::Logits, 0.5).unwrap();
        for row in 0..b {
            let (mask, mh, mw) = g.segment(&[Held { value: &batch, row }], None).unwrap().unwrap();
            assert_eq!((mh, mw), (h, w));
            let plane = &logits[row * c * h * w..(row + 1) * c * h * w];
            assert_eq!(mask, postprocess::mask_from_logits(plane, c, 0.5));
            assert!(mask.contains(&SEG_IGNORE) && mask.iter().any(|&m| m < c as u8), "a mix of labels and ignores");
        }
        let mut bad = logits.clone();
        bad[c * h * w + 11] = f32::INFINITY;
        let batch = value(&[b as i64, c as i64, h as i64, w as i64], bad);
        assert!(g.segment(&[Held { value: &batch, row: 0 }], None).unwrap().is_some());
        assert!(g.segment(&[Held { value: &batch, row: 1 }], None).unwrap().is_none());
    }

    #[test]
    fn scales_are_resampled_and_averaged_as_on_the_host() {
        let c = 4;
        let (grid_h, grid_w) = (7, 10);
        let sizes = [(6usize, 8usize), (9, 12), (7, 10)];
        let outputs: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(i, (h, w))| values(c * h * w, 10 + i as u64)).collect();
        let batches: Vec<DynValue> = sizes
            .iter()
            .zip(&outputs)
            .map(|((h, w), d)| value(&[1, c as i64, *h as i64, *w as i64], d.clone()))
            .collect();
        let mut acc = vec![0f32; c * grid_h * grid_w];
        for ((h, w), d) in sizes.iter().zip(&outputs) {
            let mut p = d.clone();
            postprocess::softmax_planes(&mut p, c);
            let r = postprocess::resample(&p, c, *w, *h, [0.0, 0.0, *w as f32, *h as f32], grid_w, grid_h);
            acc.iter_mut().zip(&r).for_each(|(a, v)| *a += v);
        }
        acc.iter_mut().for_each(|a| *a /= sizes.len() as f32);
        let want = postprocess::mask_from_probabilities(&acc, c, 0.4);
        let mut g = PostGraph::segmentation("t", &settings(), 3, true, ScoreKind::Logits, 0.4).unwrap();
        let held: Vec<Held> = batches.iter().map(|v| Held { value: v, row: 0 }).collect();
        let (mask, h, w) = g.segment(&held, Some((grid_h, grid_w))).unwrap().unwrap();
        assert_eq!((h, w), (grid_h, grid_w));
        assert_eq!(mask, want);
        assert!(mask.contains(&SEG_IGNORE) && mask.iter().any(|&m| m < c as u8));
    }

    #[test]
    fn depth_is_resampled_as_on_the_host() {
        let (h, w) = (6, 8);
        let d = values(2 * h * w, 4);
        for rank in [3usize, 4] {
            let shape: Vec<i64> = if rank == 3 { vec![2, h as i64, w as i64] } else { vec![2, 1, h as i64, w as i64] };
            let batch = value(&shape, d.clone());
            let mut g = PostGraph::depth("t", &settings(), rank).unwrap();
            let got = g.resample_depth(Held { value: &batch, row: 1 }, (12, 16)).unwrap().unwrap();
            let want = postprocess::resample(&d[h * w..], 1, w, h, [0.0, 0.0, w as f32, h as f32], 16, 12);
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5, "rank {rank}: {a} vs {b}");
            }
        }
    }
}
