//! Arrow record batches → owned per-row samples, checked against the label contract.
//!
//! Rows leave the reader as plain structs so the decode/augment workers need no Arrow types and the
//! record batches (which pin whole column chunks) can be dropped as soon as a row group is unpacked.
//! Every label is checked here against the config (lengths, class ranges, enum strings); a violation is
//! an error naming the file, column and row key, because it means the labeler and trainer disagree.

use std::ops::Range;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt16Type, UInt32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, PrimitiveArray, RecordBatch};

use schemas::columns::*;

use super::config::NumClasses;
use super::index::TaskSet;
use super::DataError;

/// A box as stored: normalised to the original image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RawBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    pub class_id: u16,
}

/// A segmentation label at its own resolution, covering the whole image.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SegLabel {
    pub height: usize,
    pub width: usize,
    pub mask: Vec<u8>,
}

/// A depth label at its own resolution, covering the whole image: `offset + scale·q`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DepthLabel {
    pub height: usize,
    pub width: usize,
    /// Metric depth (converted to 1/d by the loader) rather than relative inverse depth.
    pub metric: bool,
    pub q: Vec<u16>,
    pub offset: f32,
    pub scale: f32,
}

/// One record, with the labels of the configured tasks that are present in it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawRow {
    pub dataset: u32,
    pub key: String,
    pub width: u32,
    pub height: u32,
    pub image: Vec<u8>,
    pub cls: Option<Vec<u16>>,
    pub det: Option<Vec<RawBox>>,
    pub seg: Option<SegLabel>,
    pub depth: Option<DepthLabel>,
}

struct Ctx<'a> {
    uri: &'a str,
    batch: &'a RecordBatch,
}

impl<'a> Ctx<'a> {
    fn err(&self, column: &str, reason: impl Into<String>) -> DataError {
        DataError::Column { uri: self.uri.to_owned(), column: column.to_owned(), reason: reason.into() }
    }

    fn column(&self, name: &str) -> Result<&'a ArrayRef, DataError> {
        self.batch.column_by_name(name).ok_or_else(|| self.err(name, "missing from the projected batch"))
    }

    fn strings(&self, name: &str) -> Result<Strings<'a>, DataError> {
        let col = self.column(name)?;
        if let Some(a) = col.as_string_opt::<i32>() {
            Ok(Strings::Small(a))
        } else if let Some(a) = col.as_string_opt::<i64>() {
            Ok(Strings::Large(a))
        } else if let Some(a) = col.as_string_view_opt() {
            Ok(Strings::View(a))
        } else {
            Err(self.err(name, format!("has type {}, expected Utf8", col.data_type())))
        }
    }

    fn bytes(&self, name: &str) -> Result<Bytes<'a>, DataError> {
        let col = self.column(name)?;
        if let Some(a) = col.as_binary_opt::<i32>() {
            Ok(Bytes::Small(a))
        } else if let Some(a) = col.as_binary_opt::<i64>() {
            Ok(Bytes::Large(a))
        } else if let Some(a) = col.as_binary_view_opt() {
            Ok(Bytes::View(a))
        } else {
            Err(self.err(name, format!("has type {}, expected Binary", col.data_type())))
        }
    }

    fn primitive<T: arrow_array::ArrowPrimitiveType>(&self, name: &str) -> Result<&'a PrimitiveArray<T>, DataError> {
        let col = self.column(name)?;
        col.as_primitive_opt::<T>()
            .ok_or_else(|| self.err(name, format!("has type {}, expected {}", col.data_type(), T::DATA_TYPE)))
    }

    fn list(&self, name: &str) -> Result<List<'a>, DataError> {
        let col = self.column(name)?;
        if let Some(a) = col.as_list_opt::<i32>() {
            Ok(List::Small(a))
        } else if let Some(a) = col.as_list_opt::<i64>() {
            Ok(List::Large(a))
        } else {
            Err(self.err(name, format!("has type {}, expected a List", col.data_type())))
        }
    }

    fn list_of<T: arrow_array::ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Result<(List<'a>, &'a PrimitiveArray<T>), DataError> {
        let list = self.list(name)?;
        let values = list
            .values()
            .as_primitive_opt::<T>()
            .ok_or_else(|| self.err(name, format!("holds {}, expected {}", list.values().data_type(), T::DATA_TYPE)))?;
        Ok((list, values))
    }
}

