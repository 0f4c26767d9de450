"""PTQ transforms on a real model: fold / equalize / bias-correct vs plain W8A8, vs onnxruntime.

    python bench/bench_cle.py [--quick] [--calib N] [--eval M]

Why this benchmark: cross-layer equalization and bias correction exist for networks like
EfficientNet-Lite0 (depthwise convs, ReLU6, BatchNorm), where per-tensor weight quantization
collapses because channel ranges differ by orders of magnitude. This script answers "how much
of the per-channel accuracy do the transforms recover at per-tensor cost" on a real pretrained
model (``sample_models/fetch_efficientnet.py``) and real photographs
(``sample_models/imagenet_photos.py``: calibration crops seed 0, held-out crops seed 1).

Everything is measured in ONE run on the same calibration and held-out crops. The metric is
agreement with the ORIGINAL float model (no labels exist): top-1 agreement and SQNR (dB) of the
logits. Each quantized model is the QDQ model written by ``qtool simulate -o`` (or by
``quantize_static``), run here in onnxruntime with ``session.disable_quant_qdq=1``, so rows
whose float model was changed by a transform (equalize replaces ReLU6 by ReLU; bias-correct
changes biases) are still judged against the model the user started from. qtool's own
simulate numbers (against the pair's float model) are kept in the JSON as ``qtool_*``.

Commands missing from the installed qtool (``equalize``, ``bias-correct``) give a "not
available" row, a failing command a "failed" row with its last log line; the run goes on.
Outputs: the table, ``bench/out/cle_results.{json,md}``, work files and logs in build/bench/cle/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402  (run_child, make_session, sqnr_db, last_line)
from docs_page import write_page  # noqa: E402

ROOT = C.ROOT
MODEL = ROOT / "build" / "models" / "efficientnet_lite0.onnx"
WORK = ROOT / "build" / "bench" / "cle"
OUT = ROOT / "bench" / "out"
QTOOL = [sys.executable, "-m", "qtool"]
NA = "not available"


class Bench:
    """Holds the data, the float reference and the rows; one method per kind of row."""

    def __init__(self, calib: Path, eval_npz: Path, timeout: float) -> None:
        self.calib, self.eval_npz, self.timeout = calib, eval_npz, timeout
        with np.load(eval_npz) as d:
            self.x = d["input"]
        self.ref = self.run(MODEL)
        self.ref_top1 = self.ref.argmax(1)
        self.rows: list[dict] = []

    # ------------------------------------------------------------------ helpers
    def run(self, path: Path, simulate: bool = True) -> np.ndarray:
        sess = C.make_session(path, simulate)
        return np.concatenate([sess.run(None, {"input": self.x[i:i + C.BATCH]})[0]
                               for i in range(0, len(self.x), C.BATCH)])

    def score(self, path: Path, simulate: bool = True) -> dict:
        out = self.run(path, simulate)
        return {"agreement": float((out.argmax(1) == self.ref_top1).mean()),
                "sqnr_db": C.sqnr_db(self.ref, out)}

    def child(self, tag: str, cmd: list[str], row: dict) -> C.ChildResult | None:
        """Run one command (timed, logged); on failure mark the row and return None."""
        res = C.run_child([str(c) for c in cmd], timeout=self.timeout, log_dir=WORK / "logs", tag=tag)
        row.setdefault("commands", []).append(" ".join(str(c) for c in cmd))
        row.setdefault("seconds", {})[tag] = round(res.seconds, 2)
        if not res.ok:
            row["status"] = f"failed: {tag}: {res.failure}: {C.last_line(res.stderr or res.stdout)}"
            return None
        return res

    @staticmethod
    def help_text(name: str) -> str:
        """`qtool NAME --help`, or "" when the command does not exist (yet)."""
        res = subprocess.run(QTOOL + [name, "--help"], capture_output=True, text=True)
        return res.stdout if res.returncode == 0 else ""

    def add(self, row: dict) -> None:
        self.rows.append({"status": "ok", **row})
        print(f"  {row['method']}: " + (f"{row['agreement']:.1%} {row['sqnr_db']:.2f} dB" if
                                         "agreement" in row else self.rows[-1]["status"]), flush=True)

    # ------------------------------------------------------------------ rows
    def float_row(self, label: str, path: Path, prep_s: float = 0.0, notes: str = "") -> None:
        self.add({"method": label, "kind": "float", "model": str(path), "prep_s": prep_s,
                  "notes": notes, **self.score(path)})

    def transform(self, tag: str, cmd: list[str], out: Path) -> tuple[Path | None, float, dict]:
        """`qtool fold|equalize ... --json`; (output model or None, wall seconds, its summary)."""
        row: dict = {}
        res = self.child(tag, cmd + ["--json"], row)
        info = json.loads(res.stdout[res.stdout.find("{"):]) if res else {"status": row["status"]}
        return (out if res else None), row["seconds"][tag], info

    def qtool_row(self, label: str, model: Path, tag: str, opts: list[str],
                  prep_s: float = 0.0) -> tuple[Path | None, float]:
        """calibrate MODEL on the calib crops, simulate on the held-out crops; returns the
        encodings (for bias-correct; None on failure) and the calibrate seconds."""
        row = {"method": label, "kind": "qtool", "model": str(model), "prep_s": round(prep_s, 2)}
        prefix = WORK / tag / "pair"
        (WORK / tag).mkdir(parents=True, exist_ok=True)
        cal = self.child(f"{tag}.calibrate", QTOOL + ["calibrate", model, "--data", self.calib,
                                                        *opts, "-o", prefix, "--json"], row)
        if cal is None:
            self.add(row)
            return None, 0.0
        row["calibrate_s"] = row["seconds"][f"{tag}.calibrate"]
        self._simulate(row, tag, prefix.with_suffix(".onnx"), None)
        return prefix.with_suffix(".encodings.json"), row["calibrate_s"]

    def _simulate(self, row: dict, tag: str, model: Path, encodings: Path | None) -> None:
        qdq = WORK / tag / "sim_qdq.onnx"
        cmd = QTOOL + ["simulate", model, "--data", self.eval_npz, "-o", qdq, "--json"]
        if encodings is not None:
            cmd += ["--encodings", encodings]
        sim = self.child(f"{tag}.simulate", cmd, row)
        if sim is not None:
            own = json.loads(sim.stdout[sim.stdout.find("{"):])["outputs"]["logits"]
            row["qtool_agreement"], row["qtool_sqnr_db"] = own.get("top1_agreement"), own["sqnr_db"]
            row.update(self.score(qdq))
        self.add(row)

    def bias_correct_row(self, label: str, model: Path, calibrated: tuple[Path | None, float],
                         tag: str, prep_s: float) -> None:
        """`qtool bias-correct` on the pair calibrated for the row before (calibrate seconds =
        that calibrate + bias-correct), then simulate the corrected pair."""
        row = {"method": label, "kind": "qtool", "model": str(model), "prep_s": round(prep_s, 2)}
        encodings, calibrate_s = calibrated
        if encodings is None or not encodings.is_file():
            self.add({**row, "status": "failed: no encodings from the calibrate before"})
            return
        out = WORK / tag / "pair"
        (WORK / tag).mkdir(parents=True, exist_ok=True)
        res = self.child(f"{tag}.bias-correct", QTOOL + ["bias-correct", model, "--encodings",
                         encodings, "--data", self.calib, "-o", out], row)
        if res is None:
            self.add(row)
            return
        row["calibrate_s"] = round(calibrate_s + row["seconds"][f"{tag}.bias-correct"], 2)
        self._simulate(row, tag, out.with_suffix(".onnx"), out.with_suffix(".encodings.json"))

    def weights_only_row(self, label: str, calibrated: tuple[Path | None, float], tag: str) -> None:
        """The pair's weight quantizers alone (activation encodings dropped): the issue's reference
        point, per-channel weights with round-to-nearest and float activations."""
        import dataclasses

        import onnx_ir as ir

        from qtool.encodings.read import load_encodings
        from qtool.ir.qdq import build_qdq_model
        encodings = calibrated[0]
        row = {"method": label, "kind": "qtool"}
        if encodings is None or not encodings.is_file():
            self.add({**row, "status": "failed: no encodings from the calibrate before"})
            return
        model = encodings.with_name(encodings.name.replace(".encodings.json", ".onnx"))
        enc = load_encodings(encodings)
        qdq = WORK / tag / "weights_only_qdq.onnx"
        qdq.parent.mkdir(parents=True, exist_ok=True)
        ir.save(build_qdq_model(ir.load(model), dataclasses.replace(enc, activations={})), qdq)
        self.add({**row, "model": str(model), **self.score(qdq)})

    def ort_rows(self, label: str, model: Path, tag: str, per_channel: bool) -> None:
        """quantize_static (QDQ, MinMax, QInt8 weights, QUInt8 activations) via ort_quant.py,
        evaluated as QuantSim (disable_quant_qdq) and with onnxruntime's integer kernels."""
        row = {"method": label, "kind": "onnxruntime", "model": str(model)}
        qdq = WORK / tag / "ort_qdq.onnx"
        qdq.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, ROOT / "bench" / "ort_quant.py", model, "--data", self.calib,
               "--out", qdq, "--method", "minmax"] + (["--per-channel"] if per_channel else [])
        res = self.child(f"{tag}.quantize_static", cmd, row)
        if res is None:
            self.add(row)
            return
        row["ort_info"] = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
        row["calibrate_s"] = round(row["ort_info"].get("quantize_static_s", res.seconds), 2)
        self.add({**row, "method": label + ", QuantSim", **self.score(qdq, simulate=True)})
        self.add({**row, "method": label + ", int kernels", **self.score(qdq, simulate=False)})


