"""Validators for fleet-file values: one ``Checker`` per file, every problem to the shared
collector, so a file's every mistake is reported at once (``kernex_core.fleet.load``).
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

from kernex_core.fleet.selector import (
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
)
from kernex_core.fleet.source import (
    IssueCollector,
    KeyPath,
)
from kernex_core.formats import DURATION_EXAMPLES, NAME_RE, VERSION_RE, parse_duration
from kernex_core.protocol import DEVICE_ID_PATTERN

DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}\Z")
PERCENT_RE = re.compile(r"^(\d{1,3})\s*%\Z")
OPENPGP_FPR_RE = re.compile(r"^[0-9A-Fa-f]{40}\Z")
SSH_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+"
)
MAX_CONFIG_DEPTH = 32
ROLLOUT_KEYS = frozenset({"waves", "failure_threshold", "pause", "promotion", "auto_rollback"})

QUOTE_HINT = "Quote it so YAML keeps it as text, e.g. '1.10' or 'on'."


def file_stem(path: str) -> str:
    """``groups/canary.yaml`` -> ``canary``."""
    return path.partition("/")[2][: -len(".yaml")]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, date):
        return "date"
    return type(value).__name__


class Checker:
    """Validators for one file; every problem goes to the shared collector."""

    def __init__(self, collector: IssueCollector, file: str) -> None:
        self.collector = collector
        self.file = file

    def issue(self, path: KeyPath, message: str, hint: str | None = None, **kw: Any) -> None:
        self.collector.add(self.file, path, message, hint, **kw)

    def wrong_type(self, path: KeyPath, value: Any, expected: str) -> None:
        hint = QUOTE_HINT if expected == "a string" and value is not None else None
        self.issue(path, f"expected {expected}, found {_type_name(value)}", hint)

    def mapping(
        self,
        value: Any,
        path: KeyPath,
        allowed: frozenset[str] | None = None,
        required: tuple[str, ...] = (),
    ) -> dict[Any, Any] | None:
        if not isinstance(value, dict):
            self.wrong_type(path, value, "a mapping")
            return None
        for key in value:
            if not isinstance(key, str):
                self.issue((*path, key), f"key {key!r} is not a string", QUOTE_HINT, at_key=True)
            elif allowed is not None and key not in allowed:
                self.collector.unknown_key(self.file, path, key, allowed)
        for key in required:
            if key not in value:
                self.issue(path, f"missing required key '{key}'")
        return value

    def string(
        self, value: Any, path: KeyPath, regex: re.Pattern[str] | None = None, what: str = "value"
    ) -> str | None:
        if not isinstance(value, str):
            self.wrong_type(path, value, "a string")
            return None
        if regex is not None and not regex.match(value):
            self.issue(path, f"'{value}' is not a valid {what}", FORMAT_HINTS.get(what))
            return None
        return value

    def integer(self, value: Any, path: KeyPath, minimum: int | None = None) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.wrong_type(path, value, "an integer")
            return None
        if minimum is not None and value < minimum:
            self.issue(path, f"must be at least {minimum}, found {value}")
            return None
        return value

    def boolean(self, value: Any, path: KeyPath) -> bool | None:
        if not isinstance(value, bool):
            self.wrong_type(path, value, "true or false")
            return None
        return value

    def duration(self, value: Any, path: KeyPath) -> int | None:
        """Seconds, from an integer or a text like ``90s``, ``5m``, ``1h30m``, ``7d``, ``2w``."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError:
                pass
        self.issue(
            path,
            f"expected a duration, found {value!r}",
            f"Write seconds as an integer, or a duration like {DURATION_EXAMPLES}.",
        )
        return None

    def percent(self, value: Any, path: KeyPath, minimum: int = 0) -> int | None:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and (m := PERCENT_RE.match(value.strip())):
            number = int(m.group(1))
        if number is None or not minimum <= number <= 100:
            self.issue(
                path,
                f"expected a percentage from {minimum}% to 100%, found {value!r}",
                "Write a whole percentage such as 5% or 25%.",
            )
            return None
        return number

    def config(self, value: Any, path: KeyPath) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.wrong_type(path, value, "a mapping")
            return None
        return value if self._json_like(value, path, 0) else None

    def _json_like(self, value: Any, path: KeyPath, depth: int) -> bool:
        if depth > MAX_CONFIG_DEPTH:
            self.issue(path, f"config nests deeper than {MAX_CONFIG_DEPTH} levels")
            return False
        if isinstance(value, dict):
            good = True
            for key, item in value.items():
                if not isinstance(key, str):
                    self.issue(
                        (*path, key), f"config key {key!r} is not a string", QUOTE_HINT, at_key=True
                    )
                    good = False
                elif not self._json_like(item, (*path, key), depth + 1):
                    good = False
            return good
        if isinstance(value, list):
            results = [self._json_like(v, (*path, i), depth + 1) for i, v in enumerate(value)]
            return all(results)
        if isinstance(value, float) and not math.isfinite(value):
            self.issue(path, "config numbers must be finite", "Use a string or a large number.")
            return False
        if value is None or isinstance(value, str | int | float):
            return True
        self.issue(path, f"a {_type_name(value)} is not allowed in config", QUOTE_HINT)
        return False

    def bundle_refs(self, value: Any, path: KeyPath) -> dict[str, str | None] | None:
        """``{bundle: version}``; a null version removes the bundle."""
        if value is None:
            return {}
        refs = self.mapping(value, path)
        if refs is None:
            return None
        good = True
        for name, version in refs.items():
            if not isinstance(name, str):
                good = False
            elif not NAME_RE.match(name):
                self.issue(
                    (*path, name),
                    f"'{name}' is not a valid bundle name",
                    FORMAT_HINTS["bundle name"],
                    at_key=True,
                )
                good = False
            elif (
                version is not None
                and self.string(version, (*path, name), VERSION_RE, "version") is None
            ):
                good = False
        return refs if good else None

    def rollout(self, value: Any, path: KeyPath) -> dict[str, Any] | None:
        block = self.mapping(value, path, ROLLOUT_KEYS)
        if block is None:
            return None
        out: dict[str, Any] = {}
        good = True
        if "waves" in block:
            waves = self._waves(block["waves"], (*path, "waves"))
            good &= waves is not None
            out["waves"] = waves
        if "failure_threshold" in block:
            threshold = self.percent(block["failure_threshold"], (*path, "failure_threshold"))
            good &= threshold is not None
            out["failure_threshold"] = threshold
        if "pause" in block:
            pause = self.duration(block["pause"], (*path, "pause"))
            good &= pause is not None
            out["pause"] = pause
        if "promotion" in block:
            promotion = block["promotion"]
            if promotion not in ("auto", "manual"):
                self.issue(
                    (*path, "promotion"), f"promotion must be auto or manual, found {promotion!r}"
                )
                good = False
            elif promotion == "manual" and block.get("pause"):
                self.issue(
                    (*path, "pause"),
                    "a pause and manual promotion exclude each other",
                    "Drop `pause` (waves wait for `kernex rollouts promote`), "
                    "or drop `promotion: manual`.",
                    at_key=True,
                )
                good = False
            out["promotion"] = promotion
        if "auto_rollback" in block:
            auto = self.boolean(block["auto_rollback"], (*path, "auto_rollback"))
            good &= auto is not None
            out["auto_rollback"] = auto
        return out if good else None

    def _waves(self, value: Any, path: KeyPath) -> tuple[int, ...] | None:
        if not isinstance(value, list) or not value:
            self.issue(
                path,
                "waves must be a non-empty list of percentages",
                "For example: waves: [5%, 25%, 100%]",
            )
            return None
        waves = [self.percent(v, (*path, i), minimum=1) for i, v in enumerate(value)]
        if any(w is None for w in waves):
            return None
        numbers = [w for w in waves if w is not None]
        for i in range(1, len(numbers)):
            if numbers[i] <= numbers[i - 1]:
                self.issue(
                    (*path, i),
                    "waves must increase (each is a cumulative share)",
                    "For example: waves: [5%, 25%, 100%]",
                )
                return None
        if numbers[-1] != 100:
            self.issue(
                (*path, len(numbers) - 1),
                "the last wave must be 100%",
                "End the list with 100% so the rollout reaches every device.",
            )
            return None
        return tuple(numbers)

    def labels(self, value: Any, path: KeyPath) -> dict[str, str] | None:
        if value is None:
            return {}
        labels = self.mapping(value, path)
        if labels is None:
            return None
        good = True
        for key, label in labels.items():
            if type(label) is str and key in _GOOD_LABEL_KEYS and label in _GOOD_LABEL_VALUES:
                continue  # most labels repeat across devices: skip the patterns
            if not isinstance(key, str):
                good = False
                continue
            if not LABEL_KEY_RE.match(key):
                self.issue(
                    (*path, key),
                    f"'{key}' is not a valid label key",
                    FORMAT_HINTS["label key"],
                    at_key=True,
                )
                good = False
            elif self.string(label, (*path, key), LABEL_VALUE_RE, "label value") is not None:
                _remember(_GOOD_LABEL_KEYS, key)
                _remember(_GOOD_LABEL_VALUES, label)
                continue
            good = False
        return labels if good else None


_GOOD_LABEL_KEYS: set[str] = set()
_GOOD_LABEL_VALUES: set[str] = set()
_MAX_REMEMBERED = 100_000


def _remember(cache: set[str], value: str) -> None:
    if len(cache) < _MAX_REMEMBERED:
        cache.add(value)


FORMAT_HINTS = {
    "bundle name": "Names use lowercase letters, digits, '.', '_' and '-' (at most 63).",
    "group name": "Names use lowercase letters, digits, '.', '_' and '-' (at most 63).",
    "device id": "Device ids use lowercase letters, digits, '.', '_' and '-' (at most 63).",
    "version": "Versions use letters, digits and . _ + ~ - (at most 64), e.g. 1.4.0.",
    "sha256": "Write the SHA-256 of the bundle file as 64 lowercase hex digits.",
    "key fingerprint": "Use the form `kernex` prints: SHA256: and 43 base64 characters.",
    "label key": "Label keys look like `ring` or `example.com/ring` (letters, digits, -_.).",
    "label value": "Label values use letters, digits, '-', '_' and '.' (at most 63).",
}
