//! Rendering one scene with exact ground truth.
//!
//! The world is a flat ground plane under a sky, seen by a level pinhole camera at height `h`. The
//! horizon is the principal point's row `cy`, which varies per image (a shifted sensor, so the camera
//! stays level and the ground stays exactly the plane `y = h` in camera coordinates). Objects are
//! upright billboards standing on the plane at distance `z`: the base is at row `cy + f·h/z` and a
//! size of `S` metres spans `f·S/z` pixels, so farther objects are smaller and higher. The ball is a
//! sphere in depth (`z - sqrt(r² - d²)`), the others are flat at `z`.
//!
//! Everything is drawn through one z-buffer, so the image, the segmentation, the depth map and the
//! normals always agree on what is visible. Labels are sampled at pixel centres; the image then gets
//! exposure jitter, optional blur and Gaussian noise, none of which touch the labels.
//!
//! Normals are exact, from the geometry rather than from differences of the depth map: `(0, -1, 0)` on
//! the ground, `(0, 0, -1)` on the flat billboards, and on the ball the normal of the surface its depth
//! map describes. That surface is `P(a, b) = D(a, b)·(a, b, 1)` over ray slopes `a = (u - cx)/f`,
//! `b = (v - cy)/f`, with `D = z - s`, `s = sqrt(r² - lx² - dy²)`, `lx = a·z - x`, `dy = h - b·z - r`;
//! its normal `∂P/∂a × ∂P/∂b`, scaled by `s/z` and turned to the camera, is
//! `(lx, -dy, -(a·lx - b·dy) - D·s/z)`. (The ball's shading uses the plain sphere normal
//! `(lx, -dy, -s)/r`; perspective shears the bulge, so that differs from the depth surface's normal by
//! a mean of 5–13° on near balls. The truth follows the depth, so that the depth and normal labels
//! describe one surface.) The sky and the far ground whose depth is clamped to `FAR_GROUND_DEPTH` have
//! no normal.
//!
//! The config's [`Domain`](crate::Domain) shifts the appearance for downstream data (lighting, texture
//! hues and contrast, the object mix); the pre-training path draws exactly the random numbers it always
//! did, so its scenes never change.
//!
//! Boxes are the full projected extent of each object clipped to the image (not the visible part).
//! An object is left out of the box list, though still drawn, when its clipped box is under 3 px on
//! a side or when more than 70% of its in-image pixels are hidden behind nearer objects.

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::camera::Intrinsics;
use crate::config::{
    Domain, Split, WorldConfig, DOWNSTREAM_EXPOSURE, DOWNSTREAM_GROUND_CONTRAST, DOWNSTREAM_HUE_DEGREES,
    DOWNSTREAM_LIGHT_TINT, DOWNSTREAM_OBJECT_WEIGHTS, FAR_GROUND_DEPTH, MAX_DEPTH, OBJECT_CLASSES, SCENE_CLASSES,
    SEG_FIRST_OBJECT, SEG_GROUND, SEG_SKY,
};
use crate::texture::{lattice, lerp, mix64, mul, scale, smoothstep, Noise, Rgb};

/// Most objects placed in one scene (before dropping tiny or hidden ones from the box list).
pub const MAX_OBJECTS: usize = 5;
/// Boxes narrower or shorter than this many pixels (after clipping) are dropped.
pub const MIN_BOX_PIXELS: f32 = 3.0;
/// Objects with less than this fraction of their in-image pixels visible are dropped from the boxes.
pub const MIN_VISIBLE_FRACTION: f32 = 0.3;

/// Nearest and farthest object distance in metres, before the image-size limits of `object_range`.
const NEAR_Z: f32 = 3.0;
const FAR_Z: f32 = 25.0;

/// One rendered scene and its exact truth.
#[derive(Clone, Debug)]
pub struct Scene {
    /// The camera image, before JPEG/PNG encoding.
    pub image: RgbImage,
    /// Index into [`SCENE_CLASSES`].
    pub scene_class: u8,
    /// Objects worth detecting (see the module docs for which are left out).
    pub boxes: Vec<GtBox>,
    /// Segmentation class per pixel (index into `SEG_CLASSES`), `height·width` row-major.
    pub seg: Vec<u8>,
    /// z-depth in metres per pixel, `height·width` row-major; exactly `MAX_DEPTH` on sky pixels only.
    pub depth: Vec<f32>,
    /// Exact unit surface normal per pixel in camera coordinates (x right, y down, z forward), facing
    /// the camera, `height·width` row-major; `None` on the sky and on ground clamped to
    /// `FAR_GROUND_DEPTH` (see the module docs).
    pub normals: Vec<Option<[f32; 3]>>,
    /// The camera of this scene.
    pub intrinsics: Intrinsics,
    /// Camera height above the ground plane in metres.
    pub camera_height: f32,
    /// JPEG quality to store this scene with (80..=95), when it is stored as JPEG.
    pub jpeg_quality: u8,
}

impl Scene {
    /// Image width in pixels.
    pub fn width(&self) -> u32 {
        self.image.width()
    }

    /// Image height in pixels.
    pub fn height(&self) -> u32 {
        self.image.height()
    }
}

/// A ground-truth box: the object's full extent clipped to the image, normalised to `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GtBox {
    /// Index into [`OBJECT_CLASSES`].
    pub class_id: u8,
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    /// Distance of the object in metres (z of its billboard plane; the ball's centre).
    pub depth: f32,
}

/// Render scene `index` of `split`. Pure: the same arguments always give the same scene.
pub fn render(cfg: &WorldConfig, split: Split, index: u64) -> Scene {
    render_stream(cfg, split.stream_tag(), index)
}

/// Render scene `index` of the random stream `tag` (a split's or a downstream task's). Pure.
pub(crate) fn render_stream(cfg: &WorldConfig, tag: u64, index: u64) -> Scene {
    let domain = cfg.domain();
    let mut rng = scene_rng(cfg.seed(), tag ^ domain.stream_tag(), index);
    let (width, height) = (cfg.width(), cfg.height());
    let scene_class = rng.gen_range(0..SCENE_CLASSES.len() as u8);
    let camera = Camera::sample(&mut rng, width, height);
    let style = Style::sample(&mut rng, scene_class, domain);
    let objects = place_objects(&mut rng, &camera, width, height, domain);

    let mut canvas = Canvas::new(width, height);
    paint_background(&mut canvas, &camera, &style, &objects);
    let coverage = paint_objects(&mut canvas, &camera, &style, &objects);
    let boxes = boxes_of(&objects, &coverage, &canvas.owner, &camera, width, height);

    finish_image(&mut canvas.colour, &mut rng, width, height, domain);
    let jpeg_quality = rng.gen_range(80..=95u8);
    let image = quantise(&canvas.colour, width, height);
    Scene {
        image,
        scene_class,
        boxes,
        seg: canvas.seg,
        depth: canvas.depth,
        normals: canvas.normals,
        intrinsics: camera.k,
        camera_height: camera.height,
        jpeg_quality,
    }
}

