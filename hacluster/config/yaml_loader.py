"""Parsing the YAML text of a config with bounds, before any key is read.

Owns ``_Loader`` (``yaml.SafeLoader`` with a nesting limit, a limit on the size of the document
once anchors are expanded, no recursive aliases, no unpaired surrogates, and malformed scalars
reported as YAML errors with their position). It must never construct anything but plain YAML
values (no Python objects), and never interpret a key: that is ``reader`` and ``sections``.
"""

from __future__ import annotations

from typing import Any

import yaml

from hacluster.config.reader import _SURROGATE

# A config is a page of YAML: deeper nesting, or more nodes once anchors are expanded, is a
# mistake or an attack ("billion laughs"), and would exhaust the stack or the memory.
_YAML_MAX_DEPTH = 64
_YAML_MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader with bounds: nesting depth, the size of the document once
    anchors are expanded (no recursive anchors), and malformed scalars reported as YAML errors
    with their position (PyYAML lets the ``ValueError`` of a bad date or a 5000-digit integer,
    or the ``AttributeError`` of ``!!timestamp 99``, escape)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > _YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {_YAML_MAX_DEPTH} levels",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # ValueError, KeyError (`!!bool maybe`), AttributeError, ...
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.tag.rsplit(':', 1)[-1]} value: "
                f"{type(exc).__name__}: {exc}", node.start_mark) from None


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose node tree, with every alias expanded, is recursive or holds
    more than ``_YAML_MAX_NODES`` nodes, or that has a string no OS call or HTTP header could
    take (an unpaired surrogate). Linear in the (unexpanded) document."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node.value, str) and _SURROGATE.search(node.value):
            raise yaml.composer.ComposerError(
                None, None, "a string with an unpaired surrogate escape (\\uD800-\\uDFFF) "
                "cannot be encoded as UTF-8", node.start_mark)
        if done:
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > _YAML_MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {_YAML_MAX_NODES} values once its anchors are "
                    "expanded", node.start_mark)
            sizes[id(node)] = total
            continue
        if id(node) in sizes:
            continue
        if id(node) in entered:  # only ancestors are entered and not yet done
            raise yaml.composer.ComposerError(None, None, "recursive alias", node.start_mark)
        entered.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
