"""PTQ benchmark: qtool against onnxruntime.quantization on real PP-OCR models, in one run.

    python bench/bench_ptq.py [--samples N] [--eval-samples M] [--quick] [--skip cls,mem,hist]

On the PP-OCRv4 recogniser (character accuracy, CTC greedy decoding) it measures, with the
same calibration samples (rec calib split) and the same held-out samples (rec eval split):

1. float: one onnxruntime pass over the calibration samples (time, peak RSS) and accuracy;
2. qtool calibrate --scheme minmax|sqnr, --config default (per-tensor W8A8) and
   w8a8-per-channel: time, peak RSS; accuracy of `qtool simulate -o` QDQ models run with
   session.disable_quant_qdq=1 (QuantSim) and of `qtool export` NAME_qdq.onnx on integer kernels;
3. onnxruntime quantize_static (QDQ, QInt8 weights / QUInt8 activations) with MinMax, Entropy,
   Percentile, per-tensor and per-channel (see bench/README.md for opset and pre-processing);
4. ratios: qtool calibration time against the float pass and against quantize_static, and
   accuracy differences against float and against quantize_static;
5. memory scaling: peak RSS of qtool calibrate --scheme minmax streaming 100 vs 1000 samples;
6. the small text-direction classifier (orientation accuracy): float, qtool sqnr, ORT MinMax.

Writes bench/out/results.json and bench/out/results.md and prints the table; a full run (not
--quick) also rewrites docs/bench_ptq.md. Work files go
to build/bench/. --quick: 64 calibration / 100 evaluation samples (rec and cls), no extra rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
from docs_page import write_page  # noqa: E402
import report  # noqa: E402
import runs  # noqa: E402

SPLIT_SIZE = {"rec": 200, "cls": 300}  # samples per split in sample_models/data/ocr_lines.npz


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, help="calibration samples (default: the whole calib split, "
                    "200 for rec; --quick: 64)")
    ap.add_argument("--eval-samples", type=int, help="evaluation samples (default 200; --quick: 100)")
    ap.add_argument("--quick", action="store_true", help="fewer samples: a few minutes in all")
    ap.add_argument("--mem-samples", default=None, help="memory run sample counts 'SMALL,LARGE' "
                    "(default 100,1000)")
    ap.add_argument("--skip", default="", help="comma list of: cls, mem, hist (ORT Entropy/Percentile), "
                    "extra (ORT MinMax +/- pre-processing cross rows), export")
    ap.add_argument("--ort-timeout", type=float, help="seconds per quantize_static run (default 600, quick 240)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the float pass and of every minmax "
                    "calibration (qtool and ORT); the fastest is reported (default 3)")
    ap.add_argument("--rss-cap-mb", type=float, default=18000, help="kill a child above this RSS (MiB)")
    ap.add_argument("--out", type=Path, default=C.ROOT / "bench" / "out")
    ap.add_argument("--work", type=Path, default=C.ROOT / "build" / "bench")
    args = ap.parse_args(argv)
    args.out, args.work = args.out.resolve(), args.work.resolve()
    args.samples_given = args.samples
    args.samples = args.samples or (64 if args.quick else SPLIT_SIZE["rec"])
    args.eval_samples = args.eval_samples or (100 if args.quick else SPLIT_SIZE["rec"])
    mem = args.mem_samples or "100,1000"
    args.mem = tuple(int(v) for v in mem.split(","))
    args.ort_timeout = args.ort_timeout or (240 if args.quick else 600)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def guarded(fn, *args, label: dict, **kwargs) -> dict:
    """fn(*args, **kwargs), or a failed row (`label` + the error) if the benchmark code itself
    raises: one broken measurement must not lose the others."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- recorded in the row and printed
        print(f"    bench error in {label.get('method', fn.__name__)}: {type(exc).__name__}: {exc}", flush=True)
        return {**label, "failure": f"bench error: {type(exc).__name__}: {str(exc)[:200]}"}


