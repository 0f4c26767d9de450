"""A YOLOv8-style detector head with the output layout that breaks one-grid quantization.

    python sample_models/make_yolo_head.py [--out build/models/zoo/yolo_head.onnx] [--classes 8]

Why: a YOLOv8 export concatenates box coordinates in pixels (0..320) with class probabilities
(0..1) into one output ``[N, 4 + C, anchors]``. One 8-bit grid over that tensor has a step of
~1.25, so every probability rounds to 0: the pooled SQNR stays high (the boxes dominate) while
detection collapses. This model reproduces that layout without any download: a small conv
backbone (four 3x3 stride-2 Conv + SiLU, written as Sigmoid * x as exporters do) feeding two
scales (stride 8 and 16); per scale a 1x1 box conv -> Sigmoid * 320 and a 1x1 class conv ->
Sigmoid, each reshaped to [N, k, H*W]; the scales are concatenated along the anchors and box
and class parts along axis 1 into ``output0``. Input ``images`` [N, 3, H, W] in [0, 1], H and W
dynamic (multiples of 16). Opset 17.

The weights are random but structured (numpy PCG64, seed 0, He-scaled, first layer with
colour/edge filters); the 1x1 head convs are rescaled so that box logits spread the boxes over
0..320 and class logits have a std of 2.5, with biases that put about 0.1 % of the anchor/class scores
above 0.5 on a fixed set of synthetic images (blobs, stripes, noise): the float model makes a realistic
handful of confident detections per image. Deterministic: the same file on every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "models" / "zoo" / "yolo_head.onnx"
BOX_SCALE = 320.0  # boxes are Sigmoid * 320 pixels: cx, cy, w, h
WIDTHS = (16, 32, 48, 64)  # backbone channels, each stage stride 2
TARGET_RATE = 0.001  # share of anchor/class scores above 0.5 on the synthetic images
BOX_STD, CLS_STD = 1.5, 2.5  # spread of the box and class logits on the synthetic images


def _weights(classes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    cin = 3
    for k, cout in enumerate(WIDTHS):
        fan_in = cin * 9
        conv = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if k == 0:  # colour-opponent and edge filters: responses follow image structure
            sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 4
            conv[:4] = 0
            conv[0, :] = sobel
            conv[1, :] = sobel.T
            conv[2, 0], conv[2, 2] = 1 / 9, -1 / 9
            conv[3, 1], conv[3, 2] = 1 / 9, -1 / 9
        w[f"conv{k}.w"] = conv
        w[f"conv{k}.b"] = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        cin = cout
    for scale, width in (("p3", WIDTHS[2]), ("p4", WIDTHS[3])):
        w[f"{scale}.box.w"] = (rng.standard_normal((4, width, 1, 1)) * np.sqrt(1.0 / width)).astype(np.float32)
        w[f"{scale}.box.b"] = np.zeros(4, np.float32)
        w[f"{scale}.cls.w"] = (rng.standard_normal((classes, width, 1, 1)) * np.sqrt(2.0 / width)).astype(np.float32)
        w[f"{scale}.cls.b"] = np.zeros(classes, np.float32)
    return w


def build(weights: dict[str, np.ndarray], classes: int) -> onnx.ModelProto:
    """The graph of the module docstring over `weights`."""
    nodes, x = [], "images"

    def silu(name: str, inp: str) -> str:
        nodes.append(helper.make_node("Sigmoid", [inp], [f"{name}.sig"]))
        nodes.append(helper.make_node("Mul", [inp, f"{name}.sig"], [f"{name}.out"]))
        return f"{name}.out"

    feats = {}
    for k in range(len(WIDTHS)):
        nodes.append(helper.make_node("Conv", [x, f"conv{k}.w", f"conv{k}.b"], [f"conv{k}"],
                                      kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
        x = silu(f"act{k}", f"conv{k}")
        feats[k] = x
    parts: dict[str, list[str]] = {"box": [], "cls": []}
    for scale, feat in (("p3", feats[2]), ("p4", feats[3])):
        for part, count in (("box", 4), ("cls", classes)):
            nodes.append(helper.make_node("Conv", [feat, f"{scale}.{part}.w", f"{scale}.{part}.b"],
                                          [f"{scale}.{part}"], kernel_shape=[1, 1]))
            nodes.append(helper.make_node("Sigmoid", [f"{scale}.{part}"], [f"{scale}.{part}.sig"]))
            last = f"{scale}.{part}.sig"
            if part == "box":
                nodes.append(helper.make_node("Mul", [last, "box_scale"], [f"{scale}.box.px"]))
                last = f"{scale}.box.px"
            nodes.append(helper.make_node("Reshape", [last, f"shape{count}"], [f"{scale}.{part}.flat"]))
            parts[part].append(f"{scale}.{part}.flat")
    for part in parts:
        nodes.append(helper.make_node("Concat", parts[part], [f"{part}.all"], axis=2))
    nodes.append(helper.make_node("Concat", ["box.all", "cls.all"], ["output0"], axis=1))
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits += [numpy_helper.from_array(np.array(BOX_SCALE, np.float32), "box_scale"),
              numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape4"),
              numpy_helper.from_array(np.array([0, classes, -1], np.int64), f"shape{classes}")]
    graph = helper.make_graph(
        nodes, "yolo_head",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 4 + classes, "anchors"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qtool-zoo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def synthetic_images(n: int = 8, size: int = 320, seed: int = 1) -> np.ndarray:
    """Random scenes (Gaussian blobs of random colour on a gradient, stripes and pixel noise for
    texture), [n, 3, size, size] in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        img = rng.uniform(0, 1, (3, 1, 1)) * (0.5 + 0.5 * xx)[None]
        for _ in range(12):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            img = img * (1 - blob) + rng.uniform(0, 1, (3, 1, 1)) * blob
        freq, phase = rng.uniform(10, 60, 2), rng.uniform(0, 2 * np.pi)
        stripes = np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + phase)  # texture, as photos have
        out[k] = img + 0.15 * stripes + 0.1 * rng.standard_normal((3, size, size))
    return out.clip(0, 1)


