"""What every job of bench/aimet_child.py shares: runs INSIDE build/aimet-venv (aimet-onnx 2.42.0).

The shipped configs' folder in the installed wheel, aimet's sim built quietly on one thread (the
machine is shared), the samples and outputs in the forms the jobs exchange with bench_aimet.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import onnx

import aimet_onnx
from aimet_onnx import quantsim as aq

CONFIG_DIR = Path(aimet_onnx.__file__).parent / "common" / "quantsim_config"
SESSION = {"intra_op_num_threads": 1, "inter_op_num_threads": 1}  # the machine is shared


def aimet_version() -> str:
    from importlib.metadata import version
    return version("aimet-onnx")


def quiet():
    """aimet logs every step at INFO and warns through Python warnings: keep stdout for JSON."""
    logging.disable(logging.INFO)
    return contextlib.redirect_stdout(io.StringIO())


def build_sim(model_path: Path, config_path: Path):
    """aimet's QuantizationSimModel (int8/int8, min-max: its defaults) for one model and config file."""
    json.loads(config_path.read_text())  # a broken config fails here, with its name in the traceback
    model = onnx.load(str(model_path))
    with quiet():
        return aq.QuantizationSimModel(model, config_file=str(config_path), session_options_kwargs=SESSION)


def load_samples(path: str, count: int) -> list[dict]:
    """The first `count` samples of an .npz keyed by input name, batch 1 each."""
    data = np.load(path)
    n = min(len(data[k]) for k in data.files)
    return [{k: data[k][i:i + 1] for k in data.files} for i in range(min(n, count))]


def sqnr(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    r = np.concatenate([a.ravel() for a in ref]).astype(np.float64)
    t = np.concatenate([a.ravel() for a in test]).astype(np.float64)
    noise = np.sum((r - t) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(r ** 2) / noise))


def ort_session(model: str | onnx.ModelProto):
    """onnxruntime without graph optimisation (QDQ nodes stay float ops), one thread."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_all_outputs(model_path: str, samples: list[dict]) -> list[list[np.ndarray]]:
    session = ort_session(model_path)
    return [list(session.run(None, s)) for s in samples]
