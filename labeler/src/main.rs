//! `labeler`: plan, label and inspect shards of pseudo labels. Thin: parse flags, load the validated
//! config, call the library, print `{error:#}` and exit non-zero on failure.

// A binary prints its results; the print lints are for the libraries.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use labeler::config::LabelConfig;
use labeler::pipeline::{self, Progress, ShardOutcome};
use shards::ShardId;

#[derive(Parser)]
#[command(name = "labeler", version, about = "Label an image store with teacher models into Parquet shards (MuST)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Freeze the inputs of every dataset into a sorted input manifest under the output location.
    Plan {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        output: Option<String>,
        /// Directory for the sorted runs a large plan spills to disk (default: the system's temp directory);
        /// about 60 bytes per key beyond the first run, deleted when the plan is written.
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Keys sorted in memory at once (about 150 bytes each); more are spilled in sorted runs and merged.
        #[arg(long, default_value_t = shards::inputs::DEFAULT_RUN_ENTRIES)]
        sort_run_keys: usize,
    },
    /// Label one shard and commit it (a no-op if it is already committed).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Shard index k (default: from the batch engine's variables).
        #[arg(long)]
        shard: Option<u64>,
        /// Number of shards N (default: from the batch engine's variables).
        #[arg(long)]
        num_shards: Option<u64>,
        #[arg(long)]
        output: Option<String>,
        /// Freeze the inputs first if no input manifest exists yet.
        #[arg(long)]
        plan_if_missing: bool,
        /// Write the shard's stats as JSON to this file.
        #[arg(long)]
        stats_json: Option<PathBuf>,
    },
    /// Load every teacher, check it against its spec and print its inputs and outputs.
    Probe {
        #[arg(long)]
        config: PathBuf,
    },
    /// List committed shards under an output location.
    Status {
        #[arg(long)]
        output: String,
    },
    /// Delete what dead attempts left (data files no committed manifest names, expired leases, staging
    /// files of interrupted puts); safe while attempts run: nothing of an attempt with a live lease is touched.
    Janitor {
        #[arg(long)]
        output: String,
        /// Keep every object modified less than this many seconds ago (covers clock skew between hosts).
        #[arg(long, default_value_t = 3600)]
        grace_seconds: u64,
    },
    /// Render images with their labels (boxes, mask, depth) side by side to PNG files.
    Render {
        #[arg(long)]
        output: String,
        /// Directory for the PNG files.
        #[arg(long)]
        to: PathBuf,
        /// How many images.
        #[arg(long, default_value_t = 8)]
        count: usize,
    },
}

struct Bar(ProgressBar);
impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn grow(&self, n: u64) {
        self.0.inc_length(n);
    }
}

