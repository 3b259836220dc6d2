"""Baseline for the trainer's loader benchmark: a straightforward PyTorch Dataset + DataLoader.

Measures samples/s (wall) and samples per CPU-second for read + decode + augment + collate over the
same committed Parquet shards the Rust loader bench reads (out/bench/train-shards-{128,640}):
pyarrow reads the record files the committed manifests list, one row group at a time (shuffled); PIL
decodes the JPEG; scale jitter [0.5, 2] after fitting the longer side to the crop, a random crop (or
bottom/right pad) and a horizontal flip are applied to the image (bilinear), the mask and the depth map
(nearest) and the boxes; the image is normalised with ImageNet statistics; samples are collated into
tensors (boxes as a list). The geometry follows trainer/src/data/augment.rs.
"""

import argparse
import glob
import io
import json
import os
import random
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
TASK_COLUMNS = {
    "cls": ["cls_origin", "cls_probs"],
    "det": ["det_origin", "det_boxes"],
    "seg": ["seg_origin", "seg_height", "seg_width", "seg_mask"],
    "depth": ["depth_origin", "depth_kind", "depth_height", "depth_width", "depth_offset", "depth_scale", "depth_q"],
}


def committed_files(root):
    """Record files named by the committed manifests of an output root."""
    files = []
    for manifest in sorted(glob.glob(os.path.join(root, "manifests", "*.json"))):
        with open(manifest) as f:
            files += [os.path.join(root, e["path"]) for e in json.load(f)["files"] if e["kind"] == "records"]
    return files


def lists(table, name):
    """(offsets, flat values) of a list column."""
    col = table.column(name).combine_chunks()
    return col.offsets.to_numpy(), col.values


