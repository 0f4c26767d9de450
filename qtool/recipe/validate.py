"""Turn a parsed recipe Document into a checked Recipe, reporting every problem at once.

Checks, in one pass: the top-level shape (schema.py), each step's name and options against its
command's options (qtool.commands.registry: types, choices, ranges), files that must exist, the
config, and the order of steps (nothing that needs encodings before a step that makes them, no
data-hungry step without data, no `expect:` without a simulate step to measure it). A shape problem does not
stop the pass: the keys it concerns are left out and the rest is checked, so one run of
`qtool run` lists every problem (the order checks are skipped when a step or the data block was
left out, since they would report its absence).

One recipe serves many models: `output:` defaults to `<model's folder>/<model stem>-<recipe
stem>/`, and when `--set model=...` replaces the recipe's model, the recipe file's data paths
(calibration, evaluation, labels) are dropped with a note, since they belong to the model the
file names; data given with `--set` is kept.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError, create_model

from qtool.data.random_data import parse_input_shapes, recipe_input_shapes
from qtool.errors import QtoolError
from qtool.files.input_text import load_json
from qtool.plan.config import BUILTIN_CONFIGS, parse_config
from qtool.recipe.document import Document, RecipeError, model_stem
from qtool.recipe.policy import RunPolicy, check_step_folders, confine_option
from qtool.recipe.schema import TOP_LEVEL_KEYS, RecipeSchema
from qtool.recipe.steps import PATH_OPTIONS, STEP_KINDS, StepKind, step_name

log = logging.getLogger("qtool")
DATA_PATHS = ("calibration", "evaluation", "labels")
ACCURACY_KEYS = ("max_accuracy_drop", "min_accuracy")  # need labels
LABEL_FREE_KEYS = ("min_sqnr_db", "min_channel_sqnr_db")  # every model has them
# the schema with its required keys optional: what is left to check once a shape problem is reported
_Partial = create_model("PartialRecipe", __base__=RecipeSchema, model=(str | None, None),
                        output=(str | None, None), steps=(list[dict[str, dict[str, Any] | None]] | None, None))


@dataclass
class PlannedStep:
    """One step of the recipe with its options converted to the command's types."""

    index: int  # 1-based position in the recipe
    name: str
    kind: StepKind
    options: dict[str, Any]  # the ones the recipe gives, converted, paths resolved
    where: str  # "recipe.yaml:14"

    @property
    def folder_name(self) -> str:
        return f"{self.index:02d}-{self.name.replace('_', '-')}"


@dataclass
class Recipe:
    path: Path
    model: Path
    output: Path
    config: str | dict | None  # a built-in name, a resolved path, or an inline config
    data: dict[str, Any]  # calibration / evaluation / labels resolved; samples, batch_size, preprocess, seed
    steps: list[PlannedStep]
    expect: dict[str, float] = field(default_factory=dict)
    text_sha: str = ""


def validate(doc: Document, policy: RunPolicy = RunPolicy()) -> Recipe:
    """The checked Recipe, or a RecipeError listing every problem; `policy` is what the user
    allowed on the command line (code, writes outside `output:`)."""
    problems: list[str] = []
    data = doc.data
    if isinstance(data.get("data"), str):  # shorthand: data: calib.npz
        data["data"] = {"calibration": data["data"]}
        doc.lines[("data", "calibration")] = doc.lines.get(("data",), 0)
        if ("data",) in doc.from_command_line:
            doc.from_command_line.add(("data", "calibration"))
    if doc.model_replaced():
        _drop_data_of_replaced_model(doc)
    schema, left_out = _schema(doc, data, problems)
    if schema is None:
        raise RecipeError(problems)
    model = _existing(doc, ("model",), schema.model, problems, "model") if schema.model else None
    output = _output(doc, schema, model)
    config = _config(doc, schema.config, problems)
    recipe_data = _data(doc, schema, problems)
    steps = [_step(doc, index, item, output, policy, problems) for index, item in enumerate(schema.steps or [])]
    steps = [step for step in steps if step is not None]
    if output is not None:
        check_step_folders(output, [step.folder_name for step in steps], doc.where(("output",)), policy, problems)
    expect = {key: value for key, value in (schema.expect.model_dump() if schema.expect else {}).items()
              if value is not None}
    if not left_out & {"steps", "data", "expect"}:
        _check_order(doc, steps, recipe_data, expect, problems)
    if problems:
        raise RecipeError(problems)
    return Recipe(doc.path, model, output, config, recipe_data, steps, expect)


