//! Quantisation of the two float-valued labels to 16-bit integers.
//!
//! Soft class distributions and depth maps are most of a record's bytes as `f32`. Both are stored as
//! `u16` with a decode rule simple enough to state in one line of numpy, so readers in any language
//! get the same values as the trainer:
//!
//! * probabilities: `p = q / 65535` (absolute error at most 0.5 / 65535 ≈ 7.7e-6);
//! * depth: `d = offset + scale * q`, with `offset` = the map's minimum and `scale` = its range divided
//!   by `2^bits - 1`, so the error is at most half a step of the map's own range.
//!
//! The decode rule does not depend on `bits`, so the writer may choose it per row. Relative
//! (teacher) depth uses [`DEPTH_BITS_RELATIVE`] = 10 bits: a step of 1/1023 of the range is about
//! the noise of a teacher's map, and extra bits would store that noise and defeat compression (in
//! the `bytes_per_image` example of `shards`, 16 bits take twice the bytes of 10). Metric ground
//! truth keeps [`DEPTH_BITS_METRIC`] = 16 bits, because its error matters in absolute terms near
//! the camera (a 0.5-80 m map at 10 bits would be off by up to 4 cm everywhere).

use crate::record::DepthKind;

/// Denominator of the probability quantisation: `p = q / PROB_SCALE`.
pub const PROB_SCALE: u16 = u16::MAX;

/// Bits of precision, over the map's own range, of stored `inverse_relative` depth.
pub const DEPTH_BITS_RELATIVE: u32 = 10;

/// Bits of precision, over the map's own range, of stored `metric` depth.
pub const DEPTH_BITS_METRIC: u32 = 16;

impl DepthKind {
    /// Bits of precision, over the map's own range, with which maps of this kind are stored.
    pub fn stored_bits(self) -> u32 {
        match self {
            DepthKind::InverseRelative => DEPTH_BITS_RELATIVE,
            DepthKind::Metric => DEPTH_BITS_METRIC,
        }
    }
}

/// Quantise probabilities in [0, 1] to `round(p * 65535)`; values outside are clamped.
pub fn quantize_probs(probs: &[f32]) -> Vec<u16> {
    let scale = f64::from(PROB_SCALE);
    probs.iter().map(|&p| (f64::from(p).clamp(0.0, 1.0) * scale).round() as u16).collect()
}

/// Decode stored probabilities: `q / 65535`.
pub fn dequantize_probs(q: &[u16]) -> Vec<f32> {
    let scale = f64::from(PROB_SCALE);
    q.iter().map(|&q| (f64::from(q) / scale) as f32).collect()
}

/// A depth map as stored: `depth = offset + scale * q`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedDepth {
    pub offset: f32,
    pub scale: f32,
    pub q: Vec<u16>,
}

/// Quantise a depth map over its own range to `bits` bits (1 to 16): `offset` = min,
/// `scale` = (max - min) / (2^bits - 1), `q = round((value - offset) / scale)`.
///
/// A constant map gets `scale` 0 and all codes 0. Values must be finite (records are validated first);
/// an empty map gives offset 0.
pub fn quantize_depth(values: &[f32], bits: u32) -> QuantizedDepth {
    assert!((1..=16).contains(&bits), "depth is stored in 1 to 16 bits, not {bits}");
    let levels = f64::from((1u32 << bits) - 1);
    let (min, max) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if values.is_empty() {
        return QuantizedDepth { offset: 0.0, scale: 0.0, q: Vec::new() };
    }
    // In f64 so that a range near f32::MAX does not overflow; the stored scale is the f32 one, and codes
    // are computed against it so that decoding reproduces what was encoded.
    let scale = ((f64::from(max) - f64::from(min)) / levels) as f32;
    if scale == 0.0 {
        return QuantizedDepth { offset: min, scale: 0.0, q: vec![0; values.len()] };
    }
    let (offset, step) = (f64::from(min), f64::from(scale));
    let q = values.iter().map(|&v| ((f64::from(v) - offset) / step).round().clamp(0.0, levels) as u16).collect();
    QuantizedDepth { offset: min, scale, q }
}

/// Decode a stored depth map: `offset + scale * q`.
pub fn dequantize_depth(offset: f32, scale: f32, q: &[u16]) -> Vec<f32> {
    let (offset, scale) = (f64::from(offset), f64::from(scale));
    q.iter().map(|&q| (offset + scale * f64::from(q)) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probs_round_trip_within_half_a_step() {
        let p = [0.0, 1.0, 0.5, 1e-6, 0.123_456_7, 0.999_999];
        let back = dequantize_probs(&quantize_probs(&p));
        for (a, b) in p.iter().zip(&back) {
            assert!((a - b).abs() <= 0.5 / 65535.0 + 1e-7, "{a} -> {b}");
        }
        assert_eq!(quantize_probs(&[1.0, 0.0]), [65535, 0]);
    }

    #[test]
    fn depth_uses_min_and_range() {
        for bits in [DEPTH_BITS_RELATIVE, DEPTH_BITS_METRIC, 1] {
            let levels = (1u32 << bits) - 1;
            let d = [2.0, 4.0, 3.0, 2.5];
            let q = quantize_depth(&d, bits);
            assert_eq!(q.offset, 2.0);
            assert_eq!(q.scale, (2.0 / f64::from(levels)) as f32);
            assert_eq!((q.q[0], u32::from(q.q[1])), (0, levels));
            let back = dequantize_depth(q.offset, q.scale, &q.q);
            let tol = 2.0 * 0.5 / levels as f32 + 1e-6;
            for (a, b) in d.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{bits} bits: {a} -> {b}");
            }
        }
    }

    #[test]
    fn precision_follows_the_kind() {
        assert_eq!(DepthKind::InverseRelative.stored_bits(), 10);
        assert_eq!(DepthKind::Metric.stored_bits(), 16);
    }

    #[test]
    fn constant_depth_gets_scale_zero() {
        let q = quantize_depth(&[7.5; 6], DEPTH_BITS_RELATIVE);
        assert_eq!((q.offset, q.scale), (7.5, 0.0));
        assert!(q.q.iter().all(|&c| c == 0));
        assert_eq!(dequantize_depth(q.offset, q.scale, &q.q), vec![7.5; 6]);
    }

    #[test]
    fn extreme_ranges_do_not_overflow() {
        let q = quantize_depth(&[-f32::MAX, f32::MAX], DEPTH_BITS_METRIC);
        assert!(q.scale.is_finite());
        assert_eq!(q.offset, -f32::MAX);
        assert_eq!((q.q[0], q.q[1]), (0, u16::MAX));
    }
}
