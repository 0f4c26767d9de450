"""The bad-input corpus (tests/corpus/build_corpus.py) through every command it applies to.

Each run (with `-q`: progress lines off, warnings on) must end the way a user error ends: exit
code 2, exactly one line on stderr that starts `qtool: error:` and names the file or key at fault, no traceback, nothing written to the output
folder, and every input byte-identical afterwards. The results (cases x commands) are written to
build/bad_inputs.json and printed as a table at the end of the module, for the closing notes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qtool.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpus"))
from build_corpus import CASES, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS: dict[str, dict[str, str]] = {}
BY_NAME = {case.name: case for case in CASES}
RUNS = [(case.name, command) for case in CASES for command in case.commands
        if not (case.kind == "preprocess" or case.name.startswith("image_")) or command != "info"]


def _invoke(args: list, quiet: bool = True) -> tuple[int, str, str, BaseException | None]:
    """Run qtool in-process; `-q` keeps the progress lines of a run that fails late (a user metric
    that raises after the first evaluations) off stderr, warnings and errors stay."""
    result = CliRunner().invoke(cli, ["-q"] * quiet + [str(a) for a in args])
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return result.exit_code, result.stdout, result.stderr, exception


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    files = build(folder, lambda args: _invoke(args)[0])
    yield folder, files
    _write_results()


def _args(command: str, files: dict, out: Path) -> list:
    model, data = files["model"], files["data"]
    encodings = ["--encodings", files["encodings"]] if "encodings" in files else []
    labels = ["--labels", files["labels"]] if "labels" in files else []
    metric = ["--metric", files["metric"]] if "metric" in files else []
    preprocess = ["--preprocess", files["preprocess"]] if "preprocess" in files else []
    data_args = ["--data", data, *preprocess]
    return {
        "calibrate": ["calibrate", model, *data_args, "--scheme", "minmax", *encodings, "-o", out / "m"],
        "simulate": ["simulate", model, *data_args, *encodings, *labels],
        "equalize": ["equalize", model, *data_args, "-o", out / "e.onnx"],
        "bias-correct": ["bias-correct", model, *data_args, *encodings, "--iterations", "1", "-o", out / "bc"],
        "adaround": ["adaround", model, *data_args, *encodings, "--iterations", "20", "--rows", "64", "-o", out / "a"],
        "analyze": ["analyze", model, *data_args, *encodings, *labels, *metric, "--eval-samples", "8", "-o", out],
        "mixed-precision": ["mixed-precision", model, *data_args, *labels, *metric, "--candidates", "w8a8,w16a16",
                            "--eval-samples", "8", "-o", out],
        "export": ["export", model, *encodings, "-o", out],
        "info": ["info", model, "--data", data],
        "fold": ["fold", model, "-o", out / "f.onnx"],
        "plot-ranges": ["plot-ranges", model, "-o", out / "r.png"],
    }[command]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case_name,command", RUNS, ids=[f"{c}-{m}" for c, m in RUNS])
def test_bad_input_is_one_line_exit_2(corpus, tmp_path, case_name, command):
    folder, built = corpus
    case = BY_NAME[case_name]
    files = {"model": folder / "tiny.onnx", "data": folder / "tiny.npz", **built[case_name]}
    out = tmp_path / "out"
    before = _tree(folder)
    code, stdout, stderr, exception = _invoke(_args(command, files, out))
    lines = stderr.strip().splitlines()
    outcome = ("traceback" if exception is not None or "Traceback" in stderr else
               "accepted" if code == 0 else
               "ok" if code == 2 and len(lines) == 1 and case.named in lines[0] else "wrong")
    RESULTS.setdefault(case_name, {})[command] = outcome
    assert exception is None and "Traceback" not in stderr, (stderr, repr(exception))
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("qtool: error: "), stderr
    assert case.named in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.rglob("*"))
    assert _tree(folder) == before


def _write_results() -> None:
    """build/bad_inputs.json and a printed table: per case, the outcome per command."""
    if not RESULTS:
        return
    commands = [c for c in ("calibrate", "simulate", "equalize", "bias-correct", "adaround", "analyze",
                            "mixed-precision", "info", "export", "fold", "plot-ranges")]
    counts: dict[str, int] = {}
    for row in RESULTS.values():
        for outcome in row.values():
            counts[outcome] = counts.get(outcome, 0) + 1
    doc = {"cases": len(RESULTS), "runs": sum(counts.values()), "outcomes": dict(sorted(counts.items())),
           "results": {name: dict(sorted(row.items())) for name, row in sorted(RESULTS.items())}}
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "bad_inputs.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    short = {"ok": ".", "traceback": "T", "accepted": "A", "wrong": "W"}
    header = f"{'case':28} " + " ".join(f"{c[:5]:>5}" for c in commands)
    rows = [header] + [f"{name:28} " + " ".join(f"{short.get(row.get(c, ''), '-'):>5}" for c in commands)
                       for name, row in sorted(RESULTS.items())]
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print("\nbad-input corpus: " + f"{doc['cases']} cases, {doc['runs']} runs: {summary}\n" + "\n".join(rows))
