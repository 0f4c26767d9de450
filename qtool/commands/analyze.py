"""`analyze`: the quantizers that cost accuracy, and the overrides that fix them (white paper 4.8)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qtool.commands.fields import option
from qtool.commands.options import OVERRIDES_HELP, EvaluationOptions
from qtool.commands.report import ProgressFactory, Report, bar


@dataclass(frozen=True, kw_only=True)
class AnalyzeOptions(EvaluationOptions):
    encodings: str | None = option(None, "Encodings JSON (default: MODEL's sibling, else calibrate with --config).")
    overrides: str | None = option(None, OVERRIDES_HELP)
    budget: float = option(0.5, "Stop suggesting once the metric is within this of float (metric units).",
                           bounds=(0, None))
    target: float | None = option(None, "Stop suggesting once the metric reaches this (default: float - budget; "
                                        "sqnr: an estimate).")
    max_suggestions: int = option(10, "At most this many overrides.", bounds=(0, 100))
    write_overrides: str | None = option(None, "Also write the suggested overrides to this JSON file.")


def analyze(model: str | os.PathLike, output: str | os.PathLike, options: AnalyzeOptions,
            progress: ProgressFactory = bar) -> Report:
    """Find the quantizers that cost accuracy and write overrides that fix them (white paper 4.8).

    Example: qtool analyze out/model.onnx --data calib.npz --eval-data eval.npz --labels labels.npy -o report
    """
    from qtool.commands.inputs import load_pair
    from qtool.ir.graph import load_model

    sibling = Path(model).with_suffix("").as_posix() + ".encodings.json"
    encodings = options.encodings or (sibling if Path(sibling).exists() else None)
    from qtool.commands.blockwise import refuse_block_pair

    report = analyze_model(load_model(model), options,
                           lambda: refuse_block_pair(load_pair(model, encodings), "analyze") if encodings else None,
                           str(model), progress)
    return write_analysis(report, output, str(model), options.write_overrides)


def write_analysis(report: dict, output: str | os.PathLike, label: str, write_overrides: str | None = None) -> Report:
    """Write an analysis into folder `output` (report.html, report.json, overrides.json, and a copy
    of the overrides at `write_overrides`); the Report of what it found and wrote."""
    from qtool.analysis.report_html import render_html, without_timings
    from qtool.files import strict_json
    from qtool.files.atomic import StagedOutputs

    folder = Path(output)
    overrides_doc = {"comment": f"qtool analyze {label}: suggested overrides, most useful first",
                     "metric": report["metric"]["name"], "overrides": [s["override"] for s in report["suggestions"]]}
    report["overrides_file"] = str(folder / "overrides.json")
    with StagedOutputs() as out:
        payload = strict_json.dumps(overrides_doc).encode()
        out.path(folder / "overrides.json").write_bytes(payload)
        stored = without_timings(report)  # byte-identical across runs; the time is in the printed summary
        out.path(folder / "report.json").write_bytes(strict_json.dumps(stored).encode())
        out.path(folder / "report.html").write_bytes(render_html(stored).encode("utf-8"))
        if write_overrides:
            out.path(write_overrides).write_bytes(payload)
    keep = ("summary", "fp32_sanity", "samples", "seconds", "suggestions")
    summary = {**{k: report[k] for k in keep}, "worst": report["sensitivity"][:10],
               "report": str(folder / "report.html")}
    lines = analysis_lines(report) + [f"wrote {folder / 'report.html'}, report.json, overrides.json" +
                                      (f" and {write_overrides}" if write_overrides else "")]
    return Report(summary, lines)


def analyze_model(graph, options: AnalyzeOptions, given_pair: Callable[[], tuple | None], label: str,
                  progress: ProgressFactory = bar) -> dict:
    """The analysis in memory: the report dict (qtool.analysis.analyze). `given_pair()`: the
    (graph, encodings, source) to analyse, or None to calibrate `graph` with --config first; it
    is called once the data has been checked."""
    from qtool.analysis.analyze import AnalyzeOptions as StepOptions
    from qtool.analysis.analyze import analyze as analyze_step
    from qtool.analysis.metric import metric_for
    from qtool.commands.inputs import load_labels, open_model_data, read_overrides
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.steps.calibrate import calibrate
    from qtool.steps.calibrate_shards import sharded

    calib = open_model_data(graph, options.data, **options.reading())
    evaluation = open_model_data(graph, options.eval_data if options.eval_data is not None else options.data,
                                 **{**options.reading(), "samples": options.eval_samples})
    labels = load_labels(options.labels, graph, evaluation) if options.labels is not None else None
    chosen = metric_for(options.metric, labels, graph)
    executor = options.make_executor()
    pair = given_pair()
    if pair is None:
        plan = build_plan(graph, load_config(options.config), PlanOptions(overrides=read_overrides(options.overrides)))
        encodings = calibrate(graph, plan, lambda: calib.batches(options.batch_size), total=calib.count(),
                              progress=progress("calibrate"), observe=sharded(executor)).encodings
        pair = graph, encodings, f"{label} (calibrated with {options.config})"
    step = StepOptions(chosen, options.jobs, options.target, options.budget, options.max_suggestions,
                       executor=executor)
    return analyze_step(pair[0], pair[1], list(evaluation.batches(options.batch_size)), step, labels=labels,
                        progress=lambda name: progress(name, unit="runs"), source=pair[2], model_path=label)


def analysis_lines(report: dict) -> list[str]:
    """The printed summary of an analysis (without the files it wrote)."""
    from qtool.analysis.report_text import summary_lines

    sanity = "FP32 sanity: ok" if report["fp32_sanity"]["passed"] else \
        f"FP32 sanity: FAILED (max |diff| {report['fp32_sanity']['max_abs_diff']:.3g})"
    return [f"analyzed {report['samples']} samples in {report['seconds']:.0f}s; {sanity}", *summary_lines(report)]
