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

Small evaluation sets: a metric that counts samples (accuracy, top-1) moves in steps of one
sample, so most groups cost exactly 0.00 alone. Its scores carry a finer figure (metric.Score:
the mean probability of the correct class), which breaks the ties in every ranking here and
gives the verdict when the count cannot; the report says so (`ranking`). The report holds no
sentinel: an SQNR that is exact (the metric caps it at MAX_DB to stay a number) is null.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool._version import __version__
from qtool.analysis.evaluate import Evaluator, Setting
from qtool.analysis.groups import Group, blocks, fix_encoding, override_for, quantizer_groups
from qtool.analysis.metric import MAX_DB, Metric, fine_of, pieces
from qtool.analysis.role_label import describe
from qtool.analysis.switchable import build_switchable
from qtool.analysis.tensors import activation_views, clip_bounds, param_view, statistic
from qtool.encodings.encoding_set import EncodingSet
from qtool.parallel.executor import Executor
from qtool.progress import Progress, no_progress

log = logging.getLogger("qtool")

FIX, FLOAT, QUANTIZED = 2, 0, 1  # selector values: the fix candidate, float, the encodings'
DEFAULT_BUDGET = 0.5  # metric units (points for %): suggestions stop within this of float
SANITY_TOLERANCE = 1e-5  # relative: float summation order, not a simulation error


@dataclass(frozen=True)
class AnalyzeOptions:
    metric: Metric
    jobs: int = 1
    target: float | None = None  # stop suggesting once the metric reaches this
    budget: float = DEFAULT_BUDGET  # else stop within this of float
    max_suggestions: int = 10
    worst: int = 6  # groups whose tensors get statistics
    refine: int = 3  # blocks (by loss, and by gain) whose nodes are analysed one by one
    pool: int = 4  # nodes (by loss, and by gain) the suggestions choose from, with their blocks
    executor: Executor | None = None  # where the sensitivity runs go (qtool.parallel; None: here)


def analyze(model: ir.Model, encodings: EncodingSet, batches: Iterable[dict[str, np.ndarray]],
            options: AnalyzeOptions, *, labels: np.ndarray | None = None,
            progress: Callable[[str], Progress] = lambda label: no_progress, source: str = "encodings",
            model_path: str = "model") -> dict:
    """The report (a JSON-able dict; report_html.py renders it)."""
    start = time.perf_counter()
    all_encodings = {**encodings.activations, **encodings.params}
    # one switchable model for the sensitivity runs (selector 0 float, 1 quantized) and the
    # suggestions (2: the fix): one set of sessions and cached activations, and the suggestions'
    # first exclusion trials are the sensitivity runs' own (read from the memo)
    fixes = {name: fix for name, enc in all_encodings.items() if (fix := fix_encoding(model, name, enc)) is not None}
    switchable = build_switchable(
        model, {name: [enc] + ([fixes[name][0]] if name in fixes else []) for name, enc in all_encodings.items()},
        source=source)
    evaluator = Evaluator(model, switchable, batches, options.metric, labels, options.jobs, options.executor)
    try:
        return _analyze(model, encodings, options, labels, progress, source, model_path, start, evaluator, fixes)
    finally:
        evaluator.close()  # its sessions, and the files spilled beyond QTOOL_ANALYSIS_MB


def _analyze(model, encodings, options, labels, progress, source, model_path, start, evaluator, fixes) -> dict:
    switchable = evaluator.switchable
    groups = [g for g in quantizer_groups(model, encodings) if set(g.quantizers) & set(switchable.selectors)]

    log.info("analyze: %d quantizers in %d groups, %d samples; FP32 sanity and weights/activations split",
             len(switchable.selectors), len(groups), evaluator.samples)
    sanity = _sanity(evaluator)
    summary = _summary(evaluator, encodings)
    sensitivity = _ranked_sensitivity(model, evaluator, groups, summary, options, progress)
    log.info("analyze: per-layer SQNR and statistics (%.0fs so far)", time.perf_counter() - start)
    by_name = {g.name: g for g in groups}
    worst = [by_name[row["group"]] for row in sensitivity if row["level"] == "node"][: options.worst]
    layer_sqnr, statistics = _tensor_views(model, encodings, evaluator, switchable, groups, worst)
    coarse = {block.name: block for block, _ in blocks(model, groups)}
    pool = _suggestion_pool(sensitivity, by_name, coarse, options.pool)
    log.info("analyze: suggestions from %d candidates (%.0fs so far)", len(pool), time.perf_counter() - start)
    suggestions = _suggest(evaluator, pool, fixes, summary, sensitivity, options, encodings)
    return _without_sentinels({
        "model": model_path, "encodings": source, "qtool_version": __version__,
        "metric": {"name": options.metric.name, "unit": options.metric.unit, "higher_is_better": True},
        "samples": evaluator.samples, "fp32_sanity": sanity, "summary": summary,
        "ranking": _ranking(options.metric, evaluator.samples, sensitivity), "sensitivity": sensitivity,
        "layer_sqnr": layer_sqnr, "statistics": statistics, "suggestions": suggestions,
        "seconds": round(time.perf_counter() - start, 2),
    })


