#!/usr/bin/env python3
"""Train, export and evaluate the four demo teachers of the synthetic world.

MuST starts from *specialised* teachers: each one is trained only on the images that carry a human label
for its own task. This script does exactly that on the synthetic store written by `world`:

    classifier  <- split `cls`    (scene class)
    detector    <- split `det`    (object boxes)
    segmenter   <- split `seg`    (per-pixel classes)
    depth       <- split `depth`  (metric depth, learnt as relative inverse depth)

Each teacher is exported with the legacy TorchScript exporter (`torch.onnx.export(..., dynamo=False)`),
the way users export real torchvision / MiDaS models, so that its ONNX interface mirrors the family it
stands in for (see tools/teachers/README.md). Every teacher is then evaluated *through ONNX Runtime* on
the held-out `eval` split, next to a trivial baseline, and the numbers are written to
tools/teachers/QUALITY.md.

Usage:
    .venv/bin/python tools/teachers/train_teachers.py [--store out/world] [--out tools/teachers/onnx]
                                                      [--epochs-scale 1.0] [--only classifier,depth]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# OpenMP threads that spin while waiting make multi-threaded training 5-10x slower on a CPU shared with
# other work (measured on the 2-core build machine); passive waiting keeps 2 threads at least as fast as 1.
# Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from PIL import Image

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
TEACHERS = ("classifier", "detector", "segmenter", "depth")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

OPSET = 17
MAX_IR_VERSION = 10  # onnxruntime 1.31 refuses IR 14
DET_STRIDE = 4
DET_SCORE_THRESH = 0.05
DET_NMS_IOU = 0.5
DET_MAX_DETS = 100
DEPTH_SIZE = 128


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# --------------------------------------------------------------------------------------------------------
# Store reading
# --------------------------------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    meta: dict
    width: int
    height: int
    scene_classes: list
    object_classes: list
    seg_classes: list
    max_depth: float
    depth_png_scale: float


@dataclass
class Split:
    name: str
    ids: list
    images: np.ndarray  # uint8 [N,H,W,3] RGB
    scene: np.ndarray | None = None  # int64 [N]
    boxes: list = field(default_factory=list)  # per image float32 [B,5]: class_id(0-based), x0,y0,x1,y1 in pixels
    seg: np.ndarray | None = None  # uint8 [N,H,W]
    depth: np.ndarray | None = None  # float32 [N,H,W] metres, 0 = invalid


def open_world(root: Path) -> World:
    meta = json.loads((root / "world.json").read_text())
    return World(
        root=root,
        meta=meta,
        width=int(meta["width"]),
        height=int(meta["height"]),
        scene_classes=list(meta["scene_classes"]),
        object_classes=list(meta["object_classes"]),
        seg_classes=list(meta["seg_classes"]),
        max_depth=float(meta["max_depth"]),
        depth_png_scale=float(meta["depth_png_scale"]),
    )


def load_split(world: World, name: str, want: set) -> Split:
    """Load a whole split into memory (the demo store is small: 96x96 images)."""
    img_dir = world.root / name / "images"
    truth_dir = world.root / name / "truth"
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images in {img_dir}")
    n = len(files)
    h, w = world.height, world.width
    images = np.empty((n, h, w, 3), dtype=np.uint8)
    scene = np.empty(n, dtype=np.int64) if "scene" in want else None
    seg = np.empty((n, h, w), dtype=np.uint8) if "seg" in want else None
    depth = np.empty((n, h, w), dtype=np.float32) if "depth" in want else None
    boxes = []
    ids = []
    for i, path in enumerate(files):
        sid = path.stem
        ids.append(sid)
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            images[i] = np.asarray(im)
        if "scene" in want or "boxes" in want:
            truth = json.loads((truth_dir / f"{sid}.json").read_text())
            if scene is not None:
                scene[i] = int(truth["scene_class"])
            if "boxes" in want:
                # boxes are normalised to [0,1]; scale them to the (common, possibly resized) image size
                b = np.array(
                    [[bx["class_id"], bx["x0"] * w, bx["y0"] * h, bx["x1"] * w, bx["y1"] * h] for bx in truth["boxes"]],
                    dtype=np.float32,
                ).reshape(-1, 5)
                boxes.append(b)
        if seg is not None:
            with Image.open(world.root / name / "seg" / f"{sid}.png") as im:
                arr = np.asarray(im)
                if arr.ndim == 3:
                    arr = arr[..., 0]
                seg[i] = arr
        if depth is not None:
            with Image.open(world.root / name / "depth" / f"{sid}.png") as im:
                arr = np.asarray(im).astype(np.float32)
                if arr.ndim == 3:
                    arr = arr[..., 0]
                depth[i] = arr / world.depth_png_scale
    return Split(name=name, ids=ids, images=images, scene=scene, boxes=boxes, seg=seg, depth=depth)


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------


def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """Plain conv encoder returning features at strides 2, 4, 8, 16.

    Compute is kept away from the high-resolution stages (one narrow conv at stride 2): the teachers are
    trained on a shared 2-core CPU.
    """

    def __init__(self, widths=(16, 32, 64, 96)):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.s2 = cbr(3, c1, 2)
        self.s4 = nn.Sequential(cbr(c1, c2, 2), cbr(c2, c2))
        self.s8 = nn.Sequential(cbr(c2, c3, 2), cbr(c3, c3))
        self.s16 = nn.Sequential(cbr(c3, c4, 2), cbr(c4, c4))
        self.widths = widths

    def forward(self, x):
        f2 = self.s2(x)
        f4 = self.s4(f2)
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        return f2, f4, f8, f16


def up_to(x, ref):
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class UNetLite(nn.Module):
    """Encoder + light top-down decoder; returns a feature map at stride `out_stride` (2 or 4).

    At stride 2 the skip is fused by a 1x1 conv and one narrow 3x3 conv (`fine` channels).
    """

    def __init__(self, widths=(16, 32, 64, 96), dec=32, out_stride=2, fine=16):
        super().__init__()
        self.enc = Encoder(widths)
        c1, c2, c3, c4 = widths
        self.out_stride = out_stride
        self.d8 = cbr(c4 + c3, dec)
        self.d4 = cbr(dec + c2, dec)
        if out_stride == 2:
            self.d2 = nn.Sequential(
                nn.Conv2d(dec + c1, fine, 1, bias=False), nn.BatchNorm2d(fine), nn.ReLU(inplace=True), cbr(fine, fine)
            )
            self.channels = fine
        else:
            self.d2 = None
            self.channels = dec

    def forward(self, x):
        f2, f4, f8, f16 = self.enc(x)
        y = self.d8(torch.cat([up_to(f16, f8), f8], 1))
        y = self.d4(torch.cat([up_to(y, f4), f4], 1))
        if self.d2 is not None:
            y = self.d2(torch.cat([up_to(y, f2), f2], 1))
        return y


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def make_optimizer(model, lr, steps, wd=1e-4):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    return opt, sched


def batches(n: int, bs: int, rng: np.random.Generator):
    perm = rng.permutation(n)
    for i in range(0, n - bs + 1 if n >= bs else 1, bs):
        yield perm[i : i + bs]


def to_tensor_01(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div_(255.0)


def imagenet_norm_np(images_u8: np.ndarray) -> np.ndarray:
    x = images_u8.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


_MEAN_T = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD_T = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def photometric(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Mild brightness/contrast jitter on 0..1 images (per image)."""
    n = x.shape[0]
    b = torch.from_numpy(rng.uniform(-0.08, 0.08, size=(n, 1, 1, 1)).astype(np.float32))
    c = torch.from_numpy(rng.uniform(0.85, 1.15, size=(n, 1, 1, 1)).astype(np.float32))
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - m) * c + m + b).clamp_(0, 1)


