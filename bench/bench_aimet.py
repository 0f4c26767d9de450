"""AIMET compat bench (issue 15): qtool against aimet-onnx 2.42.0 itself, kept out of CI.

    python bench/bench_aimet.py            # = make bench-aimet; ~10 min on 2 busy cores
    python bench/bench_aimet.py --no-fixtures   # compare only, leave tests/fixtures/aimet alone

1. Builds its own venv, build/aimet-venv: ``pip install torch==2.13.0`` first (so pip takes the
   local CPU wheel, not a CUDA build of several GB), then ``aimet-onnx==2.42.0`` with torch pinned.
   qtool and its tests never import aimet; only bench/aimet_child.py runs in that venv.
2. For each sample model (the PP-OCR classifier folded by ``qtool fold``, and the synthetic
   conv/BN/ReLU, MobileNet block, attention block and two-input models) x each runtime config
   inside the aimet-onnx wheel, records aimet's quantizer table (tests/fixtures/aimet/MODEL/CONFIG.json),
   and aimet's own exported encodings of the folded classifier (tests/fixtures/aimet/encodings/).
3. Compares: ``qtool info MODEL --config CONFIG --json`` (accepted or its one-line error; every key
   qtool refuses, found by removing the refused key and asking again; the plan qtool makes from what
   is left) against aimet's table; ``load_encodings_to_sim(strict=True)`` on what ``qtool calibrate``
   + ``qtool export`` write; SQNR both ways. Rewrites the generated part of docs/aimet_compat.md.
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
sys.path.insert(0, str(ROOT / "sample_models"))

import aimet_doc  # noqa: E402  (bench/aimet_doc.py)
import aimet_report  # noqa: E402  (bench/aimet_report.py)
import ocr_data  # noqa: E402  (sample_models/ocr_data.py, numpy-only)

AIMET_SPEC, TORCH_SPEC = "aimet-onnx==2.42.0", "torch==2.13.0"
VENV = ROOT / "build" / "aimet-venv"
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
}
EXPORT_CONFIGS = ("default_config.json", "htp_quantsim_config_v73.json")  # the two the issue checks
CALIB_SAMPLES, EVAL_SAMPLES = 16, 32
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
    return [{"name": name, "path": str(ROOT / path), "made_by": made_by} for name, (path, made_by) in MODELS.items()]


def prepare_data() -> tuple[Path, Path]:
    """The classifier's real calibration and evaluation lines (sample_models/data), as .npz keyed x."""
    paths = []
    for split, count in (("calib", 64), ("eval", EVAL_SAMPLES)):
        x, _labels = ocr_data.load_split("cls", split, limit=count)
        path = WORK / f"cls_{split}.npz"
        np.savez(path, x=x.astype(np.float32))
        paths.append(path)
    return paths[0], paths[1]


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
    if config.name in cache:
        first_error, refused, doc = copy.deepcopy(cache[config.name])
    else:
        first_error, refused, doc = qtool_info(model, config)[1], [], json.loads(config.read_text())
    stripped = tmp / config.name
    stripped.write_text(json.dumps(doc))
    info, error = qtool_info(model, stripped if refused else config)
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


def qtool_encodings(folded: Path, calib: Path, eval_: Path) -> dict:
    """qtool calibrate + export of the folded classifier (config default), in 1.0.0 and 2.0.0; and
    qtool's QDQ model made from aimet's own exported encodings (for the reverse SQNR)."""
    out = WORK / "qtool"
    sh(["qtool", "calibrate", folded, "--data", calib, "--config", "default", "-o", out / "cls"])
    files = {}
    for version in ("1.0.0", "2.0.0"):
        prefix = f"cls_{version.replace('.', '')}"
        sh(["qtool", "export", out / "cls.onnx", "-o", out / "export", "--prefix", prefix, "--encoding-version", version])
        files[version] = out / "export" / f"{prefix}.encodings"
    files["qdq"] = out / "export" / "cls_100_qdq.onnx"
    files["model"] = out / "export" / "cls_100.onnx"
    aimet_enc = WORK / "aimet_export" / f"{CLS}__default_config__1.0.0.encodings"
    rev = reverse(folded, aimet_enc, eval_, out / "qdq_from_aimet.onnx")
    files["reverse_error"] = rev
    if rev is not None and "names an initializer" in rev:
        # qtool wants initializers under param_encodings; aimet lists non-layer constants as activations.
        moved = out / "aimet_constants_as_params.encodings"
        inits = {i.name for i in onnx.load(str(folded)).graph.initializer}
        doc = json.loads(aimet_enc.read_text())
        doc["param_encodings"] += [e for e in doc["activation_encodings"] if e["name"] in inits]
        doc["activation_encodings"] = [e for e in doc["activation_encodings"] if e["name"] not in inits]
        moved.write_text(json.dumps(doc))
        files["reverse_workaround"] = "aimet's initializer entries moved from activation_encodings to param_encodings"
        files["reverse_workaround_error"] = rev = reverse(folded, moved, eval_, out / "qdq_from_aimet.onnx")
    files["qdq_from_aimet"] = out / "qdq_from_aimet.onnx" if rev is None else None
    return files


