"""Models that store their weights as external data (issue 13 part 2).

Every command that writes a model, given one whose weights are in `m.onnx.data`, writes a complete
pair under the output's own name (`out.onnx` + `out.onnx.data`) that loads in onnx and
onnxruntime, with the input's weights, even when an unrelated `m.onnx.data` lies in the output
folder. External-data locations that are symlinks, leave the model's folder or lack the bytes they
claim are refused with one line naming the model and the location, before onnx reads them
(whatever the onnx version: onnx 1.16 followed symlinks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import run_main
from small_model import commands, invoke, tree, workspace, write_recipe

OUT = "o"
DECOY = b"not the weights of m.onnx" * 100

# command -> the models it writes (relative to the workspace), and whether each is the float model
# (whose weights must be the input's, and which must keep external data)
WRITTEN = {
    "fold": {"o/fold.onnx": False},
    "equalize": {"o/cle.onnx": False},
    "calibrate": {"o/cal.onnx": True},
    "bias-correct": {"o/bc.onnx": False},
    "adaround": {"o/ada.onnx": False},
    "simulate": {"o/sim.onnx": False},
    "export": {"o/exp/net.onnx": True, "o/exp/net_qdq.onnx": False},
    "mixed-precision": {"o/mp/model.onnx": True},
    "run": {"o/recipe/01-fold/m.onnx": False, "o/recipe/03-calibrate/m.onnx": False,
            "o/recipe/06-export/net.onnx": False, "o/recipe/06-export/net_qdq.onnx": False},
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every command run once on the external-data model; (workspace, inputs' hashes before)."""
    folder = workspace(tmp_path_factory.mktemp("external"), external=True)
    write_recipe(folder, OUT)
    for sub in ("o", "o/exp", "o/mp"):  # another model's data under the input's data name
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "m.onnx.data").write_bytes(DECOY)
    before = tree(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        codes = {name: invoke(["-q", *args]) for name, args in commands(OUT)}
    finally:
        os.chdir(cwd)
    return folder, before, codes


def _weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


@pytest.mark.parametrize("command", sorted(WRITTEN))
def test_each_command_writes_a_complete_pair(ran, command):
    folder, _, codes = ran
    assert codes[command][0] == 0, codes[command]
    source = _weights(onnx.load(str(folder / "m.onnx")))
    for relative, is_copy in WRITTEN[command].items():
        path = folder / relative
        bare = onnx.load(str(path), load_external_data=False)
        locations = {entry.value for t in bare.graph.initializer for entry in t.external_data if entry.key == "location"}
        assert locations == {f"{path.name}.data"}, (relative, locations)  # its own data file, nothing else
        assert (path.parent / f"{path.name}.data").is_file()
        proto = onnx.load(str(path))
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if is_copy:
            weights = _weights(proto)
            assert set(weights) == set(source)
            for name, array in source.items():
                np.testing.assert_array_equal(weights[name], array)


def test_inputs_and_the_decoys_are_unchanged(ran):
    folder, before, _ = ran
    after = tree(folder)
    assert {k: after[k] for k in before} == before
    assert not [p for p in folder.rglob(".*") if p.is_file()]  # no temporary files left


def test_a_model_without_external_data_stays_one_file(tmp_path, capsys):
    folder = workspace(tmp_path, external=False)
    code, _, err = run_main(["fold", folder / "m.onnx", "-o", folder / "f.onnx"], capsys)
    assert code == 0, err
    assert [p.name for p in folder.glob("f.onnx*")] == ["f.onnx"]


def _external(folder: Path, location: str) -> Path:
    """m.onnx in `folder` whose tensors all point at `location` (offsets kept)."""
    model = folder / "m.onnx"
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    model.write_bytes(proto.SerializeToString())
    return model


def _symlinked_file(folder: Path, outside: Path) -> str:
    (folder / "link.data").symlink_to(outside / "secret.data")
    return "link.data"


def _symlinked_folder(folder: Path, outside: Path) -> str:
    (folder / "weights").symlink_to(outside, target_is_directory=True)
    return "weights/secret.data"


def _parent(folder: Path, outside: Path) -> str:
    return os.path.relpath(outside / "secret.data", folder)


def _absolute(folder: Path, outside: Path) -> str:
    return str(outside / "secret.data")


def _missing(folder: Path, outside: Path) -> str:
    return "nowhere.data"


def _truncated(folder: Path, outside: Path) -> str:
    data = (folder / "m.onnx.data").read_bytes()
    (folder / "short.data").write_bytes(data[: len(data) // 2])
    return "short.data"


@pytest.mark.parametrize("make, problem", [
    (_symlinked_file, "symlink"), (_symlinked_folder, "symlink"), (_parent, "outside the model's folder"),
    (_absolute, "outside the model's folder"), (_missing, "missing"), (_truncated, "truncated"),
])
def test_unsafe_or_broken_locations_are_refused(tmp_path, capsys, make, problem):
    folder = workspace(tmp_path / "model", external=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.data").write_bytes((folder / "m.onnx.data").read_bytes())  # loadable if followed
    location = make(folder, outside)
    model = _external(folder, location)
    before = tree(tmp_path)
    code, out, err = run_main(["fold", model, "-o", tmp_path / "out" / "f.onnx"], capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtool: error: "), err
    assert str(model) in lines[0] and f"'{location}'" in lines[0] and problem in lines[0], lines[0]
    assert "Traceback" not in err
    assert tree(tmp_path) == before  # nothing written, inputs unchanged
