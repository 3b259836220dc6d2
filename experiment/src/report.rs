//! Results → tables of mean ± sd over seeds, and one bar chart (error bars: ± 1 sd) per table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::pipeline::DOWNSTREAM;

/// One fine-tuning result: the test value of the metric chosen on validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Result {
    pub seed: u64,
    pub model: String,
    pub task: String,
    pub metric: String,
    pub value: f64,
    pub baseline: f64,
    /// Normals only: the mean angular error in degrees (lower is better), the more telling figure when
    /// most valid pixels share one normal.
    #[serde(default)]
    pub mean_degrees: Option<f64>,
    /// The constant normal's mean angular error.
    #[serde(default)]
    pub mean_degrees_baseline: Option<f64>,
}

/// Reads a `trainer finetune` run's `eval.json` into a [`Result`].
pub fn read_result(seed: u64, model: &str, task: &str, run: &Path) -> anyhow::Result<Result> {
    let path = run.join("eval.json");
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let metric = v["selection_metric"].as_str().context("eval.json has no selection_metric")?.to_owned();
    let best = v["best"].as_u64().context("eval.json has no best")? as usize;
    let score = &v["points"][best]["test"][&metric];
    Ok(Result {
        seed,
        model: model.to_owned(),
        task: task.to_owned(),
        metric,
        value: score["value"].as_f64().context("no test value")?,
        baseline: score["baseline"].as_f64().context("no test baseline")?,
        mean_degrees: v["points"][best]["test"]["normals_mean_degrees"]["value"].as_f64(),
        mean_degrees_baseline: v["points"][best]["test"]["normals_mean_degrees"]["baseline"].as_f64(),
    })
}

/// A table of the report: its rows are model names.
pub struct Table {
    pub id: &'static str,
    pub title: &'static str,
    pub rows: &'static [(&'static str, &'static str)],
}

/// The paper's Tables 3–5 at CPU scale: (model name, label).
pub const TABLES: [Table; 3] = [
    Table {
        id: "table3",
        title: "Table 3 analogue: more pseudo-label tasks in pre-training",
        rows: &[
            ("student-cls", "cls"),
            ("student-cls+depth", "cls + depth"),
            ("student-cls+depth+seg", "cls + depth + seg"),
            ("student-must", "cls + depth + seg + det (MuST)"),
        ],
    },
    Table {
        id: "table4",
        title: "Table 4 analogue: each teacher against a student of its pseudo labels; student as teacher",
        rows: &[
            ("teacher-cls", "teacher cls (supervised)"),
            ("student-cls", "student of cls pseudo labels"),
            ("teacher-det", "teacher det (supervised)"),
            ("student-det", "student of det pseudo labels"),
            ("teacher-seg", "teacher seg (supervised)"),
            ("student-seg", "student of seg pseudo labels"),
            ("teacher-depth", "teacher depth (supervised)"),
            ("student-depth", "student of depth pseudo labels"),
            ("student-must", "MuST student (round 1)"),
            ("student-round2", "student of the MuST student (round 2)"),
        ],
    },
    Table {
        id: "table5",
        title: "Table 5 analogue: supervised multi-task against MuST",
        rows: &[
            ("random", "random init"),
            ("supervised-multitask", "supervised multi-task (per-dataset sampling)"),
            ("student-must", "MuST (pseudo labels for every task, uniform sampling)"),
        ],
    },
];

/// Mean, sample standard deviation and count.
pub fn mean_sd(values: &[f64]) -> (f64, f64, usize) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, 0);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    (mean, var.sqrt(), n)
}

fn cell(results: &[Result], model: &str, task: &str) -> (f64, f64, usize) {
    let values: Vec<f64> = results.iter().filter(|r| r.model == model && r.task == task).map(|r| r.value).collect();
    mean_sd(&values)
}

fn metric_of(results: &[Result], task: &str) -> String {
    results.iter().find(|r| r.task == task).map(|r| r.metric.clone()).unwrap_or_default()
}

/// Markdown tables (and the trivial baselines) for every table.
pub fn markdown(results: &[Result]) -> String {
    let mut s = String::new();
    for table in &TABLES {
        let _ = writeln!(s, "### {}\n", table.title);
        let _ = write!(s, "| pre-training |");
        for (task, _, _) in DOWNSTREAM {
            let _ = write!(s, " {task} ({}) |", metric_of(results, task));
        }
        let _ = write!(s, " normals: mean angle (°, lower is better) |\n|---|");
        for _ in 0..=DOWNSTREAM.len() {
            let _ = write!(s, "---|");
        }
        s.push('\n');
        for (model, label) in table.rows {
            let _ = write!(s, "| {label} |");
            for (task, _, _) in DOWNSTREAM {
                let (m, sd, n) = cell(results, model, task);
                if n == 0 {
                    let _ = write!(s, " – |");
                } else {
                    let _ = write!(s, " {m:.3} ± {sd:.3} |");
                }
            }
            let degrees: Vec<f64> =
                results.iter().filter(|r| r.model == *model).filter_map(|r| r.mean_degrees).collect();
            let (m, sd, n) = mean_sd(&degrees);
            let _ = if n == 0 { write!(s, " – |") } else { write!(s, " {m:.1} ± {sd:.1} |") };
            s.push('\n');
        }
        let _ = write!(s, "| *trivial baseline* |");
        for (task, _, _) in DOWNSTREAM {
            let b: Vec<f64> = results.iter().filter(|r| r.task == task).map(|r| r.baseline).collect();
            let (m, _, n) = mean_sd(&b);
            let _ = if n == 0 { write!(s, " – |") } else { write!(s, " {m:.3} |") };
        }
        let b: Vec<f64> = results.iter().filter_map(|r| r.mean_degrees_baseline).collect();
        let (m, _, n) = mean_sd(&b);
        let _ = if n == 0 { write!(s, " – |") } else { write!(s, " {m:.1} |") };
        let _ = writeln!(s, "\n\n![{}]({}.svg)\n", table.title, table.id);
    }
    s
}

