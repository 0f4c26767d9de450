"""`simulate`: the QDQ model run next to the float model; SQNR, agreement and accuracy per output."""

from __future__ import annotations

import os
from dataclasses import dataclass

from qtool.commands.fields import LabelsArg, option
from qtool.commands.options import ENCODINGS_HELP, DataOptions
from qtool.commands.report import ProgressFactory, Report, bar


@dataclass(frozen=True, kw_only=True)
class SimulateOptions(DataOptions):
    encodings: str | None = option(None, ENCODINGS_HELP)
    labels: LabelsArg = option(None, "Integer class labels (.npy or .txt, one per sample) for accuracy.")
    bypass: bool = option(False, "FP32 sanity check: insert no quantizer (must match float exactly).")
    reference: str | None = option(None, "Float model to compare against (default: MODEL itself); e.g. the original "
                                         "model after equalize or bias-correct changed MODEL's float function.")
    channel_axis: tuple[str, ...] = option(
        (), "The axis of output NAME whose channels get their own SQNR (default: axis 1, the last for [N, T, C] "
            "sequences, the axis of a Concat that makes the output, none for Softmax probabilities; 'none': "
            "pooled only). Repeatable.", metavar="NAME=AXIS")


def simulate(model: str | os.PathLike, output: str | os.PathLike | None, options: SimulateOptions,
             progress: ProgressFactory = bar) -> Report:
    """Run the QDQ model next to the float model and report SQNR, top-1 agreement and accuracy.

    Example: qtool simulate out/model.onnx --data eval.npz --labels eval_labels.npy
    """
    from qtool.commands.inputs import load_pair
    from qtool.ir.graph import load_model, save_model

    if options.bypass:
        graph, enc_set, enc_source = load_model(model), None, "bypass"
    else:
        graph, enc_set, enc_source = load_pair(model, options.encodings)
    reference = load_model(options.reference) if options.reference else None
    result = simulate_model(graph, enc_set, options, enc_source, reference, progress)
    if output:
        save_model(result.qdq_model, output)
    report = simulation_report(result)
    return Report(report.summary, report.lines + ([f"wrote {output}"] if output else []))


def simulate_model(graph, encodings, options: SimulateOptions, source: str, reference=None,
                   progress: ProgressFactory = bar):
    """The simulation in memory: a `qtool.steps.simulate.SimulateResult` (encodings None: bypass)."""
    from qtool.commands.inputs import load_labels, open_model_data
    from qtool.metrics.channels import parse_channel_axes
    from qtool.steps.simulate import simulate as simulate_step

    data = open_model_data(graph, options.data, **options.reading())
    labels = load_labels(options.labels, graph, data) if options.labels is not None else None
    return simulate_step(graph, encodings, data.batches(options.batch_size), labels=labels,
                         bypass=encodings is None, total=data.count(), progress=progress("simulate"), source=source,
                         reference=reference, channel_axes=parse_channel_axes(graph, options.channel_axis))


def simulation_report(result) -> Report:
    """Per output: SQNR (pooled and worst channel), max error, agreement, accuracy."""
    from qtool.metrics.comparison import describe_metrics, hidden_channels

    summary = {"samples": result.samples, "seconds": round(result.seconds, 3), "outputs": result.report}
    lines = [f"simulated {result.samples} samples in {result.seconds:.1f}s"]
    for name, row in result.report.items():
        lines.append(f"  {name}: {describe_metrics(row)}, max |err| {row['max_abs_error']:.4g}")
        hidden = hidden_channels(row)
        if hidden:
            lines.append(f"  {name}: {hidden}")
    return Report(summary, lines)
