//! Procedural textures: hashed value noise with distance-aware octaves, and small colour helpers.
//!
//! Noise is a pure function of `(seed, position)`, so a scene renders identically no matter how pixels
//! are visited. Octaves whose wavelength is below two pixel footprints are faded out: that is the cheap
//! mip-mapping that keeps far ground from aliasing into salt-and-pepper near the horizon.

/// Linear RGB in `[0, 1]` (values outside are clamped when quantised).
pub(crate) type Rgb = [f32; 3];

pub(crate) fn lerp(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

pub(crate) fn scale(a: Rgb, s: f32) -> Rgb {
    [a[0] * s, a[1] * s, a[2] * s]
}

pub(crate) fn mul(a: Rgb, b: Rgb) -> Rgb {
    [a[0] * b[0], a[1] * b[1], a[2] * b[2]]
}

pub(crate) fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// SplitMix64 finaliser: a good 64-bit mix, used to derive keys and lattice values.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform value in `[0, 1)` for an integer lattice point.
pub(crate) fn lattice(seed: u64, x: i64, y: i64) -> f32 {
    let h = mix64(seed ^ mix64((x as u64).wrapping_mul(0x1000_0000_01B3) ^ mix64(y as u64)));
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Seeded 2-D value noise.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Noise {
    seed: u64,
}

impl Noise {
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The seed, for deriving related hashes (star fields, flower cells).
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Smooth value noise in `[0, 1]` with unit lattice spacing.
    pub(crate) fn value(&self, x: f32, y: f32) -> f32 {
        let (xf, yf) = (x.floor(), y.floor());
        let (ix, iy) = (xf as i64, yf as i64);
        let (tx, ty) = (x - xf, y - yf);
        let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
        let a = lattice(self.seed, ix, iy);
        let b = lattice(self.seed, ix + 1, iy);
        let c = lattice(self.seed, ix, iy + 1);
        let d = lattice(self.seed, ix + 1, iy + 1);
        let top = a + (b - a) * sx;
        let bottom = c + (d - c) * sx;
        top + (bottom - top) * sy
    }

    /// Fractal noise in about `[-1, 1]`: `octaves` octaves starting at wavelength `wavelength`, each
    /// half the previous. Octaves shorter than two `footprint`s (size of a pixel in the same units)
    /// fade out.
    pub(crate) fn fbm(&self, x: f32, y: f32, wavelength: f32, octaves: u32, footprint: f32) -> f32 {
        let mut sum = 0.0;
        let mut norm = 0.0;
        let mut amp = 1.0;
        let mut wl = wavelength;
        for octave in 0..octaves {
            let fade = smoothstep(1.0, 3.0, wl / footprint.max(1e-6));
            let offset = octave as f32 * 17.31;
            sum += amp * fade * (self.value(x / wl + offset, y / wl - offset) * 2.0 - 1.0);
            norm += amp;
            amp *= 0.55;
            wl *= 0.5;
        }
        sum / norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_noise_is_bounded_and_continuous() {
        let n = Noise::new(42);
        let mut prev = n.value(0.0, 0.3);
        for i in 1..1000 {
            let v = n.value(i as f32 * 0.01, 0.3);
            assert!((0.0..=1.0).contains(&v));
            assert!((v - prev).abs() < 0.05, "jump at {i}");
            prev = v;
        }
    }

    #[test]
    fn noise_depends_on_seed() {
        let (a, b) = (Noise::new(1), Noise::new(2));
        let differs = (0..50).any(|i| (a.value(i as f32 * 0.37, 1.3) - b.value(i as f32 * 0.37, 1.3)).abs() > 1e-3);
        assert!(differs);
    }
}
