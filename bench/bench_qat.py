"""QAT on EfficientNet-Lite0 or the PP-OCRv4 recogniser: PTQ against QAT, per-epoch curve, time
and peak memory.

    python bench/bench_qat.py [--model effnet|rec] [--recipe w8a8-per-tensor-qat|w4a8-qat]
        [--train 128] [--val 32] [--test 100] [--epochs 3] [--lr 1e-5] [--extra k=v,...] [--doc]

One `qtool run recipes/RECIPE.yaml` (the recipe's PTQ steps, then `qat`) in a child process under
bench/measure.py (wall seconds, peak RSS). The PTQ pair is the output of the step before `qat`.

* effnet: build/models/efficientnet_lite0.onnx (sample_models/fetch_efficientnet.py) on
  bench/zoo_models.py's photo crops in [-1, 1]: `--train` crops (seed 0) calibrate and train,
  `--val` crops (seed 2) are qat's per-epoch evaluation set (which picks the kept epoch), and
  `--test` crops (seed 1, the zoo bench's held-out set) score the pairs against the float model
  (top-1 agreement, logit SQNR).
* rec: the PP-OCRv4 recogniser (sample_models/fetch_ppocr.py) trained on freshly rendered lines
  (sample_models/make_ocr_data.make_rec, seed 1 for `--train`, seed 2 for `--val`, none of them a
  committed line) without their texts; `--test` is the committed evaluation split, whose texts
  give the character accuracy of the float model, the PTQ pair and the QAT pair (and their SQNR
  against float).

Pairs are scored in onnxruntime's QDQ simulation. Times are also given as multiples of one
float onnxruntime pass over the training data in the same run (the machine is shared). `--doc`
writes the table between the markers of the (model, recipe) section of docs/qat.md (or `--section`'s)
(`--results bench/out/qat_results_MODEL_RECIPE.json` rewrites it from a finished run);
otherwise bench/out/qat_MODEL_RECIPE.md.
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

RECIPES = C.ROOT / "recipes"
WORK = C.ROOT / "build" / "bench" / "qat"
NAMES = {"effnet": "EfficientNet-Lite0", "rec": "PP-OCRv4 recogniser"}


def markers(section: str) -> tuple[str, str]:
    return f"<!-- bench_qat.py {section}: begin -->", f"<!-- bench_qat.py {section}: end -->"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(NAMES), default="effnet")
    ap.add_argument("--recipe", default="w8a8-per-tensor-qat", help="a recipe of recipes/ ending in a qat step")
    ap.add_argument("--train", type=int, default=128, help="calibration and training crops")
    ap.add_argument("--val", type=int, default=32, help="qat's per-epoch evaluation crops")
    ap.add_argument("--test", type=int, default=100, help="held-out crops for the final scores")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--extra", default="", help="more --set items, comma separated (qat.range_learning=true, "
                                                "vars.iterations=500)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--force", action="store_true", help="rerun the recipe's steps before qat too (qtool run --force)")
    ap.add_argument("--doc", action="store_true", help="write the section of docs/qat.md")
    ap.add_argument("--results", type=Path, help="a qat_results.json of an earlier run: write its table, run nothing")
    ap.add_argument("--section", help="the section of docs/qat.md to write (default: 'MODEL RECIPE'), for two runs "
                                      "of one recipe side by side")
    return ap.parse_args(argv)


def _crops(n: int, seed: int) -> np.ndarray:
    return (Z._photos(n, seed) * 2 - 1).astype(np.float32)  # [-1, 1], as zoo_models.effnet_data


def _fresh_lines(n: int, seed: int) -> np.ndarray:
    """`n` recogniser inputs rendered now (seeded), none with the text of a committed line."""
    import make_ocr_data

    with np.load(C.ocr_data.DATA) as committed:
        used = {str(t) for t in committed["rec_texts"]}
    images, widths, _ = make_ocr_data.make_rec(make_ocr_data.load_words(), np.random.default_rng(seed), used, n)
    return C.ocr_data.normalize(images, widths)


def _data(args: argparse.Namespace):
    """(model path, input name, train, val, test, test texts or None)."""
    if args.model == "effnet":
        return Z.EFFNET, "input", _crops(args.train, 0), _crops(args.val, 2), _crops(args.test, 1), None
    sys.path.insert(0, str(C.ROOT / "sample_models"))
    test, texts = C.ocr_data.load_split("rec", "eval", limit=args.test)
    return Z.rec_model(), "x", _fresh_lines(args.train, 1), _fresh_lines(args.val, 2), test, texts


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


def _scores(ref: np.ndarray, test: np.ndarray, texts: list[str] | None, characters) -> dict:
    if texts is None:
        return {"top1_agree": float(np.mean(ref.argmax(1) == test.argmax(1))), "sqnr_db": C.sqnr_db(ref, test)}
    decoded = C.score("rec", test, texts, characters)
    return {"char_acc": decoded["acc"], "agree_float": C.agreement(C.score("rec", ref, texts, characters)["preds"],
                                                                   decoded["preds"]),
            "sqnr_db": C.sqnr_db(ref, test)}


def run(args: argparse.Namespace) -> dict:
    work = WORK / f"{args.model}_{args.recipe}"
    work.mkdir(parents=True, exist_ok=True)
    model, input_name, train, val, test, texts = _data(args)
    characters = C.ocr_data.load_characters(model) if texts is not None else None
    np.savez(work / "train.npz", **{input_name: train})
    np.savez(work / "val.npz", **{input_name: val})
    _, float_seconds = C.run_model(model, train)
    float_seconds = min(float_seconds, C.run_model(model, train)[1])
    reference = C.run_model(model, test)[0]
    sets = {"model": model, "data.calibration": work / "train.npz", "data.evaluation": work / "val.npz",
            "data.samples": args.train, "output": work / "run", "qat.epochs": args.epochs, "qat.lr": args.lr,
            "qat.batch_size": args.batch_size}
    sets.update(dict(item.split("=", 1) for item in args.extra.split(",") if item))
    cmd = [sys.executable, "-m", "qtool", "run", str(RECIPES / f"{args.recipe}.yaml"), "--json"]
    cmd += (["--force"] if args.force else []) + [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    child = C.run_child(cmd, timeout=args.timeout, log_dir=work / "logs", tag="recipe")
    if not child.ok:
        raise SystemExit(f"the recipe failed ({child.failure}): {C.last_line(child.stderr)}")
    summary = json.loads(child.stdout[child.stdout.find("{"):])
    order = [step["step"] for step in summary["steps"]]
    steps = {step["step"]: step for step in summary["steps"]}
    timings = json.loads((work / "run" / "timings.json").read_text())
    qat = {**steps["qat"]["summary"], "seconds": next(t["seconds"] for t in timings["steps"] if t["step"] == "qat")}
    stem, ptq_step = model.stem, order[order.index("qat") - 1]
    ptq = _qdq_outputs(Path(steps[ptq_step]["folder"]), stem, test)
    trained = _qdq_outputs(Path(steps["qat"]["folder"]), stem, test)
    floats = {"char_acc": C.score("rec", reference, texts, characters)["acc"]} if texts is not None else None
    return {"args": vars(args), "context": context_line(), "float_pass_seconds": round(float_seconds, 2),
            "recipe_seconds": round(child.seconds, 1), "peak_rss_mb": round(child.peak_rss_mb),
            "timings": timings, "qat": qat, "ptq_step": ptq_step, "steps": order,
            "ptq_test": _scores(reference, ptq, texts, characters), "qat_test": _scores(reference, trained, texts,
                                                                                        characters),
            "float_test": floats, "load": os.getloadavg()}


def table(result: dict) -> str:
    args, qat, float_s = result["args"], result["qat"], result["float_pass_seconds"]
    model, recipe = args.get("model", "effnet"), args.get("recipe", "w8a8-per-tensor-qat")
    curve = ", ".join(f"{e['eval_sqnr_db']:.2f}" for e in qat["epochs"])
    losses = ", ".join(f"{e['loss']:.4g}" for e in qat["epochs"][1:])
    ptq, trained = result["ptq_test"], result["qat_test"]
    ptq_step, steps = result.get("ptq_step", "bias_correct"), result.get("steps")
    skipped = [t["step"] for t in result["timings"]["steps"] if t["status"] == "skipped"]
    reused = f" ({', '.join(skipped)} reused from an identical earlier run)" if skipped else ""
    data = ("photo crops calibrate and train", "others pick the kept epoch", "held-out crops (the zoo bench's) "
            "score the pairs against the float model") if model == "effnet" else (
            "freshly rendered lines (no texts) calibrate and train", "other fresh lines pick the kept epoch",
            "committed evaluation lines score the pairs (character accuracy against their texts, SQNR against float)")
    if model == "effnet":
        head = "| pair | top-1 agreement with float, held out | logit SQNR, held out |\n| --- | --- | --- |"
        row = lambda r: f"{100 * r['top1_agree']:.1f}% | {r['sqnr_db']:.2f} dB"  # noqa: E731
        rows = []
    else:
        head = ("| pair | character accuracy, held out | lines decoded as float decodes them | output SQNR against "
                "float, held out |\n| --- | --- | --- | --- |")
        row = lambda r: (f"{100 * r['char_acc']:.2f}% | "  # noqa: E731
                         f"{'%.1f%%' % (100 * r['agree_float']) if 'agree_float' in r else '-'} | {r['sqnr_db']:.2f} dB")
        rows = [f"| float | {100 * result['float_test']['char_acc']:.2f}% | | |"]
    ptq_steps = ", ".join(steps[:steps.index("qat")]) if steps else "fold, CLE, per-tensor sqnr calibration, bias correction"
    lines = [
        f"{NAMES[model]}, `recipes/{recipe}.yaml` with `qat.epochs={args['epochs']}`, "
        f"`qat.lr={args['lr']:g}`, `qat.batch_size={args['batch_size']}`"
        f"{', ' + args['extra'] if args['extra'] else ''}; {args['train']} {data[0]}, "
        f"{args['val']} {data[1]}, {args['test']} {data[2]}. Run: {result['context']}.",
        "",
        head,
        *rows,
        f"| PTQ (the `{ptq_step}` step's pair: {ptq_steps}) | {row(ptq)} |",
        f"| + QAT (epoch {qat['best_epoch']} kept) | {row(trained)} |",
        "",
        f"qat's curve (eval SQNR on the {args['val']} validation samples, epoch 0 = PTQ): {curve} dB; "
        f"training loss per epoch {losses}. ",
        f"The qat step took {qat['seconds']:.0f} s for {qat['steps']} steps and {len(qat['epochs'])} evaluations "
        f"({qat['seconds'] / max(qat['steps'], 1):.1f} s a step with its share of the evaluations; "
        f"{qat['seconds'] / float_s:.0f}x one float onnxruntime pass over the {args['train']} training samples, "
        f"{float_s:.1f} s in this run); `qtool run` {result['recipe_seconds']:.0f} s{reused}, "
        f"peak RSS {result['peak_rss_mb'] / 1024:.2f} GiB, on {qat['device']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = C.ROOT / "bench" / "out"
    if args.results:
        result = json.loads(args.results.read_text())
    else:
        result = run(args)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"qat_results_{args.model}_{args.recipe}.json").write_text(json.dumps(result, indent=1, default=str))
    text = table(result)
    print(text)
    model, recipe = result["args"].get("model", "effnet"), result["args"].get("recipe", "w8a8-per-tensor-qat")
    if args.doc:
        write_section(C.ROOT / "docs" / "qat.md", *markers(args.section or f"{model} {recipe}"), text)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"qat_{model}_{recipe}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
