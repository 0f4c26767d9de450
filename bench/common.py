"""Shared helpers of the PTQ benchmark: data files, child processes, onnxruntime evaluation.

Everything that is timed or memory-measured runs in a child process started by `run_child`
through bench/measure.py, which reports the wall time and the child's own peak RSS (its
``os.wait4`` rusage; see measure.py for why the launcher is needed). It also enforces a time
limit and an RSS cap, so a slow or memory-hungry calibrator is recorded as a failure instead
of taking the whole benchmark down.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_models"))

import ocr_data  # noqa: E402  (sample_models/ocr_data.py, numpy-only)

REC_MODEL = ROOT / "build" / "models" / "ch_PP-OCRv4_rec_infer.onnx"
CLS_MODEL = ROOT / "sample_models" / "ppocr_cls.onnx"
AIMET_VENV = ROOT / "build" / "aimet-venv"  # aimet-onnx 2.42.0 + torch CPU, made by bench/bench_aimet.py
BATCH = 16  # samples per onnxruntime run everywhere (qtool's default --batch-size)
# char_accuracy(strip=False) is the raw mean of max(0, 1 - edit/len); strip=True ignores
# leading/trailing spaces. Both are recorded; the raw one is the headline number.
HAS_STRIP = "strip" in inspect.signature(ocr_data.char_accuracy).parameters


# ----------------------------------------------------------------------------- data files
def write_split(task: str, split: str, limit: int | None, out: Path):
    """Write `task`/`split` (first `limit` samples) as an npz keyed "x"; return (path, x, targets)."""
    x, targets = ocr_data.load_split(task, split, limit=limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=x)
    return out, x, targets


def write_noisy_repeats(base: np.ndarray, total: int, out_dir: Path, chunk: int = 100,
                        sigma: float = 0.01, seed: int = 0) -> Path:
    """`total` samples made by cycling through `base` (N, ...) and adding small deterministic
    Gaussian noise (clipped to [-1, 1]), written as a directory of npz chunks (key "x") so
    that qtool streams them one file at a time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.npz"):
        old.unlink()
    rng = np.random.default_rng(seed)
    for k, start in enumerate(range(0, total, chunk)):
        idx = np.arange(start, min(start + chunk, total)) % len(base)
        noise = rng.standard_normal((len(idx), *base.shape[1:]), dtype=np.float32) * np.float32(sigma)
        x = np.clip(base[idx] + noise, -1.0, 1.0).astype(np.float32)
        np.savez(out_dir / f"chunk_{k:04d}.npz", x=x)
    return out_dir


# ----------------------------------------------------------------------------- children
@dataclass
class ChildResult:
    """Outcome of one child process: wall seconds, peak RSS (MiB), exit status, output."""

    cmd: list[str]
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    failure: str | None = None  # "timeout", "memory cap", "exit code N" or None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None


def run_child(cmd: list[str], *, timeout: float = 1800, rss_cap_mb: float = 18000,
              log_dir: Path | None = None, tag: str = "child") -> ChildResult:
    """Run `cmd` under bench/measure.py (which kills it past `timeout` seconds or `rss_cap_mb`
    MiB and reports its own peak RSS, uninflated by this process's size); logs go to
    LOG_DIR/TAG.stdout and .stderr."""
    log_dir = log_dir or ROOT / "bench" / "out" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{tag}.stdout", log_dir / f"{tag}.stderr"
    res_path = log_dir / f"{tag}.measure.json"
    res_path.unlink(missing_ok=True)
    launcher = [sys.executable, str(ROOT / "bench" / "measure.py"), "--result", str(res_path),
                "--timeout", str(timeout), "--rss-cap-mb", str(rss_cap_mb), "--"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        subprocess.run(launcher + cmd, stdout=fo, stderr=fe, cwd=ROOT, env=env, check=False,
                       timeout=timeout + 120)
    try:
        m = json.loads(res_path.read_text())
    except (OSError, json.JSONDecodeError):
        m = {"seconds": float("nan"), "peak_rss_mb": float("nan"), "returncode": -1,
             "failure": "launcher wrote no result"}
    return ChildResult(cmd, m["seconds"], m["peak_rss_mb"], m["returncode"],
                       out_path.read_text(), err_path.read_text(), m["failure"])


def last_line(text: str, n: int = 300) -> str:
    """Last non-empty line of a log, shortened: the usual place of the error message."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:n] if lines else ""


# ----------------------------------------------------------------------------- evaluation
def make_session(path: Path | str, simulate: bool):
    """CPU session. simulate=True: QDQ runs as written in float (``session.disable_quant_qdq``,
    basic optimisations, as `qtool simulate` does); False: default settings, so onnxruntime
    fuses QDQ groups into its integer kernels (QLinearConv, MatMulInteger, ...)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if simulate:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_model(path: Path | str, x: np.ndarray, simulate: bool = False) -> tuple[np.ndarray, float]:
    """All outputs of the first model output over `x` in batches of BATCH; (outputs, seconds
    including session creation)."""
    start = time.perf_counter()
    sess = make_session(path, simulate)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)]
    return np.concatenate(outs), time.perf_counter() - start


def score(task: str, out: np.ndarray, targets, characters: list[str] | None) -> dict:
    """cls: orientation accuracy; rec: char accuracy raw (strip=False) and stripped."""
    if task == "cls":
        preds = out.argmax(axis=1)
        return {"acc": float((preds == np.asarray(targets)).mean()), "preds": preds.tolist()}
    preds = ocr_data.ctc_greedy_decode(out, characters)
    if not HAS_STRIP:
        acc = ocr_data.char_accuracy(preds, targets)
        return {"acc": acc, "acc_strip": acc, "preds": preds}
    # strip passed explicitly both ways: ocr_data's default has changed before
    return {"acc": ocr_data.char_accuracy(preds, targets, strip=False),
            "acc_strip": ocr_data.char_accuracy(preds, targets, strip=True), "preds": preds}


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - test|^2) over everything (inf when identical)."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    noise = float(np.sum((ref - test) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref ** 2)) / noise)


def agreement(a: list, b: list) -> float:
    """Fraction of samples whose decoded prediction (text line or class) is identical."""
    return float(np.mean([x == y for x, y in zip(a, b)])) if a else float("nan")
