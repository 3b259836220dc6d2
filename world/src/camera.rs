//! The pinhole camera and surface normals recovered from a depth map.
//!
//! Conventions (used everywhere in the crate and in the truth files):
//! - camera coordinates: x right, y **down**, z forward (along the optical axis);
//! - depth is z-depth (distance along the optical axis), not range along the ray;
//! - image coordinates are continuous: pixel `(col, row)` covers `[col, col+1) × [row, row+1)` and its
//!   centre is `(col + 0.5, row + 0.5)`. A point `(x, y, z)` projects to `(fx·x/z + cx, fy·y/z + cy)`.
//!   (OpenCV puts pixel centres at integers: subtract 0.5 from `cx` and `cy` to convert.)

use serde::{Deserialize, Serialize};

/// Pinhole intrinsics in pixels, in the continuous image coordinates described in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intrinsics {
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
}

impl Intrinsics {
    /// The image point of camera-space point `p` (`p[2] > 0`).
    pub fn project(&self, p: [f32; 3]) -> [f32; 2] {
        [self.fx * p[0] / p[2] + self.cx, self.fy * p[1] / p[2] + self.cy]
    }

    /// The camera-space point seen at the centre of pixel `(col, row)` at z-depth `depth`.
    pub fn back_project(&self, col: u32, row: u32, depth: f32) -> [f32; 3] {
        let u = col as f32 + 0.5;
        let v = row as f32 + 0.5;
        [(u - self.cx) * depth / self.fx, (v - self.cy) * depth / self.fy, depth]
    }
}

/// Unit surface normals of a z-depth map (`width·height`, row-major), in camera coordinates.
///
/// Each pixel is back-projected; the tangent along each image axis is the finite difference to the
/// neighbour whose depth is closer (so object edges do not blend two surfaces); the normal is their
/// cross product, oriented towards the camera (`n · p < 0`). With y down, the ground plane gets
/// `(0, -1, 0)`. The sky (a constant depth) gets `(0, 0, -1)`, which means nothing.
///
/// # Panics
/// If `depth.len() != width * height`.
pub fn normals_from_depth(depth: &[f32], width: u32, height: u32, intrinsics: &Intrinsics) -> Vec<[f32; 3]> {
    let (w, h) = (width as usize, height as usize);
    assert_eq!(depth.len(), w * h, "depth map is not {width}x{height}");
    let point = |col: usize, row: usize| intrinsics.back_project(col as u32, row as u32, depth[row * w + col]);
    let mut normals = Vec::with_capacity(w * h);
    for row in 0..h {
        for col in 0..w {
            let p = point(col, row);
            let tangent_x =
                tangent(p, (col > 0).then(|| point(col - 1, row)), (col + 1 < w).then(|| point(col + 1, row)));
            let tangent_y =
                tangent(p, (row > 0).then(|| point(col, row - 1)), (row + 1 < h).then(|| point(col, row + 1)));
            let mut n = cross(tangent_x, tangent_y);
            let len = dot(n, n).sqrt();
            if !(len.is_finite() && len > 0.0) {
                normals.push([0.0, 0.0, -1.0]);
                continue;
            }
            if dot(n, p) > 0.0 {
                scale_in_place(&mut n, -1.0 / len);
            } else {
                scale_in_place(&mut n, 1.0 / len);
            }
            normals.push(n);
        }
    }
    normals
}

/// The forward tangent at `p` from its neighbours along one axis, taking the side with the smaller depth
/// jump. Sign is irrelevant: the normal is re-oriented afterwards.
fn tangent(p: [f32; 3], before: Option<[f32; 3]>, after: Option<[f32; 3]>) -> [f32; 3] {
    let forward = after.map(|a| sub(a, p));
    let backward = before.map(|b| sub(p, b));
    match (backward, forward) {
        (Some(b), Some(f)) => {
            if f[2].abs() <= b[2].abs() {
                f
            } else {
                b
            }
        }
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => [0.0; 3],
    }
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn scale_in_place(v: &mut [f32; 3], s: f32) {
    for c in v.iter_mut() {
        *c *= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intrinsics() -> Intrinsics {
        Intrinsics { fx: 80.0, fy: 80.0, cx: 32.0, cy: 20.0 }
    }

    #[test]
    fn projection_inverts_back_projection() {
        let k = intrinsics();
        let p = k.back_project(10, 30, 7.5);
        let [u, v] = k.project(p);
        assert!((u - 10.5).abs() < 1e-4 && (v - 30.5).abs() < 1e-4, "{u} {v}");
    }

    #[test]
    fn analytic_ground_plane_normals_point_up() {
        let (w, h) = (64u32, 48u32);
        let k = intrinsics();
        let camera_height = 1.5;
        // Only rows below the horizon see the plane y = camera_height; fill the rest with a far wall.
        let depth: Vec<f32> = (0..h)
            .flat_map(|row| {
                let v = row as f32 + 0.5 - k.cy;
                (0..w).map(move |_| if v > 0.0 { k.fy * camera_height / v } else { 60.0 })
            })
            .collect();
        let normals = normals_from_depth(&depth, w, h, &k);
        for row in (k.cy as u32 + 2)..h {
            for col in 0..w {
                let n = normals[(row * w + col) as usize];
                assert!((n[1] + 1.0).abs() < 1e-3 && n[0].abs() < 1e-3 && n[2].abs() < 1e-3, "{row},{col}: {n:?}");
            }
        }
    }

    #[test]
    fn fronto_parallel_wall_faces_the_camera() {
        let k = intrinsics();
        let normals = normals_from_depth(&[4.0; 64 * 48], 64, 48, &k);
        for n in normals {
            assert!((n[2] + 1.0).abs() < 1e-5, "{n:?}");
        }
    }
}
