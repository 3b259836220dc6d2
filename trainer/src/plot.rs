//! Training curves as a PNG (`<run>/curves.png`), drawn from `metrics.jsonl` alone, so a run can be
//! looked at while it trains (it is redrawn at every evaluation) and re-drawn later (`trainer plot`).
//!
//! Four panels: losses (total and per task, log scale), evaluation metrics with their trivial baselines
//! as dashed lines of the same colour, the learning rate, and throughput.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use canvas::{draw_line, draw_rect, draw_text, fill_rect, text_width, GLYPH_HEIGHT};
use image::RgbImage;

use crate::error::TrainError;
use crate::metrics_log::read_metrics;

const PANEL_W: u32 = 420;
const PANEL_H: u32 = 270;
const MARGIN_L: u32 = 52;
const MARGIN_R: u32 = 10;
const MARGIN_T: u32 = 20;
const MARGIN_B: u32 = 22;
const BACKGROUND: [u8; 3] = [255, 255, 255];
const AXES: [u8; 3] = [60, 60, 60];
const GRID: [u8; 3] = [225, 225, 225];
const PALETTE: [[u8; 3]; 7] =
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [23, 190, 207]];

/// A named series of (step, value) points.
#[derive(Debug, Clone, Default)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
    colour: [u8; 3],
}

fn series_from(
    records: &[serde_json::Value],
    kind: &str,
    value: impl Fn(&serde_json::Value) -> Vec<(String, f64)>,
) -> Vec<Series> {
    let mut by_name: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in records.iter().filter(|r| r["kind"] == kind) {
        let Some(step) = r["step"].as_f64() else { continue };
        for (name, v) in value(r) {
            if v.is_finite() {
                if !by_name.contains_key(&name) {
                    order.push(name.clone());
                }
                by_name.entry(name).or_default().push((step, v));
            }
        }
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, name)| Series {
            points: by_name.remove(&name).unwrap_or_default(),
            name,
            dashed: false,
            colour: PALETTE[i % PALETTE.len()],
        })
        .collect()
}

