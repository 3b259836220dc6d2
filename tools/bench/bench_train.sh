#!/usr/bin/env bash
# `make bench-train`: the trainer's loader and step benchmarks next to their PyTorch baselines.
#
# The Rust bench binaries are built once and then run directly, so that a source change by someone else
# during the run cannot trigger a rebuild in the middle of the measurements. The step benchmark alternates
# Rust and PyTorch per configuration for STEP_ROUNDS rounds (load from other jobs only adds time, so
# tools/bench/train_table.py keeps each side's best round and shows every round's ratio).
# Environment: CARGO, PY, TRAIN_BENCH_DIR, BENCH_THREADS, STEP_ROUNDS, STEP_SECONDS, STEP_RUNS.
set -euo pipefail
CARGO=${CARGO:-cargo}
PY=${PY:-python3}
DIR=${TRAIN_BENCH_DIR:-out/bench}
THREADS=${BENCH_THREADS:-$(nproc)}
ROUNDS=${STEP_ROUNDS:-2}
SECONDS_PER_RUN=${STEP_SECONDS:-8}
RUNS=${STEP_RUNS:-r18@128,tiny@128,tiny@640}
mkdir -p "$DIR"

bins=$("$CARGO" bench -p trainer --bench loader --bench step --no-run --message-format=json \
  | "$PY" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])')
loader_bin=$(awk '$1 == "loader" {print $2}' <<<"$bins")
step_bin=$(awk '$1 == "step" {print $2}' <<<"$bins")

echo "machine: $(nproc) cores,$(lscpu | grep 'Model name' | cut -d: -f2 | tr -s ' '); $(uptime | sed 's/.*load/load/')"
echo "== loader (Rust), then the PyTorch DataLoader on the same shards"
TRAIN_BENCH_DIR="$DIR" "$loader_bin"
"$PY" tools/bench/loader_pytorch.py --bench-dir "$DIR" --json "$DIR/train-loader-python.json"

echo "== step: Rust and PyTorch alternating, $ROUNDS rounds per configuration"
rm -f "$DIR"/train-step-*.json
for run in ${RUNS//,/ }; do
  for r in $(seq "$ROUNDS"); do
    TRAIN_BENCH_DIR="$DIR" STEP_BENCH_RUNS="$run" STEP_BENCH_THREADS="$THREADS" STEP_BENCH_SECONDS="$SECONDS_PER_RUN" \
      STEP_BENCH_JSON="$DIR/train-step-rust-$run-$r.json" "$step_bin" | tail -n 1
    "$PY" tools/bench/step_pytorch.py --runs "$run" --threads "$THREADS" --seconds "$SECONDS_PER_RUN" \
      --bench-dir "$DIR" --json "$DIR/train-step-python-$run-$r.json" | tail -n 1
  done
done
echo "machine after: $(uptime | sed 's/.*load/load/')"
"$PY" tools/bench/train_table.py --bench-dir "$DIR"