def export_onnx(model, args, path: Path, input_names, output_names, dynamic_axes, rename_inputs=None, fix_output_dims=None):
    """Export with the TorchScript exporter (dynamo=False), as users export torchvision/MiDaS models.

    rename_inputs: {exported name: final name}, for names TorchScript refuses (MiDaS' input is called "0").
    fix_output_dims: {output index: {axis: size}}, for static axes that shape inference left symbolic.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    m = onnx.load(str(path))
    changed = False
    for old_name, new_name in (rename_inputs or {}).items():
        for inp in m.graph.input:
            if inp.name == old_name:
                inp.name = new_name
        for node in m.graph.node:
            for k, name in enumerate(node.input):
                if name == old_name:
                    node.input[k] = new_name
        changed = True
    for oi, axes in (fix_output_dims or {}).items():
        dims = m.graph.output[oi].type.tensor_type.shape.dim
        for axis, size in axes.items():
            dims[axis].Clear()
            dims[axis].dim_value = size
        changed = True
    if m.ir_version > MAX_IR_VERSION:
        m.ir_version = MAX_IR_VERSION
        changed = True
    onnx.checker.check_model(m)
    if changed:
        onnx.save(m, str(path))
    return m.ir_version


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def describe_session(sess: ort.InferenceSession) -> list:
    rows = []
    for kind, items in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        for a in items:
            rows.append((kind, a.name, a.shape, a.type))
    return rows


@dataclass
class Result:
    teacher: str
    file: Path
    params: int
    train_images: int
    metrics: list  # (metric name, value, baseline)
    ir_version: int
    io: list
    train_seconds: float
    notes: str = ""
    parity: float = float("nan")  # max |torch - onnxruntime| over the outputs on a few eval images


def parity(module: nn.Module, sess: ort.InferenceSession, inputs: list) -> float:
    """Largest absolute difference between the PyTorch module and its ONNX export on the same inputs."""
    module.eval()
    worst = 0.0
    names = [i.name for i in sess.get_inputs()]
    for x in inputs:
        with torch.no_grad():
            ref = module(torch.from_numpy(x))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(None, {names[0]: x})
        for r, g in zip(ref, got):
            r = r.numpy()
            if r.shape != g.shape:
                return float("inf")
            if r.size:
                worst = max(worst, float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max()))
    return worst


# --------------------------------------------------------------------------------------------------------
# 1. Classifier (torchvision classification contract)
# --------------------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.enc = Encoder((16, 32, 64, 96))
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(96, n_classes)

    def forward(self, x):  # x: ImageNet-normalised [N,3,H,W]
        f16 = self.enc(x)[-1]
        return self.fc(self.drop(f16.mean(dim=(2, 3))))


def train_classifier(world: World, train: Split, ev: Split, out: Path, scale: float, seed: int) -> Result:
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    model = Classifier(len(world.scene_classes))
    x_all = to_tensor_01(train.images)
    y_all = torch.from_numpy(train.scene)
    epochs = max(1, round(4 * scale))
    bs = 32
    steps = epochs * max(1, len(train.ids) // bs)
    opt, sched = make_optimizer(model, 3e-3, steps)
    t0 = time.time()
    model.train()
    for ep in range(epochs):
        tot, n = 0.0, 0
        for idx in batches(len(train.ids), bs, rng):
            x = photometric(x_all[idx], rng)
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[flip] = x[flip].flip(-1)
            x = (x - _MEAN_T) / _STD_T
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            n += len(idx)
        log(f"classifier epoch {ep + 1}/{epochs} loss {tot / max(n, 1):.4f}")
    train_s = time.time() - t0

    path = out / "classifier.onnx"
    dummy = torch.zeros(2, 3, world.height, world.width)
    ir = export_onnx(
        model, (dummy,), path, ["input"], ["logits"], {"input": {0: "N"}, "logits": {0: "N"}}
    )

    sess = ort_session(path)
    x = imagenet_norm_np(ev.images)
    preds = []
    for i in range(0, len(x), 128):
        (logits,) = sess.run(["logits"], {"input": x[i : i + 128]})
        preds.append(logits.argmax(1))
    pred = np.concatenate(preds)
    top1 = float((pred == ev.scene).mean())
    par = parity(model, sess, [x[:8]])
    majority = int(np.bincount(train.scene, minlength=len(world.scene_classes)).argmax())
    base = float((ev.scene == majority).mean())
    return Result(
        "classifier", path, n_params(model), len(train.ids), [("top-1", top1, base)], ir, describe_session(sess), train_s,
        notes=f"baseline: always predict the training majority class `{world.scene_classes[majority]}`",
        parity=par,
    )


# --------------------------------------------------------------------------------------------------------
# 2. Detector (torchvision detection contract, CenterNet-style head on a stride-4 grid)
# --------------------------------------------------------------------------------------------------------


class CenterNet(nn.Module):
    """Training-time network: ImageNet-normalised [N,3,H,W] -> heatmap logits, log-size, offset at stride 4."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.body = UNetLite((16, 32, 64, 96), dec=48, out_stride=4)
        self.hm = nn.Sequential(cbr(48, 32), nn.Conv2d(32, n_classes, 1))
        self.reg = nn.Sequential(cbr(48, 32), nn.Conv2d(32, 4, 1))  # log w, log h (grid cells), dx, dy
        nn.init.constant_(self.hm[-1].bias, -2.19)  # prior 0.1

    def forward(self, x):
        f = self.body(x)
        return self.hm(f), self.reg(f)


