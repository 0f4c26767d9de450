"""The benchmark's measurements, one function per row kind: float, qtool, onnxruntime, memory.

Each returns a plain dict (a row of results.json). Calibration always runs in a child process
(`common.run_child`: wall time, the child's own peak RSS, time limit, RSS cap); evaluation of
the resulting QDQ models runs here, in the parent, over the held-out split:

* ``sim``: onnxruntime with ``session.disable_quant_qdq=1`` (QDQ in float, as `qtool simulate`);
* ``int``: default onnxruntime, which fuses QDQ groups into integer kernels (deployment).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import common as C


@dataclass
class Ctx:
    """Everything the rows of one model share."""

    task: str  # "rec" or "cls"
    model: Path
    calib: Path  # npz keyed "x"
    calib_samples: int
    eval_x: np.ndarray
    eval_targets: object
    chars: list[str] | None
    eval_npz: Path  # the same eval samples, for `qtool simulate`
    work: Path  # build/bench/<task>
    ref_out: np.ndarray | None = None  # float outputs on the eval split
    ref_preds: list | None = None
    timeout: float = 900
    rss_cap_mb: float = 18000
    repeats: int = 3  # float pass and minmax calibrations: best of N


def qtool_cmd() -> list[str]:
    """The installed `qtool` console script (falls back to `python -m qtool.cli`)."""
    exe = shutil.which("qtool")
    return [exe] if exe else [sys.executable, "-m", "qtool.cli"]


def _json(text: str) -> dict:
    """The JSON object a child printed on stdout (the last {...} block)."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        line = [ln for ln in text.splitlines() if ln.startswith("{")]
        return json.loads(line[-1]) if line else {}


def _child(ctx: Ctx, cmd: list[str], tag: str, timeout: float | None = None) -> C.ChildResult:
    res = C.run_child(cmd, timeout=timeout or ctx.timeout, rss_cap_mb=ctx.rss_cap_mb,
                      log_dir=ctx.work / "logs", tag=tag)
    state = "ok" if res.ok else f"FAILED: {res.failure}: {C.last_line(res.stderr)}"
    print(f"    [{ctx.task}] {tag}: {res.seconds:.1f} s, peak RSS {res.peak_rss_mb:.0f} MiB, {state}",
          flush=True)
    return res


def _timed(ctx: Ctx, cmd: list[str], tag: str, repeats: int, inner_key: str,
           timeout: float | None = None) -> tuple[C.ChildResult, dict, dict]:
    """Run `cmd` `repeats` times (stopping at the first failure): the fastest run, its JSON,
    and {"repeats", "wall_all_s", "inner_all_s", "peak_rss_mb" (the largest)}. The minimum is
    the usual estimate on a shared, noisy machine."""
    runs_ = []
    for k in range(max(1, repeats)):
        res = _child(ctx, cmd, tag if repeats <= 1 else f"{tag}.{k}", timeout)
        runs_.append((res, _json(res.stdout)))
        if not res.ok:
            return res, runs_[-1][1], {"repeats": k + 1, "peak_rss_mb": res.peak_rss_mb}
    best, info = min(runs_, key=lambda r: r[0].seconds)
    inner = [r[1].get(inner_key) for r in runs_]
    stats = {"repeats": len(runs_), "wall_all_s": [r[0].seconds for r in runs_], "inner_all_s": inner,
             "peak_rss_mb": max(r[0].peak_rss_mb for r in runs_)}
    if all(v is not None for v in inner):
        info = dict(info, **{inner_key: min(inner)})
    return best, info, stats


def evaluate(ctx: Ctx, path: Path, modes: tuple[str, ...] = ("sim", "int"),
             cache: dict | None = None) -> dict:
    """Accuracy (and SQNR of the model output against float) of a QDQ model in each mode.
    `cache` (if given) receives {mode: (predictions, outputs)} for cross-checks."""
    out: dict = {}
    cache = {} if cache is None else cache
    for mode in modes:
        try:
            y, secs = C.run_model(path, ctx.eval_x, simulate=(mode == "sim"))
        except Exception as exc:  # an int-kernel session may refuse a model
            out[f"error_{mode}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        s = C.score(ctx.task, y, ctx.eval_targets, ctx.chars)
        out[f"acc_{mode}"] = s["acc"]
        if "acc_strip" in s:
            out[f"acc_strip_{mode}"] = s["acc_strip"]
        out[f"sqnr_{mode}_db"] = C.sqnr_db(ctx.ref_out, y)
        out[f"agree_float_{mode}"] = C.agreement(ctx.ref_preds, s["preds"])
        out[f"eval_{mode}_s"] = secs
        cache[mode] = (s["preds"], y)
    if "sim" in cache and "int" in cache:
        out.update(sim_int_stats(cache))
    return out


def sim_int_stats(cache: dict) -> dict:
    """How far integer kernels are from the float simulation: identical predictions, SQNR."""
    (p_sim, y_sim), (p_int, y_int) = cache["sim"], cache["int"]
    return {"sim_int_agree": C.agreement(p_sim, p_int), "sim_int_sqnr_db": C.sqnr_db(y_sim, y_int)}


def float_row(ctx: Ctx) -> dict:
    """One plain float pass over the calibration samples (child) + float accuracy on eval."""
    res, info, stats = _timed(ctx, [sys.executable, str(C.ROOT / "bench" / "float_pass.py"), str(ctx.model),
                                    "--data", str(ctx.calib), "--batch", str(C.BATCH)], "float_pass",
                              ctx.repeats, "seconds")
    ctx.ref_out, secs = C.run_model(ctx.model, ctx.eval_x, simulate=False)
    s = C.score(ctx.task, ctx.ref_out, ctx.eval_targets, ctx.chars)
    ctx.ref_preds = s["preds"]
    row = {"model": ctx.task, "method": "float (onnxruntime)", "tool": "float", "samples": ctx.calib_samples,
           "calib_wall_s": res.seconds, "calib_inner_s": info.get("seconds"),
           "acc_sim": s["acc"], "acc_int": s["acc"], "eval_s": secs, "failure": res.failure, **stats}
    if "acc_strip" in s:
        row["acc_strip_sim"] = row["acc_strip_int"] = s["acc_strip"]
    return row


def qtool_row(ctx: Ctx, config: str, scheme: str, export: bool = True, extra: tuple[str, ...] = (),
              tag: str = "") -> dict:
    """qtool calibrate -> simulate -o qdq.onnx (eval sim) -> export NAME_qdq.onnx (eval int).

    `extra`: more calibrate flags (e.g. --asymmetric-weights, the weight grid quantize_static uses);
    `tag`: a word for the method name (e.g. "folded" when ctx.model is the folded model)."""
    gran = "per-channel" if "per-channel" in config else "per-tensor"
    if extra:
        gran += " " + " ".join(flag.lstrip("-") for flag in extra)
    if tag:
        gran += " " + tag
    name = f"qtool_{scheme}_{gran}".replace(" ", "_")
    prefix = ctx.work / name / "model"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    row = {"model": ctx.task, "method": f"qtool {scheme} {gran}", "tool": "qtool", "scheme": scheme,
           "granularity": gran, "config": config, "samples": ctx.calib_samples}
    cal, info, stats = _timed(ctx, [*qtool_cmd(), "calibrate", str(ctx.model), "--data", str(ctx.calib),
                                    "--config", config, "--scheme", scheme, "--batch-size", str(C.BATCH),
                                    *extra, "-o", str(prefix), "--json"], f"{name}.calibrate",
                              ctx.repeats if scheme == "minmax" else 1, "seconds")
    row.update(calib_wall_s=cal.seconds, calib_inner_s=info.get("seconds"), failure=cal.failure, cmd=" ".join(cal.cmd), **stats)
    if not cal.ok:
        row["error"] = C.last_line(cal.stderr)
        return row
    qdq = prefix.parent / "qdq.onnx"
    sim = _child(ctx, [*qtool_cmd(), "simulate", f"{prefix}.onnx", "--data", str(ctx.eval_npz),
                       "--batch-size", str(C.BATCH), "-o", str(qdq), "--json"], f"{name}.simulate")
    if not sim.ok:
        row.update(failure=f"simulate: {sim.failure}", error=C.last_line(sim.stderr))
        return row
    report = _json(sim.stdout)
    row["simulate_s"] = sim.seconds
    row["qtool_sqnr_db"] = next(iter(report.get("outputs", {}).values()), {}).get("sqnr_db")
    cache: dict = {}
    row.update(evaluate(ctx, qdq, ("sim",), cache))
    if export:
        exp = _child(ctx, [*qtool_cmd(), "export", f"{prefix}.onnx", "-o", str(prefix.parent / "export"),
                           "--prefix", "model", "--json"], f"{name}.export")
        row["export_s"] = exp.seconds
        if exp.ok:
            # int = the exported model on integer kernels; sim_int_* compare it with QuantSim
            row.update(evaluate(ctx, prefix.parent / "export" / "model_qdq.onnx", ("int",), cache))
        else:
            row["error_int"] = f"export: {exp.failure}: {C.last_line(exp.stderr)}"
    return row


def ort_row(ctx: Ctx, method: str, per_channel: bool, preprocess: bool, timeout: float) -> dict:
    """onnxruntime.quantization.quantize_static (QDQ, QInt8 weights, QUInt8 activations)."""
    gran = "per-channel" if per_channel else "per-tensor"
    name = f"ort_{method}_{gran}" + ("_pre" if preprocess else "")
    out = ctx.work / name / "qdq.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    label = f"ORT {method} {gran}" + (" +pre" if preprocess else "")
    row = {"model": ctx.task, "method": label, "tool": "ort", "scheme": method, "granularity": gran,
           "preprocess": preprocess, "samples": ctx.calib_samples}
    cmd = [sys.executable, str(C.ROOT / "bench" / "ort_quant.py"), str(ctx.model), "--data", str(ctx.calib),
           "--out", str(out), "--method", method, "--batch", str(C.BATCH)]
    cmd += ["--per-channel"] if per_channel else []
    cmd += ["--preprocess"] if preprocess else []
    res, info, stats = _timed(ctx, cmd, name, ctx.repeats if method == "minmax" else 1, "quantize_static_s",
                              timeout)
    row.update(calib_wall_s=res.seconds, calib_inner_s=info.get("quantize_static_s"), failure=res.failure, cmd=" ".join(cmd), ort_info=info, **stats)
    if not res.ok:
        row["error"] = C.last_line(res.stderr)
        return row
    row.update(evaluate(ctx, out))
    return row


def memory_scaling(ctx: Ctx, sizes: tuple[int, int], timeout: float) -> dict:
    """Peak RSS of `qtool calibrate --scheme minmax` on a streamed directory of npz chunks made
    from the whole calib split (repeated, plus noise): the small run reads its first sizes[0]
    samples (--samples), the large one all sizes[1]."""
    base, _ = C.ocr_data.load_split(ctx.task, "calib")
    folder = C.write_noisy_repeats(base, sizes[1], ctx.work / f"calib_{sizes[1]}")
    del base
    result = {"model": ctx.task, "data": str(folder), "noise_sigma": 0.01, "runs": []}
    for n in sizes:
        prefix = ctx.work / f"mem_{n}" / "model"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        res = _child(ctx, [*qtool_cmd(), "calibrate", str(ctx.model), "--data", str(folder), "--samples", str(n),
                           "--scheme", "minmax", "--batch-size", str(C.BATCH), "-o", str(prefix), "--json"],
                     f"mem_{n}", timeout=timeout)
        info = _json(res.stdout)
        result["runs"].append({"samples": n, "samples_seen": info.get("samples"), "wall_s": res.seconds,
                               "inner_s": info.get("seconds"), "peak_rss_mb": res.peak_rss_mb,
                               "failure": res.failure, "error": None if res.ok else C.last_line(res.stderr)})
    small, large = result["runs"]
    if small["failure"] is None and large["failure"] is None:
        result["rss_ratio"] = large["peak_rss_mb"] / small["peak_rss_mb"]
        result["time_ratio"] = large["wall_s"] / small["wall_s"]
    return result
