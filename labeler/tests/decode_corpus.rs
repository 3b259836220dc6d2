//! The decode corpus: broken and unusual images, generated here deterministically (no downloaded files), each
//! with the exact outcome `labeler::decode` must give. Valid files come from `image`'s own encoders (and
//! jpeg-encoder for CMYK); bombs, palettes, APNG, animated WebP and Exif blocks are assembled byte by byte.

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, Frame, ImageEncoder, ImageFormat, Rgb, RgbImage, RgbaImage};
use labeler::decode::{decode, decode_scaled, DecodeError, DecodeLimits, DecodedImage};

// ---------------------------------------------------------------------------------------------------------
// Generators

/// Deterministic xorshift noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A photo-like image: smooth gradients plus a little noise (what JPEG quality 90 is tuned for).
fn photo(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = Rng(seed | 1);
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let n = (rng.next() % 17) as f32 - 8.0;
        let r = 255.0 * fx * 0.8 + 30.0 * (fy * 9.0).sin() + n;
        let g = 255.0 * fy * 0.7 + 40.0 * ((fx + fy) * 7.0).cos() + n;
        let b = 128.0 + 100.0 * ((fx - fy) * 5.0).sin() + n;
        Rgb([r.clamp(0.0, 255.0) as u8, g.clamp(0.0, 255.0) as u8, b.clamp(0.0, 255.0) as u8])
    })
}

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality).encode_image(img).unwrap();
    out
}

fn encode(format: ImageFormat, raw: &[u8], width: u32, height: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Png => PngEncoder::new(&mut out).write_image(raw, width, height, color).unwrap(),
        ImageFormat::WebP => WebPEncoder::new_lossless(&mut out).write_image(raw, width, height, color).unwrap(),
        _ => image::write_buffer_with_format(&mut out, raw, width, height, color, format).unwrap(),
    }
    out.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if raw.is_empty() { vec![&[]] } else { raw.chunks(65535).collect() };
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        out.extend((c.len() as u16).to_le_bytes());
        out.extend((!(c.len() as u16)).to_le_bytes());
        out.extend(*c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in raw {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

fn ihdr(width: u32, height: u32, depth: u8, colour: u8) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(width.to_be_bytes());
    d.extend(height.to_be_bytes());
    d.extend([depth, colour, 0, 0, 0]);
    d
}

/// A hand-made PNG: signature, IHDR, the given chunks, IEND.
fn png_by_hand(width: u32, height: u32, depth: u8, colour: u8, chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr(width, height, depth, colour));
    for (kind, data) in chunks {
        png_chunk(&mut out, kind, data);
    }
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// Raw PNG scanlines (filter byte 0) of `rows`.
fn scanlines(rows: &[&[u8]]) -> Vec<u8> {
    rows.iter().flat_map(|r| std::iter::once(0).chain(r.iter().copied())).collect()
}

/// Inserts an APP1 Exif segment with only the Orientation tag right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2A".to_vec();
    tiff.extend(8u32.to_be_bytes()); // IFD0 offset
    tiff.extend(1u16.to_be_bytes()); // one entry
    tiff.extend(0x0112u16.to_be_bytes()); // Orientation
    tiff.extend(3u16.to_be_bytes()); // SHORT
    tiff.extend(1u32.to_be_bytes()); // count
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0]); // value padding
    tiff.extend(0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend(&jpeg[2..]);
    out
}

fn solid_rgba(width: u32, height: u32, px: [u8; 4]) -> RgbaImage {
    RgbaImage::from_pixel(width, height, image::Rgba(px))
}

fn gif_frames(frames: &[RgbaImage]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut out);
        enc.encode_frames(frames.iter().map(|f| Frame::new(f.clone()))).unwrap();
    }
    out
}

