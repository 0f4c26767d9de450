"""The library's front door: one plain function per subcommand, `(model, output, options) ->
Report`, and COMMANDS (registry.py), the table the CLI and recipes both read.

A command reads its inputs (inputs.py: pairs, data, labels), calls its step, writes its outputs
atomically and returns a Report (report.py); it prints nothing. Its options are a dataclass
whose fields carry defaults, help and checks (fields.py, options.py for the shared groups).
Each command module also has an in-memory half (`calibrate_model`, `fold_model`, ...) that the
Python API (qtool.api) calls on models and arrays it holds."""