class ShardDataset(IterableDataset):
    def __init__(self, root, size, tasks, seed=1):
        self.files = committed_files(root)
        self.groups = [(f, g) for f in self.files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
        self.size, self.tasks, self.seed = size, tasks, seed
        self.columns = ["key", "width", "height", "image"] + [c for t in tasks for c in TASK_COLUMNS[t]]

    def __iter__(self):
        rng = random.Random(self.seed)
        while True:
            groups = self.groups[:]
            rng.shuffle(groups)
            for path, g in groups:
                table = pq.ParquetFile(path).read_row_group(g, columns=self.columns)
                rows = list(range(table.num_rows))
                rng.shuffle(rows)
                for i in rows:
                    yield self.sample(table, i, rng)

    def sample(self, t, i, rng):
        s = self.size
        img = Image.open(io.BytesIO(t.column("image")[i].as_py())).convert("RGB")
        w, h = img.size
        fit = s / max(w, h)
        jitter = rng.uniform(0.5, 2.0)
        sw, sh = max(1, round(w * fit * jitter)), max(1, round(h * fit * jitter))
        ox = rng.randint(0, sw - s) if sw > s else 0
        oy = rng.randint(0, sh - s) if sh > s else 0
        cw, ch = min(sw - ox, s), min(sh - oy, s)
        flip = rng.random() < 0.5
        crop = (ox, oy, ox + cw, oy + ch)

        def place(array, fill):
            out = np.full((s, s) + array.shape[2:], fill, dtype=array.dtype)
            out[:ch, :cw] = array
            return out[:, ::-1] if flip else out

        pixels = (np.asarray(img.resize((sw, sh), Image.BILINEAR).crop(crop), dtype=np.float32) / 255 - MEAN) / STD
        out = {"image": torch.from_numpy(np.ascontiguousarray(place(pixels, 0.0).transpose(2, 0, 1)))}
        if "cls" in self.tasks:
            present = t.column("cls_origin")[i].as_py() != "absent"
            probs = np.asarray(t.column("cls_probs")[i].values, dtype=np.float32) / 65535 if present else None
            out["cls"] = torch.from_numpy(probs) if present else None
        if "det" in self.tasks:
            boxes = t.column("det_boxes")[i].values
            b = np.stack([boxes.field(k).to_numpy() for k in ("x0", "y0", "x1", "y1")], 1).reshape(-1, 4)
            b = b * np.array([sw, sh, sw, sh], np.float32) - np.array([ox, oy, ox, oy], np.float32)
            full = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            c = np.clip(b, 0, [cw, ch, cw, ch])
            vw, vh = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
            keep = (vw >= 1) & (vh >= 1) & (vw * vh >= 0.25 * full)
            c = c[keep]
            if flip:
                c[:, [0, 2]] = s - c[:, [2, 0]]
            labels = boxes.field("class_id").to_numpy().astype(np.int64)[keep]
            out["boxes"] = (torch.from_numpy(c), torch.from_numpy(labels))
        if "seg" in self.tasks:
            mh, mw = t.column("seg_height")[i].as_py(), t.column("seg_width")[i].as_py()
            mask = t.column("seg_mask")[i].values.to_numpy().reshape(mh, mw)
            mask = np.asarray(Image.fromarray(mask).resize((sw, sh), Image.NEAREST).crop(crop))
            out["seg"] = torch.from_numpy(np.ascontiguousarray(place(mask, 255)))
        if "depth" in self.tasks:
            dh, dw = t.column("depth_height")[i].as_py(), t.column("depth_width")[i].as_py()
            q = t.column("depth_q")[i].values.to_numpy().reshape(dh, dw).astype(np.float32)
            d = t.column("depth_offset")[i].as_py() + t.column("depth_scale")[i].as_py() * q
            if t.column("depth_kind")[i].as_py() == "metric":
                with np.errstate(divide="ignore"):
                    d = np.where(d > 0, 1.0 / d, np.nan).astype(np.float32)
            d = np.asarray(Image.fromarray(d, mode="F").resize((sw, sh), Image.NEAREST).crop(crop))
            valid = np.isfinite(d)
            out["depth"] = torch.from_numpy(np.ascontiguousarray(place(np.where(valid, d, 0).astype(np.float32), 0)))
            out["depth_valid"] = torch.from_numpy(np.ascontiguousarray(place(valid.astype(np.uint8), 0)))
        return out


def collate(samples):
    batch = {"images": torch.stack([x["image"] for x in samples])}
    if "cls" in samples[0]:
        batch["cls"] = [x["cls"] for x in samples]
    if "boxes" in samples[0]:
        batch["boxes"] = [x["boxes"] for x in samples]
    for k in ("seg", "depth", "depth_valid"):
        if k in samples[0]:
            batch[k] = torch.stack([x[k] for x in samples])
    return batch


def measure(root, size, batch, tasks, seconds, workers):
    loader = DataLoader(ShardDataset(root, size, tasks), batch_size=batch, num_workers=workers, collate_fn=collate)
    it = iter(loader)
    for _ in range(3):
        next(it)
    start, cpu0, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        n += next(it)["images"].shape[0]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    # With worker processes the CPU they use is not in process_time: only report it for num_workers=0.
    per_cpu = n / max(cpu, 1e-3) if workers == 0 else None
    return {"samples_per_s": n / wall, "cpu_util": cpu / wall if workers == 0 else None, "samples_per_cpu_s": per_cpu}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", default="out/bench", help="holds train-shards-128 and train-shards-640")
    ap.add_argument("--seconds", type=float, default=6.0, help="measuring time per row")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader num_workers (0: one process, one core)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    print("| setting | num_workers | samples/s (wall) | CPU cores busy | samples per CPU-second |")
    print("|---|---|---|---|---|")
    for name, size, batch in (("128", 128, 32), ("640", 640, 8)):
        root = os.path.join(args.bench_dir, f"train-shards-{name}")
        for what, tasks in (("all tasks", ["cls", "det", "seg", "depth"]), ("cls+det only", ["cls", "det"])):
            r = measure(root, size, batch, tasks, args.seconds, args.workers)
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            print(f"| {size} px crop, {what} | {args.workers} | {r['samples_per_s']:.0f} | "
                  f"{fmt(r['cpu_util'], '.2f')} | {fmt(r['samples_per_cpu_s'], '.0f')} |")
            rows.append({"setting": name, "crop": size, "batch": batch, "tasks": what, "workers": args.workers, **r})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
