#!/usr/bin/env bash
# `make bench-memory`: peak resident memory of one labeler shard, against shard size and against image size.
# Every run is `--mode host-only` of the label bench (the whole pipeline: fetch, decode, resize, post-process,
# Parquet streamed to the store, commit; the teachers replay their first outputs, so the model's own memory
# is the same at every size and the runs are fast). Each run is its own process, so each peak is its own.
#   shard size:  shard 0 of 16, 4 and 1 over 16,384 640x480 JPEGs (1,024, 4,096 and 16,384 inputs);
#   large images: 64 6000x4000 JPEGs with `store_images = true` (the encoded bytes travel to the writer).
# Environment: CARGO, PY, BIN (release binaries), BENCH_DIR.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CARGO=${CARGO:-cargo}
PY=${PY:-python3}
BIN=${BIN:-target/release}
DIR=${BENCH_DIR:-out/bench}
# Rendering is the slow part, so each world renders a share of the images and every JPEG is hard-linked under
# several names: the labeler treats each name as its own input (fetch, decode, teachers, rows), which is
# what memory depends on. The world writes every fourth image as PNG (left out by the configs).
POOL=2731         # 2,048 JPEGs, each under 8 names: 16,384 inputs of 640x480
LARGE_POOL=21     # 16 JPEGs, each under 4 names: 64 inputs of 6000x4000
mkdir -p "$DIR"

world() { # world NAME POOL WIDTH HEIGHT SEED COPIES [UPSCALE_TO_WxH]
  local dir="$DIR/$1" want=$(( ($2 - $2 / 4) * $6 ))
  if [ "$(ls "$dir/inputs" 2>/dev/null | wc -l)" != "$want" ]; then
    rm -rf "$dir"
    "$BIN/world" --out "$dir" --seed "$5" --width "$3" --height "$4" --cls 0 --det 0 --seg 0 --depth 0 --eval 0 \
      --pool "$2"
    if [ -n "${7:-}" ]; then
      # The world renders at most 4096 px wide: upscale its JPEGs to camera size (quality 90, like a photo).
      "$PY" -c 'import glob, sys; from PIL import Image
w, h = map(int, sys.argv[2].split("x"))
for f in glob.glob(sys.argv[1] + "/*.jpg"):
    Image.open(f).convert("RGB").resize((w, h), Image.BICUBIC).save(f, quality=90)' "$dir/pool/images" "$7"
    fi
    mkdir -p "$dir/inputs"
    for f in "$dir"/pool/images/*.jpg; do
      for c in $(seq "$6"); do ln "$f" "$dir/inputs/copy$c-$(basename "$f")"; done
    done
  fi
}
world world-16k "$POOL" 640 480 16 8
world world-huge "$LARGE_POOL" 1200 800 64 4 6000x4000

bench_bin=$(label_bench_bin)

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
