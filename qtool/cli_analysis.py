"""CLI commands of the debugging flow: analyze (white paper 4.8) and mixed-precision."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qtool.analysis.metric import BUILTIN_METRICS, metric_for
from qtool.analysis.report_html import render_html, without_timings
from qtool.analysis.role_label import describe
from qtool.cli import Bar, Report, cli, data_options, json_option, overrides_option, read_overrides, reporting
from qtool.encodings.encoding_set import EncodingSet
from qtool.encodings.write import save_encodings
from qtool.files import strict_json
from qtool.files.atomic import StagedOutputs
from qtool.plan.config import load_config
from qtool.plan.overrides import parse_overrides
from qtool.quant.observers import ACTIVATION_SCHEMES

# the analysis, the steps, onnx and onnxruntime are imported in each body (see the note in cli.py)


def evaluation_options(func):
    """--eval-data/--eval-samples/--labels/--metric: the evaluation set and what is measured on it,
    shared by analyze and mixed-precision."""
    options = [
        click.option("--eval-data", default=None, help="Evaluation data (default: --data)."),
        click.option("--eval-samples", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Evaluation samples (cached in memory; every setting runs over all of them)."),
        click.option("--labels", default=None,
                     help="Integer labels of the evaluation samples (.npy/.txt): metric accuracy."),
        metric_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def metric_option(func):
    return click.option("--metric", default=None,
                        help=f"What to keep: {', '.join(BUILTIN_METRICS)} or module:function / file.py:function "
                             "(f(outputs, reference, labels) -> float, higher is better) [accuracy with --labels, "
                             "else channel_sqnr: the worst channel's SQNR over the outputs].")(func)


def pair_for_analysis(model: str, encodings: str | None, config: str, overrides: str | None, source,
                      batch_size: int):
    """The pair to analyse: given encodings, or a calibration of MODEL with --config first."""
    from qtool.io import load_pair
    from qtool.ir.graph import load_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.steps.calibrate import calibrate

    if encodings:
        return load_pair(model, encodings)
    graph = load_model(model)
    plan = build_plan(graph, load_config(config), PlanOptions(overrides=read_overrides(overrides)))
    result = calibrate(graph, plan, lambda: source.batches(batch_size), total=source.count(), progress=Bar("calibrate"))
    return graph, result.encodings, f"{model} (calibrated with {config})"


@cli.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--encodings", default=None, help="Encodings JSON (default: MODEL's sibling, else calibrate with --config).")
@data_options
@evaluation_options
@click.option("--config", default="default", show_default=True, help="Runtime config, when calibrating first.")
@overrides_option
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes for the sensitivity runs (each gets a share of the cores).")
@click.option("--budget", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Stop suggesting once the metric is within this of float (metric units).")
@click.option("--target", type=float, default=None,
              help="Stop suggesting once the metric reaches this (default: float - budget; sqnr: an estimate).")
@click.option("--max-suggestions", type=click.IntRange(0, 100), default=10, show_default=True,
              help="At most this many overrides.")
@click.option("--write-overrides", default=None, help="Also write the suggested overrides to this JSON file.")
@click.option("-o", "--output-dir", required=True, help="Report folder: report.html, report.json, overrides.json.")
@json_option
@reporting
def analyze_cmd(model, encodings, data, samples, batch_size, preprocess, seed, input_shape, vocab_size, eval_data, eval_samples, labels, metric, config,
                overrides, jobs, budget, target, max_suggestions, write_overrides, output_dir) -> Report:
    """Find the quantizers that cost accuracy and write overrides that fix them (white paper 4.8).

    Example: qtool analyze out/model.onnx --data calib.npz --labels labels.npy --jobs 2 -o report
    """
    from qtool.analysis.analyze import AnalyzeOptions, analyze
    from qtool.io import load_labels, open_model_data
    from qtool.ir.graph import load_model

    graph = load_model(model)
    shapes = {"input_shapes": input_shape, "vocab_size": vocab_size}
    calib = open_model_data(graph, data, samples=samples, preprocess=preprocess, seed=seed, **shapes)
    evaluation = open_model_data(graph, eval_data or data, samples=eval_samples, preprocess=preprocess, seed=seed,
                                 **shapes)
    label_array = load_labels(labels, graph, evaluation) if labels else None
    chosen = metric_for(metric, label_array, graph)
    graph, enc_set, enc_source = pair_for_analysis(model, _sibling_encodings(model, encodings), config, overrides,
                                                   calib, batch_size)
    options = AnalyzeOptions(chosen, jobs, target, budget, max_suggestions)
    report = analyze(graph, enc_set, list(evaluation.batches(batch_size)), options, labels=label_array,
                     progress=lambda label: Bar(label, unit="runs"), source=enc_source, model_path=model)
    folder = Path(output_dir)
    overrides_doc = {"comment": f"qtool analyze {model}: suggested overrides, most useful first",
                     "metric": chosen.name, "overrides": [s["override"] for s in report["suggestions"]]}
    report["overrides_file"] = str(folder / "overrides.json")
    with StagedOutputs() as out:
        atomic_payload = strict_json.dumps(overrides_doc).encode()
        out.path(folder / "overrides.json").write_bytes(atomic_payload)
        stored = without_timings(report)  # byte-identical across runs; the time is in the printed summary
        out.path(folder / "report.json").write_bytes(strict_json.dumps(stored).encode())
        out.path(folder / "report.html").write_bytes(render_html(stored).encode("utf-8"))
        if write_overrides:
            out.path(write_overrides).write_bytes(atomic_payload)
    return Report(_summary(report, folder), _lines(report, folder, write_overrides))


def _sibling_encodings(model: str, encodings: str | None) -> str | None:
    sibling = Path(model).with_suffix("").as_posix() + ".encodings.json"
    return encodings or (sibling if Path(sibling).exists() else None)


def _summary(report: dict, folder: Path) -> dict:
    keep = ("summary", "fp32_sanity", "samples", "seconds", "suggestions")
    return {**{k: report[k] for k in keep}, "worst": report["sensitivity"][:10], "report": str(folder / "report.html")}


def _lines(report: dict, folder: Path, write_overrides: str | None) -> list[str]:
    s, unit = report["summary"], report["metric"]["unit"]
    sanity = "FP32 sanity: ok" if report["fp32_sanity"]["passed"] else \
        f"FP32 sanity: FAILED (max |diff| {report['fp32_sanity']['max_abs_diff']:.3g})"
    lines = [f"analyzed {report['samples']} samples in {report['seconds']:.0f}s; {sanity}",
             f"  {report['metric']['name']}: float {s['float']:.2f}, quantized {s['quantized']:.2f}, weights only "
             f"{s['weights_only']:.2f}, activations only {s['activations_only']:.2f} {unit} -> drop from: {s['verdict']}",
             "  most sensitive (alone quantized / alone float):"]
    lines += [f"    {r['group']} ({describe(r['op_type'], r.get('role'))}): {r['only_enabled']:.2f} / {r['only_disabled']:.2f}"
              for r in report["sensitivity"][:5]]
    if report["suggestions"]:
        lines.append(f"  {len(report['suggestions'])} suggested overrides, expected {report['suggestions'][-1]['expected']:.2f} {unit}:")
        lines += [f"    {json.dumps(sug['override'], sort_keys=True)}" for sug in report["suggestions"][:10]]
    lines.append(f"wrote {folder / 'report.html'}, report.json, overrides.json" +
                 (f" and {write_overrides}" if write_overrides else ""))
    return lines


@cli.command("mixed-precision")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@evaluation_options
@click.option("--candidates", default="w8a8,w8a16,w16a16", show_default=True,
              help="Precisions to choose from per layer, wNaM (N-bit weights, M-bit activations).")
@click.option("--budget", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Allowed metric drop from float (metric units: points for %, dB for sqnr).")
@click.option("--target", type=float, default=None, help="A metric value to reach instead of float - budget.")
@click.option("--config", default="default", show_default=True, help="Runtime config (granularity, symmetry).")
@click.option("--scheme", type=click.Choice(ACTIVATION_SCHEMES, case_sensitive=False), default="sqnr", show_default=True,
              help="Activation range setting for every candidate's calibration.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Processes for the sensitivity runs.")
@click.option("-o", "--output-dir", required=True,
              help="Writes overrides.json, mixed_precision.json, pareto.png (with matplotlib) and the final pair "
                   "model.onnx + model.encodings.json.")
@json_option
@reporting
def mixed_precision_cmd(model, data, samples, batch_size, preprocess, seed, input_shape, vocab_size, eval_data, eval_samples, labels, metric, candidates,
                        budget, target, config, scheme, jobs, output_dir) -> Report:
    """Raise the precision of the most sensitive layers until the metric is within --budget of float.

    Example: qtool mixed-precision model.onnx --data calib.npz --labels labels.npy --candidates w8a8,w8a16 -o amp
    """
    from qtool.analysis.mixed_precision import mixed_precision, parse_candidates
    from qtool.io import load_labels, open_model_data
    from qtool.ir.external_data import copy_model_file
    from qtool.ir.graph import load_model
    from qtool.ir.qdq import build_qdq_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plots import pareto_plot, plots_available
    from qtool.steps.calibrate import CalibrateOptions, calibrate

    choices = parse_candidates(candidates)
    graph = load_model(model)
    shapes = {"input_shapes": input_shape, "vocab_size": vocab_size}
    calib = open_model_data(graph, data, samples=samples, preprocess=preprocess, seed=seed, **shapes)
    evaluation = open_model_data(graph, eval_data or data, samples=eval_samples, preprocess=preprocess, seed=seed,
                                 **shapes)
    label_array = load_labels(labels, graph, evaluation) if labels else None
    chosen = metric_for(metric, label_array, graph)
    runtime_config = load_config(config)
    calibrate_options = CalibrateOptions(scheme=scheme.lower())

    def calibrated(param_bw: int, act_bw: int, overrides=()) -> EncodingSet:
        plan = build_plan(graph, runtime_config, PlanOptions(act_bw, param_bw, overrides=tuple(overrides)))
        return calibrate(graph, plan, lambda: calib.batches(batch_size), calibrate_options, total=calib.count(),
                         progress=Bar(f"calibrate w{param_bw}a{act_bw}")).encodings

    encodings = [calibrated(c.param_bw, c.act_bw) for c in choices]
    final: dict = {}

    def finalize(overrides: list[dict]):
        final["encodings"] = calibrated(choices[0].param_bw, choices[0].act_bw,
                                        parse_overrides(overrides, "mixed-precision"))
        return build_qdq_model(graph, final["encodings"])

    result = mixed_precision(graph, encodings, choices, list(evaluation.batches(batch_size)), chosen,
                             labels=label_array, budget=budget, target=target, jobs=jobs,
                             progress=lambda label: Bar(label, unit="runs"), finalize=finalize)
    folder = Path(output_dir)
    overrides_doc = {"comment": f"qtool mixed-precision {model}: {', '.join(c.name for c in choices)}",
                     "metric": chosen.name, "overrides": result["overrides"]}
    with StagedOutputs() as out:
        out.path(folder / "overrides.json").write_bytes(strict_json.dumps(overrides_doc).encode())
        out.path(folder / "mixed_precision.json").write_bytes(strict_json.dumps(without_timings(result)).encode())
        copy_model_file(model, out.path(folder / "model.onnx"))
        save_encodings(final["encodings"], out.path(folder / "model.encodings.json"))
        plotted = pareto_plot(result, out.path(folder / "pareto.png")) if plots_available() else False
    return Report(result, _mp_lines(result, folder, plotted))


def _mp_lines(result: dict, folder: Path, plotted: bool) -> list[str]:
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
    lines.append(f"wrote {folder / 'overrides.json'}, mixed_precision.json, model.onnx, model.encodings.json"
                 + (", pareto.png" if plotted else ""))
    return lines
