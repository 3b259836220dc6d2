//! The image record's Arrow schema and the conversions between typed records and record batches.
//!
//! This is the only place that knows how a label becomes columns: `<task>_origin` and `<task>_teacher`
//! for provenance, null label columns for an absent task, probabilities and depth quantised to `u16`.
//! Writing validates every record; reading checks every column's presence and type, and every row's
//! provenance and shape, so a malformed file fails with the column and row rather than a wrong tensor.

use std::sync::{Arc, LazyLock};

use arrow_array::types::{Float32Type, UInt16Type, UInt32Type, UInt8Type};
use arrow_array::{
    ArrayRef, Float32Array, PrimitiveArray, RecordBatch, StringArray, StructArray, UInt16Array, UInt32Array,
};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};

use crate::arrow_io::{bad, binary_array, list_array, BatchError, Blobs, Lists, PrimitiveLists, Scalars, Strings};
use crate::columns::*;
use crate::quant::{dequantize_depth, dequantize_probs, quantize_depth, quantize_probs, PROB_SCALE};
use crate::record::{
    ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ImageRecord, LabelSource, Origin, SegLabel, Task,
    PROB_SUM_TOLERANCE,
};
use crate::version::{check_metadata_if_present, schema_metadata, RecordKind};

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

fn box_fields() -> Fields {
    Fields::from(vec![
        Field::new(BOX_X0, DataType::Float32, false),
        Field::new(BOX_Y0, DataType::Float32, false),
        Field::new(BOX_X1, DataType::Float32, false),
        Field::new(BOX_Y1, DataType::Float32, false),
        Field::new(BOX_CLASS_ID, DataType::UInt16, false),
        Field::new(BOX_SCORE, DataType::Float32, false),
    ])
}

static IMAGE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::*;
    let fields = vec![
        Field::new(KEY, Utf8, false),
        Field::new(DATASET, Utf8, false),
        Field::new(SOURCE_URI, Utf8, false),
        Field::new(WIDTH, UInt32, false),
        Field::new(HEIGHT, UInt32, false),
        Field::new(IMAGE_FORMAT, Utf8, true),
        Field::new(CLS_ORIGIN, Utf8, false),
        Field::new(CLS_TEACHER, Utf8, true),
        Field::new(CLS_PROBS, list_of(UInt16), true),
        Field::new(DET_ORIGIN, Utf8, false),
        Field::new(DET_TEACHER, Utf8, true),
        Field::new(DET_BOXES, list_of(Struct(box_fields())), true),
        Field::new(SEG_ORIGIN, Utf8, false),
        Field::new(SEG_TEACHER, Utf8, true),
        Field::new(SEG_HEIGHT, UInt16, true),
        Field::new(SEG_WIDTH, UInt16, true),
        Field::new(SEG_MASK, list_of(UInt8), true),
        Field::new(DEPTH_ORIGIN, Utf8, false),
        Field::new(DEPTH_TEACHER, Utf8, true),
        Field::new(DEPTH_KIND, Utf8, true),
        Field::new(DEPTH_HEIGHT, UInt16, true),
        Field::new(DEPTH_WIDTH, UInt16, true),
        Field::new(DEPTH_OFFSET, Float32, true),
        Field::new(DEPTH_SCALE, Float32, true),
        Field::new(DEPTH_Q, list_of(UInt16), true),
        Field::new(IMAGE, Binary, true),
    ];
    Arc::new(Schema::new_with_metadata(fields, schema_metadata(RecordKind::Image)))
});

/// The Arrow schema of image records, with `must.schema_version` and `must.record_kind` = `image`.
pub fn image_schema() -> SchemaRef {
    IMAGE_SCHEMA.clone()
}

