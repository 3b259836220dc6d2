//! Readers for the label formats datasets already come with, so supervised labels need no conversion
//! step: a `key,class` CSV or class folders (ImageFolder) for classification, COCO JSON for boxes, 8-bit
//! PNG masks for segmentation, and 16-bit PNG or `.npy` maps for metric depth.
//!
//! Two kinds of failure, because they call for different actions:
//! - a whole-dataset file (CSV, COCO JSON) that cannot be used is a [`LabelFileError`] naming the file and
//!   the line or field: it stops the run before any image is read, since every row would be wrong;
//! - one image's label that is missing or unusable is a [`LabelProblem`] naming the label file and the image
//!   key: the pipeline turns it into an error row (`missing_label` or `invalid_label`) and carries on.
//!
//! Class names are mapped to the class list of the teacher of the same task, so supervised and pseudo labels
//! of a task share one class index. Label files are as untrusted as images: sizes are checked against the
//! image before any pixel buffer is allocated.

use std::collections::HashMap;
use std::fmt;
use std::io::Cursor;

use schemas::DetBox;
use serde::Deserialize;

/// A whole-dataset label file that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct LabelFileError {
    pub file: String,
    /// What is wrong, with the line or field.
    pub reason: String,
}

/// Whether an image's label is absent or present but unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// No label file, row or entry for the image.
    Missing,
    /// The label exists but is unreadable, has the wrong size or an unknown class.
    Invalid,
}

/// One image's supervised label that cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelProblem {
    pub kind: ProblemKind,
    /// The label file (or class folder) that was looked at.
    pub file: String,
    /// The image's key.
    pub key: String,
    pub reason: String,
}

impl LabelProblem {
    /// The error row's reason code.
    pub fn reason_code(&self) -> &'static str {
        match self.kind {
            ProblemKind::Missing => "missing_label",
            ProblemKind::Invalid => "invalid_label",
        }
    }
}

impl fmt::Display for LabelProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "label {} of image {:?}: {}", self.file, self.key, self.reason)
    }
}

impl std::error::Error for LabelProblem {}

/// The label file and image a per-image reader works on, for its messages.
#[derive(Debug, Clone, Copy)]
pub struct LabelRef<'a> {
    pub file: &'a str,
    pub key: &'a str,
}

impl LabelRef<'_> {
    fn problem(&self, kind: ProblemKind, reason: String) -> LabelProblem {
        LabelProblem { kind, file: self.file.to_owned(), key: self.key.to_owned(), reason }
    }
    fn invalid(&self, reason: String) -> LabelProblem {
        self.problem(ProblemKind::Invalid, reason)
    }
}

/// A short rendering of a class list for messages.
fn class_list(classes: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = classes.iter().take(SHOWN).map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    if classes.len() > SHOWN {
        s.push_str(&format!(", … ({} in all)", classes.len()));
    }
    format!("[{s}]")
}

/// The class id `class` names among `classes`: a class name, or else a class index below their count.
pub fn parse_class(class: &str, classes: &[String]) -> Option<u16> {
    let class = class.trim();
    match classes.iter().position(|c| c == class) {
        Some(i) => Some(i as u16),
        None => class.parse::<u16>().ok().filter(|&id| (id as usize) < classes.len()),
    }
}

fn class_index(classes: &[String]) -> HashMap<&str, u16> {
    classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u16)).collect()
}

/// One class label per image key from a CSV file `key,class`.
///
/// `class` is a name from the classification teacher's class list, or else a class index below its length.
/// A first line whose key is `key` is a header. The key is everything before the last comma, so keys may
/// contain commas; fields may be double-quoted; blank lines are skipped. A key given twice is an error.
#[derive(Debug, Clone)]
pub struct ClassTable {
    file: String,
    by_key: HashMap<String, u16>,
}

