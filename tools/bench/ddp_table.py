"""Table of `make bench-train`'s data-parallel scaling runs: 1 vs 2 ranks, Rust trainer vs PyTorch DDP.

Reads train-ddp-{rust,python}-<ranks>-<round>.json from the bench directory; each side keeps its best
round per rank count (load from other jobs only adds time), and every round's Rust/PyTorch ratio is shown.
"""

import argparse
import glob
import json
import os
import re


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", default="out/bench")
    args = ap.parse_args()
    runs = {}
    for path in glob.glob(os.path.join(args.bench_dir, "train-ddp-*-*-*.json")):
        m = re.search(r"train-ddp-(rust|python)-(\d+)-(\d+)\.json$", path)
        if not m:
            continue
        with open(path) as f:
            row = json.load(f)["rows"][0]
        runs.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), {})[m.group(1)] = row
    if not runs:
        print("no data-parallel runs found")
        return
    print("| ranks × threads | model | global batch × px | Rust samples/s | Rust all-reduce ms/step | PyTorch DDP samples/s "
          "| Rust / PyTorch (best) | per round |")
    print("|---|---|---|---|---|---|---|---|")
    best = {}
    for ranks in sorted(runs):
        rounds = runs[ranks]
        both = [r for r in rounds.values() if "rust" in r and "python" in r]
        rust = max(both, key=lambda r: r["rust"]["samples_per_s"])["rust"]
        py = max(both, key=lambda r: r["python"]["samples_per_s"])["python"]
        best[ranks] = (rust["samples_per_s"], py["samples_per_s"])
        per_round = ", ".join(f"{r['rust']['samples_per_s'] / r['python']['samples_per_s']:.2f}" for r in both)
        print(f"| {ranks} × {rust['threads']} | {rust['model']} | {rust['batch']} × {rust['size']} | "
              f"{rust['samples_per_s']:.1f} | {rust['ms_phases'].get('allreduce', 0.0):.1f} | "
              f"{py['samples_per_s']:.1f} | {rust['samples_per_s'] / py['samples_per_s']:.2f} | {per_round} |")
    if 1 in best and 2 in best:
        print(f"\nscaling 2 ranks / 1 rank: Rust {best[2][0] / best[1][0]:.2f}, PyTorch DDP {best[2][1] / best[1][1]:.2f}")


if __name__ == "__main__":
    main()
