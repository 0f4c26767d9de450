"""A whole recipe run: load and check it, run its steps, gate the result, write run.json.

`qtool run` (qtool.cli.run) parses its command line and calls these; they print nothing
themselves (`say` is given). run.json holds no wall-clock time, so two runs on the same inputs
write the same bytes; each step's seconds go to timings.json beside it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from qtool.files import strict_json
from qtool.files.atomic import atomic_write_bytes
from qtool.metrics.comparison import describe_metrics, hidden_channels
from qtool.recipe.document import apply_overrides, interpolate, read_document
from qtool.recipe.gate import check_expectations
from qtool.recipe.policy import RunPolicy
from qtool.recipe.runner import StepRun, execute, versions
from qtool.recipe.validate import Recipe, validate

SUMMARY, TIMINGS = "run.json", "timings.json"


def load_recipe(path: str, assignments: tuple[str, ...] = (), policy: RunPolicy = RunPolicy()) -> Recipe:
    """Parse, override, interpolate and check a recipe; raises RecipeError listing every problem.
    `policy`: what the command line allowed beyond data (docs/security.md)."""
    doc = read_document(path)
    apply_overrides(doc, assignments)
    interpolate(doc, {"recipe_dir": str(doc.path.parent.resolve()), "cwd": os.getcwd()}, policy.env)
    return validate(doc, policy)


@dataclass
class Outcome:
    """What a run did: `summary` is what run.json holds; `checks` the expect gate's results."""

    summary: dict
    checks: list
    seconds: float

    @property
    def passed(self) -> bool:
        return self.summary["passed"]


def run_recipe(recipe: Recipe, runs: list[StepRun], say: Callable[[str], None]) -> Outcome:
    """Run (or skip) every step, gate the last simulate step's metrics, write run.json and timings.json."""
    start = time.perf_counter()
    execute(recipe, runs, say)
    simulated = [run for run in runs if run.step.name == "simulate"]
    metrics = simulated[-1].summary.get("outputs", {}) if simulated else {}
    checks = check_expectations(recipe.expect, metrics)
    summary = {
        "recipe": str(recipe.path), "output": str(recipe.output), "passed": all(c.passed for c in checks),
        "steps": [{"index": r.step.index, "step": r.step.name, "status": r.status, "folder": str(r.folder),
                   "summary": r.summary} for r in runs],
        "metrics": metrics, "expect": [vars(c) for c in checks], "versions": versions(),
    }
    seconds = time.perf_counter() - start
    timings = {"seconds": round(seconds, 3), "steps": [
        {"index": r.step.index, "step": r.step.name, "status": r.status, "seconds": round(r.seconds, 3)} for r in runs]}
    atomic_write_bytes(recipe.output / SUMMARY, strict_json.dumps(summary, default=str).encode())
    atomic_write_bytes(recipe.output / TIMINGS, strict_json.dumps(timings).encode())
    return Outcome(summary, checks, seconds)


def outcome_lines(recipe: Recipe, outcome: Outcome) -> list[str]:
    """The closing lines for people: what ran, the metrics, the gate."""
    steps = outcome.summary["steps"]
    ran = sum(step["status"] == "ran" for step in steps)
    lines = [f"done: {ran} steps ran, {len(steps) - ran} skipped in {outcome.seconds:.1f}s; summary in "
             f"{recipe.output / SUMMARY} (times in {TIMINGS})"]
    for name, row in outcome.summary["metrics"].items():
        lines.append(f"  {name}: {describe_metrics(row)}")
        if hidden_channels(row):
            lines.append(f"  {name}: {hidden_channels(row)}")
    lines += [f"  expect {check.describe()}" for check in outcome.checks]
    return lines


def plan_lines(recipe: Recipe, runs: list[StepRun]) -> list[str]:
    """`qtool run --dry-run`: each step, its options and folder, and whether it would run."""
    lines = [f"{recipe.path}: {len(runs)} steps, model {recipe.model}, output {recipe.output}"]
    for run in runs:
        state = "up to date, would skip" if run.fresh else "would run"
        options = ", ".join(f"{k}={v}" for k, v in run.step.options.items()) or "defaults"
        lines.append(f"  [{run.step.index}/{len(runs)}] {run.step.name} ({options}) -> {run.folder}: {state}")
    lines += [f"  expect {name} {value:g}" for name, value in recipe.expect.items()]
    return lines