impl ClassTable {
    /// Parse `bytes`, the contents of `file`.
    pub fn parse(file: &str, bytes: &[u8], classes: &[String]) -> Result<Self, LabelFileError> {
        let bad = |reason: String| LabelFileError { file: file.to_owned(), reason };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let index = class_index(classes);
        let mut by_key = HashMap::new();
        let mut first_line = HashMap::new();
        let mut seen_content = false;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let (key, class) =
                line.rsplit_once(',').ok_or_else(|| bad(format!("line {n}: expected `key,class`, found {line:?}")))?;
            let (key, class) = (unquote(key), unquote(class));
            let header = !seen_content && key.eq_ignore_ascii_case("key");
            seen_content = true;
            if header {
                continue;
            }
            if key.is_empty() {
                return Err(bad(format!("line {n}: the key is empty")));
            }
            let id = match index.get(class.as_str()) {
                Some(&id) => id,
                None => match class.parse::<u16>() {
                    Ok(id) if (id as usize) < classes.len() => id,
                    _ => {
                        return Err(bad(format!(
                            "line {n}: class {class:?} of key {key:?} is neither one of the classification teacher's \
                             {} classes {} nor a class index below {}",
                            classes.len(),
                            class_list(classes),
                            classes.len()
                        )))
                    }
                },
            };
            if let Some(first) = first_line.insert(key.clone(), n) {
                return Err(bad(format!("line {n}: key {key:?} is listed again (first on line {first})")));
            }
            by_key.insert(key, id);
        }
        Ok(Self { file: file.to_owned(), by_key })
    }

    /// The class of image `key`.
    pub fn class_of(&self, key: &str) -> Result<u16, LabelProblem> {
        self.by_key.get(key).copied().ok_or_else(|| LabelProblem {
            kind: ProblemKind::Missing,
            file: self.file.clone(),
            key: key.to_owned(),
            reason: "the CSV has no row for this key".into(),
        })
    }

    /// Number of keys with a class.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key has a class.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// A CSV field without surrounding whitespace and quotes (`""` inside quotes is one `"`).
fn unquote(field: &str) -> String {
    let field = field.trim();
    match field.strip_prefix('"').and_then(|f| f.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => field.to_owned(),
    }
}

/// Classes from folder names (the ImageFolder layout): the class of key `cat/001.jpg` is `cat`, the first
/// folder of the key, by name in the classification teacher's class list.
#[derive(Debug, Clone)]
pub struct ClassFolders {
    /// The dataset's image location, for messages.
    root: String,
    by_name: HashMap<String, u16>,
    classes: Vec<String>,
}

impl ClassFolders {
    pub fn new(root: &str, classes: &[String]) -> Self {
        Self {
            root: root.trim_end_matches('/').to_owned(),
            by_name: classes.iter().enumerate().map(|(i, c)| (c.clone(), i as u16)).collect(),
            classes: classes.to_vec(),
        }
    }

