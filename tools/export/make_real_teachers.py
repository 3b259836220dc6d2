"""Export real-architecture teachers (random weights) for the labeler benchmark and tests.

The demo teachers are tiny; users bring torchvision, MiDaS/DPT and YOLO exports whose inputs are larger and
whose outputs are heavier (a 21 x 320 x 320 segmentation map is 8.6 MB of floats per image). This script makes
the same kinds of models, exported the way users export them (`torch.onnx.export(..., dynamo=False)`, static
shapes, batch 1), so `make bench-label` can measure the labeler's host work on them:

    mobilenet_v3_large.onnx   torchvision MobileNetV3-Large classification, [1,3,224,224] -> logits [1,1000]
    lraspp.onnx               torchvision LR-ASPP MobileNetV3-Large segmentation, 21 classes, [1,3,320,320]
                              -> `out` logits [1,21,320,320]
    ssdlite.onnx              torchvision SSDlite320 MobileNetV3-Large detection, [3,320,320] (no batch axis)
                              -> boxes [K,4], scores [K], labels [K]
    dpt.onnx                  transformers DPTForDepthEstimation from a small DPTConfig (4 ViT layers, width
                              192), [1,3,256,256] -> predicted_depth [1,256,256]

Weights are random (no hub downloads; torch.manual_seed fixes them), which is all a benchmark of host work
needs; the architectures, operators and tensor sizes are the real ones. Needs `transformers` for the DPT
(tools/export/requirements-real.txt; `make real-teachers` installs it). The teacher spec for these files is
teachers/real.toml.

    python tools/export/make_real_teachers.py --out out/real-teachers
"""

import argparse
import json
import os
import sys
import warnings

import torch
import torchvision


def export(model, example, path, input_name, output_names):
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), path, input_names=[input_name], output_names=output_names,
            opset_version=17, dynamo=False,
        )


class SegOut(torch.nn.Module):
    """torchvision segmentation models return a dict; export its `out` entry, as users do."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


class DetOut(torch.nn.Module):
    """A torchvision detector on one `[3,H,W]` image, returning boxes, scores, labels (RetinaNet/SSD order)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        d = self.model([x])[0]
        return d["boxes"], d["scores"], d["labels"]


class DepthOut(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).predicted_depth


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for the .onnx files")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    made = {}

    def path(name):
        made[name] = os.path.join(args.out, name)
        return made[name]

    torch.manual_seed(args.seed)
    cls = torchvision.models.mobilenet_v3_large(weights=None)
    export(cls, torch.rand(1, 3, 224, 224), path("mobilenet_v3_large.onnx"), "input", ["logits"])

    torch.manual_seed(args.seed + 1)
    seg = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=21)
    export(SegOut(seg), torch.rand(1, 3, 320, 320), path("lraspp.onnx"), "input", ["out"])

    torch.manual_seed(args.seed + 2)
    det = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=91)
    # torchvision's defaults (score_thresh 0.001, 300 detections) keep up to 300 boxes, as a trained model's
    # export does; with random weights none of them reaches the labeler's 0.5.
    export(DetOut(det), torch.rand(3, 320, 320), path("ssdlite.onnx"), "image", ["boxes", "scores", "labels"])

    try:
        from transformers import DPTConfig, DPTForDepthEstimation
    except ImportError:
        print("make_real_teachers: transformers is not installed (pip install -r tools/export/requirements-real.txt)",
              file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(args.seed + 3)
    config = DPTConfig(
        image_size=256, patch_size=16, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
        intermediate_size=768, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64, head_in_index=-1,
    )
    depth = DPTForDepthEstimation(config)
    export(DepthOut(depth), torch.rand(1, 3, 256, 256), path("dpt.onnx"), "pixel_values", ["predicted_depth"])

    print(json.dumps({name: os.path.getsize(p) for name, p in made.items()}))


if __name__ == "__main__":
    main()
