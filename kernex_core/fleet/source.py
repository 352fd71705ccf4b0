"""Reading fleet files: bytes to Python values on a fast path, and locating problems.

Every file is parsed once with libyaml (``CSafeLoader``) into plain values; line numbers
are not kept, because composing node trees for every file costs several times the parse.
Problems are recorded against a key path inside the file, and only the files that have
problems are composed again to turn those paths into line and column.

Hostile input is bounded here: a per-file and a total size limit, UTF-8 only, and YAML
aliases are refused outright (they buy nothing in a fleet file and make exponential
expansion possible).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from kernex_core.errors import ValidationIssue

MAX_FILE_BYTES = 1024 * 1024  # one fleet file
MAX_TOTAL_BYTES = 64 * 1024 * 1024  # all fleet files of one revision together

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

PathElement = str | int
KeyPath = tuple[PathElement, ...]


class _FleetLoader(_BaseLoader):  # type: ignore[misc]
    """Safe loader that records duplicate mapping keys instead of keeping the last silently."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[str, yaml.Mark]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in mapping
            except TypeError:  # an unhashable key (a list or mapping used as a key)
                raise yaml.constructor.ConstructorError(
                    None, None, "found an unhashable key", key_node.start_mark
                ) from None
            if duplicate:
                self.duplicate_keys.append((str(key), key_node.start_mark))
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


@dataclass
class PendingIssue:
    """A problem found before its line is known: file plus key path inside the file."""

    file: str
    path: KeyPath
    message: str
    hint: str | None = None
    at_key: bool = False  # point at the key itself rather than its value
    col_offset: int | None = None  # column inside a scalar value (selector errors)
    line: int | None = None  # already known (parse errors)
    column: int | None = None
    display_path: str | None = None  # overrides the file-derived dotted path


class IssueCollector:
    """Gathers every problem of a load, then locates them all at the end."""

    def __init__(self) -> None:
        self.pending: list[PendingIssue] = []

    def __bool__(self) -> bool:
        return bool(self.pending)

    def add(
        self,
        file: str,
        path: KeyPath,
        message: str,
        hint: str | None = None,
        *,
        at_key: bool = False,
        col_offset: int | None = None,
        display_path: str | None = None,
    ) -> None:
        self.pending.append(
            PendingIssue(file, path, message, hint, at_key, col_offset, display_path=display_path)
        )

    def add_located(
        self,
        file: str,
        line: int | None,
        column: int | None,
        message: str,
        hint: str | None = None,
        path: KeyPath = (),
    ) -> None:
        self.pending.append(
            PendingIssue(file, path, message, hint, line=line, column=column, display_path="")
        )

    def unknown_key(self, file: str, path: KeyPath, key: Any, allowed: Iterable[str]) -> None:
        choices = sorted(allowed)
        close = difflib.get_close_matches(str(key), choices, n=1, cutoff=0.6)
        if close:
            hint = f"Did you mean '{close[0]}'?"
        else:
            hint = f"Allowed keys here: {', '.join(choices)}."
        self.add(file, (*path, key), f"unknown key '{key}'", hint, at_key=True)

    def issues(self, texts: Mapping[str, str]) -> list[ValidationIssue]:
        """Resolve every pending issue to a located ``ValidationIssue``, sorted by place."""
        roots: dict[str, yaml.Node | None] = {}
        located: list[ValidationIssue] = []
        for p in self.pending:
            line, column = p.line, p.column
            if line is None and p.file in texts:
                if p.file not in roots:
                    roots[p.file] = _compose(texts[p.file])
                root = roots[p.file]
                if root is not None:
                    line, column = _locate(root, p.path, p.at_key, p.col_offset)
            key_path = p.display_path if p.display_path is not None else dotted(p.file, p.path)
            located.append(ValidationIssue(p.file, line, column, key_path, p.message, p.hint))
        located.sort(key=lambda i: (i.file, i.line or 0, i.column or 0, i.message))
        return located