class DetectorExport(nn.Module):
    """Inference wrapper with the torchvision detection interface.

    image [3,H,W] RGB 0..1 -> boxes [K,4] xyxy (input pixels), labels [K] int64 (1-based), scores [K].
    Normalisation, peak extraction, score threshold, class-aware NMS and the top-100 cut all happen here.
    """

    def __init__(self, net: CenterNet):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image):
        x = (image.unsqueeze(0) - self.mean) / self.std
        hm_logits, reg = self.net(x)
        hm = torch.sigmoid(hm_logits)
        peaks = F.max_pool2d(hm, 3, stride=1, padding=1)
        hm = hm * (hm == peaks).to(hm.dtype)
        gh, gw = hm.shape[2], hm.shape[3]
        flat = hm.reshape(-1)
        idx = torch.nonzero(flat > DET_SCORE_THRESH).reshape(-1)
        scores = flat[idx]
        hw = gh * gw
        cls = torch.div(idx, hw, rounding_mode="floor")
        pix = idx - cls * hw
        ys = torch.div(pix, gw, rounding_mode="floor")
        xs = pix - ys * gw
        r = reg[0].reshape(4, -1)[:, pix]
        w = torch.exp(r[0]) * DET_STRIDE
        h = torch.exp(r[1]) * DET_STRIDE
        cx = (xs.to(hm.dtype) + r[2]) * DET_STRIDE
        cy = (ys.to(hm.dtype) + r[3]) * DET_STRIDE
        img_h = image.shape[1]
        img_w = image.shape[2]
        x0 = torch.clamp(cx - w / 2, min=0.0)
        y0 = torch.clamp(cy - h / 2, min=0.0)
        x1 = torch.min(cx + w / 2, torch.full_like(cx, 1.0) * img_w)
        y1 = torch.min(cy + h / 2, torch.full_like(cy, 1.0) * img_h)
        boxes = torch.stack([x0, y0, x1, y1], dim=1)
        keep = torchvision.ops.batched_nms(boxes, scores, cls, DET_NMS_IOU)
        keep = keep[:DET_MAX_DETS]
        return boxes[keep], cls[keep] + 1, scores[keep]


