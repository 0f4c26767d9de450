"""Composing a YAML document within limits, before anything is built from it.

PyYAML composes an alias as a second reference to the anchored node, so composing costs time
linear in the text; what explodes is what comes after: walking that graph as a tree. A 342-byte
"billion laughs" recipe (nine anchors, each a list of nine aliases of the one before) is 9^9
items once expanded (before this module: past 690 MB and 20 s, cut off by the test's limits;
the issue measured 4 GB and 99 s); an anchor that contains its own alias (`a: &a [*a]`) is a
cycle, and 5,000 nested brackets exhaust Python's stack (both ended in RecursionError).

The composer below measures while it composes, so every limit trips before the tree is built:
- depth: at most MAX_DEPTH nested collections (a recipe needs 5);
- cycles: an alias of a node that is still open is refused;
- expansion: the values (nodes) and scalar characters the document holds once every alias
  counts the whole size of what it names; past MAX_NODES or MAX_CHARS it is refused (the bomb
  stops after a few hundred nodes, in milliseconds). The node limit also bounds the time spent
  composing: PyYAML composes about 20,000 nodes a second, so a 1 MiB flow list of 500,000
  numbers alone took 27 s.
The size of the text itself is capped by the caller (qtool.files.input_text.read_text).
Errors are yaml.MarkedYAMLError, so callers report them with their line like any syntax error.
"""

from __future__ import annotations

import yaml

MAX_DEPTH = 64
MAX_NODES = 20_000  # after aliases are expanded; a recipe has about 50, a large inline config a few thousand
MAX_CHARS = 2_000_000  # scalar characters after aliases are expanded


class YamlLimitError(yaml.MarkedYAMLError):
    """A document over one of the limits; `problem_mark` is where it went over."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts depth, open anchors and the expanded size."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._nodes = self._chars = self._aliases = 0
        self._open: set[str] = set()
        self._sizes: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, characters) it expands to

    def _grow(self, nodes: int, chars: int, mark: yaml.Mark) -> None:
        self._nodes += nodes
        self._chars += chars
        if self._nodes > MAX_NODES or self._chars > MAX_CHARS:
            what = f"{MAX_NODES:,} values" if self._nodes > MAX_NODES else f"{MAX_CHARS:,} characters"
            how = " once its aliases are followed (an alias bomb?)" if self._aliases else ""
            raise YamlLimitError(f"the document holds more than {what}{how}; a recipe needs far fewer", mark)

    def compose_node(self, parent, index):  # noqa: D102 - PyYAML's hook
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise YamlLimitError(f"alias *{event.anchor} is inside the node &{event.anchor} it names "
                                     f"(a cycle); a recipe is a tree", event.start_mark)
            self._aliases += 1
            self._grow(*self._sizes.get(event.anchor, (0, 0)), event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        anchor, nodes, chars = event.anchor, self._nodes, self._chars
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._grow(1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0, event.start_mark)
        if anchor is not None:
            self._open.discard(anchor)
            self._sizes[anchor] = (self._nodes - nodes, self._chars - chars)
        return node


def compose(text: str) -> yaml.Node | None:
    """The document's root node (None for an empty document); raises yaml.YAMLError, with a mark
    for syntax errors and for the limits above. More than one document is an error."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def construct_scalar(node: yaml.ScalarNode):
    """The Python value of one scalar node, by PyYAML's safe rules (tags like !!python/... refused)."""
    constructor = yaml.constructor.SafeConstructor()
    return constructor.construct_object(node, deep=True)
