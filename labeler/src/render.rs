//! Pictures of pseudo labels: each image beside its labels, as in Figure 2 of the MuST paper.
//!
//! Why: a wrong preset (swapped colour order, 1-based class ids, depth read as disparity) produces labels
//! that pass every schema check and still teach the student nonsense. Looking at a few rows catches that in
//! seconds, so `labeler render` reads rows back from *committed* shards exactly as the trainer will, and
//! draws them with nothing but the `image` crate (no font files, no system libraries).
//!
//! Every record becomes one row picture, `<to>/<dataset>-<key>.png`, with three panels left to right:
//!
//! * **(a)** the image with its boxes (2 px, one colour per class, a tag with class name and score), under
//!   two strips: classification (top class, its probability, origin) and detection (box count, origin);
//! * **(b)** the segmentation mask in the class palette, blended half-and-half over the image; ignored
//!   pixels (255) are an opaque dark checker ([`IGNORE_CHECKER`]);
//! * **(c)** depth in the viridis colour map, near = bright: inverse-relative depth as stored, metric depth
//!   inverted first (as the teachers see it); values are stretched between the 1st and 99th percentile.
//!
//! Each strip is coloured by where the label came from ([`ORIGIN_SUPERVISED`] green, [`ORIGIN_PSEUDO`]
//! blue, [`ORIGIN_ABSENT`] grey) and says so in text, e.g. `SEG PSEUDO:DEMO-SEGMENTER`; the label's content
//! comes before the origin (`CLS BEACH 0.97 PSEUDO:...`), so a narrow panel cuts the origin, which the
//! colour still tells, and a cut is marked with `~`. Masks and depth maps are scaled with nearest
//! neighbour so their real resolution stays visible. `<to>/index.png` puts the first [`INDEX_MAX_ROWS`]
//! rows in one roughly square grid.
//!
//! Class names come from the `must.teachers` footer key of each records file (a pseudo label uses its
//! teacher's list, a supervised label the list of the teacher of its task, which the config requires to
//! share the class space); without them, ids are shown as `#3`. The order is deterministic: manifests by
//! (number of shards, shard index), files in manifest order, rows in file order.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use canvas::{draw_rect, draw_tag, draw_text, fill_rect, text_colour, viridis};
use futures::StreamExt;
use image::imageops::FilterType;
use image::{ImageFormat, Rgb, RgbImage};
use schemas::{DepthKind, DepthLabel, ImageRecord, LabelSource, ManifestFile, Origin, SegLabel, Task, SEG_IGNORE};

use crate::decode::{decode_scaled, DecodeLimits};

/// Panels are at least this many pixels high (smaller images are scaled up).
pub const MIN_PANEL_HEIGHT: u32 = 192;
/// Panels are at most this many pixels high (larger images are scaled down).
pub const MAX_PANEL_HEIGHT: u32 = 384;
/// `index.png` shows at most this many rows (the first ones), to keep it a picture rather than a mural.
pub const INDEX_MAX_ROWS: usize = 64;
/// Strip colour of a ground-truth label.
pub const ORIGIN_SUPERVISED: [u8; 3] = [46, 125, 50];
/// Strip colour of a teacher's label.
pub const ORIGIN_PSEUDO: [u8; 3] = [21, 101, 192];
/// Strip colour of a task without a label.
pub const ORIGIN_ABSENT: [u8; 3] = [90, 90, 90];
/// The two colours of the checker drawn where a mask pixel is ignored (255) or a depth value is invalid.
pub const IGNORE_CHECKER: [[u8; 3]; 2] = [[0, 0, 0], [56, 56, 56]];

const GAP: u32 = 4;
const TITLE_HEIGHT: u32 = 12;
const STRIP_HEIGHT: u32 = 11;
const CHECKER_CELL: u32 = 6;
const BACKGROUND: [u8; 3] = [24, 24, 24];
const INFO_STRIP: [u8; 3] = [44, 44, 44];
const BOX_WIDTH: u32 = 2;

