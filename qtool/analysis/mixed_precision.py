"""Automatic mixed precision (AIMET's AMP, greedy): the cheapest per-layer precisions that keep
the metric within a budget of float.

1. Calibrate the model once per candidate (e.g. w8a8, w8a16, w16a16): every quantizer then has
   one encoding per candidate, and one switchable model selects among them at run time.
2. Sensitivity of every layer block (a layer's weights and outputs with the ops up to the next
   layer), two ways: raised alone from the lowest candidate, and, as AIMET measures it, lowered
   alone from the highest.
3. Greedy: raise blocks in the order of metric gained per bit-operation spent, measuring the
   model after each raise, until the metric is within the budget; then undo the raises the goal
   does not need (most expensive first). Every measurement is a point of the accuracy/cost curve.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.analysis.cost import layer_macs, param_elements
from qtool.analysis.evaluate import Evaluator, Setting
from qtool.analysis.groups import Group, blocks, quantizer_groups
from qtool.analysis.metric import Metric
from qtool.analysis.switchable import build_switchable
from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.parallel.executor import Executor
from qtool.progress import Progress, no_progress

log = logging.getLogger("qtool")
_CANDIDATE = re.compile(r"w(\d+)a(\d+)")


@dataclass(frozen=True)
class Candidate:
    param_bw: int
    act_bw: int

    @property
    def name(self) -> str:
        return f"w{self.param_bw}a{self.act_bw}"


def parse_candidates(text: str) -> list[Candidate]:
    """'w8a8,w8a16,w16a16' -> candidates from the cheapest up (by weight bits, then activation bits)."""
    found = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = _CANDIDATE.fullmatch(part)
        if not match or not all(2 <= int(b) <= 16 for b in match.groups()):
            raise QtoolError(f"--candidates: {part!r} is not wNaM with N, M in 2..16 (e.g. w8a8,w8a16,w16a16)")
        found.append(Candidate(int(match.group(1)), int(match.group(2))))
    if len(set(found)) < 2:
        raise QtoolError("--candidates: give at least two different candidates, e.g. w8a8,w8a16")
    return sorted(set(found), key=lambda c: (c.param_bw * c.act_bw, c.param_bw))


@dataclass
class Block:
    group: Group
    macs: int
    weights: int  # parameter elements


def _bops(block: Block, candidate: Candidate) -> float:
    return float(block.macs) * candidate.param_bw * candidate.act_bw


def _bytes(block: Block, candidate: Candidate) -> float:
    return block.weights * candidate.param_bw / 8.0


def mixed_precision(model: ir.Model, encodings: list[EncodingSet], candidates: list[Candidate],
                    batches: list[dict[str, np.ndarray]], metric: Metric, *, labels: np.ndarray | None = None,
                    budget: float = 0.5, target: float | None = None, jobs: int = 1,
                    progress: Callable[[str], Progress] = lambda label: no_progress,
                    finalize: Callable[[list[dict]], ir.Model] | None = None,
                    executor: Executor | None = None) -> dict:
    """The search; returns the curve, the chosen precision per block and the overrides.
    `finalize(overrides)` builds the QDQ model of the real pipeline (calibrate with the overrides)
    so that its metric, not the search's estimate, is reported. `executor`: where the sensitivity
    runs go (qtool.parallel; None: here)."""
    start = time.perf_counter()
    names = sorted(set(encodings[0].activations) | set(encodings[0].params))
    options = {n: [(e.activations.get(n) or e.params.get(n)) for e in encodings] for n in names}
    options = {n: encs for n, encs in options.items() if all(e is not None for e in encs)}
    switchable = build_switchable(model, options)
    evaluator = Evaluator(model, switchable, batches, metric, labels, jobs, executor)
    macs = layer_macs(model, batches[0])
    groups = [g for g in quantizer_groups(model, encodings[0]) if set(g.quantizers) & set(switchable.selectors)]
    block_list = []
    for block, members in blocks(model, groups):
        layer_macs_total = sum(macs.get(m.name, 0) for m in members)
        block_list.append(Block(block, layer_macs_total, param_elements(model, block.params)))
    float_score = evaluator.float_score()
    goal = target if target is not None else float_score - budget

    def setting(levels: dict[int, int]) -> Setting:
        choice = {q: levels.get(i, 0) + 1 for i, b in enumerate(block_list) for q in b.group.quantizers
                  if q in switchable.selectors}
        return Setting.of(choice, default=1)

    top_level = len(candidates) - 1
    top = {i: top_level for i in range(len(block_list))}
    base = evaluator.score(setting({}))
    ceiling = evaluator.score(setting(top))
    # Two views of each block: raised alone from the bottom (finds single culprits) and lowered
    # alone from the top (AIMET's; still ranks blocks when the bottom has collapsed to 0%).
    raised = [(i, c) for i in range(len(block_list)) for c in range(1, len(candidates))]
    lowered = [(i, c) for i in range(len(block_list)) for c in range(top_level)]
    log.info("mixed-precision: float %.2f, all %s %.2f, all %s %.2f, goal %.2f; sensitivity of %d blocks (%d runs)",
             float_score, candidates[0].name, base, candidates[-1].name, ceiling, goal, len(block_list),
             len(raised) + len(lowered))
    settings = [setting({i: c}) for i, c in raised] + [setting({**top, i: c}) for i, c in lowered]
    scores = evaluator.scores(settings, progress("mixed-precision sensitivity"))
    up = dict(zip(raised, scores[: len(raised)]))
    down = dict(zip(lowered, scores[len(raised):]))
    moves = []
    for i in range(len(block_list)):
        for c in range(1, len(candidates)):
            from_top = (ceiling if c == top_level else down[(i, c)]) - down[(i, 0)]
            benefit = max(up[(i, c)] - base, from_top)
            extra = _bops(block_list[i], candidates[c]) - _bops(block_list[i], candidates[0])
            moves.append((max(benefit, 0.0) / max(extra, 1.0), benefit, i, c))
    moves.sort(key=lambda m: (-m[0], -m[1], m[2], m[3]))
    # moves that showed no benefit alone come last, cheapest first: raising every block reaches
    # the all-highest metric, so a goal it meets is always met
    moves = [m for m in moves if m[1] > 0] + sorted((m for m in moves if m[1] <= 0),
                                                    key=lambda m: (_bops(block_list[m[2]], candidates[m[3]]), m[2], m[3]))

    levels: dict[int, int] = {}
    curve = [_point(block_list, candidates, levels, base, "all " + candidates[0].name)]
    bar = progress("mixed-precision search")
    for step, (_, gain, i, c) in enumerate(moves):
        if curve[-1]["metric"] >= goal:
            break
        if levels.get(i, 0) >= c:
            continue
        levels[i] = c
        score = evaluator.score(setting(levels))
        curve.append(_point(block_list, candidates, levels, score, f"{block_list[i].group.name} -> {candidates[c].name}"))
        bar(step + 1, len(moves))
    if curve[-1]["metric"] >= goal:  # undo raises the goal does not need, cheapest saving first
        evaluator.keep_base(setting(levels))  # each trial lowers one block from here
        for i in sorted(levels, key=lambda i: -(_bops(block_list[i], candidates[levels[i]]))):
            trial = {j: c for j, c in levels.items() if j != i}
            score = evaluator.score(setting(trial))
            if score >= goal:
                levels = trial
                curve.append(_point(block_list, candidates, levels, score,
                                    f"{block_list[i].group.name} back to {candidates[0].name}"))
    overrides = _overrides(block_list, candidates, levels)
    final = evaluator.score_model(finalize(overrides)) if finalize is not None else None
    evaluator.close()  # its sessions, and the files spilled beyond QTOOL_ANALYSIS_MB (an error: at exit)
    return {
        "metric": {"name": metric.name, "unit": metric.unit}, "float": float_score, "goal": goal,
        "candidates": [c.name for c in candidates], "samples": evaluator.samples,
        "all_highest": _point(block_list, candidates, top, ceiling, "all " + candidates[-1].name),
        "curve": curve, "met": curve[-1]["metric"] >= goal,
        "raised": [{"block": block_list[i].group.name, "candidate": candidates[c].name,
                    "params": block_list[i].group.params, "activations": block_list[i].group.activations}
                   for i, c in sorted(levels.items())],
        "blocks": len(block_list), "overrides": overrides, "final_metric": final,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _point(block_list: list[Block], candidates: list[Candidate], levels: dict[int, int], score: float,
           label: str) -> dict:
    bops = sum(_bops(b, candidates[levels.get(i, 0)]) for i, b in enumerate(block_list))
    base_bops = sum(_bops(b, candidates[0]) for b in block_list) or 1.0
    size = sum(_bytes(b, candidates[levels.get(i, 0)]) for i, b in enumerate(block_list))
    base_size = sum(_bytes(b, candidates[0]) for b in block_list) or 1.0
    return {"step": label, "metric": score, "relative_bops": bops / base_bops, "weight_bytes": int(size),
            "relative_size": size / base_size, "raised_blocks": len(levels)}


def _overrides(block_list: list[Block], candidates: list[Candidate], levels: dict[int, int]) -> list[dict]:
    """Self-contained: the base candidate for everything, then each raised block's bit-widths."""
    base = candidates[0]
    entries = [{"tensors": "*", "kind": "param", "role": "weight", "bitwidth": base.param_bw},
               {"tensors": "*", "kind": "activation", "bitwidth": base.act_bw}]
    for i, c in sorted(levels.items()):
        group, chosen = block_list[i].group, candidates[c]
        weights = [p for p in group.params]
        if weights and chosen.param_bw != base.param_bw:
            entries.append({"tensors": weights, "role": "weight", "bitwidth": chosen.param_bw,
                            "comment": f"{group.name}: {chosen.name}"})
        if group.activations and chosen.act_bw != base.act_bw:
            entries.append({"tensors": group.activations, "kind": "activation", "bitwidth": chosen.act_bw,
                            "comment": f"{group.name}: {chosen.name}"})
    return entries
