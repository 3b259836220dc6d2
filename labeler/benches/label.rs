//! Labeler benchmark modes that `labeler run` cannot measure by itself (`make bench-label` runs them).
//!
//! ```text
//! cargo bench -p labeler --bench label -- --mode inference-only --config configs/bench-label.toml --scratch DIR
//! cargo bench -p labeler --bench label -- --mode host-only      --config configs/bench-label.toml --scratch DIR \
//!     [--num-shards N]   # shard 0 of N: peak RSS at a smaller shard
//! ```
//! - `inference-only` is the bound for the whole pipeline: the same inputs, in the same chunks and teacher
//!   batches, are fetched and decoded first (not timed); then each teacher labels each chunk alone on the
//!   machine and only the time inside `Session::run` counts. images / that time is the best any pipeline
//!   around these teachers could do.
//! - `host-only` runs the real pipeline (fetch → decode → pre-process → post-process → Parquet → commit)
//!   into a scratch output with each teacher replaying its first outputs per input shape
//!   (`ShardOptions::replay_outputs`), so almost no inference happens. Its process CPU time per image, less
//!   the few real model runs that fill the replay caches (their wall time × intra-op threads), is the
//!   host-side cost per image per core.
//!
//! Each mode runs in its own process so its peak RSS is its own. Output: one JSON object on stdout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use labeler::config::LabelConfig;
use labeler::decode;
use labeler::pipeline::{self, NoProgress, ShardOptions, ShardOutcome};
use labeler::teacher::Teacher;
use object_store::ObjectStoreExt;
use rayon::prelude::*;
use serde_json::json;
use shards::ShardId;

fn main() -> Result<()> {
    labeler::runtime::limit_malloc_arenas();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let value =
        |flag: &str| -> Option<String> { args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned() };
    let mode = value("--mode").context("--mode inference-only|host-only is required")?;
    let config = PathBuf::from(value("--config").context("--config FILE is required")?);
    let scratch = value("--scratch").context("--scratch DIR (a throw-away output directory) is required")?;
    // Shard 0 of this many (host-only): peak RSS at two shard sizes shows memory does not grow with the shard.
    let num_shards: u64 = value("--num-shards").map_or(Ok(1), |v| v.parse()).context("--num-shards N")?;
    if std::path::Path::new(&scratch).exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| format!("clearing {scratch}"))?;
    }
    let cfg = LabelConfig::load(&config, Some(&scratch))?;
    pipeline::plan(&cfg)?;
    let report = match mode.as_str() {
        "inference-only" => inference_only(&cfg)?,
        "host-only" => host_only(&cfg, num_shards)?,
        other => bail!("unknown --mode {other:?}: expected inference-only or host-only"),
    };
    let text = serde_json::to_string_pretty(&report)?;
    std::io::Write::write_all(&mut std::io::stdout(), format!("{text}\n").as_bytes())?;
    Ok(())
}