fn riff_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend(kind);
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// The VP8L chunk (header included) of a lossless WebP made by `image`.
fn vp8l_chunk(img: &RgbImage) -> Vec<u8> {
    let file = encode(ImageFormat::WebP, img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8);
    let mut pos = 12;
    while pos + 8 <= file.len() {
        let len = u32::from_le_bytes(file[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let end = pos + 8 + len + len % 2;
        if &file[pos..pos + 4] == b"VP8L" {
            return file[pos..end.min(file.len())].to_vec();
        }
        pos = end;
    }
    panic!("no VP8L chunk in image's lossless WebP");
}

/// An animated WebP (VP8X + ANIM + one ANMF per frame) assembled from lossless frames.
fn animated_webp(frames: &[RgbImage]) -> Vec<u8> {
    let (w, h) = frames[0].dimensions();
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x02, 0, 0, 0];
    vp8x.extend(u24(w - 1));
    vp8x.extend(u24(h - 1));
    riff_chunk(&mut body, b"VP8X", &vp8x);
    riff_chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]);
    for f in frames {
        let mut anmf = Vec::new();
        anmf.extend(u24(0));
        anmf.extend(u24(0));
        anmf.extend(u24(w - 1));
        anmf.extend(u24(h - 1));
        anmf.extend(u24(100));
        anmf.push(0b10); // do not blend, do not dispose
        anmf.extend(vp8l_chunk(f));
        riff_chunk(&mut body, b"ANMF", &anmf);
    }
    let mut out = b"RIFF".to_vec();
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

// ---------------------------------------------------------------------------------------------------------
// Assertions

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

#[track_caller]
fn ok(bytes: &[u8]) -> DecodedImage {
    match decode(bytes, &limits()) {
        Ok(img) => img,
        Err(e) => panic!("expected Ok, got {e}"),
    }
}

#[track_caller]
fn err(bytes: &[u8]) -> DecodeError {
    match decode(bytes, &limits()) {
        Ok(img) => panic!("expected an error, got Ok {}x{} {} {:?}", img.width, img.height, img.format, img.notes),
        Err(e) => e,
    }
}

#[track_caller]
fn near(actual: Rgb<u8>, expected: [u8; 3], tolerance: u8) {
    let close = actual.0.iter().zip(expected).all(|(&a, e)| a.abs_diff(e) <= tolerance);
    assert!(close, "pixel {:?} is not within {tolerance} of {expected:?}", actual.0);
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
    sum as f64 / a.as_raw().len() as f64
}

// ---------------------------------------------------------------------------------------------------------
// Valid files

#[test]
fn valid_files_of_every_format_decode() {
    let img = photo(64, 48, 7);
    let (w, h) = img.dimensions();

    let j = ok(&jpeg(&img, 90));
    assert_eq!((j.format, j.width, j.height, j.rgb.dimensions()), ("jpeg", w, h, (w, h)));
    assert!(j.notes.is_empty(), "{:?}", j.notes);
    assert!(mean_abs_diff(&j.rgb, &img) < 6.0);

    for (format, name) in
        [(ImageFormat::Png, "png"), (ImageFormat::Bmp, "bmp"), (ImageFormat::Tiff, "tiff"), (ImageFormat::WebP, "webp")]
    {
        let d = ok(&encode(format, img.as_raw(), w, h, ExtendedColorType::Rgb8));
        assert_eq!((d.format, d.width, d.height), (name, w, h));
        assert!(d.notes.is_empty(), "{name}: {:?}", d.notes);
        assert_eq!(d.rgb, img, "{name} is lossless");
    }

    // A one-frame GIF is a palette image; opaque pixels lose nothing when alpha goes.
    let mut rgba = RgbaImage::new(8, 4);
    for (x, _, p) in rgba.enumerate_pixels_mut() {
        *p = if x < 4 { image::Rgba([255, 0, 0, 255]) } else { image::Rgba([0, 0, 255, 255]) };
    }
    let g = ok(&gif_frames(&[rgba]));
    assert_eq!((g.format, g.width, g.height), ("gif", 8, 4));
    assert_eq!(g.notes, ["converted_from_palette"]);
    near(*g.rgb.get_pixel(1, 1), [255, 0, 0], 0);
    near(*g.rgb.get_pixel(6, 2), [0, 0, 255], 0);
}

#[test]
fn the_name_does_not_matter_only_the_content() {
    // Same PNG bytes whatever the caller calls them; a JPEG named .png is still a JPEG.
    let img = photo(16, 16, 3);
    assert_eq!(ok(&jpeg(&img, 90)).format, "jpeg");
    // A text file named photo.jpg.
    let e = err(b"this is not a jpeg, it is a text file named photo.jpg\n");
    assert_eq!(e.reason, "unsupported", "{e}");
}

// ---------------------------------------------------------------------------------------------------------
// Empty, junk, truncated

