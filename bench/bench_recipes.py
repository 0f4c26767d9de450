"""Every ready recipe on the bundled PP-OCR classifier: accuracy, output SQNR and seconds.

    python bench/bench_recipes.py            # all of recipes/*.yaml, ~3 min on 2 cores; writes docs/bench_recipes.md
    python bench/bench_recipes.py --quick    # 64 samples, 200 AdaRound iterations: bench/out/recipes.md only

Data: the 300 calibration and 300 held-out rendered text lines of `make demo`
(sample_models/ocr_data.py), labels 0 upright / 1 rotated. Each recipe runs as `qtool run
RECIPE --force --json` in a child process (the seconds are its wall time: model loading, every
step, simulate on the held-out lines and export), with its data set by --set and its outputs
under build/bench/recipes/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_models"))
sys.path.insert(0, str(ROOT / "bench"))

import ocr_data  # noqa: E402
from docs_page import write_page  # noqa: E402

MODEL = ROOT / "sample_models" / "ppocr_cls.onnx"
WORK = ROOT / "build" / "bench" / "recipes"


def make_data() -> dict[str, Path]:
    """The demo's data files (the same commands as `make demo`)."""
    WORK.mkdir(parents=True, exist_ok=True)
    files = {"calibration": WORK / "calib.npz", "evaluation": WORK / "eval.npz", "labels": WORK / "labels.npy"}
    ocr_data.main(["--task", "cls", "--split", "calib", "--out", str(files["calibration"]), "--model", str(MODEL)])
    ocr_data.main(["--task", "cls", "--split", "eval", "--out", str(files["evaluation"]),
                   "--labels-out", str(files["labels"]), "--model", str(MODEL)])
    return files


def run_recipe(recipe: Path, data: dict[str, Path], quick: bool) -> dict:
    """One `qtool run`: its summary, wall seconds and exit code."""
    sets = [f"data.{key}={path}" for key, path in data.items()] + [f"output={WORK / recipe.stem}"]
    if quick:
        sets += ["data.samples=64"] + (["vars.iterations=200"] if "iterations" in recipe.read_text() else [])
    command = [sys.executable, "-m", "qtool", "run", str(recipe), "--force", "--json"]
    command += [arg for item in sets for arg in ("--set", item)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        summary = {"error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    return {"recipe": recipe.stem, "code": done.returncode, "seconds": round(seconds, 1), "summary": summary}


def row(result: dict) -> str:
    """One markdown row: recipe, steps, samples, accuracy float -> quantized, SQNR, gate, seconds."""
    summary = result["summary"]
    if "metrics" not in summary:
        return f"| {result['recipe']} | failed (exit {result['code']}): {summary.get('error')} | | | | | |"
    metrics = next(iter(summary["metrics"].values()))
    steps = ", ".join(step["step"] for step in summary["steps"])
    calibrated = [s["summary"].get("samples") for s in summary["steps"] if s["summary"].get("samples")]
    accuracy = (f"{100 * metrics['float_accuracy']:.2f}% -> {100 * metrics['quant_accuracy']:.2f}%"
                if "quant_accuracy" in metrics else "-")
    gate = "passed" if summary["passed"] else "FAILED"
    return (f"| {result['recipe']} | {steps} | {calibrated[0] if calibrated else '-'} | {accuracy} | "
            f"{metrics['sqnr_db']:.2f} dB | {gate} | {result['seconds']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 samples, 200 AdaRound iterations (bench/out only)")
    ap.add_argument("--recipes", default="", help="comma-separated recipe names (default: all; not for docs/)")
    args = ap.parse_args(argv)
    wanted = {name.strip() for name in args.recipes.split(",") if name.strip()}
    recipes = [r for r in sorted((ROOT / "recipes").glob("*.yaml")) if not wanted or r.stem in wanted]
    data = make_data()
    results = []
    for recipe in recipes:
        results.append(run_recipe(recipe, data, args.quick))
        print(row(results[-1]), flush=True)
    body = ("The bundled PP-OCR text-orientation classifier (`sample_models/ppocr_cls.onnx`), each ready recipe "
            "as shipped, with the data of `make demo`: 300 calibration lines and 300 held-out lines with labels "
            "(the first 256 of each where the recipe sets `data.samples: 256`, which every step reads). Accuracy "
            "is orientation accuracy on the held-out lines (one line is 0.33 points of 300); SQNR is the "
            "output's, against the float model; seconds are the wall time of `qtool run RECIPE --force` on the "
            "machine above (a shared 2-core machine: they vary by 2-3x between runs).\n\n"
            "| recipe | steps | calibration samples | accuracy float -> quantized | output SQNR | expect: gate | "
            "seconds |\n| --- | --- | ---: | ---: | ---: | --- | ---: |\n"
            + "\n".join(row(result) for result in results))
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.quick or wanted:
        (out / "recipes.md").write_text(body + "\n")
        print(f"wrote {out / 'recipes.md'} (a quick or partial run: docs/ unchanged)")
    else:
        title = "Ready recipes on the bundled classifier"
        page = write_page("recipes", title, "bench_recipes.py", "bench-recipes", body)
        print(f"wrote {page}")
    return 0 if all(result["code"] == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