fn inference_only(cfg: &LabelConfig) -> Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let out = shards::open(&cfg.output)?;
    let index = rt.block_on(shards::inputs::read_index(&out))?;
    let entries = rt.block_on(shards::inputs::read_shard(&out, &index, 0, 1))?;
    let stores: HashMap<String, shards::Location> =
        cfg.datasets.iter().map(|d| Ok((d.name.clone(), shards::open(&d.location)?))).collect::<Result<_>>()?;
    let mut teachers = Vec::new();
    for entry in &cfg.teachers {
        teachers.push(Teacher::load(&entry.spec, &entry.file, &cfg.session_settings())?);
    }
    let limits = cfg.decode_limits();
    let min_side = if cfg.run.scaled_decode { pipeline::scaled_decode_min_side(cfg) } else { None };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cfg.run.decode_threads).build()?;
    let mut images = 0usize;
    let mut predict_seconds = 0.0;
    let mut predict_cpu_seconds = 0.0;
    for chunk in entries.chunks(cfg.run.chunk_images) {
        let bytes: Vec<bytes::Bytes> = rt.block_on(async {
            let mut got = Vec::with_capacity(chunk.len());
            for e in chunk {
                let loc = &stores[&e.dataset];
                got.push(loc.store.get(&loc.child(&e.key)).await?.bytes().await?);
            }
            Ok::<_, object_store::Error>(got)
        })?;
        let decoded: Vec<decode::DecodedImage> = pool.install(|| {
            bytes
                .par_iter()
                .map(|b| match min_side {
                    Some(side) => decode::decode_scaled(b, &limits, side, side),
                    None => decode::decode(b, &limits),
                })
                .collect::<Result<_, _>>()
        })?;
        let refs: Vec<&image::RgbImage> = decoded.iter().map(|d| &d.rgb).collect();
        images += refs.len();
        for teacher in &mut teachers {
            let (started, cpu) = (Instant::now(), pipeline::process_cpu_seconds().unwrap_or(0.0));
            teacher.predict(&refs)?;
            predict_seconds += started.elapsed().as_secs_f64();
            predict_cpu_seconds += pipeline::process_cpu_seconds().unwrap_or(0.0) - cpu;
        }
    }
    let per_teacher: serde_json::Map<String, serde_json::Value> =
        teachers.iter().map(|t| (t.spec().name.clone(), json!(t.session_seconds()))).collect();
    let session: f64 = teachers.iter().map(Teacher::session_seconds).sum();
    // Pre- and post-processing inside `predict` run on this one thread, so the CPU the sessions used is
    // about the CPU of the predict calls less their wall time outside the sessions.
    let session_cpu = predict_cpu_seconds - (predict_seconds - session);
    Ok(json!({
        "mode": "inference-only",
        "images": images,
        "session_seconds": session,
        "bound_images_per_second": images as f64 / session.max(1e-9),
        "session_seconds_by_teacher": per_teacher,
        "predict_seconds": predict_seconds,
        "predict_cpu_seconds": predict_cpu_seconds,
        "session_cpu_seconds": session_cpu,
        "session_cores_busy": session_cpu / session.max(1e-9),
        "intra_threads": cfg.run.intra_threads,
        "peak_rss_bytes": pipeline::peak_rss_bytes(),
    }))
}

fn host_only(cfg: &LabelConfig, num_shards: u64) -> Result<serde_json::Value> {
    let out = shards::open(&cfg.output)?;
    let options = ShardOptions { replay_outputs: true, ..Default::default() };
    let shard = ShardId { index: 0, count: num_shards };
    // Resident memory sampled every 100 ms: a pipeline whose memory grew with the shard would climb from
    // quarter to quarter of the run instead of levelling off once its queues are full.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (outcome, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                samples.extend(pipeline::resident_bytes());
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            samples
        });
        let outcome = pipeline::run_shard_with(cfg, &out, shard, "bench-host-only", &NoProgress, options);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (outcome, sampler.join().expect("RSS sampler"))
    });
    let outcome = outcome?;
    let mean_mib = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64 / (1u64 << 20) as f64;
    let quarters: Vec<f64> =
        (0..4).map(|q| mean_mib(&samples[q * samples.len() / 4..(q + 1) * samples.len() / 4])).collect();
    let ShardOutcome::Committed { stats, .. } = outcome else {
        bail!("the scratch shard was not committed by this run")
    };
    let images = stats.inputs as f64;
    let cpu_raw = stats.cpu_seconds.context("this platform does not report process CPU time")?;
    // The few real model runs that fill the replay caches are not host work: take off their wall time on
    // every intra-op thread (an upper bound on their CPU).
    let session = stats.stage_seconds.get("session").copied().unwrap_or(0.0);
    let cpu = (cpu_raw - session * cfg.run.intra_threads as f64).max(0.0);
    Ok(json!({
        "mode": "host-only",
        "images": stats.inputs,
        "labelled": stats.labelled,
        "errors": stats.errors,
        "wall_seconds": stats.wall_seconds,
        "cpu_seconds": cpu,
        "cpu_seconds_with_model_runs": cpu_raw,
        "session_seconds": session,
        "cpu_ms_per_image": 1000.0 * cpu / images.max(1.0),
        "images_per_cpu_second": images / cpu.max(1e-9),
        "stage_seconds": stats.stage_seconds,
        "decode_threads": cfg.run.decode_threads,
        "peak_rss_bytes": stats.peak_rss_bytes,
        "rss_samples": samples.len(),
        "mean_rss_mib_by_quarter_of_the_run": quarters,
    }))
}
