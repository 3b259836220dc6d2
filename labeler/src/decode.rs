//! Untrusted image bytes → oriented RGB8, or exactly one machine-readable reason why not.
//!
//! The labeler reads hundreds of millions of images it did not make. Every input must end as a label row or
//! an error row with a reason, so this module keeps three promises for any byte string:
//!
//! * **It returns.** Decoder panics are contained with `catch_unwind` and reported as `"panic"` (this needs
//!   the default `panic = "unwind"`; the default panic hook still prints the message to stderr).
//! * **Memory is bounded before it is spent.** The encoded size is capped first; then the header's
//!   dimensions, pixel count and an estimate of the peak allocation (decoder output, the RGB8 copy, the
//!   rotated copy, a progressive JPEG's coefficients) are checked against [`DecodeLimits`] before any pixel
//!   buffer exists, so a few-KB PNG claiming 30000×30000 is refused as `"too_large"` in microseconds.
//!   `image::Limits` is set as well, as a second line of defence.
//! * **A success is a whole image.** zune-jpeg and the png crate fill a truncated file with grey and report
//!   success; [`sniff`] walks the container (JPEG segments and scan data up to EOI, PNG chunks up to IEND,
//!   the first GIF frame, the RIFF length of a WebP) and refuses a cut file as `"truncated"`.
//!
//! The format is guessed from the content, never the name. The result is always RGB8 after the EXIF
//! orientation; whatever was changed on the way (gray, 16-bit, palette, CMYK, alpha, animation, orientation,
//! scaled decoding) is listed in [`DecodedImage::notes`] so that a label can be traced to what was decoded.

mod sniff;

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use self::sniff::Container;

/// Bounds applied to every input before anything large is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Larger encoded inputs are refused without being parsed (and should not be fetched).
    pub max_encoded_bytes: u64,
    /// Largest width, as stored in the file (before orientation).
    pub max_width: u32,
    /// Largest height, as stored in the file (before orientation).
    pub max_height: u32,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Largest estimated peak of the buffers one decode holds at once.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_encoded_bytes: 64 << 20,
            max_width: 16384,
            max_height: 16384,
            max_pixels: 100_000_000,
            max_alloc: 512 << 20,
        }
    }
}

/// A decoded image, upright and RGB8.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// Pixels after the EXIF orientation. After [`decode_scaled`] this is smaller than `width` × `height`.
    pub rgb: RgbImage,
    /// Full-resolution width after orientation (the original's, even when decoded at a reduced scale).
    pub width: u32,
    /// Full-resolution height after orientation.
    pub height: u32,
    /// `"jpeg"`, `"png"`, `"gif"`, `"webp"`, `"bmp"` or `"tiff"`, from the content.
    pub format: &'static str,
    /// What was changed to produce `rgb`: `exif_orientation_2`..`exif_orientation_8`, `converted_from_gray8`,
    /// `converted_from_gray16`, `converted_from_rgb16`, `converted_from_rgb32f`, `converted_from_palette`,
    /// `converted_from_cmyk`, `alpha_dropped` (some pixel was not opaque), `first_frame_only`,
    /// `scaled_decode_1_4` / `scaled_decode_1_8`.
    pub notes: Vec<&'static str>,
}

/// Why an input could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// `"empty"`, `"too_large"`, `"truncated"`, `"unsupported"`, `"undecodable"` or `"panic"`.
    pub reason: &'static str,
    /// Human-readable detail, e.g. the decoder's own message.
    pub detail: String,
}

impl DecodeError {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// Decodes `bytes` at full resolution. Never panics; see the module docs for what is checked.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    guarded(bytes, limits, None)
}

/// Like [`decode`], but a JPEG may be decoded at 1/4 or 1/8 scale when the oriented result is still at least
/// `min_width` × `min_height` (the largest such reduction is used; `notes` gets `scaled_decode_1_N`).
/// `width`/`height` still report the oriented original size. Other formats, and JPEGs that cannot be reduced
/// that far, decode exactly as [`decode`] does.
///
/// Why a second JPEG decoder: zune-jpeg, which `image` 0.25 uses, has no reduced-size output, while
/// jpeg-decoder's `Decoder::scale` runs a reduced IDCT (1×1, 2×2 or 4×4 per 8×8 block) and allocates 1/N² of
/// the pixels. But jpeg-decoder's Huffman decoding — the same at every scale — is slower than zune-jpeg's,
/// so the reduction must be large to pay. Measured per core on 640×480 to 3000×2000 photo-like quality-90
/// JPEGs (CPU time, zune-jpeg full decode = 1.0; the more of the file is fine detail, the more Huffman
/// decoding dominates and the less scaling gains): jpeg-decoder at 1/2 ≈ 1.15–1.3 (slower), 1/4 ≈ 0.7–0.95,
/// 1/8 ≈ 0.65–0.9. Hence only 1/4 and 1/8 ([`SCALED_FACTORS`]). Inputs jpeg-decoder cannot handle (CMYK,
/// 12/16-bit, arithmetic coding, or anything it rejects) fall back to the full-resolution path, so this
/// function refuses the same inputs as [`decode`].
pub fn decode_scaled(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_width: u32,
    min_height: u32,
) -> Result<DecodedImage, DecodeError> {
    guarded(bytes, limits, Some((min_width, min_height)))
}

