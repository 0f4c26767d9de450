"""calibrate's block-wise weight options: --weight-block-size, --lpbq, --weight-rounding gptq.

Calibration itself is unchanged (the config and --param-bw decide which tensors get which grid);
afterwards MatMul / Gemm weight encodings become per block (`qtool.steps.blockwise`) and, with
``--weight-rounding gptq``, those weights are rounded by GPTQ layer by layer from the calibration
data (`qtool.steps.gptq`), which changes the model's weights: the pair is then written with them
and the encodings frozen, as AdaRound's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from qtool.commands.fields import option
from qtool.commands.report import Report
from qtool.errors import QtoolError

WEIGHT_ROUNDINGS = ("nearest", "gptq")


@dataclass(frozen=True, kw_only=True)
class BlockOptions:
    """The options calibrate takes for block-wise weights (docs/blockwise.md)."""

    weight_block_size: int | None = option(
        None, "Per-block weights: MatMul/Gemm weights get one scale per N inputs (32, 64, 128; a last shorter block "
              "is allowed) at the config's weight bit-width, e.g. --config w4-weight-only or w4a16. Written in "
              "AIMET's 2.0.0 format (--encoding-version 2.0.0).", bounds=(1, None), metavar="N")
    lpbq: bool = option(False, "With --weight-block-size: AIMET's LPBQ, block scales as integers 1..2^bw times one "
                               "float scale per output channel (symmetric).")
    weight_rounding: str = option(
        "nearest", "MatMul/Gemm weights: nearest, or gptq (each layer's rounding error spread over its other inputs "
                   "by the Hessian of its input rows, layer by layer from --data; PREFIX.onnx then holds the new "
                   "weights, their encodings frozen; needs -o).", choices=WEIGHT_ROUNDINGS)


def check_block_options(options: BlockOptions, output, encoding_version: str) -> None:
    """The options alone, before any file is read."""
    if options.lpbq and options.weight_block_size is None:
        raise QtoolError("--lpbq: LPBQ is a per-block encoding", "add --weight-block-size N (e.g. 32)")
    if options.weight_block_size is not None and encoding_version != "2.0.0":
        raise QtoolError(f"--weight-block-size: per-block encodings are written in AIMET's 2.0.0 format only, "
                         f"not {encoding_version}", "add --encoding-version 2.0.0")
    if options.weight_rounding == "gptq" and output is None:
        raise QtoolError("--weight-rounding gptq: the weights change, so the pair is a new model",
                         "give -o PREFIX (the input model is never modified)")


def refuse_block_pair(pair: tuple, command: str) -> tuple:
    """`pair` (model, encodings, source) from `load_pair`, or one line when its encodings are per
    block: only simulate and export take those (docs/blockwise.md)."""
    from qtool.quant.blockwise import BlockEncoding

    name = next((n for n, e in pair[1].params.items() if isinstance(e, BlockEncoding)), None)
    if name is not None:
        raise QtoolError(f"{pair[2]}: '{name}' has a per-block encoding, which {command} does not take",
                         "simulate and export take block-wise pairs; calibrate --weight-rounding gptq "
                         "is their error-compensating rounding")
    return pair


def apply_block_options(graph, encodings, options: BlockOptions, batches, progress) -> tuple:
    """(model, encodings, Report of what changed) after the block and GPTQ options; the model is
    `graph` itself unless GPTQ changed weights."""
    lines: list[str] = []
    summary: dict = {}
    if options.weight_block_size is not None:
        from qtool.steps.blockwise import block_encodings

        blocked = block_encodings(graph, encodings, options.weight_block_size, lpbq=options.lpbq,
                                  search=getattr(options, "param_scheme", "minmax") == "mse")
        encodings = blocked.encodings
        kind = "LPBQ" if options.lpbq else "per-block"
        summary["blocked_weights"] = blocked.blocked
        lines.append(f"{kind} weights (blocks of {options.weight_block_size} inputs): {len(blocked.blocked)} "
                     f"MatMul/Gemm weight(s)" + (f"; left as they were: {len(blocked.skipped)}" if blocked.skipped
                                                 else ""))
        reasons = Counter(reason for _, reason in blocked.skipped)
        lines += [f"  kept their encoding: {count} weight(s): {reason}" for reason, count in sorted(reasons.items())]
        summary["kept_weights"] = [{"weight": name, "reason": reason} for name, reason in blocked.skipped]
        if not blocked.blocked:
            raise QtoolError("--weight-block-size: no MatMul/Gemm weight has an integer encoding to make per block",
                             "use a config that quantizes their weights (e.g. --config w4-weight-only)")
    if options.weight_rounding == "gptq":
        from qtool.steps.gptq import gptq

        done = gptq(graph, encodings, batches, progress=progress("gptq"))
        graph, encodings = done.model, done.encodings
        summary["gptq"] = [{"layer": x.layer, "error_nearest": round(x.error_nearest, 6),
                            "error_gptq": round(x.error_gptq, 6)} for x in done.layers]
        if done.layers:
            mean = lambda key: sum(getattr(x, key) for x in done.layers) / len(done.layers)  # noqa: E731
            lines.append(f"gptq: {len(done.layers)} layers in {done.seconds:.1f}s, relative output error of a layer "
                         f"on its inputs {mean('error_nearest'):.4f} (nearest) -> {mean('error_gptq'):.4f} (mean)")
    return graph, encodings, Report(summary, lines)
