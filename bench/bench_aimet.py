"""AIMET compat bench (issue 15): qtool against aimet-onnx 2.42.0 itself, kept out of CI.

    python bench/bench_aimet.py            # = make bench-aimet; ~10 min on 2 busy cores
    python bench/bench_aimet.py --no-fixtures   # compare only, leave tests/fixtures/aimet alone
    python bench/bench_aimet.py --zoo all       # real models (bench/aimet_zoo.py), the two checked configs,
                                                # into build/aimet-zoo/KEYS/ (no fixtures, no doc); --zoo rec,yolo: some

1. Builds its own venv, build/aimet-venv: ``pip install torch==2.13.0`` first (so pip takes the
   local CPU wheel, not a CUDA build of several GB), then ``aimet-onnx==2.42.0`` with torch pinned.
   qtool and its tests never import aimet; only bench/aimet_child.py runs in that venv.
2. For each sample model (the PP-OCR classifier folded by ``qtool fold``, the synthetic
   conv/BN/ReLU, MobileNet block, attention block and two-input models, and the written-out
   LayerNorm/RMSNorm blocks of tests/aimet_models.py) x each runtime config inside the aimet-onnx
   wheel, records aimet's quantizer table (tests/fixtures/aimet/MODEL/CONFIG.json); for each model x
   EXPORT_CONFIGS, aimet's own exported encodings (1.0.0, 2.0.0) and its outputs on probe inputs
   (tests/fixtures/aimet/encodings/).
3. Compares: ``qtool info MODEL --config CONFIG --json`` (accepted or its one-line error; every key
   qtool refuses, found by removing the refused key and asking again; the plan qtool makes from what
   is left) against aimet's table; round trips (bench/aimet_roundtrip.py): ``load_encodings_to_sim(
   strict=True)`` on what ``qtool calibrate --config FILE`` + ``qtool export`` write, SQNR of aimet's
   sim with them against qtool's QDQ models, and of qtool's QDQ model from aimet's encodings against
   aimet's sim; where aimet's sim and qtool's QDQ model first part, and how many values aimet's and
   onnxruntime's roundings put apart there (aimet_child.py's diverge job). Rewrites the generated
   part of docs/aimet_compat.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import aimet_doc  # noqa: E402  (bench/aimet_doc.py)
import common as C  # noqa: E402  (bench/common.py)
import aimet_zoo  # noqa: E402  (bench/aimet_zoo.py: the real models, --zoo)
import aimet_report  # noqa: E402  (bench/aimet_report.py)
import aimet_roundtrip  # noqa: E402  (bench/aimet_roundtrip.py; puts tests/ on the path)
import aimet_models  # noqa: E402  (tests/aimet_models.py)

AIMET_SPEC, TORCH_SPEC = "aimet-onnx==2.42.0", "torch==2.13.0"
VENV = C.AIMET_VENV
WORK = ROOT / "build" / "aimet"
FIXTURES = ROOT / "tests" / "fixtures" / "aimet"
DOC = ROOT / "docs" / "aimet_compat.md"
CHILD = HERE / "aimet_child.py"
CLS = "ppocr_cls_folded"
# name -> (path relative to ROOT, how it is made); the classifier is folded first, as AIMET asks.
MODELS = {
    CLS: ("build/aimet/models/ppocr_cls_folded.onnx", "qtool fold sample_models/ppocr_cls.onnx"),
    "conv_bn_relu": ("sample_models/conv_bn_relu.onnx", "sample_models/conv_bn_relu.onnx as committed (BN not folded)"),
    "mobilenet_block": ("sample_models/mobilenet_block.onnx", "sample_models/mobilenet_block.onnx as committed (BN not folded)"),
    "attention_block": ("sample_models/attention_block.onnx", "sample_models/attention_block.onnx as committed"),
    "two_inputs": ("sample_models/two_inputs.onnx", "sample_models/two_inputs.onnx as committed"),
    "norms_block": ("build/aimet/models/norms_block.onnx", "tests/aimet_models.py norms_block(17): LayerNorm/RMSNorm "
                    "written out, ReduceMean axes as attributes (aimet fuses them)"),
    "norms_block_opset18": ("build/aimet/models/norms_block_opset18.onnx", "tests/aimet_models.py norms_block(18): the "
                            "same with axes as inputs (aimet's passes, not its fusions)"),
}
EXPORT_CONFIGS = ("default_config.json", "htp_quantsim_config_v73.json")  # the two the issue checks
QUIET_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}


def sh(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(map(str, cmd)), file=sys.stderr)
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, text=True, capture_output=True,
                            env={**os.environ, **QUIET_ENV}, **kw)
    if check and result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(map(str, cmd))}\n{result.stderr[-3000:]}")
    return result


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> dict:
    """build/aimet-venv with aimet-onnx 2.42.0 and the CPU torch 2.13.0; versions of what it holds."""
    probe = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
             "('aimet-onnx', 'torch', 'onnxruntime', 'onnx', 'numpy')}))")
    want = {"aimet-onnx": AIMET_SPEC.split("==")[1], "torch": TORCH_SPEC.split("==")[1]}
    if venv_python().exists():
        got = sh([venv_python(), "-c", probe], check=False)
        if got.returncode == 0:
            versions = json.loads(got.stdout)
            if all(versions[k].split("+")[0] == v for k, v in want.items()):
                return versions
    sh([sys.executable, "-m", "venv", VENV])
    pip = [venv_python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    sh(pip + [TORCH_SPEC])  # first: the local CPU wheel; later resolutions keep it
    sh(pip + [AIMET_SPEC, TORCH_SPEC])
    return json.loads(sh([venv_python(), "-c", probe]).stdout)


def child(*args: str) -> None:
    result = sh([venv_python(), CHILD, *args], check=False)
    if result.returncode != 0:
        raise SystemExit(f"aimet_child.py {' '.join(args)} failed:\n{result.stderr[-4000:]}")


def prepare_models() -> list[dict]:
    (WORK / "models").mkdir(parents=True, exist_ok=True)
    sh(["qtool", "fold", "sample_models/ppocr_cls.onnx", "-o", MODELS[CLS][0]])
    for name in set(aimet_models.BUILT) & set(MODELS):
        aimet_models.write(name, ROOT / MODELS[name][0])
    return [{"name": name, "path": str(ROOT / path), "made_by": made_by} for name, (path, made_by) in MODELS.items()]


# ------------------------------------------------------------------------- qtool side

def qtool_info(model: Path, config: Path) -> tuple[dict | None, str | None]:
    result = sh(["qtool", "info", model, "--config", config, "--json"], check=False)
    if result.returncode == 0:
        return json.loads(result.stdout), None
    lines = [line for line in result.stderr.splitlines() if line.startswith("qtool: error:")]
    return None, (lines[0] if lines else result.stderr.strip().splitlines()[-1])


def qtool_plan(model: Path, config: Path, tmp: Path, cache: dict) -> dict:
    """qtool's answer for the config as shipped; if refused, every refused key (each removed in turn
    until qtool accepts the rest, at most 40) and the plan qtool makes from what is left. What a
    config loses does not depend on the model, so `cache` keeps it per config for the next models."""
    stripped = tmp / config.name
    if config.name in cache:
        first_error, refused, doc = copy.deepcopy(cache[config.name])
        stripped.write_text(json.dumps(doc))
        info, error = qtool_info(model, stripped if refused else config)
    else:
        info, first_error = qtool_info(model, config)
        refused, doc, error = [], json.loads(config.read_text()), first_error
        stripped.write_text(json.dumps(doc))
    record = {"accepted": first_error is None, "error": first_error, "refused": refused, "plan": info}
    while error is not None and len(record["refused"]) < 40:
        where = aimet_report.strip_refused(doc, error)
        if where is None:
            record["unresolved"] = error
            break
        record["refused"].append({"removed": where, "error": error.split(": error: ", 1)[-1]})
        stripped.write_text(json.dumps(doc))
        info, error = qtool_info(model, stripped)
        record["plan"] = info
    cache[config.name] = copy.deepcopy((first_error, record["refused"], doc))
    return record


def write_fixtures(tables: Path, exports: Path, versions: dict) -> None:
    if FIXTURES.exists():
        for old in FIXTURES.glob("*/*.json"):  # the tables, and encodings/*__probe_outputs.json
            old.unlink()
        for old in (FIXTURES / "encodings").glob("*.encodings"):
            old.unlink()
    for model_dir in sorted(tables.iterdir()):
        target = FIXTURES / model_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for table in sorted(model_dir.glob("*.json")):
            (target / table.name).write_text(aimet_report.fixture_text(json.loads(table.read_text())))
    (FIXTURES / "encodings").mkdir(parents=True, exist_ok=True)
    for enc in sorted(exports.glob("*.encodings")):
        text = aimet_report.encodings_text(json.loads(enc.read_text()))
        if len(text.encode()) < 200_000:
            (FIXTURES / "encodings" / enc.name).write_text(text)
        else:
            print(f"{enc.name}: {len(text.encode())} bytes, not committed (over 200 KB)", file=sys.stderr)
    for probe in sorted(exports.glob("*__probe_outputs.npz")):
        stem = probe.name.removesuffix("__probe_outputs.npz")
        (FIXTURES / "encodings" / f"{stem}__probe_outputs.json").write_text(aimet_roundtrip.probe_fixture(exports, stem))
    (FIXTURES / "README.md").write_text(aimet_report.fixtures_readme(versions, MODELS, EXPORT_CONFIGS))


def round_trips(models: list[dict], config_dir: Path, data: dict) -> dict:
    """aimet's exports, qtool's exports loaded strictly into aimet's sim, SQNR both ways, and where
    aimet's sim and qtool's QDQ model part (both ways)."""
    exports = WORK / "aimet_export"
    shutil.rmtree(exports, ignore_errors=True)
    cases = [{"model": m["path"], "name": m["name"], "config": c, **data[m["name"]]} for m in models for c in EXPORT_CONFIGS]
    (WORK / "export_cases.json").write_text(json.dumps(cases))
    child("--job", "export", "--cases", str(WORK / "export_cases.json"), "--samples",
          str(aimet_roundtrip.CALIB_SAMPLES), "--out", str(exports))
    forward = {(m["name"], c): aimet_roundtrip.qtool_forward(sh, m, config_dir / c, data[m["name"]], WORK)
               for m in models for c in EXPORT_CONFIGS}
    (WORK / "load_cases.json").write_text(json.dumps(aimet_roundtrip.load_cases(models, EXPORT_CONFIGS, forward, data)))
    child("--job", "load", "--cases", str(WORK / "load_cases.json"), "--samples", str(aimet_roundtrip.EVAL_SAMPLES),
          "--out", str(WORK / "loads.json"))
    results: dict = {}
    for load in json.loads((WORK / "loads.json").read_text()):
        results.setdefault((load["name"], load["config"]), {"load": {}})["load"][load["version"]] = load
    for m in models:
        for c in EXPORT_CONFIGS:
            results[(m["name"], c)]["reverse"] = aimet_roundtrip.reverse(sh, m, c, data[m["name"]], exports, WORK)
            files = forward[(m["name"], c)]
            results[(m["name"], c)]["same_weights"] = aimet_roundtrip.same_weights(files["aimet_qdq"], files["qdq"],
                                                                                  data[m["name"]]["eval"])
            results[(m["name"], c)]["qdq_vs_float_db"] = aimet_roundtrip.sqnr(  # how far quantization itself moves it
                aimet_roundtrip.outputs(Path(m["path"]), data[m["name"]]["eval"]),
                aimet_roundtrip.outputs(Path(files["qdq"]), data[m["name"]]["eval"]))
    cases = aimet_roundtrip.diverge_cases(models, EXPORT_CONFIGS, forward, data, exports, WORK)
    (WORK / "diverge_cases.json").write_text(json.dumps(cases))
    child("--job", "diverge", "--cases", str(WORK / "diverge_cases.json"), "--samples",
          str(aimet_roundtrip.EVAL_SAMPLES), "--out", str(WORK / "diverge.json"))
    for found in json.loads((WORK / "diverge.json").read_text()):
        results[(found["name"], found["config"])].setdefault("diverge", {})[found["direction"]] = found
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-fixtures", action="store_true", help="do not rewrite tests/fixtures/aimet")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/aimet_compat.md")
    ap.add_argument("--zoo-table", action="store_true", help="print the table of every --zoo run kept under "
                    "build/aimet-zoo/*/results.json and stop")
    ap.add_argument("--zoo", metavar="KEYS", help="real models instead (all, or some of: " + ", ".join(aimet_zoo.KEYS)
                    + "), under default_config.json and htp_quantsim_config_v73.json only, into build/aimet-zoo/KEYS/; "
                    "neither fixtures nor doc are rewritten")
    args = ap.parse_args()
    if args.zoo_table:
        runs = [json.loads(p.read_text()) for p in sorted((ROOT / "build" / "aimet-zoo").glob("*/results.json"))]
        print(aimet_doc.zoo_table(runs), end="")
        return
    versions = ensure_venv()
    versions["qtool"] = sh(["qtool", "--version"]).stdout.strip().split()[-1]
    global WORK
    if args.zoo:
        WORK = ROOT / "build" / "aimet-zoo" / args.zoo.replace(",", "_")  # one folder per run: all of it kept
        args.no_fixtures = args.no_doc = True
        aimet_roundtrip.CALIB_SAMPLES, aimet_roundtrip.EVAL_SAMPLES = aimet_zoo.CALIB, aimet_zoo.EVAL
    WORK.mkdir(parents=True, exist_ok=True)
    if args.zoo:
        models, data = aimet_zoo.prepare(sh, WORK, aimet_zoo.KEYS if args.zoo == "all" else args.zoo.split(","))
    else:
        models = prepare_models()
        data = aimet_roundtrip.prepare_data(models, WORK, CLS)
    (WORK / "models.json").write_text(json.dumps(models))
    out = WORK / "child"
    shutil.rmtree(out, ignore_errors=True)
    child("--job", "tables", "--models", str(WORK / "models.json"), "--out", str(out),
          *(["--configs", *EXPORT_CONFIGS] if args.zoo else []))
    meta = json.loads((out / "meta.json").read_text())
    config_dir = Path(meta["config_dir"])
    loads = round_trips(models, config_dir, data)
    comparisons, tables, cache = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            producers = {o: n.op_type for n in onnx.load(model["path"]).graph.node for o in n.output}
            for config in meta["configs"]:
                table_path = out / "tables" / model["name"] / config
                if not table_path.exists():
                    continue
                aimet = tables[(model["name"], config)] = json.loads(table_path.read_text())
                plan = qtool_plan(Path(model["path"]), config_dir / config, Path(tmp), cache)
                comparisons[(model["name"], config)] = aimet_report.compare(aimet, plan, producers)
        ask = lambda cfg: qtool_info(Path(models[-1]["path"]), cfg)[1]  # noqa: E731
        probes = {"keys": [], "names": {}} if args.zoo else aimet_report.schema_probes(meta, config_dir, ask, Path(tmp))
    names = [m["name"] for m in models]
    markdown, summary = aimet_doc.render_markdown(versions, meta, tables, comparisons, loads, probes, names)
    print(summary)
    (WORK / "summary.md").write_text(markdown)
    if not args.no_fixtures:
        write_fixtures(out / "tables", WORK / "aimet_export", versions)
    if not args.no_doc:
        aimet_doc.write_doc(DOC, markdown)
    (WORK / "results.json").write_text(json.dumps(
        {"versions": versions, "loads": {f"{m}/{c}": v for (m, c), v in loads.items()}, "probes": probes,
         "comparisons": {f"{m}/{c}": v for (m, c), v in comparisons.items()}}, sort_keys=True, indent=1, default=str))


if __name__ == "__main__":
    main()
