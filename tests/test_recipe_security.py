"""Recipes are data, not code (docs/security.md): no Python without --allow-code, no writes
outside `output:` without --allow-outside, no environment without --env, and YAML read within
size, depth and alias limits. Every refusal is one line naming the recipe key, exit code 2,
before anything runs or is written."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.recipe.run import load_recipe
from qtool.errors import QtoolError
from qtool.recipe.document import MAX_RECIPE_BYTES, read_document
from qtool.recipe.policy import CODE_OPTIONS, STEM_OPTIONS, WRITTEN_PATH_OPTIONS, RunPolicy
from qtool.recipe.runner import plan_runs
from qtool.recipe.steps import STEP_KINDS

ROOT = Path(__file__).resolve().parents[1]
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"

HEAD = "model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {}\n"
METRIC = """\
from pathlib import Path
Path(__file__).with_name("executed").write_text("the recipe ran this file")
def score(outputs, reference, labels):
    return 1.0
"""


@pytest.fixture
def work(tmp_path) -> Path:
    np.savez(tmp_path / "calib.npz", input=np.zeros((2, 3, 32, 32), np.float32))
    (tmp_path / "model.onnx").write_bytes(CBR.read_bytes())
    (tmp_path / "m.py").write_text(METRIC)
    return tmp_path


def refused(work: Path, capsys, text: str, *flags: str, contains: tuple[str, ...] = (), count: int = 1) -> str:
    """Run the recipe `text`; assert exit 2, `count` lines (one per problem) naming the recipe (or
    the --set that set the key), nothing written; the lines."""
    recipe = work / "recipe.yaml"
    recipe.write_text(text)
    before = sorted(p.name for p in work.iterdir())
    code, out, err = run_main(["run", recipe, *flags], capsys)
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    where = "--set " if "--set" in flags else str(recipe)
    assert len(lines) == count and all(line.startswith(f"qtool: error: {where}") for line in lines), err
    assert "Traceback" not in err
    for fragment in contains:
        assert fragment in err, err
    assert sorted(p.name for p in work.iterdir()) == before, "a refused recipe writes nothing"
    return "\n".join(lines)


def dry_run(work: Path, capsys, text: str, *flags: str) -> str:
    recipe = work / "recipe.yaml"
    recipe.write_text(text)
    code, out, err = run_main(["run", recipe, "--dry-run", *flags], capsys)
    assert code == 0, err
    return out


# --- code -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["m.py:score", "json:loads", "os.path:join"])
def test_a_recipe_naming_python_is_refused_without_allow_code(work, capsys, spec):
    line = refused(work, capsys, HEAD + f"  - analyze: {{metric: '{spec}'}}\n",
                   contains=(":6: analyze.metric", spec, "--allow-code"))
    assert "sqnr" in line, "the refusal lists the built-in metrics"
    assert not (work / "executed").exists()


def test_code_through_a_variable_or_set_is_refused_too(work, capsys):
    refused(work, capsys, "vars: {m: m.py:score}\n" + HEAD + "  - analyze: {metric: '${m}'}\n",
            contains=("analyze.metric", "--allow-code"))
    refused(work, capsys, HEAD + "  - analyze: {}\n", "--set", "analyze.metric=m.py:score",
            contains=("analyze.metric", "--allow-code"))
    refused(work, capsys, HEAD + "  - mixed_precision: {metric: m.py:score}\n", contains=("mixed-precision.metric",))


def test_built_in_metrics_stay_allowed(work, capsys):
    assert "metric=cosine" in dry_run(work, capsys, HEAD + "  - analyze: {metric: cosine}\n")


def test_allowed_code_resolves_against_the_recipe_and_its_content_is_in_the_step_key(work, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("cwd")
    recipe = work / "recipe.yaml"
    recipe.write_text(HEAD + "  - analyze: {metric: m.py:score}\n")
    cwd = os.getcwd()
    os.chdir(elsewhere)  # a relative metric file is the recipe's, not the current folder's
    try:
        plan = load_recipe(str(recipe), (), RunPolicy(allow_code=True))
        assert plan.steps[1].options["metric"] == f"{work / 'm.py'}:score"
        first = [run.key for run in plan_runs(plan, write=False)]
        (work / "m.py").write_text(METRIC + "# edited\n")
        second = [run.key for run in plan_runs(load_recipe(str(recipe), (), RunPolicy(allow_code=True)), write=False)]
    finally:
        os.chdir(cwd)
    assert first[0] == second[0] and first[1] != second[1], "editing the metric file reruns its step only"
    assert not (work / "executed").exists(), "planning never imports the metric"


def test_a_missing_allowed_metric_file_is_one_line(work, capsys):
    refused(work, capsys, HEAD + "  - analyze: {metric: gone.py:score}\n", "--allow-code",
            contains=("analyze.metric", "no such file"))


def test_every_option_that_can_name_code_or_write_a_file_is_classified():
    """A new command option that loads code or writes a file must be added to the policy."""
    for name, kind in STEP_KINDS.items():
        for field in kind.command.fields.values():
            text, words = field.spec.help.lower(), set(field.name.split("_"))
            if field.name in kind.wired_options():
                continue
            if "module:function" in text or "file.py" in text or words & {"metric", "module", "plugin", "hook"}:
                assert field.name in CODE_OPTIONS, (name, field.name)
            if words & {"write", "output", "prefix", "dir", "file", "path", "save"}:
                assert field.name in WRITTEN_PATH_OPTIONS | STEM_OPTIONS, (name, field.name)


# --- writes outside output: -------------------------------------------------------------------

@pytest.mark.parametrize("target", ["../escape.json", "/tmp/qtool-escape.json", "a/../../escape.json", "~/escape.json"])
def test_write_overrides_outside_the_output_folder_is_refused(work, capsys, target):
    refused(work, capsys, HEAD + f"  - analyze: {{write_overrides: '{target}'}}\n",
            contains=(":6: analyze.write_overrides", "outside the recipe's output folder", "--allow-outside"))
    refused(work, capsys, HEAD + "  - analyze: {}\n", "--set", f"analyze.write_overrides={target}",
            contains=("analyze.write_overrides", "--allow-outside"))


def test_a_symlink_that_leads_out_is_refused(work, capsys, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (work / "out").mkdir()
    (work / "out" / "link").symlink_to(outside, target_is_directory=True)
    refused(work, capsys, HEAD + "  - analyze: {write_overrides: link/ov.json}\n", contains=("analyze.write_overrides",))
    (work / "out" / "01-calibrate").symlink_to(outside, target_is_directory=True)
    refused(work, capsys, HEAD, contains=("01-calibrate", "link out of the output folder", "--allow-outside"))
    assert not any(outside.iterdir())


def test_paths_inside_output_are_fine_and_allow_outside_lifts_the_limit(work):
    plan = load_recipe(str(_write(work, HEAD + "  - analyze: {write_overrides: final/ov.json}\n")))
    assert plan.steps[1].options["write_overrides"] == str(work / "out" / "final" / "ov.json")
    plan = load_recipe(str(_write(work, HEAD + "  - analyze: {write_overrides: ../ov.json}\n")), (),
                       RunPolicy(allow_outside=True))
    assert Path(plan.steps[1].options["write_overrides"]).resolve() == work / "ov.json"


@pytest.mark.parametrize("prefix", ["../../x", "a/b", "..", "/etc/x", ""])
def test_a_prefix_is_a_file_name_in_recipes_whatever_the_flags(work, capsys, prefix):
    refused(work, capsys, HEAD + f"  - export: {{prefix: '{prefix}'}}\n", "--allow-outside",
            contains=(":6: export.prefix",))


@pytest.mark.parametrize("prefix", ["../../x", "sub/x", ".."])
def test_export_prefix_on_the_command_line_is_a_file_name(work, capsys, prefix):
    code, _, err = run_main(["export", work / "model.onnx", "-o", work / "deploy", "--prefix", prefix], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"qtool: error: --prefix {prefix!r}: is a file name stem, not a path: no '/' or '..' "
        f"(the files go into the output folder)"]
    assert not (work / "deploy").exists() and not (work.parent / "x.onnx").exists()


# --- the environment --------------------------------------------------------------------------

def test_the_environment_is_read_only_for_names_given_with_env(work, capsys, monkeypatch):
    monkeypatch.setenv("QTOOL_TEST_SECRET", "hunter2")
    monkeypatch.setenv("QTOOL_TEST_SCHEME", "minmax")
    text = HEAD.replace("{}", "{scheme: '${QTOOL_TEST_SCHEME}', seed: '${QTOOL_TEST_SECRET}'}")
    line = refused(work, capsys, text, contains=(":5: undefined variable ${QTOOL_TEST_SCHEME}",
                                                 "--env QTOOL_TEST_SCHEME"), count=2)
    assert "hunter2" not in line
    line = refused(work, capsys, text, "--env", "QTOOL_TEST_SCHEME",
                   contains=("undefined variable ${QTOOL_TEST_SECRET}", "--env QTOOL_TEST_SECRET"))
    plan = load_recipe(str(_write(work, HEAD.replace("{}", "{scheme: '${QTOOL_TEST_SCHEME}'}"))), (),
                       RunPolicy(env=("QTOOL_TEST_SCHEME",)))
    assert plan.steps[0].options["scheme"] == "minmax"


def test_vars_set_and_built_ins_need_no_flag(work):
    text = "vars: {s: minmax}\n" + HEAD.replace("{}", "{scheme: '${s}', seed: '${n}'}") + "description: ${recipe_dir}\n"
    plan = load_recipe(str(_write(work, text)), ("vars.n=3",))
    assert plan.steps[0].options == {"scheme": "minmax", "seed": 3}


def test_variables_cannot_blow_the_recipe_up(work, capsys):
    refs = " ".join(["${big}"] * 200)
    refused(work, capsys, f"vars: {{big: '{'x' * 8000}'}}\n" + HEAD + f"description: '{refs}'\n",
            contains=("${big}", "more than 1024 KiB"))


# --- YAML limits ------------------------------------------------------------------------------

def _write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def alias_bomb() -> str:
    """Nine anchors, each a list of nine aliases of the one before: 9^9 strings once expanded."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_the_alias_bomb_is_refused_fast_in_bounded_memory(work, capsys):
    path = _write(work, alias_bomb())
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(QtoolError) as error:
        read_document(path)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "more than 20,000 values once its aliases are followed" in str(error.value)
    assert str(error.value).startswith(f"{path}:")
    # measured: 0.002 s, 1 MB traced (before: past 20 s and 690 MB when the test's limits cut it off)
    assert seconds < 0.5 and peak < 20 << 20, (seconds, peak)
    refused(work, capsys, alias_bomb(), contains=("alias bomb",))