#[test]
fn empty_and_junk_inputs() {
    assert_eq!(err(b"").reason, "empty");
    let e = err(&Rng(0x5EED).bytes(4096));
    assert_eq!(e.reason, "unsupported", "{e}");
    // Junk behind a JPEG signature: the walk never reaches EOI.
    let mut junk = vec![0xFF, 0xD8, 0xFF];
    junk.extend(Rng(0xBAD).bytes(4096).into_iter().map(|b| if b == 0xFF { 0 } else { b }));
    let e = err(&junk);
    assert_eq!(e.reason, "truncated", "{e}");
    // Junk inside a complete JPEG envelope (SOI, one comment segment, EOI): the decoder rejects it.
    let mut junk = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x10, 0x02];
    junk.extend(Rng(0xBAD).bytes(0x1000));
    junk.extend([0xFF, 0xD9]);
    let e = err(&junk);
    assert_eq!(e.reason, "undecodable", "{e}");
    // Junk behind a PNG signature and a bogus chunk length.
    let mut junk = b"\x89PNG\r\n\x1a\n".to_vec();
    junk.extend(Rng(0xF00D).bytes(256));
    assert_eq!(err(&junk).reason, "truncated");
    // Formats `image` recognises but this labeler does not decode.
    assert_eq!(err(b"P6\n2 2\n255\n000000000000").reason, "unsupported");
    assert_eq!(err(b"qoif\0\0\0\x02\0\0\0\x02\x03\0").reason, "unsupported");
}

/// The reason each prefix of a file must give: `empty` at 0 bytes, `unsupported` while the signature is
/// incomplete, then `truncated` for every other proper prefix.
fn check_every_prefix(name: &str, file: &[u8], signature_len: usize) {
    for n in 0..file.len() {
        let e = match decode(&file[..n], &limits()) {
            Ok(img) => panic!("{name}: prefix of {n}/{} bytes decoded as {:?}", file.len(), img.notes),
            Err(e) => e,
        };
        let expected = match n {
            0 => "empty",
            n if n < signature_len => "unsupported",
            _ => "truncated",
        };
        assert!(e.reason == expected, "{name}: prefix of {n}/{} bytes gave {e}, expected {expected}", file.len());
    }
}

#[test]
fn every_prefix_of_a_jpeg_is_refused() {
    let file = jpeg(&photo(64, 48, 11), 90);
    check_every_prefix("jpeg", &file, 3);
    // The named length classes, with their exact reasons.
    let cut = |n: usize| err(&file[..n]).reason;
    assert_eq!(
        [cut(1), cut(10), cut(file.len() / 2), cut(file.len() - 2), cut(file.len() - 1)],
        ["unsupported", "truncated", "truncated", "truncated", "truncated"]
    );
    // Progressive JPEGs too (jpeg-encoder writes them): every scan must arrive.
    let img = photo(64, 48, 12);
    let mut progressive = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut progressive, 90);
    enc.set_progressive(true);
    enc.encode(img.as_raw(), 64, 48, jpeg_encoder::ColorType::Rgb).unwrap();
    assert!(mean_abs_diff(&ok(&progressive).rgb, &img) < 6.0);
    check_every_prefix("progressive jpeg", &progressive, 3);
}

#[test]
fn every_prefix_of_a_png_is_refused() {
    let img = photo(24, 16, 5);
    let file = encode(ImageFormat::Png, img.as_raw(), 24, 16, ExtendedColorType::Rgb8);
    check_every_prefix("png", &file, 8);
    let cut = |n: usize| err(&file[..n]).reason;
    assert_eq!(
        [cut(1), cut(10), cut(file.len() / 2), cut(file.len() - 2)],
        ["unsupported", "truncated", "truncated", "truncated"]
    );
}

#[test]
fn every_prefix_of_the_other_formats_is_refused() {
    let img = photo(24, 16, 9);
    let raw = img.as_raw();
    // GIF: only the first frame must be complete, so the file minus its trailer byte is still whole.
    let mut rgba = RgbaImage::new(24, 16);
    for (x, y, p) in rgba.enumerate_pixels_mut() {
        *p = image::Rgba([(x * 10) as u8, (y * 15) as u8, 99, 255]);
    }
    let gif = gif_frames(&[rgba]);
    check_every_prefix("gif", &gif[..gif.len() - 1], 6);
    assert_eq!(ok(&gif[..gif.len() - 1]).rgb, ok(&gif).rgb);
    let webp = encode(ImageFormat::WebP, raw, 24, 16, ExtendedColorType::Rgb8);
    check_every_prefix("webp", &webp, 12);
    // BMP and TIFF have no end marker: their decoders hit end-of-file themselves (mapped to `truncated`).
    let bmp = encode(ImageFormat::Bmp, raw, 24, 16, ExtendedColorType::Rgb8);
    check_every_prefix("bmp", &bmp, 2);
    let tiff = encode(ImageFormat::Tiff, raw, 24, 16, ExtendedColorType::Rgb8);
    check_every_prefix("tiff", &tiff, 4);
}