/// Why rendering failed; each variant names the location or file it concerns. The large sources are boxed
/// so a `Result` stays small.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("opening output location {output}")]
    Open {
        output: String,
        #[source]
        source: Box<shards::OpenError>,
    },
    #[error("starting the I/O runtime for {output}")]
    Runtime {
        output: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listing committed shards under {output}")]
    Manifests {
        output: String,
        #[source]
        source: Box<shards::CommitError>,
    },
    #[error("reading records file {file}")]
    Read {
        file: String,
        #[source]
        source: Box<shards::ReadError>,
    },
    #[error("converting rows of records file {file}")]
    Rows {
        file: String,
        #[source]
        source: schemas::BatchError,
    },
    #[error("no committed records under {output}")]
    NoRecords { output: String },
    #[error("creating directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

/// Render up to `count` records of the committed shards under `output` into PNG files in `to`.
///
/// Returns the row pictures in record order, then `index.png`. Runs its own I/O runtime, so it must not
/// be called from async code; use [`render_location`] there.
pub fn render_shards(output: &str, to: &Path, count: usize) -> Result<Vec<PathBuf>, RenderError> {
    let loc = shards::open(output)
        .map_err(|source| RenderError::Open { output: shards::redact_url(output), source: Box::new(source) })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RenderError::Runtime { output: loc.display.clone(), source })?;
    rt.block_on(render_location(&loc, to, count))
}

/// [`render_shards`] for an opened location.
pub async fn render_location(loc: &shards::Location, to: &Path, count: usize) -> Result<Vec<PathBuf>, RenderError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let output = loc.display.clone();
    let manifests = shards::committed_manifests(loc)
        .await
        .map_err(|source| RenderError::Manifests { output: output.clone(), source: Box::new(source) })?;
    std::fs::create_dir_all(to).map_err(|source| RenderError::CreateDir { path: to.to_owned(), source })?;

    let mut written = Vec::new();
    let mut names_used = HashSet::new();
    let mut index_rows = Vec::new();
    'files: for (_, manifest) in &manifests {
        for file in manifest.files.iter().filter(|f| f.kind == ManifestFile::RECORDS) {
            let file_uri = loc.uri_of(&loc.child(&file.path));
            let read_err = |source| RenderError::Read { file: file_uri.clone(), source: Box::new(source) };
            let opened = shards::open_file(loc, &file.path, file.bytes).await.map_err(read_err)?;
            let classes = ClassNames::from_footer(&opened.key_value, &file_uri);
            let mut stream = opened.stream(&[], 16).map_err(read_err)?;
            while let Some(batch) = stream.next().await {
                let batch =
                    batch.map_err(|source| read_err(shards::ReadError::Batch { uri: file_uri.clone(), source }))?;
                let records = schemas::batch_to_records(&batch)
                    .map_err(|source| RenderError::Rows { file: file_uri.clone(), source })?;
                for record in records {
                    let row = render_record(&record, &classes);
                    let path = to.join(file_name(&record, &mut names_used));
                    row.save_with_format(&path, ImageFormat::Png)
                        .map_err(|source| RenderError::Write { path: path.clone(), source })?;
                    tracing::debug!(key = %record.key, path = %path.display(), "rendered");
                    written.push(path);
                    if index_rows.len() < INDEX_MAX_ROWS {
                        index_rows.push(row);
                    }
                    if written.len() == count {
                        break 'files;
                    }
                }
            }
        }
    }
    if written.is_empty() {
        return Err(RenderError::NoRecords { output });
    }
    let path = to.join("index.png");
    index_grid(&index_rows)
        .save_with_format(&path, ImageFormat::Png)
        .map_err(|source| RenderError::Write { path: path.clone(), source })?;
    tracing::info!(rows = written.len(), index = %path.display(), "rendered records");
    written.push(path);
    Ok(written)
}

/// `<dataset>-<key>.png` with every character outside `[A-Za-z0-9._-]` (the `/` of a key above all)
/// replaced by `_`; a name already used gets `-2`, `-3`, ... so no picture overwrites another.
fn file_name(record: &ImageRecord, used: &mut HashSet<String>) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
    };
    let stem = format!("{}-{}", clean(&record.dataset), clean(&record.key));
    let mut name = format!("{stem}.png");
    let mut n = 2;
    while !used.insert(name.clone()) {
        name = format!("{stem}-{n}.png");
        n += 1;
    }
    name
}

