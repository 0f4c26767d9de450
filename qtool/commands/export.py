"""`export`: the deployable files of a pair, NAME.onnx, NAME.encodings and NAME_qdq.onnx, in a folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qtool.commands.fields import option
from qtool.commands.options import ENCODINGS_HELP, encoding_version
from qtool.commands.report import Report

TARGETS = ("qdq", "ort-cpu", "matmulnbits")  # as qtool.steps.export.TARGETS (not imported: the CLI stays light)
FUSED_ACTIVATIONS = ("float", "bounded", "auto", "integer")  # as qtool.ir.ort_cpu.FUSED


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    encodings: str | None = option(None, ENCODINGS_HELP)
    prefix: str = option("model", "File name prefix NAME.")
    encoding_version: str = encoding_version()
    target: str = option("qdq", "NAME_qdq.onnx for: 'qdq', the model the encodings describe (any runtime, "
                                "accelerators); 'ort-cpu', the same model in the forms onnxruntime's CPU provider "
                                "fuses (docs/deploy.md); 'matmulnbits', per-block MatMul/Gemm weights as onnxruntime's "
                                "4/8-bit MatMulNBits (docs/blockwise.md). NAME.encodings is the same for all.",
                    choices=TARGETS)
    fused_activations: str = option("auto", "--target ort-cpu: which tensors the encodings leave unquantized "
                                            "inside one fused activation get a grid, so that integer kernels run "
                                            "them: 'float' none (the encodings' numbers; those Convs run in float "
                                            "with float weights); 'bounded' a Conv output before a relu6 and a "
                                            "SiLU's gate (off by at most one step of a grid the encodings hold); "
                                            "'auto' also a Conv output before a hard-swish where the integer kernel "
                                            "is faster and adds at most two steps of the hard-swish's grid (a "
                                            "measured rule; the kernel report names the layers left float and "
                                            "why); 'integer' every such Conv output (measured per model in "
                                            "docs/deploy.md).",
                                    choices=FUSED_ACTIVATIONS)


def export(model: str | os.PathLike, output: str | os.PathLike, options: ExportOptions) -> Report:
    """Write NAME.onnx (float), NAME.encodings (AIMET JSON) and NAME_qdq.onnx (integer QDQ model).

    Example: qtool export out/model.onnx -o deploy --prefix mynet --target ort-cpu
    """
    from qtool.commands.inputs import load_pair
    from qtool.ir.external_data import copy_model_file

    _check(options)
    graph, enc_set, enc_source = load_pair(model, options.encodings)
    return write_export(graph, enc_set, enc_source, output, options,
                        lambda path: copy_model_file(model, path))


def _check(options: ExportOptions) -> None:
    """The options alone, before any file is read."""
    from qtool.errors import QtoolError
    from qtool.files.safe_paths import check_file_stem

    check_file_stem(options.prefix, "--prefix")
    if options.target != "ort-cpu" and options.fused_activations != "auto":
        raise QtoolError(f"--fused-activations {options.fused_activations}: applies to --target ort-cpu only",
                         "add --target ort-cpu (the plain QDQ model keeps the encodings' placement)")


def write_export(graph, encodings, source: str, output: str | os.PathLike, options: ExportOptions,
                 write_float) -> Report:
    """Export a pair held in memory: `write_float(path)` writes its float model (a copy of the
    model file for the command, a save for the Python API)."""
    from qtool.encodings.write import save_encodings
    from qtool.files.atomic import StagedOutputs
    from qtool.ir.graph import save_model
    from qtool.runtime.kernels import kernel_summary
    from qtool.steps.export import export as export_step

    _check(options)
    from qtool.encodings.blocks import refuse_blocks

    refuse_blocks(encodings.params, options.encoding_version)  # before any file is written
    result = export_step(graph, encodings, source=source, target=options.target,
                         fused=options.fused_activations)
    folder, prefix = Path(output), options.prefix
    with StagedOutputs() as out:
        write_float(out.path(folder / f"{prefix}.onnx"))
        save_encodings(result.encodings, out.path(folder / f"{prefix}.encodings"), options.encoding_version)
        save_model(result.qdq_model, out.path(folder / f"{prefix}_qdq.onnx"))
    files = [str(folder / name) for name in (f"{prefix}.onnx", f"{prefix}.encodings", f"{prefix}_qdq.onnx")]
    kernels = kernel_summary(result.qdq_model, files[2])  # what onnxruntime runs of it: qtool bench has the details
    summary = {"files": files, "onnxruntime": kernels, "target": options.target}
    lines = ["wrote " + ", ".join(files), kernels]
    if result.rewrites:
        summary["rewrites"] = result.rewrites
        done = [f"{REWRITES.get(key, key)} {count}" for key, count in result.rewrites.items() if count]
        lines.insert(1, f"{options.target} forms: " + (", ".join(done) or "none applied"))
    elif options.target == "qdq" and " stay float" in kernels:
        lines.append("  to run on onnxruntime's CPU provider, --target ort-cpu writes forms it fuses "
                     "(docs/deploy.md); `qtool bench` times it against float")
    return Report(summary, lines)


REWRITES = {"pads": "Pads folded into Convs", "derived": "hard-swish Convs given an output grid",
            "clipped": "clipped Convs given an output grid", "gates": "sigmoid gates given the grid [0, 1]",
            "hard_swish": "HardSwish ops", "same_grid": "outputs on their input's grid",
            "uint8": "int8 grids as uint8", "float_constants": "constants of float nodes stored in float",
            "matmulnbits": "MatMulNBits layers",
            "kept_float": "layers left float (integer slower or coarser: see the kernel report)",
            "blocks_kept": "per-block layers kept as DequantizeLinear"}
