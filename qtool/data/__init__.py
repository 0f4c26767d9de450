"""Calibration and evaluation data: `--data` (files, folders, images, random, or in-memory
arrays from the Python API) -> validated batches of one shape each (`sources`), checked against
what the model expects (`inputs`, `checks`, `arrays`)."""
