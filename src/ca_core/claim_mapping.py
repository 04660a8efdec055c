"""Claims addressed by JSON Pointer and the templates that build a namespace or app id from them
(design §6.5). Pure.

A pointer is RFC 6901's: ``/kubernetes.io/namespace`` is member ``namespace`` of member
``kubernetes.io`` (a key may hold dots; ``~1`` stands for ``/`` and ``~0`` for ``~``). A claim
named without a leading ``/`` is the top-level claim of that name. A template is literal text
with ``{/pointer}`` placeholders, e.g. ``gh-{/repository_owner}``; a placeholder takes a string
or an integer claim, nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .spiffe_id import app_id_problem, namespace_problem

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_APP_ID_LITERAL = re.compile(r"[A-Za-z0-9_-]*")
_NAMESPACE_LITERAL = re.compile(r"[a-z0-9-]*")
_MISSING = object()


def pointer_tokens(pointer: str) -> tuple[str, ...]:
    """The reference tokens of ``pointer`` (``/a/b~1c`` → ``("a", "b/c")``); a name without a
    leading ``/`` is one top-level key. Raises ValueError for a malformed escape."""
    if not pointer.startswith("/"):
        return (pointer,)
    tokens = pointer[1:].split("/")
    for t in tokens:
        if re.search(r"~(?![01])", t):
            raise ValueError(f"JSON Pointer {pointer!r}: '~' must be followed by 0 or 1")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in tokens)


def resolve(claims: Mapping[str, object], tokens: tuple[str, ...]) -> object:
    """The value at ``tokens`` in ``claims``, or :data:`MISSING`."""
    value: object = claims
    for t in tokens:
        if isinstance(value, Mapping) and t in value:
            value = value[t]
        elif isinstance(value, list) and t.isdigit() and int(t) < len(value):
            value = value[int(t)]
        else:
            return _MISSING
    return value


MISSING = _MISSING


@dataclass(frozen=True)
class Template:
    """A parsed template: ``parts`` alternate literal text (even indexes) and pointer tokens."""

    text: str
    parts: tuple[str | tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str, field: str) -> Template:
        """Parse ``text`` for ``field`` (``namespace`` or ``appId``). Raises ValueError when a
        placeholder is malformed, a literal part holds characters the name cannot have, or a
        template without placeholders is not a valid name (it could never map)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"{field}: expected a non-empty template")
        literal = _NAMESPACE_LITERAL if field == "namespace" else _APP_ID_LITERAL
        parts: list[str | tuple[str, ...]] = []
        last = 0
        for m in _PLACEHOLDER.finditer(text):
            parts.append(text[last : m.start()])
            if not m.group(1).startswith("/"):
                raise ValueError(f"{field} {text!r}: a placeholder is a JSON Pointer, e.g. {{/sub}}")
            parts.append(pointer_tokens(m.group(1)))
            last = m.end()
        parts.append(text[last:])
        if len(parts) == 1:
            problem = namespace_problem(text) if field == "namespace" else app_id_problem(text)
            if problem:
                raise ValueError(f"{field} {text!r}: {problem}")
        kind = "a namespace" if field == "namespace" else "an app id"
        for lit in parts[::2]:
            if "{" in lit or "}" in lit or not literal.fullmatch(lit):  # type: ignore[arg-type]
                raise ValueError(f"{field} {text!r}: the literal text {lit!r} cannot be part of {kind}")
        return cls(text, tuple(parts))

    def render(self, claims: Mapping[str, object]) -> str:
        """The name built from ``claims``. Raises LookupError naming the claim that is missing or
        not a string or integer."""
        out = []
        for i, part in enumerate(self.parts):
            if i % 2 == 0:
                out.append(part)
                continue
            value = resolve(claims, part)  # type: ignore[arg-type]
            if isinstance(value, bool) or not isinstance(value, str | int):
                pointer = "/" + "/".join(t.replace("~", "~0").replace("/", "~1") for t in part)
                what = "missing" if value is _MISSING else "not a string or integer"
                raise LookupError(f"claim {pointer} is {what}")
            out.append(str(value))
        return "".join(out)  # type: ignore[arg-type]
