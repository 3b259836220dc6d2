//! Training curves as a PNG (`<run>/curves.png`), drawn from `metrics.jsonl` alone, so a run can be
//! looked at while it trains (it is redrawn at every evaluation) and re-drawn later (`trainer plot`).
//!
//! Charts are drawn by `plotters` into an RGB buffer and encoded by `image`; text uses DejaVu Sans
//! embedded in the binary, so a run draws the same pixels on every machine, with or without system fonts.
//!
//! Pre-training: four panels, losses (total and per task, log scale), evaluation metrics with their
//! trivial baselines as dashed lines of the same colour, the learning rate, and throughput.
//! Fine-tuning: the loss of every grid point, and each point's validation and test metric.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::TrainError;
use crate::metrics_log::read_metrics;

const PANEL_W: u32 = 520;
const PANEL_H: u32 = 340;
const FONT: &str = "sans-serif";
const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// A named series of (step, value) points.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
    colour: RGBColor,
}

/// One chart: its title, its x axis and its series.
struct Panel<'a> {
    title: &'a str,
    x_desc: &'a str,
    series: &'a [Series],
    log_y: bool,
}

/// Makes DejaVu Sans the chart font (once per process; plotters keeps a global font table).
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TrueType file; failing to parse it is a build defect.
        let parsed = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        assert!(parsed.is_ok(), "the embedded DejaVu Sans font does not parse");
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.display().to_string(), source: std::io::Error::other(format!("drawing: {e}")) }
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
    let colours: BTreeMap<String, RGBColor> = metrics
        .iter()
        .filter(|s| !s.name.ends_with(" baseline"))
        .enumerate()
        .map(|(i, s)| (s.name.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    for s in &mut metrics {
        let base = s.name.trim_end_matches(" baseline").to_owned();
        s.dashed = s.name.ends_with(" baseline");
        s.colour = colours.get(&base).copied().unwrap_or(BLACK);
    }
    let lr = series_from(&records, "train", |r| vec![("lr".to_owned(), r["lr"].as_f64().unwrap_or(f64::NAN))]);
    let speed = series_from(&records, "train", |r| {
        vec![("samples/s".to_owned(), r["samples_per_s"].as_f64().unwrap_or(f64::NAN))]
    });
    let panels = [
        Panel { title: "loss (log scale)", x_desc: "step", series: &losses, log_y: true },
        Panel { title: "eval metrics (dashed: trivial baseline)", x_desc: "step", series: &metrics, log_y: false },
        Panel { title: "learning rate", x_desc: "step", series: &lr, log_y: false },
        Panel { title: "throughput (samples/s)", x_desc: "step", series: &speed, log_y: false },
    ];
    render(run, (2, 2), &panels)
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
    let title = format!("{metric} per grid point");
    let panels = [
        Panel { title: "fine-tuning loss per grid point (log scale)", x_desc: "step", series: &losses, log_y: true },
        Panel { title: &title, x_desc: "grid point", series: &scores, log_y: false },
    ];
    render(run, (1, 2), &panels)
}

/// Draws `panels` on a `rows` × `cols` grid and writes `<run>/curves.png` atomically.
fn render(run: &Path, (rows, cols): (usize, usize), panels: &[Panel]) -> Result<PathBuf, TrainError> {
    register_font();
    let path = run.join("curves.png");
    let (w, h) = (PANEL_W * cols as u32, PANEL_H * rows as u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&path, e))?;
        for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
            draw_panel(area, panel).map_err(|e| plot_err(&path, e))?;
        }
        root.present().map_err(|e| plot_err(&path, e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer sized to the image");
    let tmp = run.join(".curves.png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| TrainError::Io { path: tmp.display().to_string(), source: std::io::Error::other(e) })?;
    std::fs::rename(&tmp, &path).map_err(|source| TrainError::Io { path: path.display().to_string(), source })?;
    Ok(path)
}

/// Short tick and legend numbers: 3 significant figures without trailing zeros, exponents outside
/// [1e-3, 1e4).
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e4).contains(&a) {
        return format!("{v:.1e}");
    }
    let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Axis ranges with a little padding; a non-negative linear series keeps its axis at or above 0 (a
/// learning rate never looks negative), and a flat series gets a visible band around its value.
fn ranges(pts: &[(f64, f64)], log_y: bool) -> (Range<f64>, Range<f64>) {
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
        ymin = if ymin >= 0.0 && !log_y { (ymin - pad).max(0.0) } else { ymin - pad };
        ymax += pad;
    }
    (xmin..xmax, ymin..ymax)
}

/// One chart: caption, axes with ticks, every series (dashed ones without a legend entry) and a legend
/// giving each solid series' last value. A log-scale panel plots log10 of the values and labels ticks
/// with the values themselves.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let log = panel.log_y;
    let tf = move |v: f64| if log { v.max(1e-12).log10() } else { v };
    let pts: Vec<(f64, f64)> = panel.series.iter().flat_map(|s| s.points.iter().map(|&(x, y)| (x, tf(y)))).collect();
    if pts.is_empty() {
        let inner = area.titled(panel.title, (FONT, 16))?;
        inner.draw(&Text::new("no data yet", (60, 40), (FONT, 14)))?;
        return Ok(());
    }
    let (xr, yr) = ranges(&pts, log);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(58)
        .build_cartesian_2d(xr, yr)?;
    let y_label = move |v: &f64| fmt_value(if log { 10f64.powf(*v) } else { *v });
    chart
        .configure_mesh()
        .x_desc(panel.x_desc)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|x| fmt_value(*x))
        .y_label_formatter(&y_label)
        .label_style((FONT, 12))
        .light_line_style(WHITE)
        .draw()?;
    let mut legend = false;
    for s in panel.series {
        let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x, tf(y))).collect();
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(points, 6, 4, s.colour.stroke_width(1)))?;
            continue;
        }
        // Markers and a heavier line on sparse series (evaluations, grid points), so a single point shows;
        // a thin line on dense ones (per-step losses), so noise does not hide the trend.
        let (marker, width) = if points.len() < 40 { (3, 2) } else { (0, 1) };
        let colour = s.colour;
        let last = s.points.last().map(|p| fmt_value(p.1)).unwrap_or_default();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(width)).point_size(marker))?
            .label(format!("{}: {last}", s.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
        legend = true;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 12))
            .draw()?;
    }
    Ok(())
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
        let has = |x0: u32, y0: u32, colour: RGBColor| {
            (x0..x0 + PANEL_W).flat_map(|x| (y0..y0 + PANEL_H).map(move |y| (x, y))).any(|(x, y)| {
                let p = img.get_pixel(x, y).0;
                (p[0], p[1], p[2]) == (colour.0, colour.1, colour.2)
            })
        };
        // The total loss (first colour) in the loss panel, the metric and its baseline in the eval panel.
        assert!(has(0, 0, PALETTE[0]));
        assert!(has(PANEL_W, 0, PALETTE[0]));
        // Captions and tick labels are real glyphs: dark anti-aliased text in the caption band.
        let dark =
            (0..PANEL_W).flat_map(|x| (0..24).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0[0] < 128);
        assert!(dark.count() > 100, "no caption text drawn");
    }

    #[test]
    fn draws_an_empty_run_and_a_finetune_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), "").unwrap();
        let path = draw_run(dir.path()).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8().dimensions(), (2 * PANEL_W, 2 * PANEL_H));

        let mut f = std::fs::File::create(dir.path().join("metrics.jsonl")).unwrap();
        for point in ["lr0.1", "lr0.01"] {
            for step in 1..=5u64 {
                writeln!(f, r#"{{"kind":"finetune","point":"{point}","step":{step},"loss":{}}}"#, 1.0 / step as f64)
                    .unwrap();
            }
            writeln!(f, r#"{{"kind":"point","point":"{point}","val":{{"miou":{{"value":0.4}}}},"test":{{"miou":{{"value":0.3}}}}}}"#).unwrap();
        }
        drop(f);
        let path = draw_finetune(dir.path()).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * PANEL_W, PANEL_H));
    }
}
