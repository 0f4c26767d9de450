"""bench/bench_qat.py's table: what a run measured, put in words with the numbers it holds (the
PTQ pair named by the step before qat, the float row of the recogniser, time per step), and
results written before the script took --model/--recipe still render."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_qat  # noqa: E402


def _result(**args) -> dict:
    epochs = [{"epoch": 0, "loss": None, "eval_sqnr_db": 11.0}, {"epoch": 1, "loss": 0.25, "eval_sqnr_db": 13.5},
              {"epoch": 2, "loss": 0.125, "eval_sqnr_db": 13.25}]
    return {"args": {"train": 128, "val": 16, "test": 200, "epochs": 2, "lr": 1e-5, "batch_size": 8, "extra": "",
                     **args},
            "context": "CONTEXT", "float_pass_seconds": 2.0, "recipe_seconds": 900.0, "peak_rss_mb": 3072,
            "timings": {"steps": [{"step": "fold", "status": "skipped"}]},
            "qat": {"epochs": epochs, "best_epoch": 1, "seconds": 640.0, "steps": 32, "device": "cpu"}}


def test_the_recogniser_has_a_float_row_and_the_ptq_pair_is_the_step_before_qat():
    result = {**_result(model="rec", recipe="w8a8-per-tensor-qat"), "ptq_step": "bias_correct",
              "steps": ["fold", "equalize", "calibrate", "bias_correct", "qat", "simulate", "export"],
              "float_test": {"char_acc": 0.9512}, "ptq_test": {"char_acc": 0.9201, "sqnr_db": 10.5},
              "qat_test": {"char_acc": 0.9433, "agree_float": 0.815, "sqnr_db": 12.75}}
    text = bench_qat.table(result)
    assert "PP-OCRv4 recogniser, `recipes/w8a8-per-tensor-qat.yaml`" in text
    assert "| float | 95.12% | | |" in text
    # a result written before the agreement was measured shows '-'
    assert "| PTQ (the `bias_correct` step's pair: fold, equalize, calibrate, bias_correct) | 92.01% | - | 10.50 dB |" in text
    assert "| + QAT (epoch 1 kept) | 94.33% | 81.5% | 12.75 dB |" in text
    assert "11.00, 13.50, 13.25 dB" in text and "0.25, 0.125" in text
    assert "640 s for 32 steps and 3 evaluations (20.0 s a step" in text and "320x one float" in text
    assert "(fold reused from an identical earlier run)" in text and "peak RSS 3.00 GiB" in text


def test_a_result_written_before_model_and_recipe_options_renders_as_lite0_w8a8():
    result = {**_result(), "ptq_test": {"top1_agree": 0.87, "sqnr_db": 16.59},
              "qat_test": {"top1_agree": 0.92, "sqnr_db": 20.77}}
    text = bench_qat.table(result)
    assert text.startswith("EfficientNet-Lite0, `recipes/w8a8-per-tensor-qat.yaml`")
    assert "| PTQ (the `bias_correct` step's pair: fold, CLE, per-tensor sqnr calibration, bias correction) | " \
           "87.0% | 16.59 dB |" in text
    assert "| + QAT (epoch 1 kept) | 92.0% | 20.77 dB |" in text
    assert bench_qat.markers("effnet w8a8-per-tensor-qat")[0] == "<!-- bench_qat.py effnet w8a8-per-tensor-qat: begin -->"