def make(classes: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Build, then rescale the 1x1 head convs from their logits on synthetic images: box logits
    centred with std BOX_STD (boxes spread over 0..320), class logits with std CLS_STD and a
    per-class bias that puts TARGET_RATE of the scores above 0.5 (deterministic)."""
    import onnxruntime as ort

    weights = _weights(classes, seed)
    probe = build(weights, classes)
    heads = [f"{scale}.{part}" for part in ("box", "cls") for scale in ("p3", "p4")]
    for name in heads:  # expose the head logits (before Sigmoid)
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(heads, sess.run(heads, {"images": synthetic_images()})))
    for part, std in (("box", BOX_STD), ("cls", CLS_STD)):
        logits = np.concatenate([got[f"{s}.{part}"].reshape(*got[f"{s}.{part}"].shape[:2], -1)
                                 for s in ("p3", "p4")], axis=2)
        per_channel = logits.transpose(1, 0, 2).reshape(logits.shape[1], -1).astype(np.float64)
        gain = std / per_channel.std(axis=1)
        if part == "box":
            bias = -per_channel.mean(axis=1) * gain
        else:
            bias = -np.quantile(per_channel * gain[:, None], 1 - TARGET_RATE, axis=1)
        for scale in ("p3", "p4"):
            weights[f"{scale}.{part}.w"] = (weights[f"{scale}.{part}.w"] * gain[:, None, None, None]).astype(np.float32)
            weights[f"{scale}.{part}.b"] = np.round(bias, 3).astype(np.float32)
    return build(weights, classes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(make(args.classes, args.seed), str(args.out))
    print(f"wrote {args.out}: images [N, 3, H, W] -> output0 [N, {4 + args.classes}, anchors]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
