"""Zoo benchmark: qtool's shipped recipes against quantize_static on real models it never saw.

    python bench/bench_zoo.py [--quick] [--models vit,layout,...] [--analyze] [--baseline OLD.json]

For every model of bench/zoo_models.py (ViT-S, PicoDet layout, CRNN captcha, PP-OCRv4 det and
rec, a YOLO-style head, a BERT-class sentence encoder, EfficientNet-Lite0 when exported) and in
ONE run, on the same calibration and held-out samples:

* float: the model as shipped, onnxruntime, on the held-out samples (the reference);
* qtool: ``qtool run recipes/w8a8-per-channel.yaml`` and ``recipes/w8a8-per-tensor.yaml`` with
  ``--set model=... --set data.calibration=... --set data.evaluation=...`` (labels and the
  ``expect:`` gate unset): wall seconds and peak RSS of the whole recipe, qtool's own
  worst-channel SQNR from its simulate step, and the metric of the QDQ model that simulate
  wrote, run here with ``session.disable_quant_qdq=1``;
* onnxruntime: ``quantize_static`` (bench/ort_quant.py: QDQ, QInt8 weights, QUInt8 activations,
  MinMax) per-channel after ``quant_pre_process`` and per-tensor on the model as shipped (the
  primary rows of bench_ptq.py), scored the same way.

A failing command is a row ("error: ...", its traceback kept in the JSON), never the end of
the run. Outputs: the table on stdout, bench/out/zoo_results.json, and docs/benchmarks.md (full
runs of every model; ``--quick`` or ``--models`` write bench/out/zoo_results.md instead unless
``--doc`` says where). Work files and logs: build/bench/zoo/<model>/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import runs  # noqa: E402
import zoo_models as Z  # noqa: E402
import zoo_report  # noqa: E402

RECIPES = {"per-channel": C.ROOT / "recipes" / "w8a8-per-channel.yaml",
           "per-tensor": C.ROOT / "recipes" / "w8a8-per-tensor.yaml"}
SIZES = {"text": (128, 200), "layout": (48, 64), "det": (48, 64)}  # (calibration, held-out); others 64, 100
QUICK = {"text": (16, 32)}  # others 8, 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 calibration / 16 held-out samples (text 16 / 32)")
    ap.add_argument("--models", default="", help=f"comma list of {', '.join(s.key for s in Z.SPECS)} (default all)")
    ap.add_argument("--calib", type=int, help="calibration samples for every model")
    ap.add_argument("--eval", type=int, help="held-out samples for every model")
    ap.add_argument("--skip-ort", action="store_true", help="no quantize_static rows")
    ap.add_argument("--analyze", action="store_true", help="also `qtool analyze` the per-channel pair")
    ap.add_argument("--baseline", type=Path, help="an earlier zoo_results.json: its headline column is shown too")
    ap.add_argument("--timeout", type=float, default=2400, help="seconds per child process")
    ap.add_argument("--analyze-timeout", type=float, default=900, help="seconds for each `qtool analyze`")
    ap.add_argument("--rss-cap-mb", type=float, default=20000, help="kill a child above this RSS (MiB)")
    ap.add_argument("--doc", type=Path, help="where the markdown goes (default: see above)")
    ap.add_argument("--out", type=Path, default=C.ROOT / "bench" / "out")
    ap.add_argument("--work", type=Path, default=C.ROOT / "build" / "bench" / "zoo")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()] or [s.key for s in Z.SPECS]
    unknown = sorted(set(keys) - {s.key for s in Z.SPECS})
    if unknown:
        ap.error(f"unknown model(s) {unknown}")
    args.specs = [s for s in Z.SPECS if s.key in keys]
    full = not args.quick and not args.models and args.calib is None and args.eval is None
    args.doc = args.doc or (C.ROOT / "docs" / "benchmarks.md" if full else args.out / "zoo_results.md")
    return args


def sizes(spec: Z.Spec, args) -> tuple[int, int]:
    cal, ev = (QUICK.get(spec.key, (8, 16)) if args.quick else SIZES.get(spec.key, (64, 100)))
    return args.calib or cal, args.eval or ev


def evaluate(path: Path, feeds: list[dict], simulate: bool) -> tuple[list[list], float]:
    """Every output of `path` on every feed; seconds including session creation."""
    start = time.perf_counter()
    sess = C.make_session(path, simulate)
    return [sess.run(None, feed) for feed in feeds], time.perf_counter() - start


def _child(spec: Z.Spec, cmd: list[str], tag: str, args, timeout: float | None = None) -> C.ChildResult:
    res = C.run_child([str(c) for c in cmd], timeout=timeout or args.timeout, rss_cap_mb=args.rss_cap_mb,
                      log_dir=args.work / spec.key / "logs", tag=tag)
    state = "ok" if res.ok else f"FAILED ({res.failure}): {C.last_line(res.stderr)}"
    print(f"    {tag}: {res.seconds:.1f} s, peak RSS {res.peak_rss_mb:.0f} MiB, {state}", flush=True)
    return res


def _failed(row: dict, res: C.ChildResult, what: str) -> dict:
    """Mark `row` failed with the command's last error line and its traceback (last 40 lines)."""
    text = res.stderr.strip() or res.stdout.strip()
    row.update(status=f"error: {what}: {C.last_line(text, 200) or res.failure}",
               traceback="\n".join(text.splitlines()[-40:]), failure=res.failure)
    return row