/// Class lists of the teachers named in a records file's footer.
#[derive(Debug, Clone, Default)]
pub struct ClassNames {
    teachers: Vec<(String, Option<Task>, Vec<String>)>,
}

impl ClassNames {
    /// Read the `must.teachers` footer key (a JSON array of `{name, task, spec: {classes}}`). A missing or
    /// malformed key only costs the names, so it is logged, not an error.
    pub fn from_footer(key_value: &[(String, String)], file: &str) -> Self {
        let Some((_, json)) = key_value.iter().find(|(k, _)| k == "must.teachers") else {
            return Self::default();
        };
        let parsed: Result<Vec<serde_json::Value>, _> = serde_json::from_str(json);
        let Ok(entries) = parsed else {
            tracing::warn!(file, "footer key must.teachers is not a JSON array; showing class ids");
            return Self::default();
        };
        let teachers = entries
            .iter()
            .map(|t| {
                let name = t["name"].as_str().unwrap_or_default().to_owned();
                let task = t["task"].as_str().and_then(parse_task);
                let classes = t["spec"]["classes"]
                    .as_array()
                    .map(|a| a.iter().map(|c| c.as_str().unwrap_or_default().to_owned()).collect())
                    .unwrap_or_default();
                (name, task, classes)
            })
            .collect();
        ClassNames { teachers }
    }

    /// Names for the label of `task` with `source`: the teacher's own list for a pseudo label, the list of
    /// the (first) teacher of the task for a supervised one.
    fn for_label(&self, task: Task, source: &LabelSource) -> &[String] {
        let found = match source {
            LabelSource::Pseudo { teacher } => self.teachers.iter().find(|(n, _, _)| n == teacher),
            LabelSource::Supervised => self.teachers.iter().find(|(_, t, _)| *t == Some(task)),
        };
        found.map(|(_, _, c)| c.as_slice()).unwrap_or_default()
    }
}

fn parse_task(s: &str) -> Option<Task> {
    match s {
        "classification" | "cls" => Some(Task::Cls),
        "detection" | "det" => Some(Task::Det),
        "segmentation" | "seg" => Some(Task::Seg),
        "depth" => Some(Task::Depth),
        _ => None,
    }
}

fn class_name(names: &[String], id: usize) -> String {
    names.get(id).filter(|n| !n.is_empty()).cloned().unwrap_or_else(|| format!("#{id}"))
}

/// Where things are in a row picture of an image of the given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    /// Width of each of the three panels.
    pub panel_width: u32,
    /// Height of each of the three panels.
    pub panel_height: u32,
    /// Top-left corner of the picture part of panels (a), (b), (c), below their strips.
    pub panels: [(u32, u32); 3],
    /// Size of the whole row picture.
    pub width: u32,
    pub height: u32,
}

/// The layout of the row picture for an image of `width` × `height` (the original size): panels are the
/// image's height clamped to [`MIN_PANEL_HEIGHT`, `MAX_PANEL_HEIGHT`], at the image's aspect ratio (width
/// clamped to 1/3..3 times the height), with a title bar and two strips above each panel.
pub fn row_layout(width: u32, height: u32) -> RowLayout {
    let (w, h) = (width.max(1), height.max(1));
    let ph = h.clamp(MIN_PANEL_HEIGHT, MAX_PANEL_HEIGHT);
    let pw = ((u64::from(w) * u64::from(ph) + u64::from(h) / 2) / u64::from(h)) as u32;
    let pw = pw.clamp(ph / 3, ph * 3);
    let top = TITLE_HEIGHT + 2 * STRIP_HEIGHT;
    let panels = [0, 1, 2].map(|i| (GAP + i * (pw + GAP), top));
    RowLayout { panel_width: pw, panel_height: ph, panels, width: GAP + 3 * (pw + GAP), height: top + ph + GAP }
}

