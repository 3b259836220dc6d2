"""Markdown tables for tools/bench/bench_label_real.sh: host CPU per image next to the Python pipeline, per-stage
busy time and peak RSS, and whole-pipeline throughput for the two workers x threads settings."""

import argparse
import json
import os


def load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bench-dir", required=True)
    d = ap.parse_args().bench_dir
    py = load(d, "real-python.json")
    print("| host work per image (real-architecture teachers) | CPU ms / image | vs Python | peak RSS MiB |")
    print("|---|---|---|---|")
    for label, name in [("labeler, default (post-processing on the host loops)", "real-host-auto.json"),
                        ("labeler, post-processing graphs on the CPU provider", "real-host-device.json")]:
        r = load(d, name)
        print(f"| {label} | {r['cpu_ms_per_image']:.1f} | {r['cpu_ms_per_image'] / py['host_cpu_ms_per_image']:.2f} | "
              f"{r['peak_rss_bytes'] / 2**20:.0f} |")
    print(f"| Python pipeline (Pillow + numpy + onnxruntime + pyarrow) | {py['host_cpu_ms_per_image']:.1f} | 1.00 | "
          f"{py['peak_rss_mib']:.0f} |")
    print()
    print("| stage busy seconds (host-only) | " + " | ".join(["labeler default", "labeler device graphs"]) + " |")
    print("|---|---|---|")
    a, b = load(d, "real-host-auto.json"), load(d, "real-host-device.json")
    for stage in sorted(set(a["stage_seconds"]) | set(b["stage_seconds"])):
        print(f"| {stage} | {a['stage_seconds'].get(stage, 0):.2f} | {b['stage_seconds'].get(stage, 0):.2f} |")
    print(f"| images | {a['images']} | {b['images']} |")
    print()
    print("| whole pipeline | workers x threads | images/s | peak RSS MiB |")
    print("|---|---|---|---|")
    for name in ["real-full-auto.json", "real-full-one-worker.json"]:
        r = load(d, name)
        print(f"| `labeler run` | {r['parallelism']} | {r['images_per_second']:.2f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
    print(f"| Python pipeline (1 process, onnxruntime on {py['threads']} threads) | | {py['images_per_s']:.2f} | "
          f"{py['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