def _rank(row: dict) -> tuple:
    """Worst first: by what the group costs alone, ties broken by the finer figure, then by what
    leaving it in float recovers."""
    return (-row["loss"], -(row.get("fine_loss") or 0.0), -row["gain"], -(row.get("fine_gain") or 0.0), row["group"])


def _resolution(metric: Metric, samples: int) -> float | None:
    """One sample's worth of a metric that counts samples (points), None for the others."""
    return 100.0 / samples if metric.fine and samples else None


def _ranking(metric: Metric, samples: int, rows: list[dict]) -> dict:
    """How the groups were ranked, in words for the report: by the metric, or by the finer
    figure where the metric cannot tell the groups apart."""
    step = _resolution(metric, samples)
    losses = {round(row["loss"], 9) for row in rows}
    if step is None or not any("fine_loss" in row for row in rows):
        return {"by": metric.name, "fine": None, "note": None}
    if len(losses) > 1 and max(abs(loss) for loss in losses) >= step:
        return {"by": metric.name, "fine": metric.fine, "note": f"ranked by {metric.name}, ties by the {metric.fine}"}
    note = (f"{metric.name} cannot tell the groups apart on {samples} samples (one sample is {step:.2f} points, "
            f"and no group alone changes one): ranked by the {metric.fine} instead")
    return {"by": metric.fine, "fine": metric.fine, "note": note}


def _without_sentinels(report: dict) -> dict:
    """An exact SQNR is capped at MAX_DB inside the metric; in the report it is null (the HTML
    and the CLI say 'exact'), and a loss measured from it means nothing, so it is null too."""
    if report["metric"]["unit"] != "dB":
        return report
    def clean(value):
        return None if isinstance(value, float) and value >= MAX_DB else value
    exact_float = clean(report["summary"]["float"]) is None
    report["summary"] = {key: clean(value) for key, value in report["summary"].items()}
    for row in report["sensitivity"]:
        row.update(only_enabled=clean(row["only_enabled"]), only_disabled=clean(row["only_disabled"]),
                   loss=None if exact_float else row["loss"])
    for row in report["layer_sqnr"]:
        row["sqnr_db"] = clean(row["sqnr_db"])
    for suggestion in report["suggestions"]:
        suggestion["expected"] = clean(suggestion["expected"])
    return report


def _ranked_sensitivity(model, evaluator, groups, summary, options, progress) -> list[dict]:
    """Blocks first (a layer and the ops up to the next one), then the nodes of the worst blocks:
    node-level rows for those, block-level rows for the rest, ranked together by loss."""
    coarse = blocks(model, groups)
    log.info("analyze: sensitivity of %d layer blocks (%d runs)", len(coarse), 2 * len(coarse))
    block_rows = _sensitivity(evaluator, [block for block, _ in coarse], summary, progress("analyze blocks"))
    by_block = {block.name: members for block, members in coarse}
    chosen = {row["group"] for row in sorted(block_rows, key=_rank)[: options.refine]}
    chosen |= {row["group"] for row in sorted(block_rows, key=_by_gain)[: options.refine]}
    single = [row for row in block_rows if row["group"] in chosen and len(by_block[row["group"]]) == 1]
    nodes = [m for name in sorted(chosen) if len(by_block[name]) > 1 for m in by_block[name]]
    log.info("analyze: sensitivity of the %d nodes of the %d worst blocks (%d runs)", len(nodes), len(chosen),
             2 * len(nodes))
    node_rows = _sensitivity(evaluator, nodes, summary, progress("analyze layers")) if nodes else []
    for row in single:  # a block of one node is that node
        row["group"] = by_block[row["group"]][0].name
    rows = [dict(row, level="node") for row in node_rows + single]
    rows += [dict(row, level="block") for row in block_rows if row["group"] not in chosen]
    rows.sort(key=_rank)
    return rows


def _by_gain(row: dict) -> tuple:
    """Most recovered first when the group alone is left in float, ties by the finer figure."""
    return (-row["gain"], -(row.get("fine_gain") or 0.0), row["group"])


