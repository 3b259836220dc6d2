#!/usr/bin/env bash
# `make bench-label`: the labeler on 640x480 photo-like JPEGs, four ways on the same images and teachers:
#   full       `labeler run`: the whole pipeline (fetch, decode, teachers, Parquet, commit);
#   inference  the bound: the same chunks and teacher batches, only the time inside Session::run counted;
#   host       the whole pipeline with teachers replaying outputs: host-side CPU per image;
#   python     tools/bench/label_baseline.py: a straightforward Pillow + numpy + onnxruntime + pyarrow pipeline.
# "full" and "inference" run for two settings (ONNX Runtime on all cores, and on one core fewer) and alternate
# for LABEL_ROUNDS rounds (other jobs' load only adds time, so
# tools/bench/label_table.py keeps each side's best round and prints every round's ratio).
# Environment: CARGO, PY, BIN (release binaries), BENCH_DIR, LABEL_ROUNDS, LABEL_POOL.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CARGO=${CARGO:-cargo}
PY=${PY:-python3}
BIN=${BIN:-target/release}
DIR=${BENCH_DIR:-out/bench}
ROUNDS=${LABEL_ROUNDS:-3}
# The world writes every fourth image as PNG; 682 images give 512 JPEGs, the only ones the configs select.
POOL=${LABEL_POOL:-682}
LARGE_POOL=5460   # 4096 JPEGs, for the memory check
CONFIG=configs/bench-label.toml
mkdir -p "$DIR"

if [ "$(ls "$DIR/world/pool/images" 2>/dev/null | wc -l)" != "$POOL" ]; then
  rm -rf "$DIR/world"
  "$BIN/world" --out "$DIR/world" --width 640 --height 480 --cls 0 --det 0 --seg 0 --depth 0 --eval 0 --pool "$POOL"
fi

bench_bin=$(label_bench_bin)

echo "machine: $(nproc) cores,$(lscpu | grep 'Model name' | cut -d: -f2 | tr -s ' '); $(uptime | sed 's/.*load/load/')"
rm -f "$DIR"/label-*.json
# Two settings: ONNX Runtime on every core (the default), and on one core fewer so host work has a core.
for setting in all-cores spare-core; do
  config=$CONFIG
  [ "$setting" = spare-core ] && config=configs/bench-label-spare-core.toml
  for r in $(seq "$ROUNDS"); do
    echo "== $setting, round $r: whole pipeline, then inference alone"
    rm -rf "$DIR/shards" "$DIR/shards-spare-core"
    "$BIN/labeler" run --config "$config" --shard 0 --num-shards 1 --plan-if-missing \
      --stats-json "$DIR/label-full-$setting-$r.json" | tail -n 2
    "$bench_bin" --mode inference-only --config "$config" --scratch "$DIR/scratch-inference" \
      > "$DIR/label-inference-$setting-$r.json"
  done
done
echo "== host-side work (teachers replay their outputs)"
"$bench_bin" --mode host-only --config "$CONFIG" --scratch "$DIR/scratch-host" > "$DIR/label-host.json"
echo "== peak RSS against shard size: host-only over 512 to 4096 of $LARGE_POOL images"
if [ "$(ls "$DIR/world-large/pool/images" 2>/dev/null | wc -l)" != "$LARGE_POOL" ]; then
  rm -rf "$DIR/world-large"
  "$BIN/world" --out "$DIR/world-large" --seed 8 --width 640 --height 480 --cls 0 --det 0 --seg 0 --depth 0 --eval 0 \
    --pool "$LARGE_POOL"
fi
for n in 8 4 2 1; do
  "$bench_bin" --mode host-only --config configs/bench-label-memory.toml --scratch "$DIR/scratch-memory" \
    --num-shards "$n" > "$DIR/label-memory-$n.json"
done
echo "== Python baseline"
"$PY" tools/bench/label_baseline.py --images "$DIR/world/pool/images" --teachers teachers/demo.toml \
  --extensions jpg --out "$DIR/scratch-python.parquet" > "$DIR/label-python.json"
echo "machine after: $(uptime | sed 's/.*load/load/')"
"$PY" tools/bench/label_table.py --bench-dir "$DIR" | tee "$DIR/label-table.md"
