"""`qtool run recipe.yaml`: a whole pipeline from one YAML file (docs/recipes.md).

Exit codes: 0 done (and the `expect:` gate passed), 2 a bad recipe or input (every problem
listed, with its line), 3 the gate failed.
"""

from __future__ import annotations

import os
import sys

import click

from qtool.cli import cli
from qtool.files import strict_json
from qtool.files.atomic import atomic_write_bytes
from qtool.metrics.comparison import describe_metrics, hidden_channels
from qtool.recipe.document import apply_overrides, interpolate, read_document
from qtool.recipe.gate import check_expectations
from qtool.recipe.policy import RunPolicy
from qtool.recipe.runner import execute, plan_runs, versions
from qtool.recipe.validate import Recipe, validate

GATE_FAILED = 3


def load_recipe(path: str, assignments: tuple[str, ...] = (), policy: RunPolicy = RunPolicy()) -> Recipe:
    """Parse, override, interpolate and check a recipe; raises RecipeError listing every problem.
    `policy`: what the command line allowed beyond data (docs/security.md)."""
    doc = read_document(path)
    apply_overrides(doc, assignments)
    interpolate(doc, {"recipe_dir": str(doc.path.parent.resolve()), "cwd": os.getcwd()}, policy.env)
    return validate(doc, policy)


@cli.command("run")
@click.argument("recipe")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value: calibrate.scheme=minmax, data.calibration=calib.npz, "
                   "vars.bits=4 (repeatable; paths relative to the current folder).")
@click.option("--force", is_flag=True, help="Rerun every step, even those unchanged since the last run.")
@click.option("--dry-run", is_flag=True, help="Check the recipe and print the plan; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON on stdout (progress on stderr).")
@click.option("--allow-code", is_flag=True,
              help="Let the recipe name Python code (metric: file.py:function or module:function); "
                   "without it a recipe is data only (docs/security.md).")
@click.option("--allow-outside", is_flag=True,
              help="Let the recipe write files outside its output: folder (e.g. analyze.write_overrides).")
@click.option("--env", "env_names", multiple=True, metavar="NAME",
              help="Let ${NAME} in the recipe read environment variable NAME (repeatable); "
                   "otherwise only vars: and --set vars.NAME=... are read.")
def run_cmd(recipe, assignments, force, dry_run, as_json, allow_code, allow_outside, env_names):
    """Run a recipe: fold, equalize, calibrate, bias-correct, adaround, simulate, export, in its order.

    Steps whose inputs and options did not change since the last run are skipped; `expect:` in
    the recipe makes the run fail (exit code 3) when the quantized model misses it.

    Example: qtool run recipes/w8a8-per-channel.yaml --set model=net.onnx --set data.calibration=calib.npz
    """
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    plan = load_recipe(recipe, assignments, RunPolicy(allow_code, allow_outside, tuple(env_names)))
    runs = plan_runs(plan, force=force, write=not dry_run)
    if dry_run:
        _print_plan(plan, runs, say)
        return
    execute(plan, runs, say)
    simulated = [run for run in runs if run.step.name == "simulate"]
    metrics = simulated[-1].summary.get("outputs", {}) if simulated else {}
    checks = check_expectations(plan.expect, metrics)
    summary = {
        "recipe": str(plan.path), "output": str(plan.output), "passed": all(c.passed for c in checks),
        "steps": [{"index": r.step.index, "step": r.step.name, "status": r.status, "folder": str(r.folder),
                   "seconds": round(r.seconds, 3), "summary": r.summary} for r in runs],
        "metrics": metrics, "expect": [vars(c) for c in checks], "versions": versions(),
    }
    atomic_write_bytes(plan.output / "run.json", strict_json.dumps(summary, default=str).encode())
    ran = sum(r.status == "ran" for r in runs)
    say(f"done: {ran} steps ran, {len(runs) - ran} skipped; summary in {plan.output / 'run.json'}")
    for name, row in metrics.items():
        say(f"  {name}: {describe_metrics(row)}")
        if hidden_channels(row):
            say(f"  {name}: {hidden_channels(row)}")
    for check in checks:
        say(f"  expect {check.describe()}")
    if as_json:
        click.echo(strict_json.dumps(summary, default=str))
    if not summary["passed"]:
        failed = ", ".join(c.name for c in checks if not c.passed)
        click.echo(f"qtool: expect failed: {failed} ({plan.path})", err=True)
        sys.exit(GATE_FAILED)


def _print_plan(plan: Recipe, runs, say) -> None:
    say(f"{plan.path}: {len(runs)} steps, model {plan.model}, output {plan.output}")
    for run in runs:
        state = "up to date, would skip" if run.fresh else "would run"
        options = ", ".join(f"{k}={v}" for k, v in run.step.options.items()) or "defaults"
        say(f"  [{run.step.index}/{len(runs)}] {run.step.name} ({options}) -> {run.folder}: {state}")
    for name, value in plan.expect.items():
        say(f"  expect {name} {value:g}")
