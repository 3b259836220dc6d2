"""Print the `make bench-train` summary: Rust vs PyTorch loader and step, side by side with ratios.

Reads the JSON files the benchmarks wrote into --bench-dir (train-loader-{rust,python}.json, and
train-step-{rust,python}-<run>-<round>.json per configuration and round). Loader figures are samples per
CPU-second (per core: the reader thread, Parquet decoding and the Python interpreter are all charged).
Step figures are the median ms/step of a run; with several alternating rounds each side keeps its best
round (load from other jobs only ever adds time) and the per-round ratios are shown.
"""

import argparse
import glob
import json
import os


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", default="out/bench")
    args = ap.parse_args()
    rl = load(os.path.join(args.bench_dir, "train-loader-rust.json"))
    pl = load(os.path.join(args.bench_dir, "train-loader-python.json"))
    rounds = [(load(r), load(r.replace("-rust-", "-python-")))
              for r in sorted(glob.glob(os.path.join(args.bench_dir, "train-step-rust-*.json")))]
    cores = rl["cores"]

    def best(side, run):
        rows = [x for rnd in rounds for x in rnd[side]["rows"] if (x["model"], x["size"]) == run]
        return min(rows, key=lambda x: x["ms_median"]) if rows else None

    runs = list(dict.fromkeys((x["model"], x["size"]) for rnd in rounds for x in rnd[0]["rows"]))

    def rust(setting, tasks, workers):
        rows = rl["rows"]
        return next(r for r in rows if r["setting"] == setting and r["tasks"] == tasks and r["workers"] == workers)

    def py(setting, tasks):
        return next(r for r in pl["rows"] if r["setting"] == setting and r["tasks"] == tasks)

    print("\nLoader: read + decode + augment + collate, samples per CPU-second (= per core)")
    print(f"| crop (JPEG) | tasks | Rust, 1 worker | PyTorch, num_workers=0 | Rust / PyTorch "
          f"| Rust, {cores} workers: samples/s total (cores busy) |")
    print("|---|---|---|---|---|---|")
    per_core = {}
    for setting, source in (("128", "128×96"), ("640", "640×480")):
        for tasks in ("all tasks", "cls+det only"):
            r, p = rust(setting, tasks, 1), py(setting, tasks)
            if tasks == "all tasks":
                per_core[setting] = (r["samples_per_cpu_s"], p["samples_per_cpu_s"])
            many = next((x for x in rl["rows"] if x["setting"] == setting and x["tasks"] == tasks
                         and x["workers"] == cores and cores > 1), None)
            total = f"{many['samples_per_s']:.0f} ({many['cpu_util']:.2f})" if many else "-"
            print(f"| {setting} px ({source}) | {tasks} | {r['samples_per_cpu_s']:.0f} | {p['samples_per_cpu_s']:.0f} "
                  f"| **{r['samples_per_cpu_s'] / p['samples_per_cpu_s']:.2f}×** | {total} |")

    print(f"\nStep: forward + losses + backward + SGD update, fixed batch in memory "
          f"(median ms/step, best of {len(rounds) // max(len(runs), 1)} alternating rounds)")
    print("| model | batch × px | threads | parity (params, losses) | Rust ms | PyTorch ms "
          "| Rust / PyTorch (per round) | step consumes samples/s | loader cores to keep up (Rust / PyTorch loader) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        r, p = best(0, run), best(1, run)
        if p is None:
            continue
        same = "equal" if p["trainable_params"] == r["trainable_params"] else f"DIFFER: {p['trainable_params']:,}"
        if p.get("det_positives") != r.get("det_positives"):
            same += f"; FCOS positives differ: {r.get('det_positives')} vs {p.get('det_positives')}"
        a, b = r.get("initial_losses") or {}, p.get("initial_losses") or {}
        if a and b and a.keys() == b.keys():
            diff = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a)
            same += f"; same initial weights: losses within {diff:.0e}"
        per_round = ", ".join(
            f"{x['ms_median'] / y['ms_median']:.2f}"
            for rr, pp in rounds for x in rr["rows"] for y in pp["rows"]
            if (x["model"], x["size"]) == run and (y["model"], y["size"]) == run)
        feed = per_core.get(str(r["size"]))
        cores_needed = f"{r['samples_per_s'] / feed[0]:.3f} / {r['samples_per_s'] / feed[1]:.3f}" if feed else "-"
        print(f"| {r['model']} | {r['batch']} × {r['size']} | {r['threads']} | {r['trainable_params']:,} params "
              f"{same} | {r['ms_median']:.0f} | {p['ms_median']:.0f} | **{r['ms_median'] / p['ms_median']:.3f}** "
              f"({per_round}) | {r['samples_per_s']:.1f} | {cores_needed} |")
    print("\nStep phases of the best rounds, median ms (Rust / PyTorch)")
    print("| model | forward | losses | zero-grad + backward | update |")
    print("|---|---|---|---|---|")
    for run in runs:
        r, p = best(0, run), best(1, run)
        if p and "ms_phases" in r and "ms_phases" in p:
            cells = " | ".join(f"{r['ms_phases'][k]:.1f} / {p['ms_phases'][k]:.1f}"
                               for k in ("forward", "losses", "backward", "update"))
            print(f"| {r['model']} @ {r['size']} px | {cells} |")


if __name__ == "__main__":
    main()
