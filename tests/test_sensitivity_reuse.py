"""The sensitivity runs of analyze and mixed-precision reuse what they computed: the float
outputs come from the reference cache, and a selection of quantizers already scored (however the
setting spells it) is read from the evaluator's memo, not run again (analysis/evaluate.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import run_main  # noqa: E402
from qtool.analysis.evaluate import Evaluator, Setting  # noqa: E402
from qtool.analysis.metric import load_metric  # noqa: E402
from qtool.analysis.switchable import build_switchable  # noqa: E402
from qtool.commands.inputs import load_pair  # noqa: E402

CBR = Path(__file__).resolve().parents[1] / "sample_models" / "conv_bn_relu.onnx"


def test_each_selection_runs_once(data_dir, tmp_path, capsys, monkeypatch):
    assert run_main(["calibrate", CBR, "--data", data_dir / "d.npz", "-o", tmp_path / "p"], capsys)[0] == 0
    model, enc, _ = load_pair(f"{tmp_path / 'p'}.onnx", None)
    switchable = build_switchable(model, {n: [e] for n, e in {**enc.activations, **enc.params}.items()})
    batches = [{"input": np.load(data_dir / "d.npz")["input"]}]
    evaluator = Evaluator(model, switchable, batches, load_metric("sqnr"), cuts=0)  # whole passes: one a selection
    calls = []
    real = Evaluator.outputs
    monkeypatch.setattr(Evaluator, "outputs", lambda self, setting: calls.append(setting) or real(self, setting))
    every = list(switchable.selectors)
    first = Setting.of({every[0]: 1}, default=0)
    settings = [first, Setting.of(default=1), first, Setting.of({q: 1 for q in every}, default=0),
                Setting.of({every[0]: 0}, default=1)]
    scores = evaluator.scores(settings)
    assert len(calls) == 3 and evaluator.runs == 3  # all-on twice spelt, `first` twice
    assert scores[0] == scores[2] and scores[1] == scores[3] and scores[4] != scores[1]
    assert evaluator.score(Setting.of({q: 1 for q in every[1:]}, default=1)) == scores[1] and len(calls) == 3
    fresh = Evaluator(model, switchable, batches, load_metric("sqnr"))
    assert [fresh.score(s) for s in settings] == scores  # the memo changes no score