const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Makes DejaVu Sans the charts' font (plotters keeps a global font table and measures text with it).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let parsed = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        assert!(parsed.is_ok(), "the embedded DejaVu Sans font does not parse");
    });
}

/// One grouped bar chart per table: groups are downstream tasks, bars are rows, whiskers ± 1 sd.
pub fn draw(results: &[Result], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font();
    let mut written = Vec::new();
    for table in &TABLES {
        let path = dir.join(format!("{}.svg", table.id));
        let rows = table.rows.len();
        let root = SVGBackend::new(&path, (1200, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (area, legend) = root.split_horizontally(880);
        let groups = DOWNSTREAM.len();
        let mut chart = ChartBuilder::on(&area)
            .caption(table.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..groups as f64, 0f64..1.0f64)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let names: Vec<String> =
            DOWNSTREAM.iter().map(|(t, _, _)| format!("{t} ({})", metric_of(results, t))).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 && i < names.len() {
                    names[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("test metric (mean ± sd over seeds)")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let width = 0.8 / rows as f64;
        for (r, (model, label)) in table.rows.iter().enumerate() {
            let colour = COLOURS[r % COLOURS.len()];
            let mut bars = Vec::new();
            let mut whiskers = Vec::new();
            for (g, (task, _, _)) in DOWNSTREAM.iter().enumerate() {
                let (m, sd, n) = cell(results, model, task);
                if n == 0 || !m.is_finite() {
                    continue;
                }
                let x0 = g as f64 + 0.1 + r as f64 * width;
                bars.push(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, m)], colour.filled()));
                let xc = x0 + width * 0.45;
                whiskers.push(PathElement::new(
                    vec![(xc, (m - sd).max(0.0)), (xc, (m + sd).min(1.0))],
                    BLACK.stroke_width(1),
                ));
            }
            chart.draw_series(bars).map_err(|e| anyhow::anyhow!("{e}"))?;
            chart.draw_series(whiskers).map_err(|e| anyhow::anyhow!("{e}"))?;
            let y = 40 + 22 * r as i32;
            legend
                .draw(&Rectangle::new([(10, y), (24, y + 12)], colour.filled()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            legend
                .draw(&Text::new(label.to_string(), (30, y), ("sans-serif", 13)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // The trivial baseline of each task (majority class, constant mask/depth/normal): a dashed line.
        for (g, (task, _, _)) in DOWNSTREAM.iter().enumerate() {
            let b: Vec<f64> = results.iter().filter(|r| r.task == *task).map(|r| r.baseline).collect();
            let (m, _, n) = mean_sd(&b);
            if n > 0 && m.is_finite() {
                let segments = (0..8).map(|k| {
                    let x = g as f64 + 0.08 + k as f64 * 0.105;
                    PathElement::new(vec![(x, m), (x + 0.06, m)], BLACK.stroke_width(2))
                });
                chart.draw_series(segments).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        let y = 40 + 22 * rows as i32;
        legend
            .draw(&PathElement::new(vec![(10, y + 6), (24, y + 6)], BLACK.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        legend
            .draw(&Text::new("trivial baseline (dashed)".to_string(), (30, y), ("sans-serif", 13)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        legend
            .draw(&Text::new("whiskers: ± 1 sd over seeds".to_string(), (10, y + 26), ("sans-serif", 13)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        drop(chart);
        drop((area, legend, root));
        written.push(path);
    }
    Ok(written)
}

/// The whole results set, by (model, task) for quick checks.
pub fn by_cell(results: &[Result]) -> BTreeMap<(String, String), Vec<f64>> {
    let mut m: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in results {
        m.entry((r.model.clone(), r.task.clone())).or_default().push(r.value);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd() {
        let (m, sd, n) = mean_sd(&[1.0, 2.0, 3.0]);
        assert_eq!((m, n), (2.0, 3));
        assert!((sd - 1.0).abs() < 1e-12);
        assert_eq!(mean_sd(&[5.0]).1, 0.0);
        assert!(mean_sd(&[]).0.is_nan());
    }
}
