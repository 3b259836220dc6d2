#!/usr/bin/env bash
# `make bench-plan`: wall time and peak memory of `labeler plan` from key lists of 1M and 10M synthetic keys
# (tools/bench/make_key_list.py: a text list and an S3 Inventory report with gzip CSV data files), with the
# default sort runs (1M keys in memory, the rest spilled and merged), plus one run at 10M keys with every key
# sorted in memory (--sort-run-keys above the key count) to show what the spilling saves. Each row is its
# own process, measured by GNU time (wall clock, maximum resident set size). The dataset location is an
# empty directory: a key list is not checked against the store, which is what makes it fast.
# Environment: PY, BIN (release binaries), BENCH_DIR; PLAN_SIZES (default "1000000 10000000"). With
# PLAN_KEY_LISTS_ONLY=1 it only writes the key lists (slow in Python, and not part of what is measured).
set -euo pipefail
PY=${PY:-python3}
BIN=${BIN:-target/release}
DIR=${BENCH_DIR:-out/bench}/plan
SIZES=${PLAN_SIZES:-"1000000 10000000"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$DIR/images" "$DIR/scratch"
RESULTS="$DIR/results.jsonl"
: > "$RESULTS"

key_list() { # key_list FORMAT N -> path of the list (written once; the script writes the same bytes each time)
  local out="$DIR/keys-$1-$2"
  if [ ! -f "$out/done" ]; then
    rm -rf "$out"
    "$PY" "$ROOT/tools/bench/make_key_list.py" --n "$2" --format "$1" --out "$out" > "$out.path"
    touch "$out/done"
  fi
  cat "$out.path"
}

run() { # run FORMAT N SORT_RUN_KEYS LABEL
  local list out cfg log
  list=$(key_list "$1" "$2")
  out="$DIR/out-$1-$2-$4"
  cfg="$DIR/plan-$1-$2.toml"
  rm -rf "$out"
  printf 'teachers = ["%s"]\noutput = "%s"\n\n[[dataset]]\nname = "bench"\nlocation = "%s"\nkey_list = "%s"\n' \
    "$ROOT/teachers/demo.toml" "$out" "$DIR/images" "$list" > "$cfg"
  log="$DIR/time-$1-$2-$4.txt"
  MUST_LOG=warn /usr/bin/time -v "$BIN/labeler" plan --config "$cfg" --scratch "$DIR/scratch" --sort-run-keys "$3" \
    2> "$log" | tee -a "$DIR/plan.log"
  "$PY" - "$log" "$1" "$2" "$3" "$4" "$out" "$DIR/keys-$1-$2" >> "$RESULTS" <<'PYEOF'
import json, os, sys
log, fmt, n, run_keys, label, out, key_dir = sys.argv[1:]
fields = {}
for line in open(log):
    k, _, v = line.strip().rpartition(": ")
    fields[k] = v
wall = fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")
seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall)))
manifest = sum(os.path.getsize(os.path.join(out, "inputs", f)) for f in os.listdir(os.path.join(out, "inputs")))
list_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(key_dir) for f in fs)
print(json.dumps({"format": fmt, "keys": int(n), "sort_run_keys": int(run_keys), "label": label,
                  "wall_seconds": seconds, "peak_rss_kib": int(fields["Maximum resident set size (kbytes)"]),
                  "cpu_seconds": float(fields["User time (seconds)"]) + float(fields["System time (seconds)"]),
                  "manifest_bytes": manifest,
                  "key_list_bytes": list_bytes}))
PYEOF
}

if [ "${PLAN_KEY_LISTS_ONLY:-0}" = 1 ]; then
  for n in $SIZES; do for fmt in text s3-inventory; do key_list "$fmt" "$n"; done; done
  exit 0
fi
echo "machine: $(nproc) cores,$(lscpu | grep 'Model name' | cut -d: -f2 | tr -s ' '); $(uptime | sed 's/.*load/load/')"
# A first plan of a small list, left out of the table: it loads ONNX Runtime and the teachers from a cold
# page cache, which is not what planning costs.
key_list text 20000 > /dev/null
run text 20000 1000000 warmup > /dev/null
for n in $SIZES; do
  for fmt in text s3-inventory; do
    run "$fmt" "$n" 1000000 spill
  done
done
largest=$(echo $SIZES | tr ' ' '\n' | sort -n | tail -1)
run text "$largest" $((largest + 1)) memory
echo "machine after: $(uptime | sed 's/.*load/load/')"
"$PY" "$ROOT/tools/bench/plan_table.py" "$RESULTS" | tee "$DIR/plan-table.md"