    /// The class of image `key`.
    pub fn class_of(&self, key: &str) -> Result<u16, LabelProblem> {
        let Some((folder, _)) = key.split_once('/') else {
            return Err(LabelProblem {
                kind: ProblemKind::Missing,
                file: format!("{}/{key}", self.root),
                key: key.to_owned(),
                reason: "the image is not inside a class folder".into(),
            });
        };
        self.by_name.get(folder).copied().ok_or_else(|| LabelProblem {
            kind: ProblemKind::Invalid,
            file: format!("{}/{folder}", self.root),
            key: key.to_owned(),
            reason: format!(
                "folder {folder:?} is not one of the classification teacher's {} classes {}",
                self.classes.len(),
                class_list(&self.classes)
            ),
        })
    }
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: Option<u32>,
    height: Option<u32>,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    id: Option<u64>,
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// The boxes of one image of a COCO file: pixel `[x, y, w, h]` and the teacher's class index.
#[derive(Debug, Clone)]
struct CocoEntry {
    width: Option<u32>,
    height: Option<u32>,
    boxes: Vec<([f64; 4], u16)>,
}

/// Boxes per image from a COCO instances file.
///
/// `images[].file_name` is the image's key (its path under the dataset location); `annotations[].bbox` is
/// `[x, y, width, height]` in pixels of that image; `category_id` is mapped through `categories[].name` to the
/// detection teacher's class list. Crowd annotations (`iscrowd = 1`) are skipped, as detection training
/// does; boxes are clipped to the image and those left without area are dropped. An image listed in
/// `images` without annotations is labelled "no objects"; an image not listed at all has no label.
#[derive(Debug, Clone)]
pub struct CocoBoxes {
    file: String,
    by_key: HashMap<String, CocoEntry>,
}

impl CocoBoxes {
    /// Parse `bytes`, the contents of `file`.
    pub fn parse(file: &str, bytes: &[u8], classes: &[String]) -> Result<Self, LabelFileError> {
        let bad = |reason: String| LabelFileError { file: file.to_owned(), reason };
        let coco: CocoFile = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a COCO JSON file: {e}")))?;
        let index = class_index(classes);
        let mut categories: HashMap<u64, &str> = HashMap::new();
        for (i, c) in coco.categories.iter().enumerate() {
            if categories.insert(c.id, &c.name).is_some() {
                return Err(bad(format!("categories[{i}]: id {} appears twice", c.id)));
            }
        }
        let mut by_id: HashMap<u64, CocoEntry> = HashMap::new();
        let mut keys: HashMap<u64, String> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, im) in coco.images.iter().enumerate() {
            if let Some(first) = names.insert(&im.file_name, i) {
                return Err(bad(format!("images[{i}]: file_name {:?} is also images[{first}]", im.file_name)));
            }
            if by_id.insert(im.id, CocoEntry { width: im.width, height: im.height, boxes: Vec::new() }).is_some() {
                return Err(bad(format!("images[{i}]: id {} appears twice", im.id)));
            }
            keys.insert(im.id, im.file_name.clone());
        }
        for (i, a) in coco.annotations.iter().enumerate() {
            let at = match a.id {
                Some(id) => format!("annotations[{i}] (id {id})"),
                None => format!("annotations[{i}]"),
            };
            let entry = by_id
                .get_mut(&a.image_id)
                .ok_or_else(|| bad(format!("{at}: image_id {} is not in `images`", a.image_id)))?;
            let name = categories
                .get(&a.category_id)
                .ok_or_else(|| bad(format!("{at}: category_id {} is not in `categories`", a.category_id)))?;
            let class = *index.get(name).ok_or_else(|| {
                bad(format!(
                    "category {name:?} (id {}, used by {at}) is not one of the detection teacher's {} classes {}",
                    a.category_id,
                    classes.len(),
                    class_list(classes)
                ))
            })?;
            let bbox: [f64; 4] =
                a.bbox.as_slice().try_into().map_err(|_| {
                    bad(format!("{at}: bbox has {} numbers, expected [x, y, width, height]", a.bbox.len()))
                })?;
            if bbox.iter().any(|v| !v.is_finite()) || bbox[2] < 0.0 || bbox[3] < 0.0 {
                return Err(bad(format!("{at}: bbox {bbox:?} is not finite [x, y, width >= 0, height >= 0]")));
            }
            if a.iscrowd == 0 {
                entry.boxes.push((bbox, class));
            }
        }
        let by_key =
            by_id.into_iter().map(|(id, entry)| (keys.remove(&id).expect("every id has a key"), entry)).collect();
        Ok(Self { file: file.to_owned(), by_key })
    }

    /// The boxes of image `key`, `width`×`height` pixels, normalised to `[0, 1]`.
    pub fn boxes(&self, key: &str, width: u32, height: u32) -> Result<Vec<DetBox>, LabelProblem> {
        let at = LabelRef { file: &self.file, key };
        let entry = self.by_key.get(key).ok_or_else(|| {
            at.problem(ProblemKind::Missing, "no entry in `images` has this key as its `file_name`".into())
        })?;
        if let (Some(w), Some(h)) = (entry.width, entry.height) {
            if (w, h) != (width, height) {
                return Err(at.invalid(format!("`images` says {w}x{h} but the image is {width}x{height}")));
            }
        }
        let (fw, fh) = (width as f64, height as f64);
        let norm = |v: f64, side: f64| (v / side).clamp(0.0, 1.0) as f32;
        Ok(entry
            .boxes
            .iter()
            .map(|&([x, y, w, h], class_id)| DetBox {
                x0: norm(x, fw),
                y0: norm(y, fh),
                x1: norm(x + w, fw),
                y1: norm(y + h, fh),
                class_id,
                score: 1.0,
            })
            .filter(|b| b.x1 > b.x0 && b.y1 > b.y0)
            .collect())
    }

