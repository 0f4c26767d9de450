"""Run a checked Recipe: call each step's command, pass the pair along, skip what is done.

Each step writes into `output/NN-step/` and leaves a `run.json` there whose `key` hashes
everything the step's result depends on: the previous step's key (so a change reruns every
step after it), the step's options, the content of the files it reads from outside the output
folder (model, data, labels, config, a code metric's file), and qtool's version. A step whose key matches its
run.json, and whose outputs are still there, is skipped, like make.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qtool._version import __version__
from qtool.commands.report import without_seconds
from qtool.data.random_data import recipe_input_shapes
from qtool.errors import QtoolError
from qtool.files import strict_json
from qtool.files.atomic import atomic_write_bytes
from qtool.recipe.steps import PATH_OPTIONS, output_option, output_paths
from qtool.recipe.validate import PlannedStep, Recipe

STAMP = "run.json"


@dataclass
class ChainState:
    """The pair handed from step to step."""

    model: Path
    encodings: Path | None = None
    overrides: Path | None = None  # written by the last analyze / mixed_precision step


@dataclass
class StepRun:
    step: PlannedStep
    folder: Path
    kwargs: dict[str, Any]
    key: str
    fresh: bool  # True when a matching run.json says it is already done
    status: str = "pending"  # pending | ran | skipped
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0


def versions() -> dict[str, str]:
    """The versions a step's result depends on, read from package metadata: importing onnx and
    onnxruntime just to ask would cost a run of up-to-date steps most of its time."""
    return {"qtool": __version__, "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime"),
            "numpy": _version("numpy"), "python": platform.python_version()}


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:  # e.g. onnxruntime-gpu: another distribution, same module
        return importlib.import_module(module).__version__


class _Hashes:
    """Content hashes of input files and folders, each computed once per run."""

    def __init__(self) -> None:
        self._cache: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        path = path.resolve()
        if path not in self._cache:
            digest = hashlib.sha256()
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
                _feed(digest, file)
            self._cache[path] = digest.hexdigest()
        return self._cache[path]


def config_path(recipe: Recipe, write: bool) -> str | None:
    """A built-in name or file path for the commands. An inline config is written beside the
    outputs under a name holding its hash, so that editing it changes the steps' keys."""
    if isinstance(recipe.config, dict):
        text = strict_json.dumps(recipe.config).encode()
        path = recipe.output / f"config-{hashlib.sha256(text).hexdigest()[:12]}.json"
        if write and not path.exists():
            atomic_write_bytes(path, text)
        return str(path)
    return recipe.config


def plan_runs(recipe: Recipe, force: bool = False, write: bool = True) -> list[StepRun]:
    """Every step's arguments, folder and key, and whether a previous run already did it.
    `write=False` (a dry run) computes the same plan without writing the inline config."""
    hashes = _Hashes()
    state = ChainState(recipe.model)
    config = config_path(recipe, write)
    previous_key = hashes(recipe.model)
    runs = []
    for step in recipe.steps:
        folder = recipe.output / step.folder_name
        kwargs = _arguments(step, state, recipe, folder, config)
        key = _key(step, kwargs, previous_key, recipe.output, hashes)
        runs.append(StepRun(step, folder, kwargs, key, fresh=not force and _is_fresh(folder, key)))
        _advance(state, step, folder, recipe.model.stem, kwargs)
        previous_key = key
    return runs


def _arguments(step: PlannedStep, state: ChainState, recipe: Recipe, folder: Path, config: str | None) -> dict:
    """The command's full keyword arguments: its defaults, what the chain fills in, the recipe's options."""
    kind = step.kind
    kwargs: dict[str, Any] = {**kind.command.defaults(), "model": str(state.model)}
    kwargs.update(output_option(kind, folder, recipe.model.stem))
    if kind.takes_encodings and state.encodings is not None:
        kwargs["encodings"] = str(state.encodings)
    if kind.data is not None:
        data_set = recipe.data.get(kind.data) or recipe.data.get("calibration")
        if data_set is not None:
            kwargs["data"] = data_set
        for option in ("samples", "batch_size", "preprocess", "seed", "vocab_size"):
            if option in recipe.data and option in kwargs:
                kwargs[option] = recipe.data[option]
        if "input_shapes" in recipe.data and "input_shape" in kwargs:
            kwargs["input_shape"] = recipe_input_shapes(recipe.data["input_shapes"])
    if step.name in ("simulate", "qat"):
        kwargs["reference"] = str(recipe.model)  # the drop is measured (qat: distilled) against the original float model
    if "labels" in recipe.data and "labels" in kwargs and step.name != "qat":  # qat's labels would be of its data
        kwargs["labels"] = recipe.data["labels"]
    if "eval_data" in kwargs and "evaluation" in recipe.data:
        kwargs["eval_data"] = recipe.data["evaluation"]
    if kind.takes_overrides and state.overrides is not None:
        kwargs["overrides"] = str(state.overrides)
    if kind.uses_config and config is not None:
        kwargs["config"] = config
    kwargs.update(step.options)
    return kwargs


