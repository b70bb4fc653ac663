"""Read raw.txt corpora: one poem a line, ``title 体裁：【body】``.

The genre word (唐诗, 宋词, …) is whatever the line says. A title may be
missing (``唐诗：【…】``) and may contain spaces; an ASCII colon is accepted for
``：``. Every kept poem is re-written in one canonical form (``Poem.text``), the
form the model is trained on and that generation prompts are built in.

Lines that do not parse are skipped and counted by reason (``SKIP_REASONS``) with
their line numbers; files that cannot be read at all (missing, a folder, not
UTF-8, binary: a NUL byte in the first 8000 bytes, no poem line) raise
``InputError`` naming the file and line.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..config import DEFAULT_MAX_CHARS
from ..errors import InputError
from ..verse.forms import CLOSE, OPEN

#: a file is binary when a NUL byte occurs this early (git's rule: the first 8000 bytes)
BINARY_SNIFF_BYTES = 8000

_LINE = re.compile(r"^(?:(?P<title>.*?\S)[ \t\u3000]+)?(?P<genre>[^\s：:【】]+)[：:]【(?P<body>.*)】$")

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# reason key -> explanation shown in reports
SKIP_REASONS = {
    "no_brackets": "no 【…】 around the body",
    "no_header": "no `title 体裁：` before 【",
    "nested_brackets": "an extra 【 or 】 inside the body",
    "text_after_close": "text after the closing 】",
    "empty_body": "empty body",
    "control_chars": "control characters in the line",
    "too_long": "longer than --max-chars",
    "duplicate": "same body as an earlier poem",
}


@dataclass(frozen=True)
class Poem:
    """One parsed poem.

    Args:
        title: the title ("" when the line had none).
        genre: the genre word before ``：【`` (e.g. 唐诗).
        body: the text between 【 and 】.
        source: the file it came from.
        line_no: its 1-based line number there.
    """

    title: str
    genre: str
    body: str
    source: str = ""
    line_no: int = 0

    @property
    def text(self) -> str:
        """The canonical raw.txt line: ``title 体裁：【body】``."""
        return format_line(self.title, self.genre, self.body)


def format_line(title: str, genre: str, body: str) -> str:
    """Build a canonical raw.txt line.

    Args:
        title: poem title, may be empty.
        genre: genre word such as 唐诗.
        body: poem body without the brackets.
    """
    head = f"{title} {genre}" if title else genre
    return f"{head}：{OPEN}{body}{CLOSE}"


def prompt_prefix(title: str, genre: str, opening: str = "") -> str:
    """The start of a canonical line up to and including 【 and an opening (for generation).

    Args:
        title: poem title, may be empty.
        genre: genre word.
        opening: the first characters of the body, may be empty.
    """
    return format_line(title, genre, opening)[:-1]


@dataclass
class ReadResult:
    """What reading one or more raw.txt files produced.

    Args:
        poems: kept poems in file order.
        skipped: reason key -> list of ``(file, line_no)`` of skipped lines.
        lines: number of non-blank lines read.
        blank: number of blank lines.
        files: the files read.
    """

    poems: list[Poem] = field(default_factory=list)
    skipped: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    lines: int = 0
    blank: int = 0
    files: list[str] = field(default_factory=list)

    def skip(self, reason: str, source: str, line_no: int) -> None:
        self.skipped.setdefault(reason, []).append((source, line_no))

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())


def parse_line(line: str) -> tuple[str, str, str] | str:
    """Parse one non-blank line.

    Args:
        line: the line without its newline.

    Returns:
        ``(title, genre, body)`` or, when the line cannot be used, a key of ``SKIP_REASONS``.
    """
    if OPEN not in line or CLOSE not in line:
        return "no_brackets"
    if _CONTROL.search(line):
        return "control_chars"
    m = _LINE.match(line)
    if m is None:
        head, _, rest = line.partition(OPEN)
        if rest.rstrip().endswith(CLOSE) is False and CLOSE in rest:
            return "text_after_close"
        if not re.search(r"[^\s：:【】][：:]$", head):
            return "no_header"
        return "no_brackets"
    body = m.group("body")
    if OPEN in body or CLOSE in body:
        return "nested_brackets"
    if not body.strip():
        return "empty_body"
    return (m.group("title") or "").strip(), m.group("genre"), body


def read_text_file(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file (BOM allowed) with errors that name the file, byte and line.

    Args:
        path: the file to read.

    Raises:
        InputError: missing, a folder, unreadable, UTF-16, binary (a NUL byte in the first
            ``BINARY_SNIFF_BYTES``) or not UTF-8 (naming the byte offset and line, and an encoding
            that fits when one does). A later NUL is a control character of its line, which
            ``parse_line`` skips.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; pass the raw.txt file(s) inside it")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(f"{p}: encoded as UTF-16 (byte-order mark at byte 0, line 1); re-encode the file as UTF-8: "
                         f"`iconv -f UTF-16 -t UTF-8 {p.name} > {p.stem}.utf8.txt`")
    nul = data.find(b"\x00", 0, BINARY_SNIFF_BYTES)  # a NUL further on only spoils its line (control_chars)
    if nul >= 0:
        line_no = data.count(b"\n", 0, nul) + 1
        raise InputError(f"{p}: looks like a binary file (NUL byte at byte {nul}, line {line_no}); "
                         "pass a UTF-8 text file, one poem a line")
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + bom  # utf-8-sig counts from after the BOM
        line_no = data.count(b"\n", 0, offset) + 1
        hint = ""
        for enc in ("gb18030", "big5"):
            try:
                decoded = data.decode(enc)
            except UnicodeDecodeError:
                continue
            if OPEN in decoded and CLOSE in decoded:  # only suggest an encoding in which the poems appear
                hint = f" (it decodes as {enc.upper()}: `iconv -f {enc.upper()} -t UTF-8 {p.name} > {p.stem}.utf8.txt`)"
                break
        raise InputError(f"{p}: not UTF-8 at byte {offset} (line {line_no}); re-encode the file as UTF-8{hint}") from None
    return text


# A line that certainly parses cleanly: one 【 and one 】 (at the end, before an optional \r), no
# control characters, no surrounding white space. For such a line the parse of ``_LINE`` is
# unique, so this pattern yields exactly ``parse_line``'s groups; every other line goes through
# ``parse_line`` itself. Matching the whole text at once keeps the per-line Python work small.
_CTRL = "\\x00-\\x08\\x0a-\\x1f\\x7f"
_FAST_LINE = re.compile(
    f"^(?:([^\\s{_CTRL}【】](?:[^{_CTRL}【】]*[^\\s{_CTRL}【】])?)[ \\t\\u3000]+)?"
    f"([^\\s：:【】{_CTRL}]+)[：:]【([^{_CTRL}【】]*)】\\r?$",
    re.MULTILINE)


def _new_poem(title: str, genre: str, body: str, source: str, line_no: int,
              _new=object.__new__) -> Poem:
    """``Poem(...)`` without the frozen dataclass's per-field ``__setattr__`` (faster; the same object)."""
    poem = _new(Poem)
    poem.__dict__.update(title=title, genre=genre, body=body, source=source, line_no=line_no)
    return poem