@pytest.mark.parametrize("text, message", [
    ("model: &m [*m]\noutput: out\nsteps: [fold: {}]\n", ":1: refused: alias *m is inside the node &m"),
    ("model: &m {a: *m}\noutput: out\nsteps: [fold: {}]\n", ":1: refused: alias *m is inside the node &m"),
    ("model: " + "[" * 5000 + "]" * 5000 + "\n", ":1: refused: nested deeper than 64 levels"),
    ("model: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", ":1: refused: nested deeper than 64 levels"),
    ("steps:\n" + "".join("  " * i + "- \n" for i in range(1, 200)), ": refused: nested deeper than 64 levels"),
], ids=["anchor-in-its-list", "anchor-in-its-mapping", "5000-brackets", "3000-braces", "200-block-lists"])
def test_cycles_and_deep_nesting_are_one_line_not_recursion_errors(work, capsys, text, message):
    refused(work, capsys, text, contains=(message,))


def test_an_oversized_recipe_is_refused_before_parsing(work, capsys):
    refused(work, capsys, "# " + "x" * MAX_RECIPE_BYTES + "\n", contains=("larger than 1024 KiB",))


def test_a_recipe_with_too_many_values_is_refused_early(work, capsys):
    """PyYAML composes ~20,000 nodes a second: a 1 MiB flow list would cost half a minute."""
    start = time.perf_counter()
    refused(work, capsys, "description: [" + ",".join(["1"] * 100_000) + "]\n",
            contains=(":1: refused: the document holds more than 20,000 values; a recipe needs far fewer",))
    assert time.perf_counter() - start < 5


def test_anchors_and_aliases_within_the_limits_still_work(work):
    text = "model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: &c {scheme: minmax}\n" \
           "  - calibrate: *c\n"
    plan = load_recipe(str(_write(work, text)))
    assert [step.options for step in plan.steps] == [{"scheme": "minmax"}] * 2


# --- pickles ----------------------------------------------------------------------------------

class _Executes:
    """Unpickling this creates the file `marker` (what any pickle could do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_pickle_in_the_data_is_never_loaded(work, capsys):
    marker = work / "unpickled"
    np.save(work / "evil.npy", np.array([_Executes(marker)] * 2, dtype=object), allow_pickle=True)
    (work / "recipe.yaml").write_text(HEAD.replace("calib.npz", "evil.npy"))
    code, _, err = run_main(["run", work / "recipe.yaml"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "(a pickle), which qtool never loads" in err, err
    assert not marker.exists() and not (work / "out").exists()
