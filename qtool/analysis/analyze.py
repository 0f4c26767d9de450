"""The PTQ debugging flow (white paper 4.8), from "accuracy dropped" to overrides that fix it.

1. FP32 sanity: every quantizer bypassed must give the float outputs bit for bit.
2. Weights only vs activations only: which side causes the drop.
3. Per-group sensitivity: each group (a layer's output and weights) alone quantized, and alone
   left in float, ranked; per-layer SQNR of the quantized model's tensors.
4. Statistics of the worst tensors: ranges, clipped fraction, histograms, per-channel ranges.
5. Suggestions, greedy: take the groups whose float version recovers most, give each the
   cheapest fix that recovers most of what exclusion would (per-channel weights, 16 bits, or
   exclusion), measure the model with the fixes so far, stop at the target.

Every evaluation is one pass of one switchable model (switchable.py) over cached batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool import __version__
from qtool.analysis.evaluate import Evaluator, Setting
from qtool.analysis.groups import Group, fix_encoding, override_for, quantizer_groups
from qtool.analysis.metric import Metric
from qtool.analysis.switchable import build_switchable
from qtool.analysis.tensors import activation_views, encoding_range, param_view, statistic
from qtool.encodings_io import EncodingSet
from qtool.progress import Progress, no_progress

FIX, FLOAT, QUANTIZED = 2, 0, 1  # selector values: the fix candidate, float, the encodings'
DEFAULT_BUDGET = 0.5  # percentage points: suggestions stop within this of float for % metrics


@dataclass(frozen=True)
class AnalyzeOptions:
    metric: Metric
    jobs: int = 1
    target: float | None = None  # stop suggesting once the metric reaches this
    max_suggestions: int = 10
    worst: int = 6  # groups whose tensors get statistics


def analyze(model: ir.Model, encodings: EncodingSet, batches: Iterable[dict[str, np.ndarray]],
            options: AnalyzeOptions, *, labels: np.ndarray | None = None,
            progress: Callable[[str], Progress] = lambda label: no_progress, source: str = "encodings",
            model_path: str = "model") -> dict:
    """The report (a JSON-able dict; report_html.py renders it)."""
    start = time.perf_counter()
    groups = quantizer_groups(model, encodings)
    fixes = {}
    for name, enc in {**encodings.activations, **encodings.params}.items():
        fix = fix_encoding(model, name, enc)
        if fix is not None:
            fixes[name] = fix
    candidates = {name: [enc] + ([fixes[name][0]] if name in fixes else [])
                  for name, enc in {**encodings.activations, **encodings.params}.items()}
    switchable = build_switchable(model, candidates, source=source)
    evaluator = Evaluator(model, switchable, batches, options.metric, labels, options.jobs)
    switchable_names = set(switchable.selectors)
    groups = [g for g in groups if set(g.quantizers) & switchable_names]

    sanity = _sanity(evaluator)
    summary = _summary(evaluator, encodings)
    sensitivity = _sensitivity(evaluator, groups, summary, progress("analyze"))
    worst = [row["group"] for row in sensitivity[: options.worst]]
    by_name = {g.name: g for g in groups}
    layer_sqnr, statistics = _tensor_views(model, encodings, evaluator, switchable, groups,
                                           [by_name[name] for name in worst])
    suggestions = _suggest(evaluator, by_name, sensitivity, fixes, summary, options, encodings)
    return {
        "model": model_path, "encodings": source, "qtool_version": __version__,
        "metric": {"name": options.metric.name, "unit": options.metric.unit, "higher_is_better": True},
        "samples": evaluator.samples, "fp32_sanity": sanity, "summary": summary, "sensitivity": sensitivity,
        "layer_sqnr": layer_sqnr, "statistics": statistics, "suggestions": suggestions,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _sanity(evaluator: Evaluator) -> dict:
    outputs = evaluator.outputs(Setting.of(default=FLOAT))
    diff = max((float(np.max(np.abs(outputs[n].astype(np.float64) - evaluator.reference[n]), initial=0.0))
                for n in evaluator.names if np.issubdtype(evaluator.reference[n].dtype, np.floating)), default=0.0)
    passed = diff == 0.0
    message = ("all quantizers bypassed reproduces the float outputs exactly" if passed else
               "with every quantizer bypassed the outputs differ from the float model's: the simulation itself "
               "is wrong (please report it)")
    return {"passed": passed, "max_abs_diff": diff, "message": message}


def _summary(evaluator: Evaluator, encodings: EncodingSet) -> dict:
    params = {name: QUANTIZED for name in encodings.params if name in evaluator.switchable.selectors}
    activations = {name: QUANTIZED for name in encodings.activations if name in evaluator.switchable.selectors}
    float_score = evaluator.float_score()
    quantized = evaluator.score(Setting.of(default=QUANTIZED))
    weights_only = evaluator.score(Setting.of(params, default=FLOAT))
    activations_only = evaluator.score(Setting.of(activations, default=FLOAT))
    drop_w, drop_a = float_score - weights_only, float_score - activations_only
    if float_score - quantized <= 1e-9:
        verdict = "none"
    elif drop_w > 2 * drop_a:
        verdict = "weights"
    elif drop_a > 2 * drop_w:
        verdict = "activations"
    else:
        verdict = "both"
    return {"float": float_score, "quantized": quantized, "weights_only": weights_only,
            "activations_only": activations_only, "verdict": verdict}


def _sensitivity(evaluator: Evaluator, groups: list[Group], summary: dict, progress: Progress) -> list[dict]:
    """Each group alone quantized and alone in float, ranked by what it costs alone."""
    selectable = evaluator.switchable.selectors
    settings = []
    for group in groups:
        names = [q for q in group.quantizers if q in selectable]
        settings.append(Setting.of({q: QUANTIZED for q in names}, default=FLOAT))
        settings.append(Setting.of({q: FLOAT for q in names}, default=QUANTIZED))
    scores = evaluator.scores(settings, progress)
    rows = []
    for index, group in enumerate(groups):
        only_enabled, only_disabled = scores[2 * index], scores[2 * index + 1]
        rows.append({"group": group.name, "op_type": group.op_type, "quantizers": group.quantizers,
                     "only_enabled": only_enabled, "only_disabled": only_disabled,
                     "loss": summary["float"] - only_enabled, "gain": only_disabled - summary["quantized"]})
    rows.sort(key=lambda row: (-row["loss"], -row["gain"], row["group"]))
    return rows


def _tensor_views(model, encodings, evaluator, switchable, groups, worst_groups) -> tuple[list[dict], list[dict]]:
    activations = [a for g in groups for a in g.activations if a in switchable.quantized_values]
    worst_acts = {a: encoding_range(encodings, a) for g in worst_groups for a in g.activations
                  if a in switchable.quantized_values and encoding_range(encodings, a) is not None}
    views = activation_views(model, switchable, evaluator.batches, activations, worst_acts)
    owner = {q: g for g in groups for q in g.quantizers}
    layer_sqnr = [{"tensor": a, "node": owner[a].name, "op_type": owner[a].op_type, "sqnr_db": views[a]["sqnr_db"]}
                  for a in activations]
    statistics = []
    for group in worst_groups:
        for name in group.activations:
            if name in views:
                statistics.append(statistic(encodings, name, "activation", group.name, views[name]))
        for name in group.params:
            view = param_view(model, name, encoding_range(encodings, name))
            statistics.append(statistic(encodings, name, "param", group.name, view))
    return layer_sqnr, statistics


def _suggest(evaluator: Evaluator, groups: dict[str, Group], sensitivity: list[dict], fixes: dict,
             summary: dict, options: AnalyzeOptions, encodings: EncodingSet) -> list[dict]:
    """Greedy: groups by what leaving them in float recovers; per group the cheapest fix that
    recovers at least 80% of what exclusion would; measured cumulatively."""
    target = options.target
    if target is None and options.metric.unit == "%":
        target = summary["float"] - DEFAULT_BUDGET
    chosen: dict[str, int] = {}
    current = summary["quantized"]
    suggestions: list[dict] = []
    ranked = sorted(sensitivity, key=lambda row: (-row["gain"], row["group"]))
    for row in ranked:
        if len(suggestions) >= options.max_suggestions or (target is not None and current >= target):
            break
        if row["gain"] <= 0:
            break
        names = [q for q in groups[row["group"]].quantizers if q in evaluator.switchable.selectors]
        fixed = {**chosen, **{q: FIX if q in fixes else FLOAT for q in names}}
        excluded = {**chosen, **{q: FLOAT for q in names}}
        score_fix, score_excluded = (evaluator.score(Setting.of(fixed)), evaluator.score(Setting.of(excluded)))
        use_fix = score_fix - current >= 0.8 * (score_excluded - current)
        new_score = score_fix if use_fix else score_excluded
        if new_score <= current:
            continue
        chosen = fixed if use_fix else excluded
        unit = options.metric.unit
        for name in names:
            how = fixes[name][1] if use_fix and name in fixes else "exclude"
            kind = "param" if name in encodings.params else "activation"
            reason = (f"{row['group']} ({row['op_type']}): alone it costs {row['loss']:.2f} {unit}; "
                      f"{_describe(how)} {name}")
            suggestions.append({"reason": reason, "override": override_for(name, kind, how, reason),
                                "expected": new_score})
        current = new_score
    return suggestions


def _describe(how: str) -> str:
    return {"per_channel": "per-channel weights for", "bitwidth": "16 bits for",
            "exclude": "no quantizer on"}[how]
