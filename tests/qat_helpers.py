"""Helpers of the QAT tests: calibrated pairs of any model, onnxruntime's QDQ simulation of them,
and the op-by-op comparison of the torch lowering against it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx_ir as ir

import qtool
from qtool.ir.graph import clone, load_model
from qtool.ir.qdq import build_qdq_model
from qtool.runtime.sessions import make_session

ROOT = Path(__file__).resolve().parents[1]
# Inputs whose dynamic dims need a size (others: 2 for the batch, 16 for any other)
SHAPES = {"ch_PP-OCRv4_rec_infer": {"x": (2, 3, 48, 160)}, "ppocr_cls": {"x": (2, 3, 48, 192)},
          "efficientnet_lite0": {"images": (2, 224, 224, 3)}, "ch_PP-OCRv4_det_infer": {"x": (1, 3, 160, 160)},
          "layout_cdla": {"image": (1, 3, 800, 608)}}


def random_feeds(model: ir.Model, path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian images/features, token ids below 100 and all-ones masks for integer inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.const_value is not None:
            continue
        shape = SHAPES.get(path.stem, {}).get(value.name)
        if shape is None:
            shape = tuple(2 if i == 0 and not _fixed(d) else (d if _fixed(d) else 16)
                          for i, d in enumerate(value.shape))
        if value.dtype == ir.DataType.INT64:
            feeds[value.name] = (np.ones(shape, np.int64) if "mask" in value.name
                                 else rng.integers(0, 100, shape).astype(np.int64))
        else:
            scale = 60.0 if path.stem == "efficientnet_lite0" else 1.0
            feeds[value.name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return feeds


def calibrated(path: Path, feeds: dict[str, np.ndarray], config: str = "default"):
    """(model, encodings) calibrated on `feeds` (min-max: fast and deterministic)."""
    pair = qtool.calibrate(str(path), feeds, config=config, scheme="minmax")
    return pair.model, pair.encodings


def qdq_outputs(model: ir.Model, encodings, feeds: dict[str, np.ndarray], every: bool = False) -> dict[str, np.ndarray]:
    """What `qtool simulate` runs: the QDQ model, in onnxruntime's simulate session. `every`:
    every float tensor before its quantizer, by its name in the float model."""
    qdq = build_qdq_model(model, encodings)
    if every:
        qdq = clone(qdq)
        known = {v.name for v in qdq.graph.outputs}
        for node in qdq.graph:
            for out in node.outputs:
                if out.name not in known and out.dtype == ir.DataType.FLOAT:
                    qdq.graph.outputs.append(out)
                    known.add(out.name)
    names = [v.name for v in qdq.graph.outputs]
    results = dict(zip(names, make_session(qdq, simulate=True).run(names, feeds)))
    for name in list(results):  # a quantized graph output's float value is NAME_float in the QDQ model
        if name.endswith("_float") and name[:-6] in results:
            results[name[:-6] + " (float)"] = results[name]
    return results


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference over the largest magnitude of the expected tensor."""
    if actual.shape != expected.shape:
        return float("inf")
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return float(np.abs(actual.astype(np.float64) - expected).max() / max(scale, 1e-30)) if expected.size else 0.0


def op_by_op(lowered, feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Each node's output computed in torch from onnxruntime's values of its inputs (fed back in
    before every quantizer): tensor name -> relative error against onnxruntime's value."""
    import torch

    errors = {}

    def tap(name, value):
        expected = reference.get(f"{name} (float)", reference.get(name))
        if expected is None or not value.is_floating_point():
            return value
        errors[name] = relative_error(value.detach().numpy(), expected)
        return torch.from_numpy(np.array(expected))

    with torch.no_grad():
        lowered({k: torch.from_numpy(v) for k, v in feeds.items()}, tap=tap)
    return errors


def sample_paths() -> list[Path]:
    return sorted((ROOT / "sample_models").glob("*.onnx"))


def built_paths() -> list[Path]:
    """The real models fetched into build/models (absent in a clean clone)."""
    return sorted((ROOT / "build" / "models").glob("*.onnx")) + sorted((ROOT / "build" / "models" / "zoo").glob("*.onnx"))


def float_model(path: Path) -> ir.Model:
    return load_model(path)


def _fixed(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def w4a8_block_pair(folder: Path, samples: int, seed: int) -> np.random.Generator:
    """mobilenet_block (BatchNorms unfolded, copied to folder/m.onnx) calibrated to per-tensor W4A8 on
    `samples` Gaussian inputs (folder/train.npz -> folder/ptq.onnx + ptq.encodings.json); returns the
    generator for the caller's further draws."""
    rng = np.random.default_rng(seed)
    np.savez(folder / "train.npz", input=rng.standard_normal((samples, 3, 32, 32)).astype(np.float32))
    shutil.copy(ROOT / "sample_models" / "mobilenet_block.onnx", folder / "m.onnx")
    qtool.calibrate(folder / "m.onnx", folder / "train.npz", param_bw=4, per_channel=False).save(folder / "ptq")
    return rng