def _schema(doc: Document, data: dict, problems: list[str]) -> tuple[Any, set]:
    """The validated top level and the top-level keys left out because of a problem (each
    problem appended, in line order). None when not even the rest can be read."""
    try:
        return RecipeSchema.model_validate(data), set()
    except ValidationError as exc:
        errors = exc.errors()
    located = [(_line_of(doc, tuple(error["loc"])), _pydantic_problem(doc, error)) for error in errors]
    problems.extend(problem for _, problem in sorted(located, key=lambda pair: pair[0]))
    pruned = copy.deepcopy(data)
    for error in sorted(errors, key=lambda e: [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in e["loc"]],
                        reverse=True):
        _prune(pruned, tuple(error["loc"]))
    try:
        return _Partial.model_validate(pruned), {error["loc"][0] for error in errors if error["loc"]}
    except ValidationError:
        return None, set()


def _prune(data: Any, location: tuple) -> None:
    """Remove what a shape problem is about: a whole step, else the deepest part of `location`
    that exists (pydantic adds union member names to a location, e.g. ('config', 'str'))."""
    if len(location) >= 2 and location[0] == "steps" and isinstance(data.get("steps"), list):
        if isinstance(location[1], int) and location[1] < len(data["steps"]):
            del data["steps"][location[1]]  # problems are pruned from the last location back
        return
    parent, key = data, None
    for part in location:
        if isinstance(parent, dict) and part in parent:
            holder, key = parent, part
        elif isinstance(parent, list) and isinstance(part, int) and 0 <= part < len(parent):
            holder, key = parent, part
        else:
            break
        parent = holder[key]
    if key is not None:
        del holder[key]


def _drop_data_of_replaced_model(doc: Document) -> None:
    """`--set model=other.onnx`: the recipe file's data paths were made for its own model (the
    demo's text lines and labels), so they are not used; paths given with --set are kept."""
    block = doc.data.get("data")
    if not isinstance(block, dict) or ("data",) in doc.from_command_line:
        return
    dropped = [key for key in DATA_PATHS if key in block and ("data", key) not in doc.from_command_line]
    for key in dropped:
        del block[key]
    if dropped:
        names = " and ".join(f"data.{key}" for key in dropped)
        log.info("%s: --set model replaces the recipe's model, so its %s (made for %s) %s not used; "
                 "give yours with --set data.%s=...", doc.path, names, doc.replaced[("model",)],
                 "is" if len(dropped) == 1 else "are", dropped[0])


def _output(doc: Document, schema: Any, model: Path | None) -> Path | None:
    """`output:` as given, else `<model's folder>/<model stem>-<recipe stem>` (None without a model)."""
    if schema.output:
        return _resolve(doc, ("output",), schema.output)
    if model is None:
        return None
    return model.parent / f"{model_stem(str(model))}-{doc.path.stem}"


def _line_of(doc: Document, location: tuple) -> int:
    for cut in range(len(location), -1, -1):
        if tuple(location[:cut]) in doc.lines:
            return doc.lines[tuple(location[:cut])]
    return 0


def _pydantic_problem(doc: Document, error: dict) -> str:
    location = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        parent, key = location[:-1], location[-1]
        allowed = TOP_LEVEL_KEYS if not parent else _schema_keys(parent)
        return f"{doc.where(location)}: unknown key {'.'.join(map(str, location))!r}{_did_you_mean(key, allowed)}"
    if error["type"] == "missing":
        return f"{doc.where(location[:-1])}: missing required key {'.'.join(map(str, location))!r}"
    label = ".".join(map(str, location))
    return f"{doc.where(location)}: {label}: {error['msg']}"


def _schema_keys(parent: tuple) -> tuple[str, ...]:
    from qtool.recipe.schema import DataSpec, Expect
    return {"data": tuple(DataSpec.model_fields), "expect": tuple(Expect.model_fields)}.get(parent[0], ())


def _did_you_mean(key: Any, allowed: Any) -> str:
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(map(str, allowed))})"


def _resolve(doc: Document, location: tuple, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(doc.base_dir(location) / path))


def _existing(doc: Document, location: tuple, value: str, problems: list[str], what: str) -> Path:
    path = _resolve(doc, location, value)
    if not path.exists():
        problems.append(f"{doc.where(location)}: {what} {value!r} not found (looked for {path})")
    return path


def _config(doc: Document, config: str | dict | None, problems: list[str]) -> str | dict | None:
    if config is None or (isinstance(config, str) and config in BUILTIN_CONFIGS):
        return config
    if isinstance(config, dict):
        try:
            parse_config(config, f"{doc.where(('config',))}: inline config")
        except QtoolError as exc:
            problems.append(str(exc))
        return config
    path = _existing(doc, ("config",), config, problems, "config")
    if path.exists():
        try:
            parse_config(load_json(path, "config file"), str(path))
        except QtoolError as exc:
            problems.append(f"{doc.where(('config',))}: {exc}")
    return str(path)


def _data(doc: Document, schema: RecipeSchema, problems: list[str]) -> dict[str, Any]:
    block = schema.data.model_dump() if schema.data else {}
    for key in ("calibration", "evaluation", "labels"):
        value = block.get(key)
        if value is not None and not (key != "labels" and value == "random"):
            block[key] = str(_existing(doc, ("data", key), value, problems, f"data.{key}"))
    if block.get("input_shapes"):
        try:
            parse_input_shapes(recipe_input_shapes(block["input_shapes"]))
        except QtoolError as exc:
            problems.append(f"{doc.where(('data', 'input_shapes'))}: data.input_shapes: {exc}")
    return {key: value for key, value in block.items() if value is not None}


