//! Container-level checks that run before any pixel is decoded.
//!
//! The pixel decoders are lenient on purpose: zune-jpeg (non-strict) and the png crate fill whatever a
//! truncated file lacks with grey and report success. A label computed on a half-grey image is silently
//! wrong, so completeness is decided here, from the container structure alone: a JPEG must reach its EOI
//! marker by walking segments and entropy-coded data (a trailing EOI byte pair is not enough, and bytes
//! after EOI — motion-photo videos, vendor trailers — are allowed); a PNG must reach IEND by walking
//! chunks; a GIF must complete its first frame; a WebP must contain as many bytes as its RIFF header says.
//! These walks also collect the facts the decoders hide (palette, CMYK, animation, progressive coefficient
//! memory). Each walk is O(file size), never allocates, and never indexes out of bounds.

/// What the walk learned about a file that is structurally complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Container {
    /// Colours come from a palette (PNG colour type 3, GIF, BMP of 8 bits per pixel or fewer).
    pub palette: bool,
    /// A four-component JPEG (CMYK or YCCK).
    pub cmyk: bool,
    /// More than one frame (APNG with acTL frames > 1, GIF with two image descriptors, animated WebP).
    pub animated: bool,
    /// JPEG only: number of colour components in the frame header.
    pub jpeg_components: u8,
    /// JPEG only: bytes a decoder holds in DCT coefficients for a progressive image (0 for baseline).
    pub coefficient_bytes: u64,
}

/// Why a file was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Truncated(pub String);

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

fn le16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

fn be32(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?)))
}

fn le32(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?)))
}

/// Walks a JPEG from SOI to EOI. Garbage between segments is skipped as libjpeg does; anything after EOI is
/// ignored. Running out of bytes anywhere before EOI is truncation.
pub(crate) fn jpeg(b: &[u8]) -> Result<Container, Truncated> {
    let cut = |what: &str, at: usize| Truncated(format!("jpeg ends at byte {} {what}, before the EOI marker", at));
    if b.len() < 2 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err(cut("inside the SOI marker", b.len()));
    }
    let mut info = Container::default();
    let mut seen_sof = false;
    let mut pos = 2;
    loop {
        // Find the next marker: skip stray bytes up to 0xFF, then any 0xFF fill bytes.
        pos = match memchr::memchr(0xFF, &b[pos.min(b.len())..]) {
            Some(off) => pos + off,
            None => return Err(cut("between segments", b.len())),
        };
        while b.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = b.get(pos) else {
            return Err(cut("inside a marker", b.len()));
        };
        pos += 1;
        match marker {
            0xD9 => return Ok(info),
            // Standalone markers: SOI, TEM, RST0-7, and a stuffed zero where a marker was expected.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = be16(b, pos).ok_or_else(|| cut("inside a segment length", b.len()))?;
        if len < 2 || pos + len > b.len() {
            return Err(cut(&format!("inside segment 0xFF{marker:02X} of {len} bytes"), b.len()));
        }
        let seg = &b[pos + 2..pos + len];
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) && !seen_sof {
            seen_sof = true;
            sof(seg, marker, &mut info);
        }
        pos += len;
        if marker == 0xDA {
            pos = skip_entropy_coded(b, pos).ok_or_else(|| cut("inside entropy-coded scan data", b.len()))?;
        }
    }
}

/// Reads a frame header: component count, sampling factors, and for progressive frames the coefficient
/// memory a decoder keeps (two bytes per coefficient, each component padded to whole 8×8 blocks).
fn sof(seg: &[u8], marker: u8, info: &mut Container) {
    let (Some(height), Some(width), Some(&n)) = (be16(seg, 1), be16(seg, 3), seg.get(5)) else {
        return;
    };
    info.jpeg_components = n;
    info.cmyk = n == 4;
    let comps: Vec<(u64, u64)> = (0..usize::from(n))
        .filter_map(|i| seg.get(6 + 3 * i + 1).map(|&s| (u64::from(s >> 4).max(1), u64::from(s & 15).max(1))))
        .collect();
    let progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
    if progressive {
        let hmax = comps.iter().map(|c| c.0).max().unwrap_or(1);
        let vmax = comps.iter().map(|c| c.1).max().unwrap_or(1);
        let (w, h) = (width as u64, height as u64);
        info.coefficient_bytes = comps
            .iter()
            .map(|&(hs, vs)| {
                let cw = (w * hs).div_ceil(hmax).div_ceil(8) * 8;
                let ch = (h * vs).div_ceil(vmax).div_ceil(8) * 8;
                cw * ch * 2
            })
            .sum();
    }
}

/// Skips entropy-coded data starting at `pos`; returns the position of the 0xFF that starts the next marker,
/// or `None` when the data runs out first. Inside scan data 0xFF is always followed by a stuffed 0x00, a
/// restart marker, fill 0xFF, or a real marker.
fn skip_entropy_coded(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        pos += memchr::memchr(0xFF, b.get(pos..)?)?;
        let mut next = pos + 1;
        while b.get(next) == Some(&0xFF) {
            next += 1;
        }
        match *b.get(next)? {
            0x00 | 0xD0..=0xD7 => pos = next + 1,
            _ => return Some(next - 1),
        }
    }
}

