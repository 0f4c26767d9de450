"""`qtool run recipe.yaml`: a whole pipeline from one YAML file (docs/recipes.md).

Exit codes: 0 done (and the `expect:` gate passed), 2 a bad recipe or input (every problem
listed, with its line), 3 the gate failed.
"""

from __future__ import annotations

import sys

import click

from qtool.files import strict_json

GATE_FAILED = 3


@click.command("run")
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
    the recipe makes the run fail (exit code 3) when the quantized model misses it. run.json
    records what ran and measured (the same bytes on every run); times go to timings.json.

    Example: qtool run recipes/w8a8-per-channel.yaml --set model=net.onnx --set data.calibration=calib.npz
    """
    # imported here, not at the top: every other command pays for the recipe machinery (pydantic,
    # the metrics) at start-up otherwise (~0.2 s of `import qtool.cli.main`'s ~0.4 s)
    from qtool.recipe.policy import RunPolicy
    from qtool.recipe.run import load_recipe, outcome_lines, plan_lines, run_recipe
    from qtool.recipe.runner import plan_runs

    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    plan = load_recipe(recipe, assignments, RunPolicy(allow_code, allow_outside, tuple(env_names)))
    runs = plan_runs(plan, force=force, write=not dry_run)
    if dry_run:
        for line in plan_lines(plan, runs):
            say(line)
        return
    outcome = run_recipe(plan, runs, say)
    for line in outcome_lines(plan, outcome):
        say(line)
    if as_json:
        click.echo(strict_json.dumps(outcome.summary, default=str))
    if not outcome.passed:
        failed = ", ".join(c.name for c in outcome.checks if not c.passed)
        click.echo(f"qtool: expect failed: {failed} ({plan.path})", err=True)
        sys.exit(GATE_FAILED)