/// The random stream of one scene: the key depends on `(seed, tag)`, the ChaCha stream on `index`.
fn scene_rng(seed: u64, tag: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    let mut state = mix64(seed) ^ tag;
    for chunk in key.chunks_exact_mut(8) {
        state = mix64(state);
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

struct Camera {
    k: Intrinsics,
    /// Height above the ground plane, metres.
    height: f32,
    /// Focal length in pixels (`fx == fy`).
    f: f32,
}

impl Camera {
    fn sample(rng: &mut ChaCha8Rng, width: u32, height: u32) -> Self {
        let hfov = rng.gen_range(55.0f32..65.0).to_radians();
        let f = width as f32 / (2.0 * (hfov / 2.0).tan());
        let cy = height as f32 * rng.gen_range(0.36f32..0.50);
        let camera_height = rng.gen_range(1.3f32..1.9);
        Self { k: Intrinsics { fx: f, fy: f, cx: width as f32 / 2.0, cy }, height: camera_height, f }
    }

    /// Distance range for objects: near enough that the base lands at least one pixel above the
    /// bottom edge, far enough for variety, and no farther than where a thin object (a pillar, about
    /// 0.45 m wide) shrinks to [`MIN_BOX_PIXELS`], so small images are not full of undetectable dots.
    fn object_range(&self, image_height: u32) -> (f32, f32) {
        let rows_below_horizon = image_height as f32 - 1.0 - self.k.cy;
        let near = NEAR_Z.max(self.f * self.height / rows_below_horizon);
        let far = (self.f * 0.45 / MIN_BOX_PIXELS).clamp(2.0 * near, FAR_Z.max(2.0 * near));
        (near, far)
    }
}

/// Per-image appearance of a scene class.
struct Style {
    class: u8,
    sky_top: Rgb,
    sky_horizon: Rgb,
    ground_a: Rgb,
    ground_b: Rgb,
    /// Object illumination (multiplies object colours).
    light: Rgb,
    shadow: f32,
    /// Sun position as (azimuth, elevation) tangents; drawn only at sunset.
    sun: [f32; 2],
    /// Beach: distance where the sea starts. City: lateral offset of the lane lines.
    feature: f32,
    noise: Noise,
}

impl Style {
    fn sample(rng: &mut ChaCha8Rng, class: u8, domain: Domain) -> Self {
        // (sky top, sky at the horizon, ground tone a, ground tone b, light, shadow strength)
        let (top, horizon, a, b, light, shadow): (Rgb, Rgb, Rgb, Rgb, Rgb, f32) = match class {
            0 => {
                ([0.25, 0.45, 0.85], [0.70, 0.82, 0.95], [0.20, 0.50, 0.16], [0.42, 0.66, 0.22], [1.0, 1.0, 1.0], 0.35)
            }
            1 => (
                [0.45, 0.65, 0.90],
                [0.93, 0.90, 0.82],
                [0.86, 0.71, 0.46],
                [0.72, 0.55, 0.33],
                [1.05, 1.0, 0.92],
                0.40,
            ),
            2 => (
                [0.60, 0.66, 0.76],
                [0.84, 0.86, 0.90],
                [0.94, 0.96, 0.99],
                [0.78, 0.84, 0.93],
                [0.95, 0.97, 1.05],
                0.20,
            ),
            3 => (
                [0.02, 0.03, 0.10],
                [0.10, 0.12, 0.26],
                [0.09, 0.11, 0.15],
                [0.17, 0.18, 0.24],
                [0.45, 0.50, 0.68],
                0.15,
            ),
            4 => (
                [0.33, 0.22, 0.52],
                [1.00, 0.55, 0.25],
                [0.33, 0.23, 0.17],
                [0.48, 0.33, 0.20],
                [1.0, 0.75, 0.55],
                0.45,
            ),
            5 => (
                [0.12, 0.52, 0.95],
                [0.62, 0.86, 0.98],
                [0.95, 0.88, 0.66],
                [0.78, 0.68, 0.48],
                [1.05, 1.03, 1.0],
                0.35,
            ),
            6 => (
                [0.55, 0.65, 0.58],
                [0.78, 0.82, 0.74],
                [0.13, 0.28, 0.09],
                [0.36, 0.25, 0.12],
                [0.80, 0.90, 0.75],
                0.30,
            ),
            _ => (
                [0.55, 0.58, 0.62],
                [0.78, 0.76, 0.72],
                [0.29, 0.29, 0.31],
                [0.40, 0.40, 0.42],
                [0.95, 0.95, 0.95],
                0.40,
            ),
        };
        let exposure = rng.gen_range(0.9f32..1.1);
        let mut jitter = |c: Rgb, amount: f32| -> Rgb {
            let mut out = c;
            for ch in out.iter_mut() {
                *ch = ((*ch + rng.gen_range(-amount..amount)) * exposure).clamp(0.0, 1.0);
            }
            out
        };
        let mut sky_top = jitter(top, 0.05);
        let mut sky_horizon = jitter(horizon, 0.05);
        let mut ground_a = jitter(a, 0.05);
        let mut ground_b = jitter(b, 0.05);
        let light = jitter(light, 0.04);
        if domain == Domain::Downstream {
            // A deterministic grade of the sampled tones: no random numbers drawn.
            [sky_top, sky_horizon, ground_a, ground_b] =
                [sky_top, sky_horizon, ground_a, ground_b].map(|c| rotate_hue(c, DOWNSTREAM_HUE_DEGREES));
            let mean = lerp(ground_a, ground_b, 0.5);
            let apart = |c: Rgb| lerp(mean, c, DOWNSTREAM_GROUND_CONTRAST).map(|ch| ch.clamp(0.0, 1.0));
            [ground_a, ground_b] = [apart(ground_a), apart(ground_b)];
        }
        let sun = [rng.gen_range(-0.5f32..0.5), rng.gen_range(0.02f32..0.12)];
        let feature = match class {
            5 => rng.gen_range(12.0f32..26.0),
            _ => rng.gen_range(0.0f32..3.5),
        };
        Self {
            class,
            sky_top,
            sky_horizon,
            ground_a,
            ground_b,
            light,
            shadow: shadow * rng.gen_range(0.7f32..1.2),
            sun,
            feature,
            noise: Noise::new(rng.gen()),
        }
    }

    /// Sky colour at angular position `a` (right) and elevation `e` (up), both tangents; `pixel` seeds
    /// the stars.
    fn sky(&self, a: f32, e: f32, footprint: f32, pixel: (u32, u32)) -> Rgb {
        let t = (e / 0.7).clamp(0.0, 1.0).powf(0.6);
        let mut c = lerp(self.sky_horizon, self.sky_top, t);
        let n = &self.noise;
        match self.class {
            // meadow, beach: white cumulus
            0 | 5 => {
                let cloud = smoothstep(0.1, 0.45, n.fbm(a + 10.0, e * 2.5, 0.4, 4, footprint));
                let amount = if self.class == 0 { 0.85 } else { 0.5 };
                c = lerp(c, [0.97, 0.97, 0.98], cloud * amount);
            }
            // desert: white haze low on the horizon
            1 => c = lerp(c, [0.98, 0.96, 0.9], (1.0 - e / 0.15).clamp(0.0, 1.0) * 0.5),
            // snowfield: grey overcast
            2 => {
                let cloud = smoothstep(-0.3, 0.4, n.fbm(a + 10.0, e * 1.5, 0.5, 4, footprint));
                c = lerp(c, [0.72, 0.74, 0.78], cloud * 0.6);
            }
            // night: stars
            3 => {
                let star = lattice(mix64(n.seed()), pixel.0 as i64, pixel.1 as i64);
                if star > 0.985 && e > 0.03 {
                    let b = (star - 0.985) / 0.015;
                    c = lerp(c, [0.95, 0.95, 1.0], 0.4 + 0.6 * b);
                }
            }
            // sunset: sun glow and streaky clouds
            4 => {
                let d = ((a - self.sun[0]).powi(2) + (e - self.sun[1]).powi(2)).sqrt();
                c = lerp(c, [1.0, 0.8, 0.45], (-d * 5.0).exp() * 0.6);
                if d < 0.045 {
                    c = [1.0, 0.93, 0.7];
                }
                let streak = smoothstep(0.1, 0.5, n.fbm(a * 0.4 + 3.0, e * 6.0, 0.3, 3, footprint));
                c = lerp(c, [0.45, 0.2, 0.35], streak * 0.5);
            }
            // forest: mist
            6 => c = lerp(c, [0.86, 0.88, 0.84], smoothstep(-0.2, 0.6, n.fbm(a, e * 3.0, 0.6, 3, footprint)) * 0.4),
            // city: brown smog
            _ => c = lerp(c, [0.6, 0.55, 0.48], (1.0 - e / 0.3).clamp(0.0, 1.0) * 0.35),
        }
        c
    }

    /// Ground colour at plane point `(x, z)` metres, where one pixel spans `footprint` metres.
    fn ground(&self, x: f32, z: f32, footprint: f32) -> Rgb {
        let n = &self.noise;
        let grain = n.fbm(x + 50.0, z, 0.12, 2, footprint);
        let mut c = match self.class {
            // meadow: grass patches and flowers
            0 => {
                let t = 0.5 + 0.5 * n.fbm(x, z, 4.0, 5, footprint);
                let mut c = scale(lerp(self.ground_a, self.ground_b, t), 1.0 + 0.12 * grain);
                // Flowers: a small blossom (radius 7 cm) in some 0.4 m cells, fading out once a pixel
                // is wider than the blossom.
                let (cx, cz) = ((x / 0.4).floor(), (z / 0.4).floor());
                let cell = lattice(n.seed() ^ 0xF10, cx as i64, cz as i64);
                if cell > 0.9 {
                    let ox = 0.1 + 0.2 * lattice(n.seed() ^ 0xF11, cx as i64, cz as i64);
                    let oz = 0.1 + 0.2 * lattice(n.seed() ^ 0xF12, cx as i64, cz as i64);
                    let d = ((x - cx * 0.4 - ox).powi(2) + (z - cz * 0.4 - oz).powi(2)).sqrt();
                    let cover = (1.0 - (d - 0.07) / footprint.max(1e-3)).clamp(0.0, 1.0) * (0.14 / footprint).min(1.0);
                    let petal = if cell > 0.95 { [0.98, 0.9, 0.2] } else { [0.97, 0.97, 0.97] };
                    c = lerp(c, petal, cover * 0.9);
                }
                c
            }
            // desert: dune ripples
            1 => {
                let warp = n.fbm(x, z, 8.0, 2, footprint) * 2.0;
                let ripple = ((z + warp) * std::f32::consts::TAU / 2.2).sin() * smoothstep(1.0, 3.0, 2.2 / footprint);
                let t = 0.5 + 0.35 * ripple + 0.15 * n.fbm(x, z, 6.0, 3, footprint);
                scale(lerp(self.ground_a, self.ground_b, t), 1.0 + 0.05 * grain)
            }
            // snowfield: soft drifts and sparkle
            2 => {
                let t = 0.5 + 0.5 * n.fbm(x, z, 5.0, 4, footprint);
                scale(lerp(self.ground_a, self.ground_b, t), 1.0 + 0.04 * grain)
            }
            // beach: dry sand, wet sand, then sea
            5 => {
                let shore = self.feature + 1.5 * n.fbm(x, 0.0, 6.0, 2, footprint);
                if z > shore {
                    let wave = ((z * 1.7 + 2.0 * n.fbm(x, z, 5.0, 2, footprint)) * std::f32::consts::TAU / 3.0).sin();
                    let fade = smoothstep(1.0, 3.0, 1.7 / footprint);
                    lerp([0.08, 0.40, 0.62], [0.55, 0.8, 0.88], (0.5 + 0.5 * wave * fade) * 0.35)
                } else if z > shore - 2.0 {
                    scale(self.ground_b, 1.0 + 0.08 * grain)
                } else {
                    let t = 0.2 + 0.3 * n.fbm(x, z, 3.0, 3, footprint);
                    scale(lerp(self.ground_a, self.ground_b, t), 1.0 + 0.08 * grain)
                }
            }
            // forest: moss and leaf litter in big mottled patches
            6 => {
                let t = smoothstep(-0.25, 0.25, n.fbm(x, z, 2.5, 5, footprint));
                scale(lerp(self.ground_a, self.ground_b, t), 1.0 + 0.25 * grain)
            }
            // city: asphalt with dashed lane lines every 3.5 m
            7 => {
                let mut c = scale(
                    lerp(self.ground_a, self.ground_b, 0.5 + 0.5 * n.fbm(x, z, 3.0, 3, footprint)),
                    1.0 + 0.15 * grain,
                );
                let rel = x - self.feature;
                let dist = (rel - (rel / 3.5).round() * 3.5).abs();
                let half_width = 0.08;
                let dashed = (z / 6.0).fract() < 0.5;
                if dashed {
                    let cover = (1.0 - (dist - half_width) / footprint).clamp(0.0, 1.0)
                        * (2.0 * half_width / footprint).min(1.0);
                    c = lerp(c, [0.92, 0.92, 0.88], cover);
                }
                c
            }
            // night, sunset: plain rough ground
            _ => {
                let t = 0.5 + 0.5 * n.fbm(x, z, 3.0, 5, footprint);
                scale(lerp(self.ground_a, self.ground_b, t), 1.0 + 0.15 * grain)
            }
        };
        // Aerial perspective: far ground fades into the horizon sky.
        let haze = smoothstep(0.0, 1.3 * MAX_DEPTH, z).powf(0.8) * 0.85;
        c = lerp(c, self.sky_horizon, haze);
        c
    }
}

struct Object {
    class: u8,
    /// Lateral position of the object's centre line, metres (camera x).
    x: f32,
    /// Distance of the billboard plane, metres.
    z: f32,
    /// Width and height in metres.
    w: f32,
    h: f32,
    colour: Rgb,
    noise: Noise,
}

/// Nominal (width, height) in metres and base colour of each object category.
const OBJECT_SHAPES: [([f32; 2], Rgb); 5] = [
    ([0.55, 0.55], [0.85, 0.12, 0.10]),
    ([0.8, 0.8], [0.15, 0.30, 0.85]),
    ([0.55, 0.85], [0.98, 0.50, 0.08]),
    ([0.9, 0.9], [0.15, 0.78, 0.25]),
    ([0.4, 2.0], [0.55, 0.20, 0.75]),
];

/// Size jitter: every object is its nominal size times a factor in this range.
const SIZE_JITTER: (f32, f32) = (0.85, 1.15);

fn place_objects(rng: &mut ChaCha8Rng, camera: &Camera, width: u32, height: u32, domain: Domain) -> Vec<Object> {
    let count = rng.gen_range(0..=MAX_OBJECTS);
    let (near, far) = camera.object_range(height);
    let mut objects: Vec<Object> = Vec::with_capacity(count);
    for _ in 0..count {
        // Rejection-sample so that two objects never share ground: their footprints are w×w squares.
        for _attempt in 0..10 {
            let class = match domain {
                Domain::Pretrain => rng.gen_range(0..OBJECT_CLASSES.len() as u8),
                Domain::Downstream => weighted_class(rng.gen::<f32>()),
            };
            let ([w, h], base) = OBJECT_SHAPES[class as usize];
            let s = rng.gen_range(SIZE_JITTER.0..SIZE_JITTER.1);
            let z = near * (far / near).powf(rng.gen::<f32>());
            let u = rng.gen_range(0.04f32..0.96) * width as f32;
            let x = (u - camera.k.cx) * z / camera.f;
            let brightness = rng.gen_range(0.85f32..1.1);
            let mut colour = base;
            for ch in colour.iter_mut() {
                *ch = ((*ch + rng.gen_range(-0.07f32..0.07)) * brightness).clamp(0.0, 1.0);
            }
            let noise = Noise::new(rng.gen());
            let candidate = Object { class, x, z, w: w * s, h: h * s, colour, noise };
            let clear = objects.iter().all(|o| {
                let reach = (o.w + candidate.w) / 2.0;
                (o.x - candidate.x).abs() >= reach || (o.z - candidate.z).abs() >= reach
            });
            if clear {
                objects.push(candidate);
                break;
            }
        }
    }
    objects
}

/// The category whose cumulative [`DOWNSTREAM_OBJECT_WEIGHTS`] interval holds `u` (in `[0, 1)`).
fn weighted_class(u: f32) -> u8 {
    let mut cumulative = 0.0;
    for (class, w) in DOWNSTREAM_OBJECT_WEIGHTS.iter().enumerate() {
        cumulative += w;
        if u < cumulative {
            return class as u8;
        }
    }
    (DOWNSTREAM_OBJECT_WEIGHTS.len() - 1) as u8
}

struct Canvas {
    width: u32,
    height: u32,
    colour: Vec<Rgb>,
    seg: Vec<u8>,
    depth: Vec<f32>,
    normals: Vec<Option<[f32; 3]>>,
    /// Which object is visible at each pixel (`u8::MAX`: none).
    owner: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        let n = (width * height) as usize;
        Self {
            width,
            height,
            colour: vec![[0.0; 3]; n],
            seg: vec![SEG_SKY; n],
            depth: vec![MAX_DEPTH; n],
            normals: vec![None; n],
            owner: vec![u8::MAX; n],
        }
    }
}

fn paint_background(canvas: &mut Canvas, camera: &Camera, style: &Style, objects: &[Object]) {
    let k = camera.k;
    let f = camera.f;
    for row in 0..canvas.height {
        let dv = row as f32 + 0.5 - k.cy;
        for col in 0..canvas.width {
            let i = (row * canvas.width + col) as usize;
            let du = col as f32 + 0.5 - k.cx;
            if dv > 0.0 {
                let z = f * camera.height / dv;
                let x = du * z / f;
                // Geometric mean of the lateral (z/f) and along-ground (z²/(f·h)) pixel footprints.
                let footprint = z / f * (z / camera.height).max(1.0).sqrt();
                let mut c = style.ground(x, z, footprint);
                c = scale(c, shadow_factor(style, objects, x, z));
                canvas.colour[i] = c;
                canvas.seg[i] = SEG_GROUND;
                canvas.depth[i] = z.min(FAR_GROUND_DEPTH);
                canvas.normals[i] = (z < FAR_GROUND_DEPTH).then_some([0.0, -1.0, 0.0]);
            } else {
                canvas.colour[i] = style.sky(du / f, -dv / f, 1.0 / f, (col, row));
            }
        }
    }
}

/// Soft elliptical contact shadows under each object, slightly offset away from the light.
fn shadow_factor(style: &Style, objects: &[Object], x: f32, z: f32) -> f32 {
    let mut factor = 1.0;
    for o in objects {
        let dx = (x - o.x - 0.2 * o.w) / (0.75 * o.w);
        let dz = (z - o.z - 0.1) / (0.5 * o.w.max(0.4));
        let d2 = dx * dx + dz * dz;
        if d2 < 1.0 {
            factor *= 1.0 - style.shadow * (1.0 - d2).sqrt();
        }
    }
    factor
}

/// Draws the objects through the z-buffer; returns the number of in-image pixels each one covers.
fn paint_objects(canvas: &mut Canvas, camera: &Camera, style: &Style, objects: &[Object]) -> Vec<u32> {
    let k = camera.k;
    let f = camera.f;
    let mut coverage = vec![0u32; objects.len()];
    for (id, o) in objects.iter().enumerate() {
        let u0 = k.cx + f * (o.x - o.w / 2.0) / o.z;
        let u1 = k.cx + f * (o.x + o.w / 2.0) / o.z;
        let v0 = k.cy + f * (camera.height - o.h) / o.z;
        let v1 = k.cy + f * camera.height / o.z;
        let col_range = pixel_span(u0, u1, canvas.width);
        let row_range = pixel_span(v0, v1, canvas.height);
        for row in row_range {
            let b = (row as f32 + 0.5 - k.cy) / f;
            let ly = camera.height - (row as f32 + 0.5 - k.cy) * o.z / f;
            for col in col_range.clone() {
                let a = (col as f32 + 0.5 - k.cx) / f;
                let lx = (col as f32 + 0.5 - k.cx) * o.z / f - o.x;
                let Some((depth, colour)) = shade_object(o, lx, ly) else {
                    continue;
                };
                coverage[id] += 1;
                let i = (row * canvas.width + col) as usize;
                if depth < canvas.depth[i] {
                    canvas.depth[i] = depth;
                    canvas.seg[i] = SEG_FIRST_OBJECT + o.class;
                    canvas.owner[i] = id as u8;
                    canvas.colour[i] = mul(colour, style.light);
                    canvas.normals[i] = Some(object_normal(o, lx, ly, a, b));
                }
            }
        }
    }
    coverage
}

/// Pixel indices whose centres may fall in `[a, b]`, clipped to `0..len`.
fn pixel_span(a: f32, b: f32, len: u32) -> std::ops::Range<u32> {
    let start = (a - 0.5).floor().max(0.0) as u32;
    let end = ((b - 0.5).ceil() + 1.0).clamp(0.0, len as f32) as u32;
    start.min(end)..end
}

/// Depth and colour of object `o` at local point (`lx` right of its centre line, `ly` above the
/// ground), or `None` outside its silhouette.
fn shade_object(o: &Object, lx: f32, ly: f32) -> Option<(f32, Rgb)> {
    let grain = 1.0 + 0.06 * (o.noise.value(lx * 20.0, ly * 20.0) * 2.0 - 1.0);
    match o.class {
        // ball: a lit sphere
        0 => {
            let r = o.w / 2.0;
            let (dx, dy) = (lx, ly - r);
            let d2 = dx * dx + dy * dy;
            if d2 > r * r {
                return None;
            }
            let bulge = (r * r - d2).sqrt();
            // Camera coordinates (y down); light from upper left, in front.
            let n = [dx / r, -dy / r, -bulge / r];
            let l = [-0.45, -0.75, -0.48];
            let lambert = (n[0] * l[0] + n[1] * l[1] + n[2] * l[2]).max(0.0);
            let c = scale(o.colour, (0.3 + 0.75 * lambert) * grain);
            let c = lerp(c, [1.0, 1.0, 1.0], lambert.powi(24) * 0.5);
            Some((o.z - bulge, c))
        }
        // crate: planks in a dark frame, with a diagonal brace
        1 => {
            let half = o.w / 2.0;
            if lx.abs() > half || !(0.0..=o.h).contains(&ly) {
                return None;
            }
            let edge = (half - lx.abs()).min(ly).min(o.h - ly) / o.w;
            let mut shade = if edge < 0.08 { 0.62 } else { 0.95 };
            if edge >= 0.08 && ((ly / o.h * 3.0).fract() < 0.05 || ((lx + half) - ly).abs() < 0.05 * o.w) {
                shade = 0.75;
            }
            Some((o.z, scale(o.colour, shade * grain)))
        }
        // cone: a shaded triangle with a white reflective band
        2 => {
            if !(0.0..=o.h).contains(&ly) {
                return None;
            }
            let half = o.w / 2.0 * (1.0 - ly / o.h);
            if lx.abs() > half {
                return None;
            }
            let band = (0.45..0.6).contains(&(ly / o.h));
            let s = lx / half.max(1e-6);
            let shade = 0.6 + 0.4 * (1.0 - ((s + 0.3) / 1.3).powi(2)).max(0.0);
            let base = if band { [0.95, 0.95, 0.93] } else { o.colour };
            Some((o.z, scale(base, shade * grain)))
        }
        // ring: an upright annulus with a rounded cross-section
        3 => {
            let outer = o.w / 2.0;
            let inner = 0.58 * outer;
            let (dx, dy) = (lx, ly - outer);
            let d = (dx * dx + dy * dy).sqrt();
            if d > outer || d < inner {
                return None;
            }
            let t = (d - inner) / (outer - inner);
            let side = 0.85 + 0.15 * (dy - dx) / d.max(1e-6);
            let shade = (0.55 + 0.45 * (std::f32::consts::PI * t).sin()) * side;
            Some((o.z, scale(o.colour, shade * grain)))
        }
        // pillar: a tall cylinder-shaded column with a light capital
        _ => {
            let half = o.w / 2.0;
            if lx.abs() > half || !(0.0..=o.h).contains(&ly) {
                return None;
            }
            let s = lx / half;
            let shade = 0.45 + 0.55 * ((1.0 - s * s).sqrt() * 0.85 - 0.25 * s).clamp(0.0, 1.0);
            let capital = if o.h - ly < 0.08 * o.h { 1.15 } else { 1.0 };
            Some((o.z, scale(o.colour, shade * capital * grain)))
        }
    }
}

/// The exact unit normal of object `o` at local point (`lx`, `ly`) seen along ray slopes (`a`, `b`):
/// the billboards face the camera; the ball's is the normal of its depth surface (module docs).
fn object_normal(o: &Object, lx: f32, ly: f32, a: f32, b: f32) -> [f32; 3] {
    if o.class != 0 {
        return [0.0, 0.0, -1.0];
    }
    let r = o.w / 2.0;
    let dy = ly - r;
    let s = (r * r - lx * lx - dy * dy).max(0.0).sqrt();
    let depth = o.z - s;
    let n = [lx, -dy, -(a * lx - b * dy) - depth * s / o.z];
    let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    if len > 0.0 {
        n.map(|c| c / len)
    } else {
        [0.0, 0.0, -1.0]
    }
}

fn boxes_of(
    objects: &[Object],
    coverage: &[u32],
    owner: &[u8],
    camera: &Camera,
    width: u32,
    height: u32,
) -> Vec<GtBox> {
    let mut visible = vec![0u32; objects.len()];
    for &id in owner.iter().filter(|&&id| id != u8::MAX) {
        visible[id as usize] += 1;
    }
    let (wf, hf) = (width as f32, height as f32);
    let (k, f) = (camera.k, camera.f);
    objects
        .iter()
        .zip(coverage.iter().zip(&visible))
        .filter_map(|(o, (&covered, &seen))| {
            let x0 = (k.cx + f * (o.x - o.w / 2.0) / o.z).clamp(0.0, wf);
            let x1 = (k.cx + f * (o.x + o.w / 2.0) / o.z).clamp(0.0, wf);
            let y0 = (k.cy + f * (camera.height - o.h) / o.z).clamp(0.0, hf);
            let y1 = (k.cy + f * camera.height / o.z).clamp(0.0, hf);
            let too_small = x1 - x0 < MIN_BOX_PIXELS || y1 - y0 < MIN_BOX_PIXELS;
            let hidden = covered == 0 || (seen as f32) < MIN_VISIBLE_FRACTION * covered as f32;
            if too_small || hidden {
                return None;
            }
            Some(GtBox { class_id: o.class, x0: x0 / wf, y0: y0 / hf, x1: x1 / wf, y1: y1 / hf, depth: o.z })
        })
        .collect()
}

/// Camera effects on the image only: exposure (and in the downstream domain the warm grade), sometimes
/// a slight blur, then sensor noise.
fn finish_image(colour: &mut [Rgb], rng: &mut ChaCha8Rng, width: u32, height: u32, domain: Domain) {
    let grade = match domain {
        Domain::Pretrain => [rng.gen_range(0.92f32..1.08); 3],
        Domain::Downstream => scale(DOWNSTREAM_LIGHT_TINT, rng.gen_range(DOWNSTREAM_EXPOSURE.0..DOWNSTREAM_EXPOSURE.1)),
    };
    for c in colour.iter_mut() {
        *c = mul(*c, grade);
    }
    if rng.gen_bool(0.35) {
        blur_121(colour, width as usize, height as usize);
    }
    let sigma = rng.gen_range(1.5f32..5.0) / 255.0;
    let mut spare: Option<f32> = None;
    for c in colour.iter_mut() {
        for ch in c.iter_mut() {
            let g = match spare.take() {
                Some(g) => g,
                None => {
                    let (a, b) = gaussian_pair(rng);
                    spare = Some(b);
                    a
                }
            };
            *ch += sigma * g;
        }
    }
}

/// `c` rotated `degrees` around the grey axis of RGB space (a hue shift that keeps grey grey), clamped.
fn rotate_hue(c: Rgb, degrees: f32) -> Rgb {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let third = (1.0 - cos) / 3.0;
    let root = sin / 3.0f32.sqrt();
    let (p, q) = (cos + third, third - root);
    let r = third + root;
    [p * c[0] + q * c[1] + r * c[2], r * c[0] + p * c[1] + q * c[2], q * c[0] + r * c[1] + p * c[2]]
        .map(|ch| ch.clamp(0.0, 1.0))
}

/// Two independent standard normal samples (Box–Muller).
fn gaussian_pair(rng: &mut ChaCha8Rng) -> (f32, f32) {
    let u1: f32 = 1.0 - rng.gen::<f32>(); // (0, 1]: keeps ln finite
    let u2: f32 = rng.gen();
    let r = (-2.0 * u1.ln()).sqrt();
    let t = std::f32::consts::TAU * u2;
    (r * t.cos(), r * t.sin())
}

/// Separable [1 2 1]/4 blur with clamped edges.
fn blur_121(colour: &mut [Rgb], w: usize, h: usize) {
    let mut tmp = colour.to_vec();
    for row in 0..h {
        for col in 0..w {
            let l = colour[row * w + col.saturating_sub(1)];
            let m = colour[row * w + col];
            let r = colour[row * w + (col + 1).min(w - 1)];
            tmp[row * w + col] = std::array::from_fn(|ch| 0.25 * l[ch] + 0.5 * m[ch] + 0.25 * r[ch]);
        }
    }
    for row in 0..h {
        for col in 0..w {
            let u = tmp[row.saturating_sub(1) * w + col];
            let m = tmp[row * w + col];
            let d = tmp[(row + 1).min(h - 1) * w + col];
            colour[row * w + col] = std::array::from_fn(|ch| 0.25 * u[ch] + 0.5 * m[ch] + 0.25 * d[ch]);
        }
    }
}

fn quantise(colour: &[Rgb], width: u32, height: u32) -> RgbImage {
    let mut raw = Vec::with_capacity(colour.len() * 3);
    for c in colour {
        for ch in c {
            raw.push((ch * 255.0).round().clamp(0.0, 255.0) as u8);
        }
    }
    RgbImage::from_raw(width, height, raw).expect("buffer matches the image size")
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;
    use crate::camera::normals_from_depth;

    fn cfg(seed: u64, w: u32, h: u32) -> WorldConfig {
        WorldConfig::try_new(seed, w, h).unwrap()
    }

    fn same(a: &Scene, b: &Scene) -> bool {
        a.image == b.image && a.seg == b.seg && a.depth == b.depth && a.boxes == b.boxes && a.intrinsics == b.intrinsics
    }

    #[test]
    fn rendering_is_a_pure_function_of_seed_split_and_index() {
        let c = cfg(7, 96, 96);
        for index in [0, 1, 17, 999_999] {
            assert!(same(&render(&c, Split::Pool, index), &render(&c, Split::Pool, index)));
        }
        assert!(!same(&render(&c, Split::Pool, 3), &render(&cfg(8, 96, 96), Split::Pool, 3)));
        assert!(!same(&render(&c, Split::Pool, 3), &render(&c, Split::Eval, 3)));
        assert!(!same(&render(&c, Split::Pool, 3), &render(&c, Split::Pool, 4)));
    }

    #[test]
    fn thread_count_does_not_change_scenes() {
        let c = cfg(5, 64, 64);
        let with_threads = |n| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
            pool.install(|| (0..24u64).into_par_iter().map(|i| render(&c, Split::Det, i)).collect::<Vec<_>>())
        };
        let (one, three) = (with_threads(1), with_threads(3));
        assert!(one.iter().zip(&three).all(|(a, b)| same(a, b)));
    }

    #[test]
    fn no_image_repeats_across_splits() {
        let c = cfg(7, 64, 64);
        let mut seen = std::collections::HashSet::new();
        for split in Split::ALL {
            for index in 0..40 {
                assert!(seen.insert(render(&c, split, index).image.into_raw()), "{split} {index} repeats");
            }
        }
    }

    #[test]
    fn every_truth_is_consistent_at_every_size() {
        for (w, h, n) in [(64, 64, 150), (96, 96, 150), (128, 128, 60), (128, 64, 60), (64, 128, 60), (640, 480, 4)] {
            let c = cfg(21, w, h);
            for index in 0..n {
                let scene = render(&c, Split::ALL[index as usize % 6], index);
                assert_eq!(scene.seg.len(), (w * h) as usize);
                scene.truth().check(MAX_DEPTH).unwrap_or_else(|e| panic!("{w}x{h} scene {index}: {e}"));
                assert!(scene.boxes.len() <= MAX_OBJECTS);
                assert!((80..=95).contains(&scene.jpeg_quality));
                // Each box's object shows inside the box.
                for b in &scene.boxes {
                    let class = SEG_FIRST_OBJECT + b.class_id;
                    let inside = (0..h).any(|row| {
                        (0..w).any(|col| {
                            let (u, v) = ((col as f32 + 0.5) / w as f32, (row as f32 + 0.5) / h as f32);
                            scene.seg[(row * w + col) as usize] == class
                                && (b.x0..=b.x1).contains(&u)
                                && (b.y0..=b.y1).contains(&v)
                        })
                    });
                    assert!(inside, "{w}x{h} scene {index}: box {b:?} has no pixels of its class");
                    assert!((b.x1 - b.x0) * w as f32 >= MIN_BOX_PIXELS - 1e-3);
                    assert!((b.y1 - b.y0) * h as f32 >= MIN_BOX_PIXELS - 1e-3);
                }
            }
        }
    }

    #[test]
    fn farther_objects_are_smaller_and_higher() {
        let c = cfg(3, 96, 96);
        let (mut height_pairs, mut base_pairs) = (0, 0);
        for index in 0..600 {
            let scene = render(&c, Split::Pool, index);
            let f = scene.intrinsics.fy;
            for a in &scene.boxes {
                // The base is never clipped, and the size law holds exactly for unclipped boxes.
                assert!(a.y1 < 1.0, "base of {a:?} is clipped");
                let nominal = OBJECT_SHAPES[a.class_id as usize].0[1];
                let height_px = (a.y1 - a.y0) * 96.0;
                if a.y0 > 0.0 {
                    let size = height_px * a.depth / f;
                    assert!(
                        size >= nominal * SIZE_JITTER.0 - 1e-3 && size <= nominal * SIZE_JITTER.1 + 1e-3,
                        "{a:?}: {size} m vs nominal {nominal} m"
                    );
                }
                for b in &scene.boxes {
                    if a.depth > b.depth + 1e-3 {
                        base_pairs += 1;
                        assert!(a.y1 < b.y1, "farther {a:?} is not higher than {b:?}");
                        let ratio = SIZE_JITTER.1 / SIZE_JITTER.0;
                        if a.class_id == b.class_id && a.depth > b.depth * ratio && a.y0 > 0.0 && b.y0 > 0.0 {
                            height_pairs += 1;
                            assert!(a.y1 - a.y0 < b.y1 - b.y0, "farther {a:?} is not smaller than {b:?}");
                        }
                    }
                }
            }
        }
        assert!(base_pairs > 500 && height_pairs > 50, "{base_pairs} / {height_pairs} pairs compared");
    }

    #[test]
    fn rendered_ground_normals_point_up() {
        let c = cfg(9, 96, 96);
        let mut checked = 0;
        for index in 0..20 {
            let scene = render(&c, Split::Depth, index);
            let (w, h) = (scene.width() as usize, scene.height() as usize);
            let normals = normals_from_depth(&scene.depth, w as u32, h as u32, &scene.intrinsics);
            for row in 1..h - 1 {
                for col in 1..w - 1 {
                    let ground_around = (row - 1..=row + 1).all(|r| {
                        (col - 1..=col + 1)
                            .all(|cc| scene.seg[r * w + cc] == SEG_GROUND && scene.depth[r * w + cc] < FAR_GROUND_DEPTH)
                    });
                    if !ground_around {
                        continue;
                    }
                    let n = normals[row * w + col];
                    assert!((n[1] + 1.0).abs() < 1e-3, "scene {index} ({col}, {row}): {n:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20 * 1000, "only {checked} ground pixels checked");
    }

    /// Where a scene has a normal: everywhere but the sky and the ground clamped to `FAR_GROUND_DEPTH`.
    fn has_normal(scene: &Scene, i: usize) -> bool {
        let (seg, depth) = (scene.seg[i], scene.depth[i]);
        !(seg == SEG_SKY || (seg == SEG_GROUND && depth >= FAR_GROUND_DEPTH))
    }

    #[test]
    fn exact_normals_are_unit_face_the_camera_and_agree_with_depth_on_planes() {
        let (mut ground, mut billboard) = (0, 0);
        for domain in [Domain::Pretrain, Domain::Downstream] {
            for (w, h) in [(96u32, 96u32), (64, 48)] {
                let c = cfg(9, w, h).with_domain(domain);
                for index in 0..30 {
                    let scene = render(&c, Split::ALL[index as usize % 6], index);
                    let from_depth = normals_from_depth(&scene.depth, w, h, &scene.intrinsics);
                    let (w, h) = (w as usize, h as usize);
                    for row in 0..h {
                        for col in 0..w {
                            let i = row * w + col;
                            let at = format!("{domain} {w}x{h} scene {index} ({col}, {row})");
                            assert_eq!(scene.normals[i].is_some(), has_normal(&scene, i), "{at}");
                            let Some(n) = scene.normals[i] else { continue };
                            let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
                            assert!((len - 1.0).abs() < 1e-5, "{at}: {n:?}");
                            let p = scene.intrinsics.back_project(col as u32, row as u32, scene.depth[i]);
                            assert!(n[0] * p[0] + n[1] * p[1] + n[2] * p[2] < 0.0, "{at}: {n:?} faces away");
                            // Interior of a plane: the 3x3 neighbourhood is one ground or one billboard.
                            let (seg, depth) = (scene.seg[i], scene.depth[i]);
                            let planar = seg != SEG_FIRST_OBJECT
                                && (1..h - 1).contains(&row)
                                && (1..w - 1).contains(&col)
                                && (row - 1..=row + 1).all(|r| {
                                    (col - 1..=col + 1).all(|cc| {
                                        let j = r * w + cc;
                                        scene.seg[j] == seg
                                            && scene.normals[j].is_some()
                                            && (seg == SEG_GROUND || scene.depth[j] == depth)
                                    })
                                });
                            if !planar {
                                continue;
                            }
                            let d = from_depth[i];
                            assert!((0..3).all(|k| (n[k] - d[k]).abs() < 1e-3), "{at}: exact {n:?}, from depth {d:?}");
                            if seg == SEG_GROUND {
                                ground += 1;
                            } else {
                                billboard += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(ground > 100_000 && billboard > 2_000, "{ground} ground and {billboard} billboard pixels checked");
    }

    #[test]
    fn ball_normals_are_the_normals_of_its_depth_surface() {
        // The ball's depth as a function of the ray slopes (a, b), in f64; its normal by central
        // differences of P(a, b) = D(a, b)·(a, b, 1) must match the closed form used for rendering.
        let height = 1.6f64;
        for (x, z, r) in [(0.0f64, 5.0f64, 0.3f64), (2.5, 4.0, 0.28), (-6.0, 12.0, 0.31), (1.0, 3.2, 0.25)] {
            let o = Object {
                class: 0,
                x: x as f32,
                z: z as f32,
                w: 2.0 * r as f32,
                h: 2.0 * r as f32,
                colour: [1.0; 3],
                noise: Noise::new(1),
            };
            let point = |a: f64, b: f64| -> Option<[f64; 3]> {
                let (lx, dy) = (a * z - x, height - b * z - r);
                let s2 = r * r - lx * lx - dy * dy;
                (s2 >= 0.0).then(|| {
                    let d = z - s2.sqrt();
                    [a * d, b * d, d]
                })
            };
            let (mut checked, mut worst_shading) = (0, 0.0f64);
            for i in 0..41 {
                for j in 0..41 {
                    let lx = r * (i as f64 / 20.0 - 1.0) * 0.97;
                    let ly = r + r * (j as f64 / 20.0 - 1.0) * 0.97;
                    // Off the last 2% of the rim, where the normal turns too fast for f32 inputs.
                    if lx * lx + (ly - r) * (ly - r) > 0.96 * r * r {
                        continue;
                    }
                    let (a, b) = ((lx + x) / z, (height - ly) / z);
                    let e = 1e-6;
                    let (Some(pa), Some(ma), Some(pb), Some(mb)) =
                        (point(a + e, b), point(a - e, b), point(a, b + e), point(a, b - e))
                    else {
                        continue;
                    };
                    let ta: [f64; 3] = std::array::from_fn(|k| pa[k] - ma[k]);
                    let tb: [f64; 3] = std::array::from_fn(|k| pb[k] - mb[k]);
                    let mut n =
                        [ta[1] * tb[2] - ta[2] * tb[1], ta[2] * tb[0] - ta[0] * tb[2], ta[0] * tb[1] - ta[1] * tb[0]];
                    let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
                    let p = point(a, b).unwrap();
                    let sign = if n[0] * p[0] + n[1] * p[1] + n[2] * p[2] > 0.0 { -1.0 } else { 1.0 };
                    n = n.map(|c| c * sign / len);
                    let exact = object_normal(&o, lx as f32, ly as f32, a as f32, b as f32);
                    assert!(
                        (0..3).all(|k| (exact[k] as f64 - n[k]).abs() < 2e-3),
                        "ball at x {x} z {z}, (lx, ly) = ({lx}, {ly}): {exact:?} vs {n:?}"
                    );
                    let s = (r * r - lx * lx - (ly - r) * (ly - r)).sqrt();
                    let shading = [lx / r, -(ly - r) / r, -s / r];
                    let cos = (0..3).map(|k| shading[k] * n[k]).sum::<f64>().clamp(-1.0, 1.0);
                    worst_shading = worst_shading.max(cos.acos().to_degrees());
                    checked += 1;
                }
            }
            assert!(checked > 1000, "{checked}");
            // Off the optical axis the plain sphere normal (used for shading) is visibly not the truth.
            if x.abs() / z > 0.4 {
                assert!(worst_shading > 5.0, "ball at x {x} z {z}: sphere normal within {worst_shading} degrees");
            }
        }
    }

    #[test]
    fn rendered_ball_normals_match_depth_differences_at_high_resolution() {
        // Finite differences of the depth map approach the exact normal as a ball covers more pixels;
        // the plain sphere normal would stay 5-13 degrees away on average (see the module docs).
        let (w, h) = (640usize, 480usize);
        let c = cfg(9, w as u32, h as u32);
        let (mut pixels, mut degrees) = (0u32, 0.0f64);
        for index in 0..16 {
            let scene = render(&c, Split::Pool, index);
            let from_depth = normals_from_depth(&scene.depth, w as u32, h as u32, &scene.intrinsics);
            for row in 3..h - 3 {
                for col in 3..w - 3 {
                    let interior = (row - 3..=row + 3)
                        .all(|r| (col - 3..=col + 3).all(|cc| scene.seg[r * w + cc] == SEG_FIRST_OBJECT));
                    if !interior {
                        continue;
                    }
                    let (n, d) = (scene.normals[row * w + col].unwrap(), from_depth[row * w + col]);
                    let cos = (n[0] * d[0] + n[1] * d[1] + n[2] * d[2]).clamp(-1.0, 1.0) as f64;
                    degrees += cos.acos().to_degrees();
                    pixels += 1;
                }
            }
        }
        let mean = degrees / pixels as f64;
        assert!(pixels > 5_000 && mean < 2.5, "{pixels} ball pixels, mean angle {mean} degrees");
    }

    #[test]
    fn downstream_domain_shifts_lighting_and_the_object_mix_but_not_the_truth() {
        let pre = cfg(7, 64, 64);
        let down = pre.with_domain(Domain::Downstream);
        let mut object_classes = [0u32; OBJECT_CLASSES.len()];
        let (mut red_over_blue_pre, mut red_over_blue_down) = (0.0f64, 0.0f64);
        let (mut mean_pre, mut mean_down) = (0.0f64, 0.0f64);
        for index in 0..400 {
            let (a, b) = (render(&pre, Split::Pool, index), render(&down, Split::Pool, index));
            b.truth().check(MAX_DEPTH).unwrap_or_else(|e| panic!("downstream scene {index}: {e}"));
            assert_ne!(a.image, b.image, "scene {index}");
            // The domain is in the random key: the layout differs too, not only the colours.
            assert!(a.seg != b.seg || a.intrinsics != b.intrinsics, "scene {index} shares its layout");
            for b in &b.boxes {
                object_classes[b.class_id as usize] += 1;
            }
            let channel_mean = |s: &Scene, c: usize| {
                s.image.pixels().map(|p| p.0[c] as f64).sum::<f64>() / (s.width() * s.height()) as f64
            };
            red_over_blue_pre += channel_mean(&a, 0) / channel_mean(&a, 2).max(1.0);
            red_over_blue_down += channel_mean(&b, 0) / channel_mean(&b, 2).max(1.0);
            mean_pre += (0..3).map(|c| channel_mean(&a, c)).sum::<f64>();
            mean_down += (0..3).map(|c| channel_mean(&b, c)).sum::<f64>();
        }
        assert!(red_over_blue_down > 1.2 * red_over_blue_pre, "{red_over_blue_down} vs {red_over_blue_pre}");
        assert!(mean_down < 0.95 * mean_pre, "{mean_down} vs {mean_pre}");
        // Crates and pillars (weight 0.25) clearly outnumber balls and cones (0.15).
        let [ball, crate_, cone, _, pillar] = object_classes;
        assert!(crate_ > ball * 5 / 4 && pillar > cone * 5 / 4, "{object_classes:?}");
    }

    #[test]
    fn classes_and_object_counts_are_spread() {
        let c = cfg(7, 64, 64);
        let mut scene_classes = [0u32; SCENE_CLASSES.len()];
        let mut object_classes = [0u32; OBJECT_CLASSES.len()];
        let mut box_counts = [0u32; MAX_OBJECTS + 1];
        for index in 0..800 {
            let scene = render(&c, Split::Cls, index);
            scene_classes[scene.scene_class as usize] += 1;
            box_counts[scene.boxes.len()] += 1;
            for b in &scene.boxes {
                object_classes[b.class_id as usize] += 1;
            }
        }
        assert!(scene_classes.iter().all(|&n| n > 60), "{scene_classes:?}");
        assert!(object_classes.iter().all(|&n| n > 150), "{object_classes:?}");
        assert!(box_counts.iter().all(|&n| n > 20), "{box_counts:?}");
    }
}
