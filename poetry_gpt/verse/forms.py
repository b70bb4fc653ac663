"""Regulated verse forms (五绝, 七绝, 五律, 七律): checking bodies and constraining generation.

A form is data (``Form``). ``check(body)`` measures a poem body (the text
between 【 and 】) against the regularity rule used in reports:

    a body is *regular* when it splits on the clause marks ，。？！； into 4 clauses
    (绝句) or 8 clauses (律诗), all of the same length, 5 or 7 characters, with
    ， and 。 alternating (，。，。…).

Rhyme: the last characters of the rhyme clauses (2 and 4; 律诗 also 6 and 8;
clause 1 may rhyme but need not, so it is not checked) must share a rhyme group.
Groups come from modern Mandarin finals (``pypinyin``) merged into the 14
rhyme groups of 中华新韵 (``RHYME_GROUPS``), with 支 (-i after zh/ch/sh/r/z/c/s)
merged into 齐 as 中华新韵 allows. Modern finals only approximate the classical
平水韵: characters whose reading changed (e.g. 斜 xia→xie, entering tones 入声)
can be counted wrong, and polyphonic characters get their most common reading
(except the few in ``_RHYME_READINGS``, e.g. 还 huán). Classical groups that modern
readings split (支/微/齐 → 齐 and 微; 灰 → 开 and 微; 鱼/虞 → 齐 and 姑; 元 → 寒 and 文)
make about a quarter of regular Tang poems count as not rhyming.

Importing this module imports neither TensorFlow nor pypinyin.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from ..errors import OptionError

OPEN, CLOSE = "【", "】"
CLAUSE_MARKS = "，。？！；"
COMMA, STOP = "，", "。"
_SPLIT = re.compile(f"([{CLAUSE_MARKS}])")


@dataclass(frozen=True)
class Form:
    """A regulated verse form.

    Args:
        name: short name, e.g. 五绝.
        full_name: the full name, e.g. 五言绝句.
        clause_len: characters per clause (5 or 7).
        clauses: number of clauses (4 for 绝句, 8 for 律诗).
        punctuation: the mark that ends each clause (，。 alternating).
        rhyme_clauses: 1-based clauses whose last character must rhyme.
        first_clause_may_rhyme: clause 1 may rhyme too (allowed, never required or checked).
    """

    name: str
    full_name: str
    clause_len: int
    clauses: int
    punctuation: tuple[str, ...]
    rhyme_clauses: tuple[int, ...]
    first_clause_may_rhyme: bool = True

    @property
    def body_len(self) -> int:
        """Characters in a body of this form, punctuation included."""
        return self.clauses * (self.clause_len + 1)


def _form(name: str, full_name: str, clause_len: int, clauses: int) -> Form:
    marks = tuple(COMMA if i % 2 == 0 else STOP for i in range(clauses))
    return Form(name, full_name, clause_len, clauses, marks, tuple(range(2, clauses + 1, 2)))


FORMS: dict[str, Form] = {
    "五绝": _form("五绝", "五言绝句", 5, 4),
    "七绝": _form("七绝", "七言绝句", 7, 4),
    "五律": _form("五律", "五言律诗", 5, 8),
    "七律": _form("七律", "七言律诗", 7, 8),
}
_BY_SHAPE = {(f.clause_len, f.clauses): f for f in FORMS.values()}
_BY_FULL_NAME = {f.full_name: f for f in FORMS.values()}
_TRADITIONAL_NAMES = str.maketrans("絕詩", "绝诗")  # 五絕, 七言律詩 … name the same forms


def get_form(name: str) -> Form:
    """The form called ``name``.

    Args:
        name: one of ``FORMS`` (五绝, 七绝, 五律, 七律) or a full name (五言绝句, …), in simplified
            or traditional characters (五絕, 七言律詩); surrounding spaces are ignored.

    Raises:
        OptionError: unknown name (the message lists the valid ones).
    """
    name = name.strip()
    key = name.translate(_TRADITIONAL_NAMES)
    form = FORMS.get(key) or _BY_FULL_NAME.get(key)
    if form is None:
        raise OptionError(f"--form: unknown form {name!r}; choose one of {', '.join(FORMS)} "
                          f"(or {', '.join(_BY_FULL_NAME)})")
    return form


# ---------------------------------------------------------------------------------- rhyme
# 中华新韵 (14 groups); pypinyin strict FINALS spell ü as v and keep uei/iou/uen.
RHYME_GROUPS: dict[str, tuple[str, ...]] = {
    "麻": ("a", "ia", "ua"),
    "波": ("o", "e", "uo", "io"),
    "皆": ("ie", "ve", "ê"),
    "开": ("ai", "uai"),
    "微": ("ei", "uei", "ui"),
    "豪": ("ao", "iao"),
    "尤": ("ou", "iou", "iu"),
    "寒": ("an", "ian", "uan", "van"),
    "文": ("en", "in", "uen", "un", "vn"),
    "唐": ("ang", "iang", "uang"),
    "庚": ("eng", "ing", "ong", "iong", "ueng"),
    "齐": ("i", "er", "v"),  # 支 (-i) has the same pypinyin final "i": merged, as 中华新韵 allows
    "姑": ("u",),
}
GROUP_NAMES = tuple(RHYME_GROUPS)
_FINAL_TO_GROUP = {fin: g for g, fins in RHYME_GROUPS.items() for fin in fins}
# polyphonic characters whose most common modern reading is not the one poems rhyme on
_RHYME_READINGS = {"还": "寒"}  # huán (return), not hái


def extract_body(text: str) -> tuple[str, bool]:
    """The body of a generated text and whether it was closed.

    Args:
        text: a generated line such as ``title 唐诗：【body】`` (the header may be missing).

    Returns:
        ``(body, closed)``: the text after the first 【 up to the next 】 (or to the end when
        there is none); a text without 【 is taken as all body.
    """
    start = text.find(OPEN)
    rest = text[start + 1:] if start >= 0 else text
    end = rest.find(CLOSE)
    return (rest, False) if end < 0 else (rest[:end], True)


def is_hanzi(char: str) -> bool:
    """True for one CJK ideograph (basic block, extension A, B-F, compatibility)."""
    if len(char) != 1:
        return False
    cp = ord(char)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF
            or 0x20000 <= cp <= 0x2FA1F or 0xF900 <= cp <= 0xFAFF)


@functools.lru_cache(maxsize=None)
def rhyme_final(char: str) -> str | None:
    """The rhyme group of one character (a key of ``RHYME_GROUPS``), cached per character.

    Args:
        char: one character.

    Returns:
        The group name (e.g. 唐 for 光/霜/乡), or None for non-Chinese characters and
        characters pypinyin has no reading for.
    """
    if not is_hanzi(char):
        return None
    if char in _RHYME_READINGS:
        return _RHYME_READINGS[char]
    from pypinyin import Style, lazy_pinyin

    finals = lazy_pinyin(char, style=Style.FINALS, strict=True, errors="ignore")
    return _FINAL_TO_GROUP.get(finals[0]) if finals else None


def tone_marks(body: str) -> tuple[list[str], list[int]]:
    """Each character's tone (平/仄/中, "" for marks and unknown characters) and the rhyme characters'
    indices: ``metre.tone_marks`` (the 平水韵 table is loaded on first use).

    Args:
        body: a poem body.
    """
    from .metre import tone_marks as marks

    return marks(body)


# ---------------------------------------------------------------------------------- check
@dataclass
class FormReport:
    """What ``check`` found in one body.

    Args:
        form: the form's name when the body is regular, else None.
        regular: the body follows the regularity rule (see the module docstring).
        clause_lengths: length of each clause (text after the last mark counts as a clause).
        punctuation: the mark ending each clause, in order.
        rhyme_chars: last characters of the rhyme clauses (regular bodies only).
        rhyme_finals: their rhyme groups (None for a character without one).
        rhymes: all rhyme groups equal and known; None for irregular bodies.
    """

    form: str | None
    regular: bool
    clause_lengths: list[int]
    punctuation: list[str]
    rhyme_chars: list[str] = field(default_factory=list)
    rhyme_finals: list[str | None] = field(default_factory=list)
    rhymes: bool | None = None


def split_clauses(body: str) -> tuple[list[str], list[str]]:
    """Split a body into clauses and their ending marks.

    Args:
        body: a poem body.

    Returns:
        ``(clauses, marks)``; text after the last mark is a final clause without a mark.
    """
    parts = _SPLIT.split(body)
    clauses, marks = parts[0::2], parts[1::2]
    if clauses and clauses[-1] == "":
        clauses.pop()
    return clauses, marks


def regular_form(body: str) -> Form | None:
    """The form a body follows by the regularity rule, or None.

    Args:
        body: a poem body.
    """
    clauses, marks = split_clauses(body)
    form = _BY_SHAPE.get((len(clauses[0]) if clauses else 0, len(clauses)))
    if form is None or len(marks) != len(clauses):
        return None
    if any(len(c) != form.clause_len for c in clauses) or tuple(marks) != form.punctuation:
        return None
    return form


def check(body: str) -> FormReport:
    """Check one body against the regularity rule and the rhyme of its form.

    Args:
        body: a poem body (the text between 【 and 】).
    """
    clauses, marks = split_clauses(body)
    form = regular_form(body)
    report = FormReport(form.name if form else None, form is not None, [len(c) for c in clauses], marks)
    if form is not None:
        report.rhyme_chars = [clauses[i - 1][-1] for i in form.rhyme_clauses]
        report.rhyme_finals = [rhyme_final(c) for c in report.rhyme_chars]
        first = report.rhyme_finals[0]
        report.rhymes = first is not None and all(f == first for f in report.rhyme_finals)
    return report
