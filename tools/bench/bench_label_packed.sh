#!/usr/bin/env bash
# `make bench-label-packed` (part of `make bench-label`): the same 512 JPEGs and demo teachers as loose files, as one
# WebDataset tar and as one Parquet file (tools/bench/pack_images.py), labelled by `labeler run`, alternating for
# PACKED_ROUNDS rounds; prints images/s per round and each packed format's ratio to loose files in the same round.
# Environment: PY, BIN, BENCH_DIR, PACKED_ROUNDS (default 3).
set -euo pipefail
PY=${PY:-python3}
BIN=${BIN:-target/release}
DIR=${BENCH_DIR:-out/bench}
ROUNDS=${PACKED_ROUNDS:-3}
[ -d "$DIR/world/pool/images" ] || { echo "run make bench-label first (it makes $DIR/world)" >&2; exit 2; }
"$PY" tools/bench/pack_images.py --images "$DIR/world/pool/images" --out "$DIR/packed"
conf() {  # conf FORMAT LOCATION
  printf 'teachers = ["%s/teachers/demo.toml"]\noutput = "%s/shards-packed-%s"\n[[dataset]]\nname = "photos"\nlocation = "%s"\nformat = "%s"\nextensions = ["jpg"]\n' \
    "$PWD" "$DIR" "$1" "$2" "$1" > "$DIR/packed-$1.toml"
  echo "$DIR/packed-$1.toml"
}
echo "machine: $(nproc) cores,$(lscpu | grep 'Model name' | cut -d: -f2 | tr -s ' '); $(uptime | sed 's/.*load/load/')"
echo "| round | files images/s | webdataset images/s | parquet images/s | webdataset / files | parquet / files |"
echo "|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  declare -A rate
  for f in files webdataset parquet; do
    loc="$DIR/world/pool/images"; [ "$f" != files ] && loc="$DIR/packed/$f"
    rm -rf "$DIR/shards-packed-$f"
    "$BIN/labeler" run --config "$(conf "$f" "$loc")" --shard 0 --num-shards 1 --plan-if-missing \
      --stats-json "$DIR/packed-$f-$r.json" > /dev/null 2>&1
    rate[$f]=$("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['labelled']==512, d; print(round(d['images_per_second'],1))" "$DIR/packed-$f-$r.json")
  done
  "$PY" -c "import sys; f,w,p=map(float,sys.argv[2:]); print(f'| {sys.argv[1]} | {f} | {w} | {p} | {w/f:.2f} | {p/f:.2f} |')" \
    "$r" "${rate[files]}" "${rate[webdataset]}" "${rate[parquet]}"
done
echo "machine after: $(uptime | sed 's/.*load/load/')"