def prepare(calib_n: int, eval_n: int) -> tuple[Path, Path]:
    """The model (exported if missing) and the two npz files (made once per size, then reused)."""
    if not MODEL.is_file():
        subprocess.run([sys.executable, ROOT / "sample_models" / "fetch_efficientnet.py"], check=True)
    photos = ROOT / "sample_models" / "imagenet_photos.py"
    files = []
    for name, n, seed in (("calib", calib_n, 0), ("eval", eval_n, 1)):
        path = WORK / f"{name}_{n}.npz"
        if not path.is_file():
            subprocess.run([sys.executable, photos, "--out", path, "--samples", str(n),
                            "--seed", str(seed)], check=True)
        files.append(path)
    return files[0], files[1]


def run_all(b: Bench) -> None:
    """qtool rows: as exported, folded, fold + bias-correct, fold + equalize (each ReLU6 mode)
    [+ bias-correct]; equalize and bias-correct rows only where the command exists."""
    pt, pc = ["--config", "default", "--scheme", "sqnr"], ["--config", "w8a8-per-channel", "--scheme", "sqnr"]
    b.float_row("float", MODEL)
    b.qtool_row("qtool W8A8 per-tensor", MODEL, "pt", pt)
    b.qtool_row("qtool W8A8 per-tensor, asymmetric weights", MODEL, "pt_asym", pt + ["--asymmetric-weights"])
    b.qtool_row("qtool W8A8 per-channel", MODEL, "pc", pc)
    folded, fold_s, info = b.transform("fold", QTOOL + ["fold", MODEL, "-o", WORK / "folded.onnx"],
                                       WORK / "folded.onnx")
    if folded is None:
        b.add({"method": "fold", "kind": "qtool", "status": info["status"]})
        return
    b.float_row("float, folded", folded, fold_s, f"{len(info.get('folded', []))} BN folded, "
                f"{len(info.get('skipped', []))} left")
    cal = b.qtool_row("qtool W8A8 per-tensor, folded", folded, "fold_pt", pt, fold_s)
    pc_cal = b.qtool_row("qtool W8A8 per-channel, folded", folded, "fold_pc", pc, fold_s)
    b.weights_only_row("qtool W8 per-channel weights only (float activations), folded: the target", pc_cal, "fold_pc")
    has_bc = bool(b.help_text("bias-correct"))
    bc = "qtool W8A8 per-tensor, fold + bias-correct"
    (b.bias_correct_row(bc, folded, cal, "fold_pt_bc", fold_s) if has_bc
     else b.add({"method": bc, "kind": "qtool", "status": NA}))
    eq_help = b.help_text("equalize")
    if not eq_help:
        b.add({"method": "qtool W8A8 per-tensor, fold + equalize", "kind": "qtool", "status": NA})
        return
    # ReLU6 handling: 'replace' by ReLU (AIMET), 'keep' (pairs joined by ReLU6 not scaled),
    # 'bound' (ReLU + per-channel Min at 6/s: exact); older qtool: replace / --keep-relu6.
    modes = ([("eq", "replace"), ("eqk", "keep"), ("eqb", "bound")] if "--relu6" in eq_help
             else [("eq", None), ("eqk", "--keep-relu6")])
    for tag, mode in modes:
        flags = [] if mode is None else [mode] if mode.startswith("--") else ["--relu6", mode]
        name = "fold + equalize" + (f" {' '.join(flags)}" if flags else "")
        out = WORK / f"{tag}.onnx"
        eq, eq_s, info = b.transform(tag, QTOOL + ["equalize", folded, *flags, "-o", out], out)
        if eq is None:
            b.add({"method": f"qtool W8A8 per-tensor, {name}", "kind": "qtool", "status": info["status"]})
            continue
        b.float_row(f"float, {name}", eq, fold_s + eq_s,
                    f"{info.get('pairs_scaled')} pairs scaled, {info.get('relu6_replaced')} ReLU6 "
                    f"replaced, {info.get('biases_absorbed')} biases absorbed, "
                    f"{len(info.get('skipped', []))} skipped")
        cal = b.qtool_row(f"qtool W8A8 per-tensor, {name}", eq, f"{tag}_pt", pt, fold_s + eq_s)
        if mode == "bound":
            b.qtool_row(f"qtool W8A8 per-channel, {name}", eq, f"{tag}_pc", pc, fold_s + eq_s)
        bc = f"qtool W8A8 per-tensor, {name} + bias-correct"
        (b.bias_correct_row(bc, eq, cal, f"{tag}_pt_bc", fold_s + eq_s) if has_bc
         else b.add({"method": bc, "kind": "qtool", "status": NA}))
    if "--aimet-scales" in eq_help:  # noise-aware scales: equalize --data
        name = "fold + equalize --relu6 bound --data (noise-aware)"
        out = WORK / "eqd.onnx"
        eq, eq_s, info = b.transform("eqd", QTOOL + ["equalize", folded, "--relu6", "bound", "--data", b.calib,
                                                     "-o", out], out)
        if eq is None:
            b.add({"method": f"qtool W8A8 per-tensor, {name}", "kind": "qtool", "status": info["status"]})
            return
        mse = ["--config", "default", "--scheme", "mse"]
        for tag, label, opts in (("eqd_pt", "", pt), ("eqd_pta", ", asymmetric weights", pt + ["--asymmetric-weights"]),
                                 ("eqd_ptm", ", mse ranges", mse),
                                 ("eqd_ptam", ", asymmetric weights, mse ranges", mse + ["--asymmetric-weights"])):
            cal = b.qtool_row(f"qtool W8A8 per-tensor{label}, {name}", eq, tag, opts, fold_s + eq_s)
            b.bias_correct_row(f"qtool W8A8 per-tensor{label}, {name} + bias-correct", eq, cal, f"{tag}_bc",
                               fold_s + eq_s)


