"""Baseline for the trainer's step benchmark: the Rust student's training step in PyTorch eager.

Measures ms per step (forward + task losses + weighted total + backward + SGD update) on a fixed
synthetic batch, for the same architectures as trainer/benches/step.rs, replicated layer by layer from
trainer/src/model/{mod,resnet,fpn,fcos}.rs (trainable parameter counts are printed and must equal the
Rust ones) with the losses of trainer/src/loss.rs: soft-target cross-entropy, FCOS (focal + GIoU weighted
by centerness + centerness BCE, targets assigned per step on the host with numpy), segmentation
cross-entropy ignoring 255, scale-and-shift-invariant depth loss after median/MAD normalisation.

Under torchrun (WORLD_SIZE > 1) it is the data-parallel baseline: the model wrapped in
DistributedDataParallel over a gloo process group, each rank stepping on --batch / WORLD_SIZE samples,
samples/s counting the global batch; rank 0 reports. DDP all-reduces inside backward (bucketed and
overlapped), so its all-reduce time is part of the backward phase and not reported on its own.
"""

import argparse
import json
import math
import os
import re
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

CLS, DET, SEG = 8, 5, 7
STRIDES = [8.0, 16.0, 32.0, 64.0, 128.0]
SIZE_RANGES = [(0, 64), (64, 128), (128, 256), (256, 512), (512, math.inf)]
CENTER_RADIUS, FOCAL_ALPHA, EPS = 1.5, 0.25, 1e-6


def scaled(c, width):
    return max(8, int(math.floor(c * width / 8 + 0.5)) * 8)


def group_norm(c):
    g = min(32, c)
    while c % g:
        g -= 1
    return nn.GroupNorm(g, c)


class ConvBn(nn.Sequential):
    def __init__(self, cin, cout, k, stride):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.c2 = ConvBn(cin, cout, 3, stride), ConvBn(cout, cout, 3, 1)
        self.down = ConvBn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        return F.relu(self.c2(F.relu(self.c1(x))) + (self.down(x) if self.down is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, cout, stride):
        super().__init__()
        self.c1, self.c2 = ConvBn(cin, planes, 1, 1), ConvBn(planes, planes, 3, stride)
        self.c3 = ConvBn(planes, cout, 1, 1)
        self.down = ConvBn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        h = self.c3(F.relu(self.c2(F.relu(self.c1(x)))))
        return F.relu(h + (self.down(x) if self.down is not None else x))


LAYOUT = {18: (False, [2, 2, 2, 2]), 34: (False, [3, 4, 6, 3]), 50: (True, [3, 4, 6, 3]),
          101: (True, [3, 4, 23, 3]), 152: (True, [3, 8, 36, 3])}


class ResNet(nn.Module):
    def __init__(self, depth, width):
        super().__init__()
        bottleneck, counts = LAYOUT[depth]
        exp = 4 if bottleneck else 1
        cin = scaled(64, width)
        self.stem = ConvBn(3, cin, 7, 2)
        self.stages, self.out_channels = nn.ModuleList(), []
        for s, n in enumerate(counts):
            planes = scaled(64 << s, width)
            cout = planes * exp
            blocks = []
            for b in range(n):
                stride = 2 if b == 0 and s > 0 else 1
                blocks.append(Bottleneck(cin, planes, cout, stride) if bottleneck else Basic(cin, cout, stride))
                cin = cout
            self.stages.append(nn.Sequential(*blocks))
            self.out_channels.append(cout)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.stem(x)), 3, 2, 1)
        outs = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs


class Fpn(nn.Module):
    def __init__(self, cins, c):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(ci, c, 1) for ci in cins)
        self.output = nn.ModuleList(nn.Conv2d(c, c, 3, 1, 1) for _ in cins)
        self.p6, self.p7 = nn.Conv2d(c, c, 3, 2, 1), nn.Conv2d(c, c, 3, 2, 1)

    def forward(self, c):
        top = self.lateral[3](c[3])
        inner = [top]
        for i in (2, 1, 0):
            lat = self.lateral[i](c[i])
            top = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
            inner.append(top)
        outs = [conv(x) for x, conv in zip(reversed(inner), self.output)]
        p6 = self.p6(outs[3])
        return outs + [p6, self.p7(F.relu(p6))]


def tower(c, n, bias=True):
    layers = []
    for _ in range(n):
        layers += [nn.Conv2d(c, c, 3, 1, 1, bias=bias), group_norm(c), nn.ReLU()]
    return nn.Sequential(*layers)


