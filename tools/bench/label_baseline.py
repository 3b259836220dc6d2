"""Baseline for the labeler benchmark: a straightforward Python pipeline doing the labeler's work.

BENCHMARKS.md compares the Rust labeler's host-side cost per image (everything but ONNX Runtime's
`Session.run`: read, decode, resize, normalise, batch, post-process, write) with this script, which
does the same work on the same images the plain way: Pillow decodes and resizes, numpy normalises,
batches and post-processes, onnxruntime runs the same teacher models, pyarrow writes one Parquet file.

The teachers come from a teacher spec file (`teachers/demo.toml`), and their conventions follow the
labeler's Rust code (labeler/src/spec.rs presets, preprocess.rs, postprocess.rs, teacher.rs):

- classification: stretch to the input size (bilinear), ImageNet mean/std, dynamic batches, softmax of
  the logits (temperature 1) -> the full distribution;
- detection (torchvision-detection): the image at its own size as a [3, H, W] float tensor in 0..1, one
  image per run; keep boxes with score >= 0.5, label - 1 is the class (0 is background), boxes mapped
  to normalised [0, 1] coordinates of the original, sorted by score, at most 100;
- segmentation (torchvision-segmentation + `scales`): stretch to round(input_size * scale) for every
  scale, softmax per scale, bilinear resample (pixel centres, as postprocess::resample) onto the scale-1
  grid, average, argmax; pixels whose max probability is < 0.5 get the ignore label 255;
- depth (midas-small): bicubic stretch, 0..1 without mean/std, static batch 1; the predicted map is
  kept as float32.

Differences from the labeler's output, on purpose (this measures the work, not the record format):
the Parquet file has a small schema (float32 probabilities and depth instead of the quantised u16
columns, the mask as one binary value, no provenance columns, no encoded image bytes).

Timing: `session_s` sums the wall time of every `session.run`; `wall_s` runs from the first image read to
the Parquet file closed; `host_s = wall_s - session_s`; `cpu_s` is the process's CPU time over the same
span (ONNX Runtime's threads included) and `host_cpu_s` the main thread's CPU time outside `session.run`
(all host-side work runs on the main thread). Sessions are created and every teacher runs once
on the first image (warm-up) before the clock starts.

Run (the benchmark images are made by `make bench-label`):

    python tools/bench/label_baseline.py --images out/bench/world/pool/images \
        --teachers teachers/demo.toml --out /tmp/label-baseline.parquet --threads 2 --chunk 64

It prints one JSON object to stdout. No network access is needed. `--no-spin` turns off ONNX Runtime's
busy-waiting of intra-op threads after each run, which otherwise competes with the host-side work on a
small machine (the labeler leaves it at ONNX Runtime's default, as this script does without the flag).
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort
import PIL
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# The presets of labeler/src/spec.rs that this baseline supports (fields as in the Rust `preset`).
PRESETS = {
    "torchvision-classification": dict(
        task="classification", layout="nchw", input_size=[224, 224],
        resize={"kind": "shorter_side_crop", "shorter": 256}, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        output_kind="logits",
    ),
    "torchvision-segmentation": dict(
        task="segmentation", layout="nchw", input_size=[520, 520], resize={"kind": "stretch"},
        mean=IMAGENET_MEAN, std=IMAGENET_STD, output_kind="logits",
    ),
    "torchvision-detection": dict(
        task="detection", layout="chw", batch=1, resize={"kind": "original"}, mean=[0.0] * 3, std=[1.0] * 3,
        label_offset=-1,
    ),
    # Same conventions, outputs in the order boxes, scores, labels (roles are read by dtype and rank).
    "torchvision-retinanet": dict(
        task="detection", layout="chw", batch=1, resize={"kind": "original"}, mean=[0.0] * 3, std=[1.0] * 3,
        label_offset=-1,
    ),
    "midas-small": dict(
        task="depth", layout="nchw", batch=1, input_size=[256, 256], resize={"kind": "stretch"},
        filter="bicubic", mean=[0.0] * 3, std=[1.0] * 3,
    ),
    "midas-large": dict(
        task="depth", layout="nchw", batch=1, input_size=[384, 384], resize={"kind": "stretch"},
        filter="bicubic", mean=[0.0] * 3, std=[1.0] * 3,
    ),
}

# Global thresholds (labeler/src/spec.rs `Thresholds::default`, as in configs/*.toml).
BOX_SCORE = 0.5
SEG_CONFIDENCE = 0.5
TEMPERATURE = 1.0
MAX_DETECTIONS = 100

FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC}  # Pillow's bicubic is Catmull-Rom, like the labeler's

IGNORE = 255


def fail(message):
    print(f"label_baseline: {message}", file=sys.stderr)
    sys.exit(2)


def load_specs(path):
    """The teachers of a spec file, preset fields filled in, model paths made absolute."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    specs = []
    for t in raw.get("teacher", []):
        name = t["name"]
        preset = t.get("preset")
        if preset is not None and preset not in PRESETS:
            fail(f"teacher {name!r}: preset {preset!r} is not supported by this baseline ({', '.join(PRESETS)})")
        spec = dict(PRESETS.get(preset, {}))
        spec.update(t)
        spec.setdefault("layout", "nchw")
        spec.setdefault("resize", {"kind": "stretch"})
        spec.setdefault("filter", "bilinear")
        spec.setdefault("scale", 1.0 / 255.0)
        spec.setdefault("mean", [0.0] * 3)
        spec.setdefault("std", [1.0] * 3)
        spec.setdefault("color", "rgb")
        spec.setdefault("output_kind", "logits")
        spec.setdefault("label_offset", 0)
        spec.setdefault("scales", [1.0])
        batch = spec.get("batch", "dynamic")
        spec["batch_size"] = int(spec.get("batch_size", 8)) if batch == "dynamic" else int(batch)
        if spec["resize"]["kind"] not in ("stretch", "original"):
            fail(f"teacher {name!r}: resize {spec['resize']['kind']!r} is not supported by this baseline")
        if spec["color"] != "rgb":
            fail(f"teacher {name!r}: color {spec['color']!r} is not supported by this baseline")
        if spec["task"] == "detection" and spec["layout"] != "chw":
            fail(f"teacher {name!r}: only torchvision-style detectors are supported by this baseline")
        model = spec["model"]
        if not os.path.isabs(model):
            model = os.path.join(os.path.dirname(os.path.abspath(path)), model)
        spec["model"] = os.path.normpath(model)
        if not os.path.isfile(spec["model"]):
            fail(f"teacher {name!r}: model {spec['model']} not found (from {path})")
        specs.append(spec)
    if not specs:
        fail(f"no [[teacher]] in {path}")
    return specs


