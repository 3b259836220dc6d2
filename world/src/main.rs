//! `world`: write a synthetic world store, a downstream (transfer) dataset, or a preview picture of a few
//! scenes.

// A command-line tool reports to its user on stdout/stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use world::{
    preview, render, write_downstream, write_store, Domain, DownstreamCounts, Split, SplitCounts, WorldConfig,
    OBJECT_CLASSES,
};

/// Write a synthetic world with exact ground truth (images, boxes, segmentation, depth).
#[derive(Parser)]
#[command(name = "world", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    generate: GenerateArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Render a few scenes and their truth side by side into a PNG.
    Preview(PreviewArgs),
    /// Write downstream datasets (normals, segmentation, depth, nearest_object) from the shifted world.
    Downstream(DownstreamArgs),
}

#[derive(Args)]
struct DownstreamArgs {
    /// Where to write the set: a directory or an object-store URL (s3://, gs://, az://, file://).
    #[arg(long)]
    out: String,
    /// Seed of the downstream world (the demo pre-training world uses 7).
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Image width in pixels.
    #[arg(long, default_value_t = 96)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 96)]
    height: u32,
    /// Fine-tuning images per task.
    #[arg(long, default_value_t = 300)]
    train: u64,
    /// Validation images per task.
    #[arg(long, default_value_t = 100)]
    val: u64,
    /// Test images per task.
    #[arg(long, default_value_t = 500)]
    test: u64,
}

#[derive(Args)]
struct WorldArgs {
    /// World seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Image width in pixels.
    #[arg(long, default_value_t = 96)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 96)]
    height: u32,
}

impl WorldArgs {
    fn config(&self) -> anyhow::Result<WorldConfig> {
        Ok(WorldConfig::try_new(self.seed, self.width, self.height)?)
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// Where to write the store: a directory or an object-store URL (s3://, gs://, az://, file://).
    #[arg(long, required = true)]
    out: Option<String>,
    #[command(flatten)]
    world: WorldArgs,
    /// Images labelled for classification.
    #[arg(long, default_value_t = 1200)]
    cls: u64,
    /// Images labelled for detection.
    #[arg(long, default_value_t = 1200)]
    det: u64,
    /// Images labelled for segmentation.
    #[arg(long, default_value_t = 1200)]
    seg: u64,
    /// Images labelled for depth.
    #[arg(long, default_value_t = 1200)]
    depth: u64,
    /// Unlabelled images for pseudo-labelling.
    #[arg(long, default_value_t = 2000)]
    pool: u64,
    /// Held-out images labelled for every task.
    #[arg(long, default_value_t = 300)]
    eval: u64,
}

#[derive(Args)]
struct PreviewArgs {
    /// The PNG file to write.
    #[arg(long)]
    out: std::path::PathBuf,
    #[command(flatten)]
    world: WorldArgs,
    /// Split to render scenes from.
    #[arg(long, default_value = "eval")]
    split: Split,
    /// Distribution to render: `pretrain` or the shifted `downstream` world.
    #[arg(long, default_value = "pretrain")]
    domain: Domain,
    /// First scene index.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Number of scenes (one row each).
    #[arg(long, default_value_t = 4)]
    count: u64,
    /// Pixel magnification.
    #[arg(long, default_value_t = 3)]
    scale: u32,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("world: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Preview(args)) => run_preview(&args),
        Some(Command::Downstream(args)) => run_downstream(&args),
        None => run_generate(&cli.generate),
    }
}

fn run_generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let cfg = args.world.config()?;
    let out = args.out.as_deref().context("--out is required")?;
    let counts = SplitCounts {
        cls: args.cls,
        det: args.det,
        seg: args.seg,
        depth: args.depth,
        pool: args.pool,
        eval: args.eval,
    };
    counts.validate()?;
    let loc = shards::open(out)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let summary =
        runtime.block_on(write_store(&cfg, &loc, &counts)).with_context(|| format!("writing world to {out}"))?;
    for s in &summary.splits {
        println!(
            "{:<5} {:>6} images {:>9.2} MB ({:.2} MB images) {:>7.2} s",
            s.split.name(),
            s.images,
            s.bytes as f64 / 1e6,
            s.image_bytes as f64 / 1e6,
            s.seconds
        );
    }
    println!(
        "total {:>6} images {:>9.2} MB {:>7.2} s -> {out}",
        counts.total(),
        summary.bytes as f64 / 1e6,
        summary.seconds
    );
    Ok(())
}

fn run_downstream(args: &DownstreamArgs) -> anyhow::Result<()> {
    let cfg = WorldConfig::try_new(args.seed, args.width, args.height)?.with_domain(Domain::Downstream);
    let counts = DownstreamCounts { train: args.train, val: args.val, test: args.test };
    counts.validate()?;
    let out = &args.out;
    let loc = shards::open(out)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let summary = runtime
        .block_on(write_downstream(&cfg, &loc, &counts))
        .with_context(|| format!("writing downstream data to {out}"))?;
    for s in &summary.splits {
        let classes = s.class_counts.as_ref().map_or(String::new(), |counts| {
            let parts: Vec<String> = OBJECT_CLASSES.iter().zip(counts).map(|(name, n)| format!("{name} {n}")).collect();
            format!("  [{}]", parts.join(", "))
        });
        println!(
            "{:<14} {:<5} {:>6} images {:>8.2} MB {:>7.2} s{classes}",
            s.task.name(),
            s.split.name(),
            s.images,
            s.bytes as f64 / 1e6,
            s.seconds
        );
    }
    println!("total {:.2} MB {:.2} s -> {out}", summary.bytes as f64 / 1e6, summary.seconds);
    Ok(())
}

fn run_preview(args: &PreviewArgs) -> anyhow::Result<()> {
    let cfg = args.world.config()?.with_domain(args.domain);
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let scenes: Vec<_> = (args.first..args.first + args.count).map(|i| render(&cfg, args.split, i)).collect();
    let img = preview(&scenes, args.scale);
    img.save(&args.out).with_context(|| format!("writing preview {}", args.out.display()))?;
    for (i, s) in scenes.iter().enumerate() {
        let boxes: Vec<String> =
            s.boxes.iter().map(|b| format!("{}@{:.1}m", world::OBJECT_CLASSES[b.class_id as usize], b.depth)).collect();
        println!(
            "{} {:06}: {} [{}]",
            args.split,
            args.first + i as u64,
            world::SCENE_CLASSES[s.scene_class as usize],
            boxes.join(", ")
        );
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
