"""JSON for the control protocol without ``import json``. Pure, standard library only.

``relay launch`` runs once per kernel, and ``json`` (through ``re``) costs about as much to
import as the interpreter takes to start (measured in BENCHMARKS.md). The protocol's messages
are small, so this codec is a plain recursive-descent parser and a writer, strict RFC 8259
(no NaN, no trailing data), checked against ``json`` by property tests.

Stricter than ``json`` in one way: an object with a key twice, at any depth, is refused
(``DuplicateKey``). RFC 8259 leaves its meaning open; ``json`` keeps the last value, other
readers the first, so ``{"op":"ping","op":"stop"}`` would be a stop to one reader and a ping
to another (a log, a proxy): a message must mean one thing to every reader. The daemon and
the shim both decode through this module (``relay.lite.framing``).
"""

from __future__ import annotations

__all__ = ["DuplicateKey", "dumps", "loads"]

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_UNESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_MAX_DEPTH = 64


class DuplicateKey(ValueError):
    """An object that gives ``key`` twice (compared once unescaped: ``"a"`` and ``"\\u0061"``
    are the same key)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or "\ud800" <= ch <= "\udfff":
            # a lone surrogate: a file name's byte that is not UTF-8 (os.fsdecode's), which
            # UTF-8 cannot carry raw; escaped, it reads back as the same character
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dumps(obj: object) -> str:
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return _string(obj)
    if isinstance(obj, int):
        return str(int(obj))
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ValueError("JSON has no NaN or infinity")
        return repr(obj)
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys are strings, not {type(key).__name__}")
            items.append(f"{_string(key)}:{dumps(value)}")
        return "{" + ",".join(items) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    raise TypeError(f"{type(obj).__name__} is not JSON")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"invalid JSON at {self.i}: {what}")

    def ws(self) -> None:
        text, i = self.text, self.i
        while i < len(text) and text[i] in " \t\n\r":
            i += 1
        self.i = i

    def value(self, depth: int) -> object:
        if depth > _MAX_DEPTH:
            raise self.fail("nested too deeply")
        self.ws()
        if self.i >= len(self.text):
            raise self.fail("unexpected end")
        ch = self.text[self.i]
        if ch == "{":
            return self.members(depth)
        if ch == "[":
            return self.elements(depth)
        if ch == '"':
            return self.string()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.i):
                self.i += len(word)
                return val
        return self.number()

    def members(self, depth: int) -> dict[str, object]:
        self.i += 1
        out: dict[str, object] = {}
        self.ws()
        if self.text.startswith("}", self.i):
            self.i += 1
            return out
        while True:
            self.ws()
            if not self.text.startswith('"', self.i):
                raise self.fail("expected a string key")
            at = self.i
            key = self.string()
            if key in out:
                raise DuplicateKey(f"invalid JSON at {at}: the key {key[:40]!r} twice", key)
            self.ws()
            if not self.text.startswith(":", self.i):
                raise self.fail("expected ':'")
            self.i += 1
            out[key] = self.value(depth + 1)
            self.ws()
            if self.text.startswith(",", self.i):
                self.i += 1
            elif self.text.startswith("}", self.i):
                self.i += 1
                return out
            else:
                raise self.fail("expected ',' or '}'")

    def elements(self, depth: int) -> list[object]:
        self.i += 1
        out: list[object] = []
        self.ws()
        if self.text.startswith("]", self.i):
            self.i += 1
            return out
        while True:
            out.append(self.value(depth + 1))
            self.ws()
            if self.text.startswith(",", self.i):
                self.i += 1
            elif self.text.startswith("]", self.i):
                self.i += 1
                return out
            else:
                raise self.fail("expected ',' or ']'")

    def string(self) -> str:
        text = self.text
        i = self.i + 1
        out = []
        while True:
            j = i
            while j < len(text) and text[j] not in '"\\' and text[j] >= " ":
                j += 1
            out.append(text[i:j])
            if j >= len(text):
                raise self.fail("unterminated string")
            ch = text[j]
            if ch == '"':
                self.i = j + 1
                return "".join(out)
            if ch < " ":
                self.i = j
                raise self.fail("control character in string")
            esc = text[j + 1 : j + 2]
            if esc in _UNESCAPES:
                out.append(_UNESCAPES[esc])
                i = j + 2
            elif esc == "u":
                code, i = self._hex4(j + 2)
                if 0xD800 <= code < 0xDC00 and text.startswith("\\u", i):
                    low, after = self._hex4(i + 2)
                    if 0xDC00 <= low < 0xE000:
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        i = after
                out.append(chr(code))
            else:
                self.i = j
                raise self.fail("bad escape")

    def _hex4(self, at: int) -> tuple[int, int]:
        digits = self.text[at : at + 4]
        if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            self.i = at
            raise self.fail("bad \\u escape")
        return int(digits, 16), at + 4

    def number(self) -> int | float:
        text, start = self.text, self.i
        i = start
        if text.startswith("-", i):
            i += 1
        if text.startswith("0", i):
            i += 1
        elif i < len(text) and "1" <= text[i] <= "9":
            while i < len(text) and text[i].isdigit() and text[i].isascii():
                i += 1
        else:
            raise self.fail("unexpected character")
        is_float = False
        if text.startswith(".", i):
            is_float = True
            i += 1
            if not (i < len(text) and text[i].isascii() and text[i].isdigit()):
                raise self.fail("digits expected after '.'")
            while i < len(text) and text[i].isascii() and text[i].isdigit():
                i += 1
        if i < len(text) and text[i] in "eE":
            is_float = True
            i += 1
            if i < len(text) and text[i] in "+-":
                i += 1
            if not (i < len(text) and text[i].isascii() and text[i].isdigit()):
                raise self.fail("digits expected in exponent")
            while i < len(text) and text[i].isascii() and text[i].isdigit():
                i += 1
        self.i = i
        return float(text[start:i]) if is_float else int(text[start:i])


def loads(text: str) -> object:
    parser = _Parser(text)
    value = parser.value(0)
    parser.ws()
    if parser.i != len(text):
        raise parser.fail("trailing data")
    return value