/// Bytes of RGB pixels a full-resolution decode of `bytes` would allocate, read from the header alone
/// (0 when the header cannot be read: the decode will fail on its own and allocate nothing).
pub fn decoded_size_hint(bytes: &[u8]) -> u64 {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok())
        .map_or(0, |(w, h)| rgb_bytes(w, h))
}

/// The reductions [`decode_scaled`] uses, largest first (1/2 is slower than a full zune-jpeg decode).
pub const SCALED_FACTORS: [u32; 2] = [8, 4];

/// Input-size checks, then the decode with any panic turned into an error.
fn guarded(bytes: &[u8], limits: &DecodeLimits, min_size: Option<(u32, u32)>) -> Result<DecodedImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::new("empty", "zero bytes"));
    }
    if bytes.len() as u64 > limits.max_encoded_bytes {
        return Err(DecodeError::new(
            "too_large",
            format!("{} encoded bytes, limit {}", bytes.len(), limits.max_encoded_bytes),
        ));
    }
    catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes, limits, min_size))).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Err(DecodeError::new("panic", format!("decoder panicked: {message}")))
    })
}

fn decode_unguarded(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_size: Option<(u32, u32)>,
) -> Result<DecodedImage, DecodeError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::new("undecodable", e.to_string()))?;
    let format = match reader.format() {
        Some(ImageFormat::Jpeg) => "jpeg",
        Some(ImageFormat::Png) => "png",
        Some(ImageFormat::Gif) => "gif",
        Some(ImageFormat::WebP) => "webp",
        Some(ImageFormat::Bmp) => "bmp",
        Some(ImageFormat::Tiff) => "tiff",
        Some(other) => return Err(DecodeError::new("unsupported", format!("{other:?} images are not decoded"))),
        None => return Err(DecodeError::new("unsupported", "no known image signature")),
    };
    let container = match format {
        "jpeg" => sniff::jpeg(bytes),
        "png" => sniff::png(bytes),
        "gif" => sniff::gif(bytes),
        "webp" => sniff::webp(bytes),
        "bmp" => Ok(sniff::bmp(bytes)),
        _ => Ok(Container::default()),
    }
    .map_err(|t| DecodeError::new("truncated", t.0))?;

    if let Some((min_w, min_h)) = min_size {
        if format == "jpeg" && matches!(container.jpeg_components, 1 | 3) {
            if let Some(image) = scaled::decode(bytes, limits, &container, min_w, min_h)? {
                return Ok(image);
            }
        }
    }

    // Opening a decoder reads only the header; the size limits go in once our own check (which can say
    // what the header claimed) has passed.
    let mut reader = reader;
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(header_limits);
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    decoder.set_limits(image_limits(limits)).map_err(image_error)?;
    // A malformed Exif block is not worth refusing the pixels for: treat it as upright.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let converts = decoder.color_type() != image::ColorType::Rgb8;
    let input_copy = if format == "jpeg" { bytes.len() as u64 } else { 0 };
    check_alloc(
        limits,
        &[
            ("decoder output", decoder.total_bytes()),
            ("encoded copy", input_copy),
            ("progressive coefficients", container.coefficient_bytes),
            ("rgb8 conversion", if converts { rgb_bytes(width, height) } else { 0 }),
            ("rotation", if swaps_axes(orientation) { rgb_bytes(width, height) } else { 0 }),
        ],
    )?;
    let dynamic = DynamicImage::from_decoder(decoder).map_err(image_error)?;

    let mut notes = Vec::new();
    if container.palette {
        notes.push("converted_from_palette");
    }
    if container.cmyk {
        notes.push("converted_from_cmyk");
    }
    let rgb = into_rgb8(dynamic, &mut notes);
    if container.animated {
        notes.push("first_frame_only");
    }
    Ok(finish(rgb, orientation, format, notes, (width, height)))
}

