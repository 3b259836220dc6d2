"""Write a synthetic key list of N image keys for `labeler plan` (tools/bench/bench_plan.sh).

The keys look like a photo bucket's (`photos/3f/a2/3fa2…-000000042.jpg`, about 45 bytes) and come in a
scrambled order, so the plan has to sort them; the same N and seed always give the same bytes.

Formats:
  text           one key per line (`<out>/keys.txt`, or `keys.txt.gz` with --gzip)
  s3-inventory   an S3 Inventory report as S3 writes it: `<out>/inventory/<source bucket>/<config id>/
                 <timestamp>/manifest.json` naming gzip CSV data files under `…/<config id>/data/` (no header,
                 fileSchema "Bucket, Key, Size, LastModifiedDate", every field quoted, keys URL-encoded
                 with + for a space), --keys-per-file keys each
  s3-inventory-parquet   the same with Parquet data files (columns bucket, key, size, last_modified_date)

Prints the path to give as `key_list`.
"""
import argparse
import gzip
import json
import os
import urllib.parse

MASK = (1 << 64) - 1


def keys(n, seed):
    """The i-th key for i in 0..n: a 64-bit mix of (seed, i) spelled in hex, plus i (so keys are unique)."""
    for i in range(n):
        x = ((i + 1) * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9) & MASK
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & MASK
        x ^= x >> 29
        yield f"photos/{x >> 56:02x}/{(x >> 48) & 0xFF:02x}/{x:016x}-{i:09d}.jpg", 20_000 + x % 200_000


def write_text(out, n, seed, use_gzip):
    path = os.path.join(out, "keys.txt.gz" if use_gzip else "keys.txt")
    opener = (lambda p: gzip.open(p, "wt", compresslevel=1)) if use_gzip else (lambda p: open(p, "w"))
    with opener(path) as f:
        batch = []
        for key, _ in keys(n, seed):
            batch.append(key)
            if len(batch) == 100_000:
                f.write("\n".join(batch) + "\n")
                batch = []
        if batch:
            f.write("\n".join(batch) + "\n")
    return path


def write_inventory(out, n, seed, per_file, parquet):
    bucket, config, stamp = "bench-photos", "all-objects", "2026-01-01T01-00Z"
    report = f"inventory/{bucket}/{config}"
    os.makedirs(os.path.join(out, report, "data"), exist_ok=True)
    os.makedirs(os.path.join(out, report, stamp), exist_ok=True)
    files, rows, index = [], [], 0

    def flush():
        nonlocal rows, index
        if not rows:
            return
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            key = f"{report}/data/part-{index:05d}.parquet"
            table = pa.table({
                "bucket": [bucket] * len(rows),
                "key": [k for k, _ in rows],
                "size": pa.array([s for _, s in rows], pa.int64()),
                "last_modified_date": pa.array([1767229200000] * len(rows), pa.timestamp("ms")),
            })
            pq.write_table(table, os.path.join(out, key), row_group_size=250_000)
        else:
            key = f"{report}/data/part-{index:05d}.csv.gz"
            with gzip.open(os.path.join(out, key), "wt", compresslevel=1, newline="") as f:
                f.write("".join(
                    f'"{bucket}","{urllib.parse.quote_plus(k, safe="/")}","{s}","2026-01-01T00:00:00.000Z"\n'
                    for k, s in rows))
        files.append({"key": key, "size": os.path.getsize(os.path.join(out, key)), "MD5checksum": ""})
        rows, index = [], index + 1

    for key, size in keys(n, seed):
        rows.append((key, size))
        if len(rows) == per_file:
            flush()
    flush()
    manifest = {
        "sourceBucket": bucket,
        "destinationBucket": "arn:aws:s3:::bench-inventory",
        "version": "2016-11-30",
        "creationTimestamp": "1767229200000",
        "fileFormat": "Parquet" if parquet else "CSV",
        "fileSchema": "message s3.inventory { required binary bucket (STRING); required binary key (STRING); "
        "optional int64 size; optional int64 last_modified_date (TIMESTAMP(MILLIS,true)); }"
        if parquet else "Bucket, Key, Size, LastModifiedDate",
        "files": files,
    }
    path = os.path.join(out, report, stamp, "manifest.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, required=True, help="number of keys")
    ap.add_argument("--format", choices=["text", "s3-inventory", "s3-inventory-parquet"], default="text")
    ap.add_argument("--out", required=True, help="directory to write into (created)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gzip", action="store_true", help="text: write keys.txt.gz")
    ap.add_argument("--keys-per-file", type=int, default=1_000_000, help="s3-inventory: keys per data file")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.format == "text":
        print(write_text(a.out, a.n, a.seed, a.gzip))
    else:
        print(write_inventory(a.out, a.n, a.seed, a.keys_per_file, a.format == "s3-inventory-parquet"))


if __name__ == "__main__":
    main()
