"""The recorded aimet-onnx quantizer tables (tests/fixtures/aimet, written by bench/bench_aimet.py)
stay usable without aimet: well-formed, one file per model x shipped config, recorded on the
committed sample models, and the exported encodings small and parseable.

tests/test_aimet_placement.py compares qtool's plan with these tables and
tests/test_aimet_roundtrip.py reads the exported encodings; this file only guards the data they
read (a stale fixture after a sample model changes fails here, with the command that regenerates
it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "aimet"
TABLES = sorted(p for p in FIXTURES.glob("*/*.json") if p.parent.name != "encodings")
REGENERATE = "regenerate with `make bench-aimet` (tests/fixtures/aimet/README.md)"


def test_one_table_per_model_and_config() -> None:
    models = {p.parent.name for p in TABLES}
    configs = {p.parent.name: {q.name for q in TABLES if q.parent == p.parent} for p in TABLES}
    assert {"ppocr_cls_folded", "attention_block"} <= models, REGENERATE
    assert len({frozenset(c) for c in configs.values()}) == 1, f"models recorded with different configs; {REGENERATE}"
    assert {"default_config.json", "htp_quantsim_config_v73.json"} <= next(iter(configs.values()))


@pytest.mark.parametrize("path", TABLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_table_is_well_formed(path: Path) -> None:
    table = json.loads(path.read_text())
    assert table["aimet_onnx"] == "2.42.0" and table["config"] == path.name
    columns = table["columns"]
    rows = [dict(zip(columns, row)) for row in table["quantizers"]]
    assert all(len(row) == len(columns) for row in table["quantizers"])
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
    assert table["counts"]["quantizers"] == len(rows)
    assert table["counts"]["enabled"] == sum(r["enabled"] for r in rows)
    assert {r["kind"] for r in rows} <= {"input", "output", "param"}
    names = {r["name"] for r in rows}
    assert all(set(r["tied_with"]) <= names for r in rows)


@pytest.mark.parametrize("model", ["conv_bn_relu", "mobilenet_block", "attention_block", "two_inputs"])
def test_tables_were_recorded_on_the_committed_model(model: str) -> None:
    digest = hashlib.sha256((ROOT / "sample_models" / f"{model}.onnx").read_bytes()).hexdigest()
    for path in FIXTURES.glob(f"{model}/*.json"):
        assert json.loads(path.read_text())["model_sha256"] == digest, f"{path.name}: model changed; {REGENERATE}"


def test_exported_encodings_are_small_and_parse() -> None:
    files = sorted((FIXTURES / "encodings").glob("*.encodings"))
    assert {f.name.rsplit("__", 1)[1] for f in files} == {"1.0.0.encodings", "2.0.0.encodings"}
    probes = {f.name.removesuffix("__probe_outputs.json") for f in (FIXTURES / "encodings").glob("*__probe_outputs.json")}
    assert probes == {f.name.rsplit("__", 1)[0] for f in files}, REGENERATE
    for f in files:
        assert f.stat().st_size < 200_000
        doc = json.loads(f.read_text())
        assert doc["version"] == f.name.rsplit("__", 1)[1].removesuffix(".encodings")
