"""The `qtool` command line: the group, its error handling, and one click command per entry of
qtool.commands.registry.COMMANDS (built by qtool.cli.build), plus `run` (qtool.cli.run).

Errors the user can cause print one line (`qtool: error: ...`) and exit with code 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys

import click

# Only light modules at the top: building the command tree (and a recipe run whose steps are all
# up to date) must not pay for onnx, onnx_ir and onnxruntime (about 1 s). The command functions
# import them in their bodies.
from qtool._version import __version__
from qtool.cli.build import click_command
from qtool.cli.run import run_cmd
from qtool.commands.registry import COMMANDS
from qtool.errors import report_exception


class QtoolGroup(click.Group):
    """Turns a QtoolError from any command into one line on stderr and exit code 2
    (`--debug` lets it through with its traceback), in the console script and in CliRunner alike."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # `qtool info m.onnx | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
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

    -o means one thing per kind of output: a PREFIX for the commands that write a pair
    (PREFIX.onnx + PREFIX.encodings.json: calibrate, bias-correct, adaround), a FILE for one-file
    outputs (fold, equalize, simulate's QDQ model, plot-ranges' image), a FOLDER for several files
    (export, analyze, mixed-precision). calibrate without -o writes beside the model.

    Example: qtool calibrate model.onnx --data calib.npz -o out/model
    """
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="qtool: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("onnx_ir").setLevel(logging.DEBUG if debug else logging.WARNING)


for _command in COMMANDS.values():
    cli.add_command(click_command(_command))
cli.add_command(run_cmd)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Usage errors (a missing argument, a folder where a file belongs, an
    unknown option) are one line and exit 2 like every other user error, not click's usage block."""
    try:
        code = cli.main(args=argv, prog_name="qtool", standalone_mode=False)
    except _NO_ARGS as exc:  # bare `qtool` / `qtool calibrate`-style groups: the help, as click shows it
        click.echo(exc.format_message())
        sys.exit(exc.exit_code)
    except click.exceptions.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"qtool: error: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.ClickException as exc:
        click.echo(f"qtool: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("qtool: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
