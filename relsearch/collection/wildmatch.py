"""gitignore patterns, matched in time linear in the path times the pattern.

``.relsearchignore`` files are written by users and may come with a collection from
anywhere, so a pattern must never cost more than a glance. Plain regex translations of
globs (what :mod:`pathspec` does) backtrack: ``**********x`` against a long name, or
``*a*a*a*a*b``, takes exponential or high-polynomial time in Python's ``re``. Here a
component glob ``s0*s1*...*sN`` becomes a regex in which every middle segment takes its
earliest occurrence and is never revisited (a lookahead captured and matched back, the
atomic-group idiom of :func:`fnmatch.translate`); segments are fixed-length, so the
earliest occurrence is always right, and a match costs O(len(name) x len(glob)). Path
components are matched against the component globs by the classic greedy algorithm
with ``**`` as its star, which keeps only the last star to fall back to: also
O(components x parts).

Semantics follow git's ``wildmatch`` with ``WM_PATHNAME``: ``*`` and ``?`` and ``[...]``
never cross ``/``; a run of ``*`` inside a component is one ``*``; a component made only
of ``*`` (two or more) is ``**``; a reversed range such as ``[z-a]`` matches nothing.
Lines git cannot use either (a trailing unescaped backslash, a bare ``!``, an unclosed
``[``, an unknown ``[:class:]``) are :class:`BadPattern`; the caller skips them with a
warning, as git skips them silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class _Wild:
    """A wildcard token; unique objects, so an escaped ``\\*`` or ``\\?`` stays a literal."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_STAR = _Wild("*")
_ANY = _Wild("?")
#: a component made of asterisks only: zero or more whole components
STARSTAR = "**"
#: git's wildmatch uses the C locale's classes
_POSIX = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9",
    "graph": "\\x21-\\x7e", "lower": "a-z", "print": "\\x20-\\x7e",
    "punct": "".join("\\" + c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "space": " \\t\\n\\r\\f\\v", "upper": "A-Z", "xdigit": "0-9A-Fa-f",
}


class BadPattern(ValueError):
    """A line that is not a usable gitignore pattern; the message says why."""


@dataclass(frozen=True)
class _Class:
    """``[...]``: single characters, ranges and POSIX classes, possibly negated."""

    negated: bool
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]
    named: tuple[str, ...]

    def regex(self) -> str:
        body = "".join(_in_class(c) for c in sorted(self.chars))
        body += "".join(f"{_in_class(lo)}-{_in_class(hi)}" for lo, hi in self.ranges if lo <= hi)
        body += "".join(_POSIX[n] for n in self.named)  # a reversed range adds nothing, as in git
        if not body:
            return "." if self.negated else "(?!)"
        return f"[{'^' if self.negated else ''}{body}]"


def _in_class(c: str) -> str:
    return "\\" + c if c in "\\]^-[" else c


Token = str | _Class | _Wild  # a literal character, a class, _STAR or _ANY


def _regex(tokens: list[Token]) -> re.Pattern[str]:
    """The linear-time regex of one component glob (see the module docstring)."""
    segments: list[list[Token]] = [[]]
    for tok in tokens:
        if tok is _STAR:
            segments.append([])
        else:
            segments[-1].append(tok)

    def seg(toks: list[Token]) -> str:
        return "".join(t.regex() if isinstance(t, _Class) else "." if t is _ANY else re.escape(t)  # type: ignore[arg-type]
                       for t in toks)

    out = [seg(segments[0])]
    for i, middle in enumerate(segments[1:-1]):
        out.append(f"(?=(?P<g{i}>.*?{seg(middle)}))(?P=g{i})")
    if len(segments) > 1:
        out.append(".*" + seg(segments[-1]))
    return re.compile("(?s:" + "".join(out) + ")\\Z")


@dataclass(frozen=True)
class Rule:
    """One compiled line of an ignore file."""

    parts: tuple[re.Pattern[str] | str, ...]  # component globs, or STARSTAR
    negate: bool
    dir_only: bool
    anchored: bool  # the pattern had a "/" before its end: relative to the file's folder

    def matches(self, components: list[str], is_dir: bool) -> bool:
        """Does this rule match the path made of ``components`` (relative to its folder)?"""
        if self.dir_only and not is_dir:
            return False
        if not self.anchored:
            part = self.parts[0]
            return part == STARSTAR or part.match(components[-1]) is not None  # type: ignore[union-attr]
        return _greedy(self.parts, components)