class Fcos(nn.Module):
    def __init__(self, c, k, depth):
        super().__init__()
        self.cls_tower, self.reg_tower = tower(c, depth), tower(c, depth)
        self.cls_logits, self.bbox_pred = nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(c, 4, 3, 1, 1)
        self.centerness = nn.Conv2d(c, 1, 3, 1, 1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES)))

    def forward(self, feats):
        flat = lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # noqa: E731
        cls, reg, ctr, levels = [], [], [], []
        for i, f in enumerate(feats):
            levels.append((f.shape[2], f.shape[3], STRIDES[i]))
            c, r = self.cls_tower(f), self.reg_tower(f)
            cls.append(flat(self.cls_logits(c)))
            reg.append(flat(F.relu(self.bbox_pred(r) * self.scales[i])))
            ctr.append(flat(self.centerness(r)))
        return torch.cat(cls, 1), torch.cat(reg, 1), torch.cat(ctr, 1).squeeze(-1), levels


class Student(nn.Module):
    def __init__(self, depth, width, fpn, det_convs, pixel_convs):
        super().__init__()
        self.backbone = ResNet(depth, width)
        c, f = self.backbone.out_channels, scaled(fpn, width)
        self.fpn = Fpn(c, f)
        self.cls_head = nn.Linear(c[3], CLS)
        self.det_head = Fcos(f, DET, det_convs)
        self.seg_head = nn.Sequential(tower(f, pixel_convs, bias=False), nn.Conv2d(f, SEG, 1))
        self.depth_head = nn.Sequential(tower(f, pixel_convs, bias=False), nn.Conv2d(f, 1, 1))

    def forward(self, x):
        c = self.backbone(x)
        p = self.fpn(c)
        fused = p[0]
        for level in p[1:]:
            fused = fused + F.interpolate(level, size=p[0].shape[-2:], mode="bilinear", align_corners=False)
        up = lambda y: F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        return {"cls": self.cls_head(c[3].mean((2, 3))), "det": self.det_head(p[1:]),
                "seg": up(self.seg_head(fused)), "depth": up(self.depth_head(fused)).squeeze(1)}


MODELS = {"r18": (18, 1.0, 256, 4, 3), "tiny": (18, 0.25, 256, 2, 3)}


