"""YAML recipes (`qtool run`): read with line numbers, validate everything up front, run the
commands in order with make-like skipping, and gate the result. See docs/recipes.md."""