def _sanity(evaluator: Evaluator) -> dict:
    """Bit-exact, or equal within float rounding: a weight that passes through a selector is no
    longer a constant, and onnxruntime then runs Conv/MatMul through kernels that sum in another
    order (PP-OCRv4: 1.5e-6 of outputs near 1). Anything larger means the simulation is wrong."""
    outputs = evaluator.outputs(Setting.of(default=FLOAT))
    try:
        return _compare(outputs, evaluator)
    finally:
        evaluator.spill.release(list(outputs.values()))


def _compare(outputs, evaluator: Evaluator) -> dict:
    pairs = [(out, ref) for n in evaluator.names  # per batch where an output's shape varies
             for out, ref in zip(pieces(outputs[n]), pieces(evaluator.reference[n]))
             if np.issubdtype(ref.dtype, np.floating)]
    diff = max((float(np.max(np.abs(out.astype(np.float64) - ref), initial=0.0)) for out, ref in pairs), default=0.0)
    scale = max((float(np.max(np.abs(ref), initial=0.0)) for _, ref in pairs), default=0.0)
    if diff == 0.0:
        return {"passed": True, "max_abs_diff": 0.0,
                "message": "all quantizers bypassed reproduces the float outputs bit for bit"}
    if diff <= SANITY_TOLERANCE * max(scale, 1e-30):
        return {"passed": True, "max_abs_diff": diff,
                "message": f"all quantizers bypassed reproduces the float outputs within float rounding "
                           f"({diff:.3g} of outputs up to {scale:.3g}: weights behind a selector run through "
                           f"onnxruntime kernels that sum in another order)"}
    return {"passed": False, "max_abs_diff": diff,
            "message": "with every quantizer bypassed the outputs differ from the float model's: the simulation "
                       "itself is wrong (please report it)"}


def _summary(evaluator: Evaluator, encodings: EncodingSet) -> dict:
    params = {name: QUANTIZED for name in encodings.params if name in evaluator.switchable.selectors}
    activations = {name: QUANTIZED for name in encodings.activations if name in evaluator.switchable.selectors}
    float_score = evaluator.float_score()
    quantized = evaluator.score(Setting.of(default=QUANTIZED))
    weights_only = evaluator.score(Setting.of(params, default=FLOAT))
    activations_only = evaluator.score(Setting.of(activations, default=FLOAT))
    scores = {"float": float_score, "quantized": quantized, "weights_only": weights_only,
              "activations_only": activations_only}
    step = _resolution(evaluator.metric, evaluator.samples)
    fine = {key: fine_of(value) for key, value in scores.items()}
    summary = {**scores, "verdict": _verdict(scores)}
    if step is not None and None not in fine.values():
        summary["fine"] = {"name": evaluator.metric.fine, "unit": "%", **fine}
        if abs(float_score - quantized) < step:  # the count cannot see the drop: the finer figure can
            summary["verdict"], summary["verdict_from"] = _verdict(fine), evaluator.metric.fine
    return summary


def _verdict(scores: dict) -> str:
    """Which side causes the drop: weights, activations, both, or none."""
    drop_w, drop_a = scores["float"] - scores["weights_only"], scores["float"] - scores["activations_only"]
    if scores["float"] - scores["quantized"] <= 1e-9:
        return "none"
    if drop_w > 2 * drop_a:
        return "weights"
    if drop_a > 2 * drop_w:
        return "activations"
    return "both"


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
        row = {"group": group.name, "op_type": group.op_type, "role": group.role, "quantizers": group.quantizers,
               "only_enabled": float(only_enabled), "only_disabled": float(only_disabled),
               "loss": summary["float"] - only_enabled, "gain": only_disabled - summary["quantized"]}
        if "fine" in summary and fine_of(only_enabled) is not None and fine_of(only_disabled) is not None:
            row["fine_loss"] = summary["fine"]["float"] - fine_of(only_enabled)
            row["fine_gain"] = fine_of(only_disabled) - summary["fine"]["quantized"]
        rows.append(row)
    return rows


def _tensor_views(model, encodings, evaluator, switchable, groups, worst_groups) -> tuple[list[dict], list[dict]]:
    activations = [a for g in groups for a in g.activations if a in switchable.quantized_values]
    worst_acts = {a: clip_bounds(encodings, a) for g in worst_groups for a in g.activations
                  if a in switchable.quantized_values and clip_bounds(encodings, a) is not None}
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
            view = param_view(model, name, clip_bounds(encodings, name))
            statistics.append(statistic(encodings, name, "param", group.name, view))
    return layer_sqnr, statistics


