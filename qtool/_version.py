"""qtool's version, on the ground floor: files qtool writes record it, and `qtool/__init__.py` (the
public API, the top of the house) re-exports it."""

__version__ = "0.1.0"
