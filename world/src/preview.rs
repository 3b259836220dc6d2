//! A picture of scenes beside their truth, for people checking that the world looks right.
//!
//! One row per scene: the image with its boxes, the segmentation, the depth (log scale, near =
//! bright, sky = black) and the exact normals (`(n + 1) / 2` as RGB, black where there is none).

use image::{Rgb, RgbImage};

use crate::config::MAX_DEPTH;
use crate::render::Scene;

/// Display colour of each segmentation class (also used for the box of the matching object).
pub const SEG_PALETTE: [[u8; 3]; 7] =
    [[135, 206, 235], [120, 90, 55], [230, 40, 40], [40, 90, 235], [255, 150, 0], [40, 200, 70], [165, 70, 210]];

const PANELS: u32 = 4;

/// Rows of `[image+boxes | seg | depth | normals]`, each pixel blown up `scale` times.
pub fn preview(scenes: &[Scene], scale: u32) -> RgbImage {
    let scale = scale.max(1);
    let (w, h) = scenes.first().map_or((1, 1), |s| (s.width(), s.height()));
    let gap = 2 * scale;
    let (pw, ph) = (w * scale, h * scale);
    let mut out = RgbImage::from_pixel(
        PANELS * pw + (PANELS + 1) * gap,
        scenes.len() as u32 * (ph + gap) + gap,
        Rgb([255, 255, 255]),
    );
    for (r, scene) in scenes.iter().enumerate() {
        let top = gap + r as u32 * (ph + gap);
        let panels: [Box<dyn Fn(usize) -> [u8; 3]>; 4] = [
            Box::new(|i| scene.image.as_raw()[3 * i..3 * i + 3].try_into().expect("3 channels")),
            Box::new(|i| SEG_PALETTE[scene.seg[i] as usize % SEG_PALETTE.len()]),
            Box::new(|i| depth_colour(scene.depth[i])),
            Box::new(|i| scene.normals[i].map_or([0, 0, 0], |n| n.map(|c| ((c * 0.5 + 0.5) * 255.0).round() as u8))),
        ];
        for (p, colour_of) in panels.iter().enumerate() {
            let left = gap + p as u32 * (pw + gap);
            for y in 0..ph {
                for x in 0..pw {
                    let i = ((y / scale) * w + x / scale) as usize;
                    out.put_pixel(left + x, top + y, Rgb(colour_of(i)));
                }
            }
        }
        for b in &scene.boxes {
            let colour = Rgb(SEG_PALETTE[2 + b.class_id as usize]);
            let span = |a: f32, b: f32, len: u32| {
                let lo = ((a * len as f32).round() as u32).min(len - 1);
                let hi = ((b * len as f32).round() as u32).saturating_sub(1).clamp(lo, len - 1);
                (lo, hi)
            };
            let (x0, x1) = span(b.x0, b.x1, pw);
            let (y0, y1) = span(b.y0, b.y1, ph);
            let (x0, x1, y0, y1) = (x0 + gap, x1 + gap, y0 + top, y1 + top);
            for x in x0..=x1 {
                out.put_pixel(x, y0, colour);
                out.put_pixel(x, y1, colour);
            }
            for y in y0..=y1 {
                out.put_pixel(x0, y, colour);
                out.put_pixel(x1, y, colour);
            }
        }
    }
    out
}

/// Log-depth colour ramp: 1 m yellow-white, far ground deep purple, sky black.
fn depth_colour(depth: f32) -> [u8; 3] {
    if depth >= MAX_DEPTH {
        return [0, 0, 0];
    }
    let t = 1.0 - (depth.max(1.0).ln() / MAX_DEPTH.ln()).clamp(0.0, 1.0);
    const STOPS: [[f32; 3]; 4] =
        [[40.0, 10.0, 80.0], [180.0, 40.0, 110.0], [250.0, 140.0, 30.0], [255.0, 250.0, 190.0]];
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    std::array::from_fn(|c| (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Split, WorldConfig};
    use crate::render::render;

    #[test]
    fn preview_has_a_row_per_scene() {
        let cfg = WorldConfig::default();
        let scenes: Vec<Scene> = (0..3).map(|i| render(&cfg, Split::Eval, i)).collect();
        let img = preview(&scenes, 2);
        assert_eq!(img.width(), 4 * 192 + 5 * 4);
        assert_eq!(img.height(), 3 * (192 + 4) + 4);
    }
}
