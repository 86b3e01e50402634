"""The structured-output schema walker: a deterministic value valid against a response schema.

Handles both a Gemini ``Schema`` (upper-case types, snake_case keys as google-genai sends
them) and a JSON Schema (``responseJsonSchema``).

Deliberate decisions (do not "fix"):

- A JSON-schema ``pattern`` is not honoured; everything else the walker knows (types,
  enum/const, bounds, lengths, item counts, $ref, anyOf) is.
- Values are chosen by a crc32 of a salt (the question) and the value's path, so the same
  request always gets the same document, in every process.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

from .protocol import GeminiError

__all__ = ["value_for_schema"]

_FILLER_PHRASES = (
    "팀원과 목표를 함께 정리하기",
    "주간 회의에서 의견을 먼저 듣기",
    "작은 성공을 함께 축하하기",
    "일대일 대화로 신뢰 쌓기",
    "성장 목표를 구체적으로 합의하기",
    "과정 중심의 피드백 전하기",
    "역할과 책임을 분명히 나누기",
)


def _key(schema: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = schema.get(camel)
    return schema.get(snake) if value is None else value


class _SchemaWalker:
    """Builds a value that satisfies a Gemini ``Schema`` or a JSON Schema, deterministically."""

    _MAX_DEPTH = 12

    def __init__(self, root: Mapping[str, Any], salt: str) -> None:
        self._root = root
        self._salt = salt

    def _hash(self, path: str) -> int:
        return zlib.crc32(f"{self._salt}|{path}".encode())

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        for _ in range(32):
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#"):
                return schema
            node: Any = self._root
            for token in ref.lstrip("#").strip("/").split("/"):
                if token:
                    node = node[token.replace("~1", "/").replace("~0", "~")]
            schema = node
        raise GeminiError(400, "responseSchema: $ref chain too long")

    def value(self, schema: Mapping[str, Any], path: str = "$", depth: int = 0) -> Any:
        schema = self._resolve(schema)
        if depth > self._MAX_DEPTH:
            return None
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self._hash(path) % len(enum)]
        options = _key(schema, "anyOf", "any_of") or schema.get("oneOf")
        if isinstance(options, list) and options:
            non_null = [o for o in options if self._type_of(self._resolve(o)) != "null"]
            return self.value((non_null or options)[0], path, depth + 1)
        all_of = _key(schema, "allOf", "all_of")
        if isinstance(all_of, list) and all_of:
            merged: dict[str, Any] = {}
            for part in all_of:
                for k, v in self._resolve(part).items():
                    if k in ("properties", "required") and k in merged:
                        merged[k] = merged[k] | v if k == "properties" else merged[k] + v
                    else:
                        merged[k] = v
            return self.value(merged, path, depth + 1)
        kind = self._type_of(schema)
        if kind == "object":
            return self._object(schema, path, depth)
        if kind == "array":
            return self._array(schema, path, depth)
        if kind == "integer":
            return self._integer(schema, path)
        if kind == "number":
            return self._number(schema, path)
        if kind == "boolean":
            return self._hash(path) % 2 == 0
        if kind == "null":
            return None
        return self._string(schema, path)

    @staticmethod
    def _type_of(schema: Mapping[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if str(k).lower() != "null"), "null")
        if kind:
            return str(kind).lower()
        if "properties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def _object(self, schema: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required: list[str] = list(schema.get("required") or [])
        order = list(_key(schema, "propertyOrdering", "property_ordering") or [])
        names = order + [n for n in properties if n not in order]
        names += [n for n in required if n not in names]
        if depth >= self._MAX_DEPTH // 2:
            names = [n for n in names if n in required]
        result: dict[str, Any] = {}
        for name in names:
            result[name] = self.value(properties.get(name) or {}, f"{path}.{name}", depth + 1)
        return result

    def _array(self, schema: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        low = int(_key(schema, "minItems", "min_items") or 0)
        high_raw = _key(schema, "maxItems", "max_items")
        count = low if depth >= self._MAX_DEPTH // 2 else max(low, 2)
        if high_raw is not None:
            count = min(count, int(high_raw))
        values: list[Any] = []
        for i in range(count):
            if isinstance(prefix, list) and i < len(prefix):
                item_schema = prefix[i]
            elif isinstance(items, list):
                item_schema = items[min(i, len(items) - 1)] if items else {}
            else:
                item_schema = items if isinstance(items, dict) else {}
            values.append(self.value(item_schema, f"{path}[{i}]", depth + 1))
        return values

    @staticmethod
    def _bounds(schema: Mapping[str, Any]) -> tuple[float | None, bool, float | None, bool]:
        low, high = schema.get("minimum"), schema.get("maximum")
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        low_open = high_open = False
        if isinstance(ex_low, bool):
            low_open = ex_low
        elif ex_low is not None:
            low, low_open = ex_low, True
        if isinstance(ex_high, bool):
            high_open = ex_high
        elif ex_high is not None:
            high, high_open = ex_high, True
        return (
            None if low is None else float(low),
            low_open,
            None if high is None else float(high),
            high_open,
        )

    def _integer(self, schema: Mapping[str, Any], path: str) -> int:
        low, low_open, high, high_open = self._bounds(schema)
        lo = None if low is None else (math.floor(low) + 1 if low_open else math.ceil(low))
        hi = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
        h = self._hash(path)
        if lo is not None and hi is not None:
            return lo + h % (hi - lo + 1) if hi >= lo else lo
        if lo is not None:
            return lo + h % 5
        if hi is not None:
            return hi - h % 5
        return 1 + h % 5

    def _number(self, schema: Mapping[str, Any], path: str) -> float:
        low, _, high, _ = self._bounds(schema)
        fraction = 0.25 + (self._hash(path) % 50) / 100  # strictly inside the range
        if low is not None and high is not None:
            value = round(low + (high - low) * fraction, 2)
            return value if low < value < high else low + (high - low) / 2
        if low is not None:
            return low + 1 + round(fraction, 2)
        if high is not None:
            return high - 1 - round(fraction, 2)
        return round(1 + fraction * 4, 2)

    def _string(self, schema: Mapping[str, Any], path: str) -> str:
        h = self._hash(path)
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2025-01-15T09:00:00Z"
        if fmt == "date":
            return "2025-01-15"
        if fmt == "email":
            return "coach@example.com"
        if fmt == "uuid":
            return f"{h:08x}-0000-4000-8000-{h:012x}"[:36]
        if fmt in ("uri", "url"):
            return f"https://example.com/{h:x}"
        text = _FILLER_PHRASES[h % len(_FILLER_PHRASES)]
        low = int(_key(schema, "minLength", "min_length") or 0)
        high_raw = _key(schema, "maxLength", "max_length")
        while len(text) < low:
            text += " " + _FILLER_PHRASES[(h + len(text)) % len(_FILLER_PHRASES)]
        return text[: int(high_raw)] if high_raw is not None else text


def value_for_schema(schema: Mapping[str, Any], *, salt: str = "") -> Any:
    """A deterministic value valid against ``schema`` (Gemini Schema or JSON Schema)."""
    return _SchemaWalker(schema, salt).value(schema)
