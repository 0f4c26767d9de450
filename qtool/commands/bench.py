"""`bench`: what onnxruntime really runs of an exported QDQ model, and how fast against float.

A QDQ model is only faster than its float model where onnxruntime turns Q/DQ groups into
integer kernels; the rest runs in float with extra Q/DQ work around it. The command prints the
kernel report (`qtool.runtime.kernels`: per node, integer kernel or float and why) and times
the QDQ model against the float one (`qtool.runtime.latency`: interleaved, best of N, one
intra-op thread and all cores, batch 1 and a larger batch). docs/deploy.md explains both.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from qtool.commands.fields import DataArg, option
from qtool.commands.options import ShapeOptions
from qtool.commands.report import Report
from qtool.errors import QtoolError

NAMES_SHOWN = 6


@dataclass(frozen=True, kw_only=True)
class BenchOptions(ShapeOptions):
    reference: str | None = option(None, "The float model to time against [default: NAME.onnx beside MODEL when "
                                         "MODEL is NAME_qdq.onnx, as qtool export writes them].")
    data: DataArg = option(None, "Inputs to time on (as for calibrate --data: the first samples) [default: random].")
    preprocess: str | None = option(None, "Image folders: see calibrate --preprocess.")
    seed: int = option(0, "Seed for random inputs.")
    repeat: int = option(20, "Timed runs per model and setting; the best counts (N in best-of-N).", bounds=(1, None))
    batch: int = option(8, "The larger batch size timed besides batch 1.", bounds=(1, None))
    kernels_only: bool = option(False, "Only the kernel report: time nothing (no --reference needed).")


def bench(model: str | os.PathLike, output: None = None, options: BenchOptions = BenchOptions()) -> Report:
    """Kernel report of a QDQ model in onnxruntime, and its latency against the float model.

    Example: qtool bench deploy/model_qdq.onnx --reference deploy/model.onnx --repeat 50
    """
    from qtool.ir.graph import load_model
    from qtool.runtime.kernels import has_quantizers, kernel_report

    qdq = load_model(model)
    if not has_quantizers(qdq):
        raise QtoolError(f"{model}: no QuantizeLinear/DequantizeLinear nodes: not a QDQ model",
                         "give the NAME_qdq.onnx that 'qtool export' writes; the float model goes to --reference")
    kernels = kernel_report(qdq, str(model))
    summary = {"model": str(model), "onnxruntime": kernels.summary_line(), "kernels": kernels.as_dict()}
    lines = [f"{model}: {kernels.summary_line()}", *kernel_lines(kernels)]
    if not options.kernels_only:
        reference = _reference(model, options.reference)
        timing = _timings(qdq, model, reference, options)
        summary["latency"] = timing.summary
        lines += timing.lines
    return Report(summary, lines)


def kernel_lines(kernels) -> list[str]:
    """The integer kernels by type, then the float nodes grouped by op and reason."""
    integer: dict[str, int] = {}
    for node in kernels.of_kind("integer"):
        integer[node.kernel] = integer.get(node.kernel, 0) + 1
    lines = ["  integer: " + (", ".join(f"{k} x{n}" for k, n in sorted(integer.items(), key=lambda i: -i[1]))
                              or "none")]
    groups = kernels.float_groups()
    lines.append(f"  float: {sum(len(names) for names in groups.values())} nodes" + (":" if groups else ""))
    for (op, reason), names in groups.items():
        shown = ", ".join(names[:NAMES_SHOWN]) + (f", ... (+{len(names) - NAMES_SHOWN})" if len(names) > NAMES_SHOWN
                                                   else "")
        lines.append(f"    {len(names)} {op}: {reason}: {shown}")
    if kernels.constant_dequantize:
        lines.append(f"  {kernels.constant_dequantize} DequantizeLinear of constants run on every inference "
                     "(weights and constants of ops that stay float: onnxruntime does not fold them, nor prepack "
                     "those weights)")
    notes = [node for node in kernels.of_kind("integer") if node.reason]
    lines += [f"  note: {node.op_type} '{node.name}': {node.reason}" for node in notes[:NAMES_SHOWN]]
    return lines


def _reference(model: str | os.PathLike, given: str | None) -> Path:
    if given is not None:
        return Path(given)
    path = Path(model)
    if path.name.endswith("_qdq.onnx"):
        sibling = path.with_name(path.name[: -len("_qdq.onnx")] + ".onnx")
        if sibling.is_file():
            return sibling
    raise QtoolError(f"{model}: no float model to time against", "pass --reference FLOAT.onnx (or --kernels-only)")


@dataclass
class _Timed:
    summary: dict
    lines: list[str]


def _timings(qdq, model: str | os.PathLike, reference: Path, options: BenchOptions) -> _Timed:
    from qtool.ir.graph import load_model
    from qtool.runtime.kernels import has_quantizers
    from qtool.runtime.latency import load_average, thread_counts, time_models

    float_model = load_model(reference)
    if has_quantizers(float_model):
        raise QtoolError(f"{reference}: --reference has QuantizeLinear/DequantizeLinear nodes",
                         "give the float model (NAME.onnx beside NAME_qdq.onnx)")
    ours, theirs = sorted(i.name for i in qdq.graph.inputs), sorted(i.name for i in float_model.graph.inputs)
    if ours != theirs:
        raise QtoolError(f"{reference}: inputs {theirs} differ from {model}'s {ours}",
                         "--reference must be the float model MODEL was exported from")
    feeds = _feeds(qdq, options)
    load_before = load_average()
    timings = time_models({"float": str(reference), "qdq": str(model)}, feeds, thread_counts(), options.repeat)
    load_after = load_average()
    rows = [{"threads": t.threads, "batch": t.batch, "float_ms": t.best_ms["float"], "qdq_ms": t.best_ms["qdq"],
             "speedup": round(t.speedup("float", "qdq"), 3), "float_median_ms": t.median_ms["float"],
             "qdq_median_ms": t.median_ms["qdq"]} for t in timings]
    summary = {"reference": str(reference), "repeat": options.repeat, "cores": os.cpu_count(),
               "data": str(options.data) if options.data is not None else "random",
               "load_before": load_before, "load_after": load_after, "rows": rows}
    lines = [f"latency against {reference}: best of {options.repeat} interleaved runs, ms (median in brackets); "
             f"load {load_before} -> {load_after} on {os.cpu_count()} cores",
             f"  {'threads':>7} {'batch':>5} {'float':>18} {'qdq':>18} {'speed-up':>9}"]
    for row in rows:
        float_ms, qdq_ms = _ms(row["float_ms"], row["float_median_ms"]), _ms(row["qdq_ms"], row["qdq_median_ms"])
        lines.append(f"  {row['threads']:>7} {row['batch']:>5} {float_ms:>18} {qdq_ms:>18} {row['speedup']:>8.2f}x")
    return _Timed(summary, lines)


def _ms(best: float, median: float) -> str:
    return f"{best:.2f} ({median:.2f})"


def _feeds(qdq, options: BenchOptions) -> dict:
    """Batch 1 and batch --batch of the inputs (file data repeated when it has fewer samples);
    only batch N when the model fixes its batch dim to N."""
    import numpy as np

    from qtool.commands.inputs import open_model_data
    from qtool.runtime.sessions import max_batch

    fixed = max_batch(qdq)
    sizes = [fixed] if fixed is not None else sorted({1, options.batch})
    with _quiet("qtool.data.sources"):  # random inputs are what a timing needs: no "smoke tests only" warning
        data = open_model_data(qdq, options.data if options.data is not None else "random", samples=max(sizes),
                               preprocess=options.preprocess, seed=options.seed, **options.shapes())
        first = next(iter(data.batches(max(sizes))), None)
    if first is None:
        raise QtoolError(f"{options.data}: no samples to time on")
    feeds = {}
    for size in sizes:
        feeds[size] = {name: np.resize(array, (size, *array.shape[1:])) for name, array in first.items()}
    return feeds


@contextlib.contextmanager
def _quiet(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
