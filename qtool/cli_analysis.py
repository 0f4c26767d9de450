"""CLI commands of the debugging flow: analyze (white paper 4.8) and mixed-precision."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qtool.analysis.analyze import AnalyzeOptions, analyze
from qtool.analysis.metric import BUILTIN_METRICS, load_metric
from qtool.analysis.report_html import render_html
from qtool.cli import Bar, Report, cli, data_options, json_option, overrides_option, read_overrides, reporting
from qtool.config import load_config
from qtool.graph import atomic_write_bytes, load_model
from qtool.io import StagedOutputs, load_labels, load_pair, open_model_data
from qtool.plan import PlanOptions, build_plan
from qtool.steps.calibrate import calibrate


def metric_option(func):
    return click.option("--metric", default=None,
                        help=f"What to keep: {', '.join(BUILTIN_METRICS)} or module:function / file.py:function "
                             "(f(outputs, reference, labels) -> float, higher is better) [accuracy with --labels, "
                             "else sqnr].")(func)


def pair_for_analysis(model: str, encodings: str | None, config: str, overrides: str | None, source,
                      batch_size: int):
    """The pair to analyse: given encodings, or a calibration of MODEL with --config first."""
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
@click.option("--eval-data", default=None, help="Evaluation data (default: --data); 64 samples are plenty.")
@click.option("--labels", default=None, help="Integer labels of the evaluation samples (.npy/.txt): metric accuracy.")
@metric_option
@click.option("--config", default="default", show_default=True, help="Runtime config, when calibrating first.")
@overrides_option
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes for the sensitivity runs (each gets a share of the cores).")
@click.option("--target", type=float, default=None,
              help="Stop suggesting once the metric reaches this [float - 0.5 for % metrics].")
@click.option("--max-suggestions", type=click.IntRange(0, 100), default=10, show_default=True)
@click.option("--write-overrides", default=None, help="Also write the suggested overrides to this JSON file.")
@click.option("-o", "--output-dir", required=True, help="Report folder: report.html, report.json, overrides.json.")
@json_option
@reporting
def analyze_cmd(model, encodings, data, samples, batch_size, preprocess, seed, eval_data, labels, metric, config,
                overrides, jobs, target, max_suggestions, write_overrides, output_dir) -> Report:
    """Find the quantizers that cost accuracy and write overrides that fix them (white paper 4.8).

    Example: qtool analyze out/model.onnx --data calib.npz --labels labels.npy --jobs 2 -o report
    """
    graph = load_model(model)
    calib = open_model_data(graph, data, samples=samples, preprocess=preprocess, seed=seed)
    graph, enc_set, enc_source = pair_for_analysis(model, _sibling_encodings(model, encodings), config, overrides,
                                                   calib, batch_size)
    evaluation = open_model_data(graph, eval_data, samples=samples or 64, preprocess=preprocess, seed=seed) \
        if eval_data else open_model_data(graph, data, samples=samples or 64, preprocess=preprocess, seed=seed)
    label_array = load_labels(labels) if labels else None
    chosen = load_metric(metric or ("accuracy" if labels else "sqnr"))
    options = AnalyzeOptions(chosen, jobs, target, max_suggestions)
    report = analyze(graph, enc_set, list(evaluation.batches(batch_size)), options, labels=label_array,
                     progress=lambda label: Bar(label, unit="runs"), source=enc_source, model_path=model)
    folder = Path(output_dir)
    overrides_doc = {"comment": f"qtool analyze {model}: suggested overrides, most useful first",
                     "metric": chosen.name, "overrides": [s["override"] for s in report["suggestions"]]}
    report["overrides_file"] = str(folder / "overrides.json")
    with StagedOutputs() as out:
        atomic_payload = json.dumps(overrides_doc, indent=2, sort_keys=True).encode()
        out.path(folder / "overrides.json").write_bytes(atomic_payload)
        out.path(folder / "report.json").write_bytes(json.dumps(report, indent=2, sort_keys=True).encode())
        out.path(folder / "report.html").write_bytes(render_html(report).encode("utf-8"))
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
    lines += [f"    {r['group']} ({r['op_type']}): {r['only_enabled']:.2f} / {r['only_disabled']:.2f}"
              for r in report["sensitivity"][:5]]
    if report["suggestions"]:
        lines.append(f"  {len(report['suggestions'])} suggested overrides, expected {report['suggestions'][-1]['expected']:.2f} {unit}:")
        lines += [f"    {json.dumps(sug['override'], sort_keys=True)}" for sug in report["suggestions"][:10]]
    lines.append(f"wrote {folder / 'report.html'}, report.json, overrides.json" +
                 (f" and {write_overrides}" if write_overrides else ""))
    return lines
