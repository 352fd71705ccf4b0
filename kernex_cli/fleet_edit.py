"""Edits of fleet YAML that keep the rest of the file as the author wrote it.

ruamel.yaml's round-trip mode keeps comments, key order and quoting; the indentation of
the file is guessed and reused, so a one-key change stays a one-line diff.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from kernex_core.errors import KernexError

_INDENT_RE = re.compile(r"^[^\s#-][^:#]*:\s*(#.*)?\n( +)\S", re.MULTILINE)


class EditError(KernexError):
    """A fleet file cannot be edited as asked."""


def _yaml_for(text: str) -> YAML:
    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.width = 4096
    mapping = 2
    m = _INDENT_RE.search(text)
    if m:
        mapping = len(m.group(2))
    seq_match = re.search(r"^( *)(- )", text, re.MULTILINE)
    offset = 0
    if seq_match:
        # Find the parent key's indent: the nearest preceding "key:" line.
        before = text[: seq_match.start()].rstrip("\n").splitlines()
        parent = next(
            (ln for ln in reversed(before) if ln.strip() and ln.rstrip().endswith(":")), ""
        )
        offset = max(0, len(seq_match.group(1)) - (len(parent) - len(parent.lstrip())))
    yaml.indent(mapping=mapping, sequence=mapping + offset, offset=offset)
    return yaml


def _load(text: str, source: str) -> tuple[YAML, CommentedMap]:
    yaml = _yaml_for(text)
    try:
        data = yaml.load(text) if text.strip() else CommentedMap()
    except YAMLError as exc:
        raise EditError(
            f"{source}: not valid YAML ({exc})",
            hint=f"Fix {source} by hand, then run the command again.",
        ) from exc
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise EditError(f"{source}: the top level is not a mapping")
    return yaml, data


def _dump(yaml: YAML, data: CommentedMap) -> str:
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def set_value(text: str, path: Sequence[str], value: Any, *, source: str) -> str:
    """Return ``text`` with the mapping key at ``path`` set to ``value``."""
    yaml, data = _load(text, source)
    node = data
    for i, key in enumerate(path[:-1]):
        child = node.get(key)
        if child is None:
            child = CommentedMap()
            node[key] = child
        elif not isinstance(child, CommentedMap):
            where = ".".join(path[: i + 1])
            raise EditError(f"{source}: {where} is not a mapping, cannot set {'.'.join(path)}")
        node = child
    node[path[-1]] = value
    return _dump(yaml, data)


_UNSET_HINT = "Only keys the file itself sets can be unset; see its config: block."


def unset_value(text: str, path: Sequence[str], *, source: str) -> str:
    """Return ``text`` without the key at ``path``; empty parent mappings are removed too."""
    yaml, data = _load(text, source)
    chain: list[CommentedMap] = [data]
    for key in path[:-1]:
        child = chain[-1].get(key)
        if not isinstance(child, CommentedMap):
            raise EditError(f"{source}: {'.'.join(path)} is not set", hint=_UNSET_HINT)
        chain.append(child)
    if path[-1] not in chain[-1]:
        raise EditError(f"{source}: {'.'.join(path)} is not set", hint=_UNSET_HINT)
    del chain[-1][path[-1]]
    for depth in range(len(chain) - 1, 0, -1):
        if not chain[depth]:
            del chain[depth - 1][path[depth - 1]]
    return _dump(yaml, data)


def parse_scalar(raw: str) -> Any:
    """A command-line value as YAML reads it: ``8080`` is a number, ``true`` a boolean."""
    yaml = YAML(typ="safe")
    try:
        value = yaml.load(raw)
    except YAMLError:
        return raw
    return raw if value is None and raw.strip() not in ("null", "~") else value
