"""Print the table of `make bench-plan` from its results.jsonl (tools/bench/bench_plan.sh), with a linear
projection to 300M keys from the largest spilled run of each format."""
import json
import sys


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    rows = [r for r in rows if r["label"] != "warmup"]
    print("| key list | keys | sort | wall s | CPU s | keys/s (wall) | peak RSS MiB | manifest MiB | key list MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        spilled = r["keys"] // r["sort_run_keys"]
        sort = "all in memory" if r["label"] == "memory" else f"runs of {r['sort_run_keys']:,}, {spilled} spilled"
        print(f"| {r['format']} | {r['keys']:,} | {sort} | {r['wall_seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['keys'] / r['wall_seconds']:,.0f} | {r['peak_rss_kib'] / 1024:.0f} | "
              f"{r['manifest_bytes'] / 2**20:.0f} | {r['key_list_bytes'] / 2**20:.0f} |")
    print()
    target = 300_000_000
    for fmt in sorted({r["format"] for r in rows}):
        spilled = [r for r in rows if r["format"] == fmt and r["label"] == "spill"]
        if not spilled:
            continue
        big = max(spilled, key=lambda r: r["keys"])
        scale = target / big["keys"]
        print(f"Projection to 300M keys ({fmt}, linear from {big['keys']:,}): "
              f"{big['wall_seconds'] * scale / 60:.0f} min, peak RSS about {big['peak_rss_kib'] / 1024:.0f} MiB "
              f"(bounded by the sort run), manifest {big['manifest_bytes'] * scale / 2**30:.1f} GiB, "
              f"key list {big['key_list_bytes'] * scale / 2**30:.1f} GiB.")


if __name__ == "__main__":
    main()
