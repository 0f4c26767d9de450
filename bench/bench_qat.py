"""QAT on EfficientNet-Lite0: PTQ against QAT, per-epoch curve, time and peak memory.

    python bench/bench_qat.py [--train 128] [--val 32] [--test 100] [--epochs 3] [--lr 1e-5] [--doc]

One `qtool run recipes/w8a8-per-tensor-qat.yaml` (fold, CLE, per-tensor calibration, bias
correction, then `qat`) on build/models/efficientnet_lite0.onnx (sample_models/fetch_efficientnet.py),
in a child process under bench/measure.py (wall seconds, peak RSS). Data are bench/zoo_models.py's
photo crops in [-1, 1]: `--train` crops (seed 0) calibrate and train, `--val` crops (seed 2) are
qat's per-epoch evaluation set (which picks the kept epoch), and `--test` crops (seed 1, the zoo
bench's held-out set) are never seen by either: on them the PTQ pair (the bias-correct step's) and
the QAT pair are scored against the float model with the zoo bench's metric (top-1 agreement) and
the logits' SQNR, in onnxruntime's QDQ simulation. Times are given as multiples of one float
onnxruntime pass over the training crops in the same run (the machine is shared). `--doc` writes
the table between the markers of docs/qat.md (`--results bench/out/qat_results.json` rewrites it
from a finished run); otherwise bench/out/qat.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as C  # noqa: E402
import zoo_models as Z  # noqa: E402
from docs_page import context_line, write_section  # noqa: E402

RECIPE = C.ROOT / "recipes" / "w8a8-per-tensor-qat.yaml"
WORK = C.ROOT / "build" / "bench" / "qat"
BEGIN, END = "<!-- bench_qat.py: begin -->", "<!-- bench_qat.py: end -->"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=128, help="calibration and training crops")
    ap.add_argument("--val", type=int, default=32, help="qat's per-epoch evaluation crops")
    ap.add_argument("--test", type=int, default=100, help="held-out crops for the final scores")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--extra", default="", help="more --set items for the qat step, comma separated (k=v)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--force", action="store_true", help="rerun the recipe's steps before qat too (qtool run --force)")
    ap.add_argument("--doc", action="store_true", help="write the section of docs/qat.md")
    ap.add_argument("--results", type=Path, help="a qat_results.json of an earlier run: write its table, run nothing")
    return ap.parse_args(argv)


def _crops(n: int, seed: int) -> np.ndarray:
    return (Z._photos(n, seed) * 2 - 1).astype(np.float32)  # [-1, 1], as zoo_models.effnet_data


def _qdq_outputs(folder: Path, stem: str, x: np.ndarray) -> np.ndarray:
    """The pair in `folder` as `simulate` runs it (QDQ model, onnxruntime's simulate session)."""
    from qtool.commands.inputs import load_pair
    from qtool.ir.graph import save_model
    from qtool.ir.qdq import build_qdq_model

    model, encodings, _ = load_pair(folder / f"{stem}.onnx", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qdq.onnx"
        save_model(build_qdq_model(model, encodings), path)
        return C.run_model(path, x, simulate=True)[0]


def _scores(ref: np.ndarray, test: np.ndarray) -> dict:
    return {"top1_agree": float(np.mean(ref.argmax(1) == test.argmax(1))), "sqnr_db": C.sqnr_db(ref, test)}


def run(args: argparse.Namespace) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    model = Z.EFFNET
    train, val, test = _crops(args.train, 0), _crops(args.val, 2), _crops(args.test, 1)
    np.savez(WORK / "train.npz", input=train)
    np.savez(WORK / "val.npz", input=val)
    _, float_seconds = C.run_model(model, train)
    float_seconds = min(float_seconds, C.run_model(model, train)[1])
    reference = C.run_model(model, test)[0]
    sets = {"model": model, "data.calibration": WORK / "train.npz", "data.evaluation": WORK / "val.npz",
            "data.samples": args.train, "output": WORK / "run", "qat.epochs": args.epochs, "qat.lr": args.lr,
            "qat.batch_size": args.batch_size}
    sets.update(dict(item.split("=", 1) for item in args.extra.split(",") if item))
    cmd = [sys.executable, "-m", "qtool", "run", str(RECIPE), "--json"] + (["--force"] if args.force else [])
    cmd += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    child = C.run_child(cmd, timeout=args.timeout, log_dir=WORK / "logs", tag="recipe")
    if not child.ok:
        raise SystemExit(f"the recipe failed ({child.failure}): {C.last_line(child.stderr)}")
    summary = json.loads(child.stdout[child.stdout.find("{"):])
    steps = {step["step"]: step for step in summary["steps"]}
    timings = json.loads((WORK / "run" / "timings.json").read_text())
    qat = {**steps["qat"]["summary"], "seconds": next(t["seconds"] for t in timings["steps"] if t["step"] == "qat")}
    stem = model.stem
    ptq = _qdq_outputs(Path(steps["bias_correct"]["folder"]), stem, test)
    trained = _qdq_outputs(Path(steps["qat"]["folder"]), stem, test)
    return {"args": vars(args), "context": context_line(), "float_pass_seconds": round(float_seconds, 2),
            "recipe_seconds": round(child.seconds, 1), "peak_rss_mb": round(child.peak_rss_mb),
            "timings": timings, "qat": qat, "ptq_test": _scores(reference, ptq),
            "qat_test": _scores(reference, trained),
            "load": os.getloadavg()}


def table(result: dict) -> str:
    args, qat, float_s = result["args"], result["qat"], result["float_pass_seconds"]
    curve = ", ".join(f"{e['eval_sqnr_db']:.2f}" for e in qat["epochs"])
    losses = ", ".join(f"{e['loss']:.4g}" for e in qat["epochs"][1:])
    ptq, trained = result["ptq_test"], result["qat_test"]
    skipped = [t["step"] for t in result["timings"]["steps"] if t["status"] == "skipped"]
    reused = f" ({', '.join(skipped)} reused from an identical earlier run)" if skipped else ""
    lines = [
        f"EfficientNet-Lite0, `recipes/w8a8-per-tensor-qat.yaml` with `qat.epochs={args['epochs']}`, "
        f"`qat.lr={args['lr']:g}`, `qat.batch_size={args['batch_size']}`"
        f"{', ' + args['extra'] if args['extra'] else ''}; {args['train']} photo crops calibrate and train, "
        f"{args['val']} others pick the kept epoch, {args['test']} held-out crops (the zoo bench's) score "
        f"the pairs against the float model. Run: {result['context']}.",
        "",
        "| pair | top-1 agreement, held out | logit SQNR, held out |",
        "| --- | --- | --- |",
        f"| PTQ (`w8a8-per-tensor` steps: fold, CLE, per-tensor sqnr calibration, bias correction) | "
        f"{100 * ptq['top1_agree']:.1f}% | {ptq['sqnr_db']:.2f} dB |",
        f"| + QAT (epoch {qat['best_epoch']} kept) | {100 * trained['top1_agree']:.1f}% | "
        f"{trained['sqnr_db']:.2f} dB |",
        "",
        f"qat's curve (eval SQNR on the {args['val']} validation crops, epoch 0 = PTQ): {curve} dB; "
        f"training loss per epoch {losses}. ",
        f"The qat step took {qat['seconds']:.0f} s for {qat['steps']} steps and {len(qat['epochs'])} evaluations "
        f"({qat['seconds'] / float_s:.0f}x one float onnxruntime pass over the {args['train']} training crops, "
        f"{float_s:.1f} s in this run); `qtool run` {result['recipe_seconds']:.0f} s{reused}, "
        f"peak RSS {result['peak_rss_mb'] / 1024:.2f} GiB, on {qat['device']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.results:
        result = json.loads(args.results.read_text())
    else:
        result = run(args)
        (C.ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
        (C.ROOT / "bench" / "out" / "qat_results.json").write_text(json.dumps(result, indent=1, default=str))
    text = table(result)
    print(text)
    if args.doc:
        write_section(C.ROOT / "docs" / "qat.md", BEGIN, END, text)
    else:
        (C.ROOT / "bench" / "out" / "qat.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
