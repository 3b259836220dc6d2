"""Turn the student's traced TorchScript (from `trainer export`) into `student.pt` and `student.onnx`.

`trainer export` traces the student's Rust forward with libtorch. A traced method saved from Rust must have
one output, so the trace returns every head's output flattened and concatenated (`[1, total]`); this
script splits it back (`--outputs name:kind:shape`, in order) and saves the result as TorchScript, input
`[1, 3, S, S]` RGB in [0, 1] with the image at the top left and the rest filled with the ImageNet mean
colour (the trainer's evaluation letterbox).

Tracing from Rust also records every shape as a constant, so for ONNX a wrapper adds what needs dynamic
shapes, and nothing else: it takes an image-sized `[1, 3, h, w]` input with max(h, w) = S, pads it at the
bottom and right with the mean colour, runs the network unchanged, and crops the dense outputs back to
`h x w`. The network itself is never defined a second time here.

`trainer export` runs this file with the project's Python (MUST_PYTHON, else .venv/bin/python); by hand:

    python tools/export/torchscript_to_onnx.py --packed packed.pt --torchscript student.pt \
        --onnx student.onnx --size 96 --mean 0.485,0.456,0.406 \
        --outputs cls_logits:static:1x8,det:static:1x9x189,seg_logits:dense:1x7x96x96,depth:dense:1x96x96

It ends by running ONNX Runtime (when installed) and the TorchScript module on the same non-square input and
prints the largest absolute difference per output.
"""

import argparse
import json
import math
import sys
import warnings

MISSING_MODULE_EXIT = 3


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packed", required=True, help="the traced student with its outputs concatenated")
    p.add_argument("--torchscript", required=True, help="the TorchScript file to write (student.pt)")
    p.add_argument("--onnx", required=True, help="the ONNX file to write (student.onnx)")
    p.add_argument("--size", type=int, required=True, help="the side S of the traced square input")
    p.add_argument("--mean", required=True, help="padding colour, RGB in [0, 1], comma separated")
    p.add_argument("--outputs", required=True, help="name:static|dense:AxBx..., in the packed order")
    p.add_argument("--input-name", default="images")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--metadata", default="{}", help="JSON object stored as the model's must.export metadata")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
        import onnx
    except ImportError as e:
        print(f"missing Python module {e.name!r}: export needs torch and onnx ({sys.executable})", file=sys.stderr)
        return MISSING_MODULE_EXIT
    outputs = [o.split(":") for o in args.outputs.split(",")]
    if any(len(o) != 3 or o[1] not in ("static", "dense") for o in outputs):
        print(f"--outputs {args.outputs!r}: expected name:static|dense:AxBx...,...", file=sys.stderr)
        return 2
    names = [n for n, _, _ in outputs]
    dense = [k == "dense" for _, k, _ in outputs]
    shapes = [[int(d) for d in s.split("x")] for _, _, s in outputs]
    size = args.size
    mean = torch.tensor([float(v) for v in args.mean.split(",")]).view(1, 3, 1, 1)

    packed = torch.jit.load(args.packed, map_location="cpu").eval()

    class Student(torch.nn.Module):
        """The traced network, its concatenated output split back into one tensor per head."""

        def __init__(self):
            super().__init__()
            self.packed = packed

        def forward(self, images):
            flat = self.packed(images)
            sizes = [math.prod(s[1:]) for s in shapes]
            parts = torch.split(flat, sizes, dim=1)
            return tuple(p.reshape(s) for p, s in zip(parts, shapes))

    full_input = torch.zeros(1, 3, size, size) + mean
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        student = torch.jit.trace(Student().eval(), full_input, check_trace=False)
    student.save(args.torchscript)
    with torch.no_grad():
        full = student(full_input)
    if [list(t.shape) for t in full] != shapes:
        print(f"the traced outputs have shapes {[list(t.shape) for t in full]}, expected {shapes}", file=sys.stderr)
        return 2

    class Letterboxed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            self.register_buffer("mean", mean)

        def forward(self, images):
            h, w = images.shape[2], images.shape[3]
            canvas = F.pad(images - self.mean, (0, size - w, 0, size - h)) + self.mean
            outs = self.student(canvas)
            return tuple(o[..., :h, :w] if d else o for o, d in zip(outs, dense))

    # A non-square example so that padding and cropping are recorded with their sizes, not as no-ops.
    example = torch.rand(1, 3, size, max(1, size * 3 // 4))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Letterboxed().eval(), example, check_trace=False)
        axes = {args.input_name: {2: "height", 3: "width"}}
        for name, t, d in zip(names, full, dense):
            if d:
                axes[name] = {t.dim() - 2: "height", t.dim() - 1: "width"}
        torch.onnx.export(
            traced,
            (example,),
            args.onnx,
            dynamo=False,
            input_names=[args.input_name],
            output_names=names,
            dynamic_axes=axes,
            opset_version=args.opset,
        )

    model = onnx.load(args.onnx)
    # The exporter leaves symbolic names on dimensions it could not follow; write the known ones.
    for out, t, d in zip(model.graph.output, full, dense):
        dims = out.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            if d and i >= t.dim() - 2:
                dim.dim_param = "height" if i == t.dim() - 2 else "width"
            else:
                dim.dim_value = t.shape[i]
    meta = model.metadata_props.add()
    meta.key = "must.export"
    meta.value = args.metadata
    onnx.checker.check_model(model)
    onnx.save(model, args.onnx)

    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        print("check skipped: onnxruntime is not installed")
        return 0
    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, max(1, size * 2 // 3), size, generator=torch.Generator().manual_seed(0))
    got = session.run(names, {args.input_name: x.numpy()})
    canvas = torch.zeros(1, 3, size, size) + mean
    canvas[:, :, : x.shape[2], : x.shape[3]] = x
    with torch.no_grad():
        want = student(canvas)
    diffs, bad = {}, []
    for name, g, w, d in zip(names, got, want, dense):
        w = (w[..., : x.shape[2], : x.shape[3]] if d else w).numpy()
        diffs[name] = float(np.abs(g - w).max())
        scale = max(1.0, float(np.abs(w).max()))
        if not (np.isfinite(g).all() and np.isfinite(w).all() and diffs[name] <= 1e-3 * scale):
            bad.append(name)
    print(json.dumps({"onnxruntime_vs_torchscript_max_abs": diffs}))
    if bad:
        print(f"ONNX Runtime and TorchScript disagree (or are not finite) on {bad}: {diffs}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
