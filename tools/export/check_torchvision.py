"""Check that `trainer export`'s safetensors load into torchvision without renaming.

Loads `student.safetensors` (with a minimal reader: the format is an 8-byte header length, a JSON header,
then raw little-endian tensors; `safetensors.torch.load_file` reads the same file) and
- loads the trunk and `fc.*` into `torchvision.models.resnet<depth>(num_classes=K)` with `strict=True`,
  runs it on the `input` tensor of `--expected` and compares its logits with the student's `cls_logits`
  there (both computed by the caller, in tch);
- when the file has `fpn.*`, loads them into torchvision's `FeaturePyramidNetwork` with `LastLevelP6P7`
  extra blocks, also with `strict=True`.

Prints one JSON line (the max abs difference of the logits); exits 1 when a load fails or the logits differ
by more than `--tolerance` relative to their scale.

    python tools/export/check_torchvision.py --weights out/student.safetensors --depth 18 --expected check.safetensors
"""

import argparse
import json
import struct
import sys

import numpy as np
import torch
import torchvision
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "F16": np.float16, "U8": np.uint8}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(array.copy())
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--depth", type=int, required=True, choices=[18, 34, 50, 101, 152])
    p.add_argument("--expected", required=True, help="safetensors with `input` (normalised NCHW) and `cls_logits`")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args()

    weights = load_safetensors(args.weights)
    trunk = {k: v for k, v in weights.items() if not k.startswith(("fpn.", "det_head.", "seg_head.", "depth_head.", "normals_head."))}
    num_classes = trunk["fc.weight"].shape[0]
    resnet = getattr(torchvision.models, f"resnet{args.depth}")(weights=None, num_classes=num_classes).eval()
    resnet.load_state_dict(trunk, strict=True)
    report = {"trunk_tensors": len(trunk), "num_classes": num_classes}

    fpn = {k[len("fpn.") :]: v for k, v in weights.items() if k.startswith("fpn.")}
    if fpn:
        in_channels = [fpn[f"inner_blocks.{i}.0.weight"].shape[1] for i in range(4)]
        channels = fpn["inner_blocks.0.0.weight"].shape[0]
        pyramid = FeaturePyramidNetwork(in_channels, channels, extra_blocks=LastLevelP6P7(channels, channels))
        pyramid.load_state_dict(fpn, strict=True)
        report["fpn_tensors"] = len(fpn)

    expected = load_safetensors(args.expected)
    with torch.no_grad():
        logits = resnet(expected["input"])
    want = expected["cls_logits"]
    diff = (logits - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    report.update(max_abs_diff=diff, logits_scale=scale)
    print(json.dumps(report))
    return 0 if diff <= args.tolerance * scale else 1


if __name__ == "__main__":
    sys.exit(main())