/// Draws `<run>/curves.png` from `<run>/metrics.jsonl`; returns the PNG's path.
pub fn draw_run(run: &Path) -> Result<PathBuf, TrainError> {
    let records = read_metrics(run)?;
    let losses = series_from(&records, "train", |r| {
        let mut v = vec![("total".to_owned(), r["loss"].as_f64().unwrap_or(f64::NAN))];
        if let Some(tasks) = r["tasks"].as_object() {
            v.extend(tasks.iter().map(|(k, x)| (k.clone(), x.as_f64().unwrap_or(f64::NAN))));
        }
        v
    });
    let mut metrics = series_from(&records, "eval", |r| {
        let mut v = Vec::new();
        if let Some(m) = r["metrics"].as_object() {
            for (k, s) in m {
                v.push((k.clone(), s["value"].as_f64().unwrap_or(f64::NAN)));
                v.push((format!("{k} baseline"), s["baseline"].as_f64().unwrap_or(f64::NAN)));
            }
        }
        v
    });
    // Baselines share their metric's colour, dashed.
    let colours: BTreeMap<String, [u8; 3]> = metrics
        .iter()
        .filter(|s| !s.name.ends_with(" baseline"))
        .enumerate()
        .map(|(i, s)| (s.name.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    for s in &mut metrics {
        let base = s.name.trim_end_matches(" baseline").to_owned();
        s.dashed = s.name.ends_with(" baseline");
        s.colour = colours.get(&base).copied().unwrap_or(AXES);
    }
    let lr = series_from(&records, "train", |r| vec![("lr".to_owned(), r["lr"].as_f64().unwrap_or(f64::NAN))]);
    let speed = series_from(&records, "train", |r| {
        vec![("samples/s".to_owned(), r["samples_per_s"].as_f64().unwrap_or(f64::NAN))]
    });

    let mut img = RgbImage::from_pixel(2 * PANEL_W, 2 * PANEL_H, image::Rgb(BACKGROUND));
    panel(&mut img, 0, 0, "LOSS (LOG SCALE)", &losses, true);
    panel(&mut img, PANEL_W, 0, "EVAL METRICS (DASHED: TRIVIAL BASELINE)", &metrics, false);
    panel(&mut img, 0, PANEL_H, "LEARNING RATE", &lr, false);
    panel(&mut img, PANEL_W, PANEL_H, "THROUGHPUT (SAMPLES/S)", &speed, false);
    save(&img, run)
}

/// Draws a fine-tuning run's `<run>/curves.png`: the loss of every grid point by step, and each point's
/// validation and test metric in grid order (from the `point` records of `metrics.jsonl`).
pub fn draw_finetune(run: &Path) -> Result<PathBuf, TrainError> {
    let records = read_metrics(run)?;
    let losses = series_from(&records, "finetune", |r| {
        vec![(r["point"].as_str().unwrap_or("?").to_owned(), r["loss"].as_f64().unwrap_or(f64::NAN))]
    });
    let points: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "point").collect();
    let metric = points
        .first()
        .and_then(|p| p["val"].as_object())
        .and_then(|m| m.keys().find(|k| !k.ends_with("degrees")).cloned())
        .unwrap_or_default();
    let mut scores = Vec::new();
    for (split, colour) in [("val", PALETTE[0]), ("test", PALETTE[1])] {
        let pts = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p[split][&metric]["value"].as_f64().map(|v| (i as f64, v)))
            .collect();
        scores.push(Series { name: split.to_owned(), points: pts, dashed: false, colour });
    }
    let mut img = RgbImage::from_pixel(2 * PANEL_W, PANEL_H, image::Rgb(BACKGROUND));
    panel(&mut img, 0, 0, "FINE-TUNING LOSS PER GRID POINT (LOG)", &losses, true);
    let title = format!("{} PER GRID POINT (X: POINT INDEX)", metric.to_uppercase());
    panel(&mut img, PANEL_W, 0, &title, &scores, false);
    save(&img, run)
}

