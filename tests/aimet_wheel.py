"""The runtime configs aimet-onnx ships, read from its PyPI wheel at test time (never copied into
the repo), and the models the recorded aimet tables (tests/fixtures/aimet) were made on.

``pip download --no-deps`` puts the wheel into build/cache once; a test that needs it skips,
saying why, only when the wheel cannot be downloaded."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEEL_SPEC = "aimet-onnx==2.42.0"
WHEEL_CACHE = ROOT / "build" / "cache" / "aimet-wheel"
CONFIG_DIR = "aimet_onnx/common/quantsim_config/"
FIXTURES = ROOT / "tests" / "fixtures" / "aimet"  # one folder per model, one table per shipped config
REGENERATE = "regenerate with `make bench-aimet` (tests/fixtures/aimet/README.md)"


def aimet_wheel() -> Path:
    """The aimet-onnx wheel, downloaded once into build/cache; skips the test when pip cannot get it."""
    wheels = sorted(WHEEL_CACHE.glob("aimet_onnx-2.42.0-*.whl"))
    if not wheels:
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "-q", WHEEL_SPEC, "-d", str(WHEEL_CACHE)], capture_output=True, text=True)
        wheels = sorted(WHEEL_CACHE.glob("aimet_onnx-2.42.0-*.whl"))
        if not wheels:
            pytest.skip(f"cannot download {WHEEL_SPEC} from PyPI (the shipped configs live in that wheel): "
                        f"{(done.stderr.strip().splitlines() or ['no wheel'])[-1]}")
    return wheels[0]


@functools.lru_cache(maxsize=1)
def _configs(wheel: Path) -> dict[str, dict]:
    with zipfile.ZipFile(wheel) as archive:
        return {Path(name).name: json.loads(archive.read(name)) for name in archive.namelist()
                if name.startswith(CONFIG_DIR) and name.endswith(".json") and name.count("/") == 3}


def shipped_configs() -> dict[str, dict]:
    """config file name -> its JSON document, for the 19 configs of aimet-onnx 2.42.0."""
    return _configs(aimet_wheel())


def fixture_model(name: str, folder: Path) -> Path:
    """The ONNX file a fixture table was recorded on: the committed sample model; for
    ppocr_cls_folded the bundled classifier folded here as the bench folds it (`qtool fold`); the
    norms blocks built by tests/aimet_models.py."""
    from aimet_models import BUILT, write

    path = folder / f"{name}.onnx"
    if name in BUILT:
        return path if path.exists() else write(name, path)
    if name != "ppocr_cls_folded":
        return ROOT / "sample_models" / f"{name}.onnx"
    from qtool.commands.fold import fold_model
    from qtool.ir.graph import load_model, save_model

    if not path.exists():
        save_model(fold_model(load_model(ROOT / "sample_models" / "ppocr_cls.onnx")).model, path)
    return path


def table(model: str, config: str) -> dict:
    """A recorded aimet table: the file's header and `rows`, {tensor name: column -> value}."""
    doc = json.loads((FIXTURES / model / config).read_text())
    doc["rows"] = {row[0]: dict(zip(doc["columns"], row)) for row in doc.pop("quantizers")}
    return doc
