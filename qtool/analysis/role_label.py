"""How a quantizer group is named in the CLI and the report: 'MatMul: attention scores Q.K^T'.

Apart from roles.py (which reads graphs with onnx_ir) so that building the command tree and
rendering a report import no graph library."""

from __future__ import annotations


def describe(op_type: str, role: str | None) -> str:
    """'MatMul' or 'MatMul: attention scores Q.K^T' (roles.node_roles gives the role)."""
    return f"{op_type}: {role}" if role else op_type