def synthetic_batch(b, s):
    """The fixed batch of trainer/benches/step.rs::synthetic_batch."""
    i, c, y, x = np.meshgrid(np.arange(b), np.arange(3), np.arange(s), np.arange(s), indexing="ij")
    phase = np.float32(0.05) * (x + 1).astype(np.float32) * (c + 1) + np.float32(0.07) * y + i
    images = np.sin(phase).astype(np.float32)
    probs = np.zeros((b, CLS), np.float32)
    probs[np.arange(b), np.arange(b) % CLS] = 1
    boxes = []
    for n in range(b):
        o = 0.015 * n
        fr = [(0.03 + o, 0.05, 0.31 + o, 0.36), (0.39, 0.23, 0.86, 0.78), (0.16, 0.62, 0.28, 0.75), (0, 0, 1, 0.75)]
        boxes.append([(*(np.float32(v) * s for v in f), (n + k) % DET) for k, f in enumerate(fr)])
    i, y, x = np.meshgrid(np.arange(b), np.arange(s), np.arange(s), indexing="ij")
    seg = np.where(y < 4, 255, (x * 7 // s + y * 3 // s + i) % SEG).astype(np.uint8)
    depth = (1 + x / s + 0.5 * y / s + 0.1 * i).astype(np.float32)
    return {"images": images, "cls_probs": probs, "boxes": boxes, "seg": seg, "depth": depth,
            "depth_valid": (x >= 2).astype(np.uint8)}


def assign_targets(boxes, levels):
    """FCOS targets of one image (trainer/src/model/fcos.rs::assign_targets), vectorised over locations."""
    labels, ltrb, ctr = [], [], []
    b = np.array([bx[:4] for bx in boxes], np.float32).reshape(-1, 4)
    cls = np.array([bx[4] for bx in boxes], np.int64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for li, (h, w, s) in enumerate(levels):
        lo, hi = SIZE_RANGES[min(li, len(SIZE_RANGES) - 1)]
        yy, xx = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
        x, y = xx.reshape(-1, 1).astype(np.float32), yy.reshape(-1, 1).astype(np.float32)
        d = np.stack([x - b[:, 0], y - b[:, 1], b[:, 2] - x, b[:, 3] - y], -1)  # [N, boxes, 4]
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        m = d.max(-1)
        ok = (d.min(-1) > 0) & (np.abs(x - cx) < CENTER_RADIUS * s) & (np.abs(y - cy) < CENTER_RADIUS * s)
        ok &= (m >= lo) & (m <= hi)
        a = np.where(ok, area, np.inf)
        best = a.argmin(1)
        pos = np.isfinite(a.min(1))
        db = d[np.arange(len(best)), best]
        labels.append(np.where(pos, cls[best], -1))
        ltrb.append(np.where(pos[:, None], db / s, 1.0).astype(np.float32))
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.sqrt((np.minimum(db[:, 0], db[:, 2]) / np.maximum(db[:, 0], db[:, 2]))
                        * (np.minimum(db[:, 1], db[:, 3]) / np.maximum(db[:, 1], db[:, 3])))
        ctr.append(np.where(pos, c, 0.0).astype(np.float32))
    return np.concatenate(labels), np.concatenate(ltrb), np.concatenate(ctr)


def giou(p, t):
    area_p = (p[..., 0] + p[..., 2]) * (p[..., 1] + p[..., 3])
    area_t = (t[..., 0] + t[..., 2]) * (t[..., 1] + t[..., 3])
    inter = (torch.minimum(p[..., 0], t[..., 0]) + torch.minimum(p[..., 2], t[..., 2])) * (
        torch.minimum(p[..., 1], t[..., 1]) + torch.minimum(p[..., 3], t[..., 3]))
    union = area_p + area_t - inter
    enclose = ((torch.maximum(p[..., 0], t[..., 0]) + torch.maximum(p[..., 2], t[..., 2]))
               * (torch.maximum(p[..., 1], t[..., 1]) + torch.maximum(p[..., 3], t[..., 3]))).clamp_min(EPS)
    return inter / union.clamp_min(EPS) - (enclose - union) / enclose


def normalise_depth(d, valid):
    """Median 0, mean absolute deviation 1 over the valid pixels of each image."""
    out = torch.zeros_like(d)
    for n in range(d.shape[0]):
        v = d[n][valid[n]]
        med = v.sort().values[len(v) // 2]
        mad = (v - med).abs().double().mean()
        out[n][valid[n]] = (v - med) * (1 / mad if mad > 1e-12 else 1.0)
    return out


def task_losses(out, batch):
    """Per-task losses of trainer/src/loss.rs, every row present."""
    cls_logits, reg, ctr, levels = out["det"]
    losses = {"cls": -(torch.from_numpy(batch["cls_probs"]) * out["cls"].log_softmax(-1)).sum(-1).mean()}
    targets = [assign_targets(b, levels) for b in batch["boxes"]]
    labels = torch.from_numpy(np.stack([t[0] for t in targets]))
    ltrb = torch.from_numpy(np.stack([t[1] for t in targets]))
    cness = torch.from_numpy(np.stack([t[2] for t in targets]))
    pos = (labels >= 0).float()
    num_pos = pos.sum().clamp_min(1)
    onehot = F.one_hot(labels.clamp_min(0), DET).float() * pos.unsqueeze(-1)
    p = cls_logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(cls_logits, onehot, reduction="none")
    p_t = p * onehot + (1 - p) * (1 - onehot)
    alpha_t = onehot * FOCAL_ALPHA + (1 - onehot) * (1 - FOCAL_ALPHA)
    focal = (alpha_t * ce * (1 - p_t) ** 2).sum() / num_pos
    w = cness * pos
    giou_loss = (w * (1 - giou(reg, ltrb))).sum() / w.sum().clamp_min(EPS)
    ctr_loss = (F.binary_cross_entropy_with_logits(ctr, cness, reduction="none") * pos).sum() / num_pos
    losses["det"] = focal + giou_loss + ctr_loss
    seg_t = torch.from_numpy(batch["seg"].astype(np.int64))
    ce = F.cross_entropy(out["seg"], seg_t, ignore_index=255, reduction="none")
    losses["seg"] = (ce.sum((1, 2)) / (seg_t != 255).float().sum((1, 2)).clamp_min(1)).mean()
    valid = torch.from_numpy(batch["depth_valid"]).bool()
    target, mask = normalise_depth(torch.from_numpy(batch["depth"]), valid), valid.float()
    pred = out["depth"]
    n = mask.sum((1, 2)).clamp_min(1)
    mp, md = (pred * mask).sum((1, 2)) / n, (target * mask).sum((1, 2)) / n
    pc, dc = (pred - mp.view(-1, 1, 1)) * mask, (target - md.view(-1, 1, 1)) * mask
    var, cov = (pc * pc).sum((1, 2)) / n, (pc * dc).sum((1, 2)) / n
    s = torch.where(var > 1e-12, cov / var.clamp_min(1e-12), torch.zeros_like(var))
    aligned = pred * s.view(-1, 1, 1) + (md - s * mp).view(-1, 1, 1)
    losses["depth"] = (((aligned - target).abs() * mask).sum((1, 2)) / n).mean()
    return losses


def torch_name(rust):
    """Name of a Rust variable (trainer/benches/step.rs writes them with '/' replaced by '.') in this model."""
    n = rust.removeprefix("student.").replace(".conv.", ".0.").replace(".bn.", ".1.")
    n = re.sub(r"stage(\d)\.block(\d+)", lambda m: f"stages.{int(m[1]) - 2}.{m[2]}", n)
    n = re.sub(r"(lateral|output)(\d)", lambda m: f"{m[1]}.{int(m[2]) - 2}", n)
    n = re.sub(r"(_tower)\.(conv|gn)(\d+)", lambda m: f"{m[1]}.{3 * int(m[3]) + (m[2] == 'gn')}", n)
    n = re.sub(r"(seg_head|depth_head)\.(conv|gn)(\d+)", lambda m: f"{m[1]}.0.{3 * int(m[3]) + (m[2] == 'gn')}", n)
    return re.sub(r"(seg_head|depth_head)\.pred", r"\1.1", n)


def load_rust_weights(model, path):
    """Copy the Rust student's initial weights into `model`; every tensor must find its place."""
    with np.load(path) as z:
        state = {torch_name(k): torch.from_numpy(z[k]) for k in z.files}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{path}: weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="r18@128,tiny@128,tiny@640", help="model@pixels,...")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="measuring time per run, after 2 warm-up steps (at least 4 steps)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--bench-dir", default="out/bench",
                    help="where the Rust bench left train-step-weights-<model>.npz (used when present)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    assert args.batch % world == 0, "--batch must divide over WORLD_SIZE"
    local_batch = args.batch // world
    rows = []
    say = print if rank == 0 else (lambda *a, **k: None)
    say("| model | batch × px | ranks × threads | trainable params | FCOS positives | ms/step (median) "
        "| ms/step (mean) | samples/s |")
    say("|---|---|---|---|---|---|---|---|")
    for run in filter(None, args.runs.split(",")):
        name, size = (run.split("@") + ["128"])[:2]
        size = int(size)
        batch = synthetic_batch(local_batch, size)
        torch.manual_seed(0)
        model = Student(*MODELS[name]).train()
        trainable = sum(p.numel() for p in model.parameters())
        initial = None
        weights = os.path.join(args.bench_dir, f"train-step-weights-{name}-{size}.npz")
        if os.path.exists(weights):  # the Rust initial weights: the losses must come out the same
            load_rust_weights(model, weights)
            initial = {k: v.item() for k, v in task_losses(model(torch.from_numpy(batch["images"])), batch).items()}
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
        decay = [p for p in model.parameters() if p.dim() > 1]
        rest = [p for p in model.parameters() if p.dim() <= 1]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}],
                              lr=0.01, momentum=0.9)

        with torch.no_grad():  # parity check with Rust: the same FCOS positives
            levels = model(torch.from_numpy(batch["images"]))["det"][3]
        positives = int(sum((assign_targets(b, levels)[0] >= 0).sum() for b in batch["boxes"]))

        def step():
            """Seconds in forward, losses, zero-grad + backward, and the update (as in the Rust bench)."""
            t0 = time.perf_counter()
            out = model(torch.from_numpy(batch["images"]))
            t1 = time.perf_counter()
            total = sum(task_losses(out, batch).values())
            t2 = time.perf_counter()
            opt.zero_grad()
            total.backward()
            t3 = time.perf_counter()
            opt.step()
            assert math.isfinite(total.item())
            return [t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3]

        for _ in range(2):
            step()
        start, phases = time.perf_counter(), []
        while len(phases) < 4 or time.perf_counter() - start < args.seconds:
            phases.append(step())
        med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        median, mean = med([sum(p) for p in phases]), sum(sum(p) for p in phases) / len(phases)
        parts = [med([p[i] for p in phases]) * 1e3 for i in range(4)]
        say(f"| {name} | {args.batch} × {size} | {world} × {args.threads} | {trainable} | {positives} | "
            f"{median * 1e3:.1f} | {mean * 1e3:.1f} | {args.batch / median:.1f} |")
        rows.append({"model": name, "batch": args.batch, "size": size, "threads": args.threads, "ranks": world,
                     "trainable_params": trainable, "det_positives": positives, "initial_losses": initial,
                     "steps": len(phases), "ms_median": median * 1e3,
                     "ms_phases": dict(zip(("forward", "losses", "backward", "update"), parts)),
                     "ms_mean": mean * 1e3, "samples_per_s": args.batch / median})
    if world > 1:
        dist.destroy_process_group()
    if args.json and rank == 0:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
