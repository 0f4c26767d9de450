"""The encodings half of a pair: `EncodingSet` (the core type, `encoding_set`), AIMET's file
formats 1.0.0 / 0.6.1 / 2.0.0 (`formats`), writing (`write`) and reading with validation (`read`)."""