def make_ctx(task: str, model: Path, args, calib_n: int, eval_n: int) -> runs.Ctx:
    """Write the calibration and evaluation npz files of one model and load the eval split."""
    work = args.work / task
    work.mkdir(parents=True, exist_ok=True)
    calib, _, _ = C.write_split(task, "calib", calib_n, work / "calib.npz")
    eval_npz, x, targets = C.write_split(task, "eval", eval_n, work / "eval.npz")
    chars = C.ocr_data.load_characters(model) if task == "rec" else None
    return runs.Ctx(task, model, calib, min(calib_n, SPLIT_SIZE[task]), x, targets, chars, eval_npz, work,
                    rss_cap_mb=args.rss_cap_mb, repeats=args.repeats)


def meta(args) -> dict:
    import numpy
    import onnx
    import onnxruntime

    try:
        qtool_version = subprocess.run([*runs.qtool_cmd(), "--version"], capture_output=True,
                                       text=True, check=False).stdout.strip()
    except OSError:
        qtool_version = "?"
    git = subprocess.run(["git", "describe", "--always", "--dirty", "--exclude", "*"], cwd=C.ROOT,
                         capture_output=True, text=True, check=False).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "git": git or "?", "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(), "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": numpy.__version__, "qtool": qtool_version,
            "quick": args.quick, "batch_size": C.BATCH, "repeats": args.repeats, "calib_samples": args.samples,
            "eval_samples": args.eval_samples, "memory_samples": list(args.mem),
            "rec_metric": "char_accuracy(strip=False): mean of max(0, 1 - edit/len(truth)), spaces kept"
            if C.HAS_STRIP else "char_accuracy() (ocr_data has no strip parameter)",
            "cls_metric": "orientation accuracy (argmax over ['0', '180'])"}


def bench_rec(args, results: dict, save) -> None:
    """Everything on the PP-OCRv4 recogniser."""
    if not C.REC_MODEL.exists():
        subprocess.run([sys.executable, str(C.ROOT / "sample_models" / "fetch_ppocr.py")], check=True)
    ctx = make_ctx("rec", C.REC_MODEL, args, args.samples, args.eval_samples)
    rows = results["rows"]
    print(f"[rec] {ctx.model.name}: {ctx.calib_samples} calibration / {len(ctx.eval_x)} evaluation samples",
          flush=True)
    rows.append(runs.float_row(ctx))
    save()
    for scheme in ("minmax", "sqnr"):
        for config in ("default", "w8a8-per-channel"):
            gran = "per-channel" if "per-channel" in config else "per-tensor"
            rows.append(guarded(runs.qtool_row, ctx, config, scheme, export="export" not in args.skip,
                                label={"model": "rec", "method": f"qtool {scheme} {gran}", "tool": "qtool",
                                       "scheme": scheme, "granularity": gran}))
            save()
        # quantize_static's per-tensor weights are asymmetric: the same grid, for a like-for-like row
        gran = "per-tensor asymmetric-weights"
        rows.append(guarded(runs.qtool_row, ctx, "default", scheme, export="export" not in args.skip,
                            extra=("--asymmetric-weights",),
                            label={"model": "rec", "method": f"qtool {scheme} {gran}", "tool": "qtool",
                                   "scheme": scheme, "granularity": gran}))
        save()
    # qtool's own pre-processing, as quant_pre_process is onnxruntime's: fold the batch norms first
    folded = ctx.work / "folded" / "folded.onnx"
    folded.parent.mkdir(parents=True, exist_ok=True)
    fold = runs._child(ctx, [*runs.qtool_cmd(), "fold", str(ctx.model), "-o", str(folded)], "fold")
    if fold.ok:
        fctx = dataclasses.replace(ctx, model=folded, work=ctx.work / "folded")
        for scheme in ("minmax", "sqnr", "auto"):  # auto: the four schemes tried on held-out samples
            gran = "per-channel folded"
            rows.append(guarded(runs.qtool_row, fctx, "w8a8-per-channel", scheme, export="export" not in args.skip,
                                tag="folded", label={"model": "rec", "method": f"qtool {scheme} {gran}",
                                                     "tool": "qtool", "scheme": scheme, "granularity": gran}))
            save()
    methods = ["minmax"] + ([] if "hist" in args.skip else ["entropy", "percentile"])
    for method in methods:
        for per_channel in (False, True):
            # primary rows: per-tensor on the model as shipped, per-channel after quant_pre_process
            # (its weights are Constant nodes, which quantize_static only sees as initializers)
            row = guarded(runs.ort_row, ctx, method, per_channel, preprocess=per_channel, timeout=args.ort_timeout,
                          label={"model": "rec", "method": f"ORT {method}", "tool": "ort", "scheme": method,
                                 "granularity": "per-channel" if per_channel else "per-tensor"})
            row["primary"] = True
            rows.append(row)
            save()
    if "extra" not in args.skip and not args.quick:
        for per_channel in (False, True):  # the other pre-processing choice, MinMax only
            row = guarded(runs.ort_row, ctx, "minmax", per_channel, preprocess=not per_channel,
                          timeout=args.ort_timeout, label={"model": "rec", "method": "ORT minmax (extra)",
                                                           "tool": "ort", "scheme": "minmax"})
            row["primary"] = False
            rows.append(row)
            save()
    if "mem" not in args.skip:
        results["memory"] = guarded(runs.memory_scaling, ctx, args.mem, timeout=max(1800.0, args.ort_timeout),
                                    label={"model": "rec", "method": "memory scaling", "runs": []})
        save()