def parse_file(file: str, raw: bytes, collector: IssueCollector) -> tuple[str | None, Any]:
    """Decode and parse one file; return (text, value), or (None, None) after recording why."""
    if len(raw) > MAX_FILE_BYTES:
        collector.add_located(
            file,
            None,
            None,
            f"file is {len(raw)} bytes, over the {MAX_FILE_BYTES // 1024} KiB limit",
            "Split it, or move large data out of the fleet repository.",
        )
        return None, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_col(raw, exc.start)
        collector.add_located(
            file, line, column, "file is not valid UTF-8", "Save the file as UTF-8."
        )
        return None, None
    if "*" in text and _has_alias(file, text, collector):
        return None, None
    loader = _FleetLoader(text)
    try:
        value = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        collector.add_located(
            file,
            mark.line + 1 if mark else None,
            mark.column + 1 if mark else None,
            f"YAML syntax error: {problem}",
            "Check indentation, colons and quoting around this place.",
        )
        return None, None
    except yaml.YAMLError as exc:
        collector.add_located(file, None, None, f"YAML error: {exc}", None)
        return None, None
    finally:
        loader.dispose()
    for key, mark in loader.duplicate_keys:
        collector.add_located(
            file,
            mark.line + 1,
            mark.column + 1,
            f"duplicate key '{key}'",
            "YAML keeps only the last one; remove or rename the other.",
        )
    return text, value


def _has_alias(file: str, text: str, collector: IssueCollector) -> bool:
    """Report every alias (``*name``) in ``text``; True if there was one."""
    found = False
    try:
        for event in yaml.parse(text, Loader=_BaseLoader):
            if isinstance(event, yaml.AliasEvent):
                found = True
                mark = event.start_mark
                collector.add_located(
                    file,
                    mark.line + 1 if mark else None,
                    mark.column + 1 if mark else None,
                    f"YAML alias '*{event.anchor}' is not allowed",
                    "Write the value out; fleet files do not use anchors and aliases.",
                )
    except yaml.YAMLError:
        return False  # the real parse reports the syntax error with its place
    return found


def _compose(text: str) -> yaml.Node | None:
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=_BaseLoader)
    except yaml.YAMLError:
        return None
    return node


def _locate(
    node: yaml.Node, path: KeyPath, at_key: bool, col_offset: int | None
) -> tuple[int, int]:
    target = node
    key_node: yaml.Node | None = None
    for element in path:
        child: tuple[yaml.Node | None, yaml.Node] | None = None
        if isinstance(target, yaml.MappingNode):
            for k, v in target.value:
                if isinstance(k, yaml.ScalarNode) and k.value == _key_text(element):
                    child = (k, v)  # the last one wins, as in the loader
        elif (
            isinstance(target, yaml.SequenceNode)
            and isinstance(element, int)
            and 0 <= element < len(target.value)
        ):
            child = (None, target.value[element])
        if child is None:
            break
        key_node, target = child
    else:
        if at_key and key_node is not None:
            target = key_node
    mark = target.start_mark
    line, column = mark.line + 1, mark.column + 1
    if col_offset is not None and isinstance(target, yaml.ScalarNode):
        quoted = 1 if target.style in ("'", '"') else 0
        column += col_offset + quoted
    return line, column


def _key_text(element: PathElement) -> str:
    if isinstance(element, bool):
        return str(element).lower()
    return str(element)


def _line_col(raw: bytes, offset: int) -> tuple[int, int]:
    before = raw[:offset]
    line = before.count(b"\n") + 1
    column = offset - (before.rfind(b"\n") + 1) + 1
    return line, column


def dotted(file: str, path: Sequence[PathElement]) -> str:
    """Fleet-wide dotted key path: ``groups.canary.bundles.app``, ``rollout.waves[1]``."""
    prefix: list[str] = []
    if "/" in file:
        folder, _, name = file.partition("/")
        stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
        prefix = [folder, _quote(stem)]
    text = ".".join(prefix)
    for element in path:
        if isinstance(element, int) and not isinstance(element, bool):
            text += f"[{element}]"
        else:
            part = _quote(str(element))
            text = f"{text}.{part}" if text else part
    return text


def _quote(name: str) -> str:
    if name and all(c.isalnum() or c in "_-" for c in name):
        return name
    return '"' + name.replace('"', '\\"') + '"'