/// Draw one record as a row picture (see the module documentation).
pub fn render_record(record: &ImageRecord, classes: &ClassNames) -> RgbImage {
    let layout = row_layout(record.width, record.height);
    let (pw, ph) = (layout.panel_width, layout.panel_height);
    let mut row = RgbImage::from_pixel(layout.width, layout.height, Rgb(BACKGROUND));
    let (image, image_note) = base_image(record, pw, ph);

    let title = format!("{} {} {}X{}{}", record.dataset, record.key, record.width, record.height, image_note);
    draw_text(&mut row, GAP, 2, &title, [235, 235, 235], layout.width - GAP);

    // (a) image, classification, detection.
    let mut a = image.clone();
    if let Some(det) = &record.det {
        let names = classes.for_label(Task::Det, &det.source);
        let mut boxes = det.boxes.clone();
        boxes.sort_by(|x, y| x.score.total_cmp(&y.score)); // the most confident on top
        for b in &boxes {
            let colour = class_colour(b.class_id);
            let (x0, y0) = ((b.x0 * pw as f32).floor() as u32, (b.y0 * ph as f32).floor() as u32);
            let (x1, y1) = ((b.x1 * pw as f32).ceil() as u32, (b.y1 * ph as f32).ceil() as u32);
            draw_rect(&mut a, x0, y0, x1.min(pw), y1.min(ph), BOX_WIDTH, colour);
            let tag = format!("{} {:.2}", class_name(names, usize::from(b.class_id)), b.score);
            let tag_y = if y0 >= STRIP_HEIGHT - 2 { y0 - (STRIP_HEIGHT - 2) } else { y0 + BOX_WIDTH };
            draw_tag(&mut a, x0, tag_y, &tag, colour);
        }
    }
    let cls_text = match &record.cls {
        Some(cls) => {
            let names = classes.for_label(Task::Cls, &cls.source);
            let (best, p) =
                cls.probs.iter().enumerate().fold((0, f32::MIN), |m, (i, &p)| if p > m.1 { (i, p) } else { m });
            format!("CLS {} {p:.2} {}", class_name(names, best), origin_text(Some(&cls.source)))
        }
        None => "CLS ABSENT".to_owned(),
    };
    let det_text = match &record.det {
        Some(det) => {
            let n = det.boxes.len();
            format!("DET {n} BOX{} {}", if n == 1 { "" } else { "ES" }, origin_text(Some(&det.source)))
        }
        None => "DET ABSENT".to_owned(),
    };
    let cls_source = record.source(Task::Cls);
    let det_source = record.source(Task::Det);
    place_panel(
        &mut row,
        &layout,
        0,
        &a,
        [(&cls_text, origin_colour(cls_source)), (&det_text, origin_colour(det_source))],
    );

    // (b) segmentation.
    let (b, seg_info) = match &record.seg {
        Some(seg) => (seg_panel(&image, seg), seg_summary(seg)),
        None => (absent_panel(&image), "NO MASK".to_owned()),
    };
    let seg_text = format!("SEG {}", origin_text(record.source(Task::Seg)));
    place_panel(
        &mut row,
        &layout,
        1,
        &b,
        [(&seg_text, origin_colour(record.source(Task::Seg))), (&seg_info, INFO_STRIP)],
    );

    // (c) depth.
    let (c, depth_info) = match &record.depth {
        Some(depth) => depth_panel(depth, pw, ph),
        None => (absent_panel(&image), "NO DEPTH".to_owned()),
    };
    let depth_text = format!("DEPTH {}", origin_text(record.source(Task::Depth)));
    place_panel(
        &mut row,
        &layout,
        2,
        &c,
        [(&depth_text, origin_colour(record.source(Task::Depth))), (&depth_info, INFO_STRIP)],
    );
    row
}

/// The image scaled to the panel, or a grey stand-in (with a note for the title) when the record holds no
/// bytes or they do not decode.
fn base_image(record: &ImageRecord, pw: u32, ph: u32) -> (RgbImage, &'static str) {
    let Some(bytes) = &record.image else {
        return (RgbImage::from_pixel(pw, ph, Rgb([110, 110, 110])), " (NO IMAGE BYTES)");
    };
    match decode_scaled(bytes, &DecodeLimits::default(), pw, ph) {
        Ok(decoded) => (image::imageops::resize(&decoded.rgb, pw, ph, FilterType::Triangle), ""),
        Err(e) => {
            tracing::warn!(key = %record.key, error = %e, "stored image does not decode; drawing a stand-in");
            (RgbImage::from_pixel(pw, ph, Rgb([110, 110, 110])), " (UNDECODABLE IMAGE)")
        }
    }
}