enum Strings<'a> {
    Small(&'a arrow_array::StringArray),
    Large(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
}

impl Strings<'_> {
    fn get(&self, i: usize) -> Option<&str> {
        match self {
            Strings::Small(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

enum Bytes<'a> {
    Small(&'a arrow_array::BinaryArray),
    Large(&'a arrow_array::LargeBinaryArray),
    View(&'a arrow_array::BinaryViewArray),
}

impl Bytes<'_> {
    fn get(&self, i: usize) -> Option<&[u8]> {
        match self {
            Bytes::Small(a) => a.is_valid(i).then(|| a.value(i)),
            Bytes::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Bytes::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

#[derive(Clone, Copy)]
enum List<'a> {
    Small(&'a arrow_array::ListArray),
    Large(&'a arrow_array::LargeListArray),
}

impl<'a> List<'a> {
    fn values(&self) -> &'a ArrayRef {
        match self {
            List::Small(a) => a.values(),
            List::Large(a) => a.values(),
        }
    }

    /// The range of row `i` in `values()`, or `None` for a null list.
    fn range(&self, i: usize) -> Option<Range<usize>> {
        match self {
            List::Small(a) => a.is_valid(i).then(|| {
                let o = a.value_offsets();
                o[i] as usize..o[i + 1] as usize
            }),
            List::Large(a) => a.is_valid(i).then(|| {
                let o = a.value_offsets();
                o[i] as usize..o[i + 1] as usize
            }),
        }
    }
}

/// Whether a task's label is present, from its `*_origin` column.
fn present(ctx: &Ctx, column: &str, origins: &Strings, i: usize, key: &str) -> Result<bool, DataError> {
    match origins.get(i).map(|s| (s, schemas::Origin::parse(s))) {
        None | Some((_, Some(schemas::Origin::Absent))) => Ok(false),
        Some((_, Some(_))) => Ok(true),
        Some((other, None)) => {
            Err(ctx.err(column, format!("row {key:?}: origin {other:?} is not supervised, pseudo or absent")))
        }
    }
}

/// Unpack the rows of one record batch read from `uri` for dataset `dataset`.
pub(crate) fn extract(
    batch: &RecordBatch,
    uri: &str,
    dataset: u32,
    tasks: TaskSet,
    classes: NumClasses,
) -> Result<Vec<RawRow>, DataError> {
    let ctx = Ctx { uri, batch };
    let keys = ctx.strings(KEY)?;
    let widths = ctx.primitive::<UInt32Type>(WIDTH)?;
    let heights = ctx.primitive::<UInt32Type>(HEIGHT)?;
    let images = ctx.bytes(IMAGE)?;

    let cls = if tasks.cls { Some((ctx.strings(CLS_ORIGIN)?, ctx.list_of::<UInt16Type>(CLS_PROBS)?)) } else { None };
    let det = if tasks.det {
        let list = ctx.list(DET_BOXES)?;
        let fields = list.values().as_struct_opt().ok_or_else(|| ctx.err(DET_BOXES, "does not hold structs"))?;
        let field = |name: &str| {
            fields
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float32Type>())
                .ok_or_else(|| ctx.err(DET_BOXES, format!("field {name:?} is missing or not Float32")))
        };
        let coords = [field(BOX_X0)?, field(BOX_Y0)?, field(BOX_X1)?, field(BOX_Y1)?];
        let class_ids = fields
            .column_by_name(BOX_CLASS_ID)
            .and_then(|c| c.as_primitive_opt::<UInt16Type>())
            .ok_or_else(|| ctx.err(DET_BOXES, "field \"class_id\" is missing or not UInt16"))?;
        Some((ctx.strings(DET_ORIGIN)?, list, coords, class_ids))
    } else {
        None
    };
    let seg = if tasks.seg {
        Some((
            ctx.strings(SEG_ORIGIN)?,
            ctx.primitive::<UInt16Type>(SEG_HEIGHT)?,
            ctx.primitive::<UInt16Type>(SEG_WIDTH)?,
            ctx.list_of::<UInt8Type>(SEG_MASK)?,
        ))
    } else {
        None
    };
    let depth = if tasks.depth {
        Some((
            ctx.strings(DEPTH_ORIGIN)?,
            ctx.primitive::<UInt16Type>(DEPTH_HEIGHT)?,
            ctx.primitive::<UInt16Type>(DEPTH_WIDTH)?,
            ctx.strings(DEPTH_KIND)?,
            ctx.list_of::<UInt16Type>(DEPTH_Q)?,
            ctx.primitive::<Float32Type>(DEPTH_OFFSET)?,
            ctx.primitive::<Float32Type>(DEPTH_SCALE)?,
        ))
    } else {
        None
    };

    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let key = keys.get(i).ok_or_else(|| ctx.err(KEY, format!("row {i} has no key")))?;
        let image = images.get(i).ok_or_else(|| ctx.err(IMAGE, format!("row {key:?} has no image")))?;
        if widths.is_null(i) || heights.is_null(i) || widths.value(i) == 0 || heights.value(i) == 0 {
            return Err(ctx.err(WIDTH, format!("row {key:?} has no image size")));
        }
        let mut row = RawRow {
            dataset,
            key: key.to_owned(),
            width: widths.value(i),
            height: heights.value(i),
            image: image.to_vec(),
            cls: None,
            det: None,
            seg: None,
            depth: None,
        };

        if let Some((origins, (list, values))) = &cls {
            if present(&ctx, CLS_ORIGIN, origins, i, key)? {
                let range = list
                    .range(i)
                    .ok_or_else(|| ctx.err(CLS_PROBS, format!("row {key:?} has a label but no probabilities")))?;
                if range.len() != classes.cls {
                    return Err(ctx.err(
                        CLS_PROBS,
                        format!("row {key:?} has {} classes, the config says {}", range.len(), classes.cls),
                    ));
                }
                row.cls = Some(values.values()[range].to_vec());
            }
        }

        if let Some((origins, list, coords, class_ids)) = &det {
            if present(&ctx, DET_ORIGIN, origins, i, key)? {
                let range = list.range(i).unwrap_or(0..0);
                let mut boxes = Vec::with_capacity(range.len());
                for j in range {
                    let b = RawBox {
                        x0: coords[0].value(j),
                        y0: coords[1].value(j),
                        x1: coords[2].value(j),
                        y1: coords[3].value(j),
                        class_id: class_ids.value(j),
                    };
                    if usize::from(b.class_id) >= classes.det {
                        return Err(ctx.err(
                            DET_BOXES,
                            format!("row {key:?}: class_id {} is not below {}", b.class_id, classes.det),
                        ));
                    }
                    let finite = [b.x0, b.y0, b.x1, b.y1].iter().all(|v| v.is_finite());
                    if !finite || b.x0 > b.x1 || b.y0 > b.y1 {
                        return Err(ctx.err(
                            DET_BOXES,
                            format!(
                                "row {key:?}: box ({}, {}, {}, {}) is not ordered and finite",
                                b.x0, b.y0, b.x1, b.y1
                            ),
                        ));
                    }
                    boxes.push(b);
                }
                row.det = Some(boxes);
            }
        }

        if let Some((origins, heights, widths, (list, values))) = &seg {
            if present(&ctx, SEG_ORIGIN, origins, i, key)? {
                let (h, w) = (usize::from(heights.value(i)), usize::from(widths.value(i)));
                let range = list.range(i).unwrap_or(0..0);
                if h == 0 || w == 0 || range.len() != h * w {
                    return Err(ctx.err(SEG_MASK, format!("row {key:?}: {} values for a {h}×{w} mask", range.len())));
                }
                let mask = &values.values()[range];
                let limit = classes.seg as u8;
                if let Some(bad) = mask.iter().find(|&&v| v >= limit && v != 255) {
                    return Err(
                        ctx.err(SEG_MASK, format!("row {key:?}: class {bad} is not below {} (or 255)", classes.seg))
                    );
                }
                row.seg = Some(SegLabel { height: h, width: w, mask: mask.to_vec() });
            }
        }

        if let Some((origins, heights, widths, kinds, (list, values), offsets, scales)) = &depth {
            if present(&ctx, DEPTH_ORIGIN, origins, i, key)? {
                let (h, w) = (usize::from(heights.value(i)), usize::from(widths.value(i)));
                let range = list.range(i).unwrap_or(0..0);
                if h == 0 || w == 0 || range.len() != h * w {
                    return Err(
                        ctx.err(DEPTH_Q, format!("row {key:?}: {} values for a {h}×{w} depth map", range.len()))
                    );
                }
                let metric = match kinds.get(i).and_then(schemas::DepthKind::parse) {
                    Some(schemas::DepthKind::Metric) => true,
                    Some(schemas::DepthKind::InverseRelative) => false,
                    None => {
                        let other = kinds.get(i);
                        return Err(ctx.err(
                            DEPTH_KIND,
                            format!("row {key:?}: {other:?} is not \"metric\" or \"inverse_relative\""),
                        ));
                    }
                };
                let (offset, scale) = (offsets.value(i), scales.value(i));
                if !(offset.is_finite() && scale.is_finite()) {
                    return Err(ctx.err(DEPTH_SCALE, format!("row {key:?}: offset or scale is not finite")));
                }
                row.depth =
                    Some(DepthLabel { height: h, width: w, metric, q: values.values()[range].to_vec(), offset, scale });
            }
        }
        rows.push(row);
    }
    Ok(rows)
}
