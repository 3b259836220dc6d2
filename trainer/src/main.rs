//! `trainer`: train the multi-task student on committed label shards, evaluate it, draw its curves.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use trainer::config::{DeviceChoice, Overrides, TrainConfig};
use trainer::finetune::{self, FinetuneConfig, FinetuneOptions, FinetuneOverrides};
use trainer::progress::Progress;
use trainer::train::{self, RunOptions};

#[derive(Parser)]
#[command(version, about = "Train and evaluate the MuST multi-task student")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The run's TOML file (see configs/demo-train.toml).
    #[arg(long)]
    config: PathBuf,
    /// Run directory (overrides `out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// auto | cpu | cuda (overrides `run.device`).
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Loader threads (overrides `data.workers`).
    #[arg(long)]
    workers: Option<usize>,
    /// libtorch intra-op threads (overrides `run.threads`).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Train (or continue the run in `out` from its newest checkpoint).
    Train {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Total training steps (overrides `optim.steps`).
        #[arg(long)]
        steps: Option<u64>,
        /// Stop after this many steps of this invocation, with a checkpoint (the next invocation continues).
        #[arg(long)]
        stop_after: Option<u64>,
    },
    /// Evaluate a checkpoint on the config's `[eval]` shards: top-1, box AP@0.5, mIoU, depth δ<1.25.
    Eval {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// A checkpoint directory, or a run directory (its newest checkpoint). Default: the config's `out`.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Fine-tune the pre-trained trunk with a new head on a downstream task, over a learning-rate × steps
    /// grid; the best point on the validation split is reported on the test split.
    Finetune {
        /// The fine-tuning TOML file (see configs/finetune-normals.toml).
        #[arg(long)]
        config: PathBuf,
        /// Run directory (overrides `out`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Pre-training run or checkpoint directory (overrides `[init] checkpoint`).
        #[arg(long)]
        checkpoint: Option<String>,
        /// Freeze ResNet + FPN and train only the head (overrides `grid.linear_probe`).
        #[arg(long)]
        linear_probe: bool,
        /// auto | cpu | cuda (overrides `run.device`).
        #[arg(long)]
        device: Option<DeviceChoice>,
        /// libtorch intra-op threads (overrides `run.threads`).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Redraw `<run>/curves.png` from `<run>/metrics.jsonl`.
    Plot {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
    },
    /// Export a checkpoint for PyTorch and the labeler: safetensors (torchvision ResNet names), TorchScript,
    /// ONNX, and one labeler teacher spec per head.
    Export {
        /// A checkpoint directory, or a run directory (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Directory to write student.safetensors, student.pt, student.onnx and the specs into.
        #[arg(long)]
        out: PathBuf,
        /// Square input side (default: the run's evaluation size, from --config or the run's config.json).
        #[arg(long)]
        image_size: Option<u32>,
        /// The run's TOML config, to read the input size from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A labeler teacher spec file to take class names from (default: class0, class1, ...).
        #[arg(long)]
        classes: Option<PathBuf>,
        /// Teacher name prefix in the specs (<name>-classification, ...).
        #[arg(long, default_value = "student")]
        name: String,
    },
}

fn load(args: &ConfigArgs, steps: Option<u64>) -> anyhow::Result<TrainConfig> {
    let overrides =
        Overrides { out: args.out.clone(), steps, device: args.device, workers: args.workers, threads: args.threads };
    Ok(TrainConfig::load(&args.config, &overrides)?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train { cfg, steps, stop_after } => {
            let config = load(&cfg, steps)?;
            let opts = RunOptions { progress: terminal_bar(), stop_after };
            let summary = train::run(&config, &opts)?;
            if !trainer::distributed::World::from_env()?.is_root() {
                return Ok(ExitCode::SUCCESS); // rank 0 reports for the whole data-parallel run
            }
            println!(
                "run {}: steps {}..{} of {}{}",
                summary.out.display(),
                summary.started_at,
                summary.step,
                config.optim.steps,
                if summary.finished { " (finished)" } else { " (continue with the same command)" }
            );
            if summary.skipped_images > 0 {
                println!("{} images did not decode and were skipped (see the log)", summary.skipped_images);
            }
            let report = match summary.final_eval {
                Some(report) => Some(report),
                // Already finished earlier: show the finished run's numbers again.
                None if summary.finished && config.eval.is_some() => {
                    Some(train::evaluate_checkpoint(&config, &summary.out)?)
                }
                None => None,
            };
            if let Some(report) = &report {
                print!("{}", report.table());
            }
            println!("curves: {}", summary.out.join("curves.png").display());
        }
        Command::Eval { cfg, checkpoint, json } => {
            let config = load(&cfg, None)?;
            let path = checkpoint.unwrap_or_else(|| config.out.clone());
            let report = train::evaluate_checkpoint(&config, &path)?;
            print!("{}", report.table());
            if let Some(json_path) = json {
                std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", json_path.display()))?;
            }
            if !report.beats_baselines() {
                eprintln!("note: not every metric is above its trivial baseline");
            }
        }
        Command::Finetune { config, out, checkpoint, linear_probe, device, threads } => {
            let overrides =
                FinetuneOverrides { out, checkpoint, device, threads, linear_probe: linear_probe.then_some(true) };
            let cfg = FinetuneConfig::load(&config, &overrides)?;
            let report = finetune::run(&cfg, &FinetuneOptions { progress: terminal_bar() })?;
            print!("{}", report.table());
            println!("run {}: eval.json, curves.png", cfg.out.display());
        }
        Command::Plot { run } => {
            let is_finetune = std::fs::read_to_string(run.join("metrics.jsonl"))
                .is_ok_and(|t| t.lines().next().is_some_and(|l| l.contains("\"kind\":\"finetune\"")));
            let path = if is_finetune { trainer::plot::draw_finetune(&run)? } else { trainer::plot::draw_run(&run)? };
            println!("{}", path.display());
        }
        Command::Export { checkpoint, out, image_size, config, classes, name } => {
            let opts = trainer::export::ExportOptions { checkpoint, out, image_size, config, classes, name };
            let summary = trainer::export::run(&opts)?;
            println!(
                "exported {} (step {}, input {}px, outputs {})",
                summary.checkpoint.display(),
                summary.step,
                summary.image_size,
                summary.outputs.join(", ")
            );
            for path in [&summary.weights, &summary.torchscript, &summary.onnx].into_iter().chain(&summary.specs) {
                println!("  {}", path.display());
            }
            if !summary.onnx_check.is_empty() {
                println!("{}", summary.onnx_check);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr, when stderr is a terminal.
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64, position: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_position(position);
        self.0.set_prefix(phase.to_owned());
    }
    fn update(&self, position: u64, message: &str) {
        self.0.set_position(position);
        self.0.set_message(message.to_owned());
    }
    fn println(&self, line: &str) {
        self.0.println(line.trim_end());
    }
    fn finish(&self) {
        self.0.finish();
    }
}

fn terminal_bar() -> Option<Arc<dyn Progress>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} {prefix} [{bar:30}] {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(Arc::new(Bar(bar)))
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUST_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
