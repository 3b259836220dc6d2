#!/usr/bin/env bash
# `make bench-label-real` (also part of `make bench-label`): the labeler on real-architecture teachers
# (teachers/real.toml: torchvision MobileNetV3 224, LR-ASPP 320 with 21 classes, SSDlite 320, a small DPT at 256;
# random weights, static batch 1; made by tools/export/make_real_teachers.py) over the first REAL_IMAGES of the
# benchmark's 640x480 photo-like JPEGs, side by side in one run:
#   host-only  teachers replay their outputs: host CPU per image, per-stage busy time, peak RSS; with the default
#              post-processing (auto = host loops on the CPU) and with the post-processing graphs (device);
#   full       `labeler run` with the default workers x threads (auto: 2 x 1 for batch-1 teachers on 2 cores)
#              and with 1 worker x all cores (the previous default);
#   python     tools/bench/label_baseline.py on the same images and teachers.
# Environment: CARGO, PY, BIN, BENCH_DIR, REAL_IMAGES (default 128).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CARGO=${CARGO:-cargo}
PY=${PY:-python3}
BIN=${BIN:-target/release}
DIR=${BENCH_DIR:-out/bench}
N=${REAL_IMAGES:-128}
[ -f out/real-teachers/dpt.onnx ] || "$PY" tools/export/make_real_teachers.py --out out/real-teachers
# The images: the first N JPEGs of the labeler benchmark's world (made by bench_label.sh).
[ -d "$DIR/world/pool/images" ] || { echo "run make bench-label first (it makes $DIR/world)" >&2; exit 2; }
rm -rf "$DIR/real-images" && mkdir -p "$DIR/real-images"
ls "$DIR/world/pool/images" | grep '\.jpg$' | head -n "$N" | while read -r f; do cp "$DIR/world/pool/images/$f" "$DIR/real-images/"; done
bench_bin=$(label_bench_bin)
conf() {  # conf NAME EXTRA-RUN-LINES: a config over the real images
  printf 'teachers = ["%s/teachers/real.toml"]\noutput = "%s/shards-real-%s"\n[run]\n%b\n[[dataset]]\nname = "photos"\nlocation = "%s/real-images"\nextensions = ["jpg"]\n' \
    "$PWD" "$DIR" "$1" "$2" "$DIR" > "$DIR/real-$1.toml"
  echo "$DIR/real-$1.toml"
}
echo "machine: $(nproc) cores,$(lscpu | grep 'Model name' | cut -d: -f2 | tr -s ' '); $(uptime | sed 's/.*load/load/')"
echo "== host-only (teachers replay their outputs): default post-processing, then the device graphs on the CPU"
"$bench_bin" --mode host-only --config "$(conf auto '')" --scratch "$DIR/scratch-real" > "$DIR/real-host-auto.json"
"$bench_bin" --mode host-only --config "$(conf device 'postprocess = "device"')" --scratch "$DIR/scratch-real" \
  > "$DIR/real-host-device.json"
echo "== whole pipeline: default workers x threads, then 1 worker x $(nproc) threads"
for setting in auto one-worker; do
  extra=''; [ "$setting" = one-worker ] && extra="inference_workers = 1\nintra_threads = $(nproc)"
  rm -rf "$DIR/shards-real-$setting"
  "$BIN/labeler" run --config "$(conf "$setting" "$extra")" --shard 0 --num-shards 1 --plan-if-missing \
    --stats-json "$DIR/real-full-$setting.json" | tail -n 3
done
echo "== Python baseline"
"$PY" tools/bench/label_baseline.py --images "$DIR/real-images" --teachers teachers/real.toml --extensions jpg \
  --out "$DIR/scratch-python-real.parquet" > "$DIR/real-python.json"
echo "machine after: $(uptime | sed 's/.*load/load/')"
"$PY" tools/bench/real_table.py --bench-dir "$DIR" | tee "$DIR/real-table.md"
