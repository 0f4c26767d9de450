"""AdaRound (adaptive weight rounding) vs round-to-nearest for 4-bit weights on two real models.

    python bench/bench_adaround.py [--quick] [--skip-default] [--models rec,effnet]

Why this benchmark: at 4 bits per weight, rounding each weight to the nearest grid point is
no longer good enough; AdaRound (``qtool adaround``, white paper 4.6) learns up/down rounding
per weight, layer by layer, from calibration data. This script answers "how much accuracy does
AdaRound buy back at W4A8, and what does it cost in time" on the PP-OCRv4 recogniser
(character accuracy of CTC greedy decoding on the 200 'eval' lines of ``sample_models/
ocr_data.py``) and on EfficientNet-Lite0 (top-1 agreement with the float model on 256
held-out photo crops, ``sample_models/imagenet_photos.py`` seed 1). Both also report the SQNR
(dB) of the model output against the float model's.

Everything is measured in ONE run, on the same calibration set for every method, scored on
held-out samples never used for calibration. Rec calibration: 256 lines = the 200 'calib'
lines plus the first 56 of them shifted right by 7 pixels; EfficientNet: 256 crops, seed 0.
Every model is BN-folded first (``qtool fold``, exact), then for each row:
  * W4A8 nearest: ``qtool calibrate FOLDED --config w4a8 --param-bw 4 --act-bw 8``;
  * W4A8 AdaRound --fast (2000 iterations, 2048 rows per layer) and default (10000, 4096;
    ``--skip-default`` leaves it out): ``qtool adaround FOLDED --config w4a8 ...``;
then ``qtool simulate PAIR --encodings ENC -o QDQ`` (on a few held-out samples: only the QDQ
model is wanted) and the QDQ model is run here over all held-out samples in onnxruntime with
``session.disable_quant_qdq=1`` and basic optimisations (``common.make_session``).
"seconds" is the wall time of the calibrate/adaround process; for AdaRound the JSON also
keeps qtool's own adaround-step seconds and the sum of its per-layer seconds.

``--quick`` is a smoke test only: 32 calibration / 32 held-out samples, ``--iterations 50
--rows 256`` for both AdaRound rows; outputs go to build/bench/adaround_quick/ and
bench/out/adaround_results_quick.{json,md}. Full run: work files and logs in
build/bench/adaround/, results in bench/out/adaround_results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402  (run_child, make_session, sqnr_db, score, ocr_data)
from docs_page import write_page  # noqa: E402

ROOT = C.ROOT
REC_MODEL = C.REC_MODEL
EFF_MODEL = ROOT / "build" / "models" / "efficientnet_lite0.onnx"
OUT = ROOT / "bench" / "out"
QTOOL = [sys.executable, "-m", "qtool"]
W4A8 = ["--config", "w4a8", "--param-bw", "4", "--act-bw", "8", "--per-channel"]
SIM_SAMPLES = 16  # qtool simulate only has to write the QDQ model; scoring is done here


class Bench:
    """One model: its data, float reference and rows; one method per kind of row."""

    def __init__(self, name: str, model: Path, calib: Path, heldout: Path, targets, work: Path,
                 timeout: float, quick: bool) -> None:
        self.name, self.model, self.calib, self.heldout = name, model, calib, heldout
        self.targets, self.work, self.timeout, self.quick = targets, work, timeout, quick
        self.chars = C.ocr_data.load_characters(model) if name == "rec" else None
        with np.load(heldout) as d:
            self.key = d.files[0]
            self.x = d[self.key]
        self.ref = self.run(model)
        self.ref_top1 = self.ref.argmax(-1)
        self.ref_preds = C.ocr_data.ctc_greedy_decode(self.ref, self.chars) if self.chars else None
        self.rows: list[dict] = []
        self.fold: dict = {}

    def run(self, path: Path) -> np.ndarray:
        sess = C.make_session(path, simulate=True)
        return np.concatenate([sess.run(None, {self.key: self.x[i:i + C.BATCH]})[0]
                               for i in range(0, len(self.x), C.BATCH)])

    def score(self, path: Path) -> dict:
        """metric (%): rec character accuracy (raw, strip=False), effnet top-1 agreement."""
        out = self.run(path)
        res = {"sqnr_db": C.sqnr_db(self.ref, out)}
        if self.name == "rec":
            s = C.score("rec", out, self.targets, self.chars)
            res.update(metric=100 * s["acc"], acc_strip=100 * s["acc_strip"],
                       line_agreement=100 * C.agreement(s["preds"], self.ref_preds))
        else:
            res["metric"] = 100 * float((out.argmax(-1) == self.ref_top1).mean())
        return res

    def child(self, tag: str, cmd: list, row: dict) -> C.ChildResult | None:
        """Run one command (timed, logged); on failure mark the row and return None."""
        cmd = [str(c) for c in cmd]
        res = C.run_child(cmd, timeout=self.timeout, log_dir=self.work / "logs", tag=tag)
        row.setdefault("commands", []).append(" ".join(cmd))
        row.setdefault("wall_s", {})[tag] = round(res.seconds, 2)
        row.setdefault("peak_rss_mb", {})[tag] = round(res.peak_rss_mb, 1)
        if not res.ok:
            row["status"] = f"failed: {tag}: {res.failure}: {C.last_line(res.stderr or res.stdout)}"
            return None
        return res

    def add(self, row: dict) -> None:
        row = {"status": "ok", **row}
        self.rows.append(row)
        print(f"  {self.name} {row['method']}: " + (f"{row['metric']:.2f}% {row['sqnr_db']:.2f} dB"
              if "metric" in row else row["status"]), flush=True)

    # ------------------------------------------------------------------ rows
    def float_row(self) -> None:
        self.add({"method": "float", "model": str(self.model), **self.score(self.model)})

    def fold_model(self) -> Path | None:
        out = self.work / "folded.onnx"
        res = self.child("fold", QTOOL + ["fold", self.model, "-o", out, "--json"], self.fold)
        if res is None:
            return None
        info = parse_json(res.stdout) or {}
        self.fold.update(folded=len(info.get("folded", [])), skipped=len(info.get("skipped", [])),
                         sqnr_db_vs_float=C.sqnr_db(self.ref, self.run(out)))
        return out

    def quant_row(self, method: str, tag: str, folded: Path, adaround: list[str] | None) -> None:
        """calibrate (adaround=None) or adaround FOLDED with W4A8, then simulate and score."""
        row: dict = {"method": method, "model": str(folded)}
        prefix = self.work / tag
        if adaround is None:
            cmd = QTOOL + ["calibrate", folded, "--data", self.calib, *W4A8, "-o", prefix, "--json"]
        else:
            cmd = QTOOL + ["adaround", folded, "--data", self.calib, *W4A8, *adaround, "-o", prefix, "--json"]
            if self.quick:
                cmd += ["--iterations", "50", "--rows", "256"]
        res = self.child(tag, cmd, row)
        if res is None:
            return self.add(row)
        row["seconds"] = row["wall_s"][tag]
        info = parse_json(res.stdout)
        if adaround is not None:
            if info is not None:
                layers = info.get("layers", [])
                row.update(adaround_s=info.get("seconds"), layers=len(layers),
                           layers_s=round(sum(r.get("seconds", 0.0) for r in layers), 2),
                           skipped=len(info.get("skipped", [])),
                           flipped_mean=float(np.mean([r["flipped"] for r in layers])) if layers and
                           "flipped" in layers[0] else None)
            else:  # no --json: "adarounded N layers in S s (...)"
                m = re.search(r"adarounded (\d+) layers in ([\d.]+)\s*s", res.stdout)
                if m:
                    row.update(layers=int(m.group(1)), adaround_s=float(m.group(2)))
        elif info is not None:
            row["calibrate_s"] = info.get("seconds")
        qdq = self.work / f"{tag}_qdq.onnx"
        sim = self.child(f"{tag}.simulate", QTOOL + [
            "simulate", prefix.with_suffix(".onnx"), "--encodings", prefix.with_suffix(".encodings.json"),
            "--data", self.heldout, "--samples", SIM_SAMPLES, "--reference", folded, "-o", qdq, "--json"], row)
        if sim is None:
            return self.add(row)
        own = (parse_json(sim.stdout) or {}).get("outputs", {})
        if own:
            # qtool's own number, on SIM_SAMPLES, vs the folded float model (not the adarounded one)
            row["qtool_sqnr_db"] = next(iter(own.values())).get("sqnr_db")
        self.add({**row, **self.score(qdq)})


def parse_json(stdout: str) -> dict | None:
    try:
        return json.loads(stdout[stdout.index("{"):])
    except ValueError:
        return None


# ----------------------------------------------------------------------------- data
def prepare_rec(work: Path, n_calib: int, n_eval: int):
    """(model, calib npz, held-out npz, targets); fetches the model like bench_ptq.py."""
    if not REC_MODEL.is_file():
        subprocess.run([sys.executable, str(ROOT / "sample_models" / "fetch_ppocr.py")], check=True)
    key = C.ocr_data.input_name(REC_MODEL)
    x, _ = C.ocr_data.load_split("rec", "calib")
    calib = np.concatenate([x, np.roll(x[:56], 7, axis=-1)])  # 200 + 56 shifted right by 7 px
    calib_path = work / f"rec_calib{n_calib}.npz"
    np.savez(calib_path, **{key: calib[:n_calib]})
    xe, targets = C.ocr_data.load_split("rec", "eval", limit=n_eval)
    eval_path = work / f"rec_eval{n_eval}.npz"
    np.savez(eval_path, **{key: xe})
    return REC_MODEL, calib_path, eval_path, targets


def prepare_effnet(work: Path, n_calib: int, n_eval: int):
    """(model, calib npz, held-out npz, None), or None when the model cannot be made."""
    if not EFF_MODEL.is_file():
        try:
            subprocess.run([sys.executable, str(ROOT / "sample_models" / "fetch_efficientnet.py")],
                           check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"SKIPPING effnet: {EFF_MODEL} is missing and fetch_efficientnet.py failed ({exc})")
            return None
    photos = ROOT / "sample_models" / "imagenet_photos.py"
    files = []
    for name, n, seed in (("calib", n_calib, 0), ("eval", n_eval, 1)):
        path = work / f"effnet_{name}{n}_seed{seed}.npz"
        if not path.is_file():
            subprocess.run([sys.executable, str(photos), "--out", str(path), "--samples", str(n),
                            "--seed", str(seed)], check=True)
        files.append(path)
    return EFF_MODEL, files[0], files[1], None


# ----------------------------------------------------------------------------- report
def table(b: Bench) -> str:
    metric = "char accuracy %" if b.name == "rec" else "top-1 agreement %"
    lines = [f"| method | {metric} | SQNR dB | seconds |", "| --- | ---: | ---: | --- |"]
    for r in b.rows:
        if "metric" not in r:
            lines.append(f"| {r['method']} | n/a | n/a | {r['status']} |")
            continue
        secs = f"{r['seconds']:.1f}" if "seconds" in r else ""
        if r.get("adaround_s") is not None:
            secs += f" (adaround step {r['adaround_s']:.1f}"
            secs += f", {r['layers']} layers sum {r['layers_s']:.1f})" if "layers_s" in r else ")"
        lines.append(f"| {r['method']} | {r['metric']:.2f} | {r['sqnr_db']:.2f} | {secs} |")
    return "\n".join(lines)


def jsonable(v):
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def git_rev() -> str:
    return subprocess.run(["git", "describe", "--always", "--dirty", "--exclude", "*"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="rec,effnet", help="comma-separated: rec, effnet")
    ap.add_argument("--skip-default", action="store_true", help="leave out AdaRound with default settings")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 32/32 samples, --iterations 50 --rows 256")
    ap.add_argument("--timeout", type=float, default=7200, help="per command, seconds")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if set(models) - {"rec", "effnet"}:
        ap.error(f"--models: unknown {sorted(set(models) - {'rec', 'effnet'})}")
    n_calib, n_eval_rec, n_eval_eff = (32, 32, 32) if args.quick else (256, 200, 256)
    work = ROOT / "build" / "bench" / ("adaround_quick" if args.quick else "adaround")
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    import onnxruntime
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "git": git_rev(), "quick": args.quick,
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "calib_samples": n_calib, "skip_default": args.skip_default,
            "loadavg_start": os.getloadavg()}
    rows = [("W4A8 round-to-nearest", "nearest", None), ("W4A8 AdaRound --fast", "ada_fast", ["--fast"])]
    if not args.skip_default:
        rows.append(("W4A8 AdaRound default", "ada_default", []))
    results, sections = {}, []
    for name in models:
        data = (prepare_rec(work, n_calib, n_eval_rec) if name == "rec"
                else prepare_effnet(work, n_calib, n_eval_eff))
        if data is None:
            results[name] = {"status": "skipped: model missing and not creatable"}
            continue
        model, calib, heldout, targets = data
        (work / name).mkdir(exist_ok=True)
        b = Bench(name, model, calib, heldout, targets, work / name, args.timeout, args.quick)
        print(f"{name}: {model.name}, {n_calib} calibration / {len(b.x)} held-out samples", flush=True)
        b.float_row()
        folded = b.fold_model()
        for method, tag, extra in rows:
            if folded is None:
                b.add({"method": method, "status": b.fold.get("status", "fold failed")})
            else:
                b.quant_row(method, tag, folded, extra)
        fold = (f"fold: {b.fold.get('folded')} folded, {b.fold.get('skipped')} left, "
                f"{b.fold['wall_s']['fold']:.1f} s, folded vs float {b.fold['sqnr_db_vs_float']:.1f} dB"
                if "sqnr_db_vs_float" in b.fold else b.fold.get("status", ""))
        title = (f"### {'PP-OCRv4 recogniser' if name == 'rec' else 'EfficientNet-Lite0'}: "
                 f"{n_calib} calibration / {len(b.x)} held-out samples; {fold}")
        sections.append(title + "\n\n" + table(b))
        results[name] = {"model": str(model.relative_to(ROOT)), "calib": str(calib), "heldout": str(heldout),
                         "fold": b.fold, "rows": b.rows}
    meta["loadavg_end"], meta["git_end"] = os.getloadavg(), git_rev()
    meta["total_s"] = round(time.perf_counter() - start, 1)
    quick = "; QUICK smoke test: 50 iterations, 256 rows for both AdaRound rows" if args.quick else ""
    header = (f"AdaRound vs round-to-nearest, W4A8 (int4 per-channel weights, 8-bit activations), "
              f"BN folded first{quick}; "
              f"qtool at {meta['git']}, onnxruntime {meta['onnxruntime']}; {meta['total_s']:.0f} s in all; "
              f"load average {meta['loadavg_start'][0]:.1f} at start, {meta['loadavg_end'][0]:.1f} at end. "
              f"seconds: wall of calibrate/adaround (adaround's own step and the sum of its layers).")
    md = header + "\n\n" + "\n\n".join(sections) + "\n"
    print("\n" + md)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "adaround_results_quick" if args.quick else "adaround_results"
    (OUT / f"{stem}.json").write_text(json.dumps(jsonable({"meta": meta, "models": results}), indent=2) + "\n")
    (OUT / f"{stem}.md").write_text(md)
    if not args.quick:  # a full run: the numbers docs/ shows
        print(f"wrote {write_page('adaround', 'AdaRound vs round-to-nearest at W4A8', 'bench_adaround.py', 'bench-adaround', md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