/// Walks PNG chunks from the signature to IEND (chunk CRCs are the decoder's business).
pub(crate) fn png(b: &[u8]) -> Result<Container, Truncated> {
    let mut info = Container::default();
    let mut pos = 8;
    loop {
        let (Some(len), Some(kind)) = (be32(b, pos), b.get(pos + 4..pos + 8)) else {
            return Err(Truncated(format!("png ends at byte {} inside a chunk header, before IEND", b.len())));
        };
        let end = pos as u64 + 12 + len;
        if end > b.len() as u64 {
            let kind = String::from_utf8_lossy(kind);
            return Err(Truncated(format!(
                "png ends at byte {} inside chunk {kind} of {len} bytes, before IEND",
                b.len()
            )));
        }
        let data = &b[pos + 8..pos + 8 + len as usize];
        match kind {
            b"IHDR" => info.palette = data.get(9) == Some(&3),
            b"acTL" => info.animated = be32(data, 0).is_some_and(|frames| frames > 1),
            b"IEND" => return Ok(info),
            _ => {}
        }
        pos = end as usize;
    }
}

/// Walks GIF blocks until the second image descriptor or the trailer. Only the first frame is decoded, so
/// only the first frame has to be complete.
pub(crate) fn gif(b: &[u8]) -> Result<Container, Truncated> {
    let mut info = Container { palette: true, ..Container::default() };
    let cut = || Truncated(format!("gif ends at byte {} before its first frame is complete", b.len()));
    let mut frames = 0u32;
    let mut pos = 13;
    let packed = *b.get(10).ok_or_else(cut)?;
    if packed & 0x80 != 0 {
        pos += 3 << ((packed & 7) + 1);
    }
    let sub_blocks = |mut pos: usize| -> Option<usize> {
        loop {
            let n = usize::from(*b.get(pos)?);
            pos += 1 + n;
            if n == 0 {
                return Some(pos);
            }
        }
    };
    loop {
        let Some(&block) = b.get(pos) else {
            return if frames >= 1 { Ok(info) } else { Err(cut()) };
        };
        let next = match block {
            0x21 => sub_blocks(pos + 2),
            0x2C => {
                frames += 1;
                if frames > 1 {
                    info.animated = true;
                    return Ok(info);
                }
                let local = *b.get(pos + 9).ok_or_else(cut)?;
                let table = if local & 0x80 != 0 { 3 << ((local & 7) + 1) } else { 0 };
                // Descriptor (10 bytes), local colour table, LZW minimum code size, then data sub-blocks.
                Some(sub_blocks(pos + 10 + table + 1).ok_or_else(cut)?)
            }
            // Trailer, or a byte no block starts with: stop here and let the decoder judge.
            _ => return Ok(info),
        };
        match next {
            Some(p) => pos = p,
            None => return if frames >= 1 { Ok(info) } else { Err(cut()) },
        }
    }
}

/// Checks the RIFF length and reads the VP8X animation flag.
pub(crate) fn webp(b: &[u8]) -> Result<Container, Truncated> {
    let riff = le32(b, 4).unwrap_or(u64::MAX);
    if riff.saturating_add(8) > b.len() as u64 {
        return Err(Truncated(format!("webp has {} bytes but its RIFF header announces {}", b.len(), riff + 8)));
    }
    let mut info = Container::default();
    if b.get(12..16) == Some(b"VP8X") {
        info.animated = b.get(20).is_some_and(|flags| flags & 0x02 != 0);
    }
    Ok(info)
}

/// Reads the bit depth from a BMP info header: 8 bits per pixel or fewer means a palette.
pub(crate) fn bmp(b: &[u8]) -> Container {
    let header = le32(b, 14).unwrap_or(0);
    let bpp = if header == 12 { le16(b, 24) } else { le16(b, 28) };
    Container { palette: bpp.is_some_and(|bpp| (1..=8).contains(&bpp)), ..Container::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_walk_needs_eoi_and_ignores_trailers() {
        // SOI, COM segment, SOS with a stuffed 0xFF00 and a restart marker, EOI, trailer.
        let mut f = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x04, 0xFF, 0xD9];
        f.extend([0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD9]);
        let complete = f.len();
        f.extend(b"trailing video bytes");
        assert!(jpeg(&f).is_ok());
        assert!(jpeg(&f[..complete]).is_ok());
        // The EOI bytes inside the comment segment do not count: every shorter prefix is cut.
        for n in 0..complete {
            assert!(jpeg(&f[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn progressive_coefficients_follow_sampling() {
        // SOF2 640x480, 3 components, Y 2x2, Cb/Cr 1x1.
        let seg = [8, 0x01, 0xE0, 0x02, 0x80, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1];
        let mut info = Container::default();
        sof(&seg, 0xC2, &mut info);
        assert_eq!(info.jpeg_components, 3);
        assert_eq!(info.coefficient_bytes, (640 * 480 + 2 * 320 * 240) * 2);
    }
}
