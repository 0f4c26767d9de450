"""Read a recipe's YAML into plain data, remembering the line of every key and item.

Errors found later (a typo'd option, a missing file, a bad step order) are reported with the
line they come from, so the recipe is parsed with PyYAML's node API rather than `safe_load`.
`--set` overrides and `${var}` interpolation are applied here too, before validation, so a
value that came from either is checked like any other.

The document is read within limits (qtool.files.input_text for the file, qtool.files.yaml_safe for its size
once aliases are expanded, its depth and cycles), and `${name}` reads only the recipe's `vars:`,
`--set vars.name=...` and two built-ins: the environment only for names given with `--env`,
since a recipe received with a model must not be able to copy a secret into run.json.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qtool.errors import QtoolError
from qtool.files.input_text import read_text
from qtool.files.yaml_safe import YamlLimitError, compose, construct_scalar

Path_ = tuple  # a location in the document: keys and list indices, e.g. ("steps", 2, "calibrate", "scheme")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.-]*)\}")
MAX_RECIPE_BYTES = 1 << 20  # the bundled recipes are under 2 KB
MAX_INTERPOLATED = 1 << 20  # characters `${name}` may add to the whole recipe
INT64 = 1 << 63  # no option takes an integer beyond int64


class RecipeError(QtoolError):
    """Every problem found in a recipe, one line each, reported together (exit code 2)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\nqtool: error: ".join(problems))

    def __reduce__(self):  # QtoolError's takes (message, hint); this one is made from its problems
        return (type(self), (self.problems,))


@dataclass
class Document:
    """The recipe's data plus where each piece came from."""

    path: Path
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    from_command_line: set[Path_] = field(default_factory=set)  # paths set by --set (relative to the cwd)
    replaced: dict[Path_, Any] = field(default_factory=dict)  # the file's own values that --set replaced

    def model_replaced(self) -> bool:
        """Whether `--set model=...` named another model file than the recipe's own: the recipe's
        data then belongs to a model that is no longer run (validate.py drops it)."""
        if ("model",) not in self.replaced or not isinstance(self.replaced[("model",)], str):
            return False
        original = os.path.normpath(self.path.parent / Path(self.replaced[("model",)]).expanduser())
        current = self.data.get("model") if isinstance(self.data, dict) else None
        return not isinstance(current, str) or os.path.normpath(Path.cwd() / Path(current).expanduser()) != original

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
    """Parse the YAML file; duplicate keys, syntax errors and values no option can take
    (non-finite floats, integers beyond int64, unsafe tags) are errors with their line."""
    recipe_path = Path(path)
    text = read_text(recipe_path, "recipe file", MAX_RECIPE_BYTES)
    try:
        node = compose(text)
    except YamlLimitError as exc:
        raise RecipeError([f"{recipe_path}{_line_of_error(exc)}: refused: {_problem_of(exc)}"]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([f"{recipe_path}{_line_of_error(exc)}: not valid YAML: {_problem_of(exc)}"]) from None
    doc = Document(recipe_path, None)
    problems: list[tuple[int, str]] = []
    doc.data = _build(node, (), doc, problems) if node is not None else None
    if problems:
        raise RecipeError([f"{recipe_path}:{line}: {problem}" for line, problem in problems])
    if not isinstance(doc.data, dict):
        raise RecipeError([f"{recipe_path}: a recipe is a YAML mapping with model, output and steps keys"])
    return doc


def _line_of_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f":{mark.line + 1}" if mark is not None else ""


def _problem_of(exc: yaml.YAMLError) -> str:
    """PyYAML's context and problem ('expected a single document in the stream but found another
    document'), without its marks (the line is reported separately)."""
    problem = getattr(exc, "problem", None)
    if not problem:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"{context} {problem}" if context and context.startswith("expected") else problem


def _build(node: yaml.Node, location: Path_, doc: Document, problems: list[tuple[int, str]]) -> Any:
    """Plain Python data from a composed node, recording lines as it goes; problems are (line, text)."""
    doc.lines.setdefault(location, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append((line, "a key must be a plain name, not a list or mapping"))
                continue
            key = _scalar(key_node, doc, problems)
            if key in mapping:
                problems.append((line, f"duplicate key {key!r} (first at line {doc.lines[location + (key,)]})"))
                continue
            doc.lines[location + (key,)] = line
            mapping[key] = _build(value_node, location + (key,), doc, problems)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, location + (index,), doc, problems) for index, item in enumerate(node.value)]
    return _scalar(node, doc, problems)


def _scalar(node: yaml.ScalarNode, doc: Document, problems: list[tuple[int, str]]) -> Any:
    """The scalar's value, or None with a problem when no option could take it."""
    shown = repr(node.value if len(node.value) <= 40 else node.value[:37] + "...")
    if node.tag == "tag:yaml.org,2002:int" and len(node.value) > 30:
        problem = f"{shown}: an integer of {len(node.value)} digits is not a meaningful value here"
    else:
        try:
            value = construct_scalar(node)
        except yaml.constructor.ConstructorError:
            problem = (f"the tag {node.tag} is not allowed: a recipe holds plain values "
                       f"(text, numbers, true/false, lists, mappings)")
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            problem = f"{shown}: {_problem_of(exc) if isinstance(exc, yaml.YAMLError) else exc}"
        else:
            problem = _unusable(value) and f"{shown}: {_unusable(value)}"
            if not problem:
                return value
    problems.append((node.start_mark.line + 1, problem))
    return None