def bench_cls(args, results: dict, save) -> None:
    """Float, qtool sqnr per-tensor/per-channel, ORT MinMax per-tensor/per-channel on the classifier."""
    n_cal = min(args.samples_given or (64 if args.quick else SPLIT_SIZE["cls"]), SPLIT_SIZE["cls"])
    n_eval = 100 if args.quick else SPLIT_SIZE["cls"]
    ctx = make_ctx("cls", C.CLS_MODEL, args, n_cal, n_eval)
    print(f"[cls] {ctx.model.name}: {ctx.calib_samples} calibration / {len(ctx.eval_x)} evaluation samples",
          flush=True)
    rows = results["rows"]
    rows.append(runs.float_row(ctx))
    for config in ("default", "w8a8-per-channel"):
        gran = "per-channel" if "per-channel" in config else "per-tensor"
        rows.append(guarded(runs.qtool_row, ctx, config, "sqnr", export="export" not in args.skip,
                            label={"model": "cls", "method": f"qtool sqnr {gran}", "tool": "qtool",
                                   "scheme": "sqnr", "granularity": gran}))
        save()
    for per_channel in (False, True):
        row = guarded(runs.ort_row, ctx, "minmax", per_channel, preprocess=per_channel, timeout=args.ort_timeout,
                      label={"model": "cls", "method": "ORT minmax", "tool": "ort", "scheme": "minmax",
                             "granularity": "per-channel" if per_channel else "per-tensor"})
        row["primary"] = True
        rows.append(row)
        save()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"meta": meta(args), "rows": [], "memory": None}
    start = time.perf_counter()

    def save() -> None:
        results["meta"]["elapsed_s"] = time.perf_counter() - start
        results["meta"]["loadavg_now"] = os.getloadavg()
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    bench_rec(args, results, save)
    if "cls" not in args.skip:
        bench_cls(args, results, save)
    results["ratios"] = report.ratios(results)
    save()
    text = report.markdown(results)
    (args.out / "results.md").write_text(text)
    print()
    print(text)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} "
          f"({results['meta']['elapsed_s'] / 60:.1f} min)")
    if not args.quick:  # the numbers of a full run are the ones docs/ shows
        command = "python bench/bench_ptq.py " + " ".join(sys.argv[1:] if argv is None else argv)
        page = write_page("ptq", "PTQ benchmark: qtool vs onnxruntime quantize_static on PP-OCR", "bench_ptq.py",
                          "bench", f"* command: `{command.strip()}`\n\n{text}")
        print(f"wrote {page}")


if __name__ == "__main__":
    main()