def _greedy(pattern: tuple[re.Pattern[str] | str, ...], names: list[str]) -> bool:
    """Match path components against component globs where STARSTAR takes any run of
    components; O(len(names) x len(pattern)) glob matches."""
    star = STARSTAR
    p = t = 0
    back_p, back_t = -1, 0
    n_p, n_t = len(pattern), len(names)
    while t < n_t:
        if p < n_p and pattern[p] is star:
            back_p, back_t = p, t
            p += 1
        elif p < n_p and pattern[p] is not star and pattern[p].match(names[t]) is not None:  # type: ignore[union-attr]
            p += 1
            t += 1
        elif back_p >= 0:  # let the last star take one more item
            back_t += 1
            p, t = back_p + 1, back_t
        else:
            return False
    while p < n_p and pattern[p] is star:
        p += 1
    return p == n_p


def _parse_class(text: str, i: int) -> tuple[_Class, int]:
    """The class starting after the ``[`` at ``text[i - 1]``; returns it and the index after ``]``."""
    negated = i < len(text) and text[i] in "!^"
    i += negated
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    named: list[str] = []
    first = True
    while True:
        if i >= len(text):
            raise BadPattern("unclosed [")
        c = text[i]
        if c == "]" and not first:
            return _Class(negated, frozenset(chars), tuple(ranges), tuple(named)), i + 1
        first = False
        if c == "[" and text.startswith("[:", i):
            end = text.find(":]", i + 2)
            if end < 0:
                raise BadPattern("unclosed [:")
            name = text[i + 2 : end]
            if name not in _POSIX:
                raise BadPattern(f"unknown character class [:{name}:]")
            named.append(name)
            i = end + 2
            continue
        if c == "\\":
            i += 1
            if i >= len(text):
                raise BadPattern("trailing backslash")
            c = text[i]
        if i + 2 < len(text) and text[i + 1] == "-" and text[i + 2] != "]":
            hi = text[i + 2]
            if hi == "\\":
                if i + 3 >= len(text):
                    raise BadPattern("trailing backslash")
                hi, i = text[i + 3], i + 1
            ranges.append((c, hi))  # a reversed range matches nothing, as in git
            i += 3
        else:
            chars.add(c)
            i += 1


def _component(text: str) -> re.Pattern[str] | str:
    if text and set(text) == {"*"} and len(text) >= 2:
        return STARSTAR
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "*":
            if not tokens or tokens[-1] is not _STAR:  # a run of stars is one star
                tokens.append(_STAR)
            i += 1
        elif c == "?":
            tokens.append(_ANY)
            i += 1
        elif c == "[":
            cls, i = _parse_class(text, i + 1)
            tokens.append(cls)
        elif c == "\\":
            if i + 1 >= len(text):
                raise BadPattern("trailing backslash")
            tokens.append(text[i + 1])
            i += 2
        else:
            tokens.append(c)
            i += 1
    return _regex(tokens)


def _strip_trailing_spaces(line: str) -> str:
    end = len(line)
    while end and line[end - 1] == " ":
        # a space escaped by an odd number of backslashes is kept
        k = end - 1
        slashes = 0
        while k and line[k - 1] == "\\":
            slashes += 1
            k -= 1
        if slashes % 2:
            break
        end -= 1
    return line[:end]


def compile_line(line: str) -> Rule | None:
    """The rule of one ignore-file line, None for a blank line or a comment.

    Raises :class:`BadPattern` for a line git cannot use either.
    """
    line = _strip_trailing_spaces(line.rstrip("\r\n"))
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
        if not line:
            raise BadPattern("'!' with no pattern")
    dir_only = line.endswith("/") and not line.endswith("\\/")
    body = line.rstrip("/") if dir_only else line
    if not body:
        raise BadPattern("no pattern before '/'")
    anchored = "/" in body
    parts = [_component(c) for c in body.split("/") if c]
    if not parts:
        raise BadPattern("no pattern")
    if anchored and len(parts) > 1 and parts[-1] == STARSTAR:
        # "dir/**" is everything inside dir, not dir itself: one component at least
        parts = parts[:-1] + [_regex([_STAR]), STARSTAR]
    return Rule(tuple(parts), negate, dir_only, anchored)
