"""Write a model of any size with its weights in external data: a stack of MatMul+Add and Gemm
layers (ReLU between), for the tests and measurements of models over protobuf's 2 GB limit.

Why generated: a model over 2 GB cannot be committed, and the tests need one of a chosen size
(a few MB in the fast tests, 2.2 GB in the slow one). The weights are written one layer at a
time straight into `<name>.data` (onnx's external-data layout: one file, each tensor at a
multiple of 4096 bytes), so writing a 2.2 GB model needs no more memory than one layer.
Layers alternate MatMul(x, W[d,d]) + Add(b) and Gemm(x, W[d,d], b, transB=1); weights are
normal with std 1/sqrt(d), so activations stay of order one through the stack. Deterministic.

    python sample_models/make_large_model.py --size 2.2G --out build/large/large.onnx [--width 4096]
    python sample_models/make_large_model.py --size 8M --out /tmp/small.onnx --data /tmp/calib.npz
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 4096


def parse_size(text: str) -> int:
    """'2.2G', '300M', '64K' or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMG]?)B?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a size like 2.2G, 300M or 65536")
    return int(float(match[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match[2]])


def default_width(size: int) -> int:
    """4096 for models of a GB or more (64 MB layers), narrower for small ones (>= 4 layers)."""
    width = 4096
    while width > 64 and 4 * width * width * 4 > size:
        width //= 2
    return width


def _external(name: str, shape: tuple[int, ...], location: str, offset: int, length: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def make_large_model(path: str | Path, size: int, width: int | None = None, seed: int = 0) -> Path:
    """Write `path` (+ `path`.data) with about `size` bytes of weights; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = width or default_width(size)
    layers = max(2, round(size / (4 * width * (width + 1))))
    rng = np.random.default_rng(seed)
    location = f"{path.name}.data"
    nodes, initializers, x = [], [], "x"
    with open(path.parent / location, "wb") as data:
        for index in range(layers):
            tensors = {f"w{index}": (width, width), f"b{index}": (width,)}
            for name, shape in tensors.items():
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(width ** -0.5)
                data.write(b"\0" * (-data.tell() % ALIGN))
                offset = data.tell()
                values.tofile(data)
                initializers.append(_external(name, shape, location, offset, values.nbytes))
                del values
            y = f"y{index}"
            if index % 2:
                nodes.append(helper.make_node("Gemm", [x, f"w{index}", f"b{index}"], [y], transB=1,
                                              name=f"gemm{index}"))
            else:
                nodes.append(helper.make_node("MatMul", [x, f"w{index}"], [f"m{index}"], name=f"matmul{index}"))
                nodes.append(helper.make_node("Add", [f"m{index}", f"b{index}"], [y], name=f"add{index}"))
            if index < layers - 1:
                nodes.append(helper.make_node("Relu", [y], [f"r{index}"], name=f"relu{index}"))
                y = f"r{index}"
            x = y
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="qtool make_large_model")
    path.write_bytes(model.SerializeToString())
    return path


def write_data(path: str | Path, width: int, samples: int = 8, seed: int = 1) -> Path:
    """Calibration data for the model: `samples` rows of `width` normal values, input 'x'."""
    path = Path(path)
    np.savez(path, x=np.random.default_rng(seed).standard_normal((samples, width), dtype=np.float32))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, required=True, help="weights in bytes: 2.2G, 300M, 65536")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file (its data goes beside it)")
    parser.add_argument("--width", type=int, help="layer width (default: 4096 from 256 MB on, less below)")
    parser.add_argument("--data", type=Path, help="also write calibration data (.npz, input 'x') here")
    parser.add_argument("--samples", type=int, default=8, help="samples in --data (default 8)")
    args = parser.parse_args()
    make_large_model(args.out, args.size, args.width)
    width = args.width or default_width(args.size)
    if args.data:
        write_data(args.data, width, args.samples)
    data = args.out.with_name(f"{args.out.name}.data")
    print(f"wrote {args.out} and {data} ({data.stat().st_size / (1 << 20):.1f} MiB of weights, width {width})")


if __name__ == "__main__":
    main()
