"""Print the tables of `make bench-memory` from the JSON reports in --bench-dir (tools/bench/bench_memory.sh)."""
import argparse
import json
import os


def mib(b):
    return b / (1 << 20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-dir", required=True)
    d = ap.parse_args().bench_dir
    shards = []
    for n in (16, 4, 1):
        path = os.path.join(d, f"memory-shard-{n}.json")
        if os.path.exists(path):
            shards.append(json.load(open(path)))
    if shards:
        print("Peak RSS against shard size (host-only, configs/bench-memory.toml, 640x480 JPEGs, store_images = true):\n")
        print("| images in the shard | " + " | ".join(f"{r['images']:,}" for r in shards) + " |")
        print("|---|" + "---|" * len(shards))
        print("| peak RSS MiB | " + " | ".join(f"{mib(r['peak_rss_bytes']):.0f}" for r in shards) + " |")
        quarters = [" / ".join(f"{q:.0f}" for q in r["mean_rss_mib_by_quarter_of_the_run"]) for r in shards]
        print("| mean RSS MiB by quarter of the run | " + " | ".join(quarters) + " |")
        print("| wall s | " + " | ".join(f"{r['wall_seconds']:.1f}" for r in shards) + " |")
        ratio = shards[-1]["peak_rss_bytes"] / shards[0]["peak_rss_bytes"]
        print(f"\nPeak RSS of the largest shard / the smallest: {ratio:.2f} "
              f"({shards[-1]['images']:,} / {shards[0]['images']:,} images).")
    path = os.path.join(d, "memory-large.json")
    if os.path.exists(path):
        r = json.load(open(path))
        q = " / ".join(f"{x:.0f}" for x in r["mean_rss_mib_by_quarter_of_the_run"])
        print("\n64 JPEGs of 6000x4000 (configs/bench-memory-large.toml, store_images = true):\n")
        print("| images | labelled | errors | peak RSS MiB | mean RSS MiB by quarter | wall s |")
        print("|---|---|---|---|---|---|")
        print(f"| {r['images']} | {r['labelled']} | {r['errors']} | {mib(r['peak_rss_bytes']):.0f} | {q} | "
              f"{r['wall_seconds']:.1f} |")


if __name__ == "__main__":
    main()
