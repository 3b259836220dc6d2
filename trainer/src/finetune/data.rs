//! Downstream datasets in the formats people keep them in, read whole into memory, and their batches.
//!
//! Fine-tuning sets are small (the paper's few-shot point is a few hundred to a few thousand images), and
//! a grid trains on the same set many times, so each split is decoded once and kept decoded. Layout of a
//! task's directory (what `world downstream` writes, and what a user's own set must look like):
//!
//! ```text
//! <location>/<split>/images/<name>.<png|jpg|...>
//! <location>/<split>/labels/<stem>.png     pixel tasks: same stem as the image
//! <location>/<split>/labels.csv            classification: header `image,label`, label a class index
//! ```
//! Label encodings:
//! - segmentation: 8-bit grayscale PNG of class indices, 255 = ignore;
//! - depth: 16-bit grayscale PNG of z-depth in millimetres, 0 = invalid;
//! - normals: 16-bit RGB PNG, channel = round((n + 1) / 2 · 65535) in camera coordinates (x right, y down,
//!   z forward), (0, 0, 0) = invalid.
//!
//! Batches go through the pre-training augmentation (`data::augment`: fit into the square, scale jitter,
//! crop or pad, flip) so that a fine-tuned model sees images framed as in pre-training; a flip negates
//! the x component of the normals. Every problem names the file.

use std::fs;
use std::path::{Path, PathBuf};

use fast_image_resize::Resizer;
use image::{DynamicImage, RgbImage};

use super::config::DownstreamKind;
use crate::data::augment::{decode, render_depth, render_image, render_seg, Geometry};
use crate::data::rng::{hash_words, Rng};
use crate::data::rows::{DepthLabel, SegLabel};
use crate::data::Augmentation;
use crate::loss::{normalise_inverse_depth, IGNORE};

/// A downstream dataset that cannot be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

fn file_error(path: &Path, reason: impl Into<String>) -> DownstreamError {
    DownstreamError::File { path: path.display().to_string(), reason: reason.into() }
}

/// Unit normals at a label's own resolution; invalid pixels hold zeros.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormalsLabel {
    pub width: usize,
    pub height: usize,
    /// `[x, y, z]` per pixel, row-major.
    pub n: Vec<[f32; 3]>,
    pub valid: Vec<bool>,
}

/// One sample's label.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Label {
    Class(u16),
    Seg(SegLabel),
    Depth(DepthLabel),
    Normals(NormalsLabel),
}

/// One decoded sample.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub name: String,
    pub image: RgbImage,
    pub label: Label,
}

/// One split of a downstream task, decoded.
#[derive(Debug, Clone)]
pub struct DownstreamSet {
    pub(crate) dir: PathBuf,
    pub(crate) kind: DownstreamKind,
    pub(crate) samples: Vec<Sample>,
}

