"""Telephone numbers as billing sees them: digits, prefixes and E.164 patterns."""

from __future__ import annotations

from collections.abc import Iterable


def normalize(number: str) -> str:
    """Numbers are compared as digits; a leading '+' is dropped."""
    return number[1:] if number.startswith("+") else number


def strip_route_prefix(number: str, route_prefix: str | None) -> str:
    """Remove a gateway's route prefix when the number starts with it."""
    if route_prefix and number.startswith(route_prefix):
        return number[len(route_prefix) :]
    return number


class E164Patterns:
    """A list like ["800*", "911"]: a trailing '*' matches any rest, else exact match."""

    __slots__ = ("_exact", "_prefixes", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact = frozenset(normalize(p) for p in self.patterns if not p.endswith("*"))
        self._prefixes = tuple(normalize(p[:-1]) for p in self.patterns if p.endswith("*"))

    def matches(self, number: str | None) -> bool:
        if number is None:
            return False
        return number in self._exact or (
            bool(self._prefixes) and number.startswith(self._prefixes)
        )

    def __bool__(self) -> bool:
        return bool(self.patterns)
