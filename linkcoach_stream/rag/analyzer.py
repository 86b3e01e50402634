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
- A question is analysed word by word (`question_tokens`), not as one text: each
  whitespace word's morphemes come from the word memo (`WordMemo`: how that word was
  analysed in the knowledge base itself, in context, by majority over the chunks it
  occurs in), else from kiwi on the word alone. 79 % of the eval questions' words are
  in the memo (~3 of a question's ~16 words are not), so a question costs ~0.25 ms
  against ~0.75 ms for kiwi on the whole question, ~0.07 ms per unknown word, and an
  unknown word's analysis can be cached (it depends on the word alone). Relevance
  moved by a question or two on every set (blind +2 hit@1 of 125, development -3 of
  130, regression +1 of 100; `benchmarks/relevance.py`, row "question analysed whole").
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
_WORD = re.compile(r"\S+")
# Stripped from a word's ends before it is looked up: kiwi drops them anyway (SF, SS, SW).
_EDGE = "\"'“”‘’«»()[]{}<>.,!?~…·:;*#`|^"

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


def _keep(tag: str) -> bool:
    return tag in _KEEP_TAGS or tag.startswith(_KEEP_PREFIXES)


def split_question(text: str) -> tuple[list[str], list[str]]:
    """`text`'s special forms ("1:1", "30%": kept whole) and its words, each stripped of
    edge punctuation (a word of punctuation alone is dropped), in order."""
    specials = [m.group(0).replace(" ", "").lower() for m in _SPECIAL.finditer(text)]
    words = [w for w in (m.strip(_EDGE) for m in _SPACES.split(_SPECIAL.sub(" ", text))) if w]
    return specials, words


def word_tokens(word: str) -> list[str]:
    """Content morphemes of one word analysed alone (a function of the word only)."""
    return [t.form.lower() for t in _kiwi().tokenize(word) if _keep(t.tag)]


def word_analyses(text: str) -> set[tuple[str, tuple[str, ...]]]:
    """Each word of `text` (stripped as `split_question` strips it) with the content
    morphemes kiwi gave it in context: what the word memo is built from."""
    if not text.strip():
        return set()
    rest = _SPECIAL.sub(" ", text)
    spans = [(m.start(), m.end(), m.group(0).strip(_EDGE)) for m in _WORD.finditer(rest)]
    forms: list[list[str]] = [[] for _ in spans]
    i = 0
    for t in _kiwi().tokenize(rest):
        while i < len(spans) and spans[i][1] <= t.start:
            i += 1
        if i < len(spans) and _keep(t.tag):
            forms[i].append(t.form.lower())
    return {(word, tuple(f)) for (_, _, word), f in zip(spans, forms, strict=True) if word}


def encode_word_analyses(pairs: set[tuple[str, tuple[str, ...]]]) -> str:
    """One line per word: the word, a tab, its morphemes separated by spaces."""
    return "\n".join(f"{w}\t{' '.join(f)}" for w, f in sorted(pairs))


def decode_word_analyses(stored: str) -> list[tuple[str, tuple[str, ...]]]:
    out: list[tuple[str, tuple[str, ...]]] = []
    for line in stored.split("\n"):
        word, tab, forms = line.partition("\t")
        if word and tab:
            out.append((word, tuple(forms.split())))
    return out


class WordMemo:
    """Word -> morphemes, as the knowledge base's own text analysed each word in context.

    A word analysed differently in different chunks takes the analysis most chunks gave
    it (ties: the smallest, so every instance builds the same memo in any chunk order).
    """

    def __init__(self, votes: dict[str, dict[tuple[str, ...], int]] | None = None) -> None:
        self.forms: dict[str, tuple[str, ...]] = {
            word: min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            for word, counts in (votes or {}).items()
        }

    @classmethod
    def of(cls, chunks: Sequence[Sequence[tuple[str, tuple[str, ...]]]]) -> WordMemo:
        votes: dict[str, dict[tuple[str, ...], int]] = {}
        for pairs in chunks:
            for word, forms in pairs:
                counts = votes.setdefault(word, {})
                counts[forms] = counts.get(forms, 0) + 1
        return cls(votes)

    def __len__(self) -> int:
        return len(self.forms)

    def get(self, word: str) -> tuple[str, ...] | None:
        return self.forms.get(word)


def question_tokens(text: str, memo: WordMemo) -> list[str]:
    """A question's content morphemes, word by word: the memo's, else kiwi on the word
    alone (what the query process computes for the words the memo lacks)."""
    specials, words = split_question(text)
    out = specials
    for word in words:
        known = memo.get(word)
        out.extend(known if known is not None else word_tokens(word))
    return out


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

    def warm(self) -> None:
        """Analyse every group's expansions now, so a search never waits for kiwi here."""
        for n, group in enumerate(self.groups):
            if n not in self._tokens:
                self._tokens[n] = tokens(" ".join(group.expand))

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