impl DownstreamSet {
    /// Reads `<location>/<split>` for a task of `kind` with `num_classes` (classification/segmentation).
    pub fn read(
        location: &str,
        split: &str,
        kind: DownstreamKind,
        num_classes: Option<usize>,
    ) -> Result<DownstreamSet, DownstreamError> {
        let dir = Path::new(location).join(split);
        let images_dir = dir.join("images");
        let mut names: Vec<String> = fs::read_dir(&images_dir)
            .map_err(|e| file_error(&images_dir, format!("cannot list the split's images: {e}")))?
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(file_error(&images_dir, "holds no images"));
        }
        let classes = match kind {
            DownstreamKind::Classification => Some(read_class_csv(&dir.join("labels.csv"), num_classes)?),
            _ => None,
        };
        let mut samples = Vec::with_capacity(names.len());
        for name in names {
            let path = images_dir.join(&name);
            let bytes = fs::read(&path).map_err(|e| file_error(&path, e.to_string()))?;
            let image = decode(&bytes).map_err(|e| file_error(&path, format!("not a readable image: {e}")))?;
            let stem = Path::new(&name).file_stem().and_then(|s| s.to_str()).unwrap_or(&name).to_owned();
            let label_path = dir.join("labels").join(format!("{stem}.png"));
            let label = match kind {
                DownstreamKind::Classification => {
                    let class = classes
                        .as_ref()
                        .and_then(|c| c.get(&name))
                        .copied()
                        .ok_or_else(|| file_error(&dir.join("labels.csv"), format!("no row for image {name:?}")))?;
                    Label::Class(class)
                }
                DownstreamKind::Segmentation => Label::Seg(read_seg(&label_path, num_classes.unwrap_or(0))?),
                DownstreamKind::Depth => Label::Depth(read_depth(&label_path)?),
                DownstreamKind::Normals => Label::Normals(read_normals(&label_path)?),
            };
            samples.push(Sample { name, image, label });
        }
        Ok(DownstreamSet { dir, kind, samples })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Where the split was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mean valid normal of the set, unit length (the constant baseline of the normals metric).
    pub(crate) fn mean_normal(&self) -> [f32; 3] {
        let mut sum = [0f64; 3];
        for s in &self.samples {
            if let Label::Normals(l) = &s.label {
                for (n, _) in l.n.iter().zip(&l.valid).filter(|(_, v)| **v) {
                    for c in 0..3 {
                        sum[c] += f64::from(n[c]);
                    }
                }
            }
        }
        let len = (sum[0] * sum[0] + sum[1] * sum[1] + sum[2] * sum[2]).sqrt().max(1e-12);
        [(sum[0] / len) as f32, (sum[1] / len) as f32, (sum[2] / len) as f32]
    }
}

fn read_class_csv(
    path: &Path,
    num_classes: Option<usize>,
) -> Result<std::collections::HashMap<String, u16>, DownstreamError> {
    let text = fs::read_to_string(path).map_err(|e| file_error(path, e.to_string()))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == "image,label" => {}
        other => {
            return Err(file_error(
                path,
                format!("the first line must be the header `image,label`, found {:?}", other.map(|l| l.1)),
            ))
        }
    }
    let k = num_classes.unwrap_or(0);
    let mut out = std::collections::HashMap::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let line_error = |reason: String| file_error(path, format!("line {}: {reason}", i + 1));
        let (image, label) =
            line.rsplit_once(',').ok_or_else(|| line_error(format!("expected `image,label`, got {line:?}")))?;
        let class: u16 =
            label.trim().parse().map_err(|_| line_error(format!("label {:?} is not a class index", label.trim())))?;
        if usize::from(class) >= k {
            return Err(line_error(format!("class {class} is outside task.num_classes = {k}")));
        }
        out.insert(image.trim().to_owned(), class);
    }
    Ok(out)
}

fn read_png(path: &Path) -> Result<DynamicImage, DownstreamError> {
    let bytes = fs::read(path).map_err(|e| file_error(path, format!("cannot read the label: {e}")))?;
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(|e| file_error(path, format!("not a readable PNG: {e}")))
}

fn read_seg(path: &Path, classes: usize) -> Result<SegLabel, DownstreamError> {
    let DynamicImage::ImageLuma8(img) = read_png(path)? else {
        return Err(file_error(path, "a segmentation mask must be an 8-bit grayscale PNG"));
    };
    if let Some(v) = img.as_raw().iter().find(|&&v| v != IGNORE && usize::from(v) >= classes) {
        return Err(file_error(path, format!("class {v} is outside task.num_classes = {classes} (255 = ignore)")));
    }
    Ok(SegLabel { width: img.width() as usize, height: img.height() as usize, mask: img.into_raw() })
}

fn read_depth(path: &Path) -> Result<DepthLabel, DownstreamError> {
    let DynamicImage::ImageLuma16(img) = read_png(path)? else {
        return Err(file_error(path, "a depth map must be a 16-bit grayscale PNG (millimetres, 0 = invalid)"));
    };
    Ok(DepthLabel {
        width: img.width() as usize,
        height: img.height() as usize,
        metric: true,
        q: img.into_raw(),
        offset: 0.0,
        scale: 0.001,
    })
}

