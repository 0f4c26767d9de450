"""What a recipe may do without the user's say-so: recipes are data, not code (docs/security.md).

A recipe often arrives with a model from someone else, and `qtool run` must be safe to point at
it. So, unless the user allows more on the command line:
- no step option may name Python code (`metric: file.py:function` or `module:function`, qat's
  `loss: file.py:function`): `--allow-code`. Built-in metric and loss names stay allowed.
  Allowed code files resolve against the recipe's folder, and the runner hashes their content
  into the step's key;
- every path the recipe writes stays inside its `output:` folder (`..`, absolute paths and
  symlinks that lead out are refused): `--allow-outside`. A file-name stem (`export.prefix`)
  is a name, never a path, whatever the flags;
- `${NAME}` never reads the environment: `--env NAME` (document.interpolate).
Each refusal is one line naming the recipe key and the flag that allows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtool.files.safe_paths import escapes, stem_problem

CODE_OPTIONS = {"metric", "loss"}  # options whose value may name Python code (module:function, file.py:function)
WRITTEN_PATH_OPTIONS = {"write_overrides"}  # options naming a file the step writes, beside the wired outputs
STEM_OPTIONS = {"prefix"}  # file-name stems of written files


@dataclass(frozen=True)
class RunPolicy:
    """What the user allowed on `qtool run`'s command line."""

    allow_code: bool = False
    allow_outside: bool = False
    env: tuple[str, ...] = ()


def is_code(option: str, value: Any) -> bool:
    """Whether an option's value names Python code rather than a built-in."""
    if option not in CODE_OPTIONS or not isinstance(value, str):
        return False
    return value not in built_ins(option)


def built_ins(option: str) -> tuple[str, ...]:
    """The built-in (code-free) values of a code option."""
    if option == "loss":
        from qtool.commands.qat import LOSSES

        return LOSSES
    from qtool.analysis.metric import BUILTIN_METRICS  # numpy: only when a recipe sets a metric

    return tuple(BUILTIN_METRICS)


def confine_option(option: str, value: Any, label: str, base: Path, output: Path, policy: RunPolicy,
                   problems: list[str]) -> Any:
    """A step option's value after the policy: unchanged, resolved (code files against the
    recipe's folder `base`, written paths against `output`), or None with a problem appended.
    `label` starts each problem ('recipe.yaml:12: analyze.metric')."""
    if is_code(option, value):
        return _code(value, label, base, policy, problems, built_ins(option))
    if option in STEM_OPTIONS and isinstance(value, str):
        problem = stem_problem(value)
        if problem:
            problems.append(f"{label} {value!r}: {problem}")
            return None
    if option in WRITTEN_PATH_OPTIONS and isinstance(value, str):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else output / path
        if not policy.allow_outside and escapes(path, output):
            problems.append(f"{label} {value!r}: writes outside the recipe's output folder {output}; "
                            f"give a path inside it, or allow it with qtool run --allow-outside")
            return None
        return str(path)
    return value


def _code(spec: str, label: str, base: Path, policy: RunPolicy, problems: list[str],
          builtin: tuple[str, ...]) -> str | None:
    if not policy.allow_code:
        problems.append(f"{label} {spec!r}: names Python code, and a recipe runs none unless you allow it: "
                        f"qtool run --allow-code (or use a built-in: {', '.join(builtin)})")
        return None
    module, sep, function = spec.rpartition(":")
    if not sep or not module or not function:
        problems.append(f"{label} {spec!r}: expected one of {', '.join(builtin)}, module:function "
                        f"or file.py:function")
        return None
    if not module.endswith(".py"):
        return spec
    path = Path(module).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        problems.append(f"{label} {spec!r}: no such file {path}")
        return None
    return f"{path}:{function}"


def check_step_folders(output: Path, folders: list[str], where: str, policy: RunPolicy,
                       problems: list[str]) -> None:
    """A step folder that is a symlink out of `output` would take the step's writes with it."""
    if policy.allow_outside:
        return
    for name in folders:
        if escapes(output / name, output):
            problems.append(f"{where}: {output / name} is a link out of the output folder; remove it, "
                            f"or allow it with qtool run --allow-outside")
