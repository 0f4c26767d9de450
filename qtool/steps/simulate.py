"""Simulate: run the QDQ model derived from the pair next to the float model and compare.

Both sessions use the same onnxruntime settings (basic optimisations, QDQ fusion off), so with
all quantizers bypassed the two runs are bit-identical: a sanity check that the simulation
itself adds no error (white paper 4.8, the FP32 sanity step).

The float outputs come from the reference cache where an earlier run (any command) left them for
the same model and batch (qtool.runtime.reference_cache), so a second simulate runs the quantized
model only. Each float output gets a pooled SQNR and the worst SQNR over its channels (qtool.metrics.comparison); the
channel axis comes from qtool.metrics.channels, or from `channel_axes` where the caller names one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qtool.data.sources import sample_indices
from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.ir.qdq import build_qdq_model
from qtool.ir.repeated_qdq import drop_repeated_quantizers
from qtool.ir.tensor_files import is_large
from qtool.metrics.channels import output_channel_axes
from qtool.metrics.comparison import Comparison
from qtool.progress import Progress, no_progress
from qtool.runtime.reference_cache import ReadAhead, reference_runs
from qtool.runtime.sessions import keep_source, make_session, max_batch, run_batches


@dataclass
class SimulateResult:
    qdq_model: ir.Model
    report: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0


def simulate(model: ir.Model, encodings: EncodingSet, batches: Iterable[dict[str, np.ndarray]], *,
             labels: np.ndarray | None = None, bypass: bool = False, total: int | None = None,
             progress: Progress = no_progress, source: str = "encodings",
             reference: ir.Model | None = None,
             decisions: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
             channel_axes: dict[str, int | None] | None = None) -> SimulateResult:
    """Compare float and quantized outputs over `batches`; `bypass` inserts no quantizer.

    `reference` is the float model to compare against when it is not the pair's own: after
    equalize (ReLU6 replaced) or bias-correct (biases changed) the original model is the target.
    `channel_axes` overrides the per-channel SQNR's axis of the outputs it names (None: pooled only).
    """
    start = time.perf_counter()
    if reference is not None:
        _check_same_interface(reference, model)
    float_model = reference or model
    names = [v.name for v in float_model.graph.outputs]
    limit = max_batch(model)
    comparison = Comparison(labels=labels, decisions=decisions or {},
                            channel_axes=output_channel_axes(float_model, channel_axes))
    seen = 0
    # the float outputs (cache or float session) are produced in a thread, ahead of the quantized
    # runs: the float model runs while the QDQ model and its session are built (its session from
    # a copy sharing the weights: serialising swaps tensors in the model this thread reads). The
    # two sessions run at once: their idle threads sleep rather than spin, which took the cores
    # from the other's working threads (under load 17-20 on 2 cores, cache off, same reports:
    # MiniLM 19.7 s -> 8.1 s, Lite0 29.7 s -> 17.3 s)
    floats = reference_runs(float_model, batches, names, "simulate",
                            lambda: make_session(keep_source(float_model.clone(), float_model), simulate=True,
                                                 spinning=False),
                            lambda session, feeds: next(run_batches(session, [feeds], names, limit)))
    floats = ReadAhead(floats, enabled=not is_large(float_model))  # a large model's session swaps its tensors
    try:
        qdq = model if bypass else build_qdq_model(model, encodings, source=source)
        quant_session = make_session(qdq if bypass else simulation_graph(qdq), simulate=True, spinning=False)
        for feeds, float_out in floats:
            quant_out = next(run_batches(quant_session, [feeds], names, limit))[1]
            for name in names:
                if np.issubdtype(float_out[name].dtype, np.floating):
                    comparison.update(name, float_out[name], quant_out[name], sample_indices(feeds, seen))
            seen += len(next(iter(feeds.values())))
            progress(seen, total)
    finally:
        floats.close()
    return SimulateResult(qdq, comparison.report(), seen, time.perf_counter() - start)


def simulation_graph(qdq: ir.Model) -> ir.Model:
    """What the quantized session runs: the QDQ model less the Q->DQ pairs that re-quantize
    values already on their grid (qtool.ir.repeated_qdq: bit-identical outputs, fewer passes).
    A copy (sharing the weights): the QDQ model handed back, and written, keeps every pair."""
    copy = keep_source(qdq.clone(), qdq)
    drop_repeated_quantizers(copy)
    return copy


def _check_same_interface(reference: ir.Model, model: ir.Model) -> None:
    """The reference must take the same inputs and give the same outputs, by name."""
    for kind, ours, theirs in (("inputs", model.graph.inputs, reference.graph.inputs),
                               ("outputs", model.graph.outputs, reference.graph.outputs)):
        mine = [v.name for v in ours if v.const_value is None]
        other = [v.name for v in theirs if v.const_value is None]
        if mine != other:
            raise QtoolError(f"{reference.meta.get('qtool.source', 'reference')}: {kind} {other} differ from "
                             f"the model's {mine}", "give the float model the pair was made from")