def det_targets(boxes_list, n_classes, gh, gw):
    """CenterNet targets: gaussian heatmap per class, size/offset regression at box centres."""
    n = len(boxes_list)
    hm = np.zeros((n, n_classes, gh, gw), dtype=np.float32)
    reg = np.zeros((n, 4, gh, gw), dtype=np.float32)
    mask = np.zeros((n, gh, gw), dtype=np.float32)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    for i, bxs in enumerate(boxes_list):
        # larger boxes first so that small objects win the regression cell
        order = np.argsort(-(bxs[:, 3] - bxs[:, 1]) * (bxs[:, 4] - bxs[:, 2]))
        for c, x0, y0, x1, y1 in bxs[order]:
            bw, bh = (x1 - x0) / DET_STRIDE, (y1 - y0) / DET_STRIDE
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = (x0 + x1) / 2 / DET_STRIDE, (y0 + y1) / 2 / DET_STRIDE
            ix, iy = min(int(cx), gw - 1), min(int(cy), gh - 1)
            sx, sy = max(bw * 0.54 / 6, 0.4), max(bh * 0.54 / 6, 0.4)
            g = np.exp(-(((xx - ix) ** 2) / (2 * sx * sx) + ((yy - iy) ** 2) / (2 * sy * sy)))
            ci = int(c)
            hm[i, ci] = np.maximum(hm[i, ci], g)
            hm[i, ci, iy, ix] = 1.0
            reg[i, :, iy, ix] = (math.log(bw), math.log(bh), cx - ix, cy - iy)
            mask[i, iy, ix] = 1.0
    return torch.from_numpy(hm), torch.from_numpy(reg), torch.from_numpy(mask)


def focal_loss(logits, target):
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    n_pos = pos.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / n_pos


def flip_boxes(bxs: np.ndarray, width: int) -> np.ndarray:
    out = bxs.copy()
    out[:, 1] = width - bxs[:, 3]
    out[:, 3] = width - bxs[:, 1]
    return out