/// Writes `<run>/curves.png` atomically.
fn save(img: &RgbImage, run: &Path) -> Result<PathBuf, TrainError> {
    let path = run.join("curves.png");
    let tmp = run.join(".curves.png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| TrainError::Io { path: tmp.display().to_string(), source: std::io::Error::other(e) })?;
    std::fs::rename(&tmp, &path).map_err(|source| TrainError::Io { path: path.display().to_string(), source })?;
    Ok(path)
}

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One panel at (`ox`, `oy`): frame, title, y range labels, x range labels, series and legend.
fn panel(img: &mut RgbImage, ox: u32, oy: u32, title: &str, series: &[Series], log: bool) {
    let (x0, y0) = (ox + MARGIN_L, oy + MARGIN_T);
    let (x1, y1) = (ox + PANEL_W - MARGIN_R, oy + PANEL_H - MARGIN_B);
    draw_text(img, ox + 4, oy + 5, title, AXES, ox + PANEL_W);
    let tf = |v: f64| if log { v.max(1e-12).log10() } else { v };
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().map(|&(x, y)| (x, tf(y)))).collect();
    if pts.is_empty() {
        draw_rect(img, x0, y0, x1, y1, 1, AXES);
        draw_text(img, x0 + 8, y0 + 8, "NO DATA YET", AXES, x1);
        return;
    }
    let (mut xmin, mut xmax) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (mut ymin, mut ymax) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    if xmax <= xmin {
        xmin -= 1.0;
        xmax += 1.0;
    }
    if ymax <= ymin {
        let pad = if ymin.abs() > 0.0 { ymin.abs() * 0.1 } else { 1.0 };
        ymin -= pad;
        ymax += pad;
    } else {
        let pad = (ymax - ymin) * 0.05;
        // Keep a non-negative series' axis at or above 0 (a learning rate never looks negative).
        ymin = if ymin >= 0.0 && !log { (ymin - pad).max(0.0) } else { ymin - pad };
        ymax += pad;
    }
    let sx = |x: f64| x0 as f64 + (x - xmin) / (xmax - xmin) * (x1 - x0) as f64;
    let sy = |y: f64| y1 as f64 - (y - ymin) / (ymax - ymin) * (y1 - y0) as f64;
    for k in 1..4 {
        let gy = y0 + (y1 - y0) * k / 4;
        fill_rect(img, x0 + 1, gy, x1, gy + 1, GRID);
    }
    draw_rect(img, x0, y0, x1, y1, 1, AXES);
    let label = |v: f64| fmt_value(if log { 10f64.powf(v) } else { v });
    let top = label(ymax);
    let bottom = label(ymin);
    draw_text(img, x0.saturating_sub(text_width(&top) + 3), y0, &top, AXES, x0);
    draw_text(img, x0.saturating_sub(text_width(&bottom) + 3), y1 - GLYPH_HEIGHT, &bottom, AXES, x0);
    let left = format!("STEP {}", xmin.round());
    let right = format!("{}", xmax.round());
    draw_text(img, x0, y1 + 5, &left, AXES, x1);
    draw_text(img, x1.saturating_sub(text_width(&right)), y1 + 5, &right, AXES, x1 + MARGIN_R);
    for s in series {
        let mapped: Vec<(i64, i64)> =
            s.points.iter().map(|&(x, y)| (sx(x).round() as i64, sy(tf(y)).round() as i64)).collect();
        if mapped.len() == 1 {
            let (x, y) = mapped[0];
            draw_line(img, x - 2, y, x + 2, y, 3, s.colour);
        }
        for (i, w) in mapped.windows(2).enumerate() {
            if s.dashed && i % 2 == 1 {
                continue;
            }
            draw_line(img, w[0].0, w[0].1, w[1].0, w[1].1, if s.dashed { 1 } else { 2 }, s.colour);
        }
    }
    // Legend, top right, one line per series (baselines are explained in the title).
    let mut ly = y0 + 4;
    for s in series.iter().filter(|s| !s.dashed) {
        let last = s.points.last().map(|p| fmt_value(p.1)).unwrap_or_default();
        let text = format!("{} {}", s.name, last);
        let w = text_width(&text) + 14;
        let lx = x1.saturating_sub(w + 4);
        fill_rect(img, lx - 2, ly - 1, x1 - 2, ly + GLYPH_HEIGHT + 1, BACKGROUND);
        fill_rect(img, lx, ly + 2, lx + 8, ly + 5, s.colour);
        draw_text(img, lx + 12, ly, &text, s.colour, x1);
        ly += GLYPH_HEIGHT + 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn draws_curves_from_a_metrics_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("metrics.jsonl")).unwrap();
        for step in 1..=20u64 {
            let loss = 3.0 / step as f64;
            writeln!(
                f,
                r#"{{"kind":"train","step":{step},"lr":0.1,"loss":{loss},"tasks":{{"cls":{loss}}},"samples_per_s":50}}"#
            )
            .unwrap();
        }
        writeln!(f, r#"{{"kind":"eval","step":20,"metrics":{{"cls_top1":{{"value":0.9,"baseline":0.2}}}}}}"#).unwrap();
        drop(f);
        let path = draw_run(dir.path()).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * PANEL_W, 2 * PANEL_H));
        // The loss panel has the first palette colour (the total loss) somewhere inside its frame.
        let inside = (MARGIN_L + 1..PANEL_W - MARGIN_R)
            .flat_map(|x| (MARGIN_T + 1..PANEL_H - MARGIN_B).map(move |y| (x, y)))
            .any(|(x, y)| img.get_pixel(x, y).0 == PALETTE[0]);
        assert!(inside);
    }
}