fn read_normals(path: &Path) -> Result<NormalsLabel, DownstreamError> {
    let DynamicImage::ImageRgb16(img) = read_png(path)? else {
        return Err(file_error(path, "a normal map must be a 16-bit RGB PNG"));
    };
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut n = Vec::with_capacity(width * height);
    let mut valid = Vec::with_capacity(width * height);
    for px in img.as_raw().chunks_exact(3) {
        if px == [0, 0, 0] {
            n.push([0.0; 3]);
            valid.push(false);
            continue;
        }
        let v = [0, 1, 2].map(|c| f32::from(px[c]) / 65535.0 * 2.0 - 1.0);
        let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if !(0.9..1.1).contains(&len) {
            return Err(file_error(
                path,
                format!("pixel {} holds a normal of length {len:.3}, not a unit vector", n.len()),
            ));
        }
        n.push(v.map(|c| c / len));
        valid.push(true);
    }
    Ok(NormalsLabel { width, height, n, valid })
}

/// A batch of one downstream task in host memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct DownstreamBatch {
    pub size: usize,
    pub image_size: usize,
    /// `B·3·S·S`, normalised like pre-training.
    pub images: Vec<f32>,
    /// Classification: `B` class indices.
    pub classes: Vec<i64>,
    /// Segmentation: `B·S·S`, 255 = ignore (and padding).
    pub seg: Vec<u8>,
    /// Depth: `B·S·S` inverse depth normalised per image (training) or raw (evaluation).
    pub depth: Vec<f32>,
    /// Normals: `B·3·S·S` planes per sample.
    pub normals: Vec<f32>,
    /// Depth and normals: `B·S·S` 0/1.
    pub valid: Vec<u8>,
}

/// Sample `label` through `g` (nearest) into `[3, S·S]` planes; a flip negates x.
fn render_normals(label: &NormalsLabel, g: &Geometry, out: &mut [f32], valid: &mut [u8]) {
    let cols = g.map_columns(label.width);
    let rows = g.map_rows(label.height);
    let s = g.size as usize;
    let plane = s * s;
    let sign = if g.flip { -1.0 } else { 1.0 };
    for (y, &my) in rows.iter().enumerate() {
        for (x, &mx) in cols.iter().enumerate() {
            let src = my * label.width + mx;
            if !label.valid[src] {
                continue;
            }
            let at = y * s + g.column(x);
            let n = label.n[src];
            out[at] = sign * n[0];
            out[plane + at] = n[1];
            out[2 * plane + at] = n[2];
            valid[at] = 1;
        }
    }
}

/// Builds batches of `set` at `image_size`, augmented with `aug` (use [`Augmentation::none`] to evaluate).
pub(crate) struct Batcher<'a> {
    set: &'a DownstreamSet,
    image_size: usize,
    aug: Augmentation,
    resizer: Resizer,
}

impl<'a> Batcher<'a> {
    pub(crate) fn new(set: &'a DownstreamSet, image_size: usize, aug: Augmentation) -> Self {
        Batcher { set, image_size, aug, resizer: Resizer::new() }
    }