fn origin_text(source: Option<&LabelSource>) -> String {
    match source {
        None => Origin::Absent.as_str().to_owned(),
        Some(LabelSource::Supervised) => Origin::Supervised.as_str().to_owned(),
        Some(LabelSource::Pseudo { teacher }) => format!("pseudo:{teacher}"),
    }
}

fn origin_colour(source: Option<&LabelSource>) -> [u8; 3] {
    match source.map(LabelSource::origin) {
        Some(Origin::Supervised) => ORIGIN_SUPERVISED,
        Some(Origin::Pseudo) => ORIGIN_PSEUDO,
        Some(Origin::Absent) | None => ORIGIN_ABSENT,
    }
}

/// Copy a panel picture into the row with its two strips above it.
fn place_panel(row: &mut RgbImage, layout: &RowLayout, i: usize, picture: &RgbImage, strips: [(&str, [u8; 3]); 2]) {
    let (x, y) = layout.panels[i];
    for (k, (text, colour)) in strips.into_iter().enumerate() {
        let sy = y - 2 * STRIP_HEIGHT + k as u32 * STRIP_HEIGHT;
        fill_rect(row, x, sy, x + layout.panel_width, sy + STRIP_HEIGHT - 1, colour);
        draw_text(row, x + 2, sy + 2, text, text_colour(colour), x + layout.panel_width);
    }
    image::imageops::replace(row, picture, i64::from(x), i64::from(y));
}

fn seg_panel(image: &RgbImage, seg: &SegLabel) -> RgbImage {
    let (pw, ph) = image.dimensions();
    let (mw, mh) = (u32::from(seg.width), u32::from(seg.height));
    RgbImage::from_fn(pw, ph, |x, y| {
        let (sx, sy) = (x * mw / pw, y * mh / ph);
        let class = seg.mask[(sy * mw + sx) as usize];
        if class == SEG_IGNORE {
            return Rgb(checker(x, y));
        }
        let c = class_colour(u16::from(class));
        let p = image.get_pixel(x, y).0;
        Rgb([0, 1, 2].map(|k| ((u16::from(p[k]) + u16::from(c[k])) / 2) as u8))
    })
}

fn seg_summary(seg: &SegLabel) -> String {
    let mut seen = [false; 256];
    let mut ignored = 0usize;
    for &c in &seg.mask {
        seen[usize::from(c)] = true;
        ignored += usize::from(c == SEG_IGNORE);
    }
    let classes = seen[..usize::from(SEG_IGNORE)].iter().filter(|&&s| s).count();
    let pct = 100.0 * ignored as f64 / seg.mask.len().max(1) as f64;
    format!("{}X{} {} CLASSES {:.0}% IGNORED", seg.width, seg.height, classes, pct)
}

/// Depth in viridis, near = bright, nearest-neighbour scaled; non-positive metric depth is invalid.
fn depth_panel(depth: &DepthLabel, pw: u32, ph: u32) -> (RgbImage, String) {
    let nearness: Vec<Option<f32>> = depth
        .values
        .iter()
        .map(|&v| match depth.kind {
            DepthKind::InverseRelative => v.is_finite().then_some(v),
            DepthKind::Metric => (v.is_finite() && v > 0.0).then(|| 1.0 / v),
        })
        .collect();
    let mut valid: Vec<f32> = nearness.iter().flatten().copied().collect();
    valid.sort_by(f32::total_cmp);
    let pick = |q: f64| valid.get(((valid.len().saturating_sub(1)) as f64 * q).round() as usize).copied();
    let (lo, hi) = (pick(0.01).unwrap_or(0.0), pick(0.99).unwrap_or(1.0));
    let (mw, mh) = (u32::from(depth.width), u32::from(depth.height));
    let picture = RgbImage::from_fn(pw, ph, |x, y| {
        let (sx, sy) = (x * mw / pw, y * mh / ph);
        match nearness[(sy * mw + sx) as usize] {
            None => Rgb(checker(x, y)),
            Some(v) => {
                let t = if hi - lo > f32::EPSILON { (v - lo) / (hi - lo) } else { 0.5 };
                Rgb(viridis(t))
            }
        }
    });
    let info = match depth.kind {
        DepthKind::InverseRelative => format!("INV-REL {}X{} NEAR=BRIGHT", depth.width, depth.height),
        DepthKind::Metric => {
            let metres = |n: f32| if n > 0.0 { 1.0 / n } else { f32::INFINITY };
            format!("METRIC {}X{} {:.1}-{:.1}M", depth.width, depth.height, metres(hi), metres(lo))
        }
    };
    (picture, info)
}

