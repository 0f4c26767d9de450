"""The recipe's `expect:` block: a quality gate on the last simulate step's metrics.

A check on a metric the run did not measure fails (a gate that cannot fail is no gate), with one
exception that lets every recipe serve models without labels: when no output was scored against
labels, the accuracy checks (`max_accuracy_drop`, `min_accuracy`) are skipped, said so, and the
label-free checks (`min_sqnr_db`, `min_channel_sqnr_db`) gate the run alone. Validation
(validate.py) refuses a recipe whose gate would then have nothing left to check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ACCURACY_CHECKS = ("max_accuracy_drop", "min_accuracy")
LABEL_FREE_CHECKS = ("min_sqnr_db", "min_channel_sqnr_db")


@dataclass(frozen=True)
class Check:
    name: str
    required: float
    actual: float | None  # the worst value over the model's outputs; None when not measured
    passed: bool
    skipped: str | None = None  # why the check did not apply (no labels); it then passes

    def describe(self) -> str:
        relation = "<=" if self.name.startswith("max_") else ">="
        if self.skipped:
            return f"{self.name}: skipped, {self.skipped} (required {relation} {self.required:g})"
        shown = "not measured" if self.actual is None else _shown(self.actual)
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.name}: {shown} (required {relation} {self.required:g}) {verdict}"


def _shown(value: float) -> str:
    """A figure as text: identical outputs have an infinite SQNR, shown as 'exact'."""
    return "exact" if math.isinf(value) and value > 0 else f"{value:.2f}"


def _worst(values: list[float], larger_is_better: bool) -> float | None:
    if not values:
        return None
    return min(values) if larger_is_better else max(values)


def check_expectations(expect: dict[str, float], outputs: dict[str, dict]) -> list[Check]:
    """`outputs` is simulate's report: per output name, sqnr_db, worst_channel_sqnr_db,
    top1_agreement, accuracies (0..1)."""
    rows = list(outputs.values())
    measured = {
        "min_sqnr_db": _worst([r["sqnr_db"] for r in rows if r.get("sqnr_db") is not None], True),
        # outputs without a channel figure (rank < 2, or pooled only) count by their pooled SQNR
        "min_channel_sqnr_db": _worst([r["worst_channel_sqnr_db"] if r.get("worst_channel_sqnr_db") is not None
                                       else r["sqnr_db"] for r in rows if r.get("sqnr_db") is not None], True),
        "min_top1_agreement": _worst([100 * r["top1_agreement"] for r in rows if "top1_agreement" in r], True),
        "min_accuracy": _worst([100 * r["quant_accuracy"] for r in rows if "quant_accuracy" in r], True),
        "max_accuracy_drop": _worst([100 * (r["float_accuracy"] - r["quant_accuracy"])
                                     for r in rows if "quant_accuracy" in r], False),
    }
    unlabelled = not any("quant_accuracy" in r for r in rows)
    fallback = [name for name in LABEL_FREE_CHECKS if name in expect and measured[name] is not None]
    checks = []
    for name, required in expect.items():
        actual = measured[name]
        if actual is None and name in ACCURACY_CHECKS and unlabelled and fallback:
            verb = "gates" if len(fallback) == 1 else "gate"
            why = f"no labels: {' and '.join(fallback)} {verb} this run"
            checks.append(Check(name, required, None, True, skipped=why))
            continue
        if actual is None:
            passed = False
        elif name.startswith("max_"):
            passed = actual <= required
        else:
            passed = actual >= required
        checks.append(Check(name, required, actual, passed))
    return checks