def train_detector(world: World, train: Split, ev: Split, out: Path, scale: float, seed: int) -> Result:
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    nc = len(world.object_classes)
    net = CenterNet(nc)
    x_all = to_tensor_01(train.images)
    gh, gw = math.ceil(world.height / DET_STRIDE), math.ceil(world.width / DET_STRIDE)
    epochs = max(1, round(12 * scale))
    bs = 16
    steps = epochs * max(1, len(train.ids) // bs)
    opt, sched = make_optimizer(net, 3e-3, steps)
    t0 = time.time()
    net.train()
    for ep in range(epochs):
        tot, n = 0.0, 0
        for idx in batches(len(train.ids), bs, rng):
            x = photometric(x_all[idx], rng)
            flips = rng.random(len(idx)) < 0.5
            bl = []
            for j, k in enumerate(idx):
                if flips[j]:
                    bl.append(flip_boxes(train.boxes[k], world.width))
                else:
                    bl.append(train.boxes[k])
            ft = torch.from_numpy(flips)
            x[ft] = x[ft].flip(-1)
            x = (x - _MEAN_T) / _STD_T
            hm_t, reg_t, mask = det_targets(bl, nc, gh, gw)
            hm_l, reg_p = net(x)
            l_hm = focal_loss(hm_l, hm_t)
            m = mask.unsqueeze(1)
            npos = mask.sum().clamp(min=1)
            l_wh = (F.l1_loss(reg_p[:, :2], reg_t[:, :2], reduction="none") * m).sum() / npos
            l_off = (F.l1_loss(reg_p[:, 2:], reg_t[:, 2:], reduction="none") * m).sum() / npos
            loss = l_hm + l_wh + l_off
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            n += len(idx)
        log(f"detector epoch {ep + 1}/{epochs} loss {tot / max(n, 1):.4f}")
    train_s = time.time() - t0

    path = out / "detector.onnx"
    wrapper = DetectorExport(net).eval()
    # trace on a real image so that the dynamic-K path sees detections
    dummy = to_tensor_01(ev.images[:1])[0]
    ir = export_onnx(
        wrapper,
        (dummy,),
        path,
        ["image"],
        ["boxes", "labels", "scores"],
        {"image": {1: "H", 2: "W"}, "boxes": {0: "K"}, "labels": {0: "K"}, "scores": {0: "K"}},
    )

    sess = ort_session(path)
    dets = []
    for i in range(len(ev.ids)):
        img = np.ascontiguousarray(ev.images[i].transpose(2, 0, 1)).astype(np.float32) / 255.0
        b, l, s = sess.run(["boxes", "labels", "scores"], {"image": img})
        dets.append((b, l - 1, s))
    ap, per_class = voc_map(dets, ev.boxes, nc)
    par = parity(wrapper, sess, [np.ascontiguousarray(ev.images[i].transpose(2, 0, 1)).astype(np.float32) / 255.0 for i in range(4)])

    # baseline: one box per class per image at that class's mean training box, scored by class frequency
    allb = np.concatenate(train.boxes) if train.boxes else np.zeros((0, 5), np.float32)
    base_dets = []
    prior_boxes, prior_scores, prior_labels = [], [], []
    for c in range(nc):
        bc = allb[allb[:, 0] == c]
        if len(bc):
            prior_boxes.append(bc[:, 1:].mean(0))
            prior_scores.append(len(bc) / len(allb))
            prior_labels.append(c)
    pb = np.array(prior_boxes, np.float32).reshape(-1, 4)
    pl = np.array(prior_labels, np.int64)
    ps = np.array(prior_scores, np.float32)
    for _ in range(len(ev.ids)):
        base_dets.append((pb, pl, ps))
    base_ap, _ = voc_map(base_dets, ev.boxes, nc)
    per = ", ".join(f"{world.object_classes[c]} {v:.3f}" for c, v in per_class.items())
    return Result(
        "detector", path, n_params(net), len(train.ids), [("box AP@0.5 (VOC, mean of classes)", ap, base_ap)], ir,
        describe_session(sess), train_s,
        notes=f"per-class AP@0.5: {per}; baseline: one box per class at its mean training box, scored by class frequency",
        parity=par,
    )


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    ab = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(aa[:, None] + ab[None, :] - inter, 1e-9)


def voc_map(dets, gts, n_classes, iou_thr=0.5):
    """VOC all-point-interpolated AP per class at IoU `iou_thr`; mean over classes that have ground truth."""
    aps = {}
    for c in range(n_classes):
        records = []  # (score, image, box)
        n_gt = 0
        gt_c = []
        for i, g in enumerate(gts):
            gb = g[g[:, 0] == c][:, 1:]
            gt_c.append(gb)
            n_gt += len(gb)
        if n_gt == 0:
            continue
        for i, (b, l, s) in enumerate(dets):
            sel = l == c
            for bb, ss in zip(b[sel], s[sel]):
                records.append((float(ss), i, bb))
        records.sort(key=lambda r: -r[0])
        used = [np.zeros(len(g), bool) for g in gt_c]
        tp = np.zeros(len(records))
        fp = np.zeros(len(records))
        for k, (_, i, bb) in enumerate(records):
            g = gt_c[i]
            if len(g):
                ious = box_iou_np(bb[None], g)[0]
                j = int(ious.argmax())
                if ious[j] >= iou_thr and not used[i][j]:
                    used[i][j] = True
                    tp[k] = 1
                    continue
            fp[k] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / n_gt
        prec = tp / np.maximum(tp + fp, 1e-9)
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[0.0], prec, [0.0]])
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = max(mpre[k], mpre[k + 1])
        ch = np.where(mrec[1:] != mrec[:-1])[0]
        aps[c] = float(np.sum((mrec[ch + 1] - mrec[ch]) * mpre[ch + 1]))
    return (float(np.mean(list(aps.values()))) if aps else 0.0), aps


# --------------------------------------------------------------------------------------------------------
# 3. Segmenter (torchvision segmentation contract)
# --------------------------------------------------------------------------------------------------------


