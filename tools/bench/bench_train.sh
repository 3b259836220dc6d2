#!/usr/bin/env bash
# `make bench-train`: the trainer's loader and step benchmarks next to their PyTorch baselines.
#
# The Rust bench binaries are built once and then run directly, so that a source change by someone else
# during the run cannot trigger a rebuild in the middle of the measurements. The step benchmark alternates
# Rust and PyTorch per configuration for STEP_ROUNDS rounds (load from other jobs only adds time, so
# tools/bench/train_table.py keeps each side's best round and shows every round's ratio).
# Environment: CARGO, PY, TRAIN_BENCH_DIR, BENCH_THREADS, STEP_ROUNDS, STEP_SECONDS, STEP_RUNS, DDP_RUN, DDP_BATCH.
# Last, data-parallel scaling: 1 vs 2 ranks of the step benchmark under torchrun, Rust next to PyTorch DDP.
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
echo "== data-parallel scaling: 1 vs 2 ranks (gloo on loopback, $THREADS cores split between them), Rust and PyTorch DDP alternating"
DDP_RUN=${DDP_RUN:-tiny@128}
DDP_BATCH=${DDP_BATCH:-8}
rm -f "$DIR"/train-ddp-*.json
for r in $(seq "$ROUNDS"); do
  for ranks in 1 2; do
    per_rank=$(( THREADS / ranks > 0 ? THREADS / ranks : 1 ))
    TRAIN_BENCH_DIR="$DIR" STEP_BENCH_RUNS="$DDP_RUN" STEP_BENCH_BATCH="$DDP_BATCH" STEP_BENCH_THREADS="$per_rank" \
      STEP_BENCH_SECONDS="$SECONDS_PER_RUN" STEP_BENCH_JSON="$DIR/train-ddp-rust-$ranks-$r.json" \
      "$PY" -m torch.distributed.run --nproc-per-node "$ranks" --master-port $((29400 + r * 10 + ranks)) --no-python \
      "$step_bin" | tail -n 1
    "$PY" -m torch.distributed.run --nproc-per-node "$ranks" --master-port $((29500 + r * 10 + ranks)) \
      tools/bench/step_pytorch.py --runs "$DDP_RUN" --batch "$DDP_BATCH" --threads "$per_rank" \
      --seconds "$SECONDS_PER_RUN" --bench-dir "$DIR" --json "$DIR/train-ddp-python-$ranks-$r.json" | tail -n 1
  done
done
echo "machine after: $(uptime | sed 's/.*load/load/')"
"$PY" tools/bench/train_table.py --bench-dir "$DIR"
"$PY" tools/bench/ddp_table.py --bench-dir "$DIR"