def _unusable(value: Any) -> str | None:
    """Why no recipe key could take `value` (None when it is fine)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number; write one"
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return "an integer beyond 64 bits is not a meaningful value here"
    return None


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
        value, problem = _set_value(raw)
        if problem:
            problems.append(f"--set {key.strip()}: {problem}")
            continue
        targets = _override_targets(doc, parts)
        if not targets:
            problems.append(f"--set {assignment}: the recipe has no step or key named {parts[0]!r}")
        for location in targets:
            if location not in doc.replaced and location not in doc.from_command_line:
                doc.replaced[location] = _value_at(doc.data, location)
            problem = _assign(doc, location, value)
            if problem:
                problems.append(f"--set {assignment}: {problem}")
            doc.from_command_line.add(location)
    if problems:
        raise RecipeError(problems)


def _set_value(raw: str) -> tuple[Any, str | None]:
    """A --set value as YAML (a scalar or a flow collection), read within the document limits,
    and the problem with it (None when fine); text that is not valid YAML is the string typed."""
    if not raw.strip():
        return "", None
    try:
        node = compose(raw)
    except YamlLimitError as exc:
        return None, f"refused: {_problem_of(exc)}"
    except yaml.YAMLError:
        return raw, None
    problems: list[tuple[int, str]] = []
    value = _build(node, (), Document(Path("--set"), None), problems) if node is not None else None
    return value, (problems[0][1] if problems else None)


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


def _value_at(data: Any, location: Path_) -> Any:
    """The value at `location`, None where the path does not exist."""
    for part in location:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _assign(doc: Document, location: Path_, value: Any) -> str | None:
    """Set `value` at `location`, making mappings on the way; the problem when a list is in the way."""
    cursor: Any = doc.data
    for depth, part in enumerate(location):
        if isinstance(cursor, list) and isinstance(part, int):  # a step, by its index
            if depth == len(location) - 1:
                cursor[part] = value
            cursor = cursor[part]
            continue
        if not isinstance(cursor, dict):
            return f"{doc.where(location[:depth])}: holds a list where --set needs a mapping of keys"
        if depth == len(location) - 1:
            cursor[part] = value
        elif not isinstance(cursor.get(part), (dict, list)):
            current = cursor.get(part)  # None, or a scalar such as data: calib.npz (its shorthand)
            cursor[part] = {"calibration": current} if part == "data" and isinstance(current, str) else {}
        cursor = cursor[part]
    return None


def interpolate(doc: Document, builtins: dict[str, str], env_names: Collection[str] = ()) -> None:
    """Replace `${name}` in every string by `vars.name`, a built-in (recipe_dir, cwd, and
    model_stem: the model file's name without `.onnx`, after `--set model=...`) or, for the
    names in `env_names` only (`qtool run --env NAME`), an environment variable, in that order.
    A string that is exactly one `${name}` takes the variable's own type. The text added in all
    is capped (MAX_INTERPOLATED), so a long variable used many times cannot blow the recipe up.

    `model_stem` is what lets one recipe serve any model: `output: build/${model_stem}/w8a8` and
    `export: {prefix: "${model_stem}"}` name the files after the model that was run."""
    variables = doc.data.get("vars") or {}
    problems: list[str] = []
    if not isinstance(variables, dict):
        raise RecipeError([f"{doc.where(('vars',))}: vars must be a mapping of names to values"])
    added = 0

    def lookup(name: str, location: Path_) -> Any:
        nonlocal added
        if name in variables:
            value = variables[name]
        elif name in builtins:
            value = builtins[name]
        elif name in env_names and name in os.environ:
            value = os.environ[name]
        else:
            fix = (f"--env {name} was given, but {name} is not set in the environment" if name in env_names else
                   f"define it under vars:, pass --set vars.{name}=..., or read it from the environment "
                   f"with --env {name}")
            problems.append(f"{doc.where(location)}: undefined variable ${{{name}}} ({fix})")
            return ""
        added += len(str(value))
        if added > MAX_INTERPOLATED:
            raise RecipeError([f"{doc.where(location)}: ${{{name}}}: variables add more than "
                               f"{MAX_INTERPOLATED >> 10} KiB of text to the recipe; use shorter values"])
        return value

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

    if isinstance(doc.data.get("model"), str):  # the model first: model_stem is read from it
        doc.data["model"] = walk(doc.data["model"], ("model",))
        if isinstance(doc.data["model"], str):
            builtins = {**builtins, "model_stem": model_stem(doc.data["model"])}
    doc.data = walk(doc.data, ())
    if problems:
        raise RecipeError(problems)


def model_stem(model: str) -> str:
    """`net` for `models/net.onnx`: the name outputs derive from."""
    name = Path(model).name
    return name[:-5] if name.lower().endswith(".onnx") and len(name) > 5 else Path(name).stem or name
