"""The `qtool` command line: parse options, call one step, print a summary. No logic here.

Errors the user can cause print one line (`qtool: error: ...`) and exit with code 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click

# Only light modules at the top: building the command tree (and a recipe run whose steps are all
# up to date) must not pay for onnx, onnx_ir and onnxruntime (about 1 s). Each command imports
# the steps it calls in its body.
from qtool._version import __version__
from qtool.encodings.formats import ENCODING_VERSIONS
from qtool.encodings.write import save_encodings
from qtool.errors import QtoolError, report_exception
from qtool.files import strict_json
from qtool.files.atomic import StagedOutputs
from qtool.metrics.comparison import describe_metrics, hidden_channels
from qtool.plan.config import BUILTIN_CONFIGS, load_config
from qtool.plan.overrides import load_overrides
from qtool.progress import Bar
from qtool.quant.observers import ACTIVATION_SCHEMES, SCHEMES, SQNR_GAMMA

log = logging.getLogger("qtool")


def data_options(func):
    """--data/--samples/--batch-size/--preprocess/--seed/--input-shape/--vocab-size, shared by every
    command that reads data."""
    options = [
        click.option("--data", "data", required=True,
                     help="Calibration data: .npz (arrays keyed by input name), .npy, a folder of those "
                          "or of images, or 'random' (smoke tests only)."),
        click.option("--samples", type=click.IntRange(min=1), default=None, help="Use at most N samples."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Samples per onnxruntime run (memory grows with it, not with --samples)."),
        click.option("--preprocess", default=None,
                     help="Image folders: 'size=224x224,mean=127.5,std=127.5,layout=NCHW,order=RGB'."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for --data random."),
    ]
    for option in reversed(options):
        func = option(func)
    return shape_options(func)


def shape_options(func):
    """--input-shape/--vocab-size: what --data random needs to make data the model accepts."""
    func = click.option("--vocab-size", type=click.IntRange(min=1), default=None,
                        help="--data random: integer ids below N (and below the embedding table's rows, "
                             "which qtool finds itself where ids feed a Gather).")(func)
    return click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=1x3xHxW",
                        help="Shape of input NAME, repeatable: fills its dynamic dims (and same-named dims of "
                             "other inputs) for --data random, and data must match it. The first (batch) dim "
                             "is ignored: --batch-size sets it.")(func)


def overrides_option(func):
    return click.option("--overrides", default=None,
                        help="Per-tensor/per-node overrides JSON (bit-width, symmetry, per-channel, exclude, fixed "
                             "range), e.g. written by analyze or mixed-precision; applied last.")(func)


def read_overrides(path: str | None) -> tuple:
    return load_overrides(path) if path else ()


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")(func)


@dataclass(frozen=True)
class Report:
    """What a command did: `summary` for scripts (--json, recipes' run.json), `lines` for people."""

    summary: dict
    lines: list[str]


def _emit(summary: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(strict_json.dumps(summary, default=str))
    else:
        for line in lines:
            click.echo(line)


def reporting(step: Callable[..., Report]) -> Callable[..., Report]:
    """Make a step function a command body: print its Report (as JSON with --json) and return it.

    The undecorated step stays reachable as `command.callback.__wrapped__`: `qtool run` calls it
    with the same options, so a recipe step and the command are one implementation.
    """

    @functools.wraps(step)
    def command(*args, as_json: bool = False, **options) -> Report:
        report = step(*args, **options)
        _emit(report.summary, as_json, report.lines)
        return report

    return command


class QtoolGroup(click.Group):
    """Turns a QtoolError from any command into one line on stderr and exit code 2
    (`--debug` lets it through with its traceback), in the console script and in CliRunner alike."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # one line for user errors (and MemoryError), else a bug report request
            if (ctx.obj or {}).get("debug"):
                raise
            ctx.exit(report_exception(exc, lambda text: click.echo(text, err=True)))


@click.group(cls=QtoolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qtool")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Quantize ONNX models the AIMET way: calibrate, simulate, export.

    Example: qtool calibrate model.onnx --data calib.npz -o out/model
    """
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="qtool: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("onnx_ir").setLevel(logging.DEBUG if debug else logging.WARNING)


def fold_note(graph) -> list[str]:
    """A report line when batch norms that `qtool fold` would remove are still in the model (a
    note, not a warning: folding usually helps, PP-OCRv4 min-max 90.1% -> 97.9%, but not always,
    the bundled classifier loses 2 dB)."""
    from qtool.steps.fold import foldable_batch_norms

    count = foldable_batch_norms(graph)
    if not count:
        return []
    return [f"note: {count} BatchNormalization node(s) follow a layer and were quantized apart from it; "
            f"'qtool fold' folds them (exact), as the white paper advises"]


@cli.command("calibrate")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@click.option("--config", default="default", show_default=True,
              help=f"AIMET runtime config JSON, or a built-in target: {', '.join(BUILTIN_CONFIGS)}.")
@click.option("--scheme", type=click.Choice(ACTIVATION_SCHEMES, case_sensitive=False), default="sqnr",
              show_default=True,
              help="Activation range setting: minmax (AIMET tf), sqnr (tf_enhanced), percentile, mse, or auto: "
                   "all four from one pass, keep the one whose simulated outputs are closest to float.")
@click.option("--param-scheme", type=click.Choice(SCHEMES, case_sensitive=False), default="minmax",
              show_default=True, help="Weight range setting.")
@click.option("--percentile", type=click.FloatRange(50, 100), default=99.99, show_default=True,
              help="Percentile for --scheme percentile.")
@click.option("--auto-samples", type=click.IntRange(min=1), default=32, show_default=True,
              help="--scheme auto: calibration samples each candidate scheme is simulated on.")
@click.option("--sqnr-gamma", type=click.FloatRange(min=1), default=SQNR_GAMMA, show_default=True,
              help="--scheme sqnr: weight of clipping noise against rounding noise (AIMET's tf_enhanced: 3).")
@click.option("--param-bw", type=click.IntRange(2, 16), default=None, help="Weight bit-width (overrides the config).")
@click.option("--act-bw", type=click.IntRange(2, 16), default=None, help="Activation bit-width (overrides the config).")
@click.option("--per-channel/--per-tensor", default=None, help="Weight granularity (overrides the config).")
@click.option("--symmetric-weights/--asymmetric-weights", default=None,
              help="Weight grid symmetry (overrides the config; AIMET's default is symmetric).")
@click.option("--encodings", default=None,
              help="Existing encodings: the frozen ones (e.g. from adaround) are kept unchanged.")
@overrides_option
@click.option("--encoding-version", type=click.Choice(ENCODING_VERSIONS), default="1.0.0", show_default=True,
              help="AIMET encodings format to write.")
@click.option("-o", "--output", required=True,
              help="Output prefix: writes PREFIX.onnx (the float model) and PREFIX.encodings.json.")
@json_option
@reporting
def calibrate_cmd(model, data, samples, batch_size, preprocess, seed, input_shape, vocab_size, config, scheme, param_scheme, percentile,
                  auto_samples, sqnr_gamma, param_bw, act_bw, per_channel, symmetric_weights, encodings, overrides, encoding_version, output):
    """Compute quantization encodings (scale/offset per tensor or channel) from calibration data.

    Example: qtool calibrate model.onnx --data calib.npz --config w8a8-per-channel -o out/model
    """
    from qtool.io import load_pair, open_model_data, output_prefix
    from qtool.ir.external_data import copy_model_file
    from qtool.ir.graph import load_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.steps.calibrate import CalibrateOptions, calibrate

    prefix = output_prefix(output)
    if encodings:
        graph, frozen, _ = load_pair(model, encodings)
    else:
        graph, frozen = load_model(model), None
    plan = build_plan(graph, load_config(config), PlanOptions(act_bw, param_bw, per_channel, symmetric_weights,
                                                              read_overrides(overrides)))
    source = open_model_data(graph, data, samples=samples, preprocess=preprocess, seed=seed,
                             input_shapes=input_shape, vocab_size=vocab_size)
    options = CalibrateOptions(scheme.lower(), param_scheme.lower(), percentile, batch_size, sqnr_gamma, auto_samples)
    result = calibrate(graph, plan, lambda: source.batches(batch_size), options, frozen=frozen,
                       total=source.count(), progress=Bar("calibrate"))
    with StagedOutputs() as out:
        copy_model_file(model, out.path(f"{prefix}.onnx"))
        save_encodings(result.encodings, out.path(f"{prefix}.encodings.json"), encoding_version)
    summary = {
        "model": f"{prefix}.onnx", "encodings": f"{prefix}.encodings.json", "samples": result.samples,
        "seconds": round(result.seconds, 3), "activation_quantizers": len(result.encodings.activations),
        "param_quantizers": len(result.encodings.params), "kept_frozen": result.kept_frozen,
        "scheme": result.scheme, **({"scheme_scores": result.scheme_scores} if result.scheme_scores else {}),
        "mixed_joins": [dataclasses.asdict(join) for join in result.mixed_joins],
    }
    chosen = [f"scheme auto: {result.scheme} (on {auto_samples} samples: "
              + ", ".join(f"{k} {_scores_text(v)}" for k, v in result.scheme_scores.items()) + ")"] \
        if result.scheme_scores else []
    return Report(summary, [
        f"calibrated {result.samples} samples in {result.seconds:.1f}s: "
        f"{summary['activation_quantizers']} activation + {summary['param_quantizers']} param encodings",
        *chosen,
        *(f"mixed ranges: {join.describe()}" for join in result.mixed_joins),
        f"wrote {prefix}.onnx and {prefix}.encodings.json",
        *fold_note(graph),
    ])


def _scores_text(scores: dict[str, float]) -> str:
    agreement = scores.get("decision_agreement")
    return (f"{100 * agreement:.2f}% argmax agreement, " if agreement is not None else "") + f"{scores['sqnr_db']:.2f} dB"


@cli.command("simulate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--encodings", default=None, help="Encodings JSON (default: MODEL's sibling .encodings.json).")
@data_options
@click.option("--labels", default=None, help="Integer class labels (.npy or .txt, one per sample) for accuracy.")
@click.option("--bypass", is_flag=True, help="FP32 sanity check: insert no quantizer (must match float exactly).")
@click.option("--reference", default=None,
              help="Float model to compare against (default: MODEL itself); e.g. the original model "
                   "after equalize or bias-correct changed MODEL's float function.")
@click.option("--channel-axis", "channel_axis", multiple=True, metavar="NAME=AXIS",
              help="The axis of output NAME whose channels get their own SQNR (default: axis 1, the last for "
                   "[N, T, C] sequences, the axis of a Concat that makes the output, none for Softmax "
                   "probabilities; 'none': pooled only). Repeatable.")
@click.option("-o", "--output", default=None, help="Also write the QDQ model to this .onnx file.")
@json_option
@reporting
def simulate_cmd(model, encodings, data, samples, batch_size, preprocess, seed, input_shape, vocab_size, labels, bypass, reference, output,
                 channel_axis=()):
    """Run the QDQ model next to the float model and report SQNR, top-1 agreement and accuracy.

    Example: qtool simulate out/model.onnx --data eval.npz --labels eval_labels.npy
    """
    from qtool.io import load_labels, load_pair, open_model_data
    from qtool.ir.graph import load_model, save_model
    from qtool.metrics.channels import parse_channel_axes
    from qtool.steps.simulate import simulate

    if bypass:
        graph, enc_set, enc_source = load_model(model), None, "bypass"
    else:
        graph, enc_set, enc_source = load_pair(model, encodings)
    source = open_model_data(graph, data, samples=samples, preprocess=preprocess, seed=seed,
                             input_shapes=input_shape, vocab_size=vocab_size)
    label_array = load_labels(labels, graph, source) if labels else None
    result = simulate(graph, enc_set, source.batches(batch_size), labels=label_array, bypass=bypass,
                      total=source.count(), progress=Bar("simulate"), source=enc_source,
                      reference=load_model(reference) if reference else None,
                      channel_axes=parse_channel_axes(graph, channel_axis))
    if output:
        save_model(result.qdq_model, output)
    summary = {"samples": result.samples, "seconds": round(result.seconds, 3), "outputs": result.report}
    lines = [f"simulated {result.samples} samples in {result.seconds:.1f}s"]
    for name, row in result.report.items():
        lines.append(f"  {name}: {describe_metrics(row)}, max |err| {row['max_abs_error']:.4g}")
        hidden = hidden_channels(row)
        if hidden:
            lines.append(f"  {name}: {hidden}")
    if output:
        lines.append(f"wrote {output}")
    return Report(summary, lines)


@cli.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--encodings", default=None, help="Encodings JSON (default: MODEL's sibling .encodings.json).")
@click.option("-o", "--output-dir", required=True, help="Directory for the exported files.")
@click.option("--prefix", default="model", show_default=True, help="File name prefix NAME.")
@click.option("--encoding-version", type=click.Choice(ENCODING_VERSIONS), default="1.0.0", show_default=True,
              help="AIMET encodings format to write.")
@json_option
@reporting
def export_cmd(model, encodings, output_dir, prefix, encoding_version):
    """Write NAME.onnx (float), NAME.encodings (AIMET JSON) and NAME_qdq.onnx (integer QDQ model).

    Example: qtool export out/model.onnx -o deploy --prefix mynet
    """
    from qtool.files.safe_paths import check_file_stem
    from qtool.io import load_pair
    from qtool.ir.external_data import copy_model_file
    from qtool.ir.graph import save_model
    from qtool.steps.export import export

    check_file_stem(prefix, "--prefix")
    graph, enc_set, enc_source = load_pair(model, encodings)
    result = export(graph, enc_set, source=enc_source)
    folder = Path(output_dir)
    with StagedOutputs() as out:
        copy_model_file(model, out.path(folder / f"{prefix}.onnx"))
        save_encodings(result.encodings, out.path(folder / f"{prefix}.encodings"), encoding_version)
        save_model(result.qdq_model, out.path(folder / f"{prefix}_qdq.onnx"))
    files = [str(folder / name) for name in (f"{prefix}.onnx", f"{prefix}.encodings", f"{prefix}_qdq.onnx")]
    return Report({"files": files}, ["wrote " + ", ".join(files)])


@cli.command("plot-ranges")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--compare", default=None, help="A second model (e.g. after equalize) drawn beside the first.")
@click.option("--layers", default=None, help="Comma-separated layer names (default: the widest-spread ones).")
@click.option("--max-layers", type=click.IntRange(min=1), default=8, show_default=True, help="Layers to draw.")
@click.option("-o", "--output", required=True, help="Image file: .png, .svg or .pdf.")
def plot_ranges_cmd(model, compare, layers, max_layers, output):
    """Draw per-output-channel weight ranges of each layer (white paper figures 4.2-4.3).

    Needs matplotlib (pip install 'qtool[plots]').

    Example: qtool plot-ranges folded.onnx --compare equalized.onnx -o ranges.png
    """
    from qtool.ir.graph import load_model
    from qtool.plots import plot_ranges
    from qtool.weight_ranges import layer_ranges

    names = [n.strip() for n in layers.split(",")] if layers else None
    before = layer_ranges(load_model(model), names)
    after = layer_ranges(load_model(compare), None) if compare else None
    plot_ranges(before, after, path=output, layers=names, max_layers=len(before) if names else max_layers)
    click.echo(f"wrote {output}")


@cli.command("info")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--config", default="default", show_default=True, help="Runtime config for the quantizer plan.")
@click.option("--per-channel/--per-tensor", default=None, help="Weight granularity (overrides the config).")
@overrides_option
@click.option("--ranges", "show_ranges", is_flag=True,
              help="Per layer, the widest/narrowest output-channel weight range ratio (high: CLE helps).")
@click.option("--compare", default=None, help="With --ranges: a second model (e.g. after equalize) side by side.")
@click.option("--data", default=None,
              help="Calibration data (as for calibrate): one min-max pass shows the decisions that need "
                   "ranges (Concats whose parts get their own grids).")
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True, help="With --data: samples used.")
@json_option
def info_cmd(model, config, per_channel, overrides, show_ranges, compare, data, samples, as_json):
    """Inputs, outputs, op counts, parameter count and the tensors the plan would quantize.

    Example: qtool info model.onnx --config w8a8-per-channel
    """
    from qtool.ir.graph import load_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.runtime.sessions import input_infos
    from qtool.weight_ranges import format_table, layer_ranges, ranges_table

    graph = load_model(model)
    if show_ranges:
        after = layer_ranges(load_model(compare)) if compare else None
        rows = ranges_table(layer_ranges(graph), after)
        _emit({"layers": rows}, as_json, [format_table(rows)])
        return
    plan = build_plan(graph, load_config(config), PlanOptions(per_channel=per_channel, overrides=read_overrides(overrides)))
    ops: dict[str, int] = {}
    for node in graph.graph:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    params = sum(int(v.const_value.size) for v in graph.graph.initializers.values() if v.const_value is not None)
    summary = {
        "inputs": {i.name: [d if d is not None else "?" for d in (i.shape or ())] for i in input_infos(graph)},
        "outputs": [o.name for o in graph.graph.outputs],
        "opset": graph.opset_imports.get("", None),
        "op_types": dict(sorted(ops.items())),
        "parameters": params,
        "quantizers": {name: {"kind": t.kind, "role": t.role, "bw": t.spec.bw, "symmetric": t.spec.symmetric,
                              "per_channel_axis": t.spec.axis} for name, t in plan.all().items()},
        "fused_in_supergroups": plan.fused,
        "attention_mask_unquantized": plan.masked,
        "layer_norm_inputs_widened": plan.widened,
    }
    joins = _mixed_joins_of(graph, plan, data, samples) if data else None
    if joins is not None:
        summary["mixed_joins"] = [dataclasses.asdict(join) for join in joins]
    lines = [f"{model}: opset {summary['opset']}, {sum(ops.values())} nodes, {params:,} parameters"]
    lines += [f"  input  {n}: {s}" for n, s in summary["inputs"].items()]
    lines += [f"  output {n}" for n in summary["outputs"]]
    lines.append("  ops: " + ", ".join(f"{k} x{v}" for k, v in summary["op_types"].items()))
    lines.append(f"  plan ({config}): {len(plan.activations)} activation quantizers, {len(plan.params)} param "
                 f"quantizers, {len(plan.fused)} tensors fused in supergroups or pointwise functions")
    if plan.masked:
        lines.append(f"  attention mask: {len(plan.masked)} tensors left unquantized (the mask path and the masked "
                     f"scores into Softmax; config 'patterns.attention_mask')")
    if plan.widened:
        lines.append(f"  LayerNorm inputs (residual sums, their linear branches) and outputs: {len(plan.widened)} tensors "
                     f"at up to {config_rules_bw(plan)} bits (config 'patterns.layer_norm_input_bw', 'layer_norm_output_bw')")
    for name, t in plan.all().items():
        granularity = f"per-channel axis {t.spec.axis}" if t.spec.axis is not None else "per-tensor"
        lines.append(f"    {t.kind:10} {t.role:6} {t.spec.bw:2d}-bit {'sym ' if t.spec.symmetric else 'asym'} "
                     f"{granularity:20} {name}")
    rule = plan.mixed_ranges
    lines.append(f"  mixed ranges (config 'mixed_ranges'): " + (
        f"a Concat whose parts lose > {rule.max_lost_bits:g} bits on one grid -> {rule.at_output} at model "
        f"outputs, {rule.inside} inside; decided at calibration" if rule.enabled else "off"))
    if joins is not None:
        lines += [f"    {join.describe()}" for join in joins] or [f"    none on {data}"]
    _emit(summary, as_json, lines)


def config_rules_bw(plan) -> int:
    """The bit-width the plan gave its widened (LayerNorm-input) tensors."""
    return max(plan.activations[name].spec.bw for name in plan.widened)


def _mixed_joins_of(graph, plan, data: str, samples: int) -> list:
    """The mixed-range decisions calibrate would make, from one min-max pass over `data`."""
    from qtool.io import open_model_data
    from qtool.steps.calibrate import CalibrateOptions, calibrate

    source = open_model_data(graph, data, samples=samples, preprocess=None)
    return calibrate(graph, plan, lambda: source.batches(16), CalibrateOptions(scheme="minmax"),
                     total=source.count()).mixed_joins


# the post-training transforms and recipes live in their own modules; importing them registers the commands
from qtool import cli_analysis, cli_recipe, cli_transforms  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point (click's standalone mode: usage errors exit 2 as well)."""
    cli.main(args=argv, prog_name="qtool")


if __name__ == "__main__":  # pragma: no cover
    # `python -m qtool.cli` runs this file as __main__; the commands of cli_transforms/cli_recipe
    # register on the imported qtool.cli's group, so run that one.
    from qtool.cli import main as registered_main

    registered_main()