def _key(step: PlannedStep, kwargs: dict, previous_key: str, output: Path, hashes: _Hashes) -> str:
    inputs = {}
    for option in sorted(PATH_OPTIONS | {"model"}):
        value = kwargs.get(option)
        if isinstance(value, str) and Path(value).exists() and not Path(value).resolve().is_relative_to(
                output.resolve()):
            inputs[option] = hashes(Path(value))
    for option in ("metric", "loss"):  # the files of code options (allowed by --allow-code)
        source = _code_source(option, kwargs.get(option))
        if source is not None:
            inputs[option] = hashes(source)
    text = json.dumps({"previous": previous_key, "step": step.name, "options": kwargs, "inputs": inputs,
                       "qtool": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _code_source(option: str, spec: Any) -> Path | None:
    """The file of a code metric or loss (allowed by --allow-code), so that editing it reruns the step."""
    from qtool.recipe.policy import is_code

    if not is_code(option, spec):
        return None
    from qtool.analysis.metric import metric_source

    return metric_source(spec)


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _is_fresh(folder: Path, key: str) -> bool:
    stamp = _read_stamp(folder)
    return bool(stamp and stamp.get("key") == key and
                all(Path(entry["path"]).exists() for entry in stamp.get("outputs", {}).values()))


def _advance(state: ChainState, step: PlannedStep, folder: Path, stem: str, kwargs: dict) -> None:
    """What the step hands on: its model (if it writes one) and the encodings that fit it."""
    paths = output_paths(step.kind, folder, stem)
    if "model" in paths:
        state.model = paths["model"]
    if "overrides" in paths:
        state.overrides = paths["overrides"]
    if step.kind.encodings_out == "new":
        state.encodings = paths["encodings"]
    elif step.kind.encodings_out == "dropped":
        state.encodings = None
    elif kwargs.get("encodings") and state.encodings is None:
        state.encodings = Path(kwargs["encodings"])


def execute(recipe: Recipe, runs: list[StepRun], say: Callable[[str], None]) -> None:
    """Run (or skip) each step in order, writing its run.json when it succeeds."""
    total = len(runs)
    for run in runs:
        step = run.step
        label = f"[{step.index}/{total}] {step.name}"
        if run.fresh:
            run.status, run.summary = "skipped", (_read_stamp(run.folder) or {}).get("summary", {})
            say(f"{label}: unchanged since the last run, skipped ({run.folder})")
            continue
        say(f"{label} -> {run.folder}")
        (run.folder / STAMP).unlink(missing_ok=True)  # a failed rerun must not look done
        start = time.perf_counter()
        try:
            report = step.kind.command(**run.kwargs)
        except QtoolError as exc:
            raise QtoolError(f"step {step.index} ({step.name}, {step.where}): {exc.message}", exc.hint) from exc
        run.seconds = time.perf_counter() - start
        run.status, run.summary = "ran", without_seconds(report.summary)
        for line in report.lines:
            say(f"    {line}")
        _write_stamp(run, recipe)


def _outputs(run: StepRun, stem: str) -> dict[str, Path]:
    paths = output_paths(run.step.kind, run.folder, stem)
    if run.step.kind.output in ("report", "pair-folder"):
        extra = {"report_html": run.folder / "report.html"} if run.step.kind.output == "report" else {}
        if run.kwargs.get("write_overrides"):  # a copy elsewhere in output/ (policy.WRITTEN_PATH_OPTIONS)
            extra["write_overrides"] = Path(run.kwargs["write_overrides"])
        return {**paths, **extra}
    if "folder" in paths:  # export: the files it reports
        return {Path(name).name: Path(name) for name in run.summary.get("files", [])}
    return paths


def _feed(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _feed(digest, path)
    return digest.hexdigest()


def _write_stamp(run: StepRun, recipe: Recipe) -> None:
    inputs = {option: {"path": run.kwargs[option], "sha256": file_sha256(Path(run.kwargs[option]))}
              for option in sorted(PATH_OPTIONS | {"model"})
              if isinstance(run.kwargs.get(option), str) and Path(run.kwargs[option]).is_file()}
    outputs = {role: {"path": str(path), "sha256": file_sha256(path)}
               for role, path in _outputs(run, recipe.model.stem).items() if path.is_file()}
    stamp = {"step": run.step.name, "index": run.step.index, "key": run.key, "options": run.kwargs,
             "inputs": inputs, "outputs": outputs, "summary": run.summary, "versions": versions()}
    atomic_write_bytes(run.folder / STAMP, strict_json.dumps(stamp, default=str).encode())