def _suggestion_pool(sensitivity: list[dict], groups: dict[str, Group], coarse: dict[str, Group],
                     size: int) -> list[Group]:
    """Candidates for the fix: the worst nodes by what they cost alone and by what leaving them in
    float recovers, and the worst blocks (a layer's weights and output can only be fixed together
    when both are broken)."""
    nodes = [row for row in sensitivity if row["level"] == "node"]
    names = [row["group"] for row in sorted(nodes, key=_rank)[:size]]
    names += [row["group"] for row in sorted(nodes, key=_by_gain)[:size]
              if row["gain"] > 0 or (row.get("fine_gain") or 0.0) > 0]
    pool = [groups[name] for name in dict.fromkeys(names)]
    pool += [block for block in coarse.values()
             if len(block.quantizers) > 1 and any(g.name in names for g in block.members)][: max(size - 1, 1)]
    return pool


def _default_target(summary: dict, sensitivity: list[dict], pool: list[Group], unit: str,
                    budget: float) -> float | None:
    """Where to stop without --target: within `budget` of float; for SQNR (float is infinite),
    1 dB under what the model would give if every group in the pool were as good as the median
    group (noise powers of independent quantizers add up)."""
    if unit != "dB":
        return summary["float"] - budget
    if not sensitivity:
        return None
    pooled = {q for group in pool for q in group.quantizers}
    typical = float(np.median([row["only_enabled"] for row in sensitivity]))
    values = [typical if set(row["quantizers"]) & pooled else row["only_enabled"] for row in sensitivity]
    return float(-10.0 * np.log10(sum(10.0 ** (-value / 10.0) for value in values)) - 1.0)


def _suggest(evaluator: Evaluator, pool: list[Group], fixes: dict, summary: dict, sensitivity: list[dict],
             options: AnalyzeOptions, encodings: EncodingSet) -> list[dict]:
    """Forward selection: at each step the candidate whose float version recovers most, with the
    cheapest fix that recovers at least 80% of that; then drop quantizers the result does not
    need. Every number is measured on the switchable model."""
    target = options.target if options.target is not None else _default_target(
        summary, sensitivity, pool, options.metric.unit, options.budget)
    tolerance = 0.0 if options.metric.unit == "%" else 0.1
    selectable = evaluator.switchable.selectors
    chosen: dict[str, int] = {}
    reasons: dict[str, str] = {}
    current = summary["quantized"]
    remaining = list(pool)
    while remaining and len(reasons) < options.max_suggestions and (target is None or current < target):
        def variant(group: Group, exclude: bool) -> dict[str, int]:
            return {q: FLOAT if exclude or q not in fixes else FIX for q in group.quantizers if q in selectable}
        # rank by what leaving the group in float recovers (the most any fix can), then take the
        # cheapest fix that gets 80% of that
        trials = [(evaluator.score(Setting.of({**chosen, **variant(g, True)})), g) for g in remaining]
        excluded_score, best = max(trials, key=lambda pair: (pair[0], fine_of(pair[0]) or 0.0))
        fixable = any(q in fixes for q in best.quantizers)
        fix_score = evaluator.score(Setting.of({**chosen, **variant(best, False)})) if fixable else excluded_score
        use_fix = fixable and fix_score - current >= 0.8 * (excluded_score - current)
        new_score = fix_score if use_fix else excluded_score
        if new_score <= current + tolerance:
            break
        for name, selector in variant(best, not use_fix).items():
            chosen[name] = selector
            reasons[name] = f"{best.name} ({describe(best.op_type, best.role)}): fixing it takes the model from {current:.2f} to {new_score:.2f}"
        current = new_score
        remaining = [g for g in remaining if g is not best]
        if remaining:
            evaluator.keep_base(Setting.of(chosen))  # the next trials change one group from here
    if chosen:
        evaluator.keep_base(Setting.of(chosen))
    for name in list(chosen):  # the quantizers the result does not need
        trial = {q: v for q, v in chosen.items() if q != name}
        score = evaluator.score(Setting.of(trial))
        if score >= current - tolerance:
            chosen, current = trial, score
    unit = options.metric.unit
    suggestions = []
    for name, selector in chosen.items():
        how = fixes[name][1] if selector == FIX else "exclude"
        kind = "param" if name in encodings.params else "activation"
        reason = f"{reasons[name]} {unit}; {_describe(how)} {name}"
        suggestions.append({"reason": reason, "override": override_for(name, kind, how, reason), "expected": current})
    return suggestions


def _describe(how: str) -> str:
    return {"per_channel": "per-channel weights for", "bitwidth": "16 bits for",
            "exclude": "no quantizer on"}[how]