def table(rows: list[dict]) -> str:
    lines = ["| method | top-1 agreement | SQNR dB | calibrate s | transform s | notes |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        agree, sq = (f"{r['agreement']:.1%}", f"{r['sqnr_db']:.2f}") if "agreement" in r else ("n/a",) * 2
        notes = [r["status"]] if r.get("status", "ok") != "ok" else []
        if r.get("qtool_sqnr_db") is not None:
            notes.append(f"qtool simulate vs its own float: {r['qtool_agreement']:.1%}, "
                         f"{r['qtool_sqnr_db']:.2f} dB")
        notes += [r["notes"]] if r.get("notes") else []
        cal = f"{r['calibrate_s']:.1f}" if "calibrate_s" in r else ""
        prep = f"{r['prep_s']:.1f}" if r.get("prep_s") else ""
        lines.append(f"| {r['method']} | {agree} | {sq} | {cal} | {prep} | {'; '.join(notes)} |")
    return "\n".join(lines)


def git_rev() -> str:
    return subprocess.run(["git", "describe", "--always", "--dirty", "--exclude", "*"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 calibration / 64 evaluation crops")
    ap.add_argument("--calib", type=int, help="calibration crops (default 128, quick 32)")
    ap.add_argument("--eval", type=int, help="held-out crops (default 256, quick 64)")
    ap.add_argument("--timeout", type=float, default=900, help="per command, seconds")
    args = ap.parse_args(argv)
    calib_n = args.calib or (32 if args.quick else 128)
    eval_n = args.eval or (64 if args.quick else 256)
    start = time.perf_counter()
    import onnxruntime
    import qtool
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "git": git_rev(), "quick": args.quick,
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "qtool": getattr(qtool, "__version__", "?"), "model": str(MODEL.relative_to(ROOT)),
            "calib_samples": calib_n, "eval_samples": eval_n, "loadavg_start": os.getloadavg()}
    WORK.mkdir(parents=True, exist_ok=True)
    calib, eval_npz = prepare(calib_n, eval_n)
    print(f"EfficientNet-Lite0: {calib_n} calibration crops, {eval_n} held-out crops", flush=True)
    b = Bench(calib, eval_npz, args.timeout)
    run_all(b)
    for model, sfx in ((MODEL, ""), (WORK / "folded.onnx", "fold_")):  # quantize_static rows
        for per_channel, gran in ((False, "per-tensor"), (True, "per-channel")):
            label = f"onnxruntime quantize_static {gran}" + (", folded" if sfx else "")
            if model.is_file():
                b.ort_rows(label, model, f"ort_{sfx}{'pc' if per_channel else 'pt'}", per_channel)
    meta["loadavg_end"], meta["git_end"] = os.getloadavg(), git_rev()  # qtool may move meanwhile
    meta["total_s"] = round(time.perf_counter() - start, 1)
    md = table(b.rows)
    header = (f"EfficientNet-Lite0 (ImageNet weights), W8A8, {calib_n} calibration / {eval_n} "
              f"held-out crops of scikit-image photographs; agreement and SQNR vs the original "
              f"float model; qtool at {meta['git']}, onnxruntime {meta['onnxruntime']}; "
              f"{meta['total_s']:.0f} s in all; load average {meta['loadavg_start'][0]:.1f} at "
              f"start, {meta['loadavg_end'][0]:.1f} at end.")
    print("\n" + header + "\n\n" + md)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [{k: ("inf" if isinstance(v, float) and np.isinf(v) else v) for k, v in r.items()}
            for r in b.rows]  # strict JSON has no Infinity
    (OUT / "cle_results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (OUT / "cle_results.md").write_text(header + "\n\n" + md + "\n")
    if not (args.quick or args.calib or args.eval):  # a full run: the numbers docs/ shows
        page = write_page("cle", "PTQ transforms on EfficientNet-Lite0: fold, CLE, bias correction", "bench_cle.py",
                          "bench-cle", header + "\n\n" + md)
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
