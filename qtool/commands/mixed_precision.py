"""`mixed-precision`: the most sensitive layers raised to higher precision until the metric is
within the budget; the final pair, overrides and the Pareto curve written into a folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qtool.commands.fields import option
from qtool.commands.options import EvaluationOptions
from qtool.commands.report import ProgressFactory, Report, bar
from qtool.quant.observers import ACTIVATION_SCHEMES


@dataclass(frozen=True, kw_only=True)
class MixedPrecisionOptions(EvaluationOptions):
    candidates: str = option("w8a8,w8a16,w16a16", "Precisions to choose from per layer, wNaM (N-bit weights, "
                                                   "M-bit activations).")
    budget: float = option(0.5, "Allowed metric drop from float (metric units: points for %, dB for sqnr).",
                           bounds=(0, None))
    target: float | None = option(None, "A metric value to reach instead of float - budget.")
    config: str = option("default", "Runtime config (granularity, symmetry).")
    scheme: str = option("sqnr", "Activation range setting for every candidate's calibration.",
                         choices=ACTIVATION_SCHEMES)
    jobs: int = option(1, "Processes for the sensitivity runs.", bounds=(1, 64))


def mixed_precision(model: str | os.PathLike, output: str | os.PathLike, options: MixedPrecisionOptions,
                    progress: ProgressFactory = bar) -> Report:
    """Raise the precision of the most sensitive layers until the metric is within --budget of float.

    Example: qtool mixed-precision model.onnx --data calib.npz --eval-data eval.npz --labels labels.npy -o amp
    """
    from qtool.analysis.report_html import without_timings
    from qtool.commands.plots import pareto_plot, plots_available
    from qtool.encodings.write import save_encodings
    from qtool.files import strict_json
    from qtool.files.atomic import StagedOutputs
    from qtool.ir.external_data import copy_model_file
    from qtool.ir.graph import load_model

    result, encodings = mixed_precision_model(load_model(model), options, progress)
    folder = Path(output)
    overrides_doc = {"comment": f"qtool mixed-precision {model}: {', '.join(result['candidates'])}",
                     "metric": result["metric"]["name"], "overrides": result["overrides"]}
    with StagedOutputs() as out:
        out.path(folder / "overrides.json").write_bytes(strict_json.dumps(overrides_doc).encode())
        out.path(folder / "mixed_precision.json").write_bytes(strict_json.dumps(without_timings(result)).encode())
        copy_model_file(model, out.path(folder / "model.onnx"))
        save_encodings(encodings, out.path(folder / "model.encodings.json"))
        plotted = pareto_plot(result, out.path(folder / "pareto.png")) if plots_available() else False
    return Report(result, precision_lines(result) + [
        f"wrote {folder / 'overrides.json'}, mixed_precision.json, model.onnx, model.encodings.json"
        + (", pareto.png" if plotted else "")])


def mixed_precision_model(graph, options: MixedPrecisionOptions, progress: ProgressFactory = bar):
    """The search in memory: (the result dict of qtool.analysis.mixed_precision, the final
    encodings: the first candidate's, calibrated with the overrides found)."""
    from qtool.analysis.metric import metric_for
    from qtool.analysis.mixed_precision import mixed_precision as search
    from qtool.analysis.mixed_precision import parse_candidates
    from qtool.commands.inputs import load_labels, open_model_data
    from qtool.ir.qdq import build_qdq_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.plan.overrides import parse_overrides
    from qtool.steps.calibrate import CalibrateOptions, calibrate
    from qtool.steps.calibrate_shards import sharded

    choices = parse_candidates(options.candidates)
    executor = options.make_executor()
    calib = open_model_data(graph, options.data, **options.reading())
    evaluation = open_model_data(graph, options.eval_data if options.eval_data is not None else options.data,
                                 **{**options.reading(), "samples": options.eval_samples})
    labels = load_labels(options.labels, graph, evaluation) if options.labels is not None else None
    chosen = metric_for(options.metric, labels, graph)
    runtime_config = load_config(options.config)
    calibrate_options = CalibrateOptions(scheme=options.scheme.lower())

    def calibrated(param_bw: int, act_bw: int, overrides=()):
        plan = build_plan(graph, runtime_config, PlanOptions(act_bw, param_bw, overrides=tuple(overrides)))
        return calibrate(graph, plan, lambda: calib.batches(options.batch_size), calibrate_options,
                         observe=sharded(executor), total=calib.count(), progress=progress(f"calibrate w{param_bw}a{act_bw}" + (" with the overrides" if overrides else ""))).encodings

    encodings = [calibrated(c.param_bw, c.act_bw) for c in choices]
    final: dict = {}

    def finalize(overrides: list[dict]):
        final["encodings"] = calibrated(choices[0].param_bw, choices[0].act_bw,
                                        parse_overrides(overrides, "mixed-precision"))
        return build_qdq_model(graph, final["encodings"])

    result = search(graph, encodings, choices, list(evaluation.batches(options.batch_size)), chosen, labels=labels,
                    budget=options.budget, target=options.target, jobs=options.jobs,
                    progress=lambda label: progress(label, unit="runs"), finalize=finalize, executor=executor)
    return result, final["encodings"]


def precision_lines(result: dict) -> list[str]:
    """The printed summary of a search: the curve, the verdict (without the files written)."""
    unit = result["metric"]["unit"]
    lines = [f"{result['metric']['name']}: float {result['float']:.2f} {unit}, goal {result['goal']:.2f}; "
             f"{result['blocks']} layer blocks, {result['samples']} samples, {result['seconds']:.0f}s",
             f"  {'step':48} {'metric':>9} {'BOPs':>7} {'size':>7}"]
    for point in result["curve"] + [result["all_highest"]]:
        lines.append(f"  {point['step'][:48]:48} {point['metric']:9.2f} {point['relative_bops']:6.2f}x "
                     f"{point['relative_size']:6.2f}x")
    verdict = "met" if result["met"] else "NOT met (all candidates raised would give " \
              f"{result['all_highest']['metric']:.2f})"
    lines.append(f"goal {verdict}: {len(result['raised'])} of {result['blocks']} blocks raised; final pair "
                 f"(calibrated with the overrides) measures {result['final_metric']:.2f} {unit}")
    return lines