/// A task without a label: the image, darkened, so the row still lines up.
fn absent_panel(image: &RgbImage) -> RgbImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        p.0 = p.0.map(|v| v / 4);
    }
    out
}

/// The first rows in a grid of about as many columns as makes it square (rows are ~3:1).
fn index_grid(rows: &[RgbImage]) -> RgbImage {
    let n = rows.len().max(1);
    let cols = ((n as f64 / 3.0).sqrt().round() as usize).clamp(1, n);
    let lines = n.div_ceil(cols);
    let cell_w = rows.iter().map(RgbImage::width).max().unwrap_or(1);
    let cell_h = rows.iter().map(RgbImage::height).max().unwrap_or(1);
    let mut grid = RgbImage::from_pixel(cols as u32 * cell_w, lines as u32 * cell_h, Rgb(BACKGROUND));
    for (i, row) in rows.iter().enumerate() {
        let (cx, cy) = ((i % cols) as u32 * cell_w, (i / cols) as u32 * cell_h);
        image::imageops::replace(&mut grid, row, i64::from(cx), i64::from(cy));
    }
    grid
}

/// The colour of a class in boxes and masks: 20 well-separated colours, darkened in steps for ids ≥ 20.
pub fn class_colour(class_id: u16) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 20] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
        [170, 255, 195],
        [128, 128, 0],
        [255, 215, 180],
        [0, 0, 128],
        [128, 128, 128],
    ];
    let base = PALETTE[usize::from(class_id) % PALETTE.len()];
    let shade = (usize::from(class_id) / PALETTE.len()) % 3;
    base.map(|v| (u32::from(v) * (4 - shade as u32) / 4) as u8)
}

fn checker(x: u32, y: u32) -> [u8; 3] {
    IGNORE_CHECKER[((x / CHECKER_CELL + y / CHECKER_CELL) % 2) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_layout_keeps_the_aspect_ratio_within_bounds() {
        let l = row_layout(64, 48);
        assert_eq!((l.panel_width, l.panel_height), (256, 192));
        assert_eq!(l.width, GAP + 3 * (256 + GAP));
        let big = row_layout(4000, 3000);
        assert_eq!((big.panel_width, big.panel_height), (512, 384));
        let thin = row_layout(10, 1000);
        assert_eq!(thin.panel_width, 384 / 3);
    }

    #[test]
    fn render_file_names_are_flat_and_unique() {
        let mut used = HashSet::new();
        let r = ImageRecord::new("a/b c.jpg", "ds", "file:///x", 1, 1);
        assert_eq!(file_name(&r, &mut used), "ds-a_b_c.jpg.png");
        assert_eq!(file_name(&r, &mut used), "ds-a_b_c.jpg-2.png");
    }

    #[test]
    fn render_class_names_follow_the_label_source() {
        let json = r#"[{"name":"seg-t","task":"segmentation","spec":{"classes":["sky","ground"]}},
                       {"name":"cls-t","task":"classification","spec":{"classes":["cat"]}}]"#;
        let names = ClassNames::from_footer(&[("must.teachers".into(), json.into())], "f");
        assert_eq!(names.for_label(Task::Seg, &LabelSource::pseudo("seg-t")), ["sky", "ground"]);
        assert_eq!(names.for_label(Task::Cls, &LabelSource::Supervised), ["cat"]);
        assert!(names.for_label(Task::Det, &LabelSource::Supervised).is_empty());
        assert_eq!(class_name(&[], 3), "#3");
    }
}
