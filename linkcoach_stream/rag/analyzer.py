"""Korean query and passage analysis for lexical ranking: morphemes and a colloquial lexicon.

Decisions worth keeping (figures from `python benchmarks/relevance.py`):

- Morphemes from kiwipiepy's `cong` model, not character n-grams. Korean glues particles
  and endings to every word ("피드백을", "지쳤어요"); kiwi splits them off and gives the
  stem, so BM25 over morphemes matches "지쳐요" to "지치다" where n-grams only half
  match. BM25 over kiwi morphemes alone ranked the regression set at hit@1 0.81
  against 0.69 for the character n-gram TF-IDF it replaces.
- `cong`, not `cong-global`: 2 ms against 6.5 ms CPU for a long question, same tokens on
  every probe we tried. The older `knlm`/`sbg` models are no longer in the model wheel.
- Kept: nouns, verb and adjective stems, roots, numbers, Latin words and adverbs. Dropped:
  particles, endings, suffixes, punctuation - they occur in every passage and only add
  noise to BM25's length normalisation.
- The model loads once per process (about 1.5 s and 320 MB) behind a lock, the first time
  a query or passage is analysed; `warm_up()` lets a server pay that at start-up. Kiwi's
  multi-word dictionary is not loaded: it costs another 180 MB of RSS and changed the
  analysis of 2 of 1,175 texts (every chunk and every eval question) - "원 온 원" as one
  proper noun - so tokens stored by the previous analyzer stay valid.
- The lexicon (`knowledge_base/lexicon.yaml`) maps what leaders type (방전, 술자리, 윗분,
  진급) to the words the documents use. It is data: matched as substrings of the
  question with spaces removed, so spacing and particles do not matter, and its
  expansions are scored apart from the question's own words, at a lower weight, so a
  broad expansion never outranks what the leader actually wrote.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from ..domain.taxonomy import LEADERSHIP_TYPES

ANALYZER_VERSION = "kiwi-cong-2"
_KEEP_TAGS = frozenset({"NNG", "NNP", "NR", "NP", "XR", "SL", "SH", "SN", "MAG"})
_KEEP_PREFIXES = ("VV", "VA")
# Kiwi gives "1:1" as 1 / : / 1; keep the forms the documents write as one word.
_SPECIAL = re.compile(r"1\s*:\s*1|1on1|30-60-90|70-20-10|\d+\s*%", re.IGNORECASE)
_SPACES = re.compile(r"\s+")

_KIWI_LOCK = threading.Lock()
_KIWI: Any = None


class LexiconError(ValueError):
    """The lexicon file is malformed; the message names the entry."""


def _kiwi() -> Any:
    global _KIWI
    if _KIWI is None:
        with _KIWI_LOCK:
            if _KIWI is None:
                from kiwipiepy import Kiwi

                _KIWI = Kiwi(
                    model_type="cong",
                    integrate_allomorph=False,
                    load_typo_dict=False,
                    load_multi_dict=False,
                )
    return _KIWI


def warm_up() -> None:
    """Load the morphological model now (it is shared by every analyzer in the process)."""
    _kiwi().tokenize("워밍업")


def tokens(text: str) -> list[str]:
    """Content morphemes of `text`, lowercased, in order (repeats kept for BM25's tf)."""
    if not text.strip():
        return []
    specials = [m.group(0).replace(" ", "").lower() for m in _SPECIAL.finditer(text)]
    rest = _SPECIAL.sub(" ", text)
    out = [
        t.form.lower()
        for t in _kiwi().tokenize(rest)
        if t.tag in _KEEP_TAGS or t.tag.startswith(_KEEP_PREFIXES)
    ]
    return specials + out


def morphemes(text: str) -> list[Any]:
    """kiwi's morphemes of `text`, all of them (each with `form`, `tag`, `start`, `len`),
    for callers that need the particles and offsets `tokens` drops."""
    return list(_kiwi().tokenize(text)) if text.strip() else []


def tokens_many(texts: Sequence[str]) -> list[list[str]]:
    return [tokens(text) for text in texts]


@dataclass(frozen=True, slots=True)
class LexiconGroup:
    terms: tuple[str, ...]
    expand: tuple[str, ...]


@dataclass(frozen=True)
class Lexicon:
    groups: tuple[LexiconGroup, ...] = ()
    _tokens: dict[int, list[str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, path: Path | str) -> Lexicon:
        """Read `lexicon.yaml`; a missing file is an empty lexicon, a malformed one an error."""
        file = Path(path)
        if not file.exists():
            return cls()
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise LexiconError(f"{file.name}: not valid YAML: {exc}") from exc
        raw = data.get("groups") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise LexiconError(f"{file.name}: expected a top-level 'groups' list")
        groups: list[LexiconGroup] = []
        for n, entry in enumerate(raw, start=1):
            where = f"{file.name}: group {n}"
            if not isinstance(entry, dict) or set(entry) - {"terms", "expand"}:
                raise LexiconError(f"{where}: expected keys 'terms' and 'expand'")
            terms = entry.get("terms")
            expand = entry.get("expand") or []
            if not isinstance(terms, list) or not terms or not isinstance(expand, list):
                raise LexiconError(f"{where}: 'terms' must be a non-empty list, 'expand' a list")
            if not all(isinstance(t, str | int) for t in [*terms, *expand]):
                raise LexiconError(f"{where}: terms and expansions must be strings")
            groups.append(
                LexiconGroup(
                    tuple(_SPACES.sub("", str(t)).lower() for t in terms),
                    tuple(str(e).lower() for e in expand),
                )
            )
        return cls(tuple(groups))

    def expand(self, text: str) -> list[str]:
        """Expansion words for every group one of whose terms occurs in `text`."""
        squashed = _SPACES.sub("", text).lower()
        out: list[str] = []
        for group in self.groups:
            if any(term in squashed for term in group.terms):
                out.extend(e for e in group.expand if e not in out)
        return out

    def expansion_tokens(self, text: str) -> list[str]:
        """Morphemes of `expand(text)`, analysed once per group and then cached."""
        squashed = _SPACES.sub("", text).lower()
        out: list[str] = []
        for n, group in enumerate(self.groups):
            if any(term in squashed for term in group.terms):
                if n not in self._tokens:
                    self._tokens[n] = tokens(" ".join(group.expand))
                out.extend(t for t in self._tokens[n] if t not in out)
        return out


_TYPE_WORDS = sorted(
    {t.name for t in LEADERSHIP_TYPES} | {t.code for t in LEADERSHIP_TYPES}, key=len, reverse=True
)
_TYPE_PATTERN = re.compile("|".join(map(re.escape, _TYPE_WORDS)))


def without_type_names(text: str) -> str:
    """`text` with leadership type names and codes removed.

    Used when the leader's type is already known (it is boosted separately): "참여실무형인데
    회의가 길어요" otherwise ranks the 참여실무형 profile above the meeting guide, whatever
    the question is about."""
    return _TYPE_PATTERN.sub(" ", text)