def input_size_for(spec, w, h, scale):
    """`[h, w]` of the model input for a `w`x`h` image at multi-scale factor `scale` (preprocess.rs)."""
    # Rust's `f32::round` rounds halves away from zero (Python's round() would round them to even).
    def rnd(v):
        return max(1, int(np.floor(v + 0.5)))

    if spec["resize"]["kind"] == "original":
        return [rnd(h * scale), rnd(w * scale)]
    ih, iw = spec["input_size"]
    if abs(scale - 1.0) < 1e-6:
        return [ih, iw]
    return [rnd(ih * scale), rnd(iw * scale)]


def prepare(img, spec, scale):
    """One image -> CHW float32 input, resized and normalised as the spec says."""
    w, h = img.size
    ih, iw = input_size_for(spec, w, h, scale)
    if (iw, ih) != (w, h):
        img = img.resize((iw, ih), FILTERS[spec["filter"]])
    x = np.asarray(img, dtype=np.float32)
    mean = np.array(spec["mean"], dtype=np.float32)
    std = np.array(spec["std"], dtype=np.float32)
    x = (x * np.float32(spec["scale"]) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def resample(src, rect, dw, dh):
    """Bilinear resampling of `[C, sh, sw]` over `rect` (source pixels) onto `dh`x`dw`, sampling at
    pixel centres with edge clamping: postprocess::resample."""
    _, sh, sw = src.shape
    x0, y0, x1, y1 = rect
    sx = np.clip(x0 + (np.arange(dw, dtype=np.float32) + 0.5) * ((x1 - x0) / dw) - 0.5, 0, sw - 1)
    sy = np.clip(y0 + (np.arange(dh, dtype=np.float32) + 0.5) * ((y1 - y0) / dh) - 0.5, 0, sh - 1)
    left = np.floor(sx).astype(np.int64)
    right = np.minimum(left + 1, sw - 1)
    wx = (sx - left).astype(np.float32)
    top = np.floor(sy).astype(np.int64)
    bottom = np.minimum(top + 1, sh - 1)
    wy = (sy - top).astype(np.float32)[:, None]
    rows_t = src[:, top, :]
    rows_b = src[:, bottom, :]
    t = rows_t[:, :, left] + (rows_t[:, :, right] - rows_t[:, :, left]) * wx
    b = rows_b[:, :, left] + (rows_b[:, :, right] - rows_b[:, :, left]) * wx
    return t + (b - t) * wy


class Teacher:
    def __init__(self, spec, threads, spin, clock):
        self.spec = spec
        self.clock = clock
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            # ONNX Runtime's intra-op threads busy-wait for a while after each run by default; on a small
            # machine that takes CPU from the host-side work between runs.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(spec["model"], sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - report any load failure with the teacher's name
            fail(f"teacher {spec['name']!r}: loading {spec['model']}: {e}")
        self.input_name = self.session.get_inputs()[0].name
        outs = self.session.get_outputs()
        if spec["task"] == "detection":
            # Like teacher.rs: identify boxes / labels / scores by dtype and rank.
            self.roles = {}
            for o in outs:
                role = {("tensor(float)", 2): "boxes", ("tensor(int64)", 1): "labels",
                        ("tensor(int32)", 1): "labels", ("tensor(float)", 1): "scores"}.get((o.type, len(o.shape)))
                if role:
                    self.roles.setdefault(role, o.name)
            if set(self.roles) != {"boxes", "labels", "scores"}:
                fail(f"teacher {spec['name']!r}: outputs {[o.name for o in outs]} are not boxes/labels/scores")
        else:
            self.output = outs[0].name
        self.session_s = 0.0
        self.session_thread_cpu_s = 0.0  # CPU time of the calling thread inside session.run

    def run(self, x):
        c = time.thread_time()
        t = time.perf_counter()
        out = self.session.run(None, {self.input_name: x})
        self.session_s += time.perf_counter() - t
        self.session_thread_cpu_s += time.thread_time() - c
        return dict(zip([o.name for o in self.session.get_outputs()], out))

    def predict(self, images):
        """One prediction per image of the list."""
        task = self.spec["task"]
        if task == "classification":
            return self.classify(images)
        if task == "detection":
            return self.detect(images)
        if task == "segmentation":
            return self.segment(images)
        return self.depth(images)

    def batches(self, images, scale):
        """(batch of input tensors [n, 3, h, w], its images) for the images, at `scale`."""
        n = self.spec["batch_size"]
        for i in range(0, len(images), n):
            part = images[i:i + n]
            t = time.perf_counter()
            x = np.stack([prepare(img, self.spec, scale) for img in part])
            if len(part) < n and self.spec.get("batch", "dynamic") != "dynamic":
                x = np.concatenate([x, np.zeros((n - len(part),) + x.shape[1:], np.float32)])  # static batch: pad
            self.clock["preprocess_s"] += time.perf_counter() - t
            yield x, part

    def classify(self, images):
        out = []
        for x, part in self.batches(images, 1.0):
            logits = self.run(x)[self.output]
            t = time.perf_counter()
            probs = softmax(logits[: len(part)].astype(np.float32) / np.float32(TEMPERATURE), axis=1)
            out.extend(probs[k] for k in range(len(part)))
            self.clock["postprocess_s"] += time.perf_counter() - t
        return out

    def detect(self, images):
        out = []
        classes = self.spec["classes"]
        classes = classes if isinstance(classes, int) else len(classes)  # a count, or the names
        for img in images:
            w, h = img.size
            t = time.perf_counter()
            x = prepare(img, self.spec, 1.0)  # [3, H, W], no batch axis
            self.clock["preprocess_s"] += time.perf_counter() - t
            res = self.run(x)
            t = time.perf_counter()
            boxes = res[self.roles["boxes"]].reshape(-1, 4)
            labels = res[self.roles["labels"]].astype(np.int64) + self.spec["label_offset"]
            scores = res[self.roles["scores"]]
            ih, iw = input_size_for(self.spec, w, h, 1.0)
            keep = (scores >= BOX_SCORE) & (labels >= 0) & (labels < classes) & np.isfinite(scores)
            norm = np.clip(boxes[keep] / np.array([iw, ih, iw, ih], dtype=np.float32), 0.0, 1.0)
            labels, scores = labels[keep], np.clip(scores[keep], 0.0, 1.0)
            valid = (norm[:, 2] > norm[:, 0]) & (norm[:, 3] > norm[:, 1])
            norm, labels, scores = norm[valid], labels[valid], scores[valid]
            order = np.argsort(-scores, kind="stable")[:MAX_DETECTIONS]
            out.append([
                {"x0": float(norm[k, 0]), "y0": float(norm[k, 1]), "x1": float(norm[k, 2]), "y1": float(norm[k, 3]),
                 "class_id": int(labels[k]), "score": float(scores[k])}
                for k in order
            ])
            self.clock["postprocess_s"] += time.perf_counter() - t
        return out

    def segment(self, images):
        scales = self.spec["scales"]
        acc = [None] * len(images)
        for scale in scales:
            i = 0
            for x, part in self.batches(images, scale):
                logits = self.run(x)[self.output]
                t = time.perf_counter()
                probs = softmax(logits[: len(part)], axis=1) if self.spec["output_kind"] == "logits" else logits
                for k, img in enumerate(part):
                    bh, bw = input_size_for(self.spec, img.size[0], img.size[1], 1.0)
                    _, oh, ow = probs[k].shape
                    # Stretch: the whole input shows the image, i.e. the whole output grid.
                    res = resample(probs[k], (0.0, 0.0, float(ow), float(oh)), bw, bh)
                    acc[i + k] = res if acc[i + k] is None else acc[i + k] + res
                i += len(part)
                self.clock["postprocess_s"] += time.perf_counter() - t
        t = time.perf_counter()
        out = []
        for a in acc:
            probs = a / np.float32(len(scales)) if len(scales) > 1 else a
            mask = probs.argmax(axis=0).astype(np.uint8)
            mask[probs.max(axis=0) < SEG_CONFIDENCE] = IGNORE
            out.append(mask)
        self.clock["postprocess_s"] += time.perf_counter() - t
        return out

    def depth(self, images):
        out = []
        for x, part in self.batches(images, 1.0):
            pred = self.run(x)[self.output]
            t = time.perf_counter()
            pred = pred.reshape(pred.shape[0], pred.shape[-2], pred.shape[-1])
            for k in range(len(part)):
                d = pred[k].astype(np.float32)
                if not np.isfinite(d).all():
                    raise RuntimeError(f"teacher {self.spec['name']!r}: non-finite depth")
                # Stretch: the whole map shows the image, so (as in teacher.rs) it is kept at its own grid.
                out.append(d)
            self.clock["postprocess_s"] += time.perf_counter() - t
        return out


SCHEMA = pa.schema([
    ("key", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("cls_probs", pa.list_(pa.float32())),
    ("det_boxes", pa.list_(pa.struct([
        ("x0", pa.float32()), ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32()),
        ("class_id", pa.uint16()), ("score", pa.float32()),
    ]))),
    ("seg_mask", pa.binary()),
    ("seg_height", pa.int32()),
    ("seg_width", pa.int32()),
    ("depth", pa.list_(pa.float32())),
    ("depth_height", pa.int32()),
    ("depth_width", pa.int32()),
])


def chunk_table(keys, sizes, preds):
    """The rows of one chunk as an Arrow table."""
    n = len(keys)
    cls = preds.get("classification", [None] * n)
    det = preds.get("detection", [None] * n)
    seg = preds.get("segmentation", [None] * n)
    dep = preds.get("depth", [None] * n)
    return pa.table({
        "key": keys,
        "width": [w for w, _ in sizes],
        "height": [h for _, h in sizes],
        "cls_probs": [None if p is None else p for p in cls],
        "det_boxes": det,
        "seg_mask": [None if m is None else m.tobytes() for m in seg],
        "seg_height": [None if m is None else m.shape[0] for m in seg],
        "seg_width": [None if m is None else m.shape[1] for m in seg],
        "depth": [None if d is None else d.ravel() for d in dep],
        "depth_height": [None if d is None else d.shape[0] for d in dep],
        "depth_width": [None if d is None else d.shape[1] for d in dep],
    }, schema=SCHEMA)


def read_image(path):
    img = Image.open(path).convert("RGB")
    ImageOps.exif_transpose(img, in_place=True)  # the labeler applies EXIF orientation too
    return img


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="directory of *.jpg / *.png images")
    ap.add_argument("--teachers", required=True, help="teacher spec TOML (e.g. teachers/demo.toml)")
    ap.add_argument("--out", required=True, help="Parquet file to write")
    ap.add_argument("--extensions", default="jpg,jpeg,png",
                    help="comma-separated file extensions to include (as the labeler's dataset `extensions`)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads per ONNX Runtime session")
    ap.add_argument("--chunk", type=int, default=64, help="images read and labelled together")
    ap.add_argument("--no-spin", action="store_true",
                    help="no busy-waiting of ONNX Runtime's intra-op threads between runs (default: spin)")
    args = ap.parse_args()

    if not os.path.isdir(args.images):
        fail(f"image directory {args.images} does not exist")
    exts = tuple("." + e.strip().lower().lstrip(".") for e in args.extensions.split(",") if e.strip())
    names = sorted(n for n in os.listdir(args.images) if n.lower().endswith(exts))
    if args.limit is not None:
        names = names[: args.limit]
    if not names:
        fail(f"no images with extensions {', '.join(exts)} in {args.images}")
    if args.chunk < 1 or args.threads < 1:
        fail("--chunk and --threads must be at least 1")

    clock = {"read_decode_s": 0.0, "preprocess_s": 0.0, "postprocess_s": 0.0, "write_s": 0.0}
    specs = load_specs(args.teachers)
    teachers = [Teacher(s, args.threads, not args.no_spin, clock) for s in specs]

    # Warm-up (not timed): every teacher's whole path once on the first image.
    first = read_image(os.path.join(args.images, names[0]))
    for t in teachers:
        t.predict([first])
    for t in teachers:
        t.session_s = 0.0
        t.session_thread_cpu_s = 0.0
    for k in clock:
        clock[k] = 0.0
    del first

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    thread0 = time.thread_time()
    writer = pq.ParquetWriter(args.out, SCHEMA, compression="zstd")
    for start in range(0, len(names), args.chunk):
        part = names[start:start + args.chunk]
        t = time.perf_counter()
        images = [read_image(os.path.join(args.images, n)) for n in part]
        clock["read_decode_s"] += time.perf_counter() - t
        preds = {teacher.spec["task"]: teacher.predict(images) for teacher in teachers}
        t = time.perf_counter()
        writer.write_table(chunk_table(part, [img.size for img in images], preds))
        clock["write_s"] += time.perf_counter() - t
    t = time.perf_counter()
    writer.close()
    clock["write_s"] += time.perf_counter() - t
    wall_s = time.perf_counter() - wall0
    cpu_s = time.process_time() - cpu0
    thread_cpu_s = time.thread_time() - thread0

    session_s = sum(t.session_s for t in teachers)
    host_s = wall_s - session_s
    # Everything host-side runs on this thread; its CPU time outside session.run is the host-side CPU cost.
    host_cpu_s = thread_cpu_s - sum(t.session_thread_cpu_s for t in teachers)
    n = len(names)
    stages = {k: round(v, 4) for k, v in clock.items()}
    stages["other_s"] = round(host_s - sum(clock.values()), 4)
    result = {
        "images": n,
        "wall_s": round(wall_s, 4),
        "session_s": round(session_s, 4),
        "host_s": round(host_s, 4),
        "host_ms_per_image": round(1000.0 * host_s / n, 3),
        "images_per_s": round(n / wall_s, 3),
        "cpu_s": round(cpu_s, 4),
        "host_cpu_s": round(host_cpu_s, 4),
        "host_cpu_ms_per_image": round(1000.0 * host_cpu_s / n, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "stages": stages,
        "session_by_teacher_s": {t.spec["name"]: round(t.session_s, 4) for t in teachers},
        "threads": args.threads,
        "intra_op_spinning": not args.no_spin,
        "chunk": args.chunk,
        "versions": {
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "pyarrow": pa.__version__,
            "python": platform.python_version(),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
