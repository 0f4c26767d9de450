"""Read a recipe's YAML into plain data, remembering the line of every key and item.

Errors found later (a typo'd option, a missing file, a bad step order) are reported with the
line they come from, so the recipe is parsed with PyYAML's node API rather than `safe_load`.
`--set` overrides and `${var}` interpolation are applied here too, before validation, so a
value that came from either is checked like any other.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qtool.errors import QtoolError

Path_ = tuple  # a location in the document: keys and list indices, e.g. ("steps", 2, "calibrate", "scheme")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.-]*)\}")


class RecipeError(QtoolError):
    """Every problem found in a recipe, one line each, reported together (exit code 2)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\nqtool: error: ".join(problems))


@dataclass
class Document:
    """The recipe's data plus where each piece came from."""

    path: Path
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    from_command_line: set[Path_] = field(default_factory=set)  # paths set by --set (relative to the cwd)

    def where(self, location: Path_) -> str:
        """'recipe.yaml:12' for the nearest located ancestor of `location`, or '--set a.b' for overrides."""
        for cut in range(len(location), -1, -1):
            prefix = tuple(location[:cut])
            if prefix in self.from_command_line:
                return "--set " + ".".join(str(part) for part in prefix)
            if prefix in self.lines:
                return f"{self.path}:{self.lines[prefix]}"
        return str(self.path)

    def base_dir(self, location: Path_) -> Path:
        """Relative paths in the file resolve against the recipe's folder; those given by --set, the cwd."""
        for cut in range(len(location), -1, -1):
            if tuple(location[:cut]) in self.from_command_line:
                return Path.cwd()
        return self.path.parent


def read_document(path: str | os.PathLike) -> Document:
    """Parse the YAML file; duplicate keys and syntax errors are errors with their line."""
    recipe_path = Path(path)
    try:
        text = recipe_path.read_text()
    except FileNotFoundError:
        raise QtoolError(f"{recipe_path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QtoolError(f"{recipe_path}: cannot read the recipe ({exc})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([f"{recipe_path}{line}: not valid YAML: {problem}"]) from None
    finally:
        loader.dispose()
    doc = Document(recipe_path, None)
    problems: list[str] = []
    doc.data = _build(node, (), doc, problems) if node is not None else None
    if problems:
        raise RecipeError(problems)
    if not isinstance(doc.data, dict):
        raise RecipeError([f"{recipe_path}: a recipe is a YAML mapping with model, output and steps keys"])
    return doc


def _build(node: yaml.Node, location: Path_, doc: Document, problems: list[str]) -> Any:
    """Plain Python data from a composed node, recording lines as it goes."""
    doc.lines.setdefault(location, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in mapping:
                problems.append(f"{doc.path}:{line}: duplicate key {key!r} (first at line {doc.lines[location + (key,)]})")
                continue
            doc.lines[location + (key,)] = line
            mapping[key] = _build(value_node, location + (key,), doc, problems)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, location + (index,), doc, problems) for index, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def apply_overrides(doc: Document, assignments: tuple[str, ...]) -> None:
    """`--set key.sub=value`: a top-level key (model, output, data.calibration, vars.name, ...) or a
    step's option by step name (`calibrate.scheme=minmax`; every step of that name). Values are
    YAML scalars or flow collections (`8`, `true`, `[20, 2]`)."""
    problems: list[str] = []
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        parts = [part for part in key.strip().split(".") if part]
        if not sep or not parts:
            problems.append(f"--set {assignment}: expected KEY=VALUE, e.g. calibrate.scheme=minmax")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        targets = _override_targets(doc, parts)
        if not targets:
            problems.append(f"--set {assignment}: the recipe has no step or key named {parts[0]!r}")
        for location in targets:
            _assign(doc.data, location, value)
            doc.from_command_line.add(location)
    if problems:
        raise RecipeError(problems)


def _override_targets(doc: Document, parts: list[str]) -> list[Path_]:
    steps = doc.data.get("steps") if isinstance(doc.data, dict) else None
    if isinstance(steps, list):
        named = [index for index, item in enumerate(steps)
                 if isinstance(item, dict) and len(item) == 1 and _step_key(next(iter(item))) == _step_key(parts[0])]
        if named and len(parts) > 1:
            return [("steps", index, next(iter(steps[index])), *parts[1:]) for index in named]
    if parts[0] in {"model", "output", "config", "data", "vars", "expect", "description"}:
        return [tuple(parts)]
    return []


def _step_key(name: Any) -> str:
    return str(name).replace("-", "_")


def _assign(data: dict, location: Path_, value: Any) -> None:
    cursor: Any = data
    for part in location[:-1]:
        if isinstance(cursor, dict) and not isinstance(cursor.get(part), (dict, list)):
            current = cursor.get(part)  # None, or a scalar such as data: calib.npz (its shorthand)
            cursor[part] = {"calibration": current} if part == "data" and isinstance(current, str) else {}
        cursor = cursor[part]
    cursor[location[-1]] = value


def interpolate(doc: Document, builtins: dict[str, str]) -> None:
    """Replace `${name}` in every string by `vars.name`, a built-in (recipe_dir, cwd) or an environment
    variable, in that order. A string that is exactly one `${name}` takes the variable's own type."""
    variables = doc.data.get("vars") or {}
    problems: list[str] = []
    if not isinstance(variables, dict):
        raise RecipeError([f"{doc.where(('vars',))}: vars must be a mapping of names to values"])

    def lookup(name: str, location: Path_) -> Any:
        if name in variables:
            return variables[name]
        if name in builtins:
            return builtins[name]
        if name in os.environ:
            return os.environ[name]
        problems.append(f"{doc.where(location)}: undefined variable ${{{name}}} "
                        f"(define it under vars: or pass --set vars.{name}=...)")
        return ""

    def walk(value: Any, location: Path_) -> Any:
        if isinstance(value, dict):
            return {key: walk(item, location + (key,)) if key != "vars" or location else item
                    for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, location + (index,)) for index, item in enumerate(value)]
        if isinstance(value, str):
            whole = _VAR.fullmatch(value)
            if whole:
                return lookup(whole.group(1), location)
            return _VAR.sub(lambda m: str(lookup(m.group(1), location)), value)
        return value

    doc.data = walk(doc.data, ())
    if problems:
        raise RecipeError(problems)
