"""Label selectors in the Kubernetes set-based syntax.

    ring=canary, region in (eu, us), !legacy, site notin (x), hw, tier!=db

Requirements are separated by commas and all must hold. ``key=value`` (or ``==``) needs
the label with that value, ``key!=value`` and ``key notin (...)`` hold when the label is
absent or different, ``key`` needs the label to exist and ``!key`` needs it absent.
An empty selector matches every device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

LABEL_KEY_RE = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z"
)
LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z")

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<op>==|!=|=|\(|\)|,|!)|(?P<word>[A-Za-z0-9][-A-Za-z0-9_./]*)|(?P<bad>\S))"
)


class SelectorSyntaxError(ValueError):
    """A selector does not parse; ``column`` is 0-based inside the selector text."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op == "=" or op == "in":
            return labels.get(self.key) in self.values
        if op == "!=" or op == "notin":
            return labels.get(self.key) not in self.values
        if op == "exists":
            return self.key in labels
        return self.key not in labels


_OPCODES = {"=": 0, "in": 0, "!=": 1, "notin": 1, "exists": 2, "!": 3}


@dataclass(frozen=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]

    def __post_init__(self) -> None:
        # Matching runs for every device and group: a flat tuple beats method calls.
        plan = tuple((_OPCODES[r.operator], r.key, r.values) for r in self.requirements)
        object.__setattr__(self, "_plan", plan)

    def matches(self, labels: Mapping[str, str]) -> bool:
        for opcode, key, values in self._plan:
            if opcode == 0:
                if labels.get(key) not in values:
                    return False
            elif opcode == 1:
                if labels.get(key) in values:
                    return False
            elif opcode == 2:
                if key not in labels:
                    return False
            elif key in labels:
                return False
        return True

    _plan: tuple[tuple[int, str, frozenset[str]], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def required_pairs(self) -> frozenset[tuple[str, str]] | None:
        """Label pairs of which a device must carry one, for indexing; None if unknown."""
        for r in self.requirements:
            if r.operator in ("=", "in"):
                return frozenset((r.key, v) for v in r.values)
        return None

    def __str__(self) -> str:
        return self.text


@dataclass
class _Token:
    kind: str  # "op", "word", "end"
    text: str
    column: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # only trailing white space is left
            break
        kind = m.lastgroup or "bad"
        start = m.start(kind)
        if kind == "bad":
            raise SelectorSyntaxError(f"unexpected character {m.group(kind)!r}", start)
        out.append(_Token(kind, m.group(kind), start))
        pos = m.end()
    out.append(_Token("end", "", len(text.rstrip())))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect_word(self, what: str) -> _Token:
        token = self.take()
        if token.kind != "word":
            found = f"'{token.text}'" if token.text else "end of selector"
            raise SelectorSyntaxError(f"expected {what}, found {found}", token.column)
        return token

    def parse(self) -> tuple[Requirement, ...]:
        requirements: list[Requirement] = []
        if self.peek().kind == "end":
            return ()
        while True:
            requirements.append(self.requirement())
            token = self.take()
            if token.kind == "end":
                return tuple(requirements)
            if token.text != ",":
                raise SelectorSyntaxError(
                    f"expected ',' between requirements, found '{token.text}'", token.column
                )

    def requirement(self) -> Requirement:
        if self.peek().text == "!":
            self.take()
            key = self.key()
            return Requirement(key, "!")
        key = self.key()
        token = self.peek()
        if token.kind == "end" or token.text == ",":
            return Requirement(key, "exists")
        self.take()
        if token.text in ("=", "==", "!="):
            value = self.value()
            return Requirement(key, "!=" if token.text == "!=" else "=", frozenset((value,)))
        if token.text in ("in", "notin"):
            return Requirement(key, token.text, self.value_set())
        raise SelectorSyntaxError(
            f"expected an operator (=, !=, in, notin) after '{key}', found '{token.text}'",
            token.column,
        )

    def key(self) -> str:
        token = self.expect_word("a label key")
        if not LABEL_KEY_RE.match(token.text):
            raise SelectorSyntaxError(f"'{token.text}' is not a valid label key", token.column)
        return token.text

    def value(self) -> str:
        token = self.peek()
        if token.kind == "end" or token.text in (",", ")"):
            return ""  # "key=" selects the empty value, as Kubernetes allows
        token = self.expect_word("a label value")
        if not LABEL_VALUE_RE.match(token.text):
            raise SelectorSyntaxError(f"'{token.text}' is not a valid label value", token.column)
        return token.text

    def value_set(self) -> frozenset[str]:
        token = self.take()
        if token.text != "(":
            raise SelectorSyntaxError("expected '(' to open a set of values", token.column)
        values: set[str] = set()
        while True:
            values.add(self.value())
            token = self.take()
            if token.text == ")":
                return frozenset(values)
            if token.text != ",":
                found = f"'{token.text}'" if token.text else "end of selector"
                raise SelectorSyntaxError(f"expected ',' or ')', found {found}", token.column)


def parse_selector(text: str) -> Selector:
    """Parse ``text``; raise ``SelectorSyntaxError`` with the column of the problem."""
    return Selector(text, _Parser(text).parse())