/// Validate and convert records to one record batch of [`image_schema`].
///
/// Probabilities and depth maps are quantised here (see [`crate::quantize_probs`],
/// [`crate::quantize_depth`]). Fails on the first invalid record, naming its row, key and field.
pub fn records_to_batch(records: &[ImageRecord]) -> Result<RecordBatch, BatchError> {
    let schema = image_schema();
    for (row, record) in records.iter().enumerate() {
        record.validate().map_err(|source| BatchError::InvalidRecord { row, key: record.key.clone(), source })?;
    }
    let n = records.len();
    let strings = |f: fn(&ImageRecord) -> Option<&str>| string_column(records, f);
    let origin = |task: Task| string_column(records, |r| Some(r.origin(task).as_str()));
    let teacher = |task: Task| string_column(records, |r| r.source(task).and_then(LabelSource::teacher));

    let mut probs = PrimitiveLists::<UInt16Type>::with_capacity(n);
    let mut masks = PrimitiveLists::<UInt8Type>::with_capacity(n);
    let mut depth_q = PrimitiveLists::<UInt16Type>::with_capacity(n);
    let (mut depth_offset, mut depth_scale) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for r in records {
        probs.push(r.cls.as_ref().map(|c| quantize_probs(&c.probs)).as_deref());
        masks.push(r.seg.as_ref().map(|s| s.mask.as_slice()));
        let q = r.depth.as_ref().map(|d| quantize_depth(&d.values, d.kind.stored_bits()));
        depth_offset.push(q.as_ref().map(|q| q.offset));
        depth_scale.push(q.as_ref().map(|q| q.scale));
        depth_q.push(q.as_ref().map(|q| q.q.as_slice()));
    }

    let columns: Vec<ArrayRef> = vec![
        strings(|r| Some(r.key.as_str())),
        strings(|r| Some(r.dataset.as_str())),
        strings(|r| Some(r.source_uri.as_str())),
        Arc::new(records.iter().map(|r| r.width).collect::<UInt32Array>()),
        Arc::new(records.iter().map(|r| r.height).collect::<UInt32Array>()),
        strings(|r| r.image_format.as_deref()),
        origin(Task::Cls),
        teacher(Task::Cls),
        probs.finish(&schema, CLS_PROBS)?,
        origin(Task::Det),
        teacher(Task::Det),
        det_boxes_array(&schema, records)?,
        origin(Task::Seg),
        teacher(Task::Seg),
        Arc::new(records.iter().map(|r| r.seg.as_ref().map(|s| s.height)).collect::<UInt16Array>()),
        Arc::new(records.iter().map(|r| r.seg.as_ref().map(|s| s.width)).collect::<UInt16Array>()),
        masks.finish(&schema, SEG_MASK)?,
        origin(Task::Depth),
        teacher(Task::Depth),
        strings(|r| r.depth.as_ref().map(|d| d.kind.as_str())),
        Arc::new(records.iter().map(|r| r.depth.as_ref().map(|d| d.height)).collect::<UInt16Array>()),
        Arc::new(records.iter().map(|r| r.depth.as_ref().map(|d| d.width)).collect::<UInt16Array>()),
        Arc::new(Float32Array::from(depth_offset)),
        Arc::new(Float32Array::from(depth_scale)),
        depth_q.finish(&schema, DEPTH_Q)?,
        binary_array(IMAGE, records.iter().map(|r| r.image.as_deref()))?,
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn string_column(records: &[ImageRecord], f: impl Fn(&ImageRecord) -> Option<&str>) -> ArrayRef {
    Arc::new(records.iter().map(f).collect::<StringArray>())
}

fn det_boxes_array(schema: &Schema, records: &[ImageRecord]) -> Result<ArrayRef, BatchError> {
    let boxes = || records.iter().filter_map(|r| r.det.as_ref()).flat_map(|d| d.boxes.iter());
    let floats = |f: fn(&DetBox) -> f32| -> ArrayRef { Arc::new(boxes().map(f).collect::<Float32Array>()) };
    let class_ids: UInt16Array = PrimitiveArray::new(ScalarBuffer::from_iter(boxes().map(|b| b.class_id)), None);
    let values = StructArray::try_new(
        box_fields(),
        vec![
            floats(|b| b.x0),
            floats(|b| b.y0),
            floats(|b| b.x1),
            floats(|b| b.y1),
            Arc::new(class_ids),
            floats(|b| b.score),
        ],
        None,
    )?;
    let lengths = records.iter().map(|r| r.det.as_ref().map_or(0, |d| d.boxes.len())).collect();
    let valid = records.iter().map(|r| r.det.is_some()).collect();
    list_array(schema, DET_BOXES, lengths, valid, Arc::new(values))
}

/// Convert a record batch of [`image_schema`] back to typed records.
///
/// Columns are found by name (order and extra columns do not matter); a missing column or one of the
/// wrong type is refused by name. If the batch schema carries `must.*` metadata it must say `image`
/// and this [`crate::SCHEMA_VERSION`]. Every row is checked as [`ImageRecord::validate`] checks it,
/// except that the probability sum may be off by the quantisation error as well.
pub fn batch_to_records(batch: &RecordBatch) -> Result<Vec<ImageRecord>, BatchError> {
    check_metadata_if_present(&batch.schema(), RecordKind::Image)?;
    let reader = ImageColumns::new(batch)?;
    (0..batch.num_rows()).map(|row| reader.record(row)).collect()
}

/// Provenance columns of one task.
struct ProvenanceColumns<'a> {
    task: Task,
    origin: Strings<'a>,
    teacher: Strings<'a>,
}

impl<'a> ProvenanceColumns<'a> {
    fn get(batch: &'a RecordBatch, schema: &Schema, task: Task) -> Result<Self, BatchError> {
        Ok(ProvenanceColumns {
            task,
            origin: Strings::get(batch, schema, task.origin_column())?,
            teacher: Strings::get(batch, schema, task.teacher_column())?,
        })
    }

    /// The row's label source, given which of the task's label columns are non-null. The label columns
    /// must be all null when the origin is absent, and all set otherwise.
    fn source(&self, row: usize, label_columns: &[(&'static str, bool)]) -> Result<Option<LabelSource>, BatchError> {
        let origin_name = self.task.origin_column();
        let text = self.origin.required(row)?;
        let origin = Origin::parse(text)
            .ok_or_else(|| bad(origin_name, row, format!("is {text:?}, expected supervised, pseudo or absent")))?;
        let teacher = self.teacher.optional(row);
        let source = match (origin, teacher) {
            (Origin::Pseudo, Some(teacher)) => Some(LabelSource::pseudo(teacher)),
            (Origin::Pseudo, None) => return Err(bad(self.teacher.name(), row, "is null, but the origin is pseudo")),
            (_, Some(_)) => {
                return Err(bad(self.teacher.name(), row, format!("is set, but the origin is {origin}, not pseudo")))
            }
            (Origin::Supervised, None) => Some(LabelSource::Supervised),
            (Origin::Absent, None) => None,
        };
        for &(column, present) in label_columns {
            if present != source.is_some() {
                let state = if present { "is set" } else { "is null" };
                return Err(bad(column, row, format!("{state}, but {origin_name} is {origin}")));
            }
        }
        Ok(source)
    }
}

/// Every column of an image batch, typed.
struct ImageColumns<'a> {
    key: Strings<'a>,
    dataset: Strings<'a>,
    source_uri: Strings<'a>,
    width: Scalars<'a, UInt32Type>,
    height: Scalars<'a, UInt32Type>,
    image_format: Strings<'a>,
    image: Blobs<'a>,
    cls: ProvenanceColumns<'a>,
    cls_probs: Lists<'a>,
    det: ProvenanceColumns<'a>,
    det_boxes: Lists<'a>,
    det_fields: [&'a Float32Array; 4],
    det_class: &'a UInt16Array,
    det_score: &'a Float32Array,
    seg: ProvenanceColumns<'a>,
    seg_height: Scalars<'a, UInt16Type>,
    seg_width: Scalars<'a, UInt16Type>,
    seg_mask: Lists<'a>,
    depth: ProvenanceColumns<'a>,
    depth_kind: Strings<'a>,
    depth_height: Scalars<'a, UInt16Type>,
    depth_width: Scalars<'a, UInt16Type>,
    depth_offset: Scalars<'a, Float32Type>,
    depth_scale: Scalars<'a, Float32Type>,
    depth_q: Lists<'a>,
}

impl<'a> ImageColumns<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self, BatchError> {
        use arrow_array::cast::AsArray;
        let schema = &*IMAGE_SCHEMA;
        let det_boxes = Lists::get(batch, schema, DET_BOXES)?;
        let boxes = det_boxes.values().as_struct();
        // The type check guarantees these children exist with these types.
        let child = |name: &str| boxes.column_by_name(name).expect("checked by the column type");
        let float = |name: &str| child(name).as_primitive::<Float32Type>();
        Ok(ImageColumns {
            key: Strings::get(batch, schema, KEY)?,
            dataset: Strings::get(batch, schema, DATASET)?,
            source_uri: Strings::get(batch, schema, SOURCE_URI)?,
            width: Scalars::get(batch, schema, WIDTH)?,
            height: Scalars::get(batch, schema, HEIGHT)?,
            image_format: Strings::get(batch, schema, IMAGE_FORMAT)?,
            image: Blobs::get(batch, schema, IMAGE)?,
            cls: ProvenanceColumns::get(batch, schema, Task::Cls)?,
            cls_probs: Lists::get(batch, schema, CLS_PROBS)?,
            det: ProvenanceColumns::get(batch, schema, Task::Det)?,
            det_fields: [float(BOX_X0), float(BOX_Y0), float(BOX_X1), float(BOX_Y1)],
            det_class: child(BOX_CLASS_ID).as_primitive::<UInt16Type>(),
            det_score: float(BOX_SCORE),
            det_boxes,
            seg: ProvenanceColumns::get(batch, schema, Task::Seg)?,
            seg_height: Scalars::get(batch, schema, SEG_HEIGHT)?,
            seg_width: Scalars::get(batch, schema, SEG_WIDTH)?,
            seg_mask: Lists::get(batch, schema, SEG_MASK)?,
            depth: ProvenanceColumns::get(batch, schema, Task::Depth)?,
            depth_kind: Strings::get(batch, schema, DEPTH_KIND)?,
            depth_height: Scalars::get(batch, schema, DEPTH_HEIGHT)?,
            depth_width: Scalars::get(batch, schema, DEPTH_WIDTH)?,
            depth_offset: Scalars::get(batch, schema, DEPTH_OFFSET)?,
            depth_scale: Scalars::get(batch, schema, DEPTH_SCALE)?,
            depth_q: Lists::get(batch, schema, DEPTH_Q)?,
        })
    }

    fn record(&self, row: usize) -> Result<ImageRecord, BatchError> {
        let record = ImageRecord {
            key: self.key.required(row)?.to_owned(),
            dataset: self.dataset.required(row)?.to_owned(),
            source_uri: self.source_uri.required(row)?.to_owned(),
            width: self.width.required(row)?,
            height: self.height.required(row)?,
            image_format: self.image_format.optional(row).map(str::to_owned),
            image: self.image.optional(row).map(<[u8]>::to_vec),
            cls: self.cls(row)?,
            det: self.det(row)?,
            seg: self.seg(row)?,
            depth: self.depth(row)?,
        };
        // Each stored probability is off by at most half a quantisation step, so the sum may be off by
        // that much per class on top of what the writer allowed.
        let n = record.cls.as_ref().map_or(0, |c| c.probs.len());
        let tolerance = PROB_SUM_TOLERANCE + n as f32 * 0.5 / f32::from(PROB_SCALE);
        record.validate_with(tolerance).map_err(|source| BatchError::InvalidRecord {
            row,
            key: record.key.clone(),
            source,
        })?;
        Ok(record)
    }

    fn cls(&self, row: usize) -> Result<Option<ClsLabel>, BatchError> {
        let Some(source) = self.cls.source(row, &[(CLS_PROBS, self.cls_probs.is_valid(row))])? else {
            return Ok(None);
        };
        let q = self.cls_probs.primitives::<UInt16Type>(row)?.unwrap_or_default();
        Ok(Some(ClsLabel { source, probs: dequantize_probs(q) }))
    }

    fn det(&self, row: usize) -> Result<Option<DetLabel>, BatchError> {
        let Some(source) = self.det.source(row, &[(DET_BOXES, self.det_boxes.is_valid(row))])? else {
            return Ok(None);
        };
        let range = self.det_boxes.range(row)?.unwrap_or_default();
        let [x0, y0, x1, y1] = self.det_fields;
        let children: [&dyn arrow_array::Array; 6] = [x0, y0, x1, y1, self.det_class, self.det_score];
        if children.iter().any(|c| c.null_count() > 0 && range.clone().any(|i| c.is_null(i))) {
            return Err(bad(DET_BOXES, row, "has a box with a null field"));
        }
        let boxes = range
            .map(|i| DetBox {
                x0: x0.value(i),
                y0: y0.value(i),
                x1: x1.value(i),
                y1: y1.value(i),
                class_id: self.det_class.value(i),
                score: self.det_score.value(i),
            })
            .collect();
        Ok(Some(DetLabel { source, boxes }))
    }

    fn seg(&self, row: usize) -> Result<Option<SegLabel>, BatchError> {
        let label_columns = [
            (SEG_HEIGHT, self.seg_height.optional(row).is_some()),
            (SEG_WIDTH, self.seg_width.optional(row).is_some()),
            (SEG_MASK, self.seg_mask.is_valid(row)),
        ];
        let Some(source) = self.seg.source(row, &label_columns)? else {
            return Ok(None);
        };
        Ok(Some(SegLabel {
            source,
            height: self.seg_height.required(row)?,
            width: self.seg_width.required(row)?,
            mask: self.seg_mask.primitives::<UInt8Type>(row)?.unwrap_or_default().to_vec(),
        }))
    }

    fn depth(&self, row: usize) -> Result<Option<DepthLabel>, BatchError> {
        let label_columns = [
            (DEPTH_KIND, self.depth_kind.optional(row).is_some()),
            (DEPTH_HEIGHT, self.depth_height.optional(row).is_some()),
            (DEPTH_WIDTH, self.depth_width.optional(row).is_some()),
            (DEPTH_OFFSET, self.depth_offset.optional(row).is_some()),
            (DEPTH_SCALE, self.depth_scale.optional(row).is_some()),
            (DEPTH_Q, self.depth_q.is_valid(row)),
        ];
        let Some(source) = self.depth.source(row, &label_columns)? else {
            return Ok(None);
        };
        let kind_text = self.depth_kind.required(row)?;
        let kind = DepthKind::parse(kind_text)
            .ok_or_else(|| bad(DEPTH_KIND, row, format!("is {kind_text:?}, expected inverse_relative or metric")))?;
        let offset = self.depth_offset.required(row)?;
        if !offset.is_finite() {
            return Err(bad(DEPTH_OFFSET, row, format!("is {offset}")));
        }
        let scale = self.depth_scale.required(row)?;
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(bad(DEPTH_SCALE, row, format!("is {scale}, expected a finite value >= 0")));
        }
        let q = self.depth_q.primitives::<UInt16Type>(row)?.unwrap_or_default();
        Ok(Some(DepthLabel {
            source,
            kind,
            height: self.depth_height.required(row)?,
            width: self.depth_width.required(row)?,
            values: dequantize_depth(offset, scale, q),
        }))
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{Array, UInt64Array};
    use proptest::prelude::*;

    use super::*;
    use crate::fixtures;
    use crate::version::SCHEMA_VERSION_KEY;

    fn round_trip(records: &[ImageRecord]) -> Vec<ImageRecord> {
        batch_to_records(&records_to_batch(records).unwrap()).unwrap()
    }

    fn replace_column(batch: &RecordBatch, name: &str, column: ArrayRef, nullable: bool) -> RecordBatch {
        let schema = batch.schema();
        let i = schema.index_of(name).unwrap();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[i] = Field::new(name, column.data_type().clone(), nullable);
        let mut columns = batch.columns().to_vec();
        columns[i] = column;
        RecordBatch::try_new(Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())), columns).unwrap()
    }

    fn bad_value(err: BatchError) -> (&'static str, usize, String) {
        match err {
            BatchError::BadValue { column, row, problem } => (column, row, problem),
            other => panic!("expected BadValue, got {other:?}"),
        }
    }

    #[test]
    fn fixtures_round_trip() {
        let records = fixtures::all();
        let back = round_trip(&records);
        assert_eq!(back.len(), records.len());
        for (a, b) in records.iter().zip(&back) {
            fixtures::assert_close(a, b);
        }
        assert!(round_trip(&[]).is_empty());
    }

    #[test]
    fn one_hot_and_constant_depth_are_exact() {
        let back = round_trip(&[fixtures::full(), fixtures::sparse()]);
        assert_eq!(back[0].cls, fixtures::full().cls);
        assert_eq!(back[1].depth, fixtures::sparse().depth);
    }

    #[test]
    fn absent_tasks_are_null_columns() {
        let batch = records_to_batch(&[fixtures::cls_only()]).unwrap();
        for name in [DET_BOXES, DET_TEACHER, SEG_MASK, SEG_HEIGHT, DEPTH_Q, DEPTH_KIND, DEPTH_SCALE, IMAGE] {
            assert!(batch.column_by_name(name).unwrap().is_null(0), "{name}");
        }
        let origin = batch.column_by_name(SEG_ORIGIN).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(origin.value(0), "absent");
        let teacher = batch.column_by_name(CLS_TEACHER).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(teacher.value(0), "resnet");
    }

    #[test]
    fn schema_carries_version_and_kind() {
        let schema = image_schema();
        assert_eq!(schema.metadata()[SCHEMA_VERSION_KEY], "1");
        assert_eq!(schema.metadata()[crate::RECORD_KIND_KEY], "image");
        crate::check_schema_version(&schema).unwrap();
        assert_eq!(records_to_batch(&[]).unwrap().schema(), schema);
    }

    #[test]
    fn invalid_record_is_refused_with_row_and_key() {
        let mut bad = fixtures::full();
        bad.seg.as_mut().unwrap().mask.push(0);
        let err = records_to_batch(&[fixtures::cls_only(), bad]).unwrap_err();
        match &err {
            BatchError::InvalidRecord { row: 1, key, source } => {
                assert_eq!(key, "train/0001.jpg");
                assert_eq!(source.field, "seg_mask");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("row 1"), "{err}");
    }

    #[test]
    fn missing_column_is_named() {
        let batch = records_to_batch(&fixtures::all()).unwrap();
        for name in image_schema().fields().iter().map(|f| f.name().clone()) {
            let mut projected = batch.clone();
            projected.remove_column(projected.schema().index_of(&name).unwrap());
            match batch_to_records(&projected) {
                Err(BatchError::MissingColumn { column }) => assert_eq!(column, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_type_is_named() {
        let batch = records_to_batch(&[fixtures::full()]).unwrap();
        let wrong = replace_column(&batch, WIDTH, Arc::new(UInt64Array::from(vec![640u64])), false);
        match batch_to_records(&wrong) {
            Err(err @ BatchError::WrongType { column: WIDTH, .. }) => {
                assert!(err.to_string().contains("UInt64"), "{err}");
            }
            other => panic!("{other:?}"),
        }
        let probs_as_f32 = arrow_array::ListArray::from_iter_primitive::<Float32Type, _, _>([Some(vec![Some(1.0)])]);
        let wrong = replace_column(&batch, CLS_PROBS, Arc::new(probs_as_f32), true);
        assert!(matches!(batch_to_records(&wrong), Err(BatchError::WrongType { column: CLS_PROBS, .. })));
    }

    #[test]
    fn other_writers_list_element_names_are_accepted() {
        let batch = records_to_batch(&[fixtures::cls_only()]).unwrap();
        // pyarrow names list elements "element" and makes them nullable.
        let probs = arrow_array::ListArray::from_iter_primitive::<UInt16Type, _, _>([Some(vec![
            Some(45875u16),
            Some(13107),
            Some(6554),
        ])]);
        let (_, offsets, values, nulls) = probs.into_parts();
        let element = Arc::new(Field::new("element", DataType::UInt16, true));
        let renamed = arrow_array::ListArray::new(element, offsets, values, nulls);
        let batch = replace_column(&batch, CLS_PROBS, Arc::new(renamed), true);
        fixtures::assert_close(&fixtures::cls_only(), &batch_to_records(&batch).unwrap()[0]);
    }

    #[test]
    fn inconsistent_provenance_is_refused() {
        let batch = records_to_batch(&[fixtures::cls_only(), fixtures::full()]).unwrap();
        let strings = |values: [Option<&str>; 2]| -> ArrayRef { Arc::new(StringArray::from(values.to_vec())) };

        // A pseudo label without a teacher.
        let b = replace_column(&batch, CLS_TEACHER, strings([None, None]), true);
        assert_eq!(bad_value(batch_to_records(&b).unwrap_err()).0, CLS_TEACHER);
        // A supervised label with a teacher.
        let b = replace_column(&batch, CLS_TEACHER, strings([Some("resnet"), Some("x")]), true);
        let (column, row, problem) = bad_value(batch_to_records(&b).unwrap_err());
        assert_eq!((column, row), (CLS_TEACHER, 1));
        assert!(problem.contains("supervised"), "{problem}");
        // Absent, but the label is there.
        let b = replace_column(&batch, DET_ORIGIN, strings([Some("absent"), Some("absent")]), false);
        assert_eq!(bad_value(batch_to_records(&b).unwrap_err()).0, DET_TEACHER);
        let b = replace_column(&batch, CLS_ORIGIN, strings([Some("absent"), Some("supervised")]), false);
        assert_eq!(
            bad_value(batch_to_records(&b).unwrap_err()),
            (CLS_TEACHER, 0, "is set, but the origin is absent, not pseudo".into())
        );
        // Supervised, but the label is missing.
        let b = replace_column(&batch, SEG_ORIGIN, strings([Some("supervised"), Some("pseudo")]), false);
        let (column, row, problem) = bad_value(batch_to_records(&b).unwrap_err());
        assert_eq!((column, row), (SEG_HEIGHT, 0));
        assert!(problem.contains("is null, but seg_origin is supervised"), "{problem}");
        // An unknown origin.
        let b = replace_column(&batch, DEPTH_ORIGIN, strings([Some("absent"), Some("teacher")]), false);
        assert_eq!(bad_value(batch_to_records(&b).unwrap_err()).0, DEPTH_ORIGIN);
        // Part of a depth label.
        let b = replace_column(&batch, DEPTH_SCALE, Arc::new(Float32Array::from(vec![None, None])), true);
        let (column, row, _) = bad_value(batch_to_records(&b).unwrap_err());
        assert_eq!((column, row), (DEPTH_SCALE, 1));
        // An unknown depth kind, a negative scale.
        let b = replace_column(&batch, DEPTH_KIND, strings([None, Some("disparity")]), true);
        assert_eq!(bad_value(batch_to_records(&b).unwrap_err()).0, DEPTH_KIND);
        let b = replace_column(&batch, DEPTH_SCALE, Arc::new(Float32Array::from(vec![None, Some(-1.0)])), true);
        assert_eq!(bad_value(batch_to_records(&b).unwrap_err()).0, DEPTH_SCALE);
    }

    #[test]
    fn mismatched_shape_in_a_file_is_refused_by_row() {
        let batch = records_to_batch(&[fixtures::cls_only(), fixtures::full()]).unwrap();
        let b = replace_column(&batch, SEG_HEIGHT, Arc::new(UInt16Array::from(vec![None, Some(3)])), true);
        match batch_to_records(&b) {
            Err(BatchError::InvalidRecord { row: 1, source, .. }) => assert_eq!(source.field, "seg_mask"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_versions_and_kinds_are_refused() {
        let batch = records_to_batch(&[fixtures::full()]).unwrap();
        let with_metadata = |key: &str, value: &str| {
            let mut metadata = batch.schema().metadata().clone();
            metadata.insert(key, value);
            let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
            RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap()
        };
        assert!(matches!(
            batch_to_records(&with_metadata(SCHEMA_VERSION_KEY, "2")),
            Err(BatchError::Version(crate::VersionError::Mismatch { found: 2 }))
        ));
        assert!(matches!(
            batch_to_records(&with_metadata(crate::RECORD_KIND_KEY, "error")),
            Err(BatchError::Version(crate::VersionError::WrongKind { .. }))
        ));
        // Batches that lost their metadata (built elsewhere) are still read.
        let bare = Arc::new(batch.schema().as_ref().clone().with_metadata(arrow_schema::Metadata::new()));
        let bare = RecordBatch::try_new(bare, batch.columns().to_vec()).unwrap();
        assert_eq!(batch_to_records(&bare).unwrap().len(), 1);
    }

    #[test]
    fn sliced_batches_read_their_own_rows() {
        let records = fixtures::all();
        let batch = records_to_batch(&records).unwrap();
        let back = batch_to_records(&batch.slice(1, 2)).unwrap();
        fixtures::assert_close(&records[1], &back[0]);
        fixtures::assert_close(&records[2], &back[1]);
    }

    #[test]
    fn parquet_round_trip_keeps_types_and_metadata() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use parquet::arrow::ArrowWriter;

        let records = fixtures::all();
        let mut buf = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buf, image_schema(), None).unwrap();
        writer.write(&records_to_batch(&records).unwrap()).unwrap();
        writer.close().unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(buf)).unwrap();
        // The file's schema keeps the metadata; batches the reader yields do not.
        crate::check_schema_version(builder.schema()).unwrap();
        let mut back = Vec::new();
        for batch in builder.build().unwrap() {
            back.extend(batch_to_records(&batch.unwrap()).unwrap());
        }
        for (a, b) in records.iter().zip(&back) {
            fixtures::assert_close(a, b);
        }
    }

    fn source() -> impl Strategy<Value = LabelSource> {
        prop_oneof![Just(LabelSource::Supervised), "[a-z][a-z0-9_-]{0,11}".prop_map(LabelSource::pseudo)]
    }

    fn unit() -> impl Strategy<Value = f32> {
        (0u32..=1_000_000).prop_map(|v| v as f32 / 1_000_000.0)
    }

    fn cls() -> impl Strategy<Value = ClsLabel> {
        (source(), prop::collection::vec(0.0f32..10.0, 1..40)).prop_filter_map("zero mass", |(source, w)| {
            let total: f32 = w.iter().sum();
            (total > 0.0).then(|| ClsLabel { source, probs: w.iter().map(|v| v / total).collect() })
        })
    }

    fn det() -> impl Strategy<Value = DetLabel> {
        let one = (unit(), unit(), unit(), unit(), any::<u16>(), unit()).prop_map(|(a, b, c, d, class_id, score)| {
            DetBox { x0: a.min(b), x1: a.max(b), y0: c.min(d), y1: c.max(d), class_id, score }
        });
        (source(), prop::collection::vec(one, 0..8)).prop_map(|(source, boxes)| DetLabel { source, boxes })
    }

    fn seg() -> impl Strategy<Value = SegLabel> {
        (source(), 1u16..9, 1u16..9).prop_flat_map(|(source, height, width)| {
            prop::collection::vec(any::<u8>(), usize::from(height) * usize::from(width))
                .prop_map(move |mask| SegLabel { source: source.clone(), height, width, mask })
        })
    }

    fn depth() -> impl Strategy<Value = DepthLabel> {
        let kind = prop_oneof![Just(DepthKind::InverseRelative), Just(DepthKind::Metric)];
        (source(), kind, 1u16..9, 1u16..9).prop_flat_map(|(source, kind, height, width)| {
            prop::collection::vec(-1e4f32..1e4, usize::from(height) * usize::from(width))
                .prop_map(move |values| DepthLabel { source: source.clone(), kind, height, width, values })
        })
    }

    fn record() -> impl Strategy<Value = ImageRecord> {
        (
            "[a-z0-9/._-]{1,24}",
            "[a-z]{1,8}",
            1u32..10_000,
            1u32..10_000,
            prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            (prop::option::of(cls()), prop::option::of(det()), prop::option::of(seg()), prop::option::of(depth())),
        )
            .prop_map(|(key, dataset, width, height, image, (cls, det, seg, depth))| ImageRecord {
                source_uri: format!("s3://bucket/{key}"),
                image_format: image.as_ref().map(|_| "jpeg".to_owned()),
                key,
                dataset,
                width,
                height,
                image,
                cls,
                det,
                seg,
                depth,
            })
    }

    proptest! {
        #[test]
        fn valid_records_round_trip(records in prop::collection::vec(record(), 0..6)) {
            for r in &records {
                prop_assert!(r.validate().is_ok(), "generator made an invalid record: {:?}", r.validate());
            }
            let back = round_trip(&records);
            prop_assert_eq!(back.len(), records.len());
            for (a, b) in records.iter().zip(&back) {
                fixtures::assert_close(a, b);
            }
        }
    }
}