/// Applies the orientation and fills in the oriented full-resolution size.
fn finish(
    rgb: RgbImage,
    orientation: Orientation,
    format: &'static str,
    mut notes: Vec<&'static str>,
    stored: (u32, u32),
) -> DecodedImage {
    const ORIENTATION_NOTES: [&str; 9] = [
        "",
        "",
        "exif_orientation_2",
        "exif_orientation_3",
        "exif_orientation_4",
        "exif_orientation_5",
        "exif_orientation_6",
        "exif_orientation_7",
        "exif_orientation_8",
    ];
    let rgb = if orientation == Orientation::NoTransforms {
        rgb
    } else {
        notes.push(ORIENTATION_NOTES[usize::from(orientation.to_exif())]);
        let mut dynamic = DynamicImage::ImageRgb8(rgb);
        dynamic.apply_orientation(orientation);
        dynamic.into_rgb8()
    };
    let (width, height) = if swaps_axes(orientation) { (stored.1, stored.0) } else { stored };
    DecodedImage { rgb, width, height, format, notes }
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

fn image_limits(limits: &DecodeLimits) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc);
    l
}

fn rgb_bytes(width: u32, height: u32) -> u64 {
    u64::from(width) * u64::from(height) * 3
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::new("undecodable", format!("header says {width}x{height}")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if width > limits.max_width || height > limits.max_height || pixels > limits.max_pixels {
        return Err(DecodeError::new(
            "too_large",
            format!(
                "header says {width}x{height} ({pixels} pixels); limits {}x{}, {} pixels",
                limits.max_width, limits.max_height, limits.max_pixels
            ),
        ));
    }
    Ok(())
}

fn check_alloc(limits: &DecodeLimits, parts: &[(&str, u64)]) -> Result<(), DecodeError> {
    let total = parts.iter().fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
    if total > limits.max_alloc {
        let parts: Vec<String> = parts.iter().filter(|p| p.1 > 0).map(|(what, n)| format!("{what} {n}")).collect();
        return Err(DecodeError::new(
            "too_large",
            format!("decoding needs about {total} bytes ({}), limit {}", parts.join(", "), limits.max_alloc),
        ));
    }
    Ok(())
}

fn image_error(e: ImageError) -> DecodeError {
    let reason = match &e {
        ImageError::Limits(_) => "too_large",
        ImageError::Unsupported(_) => "unsupported",
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "truncated",
        _ => "undecodable",
    };
    DecodeError::new(reason, e.to_string())
}

/// Converts any decoded layout to RGB8, recording the source layout. Alpha is dropped (not composited);
/// `alpha_dropped` is noted only when some pixel was not fully opaque, i.e. when information was lost.
fn into_rgb8(image: DynamicImage, notes: &mut Vec<&'static str>) -> RgbImage {
    let (layout, alpha_lost) = match &image {
        DynamicImage::ImageRgb8(_) => (None, false),
        DynamicImage::ImageRgba8(_) => (None, false), // handled in place below
        DynamicImage::ImageLuma8(_) => (Some("converted_from_gray8"), false),
        DynamicImage::ImageLumaA8(i) => (Some("converted_from_gray8"), i.pixels().any(|p| p.0[1] != u8::MAX)),
        DynamicImage::ImageLuma16(_) => (Some("converted_from_gray16"), false),
        DynamicImage::ImageLumaA16(i) => (Some("converted_from_gray16"), i.pixels().any(|p| p.0[1] != u16::MAX)),
        DynamicImage::ImageRgb16(_) => (Some("converted_from_rgb16"), false),
        DynamicImage::ImageRgba16(i) => (Some("converted_from_rgb16"), i.pixels().any(|p| p.0[3] != u16::MAX)),
        DynamicImage::ImageRgb32F(_) => (Some("converted_from_rgb32f"), false),
        DynamicImage::ImageRgba32F(i) => (Some("converted_from_rgb32f"), i.pixels().any(|p| p.0[3] < 1.0)),
        _ => (Some("converted_from_other"), image.color().has_alpha()),
    };
    if let Some(layout) = layout {
        notes.push(layout);
    }
    let rgb = match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => {
            let (width, height) = rgba.dimensions();
            let (rgb, opaque) = drop_alpha_in_place(rgba.into_raw());
            if !opaque {
                notes.push("alpha_dropped");
            }
            RgbImage::from_raw(width, height, rgb).expect("3 bytes per pixel")
        }
        other => other.to_rgb8(),
    };
    if alpha_lost {
        notes.push("alpha_dropped");
    }
    rgb
}

/// RGBA8 → RGB8 reusing the allocation (each write lands at or before the bytes still to be read).
fn drop_alpha_in_place(mut raw: Vec<u8>) -> (Vec<u8>, bool) {
    let pixels = raw.len() / 4;
    let mut alpha_and = u8::MAX;
    for i in 0..pixels {
        let (src, dst) = (4 * i, 3 * i);
        alpha_and &= raw[src + 3];
        raw.copy_within(src..src + 3, dst);
    }
    raw.truncate(pixels * 3);
    (raw, alpha_and == u8::MAX)
}

