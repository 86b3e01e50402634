"""Personal data masked before a text leaves the server or is stored.

`mask_pii` replaces Korean resident and alien registration numbers, phone numbers,
e-mail addresses, card numbers and bank account numbers with typed placeholders
(`[주민등록번호]`, `[전화번호]`, ...). The chat service masks a question (and the
history `/chat` sends) before it is retrieved on, stored, sent to Gemini or logged; the
report service masks the free text of report inputs; the JSON log formatter masks
every message and traceback as a last line of defence. `PII_MASKING=off` turns the
first two off (the log formatter always masks).

Deliberate decisions (do not "fix"):

- Order matters: e-mail, registration numbers, card numbers, phone numbers, then
  account numbers. Each placeholder holds no digit, so a later pattern never matches
  part of an earlier replacement, and masking twice changes nothing.
- Registration numbers need a real birth date (YYMMDD, the century from the 7th
  digit) and a 7th digit of 1-8 (5-8: 외국인등록번호), but no checksum: numbers issued
  since October 2020 no longer carry a valid one.
- Card numbers are 13-19 digits, plain or in groups, and must pass the Luhn check:
  that is what keeps a 16-digit order number from being masked.
- Phone numbers are Korean ones: mobile 010/011/016-019, Seoul 02, area codes 031-064,
  070, 050x and 080, with hyphens, dots, spaces or nothing between groups, and +82. A
  representative number such as 1588-1234 belongs to a business and stays.
- Account numbers: hyphenated runs of three or four groups (10-14 digits) as Korean
  banks print them (국민 6-2-6, 신한 3-3-6, 우리 4-3-6, 하나 3-6-5, 농협 3-4-4-2,
  기업 3-6-2-3, 카카오뱅크 4-2-7, ...), or 10-14 plain digits right after a word
  such as 계좌/통장/입금/은행. Plain digits without such a word are left alone: they are
  far more often order or tracking numbers.
- A number inside a run of ASCII letters and digits (an API key, a hash, `user0101...`)
  is part of that token and stays; Korean text right before or after a number does not
  protect it (`번호는010-1234-5678입니다` is masked).
- Dates (2024-12-03, 2024.12.03), amounts (1,500,000원), version strings (3.10.12),
  times and two-group numbers (order numbers like 20241203-000123) are never touched;
  `tests/privacy/test_pii.py` holds the table of cases that must and must not be masked.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date
from typing import TYPE_CHECKING

from ..llm.base import Turn

if TYPE_CHECKING:
    from .chat import TurnRequest

RRN = "[주민등록번호]"
ALIEN = "[외국인등록번호]"
PHONE = "[전화번호]"
EMAIL = "[이메일]"
CARD = "[카드번호]"
ACCOUNT = "[계좌번호]"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A number inside a longer run of ASCII letters and digits (a key, a hash, an id) is part
# of that token, not a number of its own; Korean text right next to it is fine.
_START = r"(?<![A-Za-z0-9])(?<!\d[-.])"
_END = r"(?![-.]?\d)(?![A-Za-z])"
_RRN = re.compile(
    _START + r"(\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\s?[-–]?\s?([1-8])\d{6}" + _END
)
_CARD = re.compile(_START + r"\d(?:[ -]?\d){12,18}" + _END)
_PHONE = re.compile(
    r"(?<![A-Za-z0-9+])(?<!\d[-.])"
    r"(?:(?:\+82[-.\s]?\(?0?\)?|\(?0)"
    r"(?:1[016789]|2|[3-6][1-5]|70|50[2-8]|80)\)?)"
    r"[-.\s]?\d{3,4}[-.\s]?\d{4}" + _END
)
_ACCOUNT_GROUPED = re.compile(r"(?<![A-Za-z0-9-])(?<!\d[.])\d{2,6}(?:-\d{2,7}){2,3}" + _END)
_ACCOUNT_PLAIN = re.compile(
    r"((?:계좌|통장|입금|송금|이체|은행|뱅크|account)\D{0,12}?)(?<![A-Za-z0-9])\d{10,14}"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SEPARATORS = re.compile(r"[ -]")


def _rrn(match: re.Match[str]) -> str:
    yy, mm, dd, kind = (int(g) for g in match.groups())
    century = 1900 if kind in (1, 2, 5, 6) else 2000
    try:
        date(century + yy, mm, dd)
    except ValueError:
        return match[0]
    return ALIEN if kind >= 5 else RRN


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    text = match[0]
    digits = _SEPARATORS.sub("", text)
    if not 13 <= len(digits) <= 19 or not luhn_ok(digits):
        return text
    groups = _SEPARATORS.split(text)
    # Written in groups, a card number is 4-4-4-4(-3), 4-6-4 or 4-6-5; anything else with
    # separators is some other number that happens to pass Luhn.
    if len(groups) > 1 and not (
        all(len(g) == 4 for g in groups[:-1]) or [len(g) for g in groups] in ([4, 6, 4], [4, 6, 5])
    ):
        return text
    return CARD


def _account_grouped(match: re.Match[str]) -> str:
    digits = match[0].replace("-", "")
    return ACCOUNT if 10 <= len(digits) <= 14 else match[0]


def mask_pii(text: str) -> str:
    """`text` with personal data replaced by typed placeholders."""
    if not any(ch.isdigit() or ch == "@" for ch in text):
        return text
    text = _EMAIL.sub(EMAIL, text)
    text = _RRN.sub(_rrn, text)
    text = _CARD.sub(_card, text)
    text = _PHONE.sub(PHONE, text)
    text = _ACCOUNT_GROUPED.sub(_account_grouped, text)
    return _ACCOUNT_PLAIN.sub(lambda m: m[1] + ACCOUNT, text)


def mask_tree(value: object) -> object:
    """`value` (parsed JSON) with every string, keys included, masked."""
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, dict):
        return {mask_tree(k) if isinstance(k, str) else k: mask_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_tree(v) for v in value]
    return value


def mask_turn(question: str, req: TurnRequest) -> tuple[str, TurnRequest]:
    """A turn's question and the history it carries (`/chat`), masked."""
    if req.history is not None:
        history = tuple(Turn(t.role, mask_pii(t.content)) for t in req.history)
        req = replace(req, history=history)
    return mask_pii(question), req
