//! Drawing for the rendered pseudo labels (`labeler render`) with nothing but the `image` crate:
//! rectangles, tags, a viridis colour map and a built-in 5×7 bitmap font — no font files and no system
//! libraries, so pictures look the same on every machine and in CI. Charts (training curves, the
//! experiment's report) are drawn by `plotters` instead.

use image::{Rgb, RgbImage};

/// Viridis through its standard degree-6 polynomial fit; `t` is clamped to [0, 1].
pub fn viridis(t: f32) -> [u8; 3] {
    const C: [[f32; 3]; 7] = [
        [0.277_727_33, 0.005_407_344_5, 0.334_099_8],
        [0.105_093_04, 1.404_613_5, 1.384_590_2],
        [-0.330_861_83, 0.214_847_56, 0.095_095_16],
        [-4.634_230_5, -5.799_101, -19.332_441],
        [6.228_27, 14.179_933, 56.690_55],
        [4.776_385, -13.745_145, -65.353_03],
        [-5.435_456, 4.645_852_6, 26.312_435],
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    [0, 1, 2].map(|k| {
        let v = C.iter().rev().fold(0.0, |acc, c| acc * t + c[k]);
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    })
}

pub fn text_colour(background: [u8; 3]) -> [u8; 3] {
    let luma = 0.299 * f32::from(background[0]) + 0.587 * f32::from(background[1]) + 0.114 * f32::from(background[2]);
    if luma > 140.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// Fill `[x0, x1) × [y0, y1)`, clipped to the image.
pub fn fill_rect(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, colour: [u8; 3]) {
    for y in y0..y1.min(img.height()) {
        for x in x0..x1.min(img.width()) {
            img.put_pixel(x, y, Rgb(colour));
        }
    }
}

/// An outline `w` pixels wide inside `[x0, x1) × [y0, y1)`.
#[allow(clippy::too_many_arguments)]
pub fn draw_rect(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, w: u32, colour: [u8; 3]) {
    let (x1, y1) = (x1.max(x0 + 1), y1.max(y0 + 1));
    fill_rect(img, x0, y0, x1, (y0 + w).min(y1), colour);
    fill_rect(img, x0, y1.saturating_sub(w).max(y0), x1, y1, colour);
    fill_rect(img, x0, y0, (x0 + w).min(x1), y1, colour);
    fill_rect(img, x1.saturating_sub(w).max(x0), y0, x1, y1, colour);
}

/// A text tag on a filled background of `colour`, kept inside the image.
pub fn draw_tag(img: &mut RgbImage, x: u32, y: u32, text: &str, colour: [u8; 3]) {
    let width = (text_width(text) + 3).min(img.width());
    let x = x.min(img.width() - width);
    fill_rect(img, x, y, x + width, y + GLYPH_HEIGHT + 2, colour);
    draw_text(img, x + 2, y + 1, text, text_colour(colour), img.width());
}

pub fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * (GLYPH_WIDTH + 1)
}

/// Draw `text` in the built-in 5×7 capitals with its top-left at (x, y); text that would pass `right` is
/// cut and ends in `~`, so a cut word is never mistaken for a whole one.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, colour: [u8; 3], right: u32) {
    let right = right.min(img.width());
    let fits = (right.saturating_sub(x) + 1) / (GLYPH_WIDTH + 1);
    let len = text.chars().count();
    let shown: Vec<char> = if len as u32 <= fits {
        text.chars().collect()
    } else {
        text.chars().take(fits.saturating_sub(1) as usize).chain(std::iter::once('~')).collect()
    };
    for (i, &ch) in shown.iter().enumerate() {
        let gx = x + i as u32 * (GLYPH_WIDTH + 1);
        if gx + GLYPH_WIDTH > right {
            break;
        }
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                let py = y + row as u32;
                if bits & (1 << (GLYPH_WIDTH - 1 - col)) != 0 && py < img.height() {
                    img.put_pixel(gx + col, py, Rgb(colour));
                }
            }
        }
    }
}

/// Width of a glyph in pixels (characters advance by one more).
pub const GLYPH_WIDTH: u32 = 5;
/// Height of a glyph in pixels.
pub const GLYPH_HEIGHT: u32 = 7;

/// The 5×7 bitmap of `ch` (rows top to bottom, bit 4 = leftmost column). Lower case is drawn as upper
/// case; characters without a glyph are drawn as `?`.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        ' ' => [0; 7],
        'A' => [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'B' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110],
        'C' => [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110],
        'D' => [0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110],
        'E' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111],
        'F' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000],
        'G' => [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111],
        'H' => [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'I' => [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'J' => [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100],
        'K' => [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001],
        'L' => [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111],
        'M' => [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001],
        'N' => [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001],
        'O' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'P' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000],
        'Q' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101],
        'R' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001],
        'S' => [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110],
        'T' => [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100],
        'U' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'V' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'W' => [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010],
        'X' => [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001],
        'Y' => [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100],
        'Z' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111],
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        '.' => [0, 0, 0, 0, 0, 0b01100, 0b01100],
        ',' => [0, 0, 0, 0, 0b01100, 0b00100, 0b01000],
        ':' => [0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0],
        ';' => [0, 0b01100, 0b01100, 0, 0b01100, 0b00100, 0b01000],
        '-' => [0, 0, 0, 0b11111, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0b11111],
        '/' => [0, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0],
        '\\' => [0, 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0],
        '%' => [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011],
        '(' => [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010],
        ')' => [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000],
        '[' => [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110],
        ']' => [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110],
        '#' => [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010],
        '+' => [0, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0],
        '=' => [0, 0, 0b11111, 0, 0b11111, 0, 0],
        '<' => [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010],
        '>' => [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000],
        '!' => [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0b00100],
        '\'' => [0b01100, 0b00100, 0b01000, 0, 0, 0, 0],
        '"' => [0b01010, 0b01010, 0b01010, 0, 0, 0, 0],
        '*' => [0, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0],
        '@' => [0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110],
        '&' => [0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101],
        '|' => [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100],
        '~' => [0, 0, 0b01000, 0b10101, 0b00010, 0, 0],
        _ => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0, 0b00100],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_runs_dark_to_bright() {
        let (lo, hi) = (viridis(0.0), viridis(1.0));
        let luma = |c: [u8; 3]| u32::from(c[0]) + u32::from(c[1]) + u32::from(c[2]);
        assert!(luma(lo) < luma(viridis(0.5)) && luma(viridis(0.5)) < luma(hi));
        assert!((i32::from(hi[0]) - 253).abs() <= 3 && (i32::from(lo[2]) - 84).abs() <= 4, "{lo:?} {hi:?}");
    }

    #[test]
    fn text_is_cut_with_a_tilde() {
        let mut img = RgbImage::new(40, 10);
        draw_text(&mut img, 0, 0, "ABCDEFGH", [255, 255, 255], 40);
        // 40 px fit 6 glyphs of 6 px: five letters and '~'; nothing is drawn past x = 36.
        assert!((36..40).all(|x| (0..10).all(|y| img.get_pixel(x, y).0 == [0, 0, 0])));
    }
}