    /// Number of images listed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no image is listed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The pixels of a PNG that must be `width`×`height` with one of `accepted` (colour type, bit depth), without
/// palette expansion (a palette PNG gives its indices). The size is checked before the pixels are decoded.
fn decode_png_raw(
    at: LabelRef,
    bytes: &[u8],
    width: u32,
    height: u32,
    accepted: &[(png::ColorType, png::BitDepth)],
    expected: &str,
) -> Result<Vec<u8>, LabelProblem> {
    let unreadable = |e: png::DecodingError| at.invalid(format!("not a readable PNG: {e}"));
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let info = decoder.read_header_info().map_err(unreadable)?;
    let (w, h, color, depth) = (info.width, info.height, info.color_type, info.bit_depth);
    if (w, h) != (width, height) {
        return Err(at.invalid(format!("is {w}x{h} but the image is {width}x{height}")));
    }
    if !accepted.contains(&(color, depth)) {
        return Err(at.invalid(format!("is a {color:?} PNG of {} bits, expected {expected}", depth as u8)));
    }
    let mut reader = decoder.read_info().map_err(unreadable)?;
    let size = reader.output_buffer_size().ok_or_else(|| at.invalid("is too large to decode".into()))?;
    let mut buf = vec![0u8; size];
    reader.next_frame(&mut buf).map_err(unreadable)?;
    Ok(buf)
}

/// A segmentation mask: an 8-bit grayscale (or palette, as in Pascal VOC) PNG of `width`×`height` whose
/// values are class ids of the segmentation teacher's `classes`, with 255 meaning "no label".
pub fn decode_mask(
    at: LabelRef,
    bytes: &[u8],
    width: u32,
    height: u32,
    classes: usize,
) -> Result<Vec<u8>, LabelProblem> {
    use png::{BitDepth, ColorType};
    let accepted = [(ColorType::Grayscale, BitDepth::Eight), (ColorType::Indexed, BitDepth::Eight)];
    let mask = decode_png_raw(at, bytes, width, height, &accepted, "8-bit grayscale or palette")?;
    if let Some(i) = mask.iter().position(|&v| v != 255 && v as usize >= classes) {
        let (x, y) = (i as u32 % width, i as u32 / width);
        return Err(at.invalid(format!(
            "pixel ({x}, {y}) has class {}, not below the segmentation teacher's {classes} classes nor 255 (ignore)",
            mask[i]
        )));
    }
    Ok(mask)
}

/// Metric depth from a 16-bit grayscale PNG of `width`×`height`: value × `scale` metres (0 stays 0, which
/// datasets use for "no depth").
pub fn decode_depth_png16(
    at: LabelRef,
    bytes: &[u8],
    width: u32,
    height: u32,
    scale: f32,
) -> Result<Vec<f32>, LabelProblem> {
    let accepted = [(png::ColorType::Grayscale, png::BitDepth::Sixteen)];
    let raw = decode_png_raw(at, bytes, width, height, &accepted, "16-bit grayscale")?;
    // PNG samples are big-endian.
    Ok(raw.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as f32 * scale).collect())
}

/// Metric depth from a NumPy `.npy` array of `width`×`height` (shape `(height, width)`, optionally with
/// extra axes of length 1), little-endian float32, float64 or uint16, C order: value × `scale` metres.
/// Values must be finite and not negative.
pub fn decode_depth_npy(
    at: LabelRef,
    bytes: &[u8],
    width: u32,
    height: u32,
    scale: f32,
) -> Result<Vec<f32>, LabelProblem> {
    let npy = Npy::parse(bytes).map_err(|reason| at.invalid(format!("not a usable .npy file: {reason}")))?;
    let mut dims = npy.shape.clone();
    while dims.len() > 2 && dims[0] == 1 {
        dims.remove(0);
    }
    while dims.len() > 2 && dims[dims.len() - 1] == 1 {
        dims.pop();
    }
    if dims != [height as u64, width as u64] {
        return Err(at.invalid(format!(
            "has shape {:?} but the image is {width}x{height} (shape ({height}, {width}))",
            npy.shape
        )));
    }
    let n = width as usize * height as usize;
    if npy.data.len() != n * npy.dtype.size() {
        return Err(at.invalid(format!(
            "holds {} data bytes, expected {} for shape {:?}",
            npy.data.len(),
            n * npy.dtype.size(),
            npy.shape
        )));
    }
    let values: Vec<f32> = match npy.dtype {
        NpyType::F4 => npy.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * scale).collect(),
        NpyType::F8 => npy
            .data
            .chunks_exact(8)
            .map(|b| (f64::from_le_bytes(b.try_into().expect("8 bytes")) * scale as f64) as f32)
            .collect(),
        NpyType::U2 => npy.data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as f32 * scale).collect(),
    };
    if let Some(i) = values.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        let (x, y) = (i as u32 % width, i as u32 / width);
        return Err(at.invalid(format!("pixel ({x}, {y}) has depth {}, expected finite and >= 0", values[i])));
    }
    Ok(values)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NpyType {
    F4,
    F8,
    U2,
}

