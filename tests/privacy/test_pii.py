"""The masking table: what must be masked, and what must survive untouched."""

from __future__ import annotations

import logging

import pytest

from linkcoach_stream.logging_setup import JsonFormatter
from linkcoach_stream.services.pii import luhn_ok, mask_pii, mask_tree

MASKED = [
    # 주민등록번호 / 외국인등록번호: a real birth date, 7th digit 1-4 / 5-8
    ("주민번호는 900101-1234567입니다", "주민번호는 [주민등록번호]입니다"),
    ("9001012234567", "[주민등록번호]"),
    ("생년 050315-3123456", "생년 [주민등록번호]"),
    ("900101 - 1234567", "[주민등록번호]"),
    ("외국인등록번호 900101-5234567", "외국인등록번호 [외국인등록번호]"),
    ("021231-7654321", "[외국인등록번호]"),
    # phone numbers: mobile and landline, with and without separators
    ("제 번호는 010-1234-5678입니다", "제 번호는 [전화번호]입니다"),
    ("01012345678로 연락 주세요", "[전화번호]로 연락 주세요"),
    ("010 1234 5678", "[전화번호]"),
    ("010.1234.5678", "[전화번호]"),
    ("011-123-4567", "[전화번호]"),
    ("+82 10-1234-5678", "[전화번호]"),
    ("+821012345678", "[전화번호]"),
    ("사무실 02-123-4567", "사무실 [전화번호]"),
    ("(02) 1234-5678", "[전화번호]"),
    ("0212345678", "[전화번호]"),
    ("031-123-4567", "[전화번호]"),
    ("0311234567", "[전화번호]"),
    ("064-712-3456", "[전화번호]"),
    ("070-1234-5678", "[전화번호]"),
    ("0505-123-4567", "[전화번호]"),
    # e-mail
    ("메일은 hong.gildong@example.co.kr 입니다", "메일은 [이메일] 입니다"),
    ("연락처:kim+coach@mail.example.com으로", "연락처:[이메일]으로"),
    # card numbers, Luhn-checked
    ("카드 4111 1111 1111 1111", "카드 [카드번호]"),
    ("5500-0000-0000-0004", "[카드번호]"),
    ("4111111111111111", "[카드번호]"),
    ("아멕스 3782-822463-10005", "아멕스 [카드번호]"),
    # bank accounts in the formats banks print
    ("국민 123456-12-123456", "국민 [계좌번호]"),
    ("신한 110-123-456789", "신한 [계좌번호]"),
    ("우리 1002-123-456789", "우리 [계좌번호]"),
    ("하나 123-456789-12345", "하나 [계좌번호]"),
    ("농협 301-1234-5678-91", "농협 [계좌번호]"),
    ("기업 123-456789-01-012", "기업 [계좌번호]"),
    ("카카오뱅크 3333-12-1234567", "카카오뱅크 [계좌번호]"),
    ("입금 계좌는 12345678901234입니다", "입금 계좌는 [계좌번호]입니다"),
    ("통장: 1234567890", "통장: [계좌번호]"),
    # several in one text
    (
        "010-1111-2222, a@b.io, 900101-1234567",
        "[전화번호], [이메일], [주민등록번호]",
    ),
]

KEPT = [
    "회의는 2024-12-03 10:30에 합니다",
    "2024.12.03 보고",
    "2024년 12월 3일",
    "2023-2024년 목표",
    "예산 1,500,000원",
    "150000원을 썼습니다",
    "연봉 3,200만 원",
    "버전 3.10.12로 올렸습니다",
    "v2.1.0-rc1",
    "주문번호 20241203-000123",
    "주문번호 2024120312345678",  # 16 digits, fails Luhn
    "4111111111111112",  # fails Luhn
    "ORD-2024-0001-2345",
    "대표번호 1588-1234",
    "우편번호 06236",
    "991332-1234567",  # month 13: not a date
    "900230-1234567",  # 30 February
    "900101-9234567",  # 7th digit 9
    "팀원 12명 중 3명",
    "1234567890123",  # plain digits with no account word
    "010",
    "진단 점수 4.5 / 6",
    "IP 192.168.0.1",
    "그라운더에게 질문합니다",
    # digits inside a key, hash or id belong to that token
    "sk_live_51HxQ926379b56119543349006ab0d82bd3e20",
    "user01012345678",
    "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_personal_data_is_replaced_by_its_typed_placeholder(text: str, expected: str) -> None:
    assert mask_pii(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_dates_amounts_order_numbers_and_versions_survive(text: str) -> None:
    assert mask_pii(text) == text


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_masking_twice_changes_nothing(text: str, expected: str) -> None:
    assert mask_pii(mask_pii(text)) == expected


def test_luhn_check() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")


def test_report_inputs_are_masked_keys_included() -> None:
    masked = mask_tree({"010-1234-5678": 3, "note": ["a@b.io", 4], "n": 1.5})
    assert masked == {"[전화번호]": 3, "note": ["[이메일]", 4], "n": 1.5}


def test_log_lines_never_hold_personal_data() -> None:
    try:
        raise ValueError("bad input 010-1234-5678")
    except ValueError:
        record = logging.LogRecord(
            "t", logging.WARNING, __file__, 1, "user wrote %s", ("a@b.io",), None
        )
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "a@b.io" not in line and "010-1234-5678" not in line
    assert "[이메일]" in line and "[전화번호]" in line