// ---------------------------------------------------------------------------------------------------------
// Decompression bombs and limits

#[test]
fn a_png_claiming_30000_squared_is_refused_fast() {
    // Valid IHDR for 30000×30000 gray, a tiny zlib IDAT (one row of zeros), IEND: 100 bytes that would
    // inflate to 900 MB of pixels.
    let bomb = png_by_hand(30000, 30000, 8, 0, &[(b"IDAT", zlib_stored(&[0; 30001]))]);
    let start = Instant::now();
    let e = err(&bomb);
    assert_eq!(e.reason, "too_large", "{e}");
    assert!(e.detail.contains("30000x30000"), "{e}");
    assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
    // The same through the scaled entry point.
    assert_eq!(decode_scaled(&bomb, &limits(), 224, 224).unwrap_err().reason, "too_large");
    // Within the width/height limits but over the pixel limit.
    let wide = png_by_hand(16000, 16000, 8, 0, &[(b"IDAT", zlib_stored(&[0; 16001]))]);
    assert_eq!(err(&wide).reason, "too_large");
}

#[test]
fn a_jpeg_header_claiming_60000_squared_is_refused_fast() {
    let mut file = jpeg(&photo(16, 16, 1), 90);
    let sof = file.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline SOF0");
    file[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]); // height, width = 60000
    let start = Instant::now();
    assert_eq!(err(&file).reason, "too_large");
    assert_eq!(decode_scaled(&file, &limits(), 224, 224).unwrap_err().reason, "too_large");
    assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
}

#[test]
fn allocation_and_encoded_size_limits() {
    // 8000×8000 RGBA16 is under the pixel limit but needs 512 MB for the decoder's output alone.
    let big = png_by_hand(8000, 8000, 16, 6, &[(b"IDAT", zlib_stored(&[0; 64001]))]);
    let e = err(&big);
    assert_eq!(e.reason, "too_large", "{e}");
    assert!(e.detail.contains("decoder output"), "{e}");
    // A caller's tighter limits apply to ordinary files.
    let file = jpeg(&photo(64, 48, 2), 90);
    let tight = DecodeLimits { max_width: 32, ..limits() };
    assert_eq!(decode(&file, &tight).unwrap_err().reason, "too_large");
    let tight = DecodeLimits { max_alloc: 1000, ..limits() };
    assert_eq!(decode(&file, &tight).unwrap_err().reason, "too_large");
    let tight = DecodeLimits { max_encoded_bytes: file.len() as u64 - 1, ..limits() };
    assert_eq!(decode(&file, &tight).unwrap_err().reason, "too_large");
}

// ---------------------------------------------------------------------------------------------------------
// EXIF orientation

/// Where stored pixel (x, y) of a `w`×`h` image lands after applying EXIF orientation `o`.
fn oriented(o: u16, x: u32, y: u32, w: u32, h: u32) -> (u32, u32) {
    match o {
        1 => (x, y),
        2 => (w - 1 - x, y),
        3 => (w - 1 - x, h - 1 - y),
        4 => (x, h - 1 - y),
        5 => (y, x),
        6 => (h - 1 - y, x),
        7 => (h - 1 - y, w - 1 - x),
        8 => (y, w - 1 - x),
        _ => unreachable!(),
    }
}

/// 48×32, grey, with a red 16×16 block in the top-left corner and a green one in the top-right corner.
fn marked() -> RgbImage {
    RgbImage::from_fn(48, 32, |x, y| match (x, y) {
        (0..16, 0..16) => Rgb([255, 0, 0]),
        (32..48, 0..16) => Rgb([0, 255, 0]),
        _ => Rgb([128, 128, 128]),
    })
}