impl NpyType {
    fn size(self) -> usize {
        match self {
            NpyType::F4 => 4,
            NpyType::F8 => 8,
            NpyType::U2 => 2,
        }
    }
}

/// The parts of a `.npy` file (format versions 1 to 3) this module reads.
struct Npy<'a> {
    dtype: NpyType,
    shape: Vec<u64>,
    data: &'a [u8],
}

impl<'a> Npy<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let rest = bytes.strip_prefix(b"\x93NUMPY").ok_or("no \\x93NUMPY magic")?;
        let (&major, rest) = rest.split_first().ok_or("truncated header")?;
        let rest = rest.get(1..).ok_or("truncated header")?;
        let (len, rest) = match major {
            1 => {
                (u16::from_le_bytes(rest.get(..2).ok_or("truncated header")?.try_into().unwrap()) as usize, &rest[2..])
            }
            2 | 3 => {
                (u32::from_le_bytes(rest.get(..4).ok_or("truncated header")?.try_into().unwrap()) as usize, &rest[4..])
            }
            v => return Err(format!("format version {v} is not supported")),
        };
        let header = rest.get(..len).ok_or("truncated header")?;
        let data = &rest[len..];
        let header = std::str::from_utf8(header).map_err(|_| "the header is not text")?;
        let descr = dict_value(header, "descr").ok_or("the header has no 'descr'")?;
        let descr = descr.split(['\'', '"']).nth(1).ok_or("'descr' is not a string")?;
        let dtype = match descr {
            "<f4" => NpyType::F4,
            "<f8" => NpyType::F8,
            "<u2" => NpyType::U2,
            other => {
                return Err(format!(
                    "dtype {other:?} is not supported (expected little-endian float32 '<f4', float64 '<f8' or \
                     uint16 '<u2')"
                ))
            }
        };
        let fortran = dict_value(header, "fortran_order").ok_or("the header has no 'fortran_order'")?;
        if fortran.starts_with("True") {
            return Err("Fortran-order arrays are not supported (save a C-order array)".into());
        }
        let shape = dict_value(header, "shape").ok_or("the header has no 'shape'")?;
        let inner = shape.strip_prefix('(').and_then(|s| s.split_once(')')).ok_or("'shape' is not a tuple")?.0;
        let shape = inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().map_err(|_| format!("shape entry {s:?} is not a number")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { dtype, shape, data })
    }
}

