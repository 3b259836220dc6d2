"""Print the `make bench-label` summary as Markdown tables (the figures BENCHMARKS.md quotes).

Reads the JSON files tools/bench/bench_label.sh wrote into --bench-dir:
  label-full-<round>.json       `labeler run --stats-json`: the whole pipeline;
  label-inference-<round>.json  the bench's inference-only mode: the bound;
  label-host.json               the bench's host-only mode: host-side CPU per image;
  label-python.json             tools/bench/label_baseline.py.
Whole pipeline against the bound: every round's own ratio (the two ran back to back), their median (the
headline), and each side's best round.
"""

import argparse
import glob
import json
import os
import statistics


def load(path):
    with open(path) as f:
        return json.load(f)


def mib(n):
    return "-" if n is None else f"{n / 2**20:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", default="out/bench")
    args = ap.parse_args()
    d = args.bench_dir
    host = load(os.path.join(d, "label-host.json"))
    py = load(os.path.join(d, "label-python.json"))
    rust_ms = host["cpu_ms_per_image"]
    best = {}
    for setting in ("all-cores", "spare-core"):
        fulls = sorted(glob.glob(os.path.join(d, f"label-full-{setting}-*.json")))
        rounds = [(load(f), load(f.replace("label-full-", "label-inference-"))) for f in fulls]
        if not rounds:
            continue
        threads = rounds[0][1]["intra_threads"]
        print(f"\n**{setting}** (ONNX Runtime intra-op threads: {threads}). Whole pipeline against teacher inference "
              "alone on the same images, chunks and teacher batches:\n")
        print("| round | images | pipeline images/s | inference-only bound images/s | pipeline / bound |")
        print("|---|---|---|---|---|")
        for i, (full, inf) in enumerate(rounds, 1):
            ratio = full["images_per_second"] / inf["bound_images_per_second"]
            print(f"| {i} | {full['inputs']} | {full['images_per_second']:.2f} | "
                  f"{inf['bound_images_per_second']:.2f} | {ratio:.3f} |")
        median = statistics.median(f["images_per_second"] / i["bound_images_per_second"] for f, i in rounds)
        best_full = max(rounds, key=lambda r: r[0]["images_per_second"])[0]
        best_inf = max(rounds, key=lambda r: r[1]["bound_images_per_second"])[1]
        bf, bb = best_full["images_per_second"], best_inf["bound_images_per_second"]
        print(f"| best of {len(rounds)} | | {bf:.2f} | {bb:.2f} | {bf / bb:.3f} |")
        print(f"| median of the rounds' own ratios | | | | **{median:.3f}** |")
        best[setting] = (best_full, best_inf)

        stages = best_full["stage_seconds"]
        print("\nStage busy seconds, best whole-pipeline round (decode includes every teacher's resize; inference "
              "is normalisation + session on the inference worker):\n")
        print("| wall | CPU s | fetch | decode | inference | of which session | postprocess | write |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {best_full['wall_seconds']:.1f} | {best_full.get('cpu_seconds') or 0:.1f} | {stages['fetch']:.2f} | "
              f"{stages['decode']:.2f} | {stages['inference']:.2f} | {stages['session']:.2f} | "
              f"{stages['postprocess']:.2f} | {stages['write']:.2f} |")
        n = best_inf["images"]
        s_wall, s_cpu = best_inf["session_seconds"], best_inf["session_cpu_seconds"]
        cores = os.cpu_count()
        floor = (s_cpu + n * rust_ms / 1000) / cores
        print(f"\nInference alone (best round): {s_wall:.2f} s in sessions using {s_cpu:.2f} CPU s "
              f"({best_inf['session_cores_busy']:.2f} cores busy); by teacher: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in best_inf["session_seconds_by_teacher"].items()) + ".")
        print(f"CPU floor on {cores} cores: (session CPU {s_cpu:.2f} s + host CPU {n} × {rust_ms:.2f} ms) / {cores} = "
              f"{floor:.2f} s, so the pipeline can reach at most {min(1.0, s_wall / floor):.3f} of the bound here.")

    rust_ms = host["cpu_ms_per_image"]
    py_ms = py["host_cpu_ms_per_image"]
    hs = host["stage_seconds"]
    print("\nHost-side cost per image (fetch + decode + resize + post-process + write, no inference):\n")
    print("| pipeline | CPU ms / image | images / s per core | Rust vs Python |")
    print("|---|---|---|---|")
    print(f"| Rust (`host-only`: whole pipeline, teachers replay outputs) | {rust_ms:.2f} | "
          f"{1000 / rust_ms:.0f} | **{py_ms / rust_ms:.1f}× less CPU** |")
    print(f"| Python (Pillow, numpy, onnxruntime, pyarrow; process CPU outside `session.run`) | {py_ms:.2f} | "
          f"{1000 / py_ms:.0f} | |")
    print(f"\nRust host-only run: {host['images']} images, {host['wall_seconds']:.1f} s wall, "
          f"{host['cpu_seconds']:.1f} CPU s; stage busy s: "
          + ", ".join(f"{k} {v:.2f}" for k, v in hs.items()))
    print("Python stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in py["stages"].items())
          + f"; session {py['session_s']:.1f} s, wall {py['wall_s']:.1f} s, {py['images_per_s']:.2f} images/s; "
          f"wall outside session.run {py['host_ms_per_image']:.1f} ms / image")

    print("\nPeak RSS (MiB):\n")
    print("| whole pipeline | inference only | host only | Python baseline |")
    print("|---|---|---|---|")
    print(f"| {mib(full.get('peak_rss_bytes'))} | {mib(inf.get('peak_rss_bytes'))} | "
          f"{mib(host.get('peak_rss_bytes'))} | {py['peak_rss_mib']:,.0f} |")
    mem = [load(f) for f in sorted(glob.glob(os.path.join(d, "label-memory-*.json")), reverse=True)]
    if mem:
        print("\nPeak RSS against shard size (host-only, configs/bench-label-memory.toml: 64 MiB data files):\n")
        print("| images in the shard | " + " | ".join(str(m["images"]) for m in mem) + " |")
        print("|---|" + "---|" * len(mem))
        print("| peak RSS MiB | " + " | ".join(mib(m.get("peak_rss_bytes")) for m in mem) + " |")
        print("| mean RSS MiB by quarter of the run | " + " | ".join(
            " / ".join(f"{q:.0f}" for q in m["mean_rss_mib_by_quarter_of_the_run"]) for m in mem) + " |")

if __name__ == "__main__":
    main()