#[test]
fn exif_orientations_1_to_8_are_applied() {
    let base = jpeg(&marked(), 95);
    for o in 1..=8u16 {
        let d = ok(&with_exif_orientation(&base, o));
        let swapped = o >= 5;
        let (w, h) = if swapped { (32, 48) } else { (48, 32) };
        assert_eq!((d.width, d.height, d.rgb.dimensions()), (w, h, (w, h)), "orientation {o}");
        let expected: Vec<String> = if o == 1 { vec![] } else { vec![format!("exif_orientation_{o}")] };
        assert_eq!(d.notes, expected, "orientation {o}");
        let (rx, ry) = oriented(o, 8, 8, 48, 32);
        let (gx, gy) = oriented(o, 40, 8, 48, 32);
        near(*d.rgb.get_pixel(rx, ry), [255, 0, 0], 40);
        near(*d.rgb.get_pixel(gx, gy), [0, 255, 0], 40);
        let (ox, oy) = oriented(o, 24, 24, 48, 32); // bottom middle stays grey
        near(*d.rgb.get_pixel(ox, oy), [128, 128, 128], 20);

        // The scaled path applies the same orientation (1/8 scale: one pixel per 8×8 block).
        let s = decode_scaled(&with_exif_orientation(&base, o), &limits(), 1, 1).unwrap();
        assert_eq!((s.width, s.height), (w, h), "scaled, orientation {o}");
        assert_eq!(s.rgb.dimensions(), (w / 8, h / 8), "scaled, orientation {o}");
        assert!(s.notes.contains(&"scaled_decode_1_8"), "{:?}", s.notes);
        let (rx, ry) = oriented(o, 1, 1, 6, 4);
        let (gx, gy) = oriented(o, 5, 1, 6, 4);
        near(*s.rgb.get_pixel(rx, ry), [255, 0, 0], 40);
        near(*s.rgb.get_pixel(gx, gy), [0, 255, 0], 40);
    }
    // Orientation values outside 1..=8 are ignored, not fatal.
    for o in [0u16, 9, 0xFFFF] {
        let d = ok(&with_exif_orientation(&base, o));
        assert_eq!((d.width, d.height), (48, 32));
        assert!(d.notes.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------------------
// Pixel layouts

#[test]
fn png_layouts_become_rgb8_with_notes() {
    let (w, h) = (4u32, 2u32);
    // 16-bit RGB: 0x1234 → 0x12 (rounded), 0xFFFF → 255.
    // `image`'s encoders take 16-bit samples as native-endian bytes.
    let ne = |samples: &[u16]| -> Vec<u8> { samples.iter().flat_map(|v| v.to_ne_bytes()).collect() };
    let rgb16 = ne(&[0x1234, 0xFFFF, 0].repeat((w * h) as usize));
    let d = ok(&encode(ImageFormat::Png, &rgb16, w, h, ExtendedColorType::Rgb16));
    assert_eq!(d.notes, ["converted_from_rgb16"]);
    near(*d.rgb.get_pixel(0, 0), [0x12, 255, 0], 1);

    let gray: Vec<u8> = (0..w * h).map(|i| (i * 30) as u8).collect();
    let d = ok(&encode(ImageFormat::Png, &gray, w, h, ExtendedColorType::L8));
    assert_eq!(d.notes, ["converted_from_gray8"]);
    assert_eq!(*d.rgb.get_pixel(3, 1), Rgb([210, 210, 210]));

    let gray16 = ne(&[0x8000].repeat((w * h) as usize));
    let d = ok(&encode(ImageFormat::Png, &gray16, w, h, ExtendedColorType::L16));
    assert_eq!(d.notes, ["converted_from_gray16"]);
    near(*d.rgb.get_pixel(1, 1), [128, 128, 128], 1);

    let gray_alpha: Vec<u8> = (0..w * h).flat_map(|i| [200, if i == 0 { 0 } else { 255 }]).collect();
    let d = ok(&encode(ImageFormat::Png, &gray_alpha, w, h, ExtendedColorType::La8));
    assert_eq!(d.notes, ["converted_from_gray8", "alpha_dropped"]);
    assert_eq!(*d.rgb.get_pixel(2, 0), Rgb([200, 200, 200]));

    let rgba: Vec<u8> = (0..w * h).flat_map(|i| [10, 20, 30, if i == 5 { 128 } else { 255 }]).collect();
    let d = ok(&encode(ImageFormat::Png, &rgba, w, h, ExtendedColorType::Rgba8));
    assert_eq!(d.notes, ["alpha_dropped"]);
    assert_eq!(*d.rgb.get_pixel(1, 1), Rgb([10, 20, 30]));
    // Fully opaque RGBA loses nothing, so nothing is noted.
    let opaque: Vec<u8> = (0..w * h).flat_map(|_| [10, 20, 30, 255]).collect();
    assert!(ok(&encode(ImageFormat::Png, &opaque, w, h, ExtendedColorType::Rgba8)).notes.is_empty());

    let rgba16 = ne(&[0xFFFF, 0, 0, 0x8000].repeat((w * h) as usize));
    let d = ok(&encode(ImageFormat::Png, &rgba16, w, h, ExtendedColorType::Rgba16));
    assert_eq!(d.notes, ["converted_from_rgb16", "alpha_dropped"]);

    // Palette PNG (colour type 3), hand-made: red, green, blue, white.
    let plte = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
    let idat = zlib_stored(&scanlines(&[&[0, 1, 2, 3], &[3, 2, 1, 0]]));
    let d = ok(&png_by_hand(w, h, 8, 3, &[(b"PLTE", plte.clone()), (b"IDAT", idat.clone())]));
    assert_eq!(d.notes, ["converted_from_palette"]);
    assert_eq!(*d.rgb.get_pixel(1, 0), Rgb([0, 255, 0]));
    assert_eq!(*d.rgb.get_pixel(0, 1), Rgb([255, 255, 255]));
    // With a tRNS chunk making index 0 transparent, the alpha that goes is noted too.
    let d = ok(&png_by_hand(w, h, 8, 3, &[(b"PLTE", plte), (b"tRNS", vec![0]), (b"IDAT", idat)]));
    assert_eq!(d.notes, ["converted_from_palette", "alpha_dropped"]);
}

#[test]
fn gray_jpeg_and_cmyk_jpeg_become_rgb8() {
    let gray: Vec<u8> = (0..32 * 16).map(|i| if i % 32 < 16 { 40 } else { 220 }).collect();
    let mut file = Vec::new();
    JpegEncoder::new_with_quality(&mut file, 95).encode(&gray, 32, 16, ExtendedColorType::L8).unwrap();
    let d = ok(&file);
    assert_eq!(d.notes, ["converted_from_gray8"]);
    near(*d.rgb.get_pixel(4, 8), [40, 40, 40], 6);
    let s = decode_scaled(&file, &limits(), 1, 1).unwrap();
    assert_eq!(s.notes, ["converted_from_gray8", "scaled_decode_1_8"]);
    near(*s.rgb.get_pixel(0, 1), [40, 40, 40], 6);

    // CMYK with an Adobe APP14 marker (jpeg-encoder writes Adobe's inverted CMYK): left half pure cyan,
    // right half pure white.
    let cmyk: Vec<u8> = (0..32 * 16).flat_map(|i| if i % 32 < 16 { [255, 0, 0, 0] } else { [0, 0, 0, 0] }).collect();
    let mut file = Vec::new();
    jpeg_encoder::Encoder::new(&mut file, 95).encode(&cmyk, 32, 16, jpeg_encoder::ColorType::Cmyk).unwrap();
    assert!(file.windows(5).any(|w| w == b"Adobe"));
    let d = ok(&file);
    assert_eq!((d.format, d.width, d.height), ("jpeg", 32, 16));
    assert_eq!(d.notes, ["converted_from_cmyk"]);
    near(*d.rgb.get_pixel(4, 8), [0, 255, 255], 24);
    near(*d.rgb.get_pixel(28, 8), [255, 255, 255], 24);
    // The scaled path leaves CMYK to the full decoder.
    let s = decode_scaled(&file, &limits(), 1, 1).unwrap();
    assert_eq!((s.notes, s.rgb.dimensions()), (vec!["converted_from_cmyk"], (32, 16)));
}

// ---------------------------------------------------------------------------------------------------------
// Animation

#[test]
fn animated_gif_apng_and_webp_give_their_first_frame() {
    let red = [255, 0, 0, 255];
    let blue = [0, 0, 255, 255];
    let gif = gif_frames(&[solid_rgba(6, 4, red), solid_rgba(6, 4, blue)]);
    let d = ok(&gif);
    assert_eq!((d.format, d.width, d.height), ("gif", 6, 4));
    assert_eq!(d.notes, ["converted_from_palette", "first_frame_only"]);
    assert_eq!(*d.rgb.get_pixel(3, 2), Rgb([255, 0, 0]));

    // APNG: acTL (2 frames), fcTL + IDAT (red), fcTL + fdAT (blue).
    let fctl = |seq: u32| {
        let mut d = Vec::new();
        for v in [seq, 6, 4, 0, 0] {
            d.extend(v.to_be_bytes());
        }
        d.extend([0, 1, 0, 10, 0, 0]);
        d
    };
    let row_red: Vec<u8> = [255, 0, 0].repeat(6);
    let row_blue: Vec<u8> = [0, 0, 255].repeat(6);
    let mut fdat = 2u32.to_be_bytes().to_vec();
    fdat.extend(zlib_stored(&scanlines(&[row_blue.as_slice(); 4])));
    let apng = png_by_hand(
        6,
        4,
        8,
        2,
        &[
            (b"acTL", [2u32.to_be_bytes(), 0u32.to_be_bytes()].concat()),
            (b"fcTL", fctl(0)),
            (b"IDAT", zlib_stored(&scanlines(&[row_red.as_slice(); 4]))),
            (b"fcTL", fctl(1)),
            (b"fdAT", fdat),
        ],
    );
    let d = ok(&apng);
    assert_eq!((d.format, d.width, d.height), ("png", 6, 4));
    assert_eq!(d.notes, ["first_frame_only"]);
    assert_eq!(*d.rgb.get_pixel(5, 3), Rgb([255, 0, 0]));

    let webp =
        animated_webp(&[RgbImage::from_pixel(6, 4, Rgb([255, 0, 0])), RgbImage::from_pixel(6, 4, Rgb([0, 0, 255]))]);
    let d = ok(&webp);
    assert_eq!((d.format, d.width, d.height), ("webp", 6, 4));
    assert_eq!(d.notes, ["first_frame_only"]);
    assert_eq!(*d.rgb.get_pixel(2, 2), Rgb([255, 0, 0]));
}

// ---------------------------------------------------------------------------------------------------------
// Scaled decoding

#[test]
fn decode_scaled_picks_the_largest_reduction_that_keeps_the_minimum() {
    let img = photo(640, 480, 42);
    let file = jpeg(&img, 90);
    let full = ok(&file);
    for ((min_w, min_h), n, note) in [
        ((160, 160), 1, None), // 1/2 would fit, but is slower than a full decode
        ((161, 120), 1, None),
        ((160, 120), 4, Some("scaled_decode_1_4")),
        ((80, 60), 8, Some("scaled_decode_1_8")),
        ((1, 1), 8, Some("scaled_decode_1_8")),
        ((321, 10), 1, None),
        ((640, 480), 1, None),
        ((2000, 2000), 1, None),
    ] {
        let s = decode_scaled(&file, &limits(), min_w, min_h).unwrap();
        assert_eq!((s.width, s.height), (640, 480), "original size is reported");
        assert_eq!(s.rgb.dimensions(), (640 / n, 480 / n), "min {min_w}x{min_h}");
        assert_eq!(s.notes, note.into_iter().collect::<Vec<_>>());
        // The reduced decode is a faithful downscale of the full one.
        let reference = image::imageops::resize(&full.rgb, 640 / n, 480 / n, image::imageops::FilterType::Triangle);
        assert!(mean_abs_diff(&s.rgb, &reference) < 4.0, "1/{n}: {}", mean_abs_diff(&s.rgb, &reference));
    }
    // A rotated photo needs the minimum in the upright frame: 480×640 upright, min 120 wide and 160 high
    // allows 1/4 (120×160); the same minimum on the unrotated 640×480 photo does not (1/4 is 160×120).
    let rotated = with_exif_orientation(&file, 6);
    let s = decode_scaled(&rotated, &limits(), 120, 160).unwrap();
    assert_eq!((s.width, s.height, s.rgb.dimensions()), (480, 640, (120, 160)));
    assert_eq!(s.notes, ["scaled_decode_1_4", "exif_orientation_6"]);
    let s = decode_scaled(&file, &limits(), 120, 160).unwrap();
    assert_eq!((s.rgb.dimensions(), s.notes.len()), ((640, 480), 0));
    // Other formats and broken files behave exactly as in `decode`.
    let png = encode(ImageFormat::Png, img.as_raw(), 640, 480, ExtendedColorType::Rgb8);
    let s = decode_scaled(&png, &limits(), 160, 160).unwrap();
    assert_eq!((s.rgb.dimensions(), s.notes.len()), ((640, 480), 0));
    assert_eq!(decode_scaled(&file[..file.len() / 2], &limits(), 160, 160).unwrap_err().reason, "truncated");
    assert_eq!(decode_scaled(b"", &limits(), 160, 160).unwrap_err().reason, "empty");
}

// ---------------------------------------------------------------------------------------------------------
// Robustness: bit flips never panic and never escape as anything but a known reason.

#[test]
fn corrupted_files_end_in_a_known_reason() {
    const REASONS: [&str; 6] = ["empty", "too_large", "undecodable", "truncated", "unsupported", "panic"];
    let img = photo(32, 24, 77);
    let files = [
        jpeg(&img, 90),
        encode(ImageFormat::Png, img.as_raw(), 32, 24, ExtendedColorType::Rgb8),
        encode(ImageFormat::WebP, img.as_raw(), 32, 24, ExtendedColorType::Rgb8),
        encode(ImageFormat::Bmp, img.as_raw(), 32, 24, ExtendedColorType::Rgb8),
        encode(ImageFormat::Tiff, img.as_raw(), 32, 24, ExtendedColorType::Rgb8),
        gif_frames(&[solid_rgba(8, 8, [1, 2, 3, 255]), solid_rgba(8, 8, [4, 5, 6, 255])]),
    ];
    let mut rng = Rng(99);
    for file in &files {
        for _ in 0..300 {
            let mut f = file.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % f.len();
                f[i] ^= 1 << (rng.next() % 8);
            }
            for result in [decode(&f, &limits()), decode_scaled(&f, &limits(), 8, 8)] {
                match result {
                    Ok(d) => assert_eq!(d.rgb.len() as u64, u64::from(d.rgb.width()) * u64::from(d.rgb.height()) * 3),
                    Err(e) => assert!(REASONS.contains(&e.reason), "{e}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Throughput, per core:
// RAYON_NUM_THREADS=1 cargo test --release -p labeler --test decode_corpus -- --ignored --nocapture throughput

/// CPU seconds used by this process so far, all threads (Linux `/proc/self/stat`, 100 ticks per second).
/// Reported beside wall time because the machines this runs on are shared: CPU time per image is the
/// per-core cost even when other work steals the core.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[test]
#[ignore = "benchmark; run explicitly with --release"]
#[allow(clippy::print_stdout)]
fn throughput() {
    use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let resize = |rgb: &RgbImage, side: u32| {
        let mut dst = Image::new(side, side, PixelType::U8x3);
        let alg = ResizeAlg::Convolution(FilterType::Bilinear);
        Resizer::new().resize(rgb, &mut dst, &ResizeOptions::new().resize_alg(alg)).unwrap();
        dst.into_vec().len()
    };
    for (w, h, rounds) in [(640, 480, 40u32), (2048, 1536, 4)] {
        let files: Vec<Vec<u8>> = (0..8).map(|seed| jpeg(&photo(w, h, seed + 1), 90)).collect();
        let kb = files.iter().map(Vec::len).sum::<usize>() / files.len() / 1024;
        println!("{w}x{h} photo-like JPEG, quality 90, ~{kb} KiB, {} files x {rounds} rounds", files.len());
        let run = |name: &str, f: &dyn Fn(&[u8]) -> usize| {
            for file in &files {
                f(file); // warm-up
            }
            let n = f64::from(rounds * files.len() as u32);
            let (start, cpu) = (Instant::now(), process_cpu_seconds());
            for _ in 0..rounds {
                for file in &files {
                    std::hint::black_box(f(file));
                }
            }
            let wall = start.elapsed().as_secs_f64() / n;
            let cpu = (process_cpu_seconds() - cpu) / n;
            println!(
                "  {name:<46} cpu {:>7.3} ms/image = {:>5.0}/s per core   wall {:>7.3} ms",
                cpu * 1e3,
                1.0 / cpu,
                wall * 1e3
            );
        };
        let l = limits();
        run("decode", &|b| decode(b, &l).unwrap().rgb.len());
        run("decode_scaled min w/4 x h/4 (1/4)", &|b| decode_scaled(b, &l, w / 4, h / 4).unwrap().rgb.len());
        run("decode_scaled min w/8 x h/8 (1/8)", &|b| decode_scaled(b, &l, w / 8, h / 8).unwrap().rgb.len());
        run("decode + resize 224 (fast_image_resize)", &|b| resize(&decode(b, &l).unwrap().rgb, 224));
        run("decode_scaled min 224 + resize 224", &|b| resize(&decode_scaled(b, &l, 224, 224).unwrap().rgb, 224));
        run("decode + resize 160", &|b| resize(&decode(b, &l).unwrap().rgb, 160));
        run("decode_scaled min 160 + resize 160", &|b| resize(&decode_scaled(b, &l, 160, 120).unwrap().rgb, 160));
    }
}
