"""The config's ``supergroups`` as aimet-onnx matches them (placement "aimet").

Mirrors ``QuantSimConfigurator._set_supergroup_configs`` (aimet_onnx/quantsim_config/
quantsim_config.py) and ``GraphSearcher.find_all_patterns_in_graph_apply_actions``
(common/graph_searcher.py): longer op lists first (ties in config order), each starting op in
graph order, a chain continues only through an op with exactly one consumer, matches are disjoint.
Only the *first* op of a match is checked against the rejections: a depthwise or 3-D Conv /
ConvTranspose (``_check_if_conv3d_or_depthwise_conv``) and an op matched by one of the
``supergroup_pass_list`` passes (aimet_passes.py). Each match disables the outputs of all its ops
but the last (``SupergroupConfigCallback``), in aimet_configure.py.
"""

from __future__ import annotations

from collections.abc import Callable

from qtool.plan.aimet_graph import Graph, Op


def _is_conv3d_or_depthwise(graph: Graph, op: Op) -> bool:
    if op.type not in ("Conv", "ConvTranspose"):
        return False
    weight = graph.constants.get(op.inputs[1]) if len(op.inputs) > 1 else None
    if weight is not None and weight.ndim == 5:
        return True
    groups = op.attr("group") or 1
    if groups == 1 or weight is None:
        return False
    if op.type == "Conv":  # [Cout, Cin / groups, kH, kW]
        return weight.shape[1] == 1
    return weight.shape[0] == groups  # ConvTranspose: [Cin, Cout / groups, kH, kW]


def _chains(graph: Graph, op: Op, pattern: tuple[str, ...], reject: Callable[[Op], bool] | None) -> list[list[Op]]:
    """``GraphSearcher._match_pattern``: every chain of `pattern` starting at `op`."""
    if op.type != pattern[0] or (reject is not None and reject(op)):
        return []
    if len(pattern) == 1:
        return [[op]]
    children = graph.output_ops(op)
    if len(children) != 1:  # a branch (or nothing after it): no match
        return []
    return [[op] + rest for rest in _chains(graph, children[0], pattern[1:], None)]


def match_supergroups(graph: Graph, patterns: tuple[tuple[str, ...], ...], pass_matched: set[Op]) -> list[list[Op]]:
    """The disjoint supergroup matches, in aimet's order."""
    def reject(op: Op) -> bool:
        return _is_conv3d_or_depthwise(graph, op) or op in pass_matched

    matched: set[Op] = set()
    found: list[list[Op]] = []
    for pattern in sorted(patterns, key=len, reverse=True):
        for op in graph.ops:
            if op.type != pattern[0]:
                continue
            for chain in _chains(graph, op, pattern, reject):
                if any(member in matched for member in chain):
                    continue
                matched.update(chain)
                found.append(chain)
    return found
