"""Pack a folder of JPEGs into the two container formats the labeler reads, for `make bench-label-packed`.

    images.tar      WebDataset: `<key>.jpg` members in name order (one sample each), as img2dataset writes them
    images.parquet  Hugging Face layout: `key` and `image` = struct {bytes, path}, 64 rows per row group

The same bytes as the loose files, so the three runs label identical images.

    python tools/bench/pack_images.py --images out/bench/world/pool/images --out out/bench/packed
"""

import argparse
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--row-group", type=int, default=64)
    args = ap.parse_args()
    names = sorted(n for n in os.listdir(args.images) if n.lower().endswith(".jpg"))
    os.makedirs(os.path.join(args.out, "webdataset"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "parquet"), exist_ok=True)
    with tarfile.open(os.path.join(args.out, "webdataset", "images.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
        for n in names:
            info = tar.gettarinfo(os.path.join(args.images, n), arcname=n)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(os.path.join(args.images, n), "rb") as f:
                tar.addfile(info, f)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = []
    for n in names:
        with open(os.path.join(args.images, n), "rb") as f:
            rows.append({"bytes": f.read(), "path": n})
    table = pa.table({"key": [os.path.splitext(n)[0] for n in names], "image": pa.array(rows, type=image_type)})
    pq.write_table(table, os.path.join(args.out, "parquet", "images.parquet"), row_group_size=args.row_group,
                   compression="none")
    print(f"packed {len(names)} images into {args.out}/webdataset/images.tar and {args.out}/parquet/images.parquet")


if __name__ == "__main__":
    main()