    /// The samples at `indices`, each augmented by its own stream keyed by `(seed, step, slot)`.
    /// `normalise_depth`: normalise inverse depth per image (the training target); evaluation keeps it raw.
    pub(crate) fn batch(
        &mut self,
        indices: &[usize],
        seed: u64,
        step: u64,
        normalise_depth: bool,
    ) -> Result<DownstreamBatch, DownstreamError> {
        let s = self.image_size;
        let (b, plane) = (indices.len(), s * s);
        let kind = self.set.kind;
        let mut out =
            DownstreamBatch { size: b, image_size: s, images: vec![0.0; b * 3 * plane], ..Default::default() };
        match kind {
            DownstreamKind::Classification => out.classes = Vec::with_capacity(b),
            DownstreamKind::Segmentation => out.seg = vec![IGNORE; b * plane],
            DownstreamKind::Depth => {
                out.depth = vec![0.0; b * plane];
                out.valid = vec![0; b * plane];
            }
            DownstreamKind::Normals => {
                out.normals = vec![0.0; b * 3 * plane];
                out.valid = vec![0; b * plane];
            }
        }
        for (slot, &i) in indices.iter().enumerate() {
            let sample = &self.set.samples[i];
            let mut rng = Rng::keyed(&[seed, step, slot as u64, 0x0066_696e_6574_756e]);
            let g = Geometry::draw(sample.image.width(), sample.image.height(), s as u32, &self.aug, &mut rng);
            let image = &mut out.images[slot * 3 * plane..(slot + 1) * 3 * plane];
            render_image(&sample.image, &g, &mut self.resizer, image)
                .map_err(|e| file_error(&self.set.dir.join("images").join(&sample.name), e))?;
            let px = slot * plane..(slot + 1) * plane;
            match &sample.label {
                Label::Class(c) => out.classes.push(i64::from(*c)),
                Label::Seg(l) => render_seg(l, &g, &mut out.seg[px]),
                Label::Depth(l) => {
                    render_depth(l, &g, &mut out.depth[px.clone()], &mut out.valid[px.clone()]);
                    if normalise_depth {
                        normalise_inverse_depth(&mut out.depth[px.clone()], &mut out.valid[px]);
                    }
                }
                Label::Normals(l) => render_normals(
                    l,
                    &g,
                    &mut out.normals[slot * 3 * plane..(slot + 1) * 3 * plane],
                    &mut out.valid[px],
                ),
            }
        }
        Ok(out)
    }
}

/// The training order: epoch after epoch, each a fresh permutation keyed by `(seed, epoch)`; returns the
/// `batch_size` samples of batch `step` (each epoch a batch touches is shuffled once).
pub(crate) fn epoch_order(len: usize, seed: u64, step: u64, batch_size: usize) -> Vec<usize> {
    let first = step as usize * batch_size;
    let mut out = Vec::with_capacity(batch_size);
    let mut epoch = None;
    let mut order: Vec<usize> = Vec::new();
    for k in first..first + batch_size {
        let (e, at) = (k / len, k % len);
        if epoch != Some(e) {
            order = (0..len).collect();
            Rng::keyed(&[hash_words(&[seed, 0x0065_706f_6368]), e as u64]).shuffle(&mut order);
            epoch = Some(e);
        }
        out.push(order[at]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_visit_every_sample_once() {
        let len = 10;
        let mut seen: Vec<usize> = (0..5).flat_map(|step| epoch_order(len, 3, step, 2)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_ne!(epoch_order(len, 3, 0, 10), epoch_order(len, 3, 1, 10), "the second epoch is reshuffled");
        assert_eq!(epoch_order(len, 3, 7, 4), epoch_order(len, 3, 7, 4));
    }

    #[test]
    fn a_flip_negates_the_x_of_normals_and_mirrors_them() {
        let label =
            NormalsLabel { width: 2, height: 1, n: vec![[0.6, 0.0, -0.8], [0.0, -1.0, 0.0]], valid: vec![true, false] };
        let plain = Geometry::new(2, 1, 2, 2, 1, 0, 0, false);
        let flipped = Geometry::new(2, 1, 2, 2, 1, 0, 0, true);
        let (mut a, mut va) = (vec![0.0; 12], vec![0; 4]);
        render_normals(&label, &plain, &mut a, &mut va);
        assert_eq!((a[0], a[4], a[8], va[0], va[1]), (0.6, 0.0, -0.8, 1, 0));
        let (mut b, mut vb) = (vec![0.0; 12], vec![0; 4]);
        render_normals(&label, &flipped, &mut b, &mut vb);
        // The valid pixel moves to column 1 with its x negated; padding rows stay invalid.
        assert_eq!((b[1], b[5], b[9], vb[1], vb[0]), (-0.6, 0.0, -0.8, 1, 0));
        assert_eq!(&vb[2..], &[0, 0]);
    }
}