/// The text after `'key':` in a Python dict literal, leading spaces removed.
fn dict_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let after = &header[at + key.len() + 2..];
    Some(after.trim_start().strip_prefix(':')?.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const AT: LabelRef<'static> = LabelRef { file: "s3://b/seg/a/x.png", key: "a/x.jpg" };

    fn assert_names_file_and_key(p: &LabelProblem) {
        let s = p.to_string();
        assert!(s.contains(&p.file) && s.contains(&p.key), "{s}");
    }

    #[test]
    fn csv_maps_names_and_indices_and_skips_a_header() {
        let classes = names(&["cat", "dog", "7"]);
        let csv = "\u{feff}key,class\r\na.jpg,dog\r\n\n\"b,1.jpg\",cat\nsub/c.png, 0 \nd.jpg,7\ne.jpg,\"1\"\n";
        let t = ClassTable::parse("labels.csv", csv.as_bytes(), &classes).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t.class_of("a.jpg").unwrap(), 1);
        assert_eq!(t.class_of("b,1.jpg").unwrap(), 0, "quoted keys may hold commas");
        assert_eq!(t.class_of("sub/c.png").unwrap(), 0, "an index when no class has that name");
        assert_eq!(t.class_of("d.jpg").unwrap(), 2, "a name wins over an index");
        assert_eq!(t.class_of("e.jpg").unwrap(), 1);
        let missing = t.class_of("zzz.jpg").unwrap_err();
        assert_eq!((missing.kind, missing.reason_code()), (ProblemKind::Missing, "missing_label"));
        assert_eq!(missing.file, "labels.csv");
        assert_names_file_and_key(&missing);
        // Without a header the first line is a label.
        let t = ClassTable::parse("l.csv", b"x.jpg,cat", &classes).unwrap();
        assert_eq!(t.class_of("x.jpg").unwrap(), 0);
    }

    #[test]
    fn bad_csv_errors_name_the_file_and_line() {
        let classes = names(&["cat", "dog"]);
        for (csv, wants) in [
            ("key,class\na.jpg,cat\nb.jpg,bird\n", ["line 3", "\"bird\"", "b.jpg"]),
            ("a.jpg,cat\nb.jpg,2\n", ["line 2", "\"2\"", "below 2"]),
            ("a.jpg,cat\nno comma here\n", ["line 2", "key,class", "no comma"]),
            ("a.jpg,cat\nb.jpg,dog\na.jpg,dog\n", ["line 3", "a.jpg", "line 1"]),
            ("a.jpg,cat\n,dog\n", ["line 2", "empty", "key"]),
        ] {
            let err = ClassTable::parse("/data/labels.csv", csv.as_bytes(), &classes).unwrap_err();
            let s = err.to_string();
            assert!(s.starts_with("/data/labels.csv: "), "{s}");
            for w in wants {
                assert!(s.contains(w), "{s:?} lacks {w:?}");
            }
        }
        let err = ClassTable::parse("l.csv", &[0xff, 0xfe, b','], &classes).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn folders_name_the_class() {
        let f = ClassFolders::new("s3://b/train/", &names(&["cat", "dog"]));
        assert_eq!(f.class_of("dog/001.jpg").unwrap(), 1);
        assert_eq!(f.class_of("cat/deeper/002.jpg").unwrap(), 0, "the first folder counts");
        let unknown = f.class_of("bird/003.jpg").unwrap_err();
        assert_eq!(unknown.reason_code(), "invalid_label");
        assert_eq!(unknown.file, "s3://b/train/bird");
        assert!(unknown.reason.contains("\"bird\"") && unknown.reason.contains("\"dog\""), "{unknown}");
        assert_names_file_and_key(&unknown);
        let top = f.class_of("004.jpg").unwrap_err();
        assert_eq!(top.reason_code(), "missing_label");
        assert_names_file_and_key(&top);
    }

    const COCO: &str = r#"{
        "info": {"year": 2024}, "licenses": [],
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 200, "height": 100},
            {"id": 11, "file_name": "sub/b.jpg"},
            {"id": 12, "file_name": "empty.jpg", "width": 50, "height": 50}
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [20, 10, 50, 40], "area": 2000, "iscrowd": 0,
             "segmentation": [[0, 0, 1, 1, 2, 2]]},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [150, 60, 80, 80], "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 200, 100], "iscrowd": 1},
            {"id": 4, "image_id": 11, "category_id": 7, "bbox": [5, 5, 0, 10]},
            {"id": 5, "image_id": 11, "category_id": 3, "bbox": [1, 2, 3, 4]}
        ],
        "categories": [{"id": 3, "name": "person", "supercategory": "x"}, {"id": 7, "name": "car"},
                       {"id": 9, "name": "unused-and-unknown"}]
    }"#;

    #[test]
    fn coco_boxes_are_normalised_and_mapped_by_category_name() {
        let classes = names(&["car", "bike", "person"]);
        let c = CocoBoxes::parse("instances.json", COCO.as_bytes(), &classes).unwrap();
        assert_eq!(c.len(), 3);
        let a = c.boxes("a.jpg", 200, 100).unwrap();
        assert_eq!(a.len(), 2, "the crowd box is skipped: {a:?}");
        assert_eq!((a[0].x0, a[0].y0, a[0].x1, a[0].y1, a[0].class_id), (0.1, 0.1, 0.35, 0.5, 0));
        assert_eq!(a[0].score, 1.0);
        // Clipped at the right and bottom edges; `person` is class 2 of the teacher, id 3 in the file.
        assert_eq!((a[1].x0, a[1].y0, a[1].x1, a[1].y1, a[1].class_id), (0.75, 0.6, 1.0, 1.0, 2));
        // No size in `images`: the image's size is used; the zero-width box is dropped.
        let b = c.boxes("sub/b.jpg", 10, 20).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].x0, b[0].y0, b[0].x1, b[0].y1, b[0].class_id), (0.1, 0.1, 0.4, 0.3, 2));
        assert!(c.boxes("empty.jpg", 50, 50).unwrap().is_empty(), "listed without boxes: no objects");

        let wrong_size = c.boxes("a.jpg", 100, 100).unwrap_err();
        assert_eq!(wrong_size.reason_code(), "invalid_label");
        assert!(wrong_size.reason.contains("200x100") && wrong_size.reason.contains("100x100"), "{wrong_size}");
        assert_names_file_and_key(&wrong_size);
        let missing = c.boxes("other.jpg", 10, 10).unwrap_err();
        assert_eq!((missing.reason_code(), missing.file.as_str()), ("missing_label", "instances.json"));
        assert_names_file_and_key(&missing);
    }

    #[test]
    fn bad_coco_errors_name_the_file_and_field() {
        let classes = names(&["car", "person"]);
        let err = CocoBoxes::parse("/d/instances.json", COCO.as_bytes(), &names(&["car", "bike"])).unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("/d/instances.json: ") && s.contains("\"person\"") && s.contains("id 3"), "{s}");
        let with = |from: &str, to: &str| COCO.replacen(from, to, 1);
        for (text, wants) in [
            (with("\"image_id\": 11, \"category_id\": 3", "\"image_id\": 99, \"category_id\": 3"), "image_id 99"),
            (with("\"category_id\": 7, \"bbox\": [5", "\"category_id\": 8, \"bbox\": [5"), "category_id 8"),
            (with("[1, 2, 3, 4]", "[1, 2, 3]"), "annotations[4] (id 5): bbox has 3 numbers"),
            (with("[1, 2, 3, 4]", "[1, 2, -3, 4]"), "annotations[4] (id 5)"),
            (with("\"sub/b.jpg\"", "\"a.jpg\""), "images[1]: file_name \"a.jpg\""),
            (with("\"id\": 11", "\"id\": 10"), "images[1]: id 10"),
            (with("\"images\"", "\"pictures\""), "missing field `images`"),
            (with("\"width\": 200,", "\"width\": 200,,"), "line 4"),
        ] {
            let err = CocoBoxes::parse("/d/instances.json", text.as_bytes(), &classes).unwrap_err();
            let s = err.to_string();
            assert!(s.starts_with("/d/instances.json: ") && s.contains(wants), "{s:?} lacks {wants:?}");
        }
    }

    fn png_bytes<P: image::PixelWithColorType>(img: &image::ImageBuffer<P, Vec<P::Subpixel>>) -> Vec<u8>
    where
        [P::Subpixel]: image::EncodableLayout,
    {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn masks_give_class_ids_with_255_as_ignore() {
        let mask = image::GrayImage::from_fn(4, 3, |x, y| image::Luma([if x == 3 { 255 } else { (x + y) as u8 }]));
        let got = decode_mask(AT, &png_bytes(&mask), 4, 3, 5).unwrap();
        assert_eq!(got, mask.as_raw().clone());

        let too_high = decode_mask(AT, &png_bytes(&mask), 4, 3, 4).unwrap_err();
        assert_eq!(too_high.reason_code(), "invalid_label");
        assert!(too_high.reason.contains("pixel (2, 2) has class 4"), "{too_high}");
        assert_names_file_and_key(&too_high);
        let wrong_size = decode_mask(AT, &png_bytes(&mask), 3, 4, 5).unwrap_err();
        assert!(wrong_size.reason.contains("4x3 but the image is 3x4"), "{wrong_size}");
        let rgb = image::RgbImage::new(4, 3);
        let not_gray = decode_mask(AT, &png_bytes(&rgb), 4, 3, 5).unwrap_err();
        assert!(not_gray.reason.contains("8-bit grayscale"), "{not_gray}");
        let broken = decode_mask(AT, b"\x89PNG\r\n\x1a\nnope", 4, 3, 5).unwrap_err();
        assert!(broken.reason.contains("not a readable PNG"), "{broken}");
        assert_names_file_and_key(&broken);
    }

    #[test]
    fn palette_masks_give_their_indices() {
        // A 2x2 palette PNG (as Pascal VOC writes them): indices 0, 1, 2, 255.
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 2, 2);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            let mut palette = vec![0u8; 256 * 3];
            palette[3..6].copy_from_slice(&[128, 0, 0]);
            enc.set_palette(palette);
            enc.write_header().unwrap().write_image_data(&[0, 1, 2, 255]).unwrap();
        }
        assert_eq!(decode_mask(AT, &out, 2, 2, 3).unwrap(), vec![0, 1, 2, 255]);
    }

    #[test]
    fn png16_depth_is_scaled_to_metres() {
        let depth =
            image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(3, 2, vec![0, 1000, 1500, 65535, 2, 60000])
                .unwrap();
        let got = decode_depth_png16(AT, &png_bytes(&depth), 3, 2, 0.001).unwrap();
        assert_close(&got, &[0.0, 1.0, 1.5, 65.535, 0.002, 60.0]);
        let eight = image::GrayImage::new(3, 2);
        let err = decode_depth_png16(AT, &png_bytes(&eight), 3, 2, 0.001).unwrap_err();
        assert!(err.reason.contains("expected 16-bit grayscale"), "{err}");
        assert_names_file_and_key(&err);
        let err = decode_depth_png16(AT, &png_bytes(&depth), 2, 3, 0.001).unwrap_err();
        assert!(err.reason.contains("3x2 but the image is 2x3"), "{err}");
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.max(1.0), "{got:?} vs {want:?}");
        }
    }

    /// A `.npy` file as `numpy.save` writes it (version 1, header padded to 64 bytes).
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npy_depth_in_float32_float64_and_uint16() {
        let f4: Vec<u8> = [1.5f32, 2.0, 0.0, 80.25, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            decode_depth_npy(AT, &npy("<f4", "(2, 3)", &f4), 3, 2, 1.0).unwrap(),
            [1.5, 2.0, 0.0, 80.25, 3.0, 4.0]
        );
        // Extra unit axes are accepted.
        assert_eq!(decode_depth_npy(AT, &npy("<f4", "(1, 2, 3)", &f4), 3, 2, 2.0).unwrap()[0], 3.0);
        assert_eq!(decode_depth_npy(AT, &npy("<f4", "(2, 3, 1)", &f4), 3, 2, 1.0).unwrap()[3], 80.25);
        let f8: Vec<u8> = [0.5f64, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode_depth_npy(AT, &npy("<f8", "(1, 2)", &f8), 2, 1, 1.0).unwrap(), [0.5, 1.0]);
        let u2: Vec<u8> = [1000u16, 2500].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_close(&decode_depth_npy(AT, &npy("<u2", "(2, 1)", &u2), 1, 2, 0.001).unwrap(), &[1.0, 2.5]);
    }

    #[test]
    fn bad_npy_errors_name_the_file_and_key() {
        let f4: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let nan: Vec<u8> = [1.0f32, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let fortran = npy("<f4", "(1, 2)", &f4)
            .windows(5)
            .position(|w| w == b"False")
            .map(|i| {
                let mut b = npy("<f4", "(1, 2)", &f4);
                b.splice(i..i + 5, *b"True ");
                b
            })
            .unwrap();
        for (bytes, wants) in [
            (npy("<f4", "(2, 1)", &f4), "has shape [2, 1] but the image is 2x1"),
            (npy("<f4", "(1, 2)", &f4[..6]), "holds 6 data bytes, expected 8"),
            (npy(">f4", "(1, 2)", &f4), "dtype \">f4\" is not supported"),
            (npy("<i8", "(1, 2)", &f4), "dtype \"<i8\""),
            (npy("<f4", "(1, 2)", &nan), "pixel (1, 0) has depth NaN"),
            (fortran, "Fortran-order"),
            (b"PK\x03\x04 a zip".to_vec(), "magic"),
            (b"\x93NUMPY\x01\x00\xff\x00{".to_vec(), "truncated header"),
        ] {
            let err = decode_depth_npy(AT, &bytes, 2, 1, 1.0).unwrap_err();
            assert_eq!(err.reason_code(), "invalid_label");
            assert!(err.reason.contains(wants), "{err} lacks {wants:?}");
            assert_names_file_and_key(&err);
        }
    }
}