def _score(spec: Z.Spec, row: dict, qdq: Path, data: Z.Data, ref: list) -> dict:
    try:
        outs, secs = evaluate(qdq, data.feeds, simulate=True)
        row.update(spec.score(ref, outs, data), eval_s=round(secs, 2))
    except Exception as exc:  # noqa: BLE001 -- a model onnxruntime refuses is a row, not a crash
        row.update(status=f"error: evaluate: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return row


def quantize_seconds(out: Path, steps: list[dict]) -> float:
    """Seconds of the recipe's steps but simulate and export: from the run's timings.json (where
    `qtool run` keeps step times), else from the --json steps (older qtool)."""
    timings = out / "timings.json"
    if timings.is_file():
        steps = json.loads(timings.read_text()).get("steps", steps)
    return round(sum(s.get("seconds") or 0 for s in steps if s["step"] not in ("simulate", "export")), 1)


def qtool_row(spec: Z.Spec, recipe: str, model: Path, data: Z.Data, ref: list, args) -> dict:
    """`qtool run RECIPE --set ...` (timed), then the simulate step's QDQ model scored here."""
    out = args.work / spec.key / f"qtool_{recipe}"
    sets = {"model": model, "output": out, "data.calibration": data.calib, "data.evaluation": data.eval,
            "data.labels": "null", "expect": "null"}
    if spec.qtool_batch:
        sets["data.batch_size"] = spec.qtool_batch
    cmd = [*runs.qtool_cmd(), "run", str(RECIPES[recipe]), "--force", "--json"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    row = {"model": spec.key, "method": f"qtool {recipe} recipe", "tool": "qtool", "status": "ok",
           "cmd": shlex.join(str(c) for c in cmd)}
    res = _child(spec, cmd, f"qtool_{recipe}", args)
    row.update(seconds=round(res.seconds, 1), peak_rss_mb=round(res.peak_rss_mb))
    summary = runs._json(res.stdout) if res.stdout.strip() else {}
    steps = summary.get("steps", [])
    row["steps_s"] = {s["step"]: s.get("seconds") for s in steps}
    row["quant_s"] = quantize_seconds(out, steps)
    metrics = summary.get("metrics") or {}
    row["qtool_outputs"] = metrics
    worst = [(m["worst_channel_sqnr_db"], name, m.get("worst_channels")) for name, m in metrics.items()
             if m.get("worst_channel_sqnr_db") is not None]
    if worst:
        value, name, where = min(worst, key=lambda w: w[0])
        row.update(worst_channel_sqnr_db=value, worst_channel_output=name, worst_channels=where)
    pooled = [m["sqnr_db"] for m in metrics.values() if m.get("sqnr_db") is not None]
    if pooled:
        row["qtool_sqnr_db"] = min(pooled)
    if not res.ok:
        return _failed(row, res, "qtool run")
    qdq = sorted(out.glob("*-simulate/*_qdq.onnx"))
    if not qdq:
        row["status"] = "error: the recipe wrote no simulate QDQ model"
        return row
    return _score(spec, row, qdq[-1], data, ref)


def ort_row(spec: Z.Spec, per_channel: bool, model: Path, data: Z.Data, ref: list, args) -> dict:
    gran = "per-channel" if per_channel else "per-tensor"
    out = args.work / spec.key / f"ort_{gran}" / "qdq.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, C.ROOT / "bench" / "ort_quant.py", model, "--data", data.calib, "--out", out,
           "--method", "minmax", "--batch", str(spec.batch)] + (["--per-channel", "--preprocess"] if per_channel else [])
    row = {"model": spec.key, "method": f"quantize_static {gran}" + (" +pre" if per_channel else ""),
           "tool": "ort", "status": "ok", "cmd": shlex.join(str(c) for c in cmd)}
    res = _child(spec, cmd, f"ort_{gran}", args)
    row.update(seconds=round(res.seconds, 1), peak_rss_mb=round(res.peak_rss_mb))
    if not res.ok:
        return _failed(row, res, "quantize_static")
    info = runs._json(res.stdout)
    row.update(quant_s=round(info.get("quantize_static_s", res.seconds), 1), ort_info=info)
    return _score(spec, row, out, data, ref)


def analyze_row(spec: Z.Spec, data: Z.Data, args) -> dict:
    """`qtool analyze` on the per-channel recipe's calibrated pair: what it blames."""
    pair = sorted((args.work / spec.key / "qtool_per-channel").glob("*-calibrate/*.encodings.json"))
    row = {"model": spec.key, "method": "qtool analyze (per-channel pair)", "tool": "analyze", "status": "ok"}
    if not pair:
        row["status"] = "error: no calibrated per-channel pair to analyze"
        return row
    model = pair[-1].with_name(pair[-1].name.replace(".encodings.json", ".onnx"))
    report = args.work / spec.key / "analyze"
    cmd = [*runs.qtool_cmd(), "analyze", model, "--encodings", pair[-1], "--data", data.calib, "--eval-data",
           data.eval, "--samples", "16", "--eval-samples", "16", "--max-suggestions", "5", "-o", report, "--json"]
    if spec.qtool_batch:
        cmd += ["--batch-size", str(spec.qtool_batch)]
    row["cmd"] = shlex.join(str(c) for c in cmd)
    res = _child(spec, cmd, "analyze", args, timeout=args.analyze_timeout)
    row.update(seconds=round(res.seconds, 1), peak_rss_mb=round(res.peak_rss_mb))
    if not res.ok:
        return _failed(row, res, "qtool analyze")
    row["analyze"] = runs._json(res.stdout)
    return row


def bench_model(spec: Z.Spec, args, rows: list[dict], save) -> None:
    n_cal, n_eval = sizes(spec, args)
    print(f"[{spec.key}] {spec.title}: {n_cal} calibration / {n_eval} held-out samples", flush=True)
    try:
        model = spec.model()
        if not model.is_file():
            rows.append({"model": spec.key, "method": "float", "tool": "float",
                         "status": f"skipped: {model.relative_to(C.ROOT)} is missing"})
            return
        data = spec.data(args.work / spec.key, n_cal, n_eval)
        ref, secs = evaluate(model, data.feeds, simulate=False)
    except Exception as exc:  # noqa: BLE001
        rows.append({"model": spec.key, "method": "float", "tool": "float",
                     "status": f"error: setup: {type(exc).__name__}: {str(exc)[:200]}"})
        return
    float_row = {"model": spec.key, "method": "float", "tool": "float", "status": "ok", "eval_s": round(secs, 2),
                 "samples": [n_cal, n_eval], "source": spec.source, **spec.score(ref, ref, data)}
    float_row.update({k: v for k, v in data.extra.items() if k == "lengths"})
    rows.append(float_row)
    save()
    for recipe in RECIPES:
        rows.append(qtool_row(spec, recipe, model, data, ref, args))
        save()
    if not args.skip_ort:
        for per_channel in (True, False):
            rows.append(ort_row(spec, per_channel, model, data, ref, args))
            save()
    if args.analyze:
        rows.append(analyze_row(spec, data, args))
        save()


def meta(args, argv: list[str] | None) -> dict:
    import numpy
    import onnx
    import onnxruntime

    git = subprocess.run(["git", "describe", "--always", "--dirty", "--exclude", "*"], cwd=C.ROOT,
                         capture_output=True, text=True, check=False).stdout.strip()
    command = "python bench/bench_zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # the qtool that the children import (PYTHONPATH may point at another checkout, e.g. a "before" run)
    where = subprocess.run([sys.executable, "-c", "import qtool; print(qtool.__file__)"], capture_output=True,
                           text=True, check=False, cwd="/").stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "git": git or "?", "command": command.strip(),
            "qtool_module": where,
            "python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": numpy.__version__,
            "sizes": {s.key: sizes(s, args) for s in args.specs}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": meta(args, argv), "rows": []}
    start = time.perf_counter()

    def save() -> None:
        results["meta"]["elapsed_s"] = round(time.perf_counter() - start, 1)
        results["meta"]["loadavg_end"] = os.getloadavg()
        (args.out / "zoo_results.json").write_text(json.dumps(results, indent=2, default=str))

    for spec in args.specs:
        bench_model(spec, args, results["rows"], save)
        save()
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    text = zoo_report.markdown(results, baseline)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    old = args.doc.read_text() if args.doc.exists() else ""
    for script in ("bench_speed.py", "bench_deploy.py"):  # their generated sections stay
        begin, end = f"<!-- {script}: begin", f"<!-- {script}: end -->"
        if begin in old and end in old:
            text = text.rstrip() + "\n\n" + old[old.index(begin):old.index(end) + len(end)] + "\n"
    args.doc.write_text(text)
    print()
    print(zoo_report.table(results, baseline))
    print(f"wrote {args.out / 'zoo_results.json'} and {args.doc} ({results['meta']['elapsed_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
