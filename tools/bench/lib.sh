# Shared by the bench scripts (sourced). Needs CARGO and PY.

# Build the labeler's bench binary (labeler/benches/label.rs) once and print its path, so the scripts run it
# directly and nothing rebuilds in the middle of a measurement.
label_bench_bin() {
  "$CARGO" bench -p labeler --bench label --no-run --message-format=json \
    | "$PY" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["executable"])'
}
