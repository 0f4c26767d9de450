"""The ground floor for files (standard library only): atomic writes and staged pairs
(`atomic`), inputs never overwritten (`output_guard`), names and paths that stay where they
belong (`safe_paths`), strict JSON out (`strict_json`), bounded text, JSON and YAML in
(`input_text`, `yaml_safe`)."""
