#!/usr/bin/env bash
# `make bench-memory`: peak resident memory of one labeler shard, against shard size and against image size.
# Every run is `--mode host-only` of the label bench (the whole pipeline: fetch, decode, resize, post-process,
# Parquet streamed to the store, commit; the teachers replay their first outputs, so the model's own memory
# is the same at every size and the runs are fast). Each run is its own process, so each peak is its own.
#   shard size:  shard 0 of 16, 4 and 1 over 16,384 640x480 JPEGs (1,024, 4,096 and 16,384 images);
#   large images: 64 6000x4000 JPEGs with `store_images = true` (the encoded bytes travel to the writer).
# Environment: CARGO, PY, BIN (release binaries), BENCH_DIR.
set -euo pipefail
CARGO=${CARGO:-cargo}
PY=${PY:-python3}
BIN=${BIN:-target/release}
DIR=${BENCH_DIR:-out/bench}
POOL=21845        # the world writes every fourth image as PNG: 21,845 images hold 16,384 JPEGs
LARGE_POOL=85     # 64 JPEGs of 6000x4000
mkdir -p "$DIR"

world() { # world DIR POOL WIDTH HEIGHT SEED
  if [ "$(ls "$1/pool/images" 2>/dev/null | wc -l)" != "$2" ]; then
    rm -rf "$1"
    "$BIN/world" --out "$1" --seed "$5" --width "$3" --height "$4" --cls 0 --det 0 --seg 0 --depth 0 --eval 0 \
      --pool "$2"
  fi
}
world "$DIR/world-16k" "$POOL" 640 480 16
world "$DIR/world-huge" "$LARGE_POOL" 6000 4000 64

bench_bin=$("$CARGO" bench -p labeler --bench label --no-run --message-format=json \
  | "$PY" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["executable"])')

echo "machine: $(nproc) cores,$(lscpu | grep 'Model name' | cut -d: -f2 | tr -s ' '); $(uptime | sed 's/.*load/load/')"
rm -f "$DIR"/memory-*.json
for n in 16 4 1; do
  echo "== shard 0 of $n over 16,384 JPEGs"
  "$bench_bin" --mode host-only --config configs/bench-memory.toml --scratch "$DIR/scratch-memory" \
    --num-shards "$n" > "$DIR/memory-shard-$n.json"
done
echo "== 64 JPEGs of 6000x4000, store_images = true"
"$bench_bin" --mode host-only --config configs/bench-memory-large.toml --scratch "$DIR/scratch-memory-large" \
  > "$DIR/memory-large.json"
echo "machine after: $(uptime | sed 's/.*load/load/')"
"$PY" tools/bench/memory_table.py --bench-dir "$DIR" | tee "$DIR/memory-table.md"
