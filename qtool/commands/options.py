"""Option groups several commands share: the data they read, the evaluation set and metric, the
encodings, config and overrides they start from. Each command's options dataclass derives from
the groups it needs (`qtool.commands.fields` explains the field declarations)."""

from __future__ import annotations

from dataclasses import dataclass

from qtool.analysis.metric import BUILTIN_METRICS
from qtool.commands.fields import DataArg, LabelsArg, option
from qtool.encodings.formats import ENCODING_VERSIONS
from qtool.parallel.executor import EXECUTORS
from qtool.plan.config import BUILTIN_CONFIGS

DATA_HELP = ("Calibration data: .npz (arrays keyed by input name), .npy, a folder of those or of images, or "
             "'random' (smoke tests only). From Python also arrays: {input name: array}, one array, or an "
             "iterable of such dicts.")
CONFIG_HELP = f"AIMET runtime config JSON, or a built-in target: {', '.join(BUILTIN_CONFIGS)}."
ENCODINGS_HELP = "Encodings JSON (default: MODEL's sibling .encodings.json)."
OVERRIDES_HELP = ("Per-tensor/per-node overrides JSON (bit-width, symmetry, per-channel, exclude, fixed range), "
                  "e.g. written by analyze or mixed-precision; applied last.")
VERSION_HELP = "AIMET encodings format to write."
DEVICE_HELP = ("Where onnxruntime runs: cpu, or cuda (needs onnxruntime-gpu: pip install 'qtool[gpu]', and an NVIDIA "
               "GPU).")


def encoding_version() -> str:
    return option("1.0.0", VERSION_HELP, choices=ENCODING_VERSIONS, case_sensitive=True)


@dataclass(frozen=True, kw_only=True)
class ShapeOptions:
    """What `--data random` needs to make data the model accepts (and what file data must match)."""

    input_shape: tuple[str, ...] = option(
        (), "Shape of input NAME, repeatable: fills its dynamic dims (and same-named dims of other inputs) for "
            "--data random, and data must match it. The first (batch) dim is ignored: --batch-size sets it.",
        metavar="NAME=1x3xHxW")
    vocab_size: int | None = option(
        None, "--data random: integer ids below N (and below the embedding table's rows, which qtool finds "
              "itself where ids feed a Gather).", bounds=(1, None))

    def shapes(self) -> dict:
        """Keyword arguments of `open_model_data` for these options."""
        return {"input_shapes": self.input_shape, "vocab_size": self.vocab_size}


@dataclass(frozen=True, kw_only=True)
class OptionalData:
    """--data for the commands that also run without it (equalize, bias-correct)."""

    data: DataArg = option(None, "Calibration data (see calibrate --data).")
    samples: int = option(256, "Use at most N samples.", bounds=(1, None))
    batch_size: int = option(16, "Samples per run.", bounds=(1, None))
    preprocess: str | None = option(None, "Image folders: see calibrate --preprocess.")
    device: str = option("cpu", DEVICE_HELP, choices=("cpu", "cuda"))


@dataclass(frozen=True, kw_only=True)
class _Data:
    data: DataArg = option(help=DATA_HELP)
    samples: int | None = option(None, "Use at most N samples.", bounds=(1, None))
    batch_size: int = option(16, "Samples per onnxruntime run (memory grows with it, not with --samples).",
                             bounds=(1, None))
    preprocess: str | None = option(None, "Image folders: 'size=224x224,mean=127.5,std=127.5,layout=NCHW,order=RGB'.")
    seed: int = option(0, "Seed for --data random.")
    device: str = option("cpu", DEVICE_HELP, choices=("cpu", "cuda"))


@dataclass(frozen=True, kw_only=True)
class DataOptions(ShapeOptions, _Data):
    """--data and how it is read (then --input-shape/--vocab-size): every command that needs data."""

    def reading(self) -> dict:
        """Keyword arguments of `open_model_data` for these options."""
        return {"samples": self.samples, "preprocess": self.preprocess, "seed": self.seed, **self.shapes()}


@dataclass(frozen=True, kw_only=True)
class ExecutorOptions:
    """Where the independent pieces of a command run (qtool.parallel, docs/ray.md)."""

    executor: str = option("local", "Where independent pieces of work run: local (this process), or ray (tasks on a "
                                    "Ray cluster, same results; pip install 'qtool[ray]').", choices=EXECUTORS)
    ray_address: str | None = option(None, "--executor ray: the cluster, 'auto' (the one 'ray start --head' started "
                                           "here) or host:port [a Ray started for this run].")

    def make_executor(self):
        """The executor these options ask for (a Ray connection is made here)."""
        from qtool.parallel.executor import make_executor

        return make_executor(self.executor, self.ray_address)


@dataclass(frozen=True, kw_only=True)
class EvaluationOptions(ExecutorOptions, DataOptions):
    """The evaluation set and what is measured on it: analyze and mixed-precision."""

    eval_data: DataArg = option(None, "Evaluation data (default: --data).")
    eval_samples: int = option(64, "Evaluation samples (cached in memory; every setting runs over all of them).",
                               bounds=(1, None))
    labels: LabelsArg = option(None, "Integer labels of the evaluation samples (.npy/.txt): metric accuracy.")
    metric: str | None = option(
        None, f"What to keep: {', '.join(BUILTIN_METRICS)} or module:function / file.py:function "
              "(f(outputs, reference, labels) -> float, higher is better) [accuracy with --labels, else "
              "channel_sqnr: the worst channel's SQNR over the outputs].")
    config: str = option("default", "Runtime config, when calibrating first.")
    jobs: int = option(1, "Processes for the sensitivity runs (each gets a share of the cores).", bounds=(1, 64))