def reverse(folded: Path, encodings: Path, eval_: Path, qdq: Path) -> str | None:
    """qtool simulate from aimet's encodings, writing the QDQ model; qtool's error line or None."""
    result = sh(["qtool", "simulate", folded, "--encodings", encodings, "--data", eval_, "--samples", str(EVAL_SAMPLES),
                 "-o", qdq], check=False)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1].replace(f"{ROOT}/", "")


def write_fixtures(tables: Path, exports: Path, versions: dict) -> None:
    if FIXTURES.exists():
        for old in FIXTURES.glob("*/*.json"):
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
    (FIXTURES / "README.md").write_text(aimet_report.fixtures_readme(versions, MODELS, EXPORT_CONFIGS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-fixtures", action="store_true", help="do not rewrite tests/fixtures/aimet")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/aimet_compat.md")
    args = ap.parse_args()
    versions = ensure_venv()
    versions["qtool"] = sh(["qtool", "--version"]).stdout.strip().split()[-1]
    WORK.mkdir(parents=True, exist_ok=True)
    models = prepare_models()
    calib, eval_ = prepare_data()
    (WORK / "models.json").write_text(json.dumps(models))
    out = WORK / "child"
    shutil.rmtree(out, ignore_errors=True)
    child("--job", "tables", "--models", str(WORK / "models.json"), "--out", str(out))
    folded = ROOT / MODELS[CLS][0]
    child("--job", "export", "--model", str(folded), "--name", CLS, "--calib", str(calib), "--samples",
          str(CALIB_SAMPLES), "--out", str(WORK / "aimet_export"), "--configs", *EXPORT_CONFIGS)
    meta = json.loads((out / "meta.json").read_text())
    config_dir = Path(meta["config_dir"])
    qfiles = qtool_encodings(folded, calib, eval_)
    loads = {}
    for version in ("1.0.0", "2.0.0"):
        extra = ["--qtool-qdq", str(qfiles["qdq"])] if version == "1.0.0" else []
        if version == "1.0.0" and qfiles["qdq_from_aimet"]:
            extra += ["--aimet-model", str(folded), "--aimet-encodings", str(WORK / "aimet_export" / f"{CLS}__default_config__1.0.0.encodings"),
                      "--qtool-qdq-from-aimet", str(qfiles["qdq_from_aimet"])]
        target = WORK / f"load_{version}.json"
        child("--job", "load", "--model", str(qfiles["model"]), "--encodings", str(qfiles[version]), "--eval", str(eval_),
              "--samples", str(EVAL_SAMPLES), "--config", "default_config.json", "--out", str(target), *extra)
        loads[version] = json.loads(target.read_text())
    for key in ("reverse_error", "reverse_workaround", "reverse_workaround_error"):
        loads[key] = qfiles.get(key)
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
        probes = aimet_report.schema_probes(meta, config_dir, lambda cfg: qtool_info(Path(models[-1]["path"]), cfg)[1], Path(tmp))
    markdown, summary = aimet_doc.render_markdown(versions, meta, tables, comparisons, loads, probes, [m["name"] for m in models])
    print(summary)
    if not args.no_fixtures:
        write_fixtures(out / "tables", WORK / "aimet_export", versions)
    if not args.no_doc:
        aimet_doc.write_doc(DOC, markdown)
    (WORK / "results.json").write_text(json.dumps(
        {"versions": versions, "loads": loads, "probes": probes,
         "comparisons": {f"{m}/{c}": v for (m, c), v in comparisons.items()}}, sort_keys=True, indent=1, default=str))


if __name__ == "__main__":
    main()
