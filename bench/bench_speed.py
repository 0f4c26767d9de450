"""Speed benchmark (issue 16): calibrate and simulate against one float pass, in one run.

    python bench/bench_speed.py [--models rec,effnet,text] [--repeats 3] [--qtool-path DIR] [--no-doc]

For the PP-OCRv4 recogniser (BN folded, 128 lines), EfficientNet-Lite0 (64 photos) and MiniLM-L3
(128 sentences, one a batch), each ratio is a whole qtool command (wall time of the process:
start, imports, reading, the work, writing) against one float pass: an onnxruntime session
made with default options and run over the same batches, timed inside its own process (session
creation + runs, the data already in memory), as issue 16 measures it. Rows:

* calibrate --scheme minmax / sqnr / percentile / mse (config w8a8-per-channel);
* simulate cold (the float reference computed) and warm (read from the reference cache that the
  cold run wrote; QTOOL_CACHE_DIR points at a bench folder emptied before the cold run);
* peak RSS of every command (its own, measured by bench/measure.py), and of the recogniser's
  sqnr calibration over 4x the samples (flat in the sample count).

The float pass and the commands run interleaved, `--repeats` rounds, and the fastest of each is
kept: the machine is shared, and a ratio within one round is what the noise leaves intact. "in
qtool" is the command's own measure of its work (`seconds` of --json: no start-up, no files).
A full run (all models, no --no-doc) rewrites the generated section of docs/benchmarks.md
between its markers. Work files: build/bench/speed/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common as C  # noqa: E402
import docs_page  # noqa: E402

WORK = C.ROOT / "build" / "bench" / "speed"
AIMET_PYTHON = C.AIMET_VENV / "bin" / "python"
DOC = C.ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_speed.py: begin (generated, do not edit) -->", "<!-- bench_speed.py: end -->"
SCHEMES = ("minmax", "sqnr", "percentile", "mse")
EVAL = 64  # held-out samples the accuracy rows simulate on
MODELS = {"rec": ("PP-OCRv4 recogniser (BN folded)", 128, 16), "effnet": ("EfficientNet-Lite0", 64, 16),
          "text": ("MiniLM-L3 (text_encoder)", 128, 16)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the fastest is kept (default 3)")
    ap.add_argument("--qtool-path", type=Path, help="run the qtool package found in DIR (python -m qtool.cli with "
                    "PYTHONPATH=DIR), e.g. a checkout of an older revision, instead of the installed one")
    ap.add_argument("--rss-factor", type=int, default=4, help="the recogniser's sqnr calibration is also run on this "
                    "many times its samples, for peak RSS (0: skip)")
    ap.add_argument("--entropy", action=argparse.BooleanOptionalAction, default=True,
                    help="also time quantize_static with the Entropy method (the slowest row)")
    ap.add_argument("--once", action=argparse.BooleanOptionalAction, default=True,
                    help="run quantize_static Entropy and analyze in the first round only (they are slow and "
                         "their ratios far from the float pass)")
    ap.add_argument("--analyze-samples", type=int, default=8, help="analyze --eval-samples (default 8)")
    ap.add_argument("--aimet", action=argparse.BooleanOptionalAction, default=True,
                    help="also time aimet-onnx's compute_encodings (tf_enhanced) when build/aimet-venv exists "
                         "(make bench-aimet makes it)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--skip-accuracy", action="store_true", help="no encodings/SQNR comparison with the reference path")
    ap.add_argument("--accuracy-json", type=Path, help="take the accuracy rows of the models in this JSON file "
                    "({model: rows}, what `--accuracy MODEL` prints) instead of computing them again")
    ap.add_argument("--float-pass", nargs=3, metavar=("MODEL", "DATA", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--accuracy", metavar="MODEL", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def float_pass(model: str, data: str, batch: int) -> None:
    """Child mode: the batches qtool would make, read first; then session + runs, timed."""
    import onnxruntime as ort

    from qtool.commands.inputs import open_model_data
    from qtool.ir.graph import load_model

    batches = [dict(b) for b in open_model_data(load_model(model), data, samples=None).batches(batch)]
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    for feeds in batches:
        session.run(None, feeds)
    print(json.dumps({"seconds": time.perf_counter() - start, "batches": len(batches)}))


# ----------------------------------------------------------------------------- data
def prepare(key: str) -> tuple[Path, Path, int]:
    """(model, calibration data, samples) of one model, made once under build/bench/speed/<key>/
    (with EVAL held-out samples beside them, for the accuracy rows)."""
    import zoo_models as Z

    spec = next(s for s in Z.SPECS if s.key == key)
    work, samples = WORK / key, MODELS[key][1]
    data = work / ("calib" if key == "text" else "calib.npz")
    marker = work / f"made-{samples}-{EVAL}"
    if not marker.exists():
        spec.data(work, samples, EVAL)
        marker.write_text("")
    model = spec.model()
    if key == "rec":
        folded = work / "rec_folded.onnx"
        if not folded.exists():
            subprocess.run([*qtool_cmd(None), "fold", str(model), "-o", str(folded)], check=True)
        model = folded
    return model, data, samples


def repeated_data(data: Path, factor: int) -> Path:
    """`data` (one npz) repeated `factor` times with small noise: the peak-RSS-vs-samples run."""
    import numpy as np

    with np.load(data) as d:
        x = d[d.files[0]]
    return C.write_noisy_repeats(x, len(x) * factor, WORK / f"rss_x{factor}", chunk=len(x))


# ----------------------------------------------------------------------------- runs
def accuracy(key: str) -> None:
    """Child mode: per histogram scheme, the encodings of the one-pass sampled calibration against
    the reference (CalibrateOptions.exact: every value binned after a min-max pass), and the
    simulated SQNR of both on the held-out samples (cache off: both simulated in full)."""
    os.environ["QTOOL_CACHE_DIR"] = "off"
    import numpy as np

    from qtool.commands.inputs import open_model_data
    from qtool.ir.graph import load_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.steps.calibrate import CalibrateOptions, calibrate
    from qtool.steps.simulate import simulate

    model_path, data, _ = prepare(key)
    model = load_model(model_path)
    plan = build_plan(model, load_config("w8a8-per-channel"), PlanOptions())
    source = open_model_data(model, data, samples=None)
    held = open_model_data(model, WORK / key / ("eval" if key == "text" else "eval.npz"), samples=None)
    batch = MODELS[key][2]
    rows = {}
    for scheme in SCHEMES[1:]:
        runs = {}
        for kind, exact in (("reference", True), ("one pass", False)):
            start = time.perf_counter()
            result = calibrate(model, plan, lambda: source.batches(batch), CalibrateOptions(scheme=scheme, exact=exact))
            seconds = time.perf_counter() - start
            report = simulate(model, result.encodings, held.batches(batch)).report
            sqnr = [row["sqnr_db"] for row in report.values() if row.get("sqnr_db") is not None]
            runs[kind] = (result.encodings.activations, seconds, float(np.mean(sqnr)))
        ref, new = runs["reference"][0], runs["one pass"][0]
        diffs = []
        for name, enc in ref.items():
            low, high = float(enc.min.min()), float(enc.max.max())
            if not enc.is_float and high > low:
                diffs.append(max(abs(float(new[name].min.min()) - low), abs(float(new[name].max.max()) - high))
                             / (high - low))
        diffs = np.array(diffs)
        rows[scheme] = {"tensors": len(diffs), "median": float(np.median(diffs)), "p90": float(np.percentile(diffs, 90)),
                        "max": float(diffs.max()), "over_1pct": int((diffs > 0.01).sum()),
                        "over_5pct": int((diffs > 0.05).sum()),
                        "sqnr_reference_db": runs["reference"][2], "sqnr_one_pass_db": runs["one pass"][2],
                        "seconds_reference": runs["reference"][1], "seconds_one_pass": runs["one pass"][1]}
    print(json.dumps(rows))


def qtool_cmd(path: Path | None) -> list[str]:
    return [sys.executable, "-m", "qtool.cli"] if path else (shutil.which("qtool") and ["qtool"]) or \
        [sys.executable, "-m", "qtool.cli"]


def child(cmd: list[str], env: dict, tag: str) -> dict:
    """Run one command through measure.py: wall seconds, its peak RSS, its --json output."""
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = logs / f"{tag}.measure.json"
    done = subprocess.run([sys.executable, str(HERE / "measure.py"), "--result", str(result), "--", *cmd],
                          capture_output=True, text=True, env=env)
    (logs / f"{tag}.stdout").write_text(done.stdout)
    (logs / f"{tag}.stderr").write_text(done.stderr)
    row = json.loads(result.read_text())
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    try:
        row["json"] = json.loads(done.stdout[done.stdout.index("{"):]) if "{" in done.stdout else {}
    except json.JSONDecodeError:
        row["json"] = json.loads(lines[-1]) if lines else {}
    if row["failure"]:
        print(f"    {tag}: FAILED {row['failure']}: {done.stderr.strip().splitlines()[-1:]}", flush=True)
    return row


def aimet_row(key: str, model: Path, data: Path, samples: int, batch: int, env: dict) -> dict:
    """aimet-onnx's own tf_enhanced calibration of the same model on the same samples and batches
    (bench/aimet_child_speed.py in build/aimet-venv); its in-process seconds are the "in qtool" column."""
    cases = WORK / key / "aimet_cases.json"
    cases.write_text(json.dumps([{"model": str(model), "calib": str(data), "samples": samples, "batch": batch}]))
    row = child([str(AIMET_PYTHON), str(HERE / "aimet_child.py"), "--job", "speed", "--cases", str(cases),
                 "--out", str(WORK / key / "aimet")], env, f"{key}.aimet")
    row["inner_s"] = row["json"].get("seconds")
    return row


def bench_model(key: str, args, env: dict) -> dict:
    model, data, samples = prepare(key)
    title, _, batch = MODELS[key]
    out = WORK / key / "out"
    cache = WORK / key / "cache"
    q = qtool_cmd(args.qtool_path)
    common = ["--data", str(data), "--batch-size", str(batch), "--json"]
    env = dict(env, QTOOL_CACHE_DIR=str(cache))
    rows: dict[str, list[dict]] = {}

    def add(name: str, row: dict) -> None:
        rows.setdefault(name, []).append(row)

    for round_ in range(args.repeats):
        fp = child([sys.executable, str(HERE / "bench_speed.py"), "--float-pass", str(model), str(data), str(batch)],
                   env, f"{key}.float.{round_}")
        fp["inner_s"] = fp["json"].get("seconds")
        add("float pass", fp)
        for scheme in SCHEMES:
            row = child([*q, "calibrate", str(model), *common, "--config", "w8a8-per-channel", "--scheme", scheme,
                         "-o", str(out / scheme)], env, f"{key}.{scheme}.{round_}")
            row["inner_s"] = row["json"].get("seconds")
            add(f"calibrate {scheme}", row)
        shutil.rmtree(cache, ignore_errors=True)
        for kind in ("cold", "warm"):
            row = child([*q, "simulate", str(out / "sqnr.onnx"), *common], env, f"{key}.simulate-{kind}.{round_}")
            row["inner_s"] = row["json"].get("seconds")
            add(f"simulate ({kind} cache)" if kind == "warm" else "simulate (float reference computed)", row)
        for method in ("minmax", "entropy") if round_ == 0 or not args.once else ("minmax",):
            if method == "entropy" and not args.entropy:
                continue
            row = child([sys.executable, str(HERE / "ort_quant.py"), str(model), "--data", str(data), "--out",
                         str(out / f"ortq_{method}.onnx"), "--method", method, "--per-channel", "--preprocess",
                         "--batch", str(batch)], env, f"{key}.ortq-{method}.{round_}")
            info = row["json"]
            row["inner_s"] = sum(info.get(k, 0.0) for k in ("convert_s", "preprocess_s", "quantize_static_s")) \
                if "quantize_static_s" in info else None
            add(f"quantize_static {'MinMax' if method == 'minmax' else 'Entropy'} per-channel (+ pre-processing)", row)
        if args.aimet and AIMET_PYTHON.exists() and data.suffix == ".npz":  # (text's data is a folder of token files)
            row = aimet_row(key, model, data, samples, batch, env)
            add("aimet-onnx compute_encodings tf_enhanced per-channel", row)
        if round_ == 0 or not args.once:
            row = child([*q, "analyze", str(out / "sqnr.onnx"), "--data", str(data), "--batch-size", str(batch),
                         "--eval-samples", str(args.analyze_samples), "--json", "-o", str(out / "analyze")], env,
                        f"{key}.analyze.{round_}")
            row["inner_s"] = row["json"].get("seconds")
            add(f"analyze ({args.analyze_samples} samples)", row)
        best = {k: min(r["seconds"] for r in v) for k, v in rows.items()}
        print(f"  [{key}] round {round_ + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in best.items()), flush=True)
    result = {"title": title, "samples": samples, "batch": batch, "rows": {}}
    base = min(r["inner_s"] or r["seconds"] for r in rows["float pass"])
    for name, runs in rows.items():
        ok = [r for r in runs if not r["failure"]]
        wall = min((r["seconds"] for r in ok), default=None)
        inner = min((r["inner_s"] for r in ok if r.get("inner_s") is not None), default=None)
        result["rows"][name] = {"wall_s": wall, "inner_s": inner, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                                "x_float": None if wall is None or name == "float pass" else wall / base,
                                "x_float_inner": None if inner is None or name == "float pass" else inner / base,
                                "failures": [r["failure"] for r in runs if r["failure"]]}
    result["float_s"] = base
    if key == "rec" and args.rss_factor > 1:
        big = repeated_data(data, args.rss_factor)
        row = child([*q, "calibrate", str(model), "--data", str(big), "--batch-size", str(batch), "--json",
                     "--config", "w8a8-per-channel", "-o", str(out / "rss")], env, f"{key}.rss")
        result["rss_scaling"] = {"samples": samples * args.rss_factor, "peak_rss_mb": row["peak_rss_mb"],
                                 "base_samples": samples,
                                 "base_peak_rss_mb": result["rows"]["calibrate sqnr"]["peak_rss_mb"]}
    return result


# ----------------------------------------------------------------------------- report
def table(results: dict) -> str:
    lines = ["| model | step | wall s | x float pass | in qtool s | x float (in qtool) | peak RSS MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    fmt = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    for key, res in results.items():
        for name, row in res["rows"].items():
            wall = row["inner_s"] if name == "float pass" else row["wall_s"]
            lines.append(f"| {key} | {name} | {fmt(wall)} | {fmt(row['x_float'], 1)}"
                         f"{'x' if row['x_float'] else ''} | {fmt(None if name == 'float pass' else row['inner_s'])} | "
                         f"{fmt(row['x_float_inner'], 1)}{'x' if row['x_float_inner'] else ''} | "
                         f"{row['peak_rss_mb']:.0f} |")
    notes = [f"* {k}: {r['title']}, {r['samples']} samples, batch {r['batch']}" for k, r in results.items()]
    notes.append("* aimet-onnx: QuantizationSimModel with quant_scheme tf_enhanced and its shipped "
                 "default_config_per_channel.json, then compute_encodings on the same samples and batches "
                 "(bench/aimet_child_speed.py, in build/aimet-venv); its seconds are the sim's construction and "
                 "compute_encodings, in aimet's process; the row is absent when the venv is")
    notes.append("* quantize_static: onnxruntime.quantization's QDQ per-channel W8A8 with its quant_pre_process "
                 "(bench/ort_quant.py), its own seconds (pre-processing + quantize_static); Entropy and analyze "
                 "ran in the first round only (--once)")
    accuracy_rows = [(k, scheme, row) for k, r in results.items() for scheme, row in (r.get("accuracy") or {}).items()]
    if accuracy_rows:
        lines += ["", "Encodings of the one-pass calibration against the reference (every value binned after a "
                  "min-max pass, `CalibrateOptions.exact`): how far each activation range's ends moved, as a share "
                  f"of the reference range, and the simulated SQNR (mean over outputs) on {EVAL} held-out samples.", "",
                  "| model | scheme | tensors | median | p90 | max | > 1% | > 5% | SQNR reference dB | SQNR one pass dB "
                  "| reference s | one pass s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: | ---: |"]
        lines += [f"| {k} | {scheme} | {a['tensors']} | {a['median']:.2%} | {a['p90']:.2%} | {a['max']:.2%} | "
                  f"{a['over_1pct']} | {a['over_5pct']} | {a['sqnr_reference_db']:.2f} | {a['sqnr_one_pass_db']:.2f} | "
                  f"{a['seconds_reference']:.1f} | {a['seconds_one_pass']:.1f} |" for k, scheme, a in accuracy_rows]
    for res in results.values():
        if "rss_scaling" in res:
            s = res["rss_scaling"]
            notes.append(f"* peak RSS of calibrate sqnr on the recogniser: {s['base_peak_rss_mb']:.0f} MiB with "
                         f"{s['base_samples']} samples, {s['peak_rss_mb']:.0f} MiB with {s['samples']}")
    return "\n".join(lines + [""] + notes)


def write_doc(text: str) -> None:
    """Replace the generated section of docs/benchmarks.md (appended when it has none)."""
    docs_page.write_section(DOC, BEGIN, END, text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.float_pass:
        float_pass(args.float_pass[0], args.float_pass[1], int(args.float_pass[2]))
        return 0
    if args.accuracy:
        accuracy(args.accuracy)
        return 0
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    env = dict(os.environ)
    if args.qtool_path:
        env["PYTHONPATH"] = f"{args.qtool_path.resolve()}{os.pathsep}{env.get('PYTHONPATH', '')}"
        os.chdir(args.qtool_path)  # `python -m` puts the working folder first on sys.path (every path here is absolute)
    start, load = time.time(), os.getloadavg()
    results = {key: bench_model(key, args, env) for key in keys}
    if not args.skip_accuracy and not args.qtool_path:
        given = json.loads(args.accuracy_json.read_text()) if args.accuracy_json else {}
        for key in keys:
            if key in given:
                results[key]["accuracy"] = given[key]
                continue
            row = child([sys.executable, str(HERE / "bench_speed.py"), "--accuracy", key], env, f"{key}.accuracy")
            results[key]["accuracy"] = row["json"]
    text = table(results)
    print(text)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.json").write_text(json.dumps(results, indent=2))
    if not args.no_doc and set(keys) == set(MODELS) and not args.qtool_path:
        body = (f"## Speed: calibrate, simulate, analyze and quantize_static against one float pass\n\n"
                f"Generated by `bench/bench_speed.py` (`make bench`); run {docs_page.context_line()}, load average "
                f"{', '.join(f'{v:.2f}' for v in load)} at the start, {(time.time() - start) / 60:.1f} min, "
                f"best of {args.repeats} interleaved rounds.\n\n{text}\n")
        write_doc(body)
        print(f"wrote the generated section of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
