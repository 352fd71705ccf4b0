"""The text formats Kernex shares across fleet files, manifests, bundles, the API and the CLI:
names, versions, sha256 digests and durations. One definition each, so a value that one
part accepts every other part accepts too.

Patterns end at ``\\Z``, not ``$``: ``$`` also matches before a trailing newline, and
``"app\\n"`` is not a name.

A duration is a whole number of seconds (``90``) or one or more parts ``<number><unit>``
with the units ``s``, ``m``, ``h``, ``d`` and ``w`` (``90s``, ``5m``, ``1h30m``, ``7d``,
``2w``); blanks around the text and between the parts are ignored (``1h 30m``). Whether zero
is allowed is the caller's rule: a timeout or a manifest lifetime must be positive.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}\Z")
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")

DURATION_RE = re.compile(r"^\s*(?:\d+\s*|(?:\d+\s*[smhdw]\s*)+)\Z")
_DURATION_PART_RE = re.compile(r"(\d+)\s*([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_EXAMPLES = "90s, 5m, 1h30m, 24h or 7d"


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``1h30m``, ``7d``, ``2w`` to seconds (0 or more); ValueError if the
    text is not a duration."""
    if not isinstance(text, str) or not DURATION_RE.match(text):
        raise ValueError(f"{text!r} is not a duration like {DURATION_EXAMPLES}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(text))