def _step(doc: Document, index: int, item: dict, output: Path, policy: RunPolicy,
          problems: list[str]) -> PlannedStep | None:
    location = ("steps", index)
    if len(item) != 1:
        problems.append(f"{doc.where(location)}: each step is one mapping 'name: {{options}}', "
                        f"got {len(item)} keys ({', '.join(map(str, item))})")
        return None
    key, options = next(iter(item.items()))
    name = step_name(key)
    if name not in STEP_KINDS:
        problems.append(f"{doc.where(location)}: unknown step {key!r}{_did_you_mean(name, STEP_KINDS)}")
        return None
    kind = STEP_KINDS[name]
    converted = _step_options(doc, location + (key,), kind, options or {}, (output, policy), problems)
    return PlannedStep(index + 1, name, kind, converted, doc.where(location))


def _step_options(doc: Document, location: tuple, kind: StepKind, options: dict,
                  confinement: tuple[Path, RunPolicy], problems: list[str]) -> dict:
    command = kind.command  # the registry's Command: its options, their types, choices and ranges
    params = command.fields
    settable = [name for name in params if name not in kind.wired_options()]
    converted: dict[str, Any] = {}
    for key, value in options.items():
        where = doc.where(location + (key,))
        name = str(key).replace("-", "_")
        if name in kind.wired_options():
            problems.append(f"{where}: {key!r} is set by the recipe (the chain passes the model along; "
                            f"set the recipe's output: for where files go)")
            continue
        if name not in params:
            problems.append(f"{where}: unknown option {key!r} for step {kind.command_name}"
                            f"{_did_you_mean(name, settable)}")
            continue
        try:
            value = command.convert(name, value)
        except ValueError as exc:
            problems.append(f"{where}: {kind.command_name}.{name}: {exc}")
            continue
        if not _finite(value):
            problems.append(f"{where}: {kind.command_name}.{name}: {value!r} is not a finite number; write one")
            continue
        if name in PATH_OPTIONS and isinstance(value, str) and not _special_value(name, value):
            value = str(_existing(doc, location + (key,), value, problems, f"{kind.command_name}.{name}"))
        converted[name] = confine_option(name, value, f"{where}: {kind.command_name}.{name}",
                                         doc.base_dir(location + (key,)), *confinement, problems)
    return converted


def _finite(value: Any) -> bool:
    """Click's FLOAT type accepts 'nan' and 'inf'; no option means either."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    return all(math.isfinite(item) for item in values if isinstance(item, float))


def _special_value(option: str, value: str) -> bool:
    return (option in ("data", "eval_data") and value == "random") or (option == "config" and value in BUILTIN_CONFIGS)


def _check_order(doc: Document, steps: list[PlannedStep], data: dict, expect: dict, problems: list[str]) -> None:
    """Walk the chain as it will run, tracking whether the current model has encodings."""
    has_encodings, since = False, "the start"
    for step in steps:
        kind, where = step.kind, step.where
        if "data" not in step.options and kind.data is not None:
            needs_calibration = kind.data == "calibration" and not step.options.get("analytic")
            if needs_calibration and "calibration" not in data:
                problems.append(f"{where}: step {step.index} ({kind.command_name}) needs calibration data: "
                                f"set data.calibration (or the step's data option)")
            if kind.data == "evaluation" and not ({"evaluation", "calibration"} & set(data)):
                problems.append(f"{where}: step {step.index} (simulate) needs data: set data.evaluation")
        if kind.needs_encodings and not has_encodings and "encodings" not in step.options:
            problems.append(f"{where}: step {step.index} ({kind.command_name}) needs encodings, but no calibrate "
                            f"or adaround step comes between {since} and it; add one before it")
        if kind.encodings_out == "new":
            has_encodings = True
        elif kind.encodings_out == "dropped":
            has_encodings, since = False, f"step {step.index} ({kind.command_name}, which changes the model)"
    if expect:
        if not any(step.name == "simulate" for step in steps):
            problems.append(f"{doc.where(('expect',))}: expect: needs a simulate step to measure the model")
        labelled = "labels" in data or any("labels" in s.options for s in steps if s.name == "simulate")
        unmeasurable = [key for key in ACCURACY_KEYS if key in expect and not labelled]
        if unmeasurable and not set(LABEL_FREE_KEYS) & set(expect):
            # without labels the gate falls back to the SQNR checks (gate.py); with none, it could not fail
            problems.append(f"{doc.where(('expect', unmeasurable[0]))}: expect.{unmeasurable[0]} needs labels: "
                            f"set data.labels, or add min_sqnr_db or min_channel_sqnr_db, which the gate "
                            f"checks when there are no labels")
