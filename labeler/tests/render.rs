//! `labeler render` end to end: records made by hand are committed as a real shard in a temporary
//! directory, read back through the manifest and drawn; the pictures are checked pixel by pixel where the
//! layout says a box edge and an ignored mask pixel must be.

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};
use labeler::render::{class_colour, render_shards, row_layout, IGNORE_CHECKER, ORIGIN_PSEUDO, ORIGIN_SUPERVISED};
use parquet::file::metadata::KeyValue;
use schemas::{
    ClsLabel, DepthKind, DepthLabel, DetBox, DetLabel, ImageRecord, LabelSource, ManifestCounts, SegLabel,
    ShardManifest,
};

const W: u32 = 64;
const H: u32 = 48;
/// The box every test image has: the middle half, class 1.
const BOX: DetBox = DetBox { x0: 0.25, y0: 0.25, x1: 0.75, y1: 0.75, class_id: 1, score: 0.9 };

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A sky-over-ground picture with a red square where `BOX` is.
fn picture() -> RgbImage {
    RgbImage::from_fn(W, H, |x, y| {
        let in_box = (16..48).contains(&x) && (12..36).contains(&y);
        if in_box {
            Rgb([200, 40, 40])
        } else if y < H / 2 {
            Rgb([120, 170, 230])
        } else {
            Rgb([90, 140, 60])
        }
    })
}

/// Record 0: every task labelled, a supervised mask whose top-left 4×4 block is ignored. Record 1: no image
/// bytes, metric depth and nothing else.
fn records() -> Vec<ImageRecord> {
    let (mw, mh) = (16u16, 12u16);
    let mask: Vec<u8> = (0..mh)
        .flat_map(|y| (0..mw).map(move |x| (x, y)))
        .map(|(x, y)| {
            if x < 4 && y < 4 {
                255
            } else if (4..12).contains(&x) && (3..9).contains(&y) {
                2
            } else if y < mh / 2 {
                0
            } else {
                1
            }
        })
        .collect();
    let inverse: Vec<f32> = (0..mh).flat_map(|y| (0..mw).map(move |_| f32::from(y) / f32::from(mh))).collect();

    let mut full = ImageRecord::new("nested/dir/img-0.png", "synth", "file:///store/nested/dir/img-0.png", W, H);
    full.image_format = Some("png".into());
    full.image = Some(png(&picture()));
    full.cls = Some(ClsLabel { source: LabelSource::pseudo("t-cls"), probs: vec![0.1, 0.9] });
    full.det = Some(DetLabel { source: LabelSource::pseudo("t-det"), boxes: vec![BOX] });
    full.seg = Some(SegLabel { source: LabelSource::Supervised, height: mh, width: mw, mask });
    full.depth = Some(DepthLabel {
        source: LabelSource::pseudo("t-depth"),
        kind: DepthKind::InverseRelative,
        height: mh,
        width: mw,
        values: inverse,
    });

    let mut bare = ImageRecord::new("img-1.jpg", "synth", "file:///store/img-1.jpg", 300, 100);
    bare.depth = Some(DepthLabel {
        source: LabelSource::Supervised,
        kind: DepthKind::Metric,
        height: 2,
        width: 3,
        values: vec![0.0, 1.0, 2.0, 4.0, 8.0, 16.0],
    });
    vec![full, bare]
}

const TEACHERS: &str = r#"[
  {"name": "t-cls", "task": "classification", "spec": {"classes": ["ground", "sky"]}},
  {"name": "t-det", "task": "detection", "spec": {"classes": ["ball", "crate"]}},
  {"name": "t-seg", "task": "segmentation", "spec": {"classes": ["sky", "ground", "crate"]}},
  {"name": "t-depth", "task": "depth", "spec": {"classes": []}}
]"#;

/// Commit `recs` as shard 0 of 1 under `out`, with the teachers' class lists in the footer.
fn commit(out: &Path, recs: &[ImageRecord]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let loc = shards::open(out.to_str().unwrap()).unwrap();
        let props = shards::encoding::record_writer_properties();
        let mut kv = props.key_value_metadata().cloned().unwrap_or_default();
        kv.push(KeyValue::new("must.teachers".to_owned(), TEACHERS.to_owned()));
        let props = props.into_builder().set_key_value_metadata(Some(kv)).build();
        let batch = schemas::records_to_batch(recs).unwrap();
        let bytes = shards::encode_parquet(&[batch], schemas::image_schema(), props, "test").unwrap();
        let mut committer = shards::ShardCommitter::new(loc, shards::ShardId { index: 0, count: 1 }, "a1");
        committer.put_file("records", bytes, recs.len() as u64).await.unwrap();
        let manifest = ShardManifest {
            input_manifest_sha256: "0".repeat(64),
            labeler_version: "test".into(),
            counts: ManifestCounts { labelled_rows: recs.len() as u64, ..Default::default() },
            ..Default::default()
        };
        committer.commit(manifest).await.unwrap();
    });
}

