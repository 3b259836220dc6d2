//! `experiment`: the transfer experiment of MuST (paper Tables 3–5) at CPU scale on the synthetic world,
//! driven through the project's own `world`, `labeler` and `trainer` binaries. `make experiment` runs the
//! full scale; `make experiment EXPERIMENT_SCALE=smoke` runs the same steps in a few minutes.
//!
//! The output directory gets `results.json` (one line per seed × model × downstream task), `report.md`
//! (tables of mean ± sd with the command, the machine and the wall time) and one SVG bar chart per table.
//! Re-running continues a killed run: every step's tool skips what is already complete.

// A command-line tool reports to its user.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod pipeline;
mod report;
mod scale;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use pipeline::{Experiment, Tools, DOWNSTREAM};

#[derive(Parser)]
#[command(version, about = "MuST's transfer experiment (Tables 3-5) at CPU scale")]
struct Cli {
    /// Output directory (resumable).
    #[arg(long, default_value = "out/experiment")]
    out: PathBuf,
    /// full | smoke
    #[arg(long, default_value = "full")]
    scale: String,
    /// Directory holding the world, labeler and trainer binaries (default: this binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The repository root (for the demo teachers' specs; default: where this binary was built from).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Only collect the finished fine-tuning runs' eval.json again and redraw report.md and the charts.
    #[arg(long)]
    report_only: bool,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cores} cores of {cpu}, no GPU")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let scale =
        scale::Scale::by_name(&cli.scale).with_context(|| format!("unknown scale {:?} (full or smoke)", cli.scale))?;
    let bin_dir = match cli.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?.parent().context("the binary has no directory")?.to_owned(),
    };
    let repo = cli.repo.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let out = std::fs::canonicalize(&cli.out)?;
    let exp = Experiment { out: out.clone(), scale: scale.clone(), tools: Tools { bin_dir, repo } };
    if cli.report_only {
        let mut results = Vec::new();
        for &seed in &scale.seeds {
            for model in pipeline::MODELS {
                for task in DOWNSTREAM {
                    let run = exp.finetune_dir(seed, model, task.0);
                    if run.join("eval.json").is_file() {
                        results.push(report::read_result(seed, model, task.0, &run)?);
                    }
                }
            }
        }
        return write_report(&out, &scale, &results, t0);
    }
    println!("experiment ({} scale) in {}", scale.name, out.display());
    exp.worlds()?;
    exp.supervised_shards()?;
    // Seeds are independent: run them side by side, one libtorch thread each (small tensors use two cores
    // better as two processes than as one process with two threads).
    let per_seed: Vec<anyhow::Result<Vec<report::Result>>> = std::thread::scope(|scope| {
        let exp = &exp;
        let handles: Vec<_> = scale.seeds.iter().map(|&seed| scope.spawn(move || seed_results(exp, seed))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a seed's thread panicked"))))
            .collect()
    });
    let mut results = Vec::new();
    for r in per_seed {
        results.extend(r?);
    }
    write_report(&out, &scale, &results, t0)
}

/// results.json, report.md and the charts.
fn write_report(
    out: &std::path::Path,
    scale: &scale::Scale,
    results: &[report::Result],
    t0: Instant,
) -> anyhow::Result<()> {
    let lines: Vec<String> = results.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
    std::fs::write(out.join("results.json"), lines.join("\n") + "\n")?;
    let charts = report::draw(results, out)?;
    let timings = std::fs::read_to_string(out.join("timings.jsonl")).unwrap_or_default();
    let step_seconds: f64 = timings
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seconds"].as_f64())
        .sum();
    let header = format!(
        "Command: `make experiment EXPERIMENT_SCALE={}` ({} seed(s)). Machine: {}.\n\
         Wall time of this invocation: {:.1} min; sum of every step's wall time in `timings.jsonl` (all invocations): \
         {:.1} min.\n\nScale: {}\n\n",
        scale.name,
        scale.seeds.len(),
        machine(),
        t0.elapsed().as_secs_f64() / 60.0,
        step_seconds / 60.0,
        serde_json::to_string(scale)?,
    );
    std::fs::write(out.join("report.md"), header + &report::markdown(results))?;
    println!("report: {}", out.join("report.md").display());
    for c in charts {
        println!("chart: {}", c.display());
    }
    let cells = report::by_cell(results);
    println!("{} results in {} cells", results.len(), cells.len());
    Ok(())
}

/// Pre-training and fine-tuning of one seed.
fn seed_results(exp: &Experiment, seed: u64) -> anyhow::Result<Vec<report::Result>> {
    let mut results = Vec::new();
    let models = exp.pretrain(seed)?;
    for model in &models {
        for task in DOWNSTREAM {
            let run = exp.finetune(seed, model, task)?;
            let r = report::read_result(seed, &model.name, task.0, &run)?;
            println!(
                "seed {seed} {:<22} {:<15} {} {:.3} (baseline {:.3})",
                model.name, task.0, r.metric, r.value, r.baseline
            );
            results.push(r);
        }
    }
    Ok(results)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("experiment: {e:#}");
            ExitCode::FAILURE
        }
    }
}