class Segmenter(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.body = UNetLite((16, 32, 64, 96), dec=48, out_stride=2, fine=24)
        self.cls = nn.Conv2d(24, n_classes, 1)

    def forward(self, x):  # ImageNet-normalised [N,3,H,W] -> logits [N,C,H,W]
        y = self.cls(self.body(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def confusion(pred: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    valid = gt < n
    return np.bincount(n * gt[valid].astype(np.int64) + pred[valid], minlength=n * n).reshape(n, n)


def miou(conf: np.ndarray):
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return float(iou[present].mean()), iou


def train_segmenter(world: World, train: Split, ev: Split, out: Path, scale: float, seed: int) -> Result:
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    nc = len(world.seg_classes)
    model = Segmenter(nc)
    x_all = to_tensor_01(train.images)
    y_all = torch.from_numpy(train.seg.astype(np.int64))
    epochs = max(1, round(8 * scale))
    bs = 16
    steps = epochs * max(1, len(train.ids) // bs)
    opt, sched = make_optimizer(model, 3e-3, steps)
    # scale jitter so that multi-scale inference (0.5..1.75) stays sensible
    sizes = [80, 96, 96, 112]
    # objects cover well under 1% of the pixels each: weight classes by inverse square-root frequency so the
    # rarest (small cones, balls) are not traded away for sky and ground in a short schedule
    lab = train.seg.reshape(-1)
    freq = np.bincount(lab[lab < nc], minlength=nc).astype(np.float64) + 1.0
    cw = (freq.sum() / freq) ** 0.5
    class_weight = torch.tensor(cw / cw.mean() * 1.0, dtype=torch.float32)
    t0 = time.time()
    model.train()
    for ep in range(epochs):
        tot, n = 0.0, 0
        for idx in batches(len(train.ids), bs, rng):
            x = photometric(x_all[idx], rng)
            y = y_all[idx]
            ft = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[ft] = x[ft].flip(-1)
            y[ft] = y[ft].flip(-1)
            s = int(sizes[rng.integers(len(sizes))])
            if s != world.height:
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
                y = F.interpolate(y[:, None].float(), size=(s, s), mode="nearest")[:, 0].long()
            x = (x - _MEAN_T) / _STD_T
            loss = F.cross_entropy(model(x), y, weight=class_weight, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            n += len(idx)
        log(f"segmenter epoch {ep + 1}/{epochs} loss {tot / max(n, 1):.4f}")
    train_s = time.time() - t0

    path = out / "segmenter.onnx"
    dummy = torch.zeros(2, 3, world.height, world.width)
    ir = export_onnx(
        model,
        (dummy,),
        path,
        ["input"],
        ["out"],
        {"input": {0: "N", 2: "H", 3: "W"}, "out": {0: "N", 2: "H", 3: "W"}},
        fix_output_dims={0: {1: nc}},
    )

    sess = ort_session(path)
    x = imagenet_norm_np(ev.images)
    conf = np.zeros((nc, nc), np.int64)
    for i in range(0, len(x), 64):
        (logits,) = sess.run(["out"], {"input": x[i : i + 64]})
        conf += confusion(logits.argmax(1).reshape(-1), ev.seg[i : i + 64].reshape(-1), nc)
    m, ious = miou(conf)
    par = parity(model, sess, [x[:4]])
    tr = train.seg.reshape(-1)
    majority = int(np.bincount(tr[tr < nc], minlength=nc).argmax())
    gt = ev.seg.reshape(-1)
    base, _ = miou(confusion(np.full_like(gt, majority, dtype=np.int64), gt, nc))
    per = ", ".join(f"{world.seg_classes[c]} {v:.3f}" for c, v in enumerate(ious))
    return Result(
        "segmenter", path, n_params(model), len(train.ids), [("mIoU (7 classes)", m, base)], ir,
        describe_session(sess), train_s,
        notes=f"per-class IoU: {per}; baseline: predict `{world.seg_classes[majority]}` everywhere",
        parity=par,
    )


# --------------------------------------------------------------------------------------------------------
# 4. Depth (MiDaS v2.1 small contract: relative inverse depth)
# --------------------------------------------------------------------------------------------------------


class DepthNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = UNetLite((16, 32, 64, 96), dec=48, out_stride=2, fine=16)
        self.head = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):  # [1,3,128,128] RGB 0..1 -> [1,128,128] relative inverse depth (>= 0)
        y = self.head(self.body(x))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return F.relu(y).squeeze(1)


def bicubic_stretch(images_u8: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 [N,H,W,3] -> float32 [N,3,size,size] in 0..1, PIL bicubic (MiDaS-style stretch)."""
    out = np.empty((len(images_u8), 3, size, size), np.float32)
    for i, im in enumerate(images_u8):
        r = Image.fromarray(im).resize((size, size), Image.BICUBIC)
        out[i] = np.asarray(r, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return out


def align_lsq(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Per-image least-squares scale and shift: argmin_{s,t} sum mask*(s*pred+t-target)^2. Shapes [N,H,W]."""
    a00 = (mask * pred * pred).sum((1, 2))
    a01 = (mask * pred).sum((1, 2))
    a11 = mask.sum((1, 2))
    b0 = (mask * pred * target).sum((1, 2))
    b1 = (mask * target).sum((1, 2))
    det = a00 * a11 - a01 * a01
    ok = det.abs() > 1e-12
    s = torch.where(ok, (a11 * b0 - a01 * b1) / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    t = torch.where(ok, (-a01 * b0 + a00 * b1) / torch.where(ok, det, torch.ones_like(det)), b1 / a11.clamp(min=1))
    return s, t


def gradient_loss(pred, target, mask, scales=3):
    """MiDaS multi-scale gradient matching on the aligned prediction."""
    total = 0.0
    for k in range(scales):
        step = 2**k
        p, t, m = pred[:, ::step, ::step], target[:, ::step, ::step], mask[:, ::step, ::step]
        d = m * (p - t)
        gx = (d[:, :, 1:] - d[:, :, :-1]).abs() * m[:, :, 1:] * m[:, :, :-1]
        gy = (d[:, 1:, :] - d[:, :-1, :]).abs() * m[:, 1:, :] * m[:, :-1, :]
        total = total + (gx.sum() + gy.sum()) / m.sum().clamp(min=1)
    return total


def inverse_depth(depth: np.ndarray, max_depth: float):
    valid = depth > 0
    inv = np.where(valid, 1.0 / np.clip(depth, 1e-3, max_depth), 0.0).astype(np.float32)
    return inv, valid.astype(np.float32)


def depth_metrics(pred_inv: np.ndarray, gt_depth: np.ndarray, max_depth: float):
    """Align predicted inverse depth to GT inverse depth (per-image LSQ), convert to depth, return (delta1, absrel)."""
    gt_inv, valid = inverse_depth(gt_depth, max_depth)
    s, t = align_lsq(torch.from_numpy(pred_inv[None]), torch.from_numpy(gt_inv[None]), torch.from_numpy(valid[None]))
    aligned = s.item() * pred_inv + t.item()
    d = 1.0 / np.maximum(aligned, 1e-9)
    d = np.clip(d, 1e-3, max_depth)
    v = valid > 0
    g = gt_depth[v]
    p = d[v]
    ratio = np.maximum(p / g, g / p)
    return int((ratio < 1.25).sum()), float((np.abs(p - g) / g).sum()), int(v.sum())


def train_depth(world: World, train: Split, ev: Split, out: Path, scale: float, seed: int) -> Result:
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    model = DepthNet()
    x_all = torch.from_numpy(bicubic_stretch(train.images, DEPTH_SIZE))
    inv, valid = inverse_depth(train.depth, world.max_depth)
    # targets at the network's 128x128: bilinear on inverse depth, nearest on the validity mask
    inv_t = F.interpolate(torch.from_numpy(inv)[:, None], size=(DEPTH_SIZE, DEPTH_SIZE), mode="bilinear", align_corners=False)[:, 0]
    val_t = F.interpolate(torch.from_numpy(valid)[:, None], size=(DEPTH_SIZE, DEPTH_SIZE), mode="nearest")[:, 0]
    epochs = max(1, round(5 * scale))
    bs = 8
    steps = epochs * max(1, len(train.ids) // bs)
    opt, sched = make_optimizer(model, 2e-3, steps)
    t0 = time.time()
    model.train()
    for ep in range(epochs):
        tot, n = 0.0, 0
        for idx in batches(len(train.ids), bs, rng):
            x = photometric(x_all[idx], rng)
            g, m = inv_t[idx], val_t[idx]
            ft = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[ft] = x[ft].flip(-1)
            g[ft] = g[ft].flip(-1)
            m[ft] = m[ft].flip(-1)
            # normalise each target to unit scale so that all images weigh alike (the loss is SSI anyway)
            gs = (g * m).sum((1, 2), keepdim=True) / m.sum((1, 2), keepdim=True).clamp(min=1)
            g = g / gs.clamp(min=1e-6)
            p = model(x)
            s, t = align_lsq(p, g, m)
            pa = s[:, None, None] * p + t[:, None, None]
            l_ssi = ((pa - g).abs() * m).sum() / m.sum().clamp(min=1)
            loss = l_ssi + 0.5 * gradient_loss(pa, g, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            n += len(idx)
        log(f"depth epoch {ep + 1}/{epochs} loss {tot / max(n, 1):.4f}")
    train_s = time.time() - t0

    path = out / "depth.onnx"
    dummy = torch.zeros(1, 3, DEPTH_SIZE, DEPTH_SIZE)
    # input named "0" and exporter-chosen output name, like the published MiDaS v2.1 ONNX files
    ir = export_onnx(model, (dummy,), path, ["x"], None, None, rename_inputs={"x": "0"})

    sess = ort_session(path)
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name
    xe = bicubic_stretch(ev.images, DEPTH_SIZE)
    good = base_good = 0
    absrel = base_absrel = 0.0
    count = 0
    for i in range(len(ev.ids)):
        (pred,) = sess.run([out_name], {in_name: xe[i : i + 1]})
        p = F.interpolate(torch.from_numpy(pred)[:, None], size=(world.height, world.width), mode="bilinear", align_corners=False)
        p = p[0, 0].numpy()
        g1, a1, c1 = depth_metrics(p, ev.depth[i], world.max_depth)
        g0, a0, _ = depth_metrics(np.ones_like(p), ev.depth[i], world.max_depth)
        good += g1
        absrel += a1
        base_good += g0
        base_absrel += a0
        count += c1
    c = max(count, 1)
    par = parity(model, sess, [xe[:1], xe[1:2]])
    return Result(
        "depth", path, n_params(model), len(train.ids),
        [("δ<1.25 (LSQ-aligned inverse depth)", good / c, base_good / c), ("AbsRel (lower is better)", absrel / c, base_absrel / c)],
        ir, describe_session(sess), train_s,
        notes="metrics at the store's 96x96 resolution (prediction resized bilinearly from 128x128), over all pixels with depth > 0; "
        "baseline: a constant prediction, which the alignment turns into the mean ground-truth inverse depth",
        parity=par,
    )


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------


def fmt_size(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def write_quality(path: Path, results: list, world: World, command: str, wall: float, scale: float) -> None:
    lines = [
        "# Demo teacher quality",
        "",
        "Written by `tools/teachers/train_teachers.py`; do not edit by hand. Each teacher was trained only on its own",
        "labelled split of the synthetic world and evaluated **through ONNX Runtime** on the held-out `eval` split",
        f"({world.meta['splits'].get('eval', {}).get('count', '?')} images). The baseline column is a trivial predictor",
        "(see notes) so that it is visible that each teacher learned its task.",
        "",
        "| teacher | file | size | params | train images | metric | value | trivial baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        size = fmt_size(r.file.stat().st_size)
        for k, (name, value, base) in enumerate(r.metrics):
            if k == 0:
                lines.append(
                    f"| {r.teacher} | `{rel(r.file)}` | {size} | {r.params:,} | {r.train_images} | {name} | {value:.3f} | {base:.3f} |"
                )
            else:
                lines.append(f"| | | | | | {name} | {value:.3f} | {base:.3f} |")
    lines += ["", "Notes:", ""]
    for r in results:
        lines.append(
            f"- **{r.teacher}** (trained in {r.train_seconds:.0f} s; ONNX IR {r.ir_version}, opset {OPSET}; "
            f"max |PyTorch - ONNX Runtime| on eval images {r.parity:.1e}): {r.notes}."
        )
    lines += ["", "Interfaces as ONNX Runtime reports them:", "", "```"]
    for r in results:
        lines.append(f"{rel(r.file)}")
        for kind, name, shape, typ in r.io:
            lines.append(f"    {kind:6s} {name!r:10s} {str(shape):22s} {typ}")
    lines += ["```"]
    lines += [
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"World: `{rel(world.root)}` (seed {world.meta.get('seed', '?')}, {world.width}x{world.height}). "
        f"Epochs scale {scale}. Wall time {wall:.0f} s on {os.cpu_count()} CPU core(s), torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, Python {platform.python_version()}.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="out/world", help="synthetic world root (contains world.json)")
    ap.add_argument("--out", default="tools/teachers/onnx", help="directory for the ONNX files")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every teacher's epoch count (e.g. 0.1 for a smoke run)")
    ap.add_argument("--only", default=",".join(TEACHERS), help="comma-separated subset of teachers to train")
    ap.add_argument("--quality", default=None, help="where to write QUALITY.md (default: tools/teachers/QUALITY.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    # the TorchScript exporter warns about every traced shape computation; the exported graphs are checked below
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.use_deterministic_algorithms(True)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    for t in only:
        if t not in TEACHERS:
            ap.error(f"unknown teacher {t!r}; choose from {', '.join(TEACHERS)}")

    store = Path(args.store)
    if not (store / "world.json").exists():
        print(f"error: {store}/world.json not found; run `make world` first", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quality = Path(args.quality) if args.quality else ROOT / "tools" / "teachers" / "QUALITY.md"
    world = open_world(store)
    t_start = time.time()

    log(f"loading eval split from {store}")
    ev = load_split(world, "eval", {"scene", "boxes", "seg", "depth"})
    plan = {
        "classifier": ("cls", {"scene"}, train_classifier),
        "detector": ("det", {"boxes"}, train_detector),
        "segmenter": ("seg", {"seg"}, train_segmenter),
        "depth": ("depth", {"depth"}, train_depth),
    }
    results = []
    for k, name in enumerate(TEACHERS):
        if name not in only:
            continue
        split, want, fn = plan[name]
        tr = load_split(world, split, want)
        log(f"{name}: {len(tr.ids)} training images from split `{split}`")
        r = fn(world, tr, ev, out, args.epochs_scale, args.seed + k)
        for mname, v, b in r.metrics:
            log(f"{name}: {mname} = {v:.4f} (baseline {b:.4f})")
        results.append(r)

    wall = time.time() - t_start
    cmd_args = [".venv/bin/python", "tools/teachers/train_teachers.py", "--store", args.store, "--out", args.out]
    if args.epochs_scale != 1.0:
        cmd_args += ["--epochs-scale", str(args.epochs_scale)]
    if only != list(TEACHERS):
        cmd_args += ["--only", ",".join(only)]
    if args.seed != 0:
        cmd_args += ["--seed", str(args.seed)]
    write_quality(quality, results, world, shlex.join(cmd_args), wall, args.epochs_scale)
    log(f"wrote {quality}")
    for r in results:
        log(f"{r.teacher}: {r.file} ({fmt_size(r.file.stat().st_size)}, IR {r.ir_version})")
        for kind, name, shape, typ in r.io:
            log(f"    {kind:6s} {name!r:12s} {shape} {typ}")
    log(f"total wall time {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