#[test]
fn render_draws_boxes_masks_and_depth_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let (out, to) = (dir.path().join("shards"), dir.path().join("pictures"));
    commit(&out, &records());

    let written = render_shards(out.to_str().unwrap(), &to, 10).unwrap();
    let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["synth-nested_dir_img-0.png.png", "synth-img-1.jpg.png", "index.png"]);
    for p in &written {
        assert!(p.is_file(), "{} missing", p.display());
    }

    let row = image::open(&written[0]).unwrap().to_rgb8();
    let layout = row_layout(W, H);
    assert_eq!((layout.panel_width, layout.panel_height), (256, 192), "a 64x48 image is scaled up to 192 px high");
    assert_eq!(row.dimensions(), (layout.width, layout.height));

    // (a): the left edge of the box, halfway down, is 2 px of the class colour.
    let (ax, ay) = layout.panels[0];
    let (bx, by) = ((BOX.x0 * 256.0) as u32, ((BOX.y0 + BOX.y1) / 2.0 * 192.0) as u32);
    for dx in 0..2 {
        assert_eq!(row.get_pixel(ax + bx + dx, ay + by).0, class_colour(1), "box edge at +{dx}");
    }
    assert_ne!(row.get_pixel(ax + bx + 3, ay + by).0, class_colour(1), "the edge is 2 px wide");

    // (b): the mask's top-left 4x4 block is ignored: 4/16 of the width, 4/12 of the height.
    let (sx, sy) = layout.panels[1];
    for (x, y) in [(2, 2), (60, 60), (30, 10)] {
        assert!(IGNORE_CHECKER.contains(&row.get_pixel(sx + x, sy + y).0), "ignore pixel ({x}, {y})");
    }
    // A labelled pixel is a blend, not the checker.
    assert!(!IGNORE_CHECKER.contains(&row.get_pixel(sx + 200, sy + 180).0));

    // The strips say where the labels came from: det is pseudo (blue), seg supervised (green).
    assert_eq!(row.get_pixel(ax + layout.panel_width - 1, ay - 2).0, ORIGIN_PSEUDO);
    assert_eq!(row.get_pixel(sx + layout.panel_width - 1, sy - 13).0, ORIGIN_SUPERVISED);

    // (c): depth rows go from far (top, dark) to near (bottom, bright).
    let (cx, cy) = layout.panels[2];
    let luma = |p: [u8; 3]| u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2]);
    assert!(luma(row.get_pixel(cx + 10, cy + 2).0) < luma(row.get_pixel(cx + 10, cy + 190).0));

    // The second image (300x100) has no bytes: still a full row, at its own aspect ratio.
    let bare = image::open(&written[1]).unwrap().to_rgb8();
    let bare_layout = row_layout(300, 100);
    assert_eq!((bare_layout.panel_width, bare_layout.panel_height), (576, 192));
    assert_eq!(bare.dimensions(), (bare_layout.width, bare_layout.height));
    // Metric depth 0 is invalid and drawn as the checker (top-left cell of the 3x2 map).
    let (dx, dy) = bare_layout.panels[2];
    assert!(IGNORE_CHECKER.contains(&bare.get_pixel(dx + 5, dy + 5).0));

    // The index holds both rows in one column.
    let index = image::open(&written[2]).unwrap().to_rgb8();
    assert_eq!(index.dimensions(), (bare_layout.width, 2 * bare_layout.height));
    assert_eq!(index.get_pixel(ax + bx, ay + by).0, class_colour(1));
}

#[test]
fn render_stops_after_count_and_refuses_an_empty_output() {
    let dir = tempfile::tempdir().unwrap();
    let (out, to) = (dir.path().join("shards"), dir.path().join("pictures"));
    commit(&out, &records());
    let written = render_shards(out.to_str().unwrap(), &to, 1).unwrap();
    assert_eq!(written.len(), 2, "one row and the index: {written:?}");

    let empty = dir.path().join("empty");
    let err = render_shards(empty.to_str().unwrap(), &to, 4).unwrap_err();
    assert!(err.to_string().contains("no committed records"), "{err}");
}
