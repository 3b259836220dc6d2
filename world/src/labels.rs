//! A split's truth in the formats people keep labels in, so the demo labels the world exactly as a user
//! labels their own data: a `key,class` CSV of scene classes and a COCO instances file of boxes (the
//! per-image masks and depth maps are PNGs written by the codec). Keys are image file names under
//! `<split>/images`. Both files are deterministic for the same scenes.

use serde::Serialize;

use crate::config::{OBJECT_CLASSES, SCENE_CLASSES};
use crate::render::GtBox;
use crate::WorldError;

/// `key,class` lines with a header, the class a name from [`SCENE_CLASSES`].
pub fn encode_class_csv<'a>(rows: impl IntoIterator<Item = (&'a str, u8)>) -> Vec<u8> {
    let mut out = String::from("key,class\n");
    for (key, class) in rows {
        out.push_str(key);
        out.push(',');
        out.push_str(SCENE_CLASSES[class as usize]);
        out.push('\n');
    }
    out.into_bytes()
}

#[derive(Serialize)]
struct Coco<'a> {
    images: Vec<CocoImage<'a>>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Serialize)]
struct CocoImage<'a> {
    id: u64,
    file_name: &'a str,
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    /// `[x, y, width, height]` in pixels.
    bbox: [f64; 4],
    area: f64,
    iscrowd: u8,
}

#[derive(Serialize)]
struct CocoCategory {
    id: u64,
    name: &'static str,
}

/// A COCO instances file: every image of `width`×`height` with its boxes (normalised in [`GtBox`], in pixels
/// here), categories [`OBJECT_CLASSES`] with ids from 1 as COCO numbers them. Image ids are the scene
/// indices; annotation ids count from 1.
pub fn encode_coco<'a>(
    width: u32,
    height: u32,
    scenes: impl IntoIterator<Item = (u64, &'a str, &'a [GtBox])>,
) -> Result<Vec<u8>, WorldError> {
    let (w, h) = (width as f64, height as f64);
    let mut coco = Coco {
        images: Vec::new(),
        annotations: Vec::new(),
        categories: OBJECT_CLASSES
            .iter()
            .enumerate()
            .map(|(i, &name)| CocoCategory { id: i as u64 + 1, name })
            .collect(),
    };
    for (index, file_name, boxes) in scenes {
        coco.images.push(CocoImage { id: index, file_name, width, height });
        for b in boxes {
            let (x, y) = (b.x0 as f64 * w, b.y0 as f64 * h);
            let (bw, bh) = ((b.x1 - b.x0) as f64 * w, (b.y1 - b.y0) as f64 * h);
            coco.annotations.push(CocoAnnotation {
                id: coco.annotations.len() as u64 + 1,
                image_id: index,
                category_id: b.class_id as u64 + 1,
                bbox: [x, y, bw, bh],
                area: bw * bh,
                iscrowd: 0,
            });
        }
    }
    serde_json::to_vec(&coco).map_err(|source| WorldError::Json { what: "COCO instances".into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_names_scene_classes() {
        let csv = encode_class_csv([("000000.jpg", 0), ("000003.png", 7)]);
        assert_eq!(String::from_utf8(csv).unwrap(), "key,class\n000000.jpg,meadow\n000003.png,city\n");
    }

    #[test]
    fn coco_boxes_are_pixels_and_categories_count_from_one() {
        let b = GtBox { class_id: 2, x0: 0.25, y0: 0.5, x1: 0.75, y1: 1.0, depth: 3.0 };
        let json = encode_coco(64, 32, [(5, "000005.jpg", &[b][..]), (6, "000006.jpg", &[][..])]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["images"].as_array().unwrap().len(), 2);
        assert_eq!(v["images"][0], serde_json::json!({"id": 5, "file_name": "000005.jpg", "width": 64, "height": 32}));
        let a = &v["annotations"][0];
        assert_eq!(a["bbox"], serde_json::json!([16.0, 16.0, 32.0, 16.0]));
        assert_eq!((a["image_id"].as_u64(), a["category_id"].as_u64(), a["id"].as_u64()), (Some(5), Some(3), Some(1)));
        assert_eq!(v["annotations"].as_array().unwrap().len(), 1);
        assert_eq!(v["categories"][2], serde_json::json!({"id": 3, "name": "cone"}));
    }
}
