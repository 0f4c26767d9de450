"""A tiny model (Conv-BN-ReLU, Conv-ReLU, pool, Gemm on 3x8x8 inputs) and the list of every
command that writes outputs, for the output tests (external data, determinism, interruption).

Built at test time with onnx.helper, so every command runs on it in well under a second. Its
weights are large enough (>= 1 KiB, even as int8) that a model written with external data keeps
them in its `.data` file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qtool.cli import cli


def tiny_model(path: Path, *, external: bool, seed: int = 0) -> onnx.ModelProto:
    """Write the model to `path` (with every tensor in `<name>.data` when `external`)."""
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, scale: float = 0.3, low: float | None = None) -> TensorProto:
        values = rng.uniform(low, 1.5, shape) if low is not None else rng.standard_normal(shape) * scale
        return numpy_helper.from_array(values.astype(np.float32), name)

    inits = [tensor("w1", 8, 3, 3, 3, scale=0.5), tensor("b1", 8, scale=0.1), tensor("gamma", 8, low=0.5),
             tensor("beta", 8, scale=0.1), tensor("mean", 8, scale=0.1), tensor("var", 8, low=0.5),
             tensor("w2", 16, 8, 3, 3), tensor("b2", 16, scale=0.1), tensor("fc_w", 4, 16, scale=1.0),
             tensor("fc_b", 4, scale=0.1)]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn1"], name="bn1"),
             helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return model


def workspace(folder: Path, *, external: bool) -> Path:
    """`folder` with m.onnx (+ m.onnx.data), d.npz (8 samples) and l.npy (labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_model(folder / "m.onnx", external=external)
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", input=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    np.save(folder / "l.npy", rng.integers(0, 4, 8))
    return folder


RECIPE = """\
model: m.onnx
output: {output}
data:
  calibration: d.npz
  labels: l.npy
steps:
  - fold: {{}}
  - equalize: {{}}
  - calibrate: {{scheme: minmax}}
  - bias_correct: {{}}
  - simulate: {{}}
  - export: {{prefix: net}}
"""


def commands(out: str) -> list[tuple[str, list[str]]]:
    """Every command that writes files, in an order that runs (calibrate before what needs its
    pair), paths relative to the workspace, outputs under `out`. (name, arguments)."""
    cal = f"{out}/cal.onnx"
    return [
        ("fold", ["fold", "m.onnx", "-o", f"{out}/fold.onnx"]),
        ("equalize", ["equalize", "m.onnx", "-o", f"{out}/cle.onnx", "--data", "d.npz"]),
        ("calibrate", ["calibrate", "m.onnx", "--data", "d.npz", "--scheme", "minmax", "-o", f"{out}/cal"]),
        ("bias-correct", ["bias-correct", cal, "--data", "d.npz", "-o", f"{out}/bc"]),
        ("adaround", ["adaround", "m.onnx", "--data", "d.npz", "--iterations", "10", "-o", f"{out}/ada"]),
        ("simulate", ["simulate", cal, "--data", "d.npz", "--labels", "l.npy", "-o", f"{out}/sim.onnx"]),
        ("export", ["export", cal, "-o", f"{out}/exp", "--prefix", "net"]),
        ("analyze", ["analyze", cal, "--data", "d.npz", "--labels", "l.npy", "-o", f"{out}/an"]),
        ("mixed-precision", ["mixed-precision", "m.onnx", "--data", "d.npz", "--labels", "l.npy",
                             "--candidates", "w8a8,w16a16", "-o", f"{out}/mp"]),
        ("plot-ranges", ["plot-ranges", "m.onnx", "-o", f"{out}/ranges.svg"]),
        ("run", ["run", f"{out}.yaml"]),
    ]


def write_recipe(folder: Path, out: str) -> None:
    """The recipe the `run` command of `commands(out)` reads, writing into `out`/recipe."""
    (folder / f"{out}.yaml").parent.mkdir(parents=True, exist_ok=True)
    (folder / f"{out}.yaml").write_text(RECIPE.format(output=f"{Path(out).name}/recipe"))


def invoke(args: list) -> tuple[int, str]:
    """Run qtool in-process (CliRunner): (exit code, stdout and stderr). Restores the root
    logger, which the CLI points at CliRunner's stream (fixtures outside a test need that)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return result.exit_code, result.output


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}