struct LogProgress {
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}
impl Progress for LogProgress {
    fn start(&self, total: u64) {
        self.total.store(total, std::sync::atomic::Ordering::Relaxed);
    }
    fn advance(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.done.fetch_add(n, Relaxed);
        let total = self.total.load(Relaxed).max(1);
        // A log line every 10%.
        if (before * 10 / total) != ((before + n) * 10 / total) {
            tracing::info!(done = before + n, total, "progress");
        }
    }
    fn grow(&self, n: u64) {
        self.total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

fn attempt_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("attempt-{nanos:x}-{:x}", std::process::id())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Plan { config, output, scratch, sort_run_keys } => {
            let cfg = LabelConfig::load(&config, output.as_deref())?;
            let mut options = pipeline::PlanOptions { run_entries: sort_run_keys, ..Default::default() };
            if let Some(dir) = scratch {
                options.scratch = dir;
            }
            let index = pipeline::plan_with(&cfg, &options)?;
            println!(
                "planned {} inputs in {} part(s) under {}/inputs (sha256 {})",
                index.total,
                index.parts.len(),
                shards::redact_url(&cfg.output),
                index.sha256
            );
        }
        Command::Run { config, shard, num_shards, output, plan_if_missing, stats_json } => {
            let cfg = LabelConfig::load(&config, output.as_deref())?;
            let env: HashMap<String, String> = std::env::vars().collect();
            let assignment = labeler::engine::resolve(shard, num_shards, &env)?;
            let shard = ShardId { index: assignment.index, count: assignment.count };
            let attempt = attempt_id();
            tracing::info!(shard = %shard, from = %assignment.source, engine_attempt = ?assignment.engine_attempt, attempt, "starting");
            if plan_if_missing {
                let out = shards::open(&cfg.output)?;
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                // Only a plan that is absent is made here; a read error is an error, never a reason to re-plan.
                if rt.block_on(shards::inputs::read_index_if_present(&out))?.is_none() {
                    let index = pipeline::plan(&cfg)?;
                    tracing::info!(inputs = index.total, "froze the input manifest");
                }
            }
            let bar: Box<dyn Progress> = if std::io::stderr().is_terminal() {
                let pb = ProgressBar::new(0);
                pb.set_style(ProgressStyle::with_template(
                    "{spinner} shard {msg} [{bar:40}] {pos}/{len} images {per_sec} eta {eta}",
                )?);
                pb.set_message(shard.to_string());
                Box::new(Bar(pb))
            } else {
                Box::new(LogProgress { done: 0.into(), total: 0.into() })
            };
            let outcome = pipeline::run_shard(&cfg, shard, &attempt, bar.as_ref())?;
            match outcome {
                ShardOutcome::AlreadyCommitted { manifest } => {
                    println!("shard {shard} was already committed by {}; nothing to do", manifest.attempt);
                }
                ShardOutcome::Committed { manifest, stats } | ShardOutcome::LostRace { manifest, stats } => {
                    let won = manifest.attempt == attempt;
                    println!(
                        "shard {shard} {}: {} inputs -> {} labelled, {} errors {:?}; {:.1} images/s over {:.1} s",
                        if won { "committed" } else { "was committed by another attempt meanwhile" },
                        stats.inputs,
                        stats.labelled,
                        stats.errors,
                        stats.errors_by_reason,
                        stats.images_per_second,
                        stats.wall_seconds
                    );
                    let stages: Vec<String> = stats.stage_seconds.iter().map(|(k, v)| format!("{k} {v:.2}s")).collect();
                    println!("stage busy time: {}", stages.join(", "));
                    println!("inference workers x intra-op threads: {}", stats.parallelism);
                    if let Some(path) = stats_json {
                        std::fs::write(&path, serde_json::to_vec_pretty(&stats)?)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                }
            }
        }
        Command::Probe { config } => {
            let cfg = LabelConfig::load(&config, None)?;
            for entry in &cfg.teachers {
                let t = labeler::teacher::Teacher::load(
                    &entry.spec,
                    &entry.file,
                    &labeler::runtime::SessionSettings { intra_threads: 1, ..cfg.session_settings() },
                )?;
                println!(
                    "{} ({:?}) {} sha256 {}",
                    entry.spec.name,
                    entry.spec.task,
                    entry.spec.model.display(),
                    &t.model_sha256()[..16]
                );
                println!("    {}", t.describe());
            }
        }
        Command::Status { output } => {
            let out = shards::open(&output)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            print!("{}", status(&rt, &out)?);
        }
        Command::Janitor { output, grace_seconds } => {
            let out = shards::open(&output)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let policy = shards::JanitorPolicy::at_now(std::time::Duration::from_secs(grace_seconds));
            let report = rt.block_on(shards::remove_orphans(&out, &policy))?;
            for uri in &report.deleted {
                println!("deleted {uri}");
            }
            for attempt in &report.live_attempts {
                println!("left alone: attempt {attempt} holds a live lease");
            }
            println!(
                "deleted {} object(s); kept {} younger than {grace_seconds} s; {} live attempt(s) left alone",
                report.deleted.len(),
                report.young.len(),
                report.live_attempts.len()
            );
        }
        Command::Render { output, to, count } => {
            let written = labeler::render::render_shards(&output, &to, count)?;
            for p in written {
                println!("{}", p.display());
            }
        }
    }
    Ok(())
}

/// `labeler status`: the plan, which shards are committed and missing, and where every input ended.
fn status(rt: &tokio::runtime::Runtime, out: &shards::Location) -> Result<String> {
    use std::fmt::Write;
    let mut text = String::new();
    let Some(index) = rt.block_on(shards::inputs::read_index_if_present(out))? else {
        writeln!(text, "{}: nothing planned yet (run `labeler plan`)", out.display)?;
        return Ok(text);
    };
    let layout = rt.block_on(shards::inputs::read_layout(out))?;
    let manifests = rt.block_on(shards::committed_manifests(out))?;
    shards::check_consistent(&out.display, &manifests)?;
    writeln!(text, "plan: {} inputs (input manifest {})", index.total, &index.sha256[..16])?;
    let Some(layout) = layout.or_else(|| {
        manifests.first().map(|(_, m)| shards::inputs::Layout {
            num_shards: m.num_shards,
            input_manifest_sha256: m.input_manifest_sha256.clone(),
        })
    }) else {
        writeln!(text, "shards: none run yet")?;
        return Ok(text);
    };
    let n = layout.num_shards;
    let committed: std::collections::BTreeSet<u64> = manifests.iter().map(|(_, m)| m.shard).collect();
    let missing: Vec<u64> = (0..n).filter(|k| !committed.contains(k)).collect();
    writeln!(
        text,
        "shards: {n} planned, {} committed, {} missing{}",
        committed.len(),
        missing.len(),
        ranges(&missing)
    )?;
    let (mut inputs, mut rows, mut errors) = (0u64, 0u64, 0u64);
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    for (_, m) in &manifests {
        let range = shards::inputs::shard_range(index.total, m.shard, m.num_shards)?;
        // A packed container is one plan entry and many inputs: the manifest counts what its shard labelled.
        inputs += m.inputs.unwrap_or(range.end - range.start);
        rows += m.counts.labelled_rows;
        errors += m.counts.error_rows;
        for (r, c) in &m.counts.errors_by_reason {
            *reasons.entry(r.clone()).or_default() += c;
        }
    }
    writeln!(text, "committed inputs: {inputs} -> {rows} labelled rows + {errors} error rows")?;
    for (r, c) in &reasons {
        writeln!(text, "  {r}: {c}")?;
    }
    Ok(text)
}

/// ` (0-3, 7)`: shard indices as compact ranges, or nothing when there are none.
fn ranges(ks: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ks.len() {
        let mut j = i;
        while j + 1 < ks.len() && ks[j + 1] == ks[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { ks[i].to_string() } else { format!("{}-{}", ks[i], ks[j]) });
        i = j + 1;
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

fn main() -> ExitCode {
    labeler::runtime::limit_malloc_arenas();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUST_LOG").unwrap_or_else(|_| "info,ort=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
