#!/usr/bin/env python3
"""Write the img2dataset fixtures the labeler's interop tests read (labeler/tests/img2dataset.rs).

img2dataset (https://github.com/rom1504/img2dataset) is how most web-scale image sets are fetched, and its
two output formats are what a labeler of such sets is pointed at. This script lays out project images the
way that tool writes them, so the tests label real layouts without downloading anything:

  webdataset/00000.tar          000000000.jpg, 000000000.txt (caption), 000000000.json (metadata), ...
                                successful samples only, as img2dataset writes its tars
  webdataset/00000.parquet      the metadata of every sample, without images (img2dataset writes it
                                beside each tar)
  webdataset/00000_stats.json   the shard's counts
  parquet/00000.parquet         columns url, caption, key, status, error_message, width, height,
                                original_width, original_height, exif, sha256, jpg (binary); a failed
                                download is a row with status "failed_to_download" and a null `jpg`
  parquet/00000_stats.json

The images are the synthetic world's (`world --out DIR --pool 8`, seed 7, the first 4 of its 96x96 JPEGs), generated here
with the project's binary unless --images names a folder of JPEGs. Output is deterministic: fixed
timestamps in the tar and the stats, sorted inputs.

    python tools/interop/make_img2dataset_fixtures.py --world target/release/world \
        --out labeler/tests/fixtures/img2dataset
"""

import argparse
import hashlib
import io
import json
import pathlib
import subprocess
import tarfile
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# One download of the shard "fails": img2dataset keeps it in the metadata (and in its Parquet output,
# with a null image) but writes nothing for it into the tar.
FAILED = {"url": "https://example.invalid/gone.jpg", "caption": "an image that was not there",
          "error": "HTTP Error 404: Not Found"}
START = 1700000000.0


def metadata(key, url, caption, jpg):
    if jpg is None:
        return {"url": url, "caption": caption, "key": key, "status": "failed_to_download",
                "error_message": FAILED["error"], "width": None, "height": None, "original_width": None,
                "original_height": None, "exif": None, "sha256": None}
    w, h = Image.open(io.BytesIO(jpg)).size
    return {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
            "width": w, "height": h, "original_width": w, "original_height": h, "exif": "{}",
            "sha256": hashlib.sha256(jpg).hexdigest()}


SCHEMA = pa.schema([
    ("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
    ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("original_width", pa.int32()), ("original_height", pa.int32()), ("exif", pa.string()),
    ("sha256", pa.string()),
])


def stats(rows):
    ok = sum(r["status"] == "success" for r in rows)
    status = {}
    for r in rows:
        if r["error_message"]:
            status[r["error_message"]] = status.get(r["error_message"], 0) + 1
    return {"count": len(rows), "successes": ok, "failed_to_download": len(rows) - ok, "failed_to_resize": 0,
            "duration": 1.0, "start_time": START, "end_time": START + 1.0, "status_dict": status}


def write_json(path, value):
    path.write_text(json.dumps(value, indent=4, sort_keys=True) + "\n")


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(START)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--images", type=pathlib.Path, help="a folder of JPEGs (default: generate with --world)")
    ap.add_argument("--world", default="target/release/world", help="the project's world binary")
    ap.add_argument("--count", type=int, default=4, help="images taken (sorted by name)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        images = args.images
        if images is None:
            subprocess.run([args.world, "--out", tmp, "--seed", "7", "--cls", "0", "--det", "0", "--seg", "0",
                            "--depth", "0", "--eval", "0", "--pool", str(2 * args.count)], check=True,
                           stdout=subprocess.DEVNULL)
            images = pathlib.Path(tmp) / "pool/images"
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: args.count]
        jpgs = [(p.name, p.read_bytes()) for p in files]

    # img2dataset numbers samples shard * 10^n + index, zero-padded to 9 digits; the failed download
    # takes a number like any other (here the third).
    samples = []
    for i, (name, jpg) in enumerate(jpgs):
        samples.append((f"https://example.invalid/world/{name}", f"world image {name}", jpg))
    samples.insert(2, (FAILED["url"], FAILED["caption"], None))
    rows = [metadata(f"{i:09d}", url, caption, jpg) for i, (url, caption, jpg) in enumerate(samples)]

    web = args.out / "webdataset"
    web.mkdir(parents=True, exist_ok=True)
    with tarfile.open(web / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for row, (_, caption, jpg) in zip(rows, samples):
            if jpg is None:
                continue
            key = row["key"]
            add(tar, f"{key}.jpg", jpg)
            add(tar, f"{key}.txt", caption.encode())
            add(tar, f"{key}.json", json.dumps(row, indent=4).encode())
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), web / "00000.parquet")
    write_json(web / "00000_stats.json", stats(rows))

    par = args.out / "parquet"
    par.mkdir(parents=True, exist_ok=True)
    schema = SCHEMA.append(pa.field("jpg", pa.binary()))
    table = pa.Table.from_pylist([dict(r, jpg=s[2]) for r, s in zip(rows, samples)], schema=schema)
    pq.write_table(table, par / "00000.parquet")
    write_json(par / "00000_stats.json", stats(rows))

    for name, _ in jpgs:
        print(name)


if __name__ == "__main__":
    main()