mod scaled {
    //! The reduced-IDCT JPEG path of [`decode_scaled`](super::decode_scaled), through jpeg-decoder.

    use image::metadata::Orientation;
    use image::RgbImage;
    use jpeg_decoder::{Decoder, PixelFormat};

    use super::{check_alloc, check_dimensions, finish, rgb_bytes, swaps_axes, Container, DecodeError, DecodeLimits};
    use crate::decode::DecodedImage;

    /// Returns `Ok(None)` when this path does not apply (no reduction possible, a layout it does not handle,
    /// or any jpeg-decoder error): the caller then decodes at full resolution, whose verdict counts.
    pub(super) fn decode(
        bytes: &[u8],
        limits: &DecodeLimits,
        container: &Container,
        min_w: u32,
        min_h: u32,
    ) -> Result<Option<DecodedImage>, DecodeError> {
        let mut decoder = Decoder::new(bytes);
        decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
        if decoder.read_info().is_err() {
            return Ok(None);
        }
        let Some(info) = decoder.info() else { return Ok(None) };
        let (w, h) = (u32::from(info.width), u32::from(info.height));
        check_dimensions(w, h, limits)?;
        let gray = match info.pixel_format {
            PixelFormat::RGB24 => false,
            PixelFormat::L8 => true,
            _ => return Ok(None),
        };
        let orientation =
            decoder.exif_data().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
        // The minimum is for the upright image; the decoder works in stored orientation.
        let (need_w, need_h) = if swaps_axes(orientation) { (min_h, min_w) } else { (min_w, min_h) };
        let Some(n) = super::SCALED_FACTORS.into_iter().find(|&n| w.div_ceil(n) >= need_w && h.div_ceil(n) >= need_h)
        else {
            return Ok(None);
        };
        let (sw, sh) = (w.div_ceil(n), h.div_ceil(n));
        let planes = u64::from(sw) * u64::from(sh) * u64::from(container.jpeg_components);
        check_alloc(
            limits,
            &[
                ("progressive coefficients", container.coefficient_bytes),
                ("component planes", planes),
                ("rgb8 output", rgb_bytes(sw, sh)),
                ("rotation", if swaps_axes(orientation) { rgb_bytes(sw, sh) } else { 0 }),
            ],
        )?;
        // jpeg-decoder picks its own factor (the smallest reaching the request in *either* axis): ask for
        // exactly the size we computed and take the path only if that is what it chose.
        match decoder.scale(sw as u16, sh as u16) {
            Ok((ow, oh)) if (u32::from(ow), u32::from(oh)) == (sw, sh) => {}
            _ => return Ok(None),
        }
        let Ok(pixels) = decoder.decode() else { return Ok(None) };
        let mut notes = Vec::new();
        let rgb = if gray {
            notes.push("converted_from_gray8");
            let rgb: Vec<u8> = pixels.iter().flat_map(|&v| [v, v, v]).collect();
            match RgbImage::from_raw(sw, sh, rgb) {
                Some(rgb) => rgb,
                None => return Ok(None),
            }
        } else {
            match RgbImage::from_raw(sw, sh, pixels) {
                Some(rgb) => rgb,
                None => return Ok(None),
            }
        };
        notes.push(match n {
            2 => "scaled_decode_1_2",
            4 => "scaled_decode_1_4",
            8 => "scaled_decode_1_8",
            _ => return Ok(None),
        });
        Ok(Some(finish(rgb, orientation, "jpeg", notes, (w, h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_alpha_keeps_colour_and_reports_translucency() {
        let (rgb, opaque) = drop_alpha_in_place(vec![1, 2, 3, 255, 4, 5, 6, 255]);
        assert_eq!((rgb, opaque), (vec![1, 2, 3, 4, 5, 6], true));
        let (_, opaque) = drop_alpha_in_place(vec![1, 2, 3, 255, 4, 5, 6, 7]);
        assert!(!opaque);
    }

    #[test]
    fn empty_and_oversized_inputs_are_refused_first() {
        let limits = DecodeLimits { max_encoded_bytes: 4, ..DecodeLimits::default() };
        assert_eq!(decode(&[], &limits).unwrap_err().reason, "empty");
        assert_eq!(decode(&[0xFF, 0xD8, 0xFF, 0xE0, 0], &limits).unwrap_err().reason, "too_large");
    }

    #[test]
    fn alloc_estimate_saturates() {
        let limits = DecodeLimits::default();
        let err = check_alloc(&limits, &[("a", u64::MAX), ("b", 1)]).unwrap_err();
        assert_eq!(err.reason, "too_large");
    }
}
