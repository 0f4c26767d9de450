"""One module per user-facing job. A step reads nothing from disk and prints nothing: it takes
models, encodings and batches, and returns results; the CLI and recipes do the IO."""
