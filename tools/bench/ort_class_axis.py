"""Time ONNX Runtime's CPU kernels for the per-pixel work of segmentation post-processing, one op per graph.

Why the labeler's `postprocess = "auto"` keeps its own loops on the CPU (BENCHMARKS.md, real-architecture
section): reductions over the class axis (axis 1 of NCHW) are much slower than elementwise work. One thread,
a 1 x 21 x 320 x 320 float tensor (LR-ASPP's output), median of 20 runs after one warm-up.

    python tools/bench/ort_class_axis.py
"""

import statistics
import time

import numpy as np
import onnx.helper as h
import onnxruntime as ort
from onnx import TensorProto as T

SHAPE = [1, 21, 320, 320]


def model(nodes, out_type, initializers=()):
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, SHAPE)],
                         [h.make_tensor_value_info("y", out_type, None)], initializer=list(initializers))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()


def main():
    axes = h.make_tensor("axes", T.INT64, [1], [1])
    cases = {
        "Exp (elementwise)": model([h.make_node("Exp", ["x"], ["y"])], T.FLOAT),
        "ReduceMax axis 1": model([h.make_node("ReduceMax", ["x"], ["y"], axes=[1])], T.FLOAT),
        "ArgMax axis 1": model([h.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)], T.INT64),
        "ReduceSum axis 1": model([h.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], T.FLOAT, [axes]),
        "Softmax axis 1": model([h.make_node("Softmax", ["x"], ["y"], axis=1)], T.FLOAT),
    }
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    print(f"onnxruntime {ort.__version__}, input {SHAPE}, 1 thread")
    print("| op | ms (median of 20) |")
    print("|---|---|")
    for name, m in cases.items():
        session = ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"])
        session.run(None, {"x": x})
        times = []
        for _ in range(20):
            t = time.perf_counter()
            session.run(None, {"x": x})
            times.append(time.perf_counter() - t)
        print(f"| {name} | {1000 * statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
