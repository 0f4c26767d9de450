"""Click commands built from the registry: parse, call the command's function, print its Report.

Every option comes from a field of the command's options dataclass (qtool.commands.fields):
its flag, default, help, bounds and choices. Values are converted by the same function recipes
and the Python API use, wrapped in click types that keep click's help (ranges, choices); a value
it refuses (`--percentile nan`, `--act-bw 40`, `--scheme best`) is one line, `qtool: error:
--percentile: ...`, exit code 2, like every other user error.
"""

from __future__ import annotations

from typing import Any

import click

from qtool.commands.fields import Field, convert_one
from qtool.commands.registry import Command, Output
from qtool.commands.report import Report
from qtool.errors import QtoolError
from qtool.files import strict_json


class _Checked(click.ParamType):
    """Converts with qtool.commands.fields.convert_one; a refused value is a one-line QtoolError."""

    field: Field
    kind: str

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return convert_one(self.field, self.kind, value)
        except ValueError as exc:
            raise QtoolError(f"{self.field.flag.split('/')[0]}: {exc}") from None


class _Int(_Checked, click.types.IntParamType):
    pass


class _IntRange(_Checked, click.IntRange):
    pass


class _Float(_Checked, click.types.FloatParamType):
    pass


class _FloatRange(_Checked, click.FloatRange):
    pass


class _Choice(_Checked, click.Choice):
    pass


def _click_type(field: Field, kind: str) -> click.ParamType | None:
    """The click type for one value of `field` (None: a plain string, nothing to check)."""
    spec = field.spec
    if kind == "str":
        if not spec.choices:
            return None
        made: _Checked = _Choice(spec.choices, case_sensitive=spec.case_sensitive)
    elif kind in ("int", "float"):
        low, high = spec.bounds or (None, None)
        if spec.bounds is None:
            made = _Int() if kind == "int" else _Float()
        else:
            made = (_IntRange if kind == "int" else _FloatRange)(min=low, max=high)
    else:
        raise TypeError(f"{field.name}: no click type for kind {kind!r}")
    made.field, made.kind = field, kind
    return made


def click_option(field: Field) -> click.Option:
    """The click option for one field of a command's options."""
    spec = field.spec
    declared = [field.flag, field.name]
    settings: dict[str, Any] = {"help": spec.help, "required": field.required}
    if not field.required:
        settings["default"] = field.default
        settings["show_default"] = not (field.default is None or field.default is False or field.default == ())
    if spec.metavar:
        settings["metavar"] = spec.metavar
    if field.kind == "bool":
        if "/" not in field.flag:
            settings["is_flag"] = True
    elif field.kind == "strings":
        settings["multiple"] = True
    elif field.kind == "float_pair":
        settings.update(nargs=2, type=_click_type(field, "float"))
    elif field.kind in ("int", "float", "str"):
        kind = _click_type(field, field.kind)
        if kind is not None:
            settings["type"] = kind
    return click.Option(declared, **settings)


def output_option(output: Output) -> click.Option:
    """-o as the command reads it: --output PREFIX / FILE, or --output-dir FOLDER."""
    long = "--output-dir" if output.kind == "folder" else "--output"
    metavar = {"prefix": "PREFIX", "file": "FILE", "folder": "FOLDER"}[output.kind]
    return click.Option(["-o", long, "output"], required=output.required, metavar=metavar, help=output.help)


def emit(report: Report, as_json: bool) -> None:
    """Print a Report: its summary as JSON (--json), else its lines."""
    if as_json:
        click.echo(strict_json.dumps(report.summary, default=str))
    else:
        for line in report.lines:
            click.echo(line)


def click_command(command: Command) -> click.Command:
    """The click command for a registry entry: MODEL, its options, -o, --json."""
    params: list[click.Parameter] = [click.Argument(["model"], type=click.Path(dir_okay=False))]
    params += [click_option(field) for field in command.fields.values()]
    if command.output is not None:
        params.append(output_option(command.output))
    params.append(click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON (for scripts)."))

    def callback(model: str, as_json: bool = False, output: str | None = None, **values: Any) -> Report:
        report = command(model, output, **values)
        emit(report, as_json)
        return report

    return click.Command(command.name, params=params, callback=callback, help=command.help)
