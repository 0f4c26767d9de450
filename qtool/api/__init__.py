"""The public Python API (`import qtool`): `Pair` and `load` (pair.py), and one function per
command on models and arrays in memory (functions.py). docs/api.md shows it at work."""