def _read_one(text: str, source: str, result: ReadResult, max_chars: int,
              seen_bodies: set[str] | None) -> None:
    """Parse one file's text into ``result`` (``seen_bodies`` None keeps duplicates)."""
    poems, skip = result.poems, result.skip

    def slow(raw: str, line_no: int) -> None:
        line = raw.rstrip("\r")
        if not line.strip():
            result.blank += 1
            return
        result.lines += 1
        line = line.strip()
        if len(line) > max_chars:
            skip("too_long", source, line_no)
            return
        parsed = parse_line(line)
        if isinstance(parsed, str):
            skip(parsed, source, line_no)
            return
        keep(*parsed, line_no)

    def keep(title: str, genre: str, body: str, line_no: int) -> None:
        if seen_bodies is not None:
            if body in seen_bodies:
                skip("duplicate", source, line_no)
                return
            seen_bodies.add(body)
        poems.append(_new_poem(title, genre, body, source, line_no))

    def slow_block(start: int, end: int, line_no: int) -> int:
        """The lines of text[start:end] through the slow path; returns the next line number."""
        rows = text[start:end].split("\n")
        if rows[-1] == "":
            rows.pop()
        for raw in rows:
            slow(raw, line_no)
            line_no += 1
        return line_no

    pos, line_no, fast_lines = 0, 1, 0
    for m in _FAST_LINE.finditer(text):
        start, end = m.span()
        if start != pos:
            line_no = slow_block(pos, start, line_no)
        title, genre, body = m.groups()
        if end - start > max_chars or not body.strip():
            slow(text[start:end], line_no)
        else:
            fast_lines += 1
            keep(title or "", genre, body, line_no)
        line_no += 1
        pos = end + 1  # past the newline
    result.lines += fast_lines
    if pos < len(text):
        slow_block(pos, len(text), line_no)


def read_corpus(paths: Sequence[str | os.PathLike], max_chars: int = DEFAULT_MAX_CHARS,
                keep_duplicates: bool = False) -> ReadResult:
    """Read and parse raw.txt files.

    Args:
        paths: one or more raw.txt files, read in order.
        max_chars: lines longer than this are skipped (reason ``too_long``).
        keep_duplicates: keep poems whose body repeats an earlier poem's (skipped by default,
            so the validation split never holds a copy of a training poem).

    Raises:
        InputError: a file is missing, a folder, not UTF-8, binary, empty, blank, or has no
            usable poem line (the message names the file, the first bad line and the reasons).
    """
    if not paths:
        raise InputError("no raw.txt given; pass one or more files")
    result = ReadResult()
    seen_bodies: set[str] | None = None if keep_duplicates else set()
    with _gc_paused():  # millions of small objects, no cycles: the cyclic collector only costs time
        for path in paths:
            _read_file(path, result, max_chars, seen_bodies)
    return result


@contextlib.contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_file(path, result: ReadResult, max_chars: int, seen_bodies: set[str] | None) -> None:
    """Read one raw.txt into ``result``, raising ``InputError`` when it holds no usable poem."""
    text = read_text_file(path)
    source = str(path)
    result.files.append(source)
    before_kept, before_lines, before_blank = len(result.poems), result.lines, result.blank
    before_skipped = {r: len(v) for r, v in result.skipped.items()}
    _read_one(text, source, result, max_chars, seen_bodies)
    if result.lines == before_lines:
        if not text:
            raise InputError(f"{path}: the file is empty; expected one poem a line: `title 体裁：【body】`")
        raise InputError(f"{path}: only blank lines ({result.blank - before_blank}); "
                         "expected one poem a line: `title 体裁：【body】`")
    if len(result.poems) == before_kept:
        new = {r: v[before_skipped.get(r, 0):] for r, v in result.skipped.items()}
        new = {r: v for r, v in new.items() if v}
        if set(new) != {"duplicate"}:  # a file that only repeats earlier poems is not an input error
            reasons = ", ".join(f"{SKIP_REASONS[r]} ×{len(v)}" for r, v in new.items())
            first = min(ln for v in new.values() for _, ln in v)
            raise InputError(f"{path}: line {first}: no line is a usable poem `title 体裁：【body】` ({reasons})")


def genre_counts(poems: Iterable[Poem]) -> Counter:
    """How many poems each genre word has."""
    return Counter(p.genre for p in poems)
