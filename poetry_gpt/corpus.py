"""Read raw.txt corpora: one poem a line, ``title 体裁：【body】``.

The genre word (唐诗, 宋词, …) is whatever the line says. A title may be
missing (``唐诗：【…】``) and may contain spaces; an ASCII colon is accepted for
``：``. Every kept poem is re-written in one canonical form (``Poem.text``), the
form the model is trained on and that generation prompts are built in.

Lines that do not parse are skipped and counted by reason (``SKIP_REASONS``) with
their line numbers; files that cannot be read at all (missing, a folder, not
UTF-8, binary, no poem line) raise ``InputError`` naming the file and line.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import InputError

OPEN, CLOSE = "【", "】"
DEFAULT_MAX_CHARS = 4096

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
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; pass the raw.txt file(s) inside it")
    data = p.read_bytes()
    if b"\x00" in data[:1 << 20]:
        raise InputError(f"{p}: looks like a binary file (NUL bytes); pass a UTF-8 text file, one poem a line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        hint = ""
        for enc in ("gb18030", "big5", "utf-16"):
            try:
                data.decode(enc)
                hint = f" (it decodes as {enc.upper()}: `iconv -f {enc.upper()} -t UTF-8 {p.name} > {p.stem}.utf8.txt`)"
                break
            except UnicodeDecodeError:
                continue
        raise InputError(f"{p}: not UTF-8 at byte {exc.start} (line {line_no}); re-encode the file as UTF-8{hint}") from None
    return text


def read_corpus(paths: Sequence[str | os.PathLike], max_chars: int = DEFAULT_MAX_CHARS,
                keep_duplicates: bool = False) -> ReadResult:
    """Read and parse raw.txt files.

    Args:
        paths: one or more raw.txt files, read in order.
        max_chars: lines longer than this are skipped (reason ``too_long``).
        keep_duplicates: keep poems whose body repeats an earlier poem's (skipped by default,
            so the validation split never holds a copy of a training poem).

    Raises:
        InputError: a file is missing, a folder, not UTF-8, binary, or has no poem line at all.
    """
    if not paths:
        raise InputError("no raw.txt given; pass one or more files")
    result = ReadResult()
    seen_bodies: set[str] = set()
    for path in paths:
        text = read_text_file(path)
        source = str(path)
        result.files.append(source)
        before_kept, before_lines = len(result.poems), result.lines
        rows = text.split("\n")
        if rows and rows[-1] == "":
            rows.pop()
        for line_no, raw in enumerate(rows, start=1):
            line = raw.rstrip("\r")
            if not line.strip():
                result.blank += 1
                continue
            result.lines += 1
            line = line.strip()
            if len(line) > max_chars:
                result.skip("too_long", source, line_no)
                continue
            parsed = parse_line(line)
            if isinstance(parsed, str):
                result.skip(parsed, source, line_no)
                continue
            title, genre, body = parsed
            if not keep_duplicates:
                if body in seen_bodies:
                    result.skip("duplicate", source, line_no)
                    continue
                seen_bodies.add(body)
            result.poems.append(Poem(title, genre, body, source, line_no))
        if result.lines == before_lines:
            raise InputError(f"{path}: no poem lines (the file is empty or blank); "
                             "expected one poem a line: `title 体裁：【body】`")
        if len(result.poems) == before_kept and result.lines > before_lines:
            reasons = ", ".join(f"{SKIP_REASONS[r]} ×{len(v)}" for r, v in result.skipped.items()
                                if any(s == source for s, _ in v))
            first = min(ln for v in result.skipped.values() for s, ln in v if s == source)
            raise InputError(f"{path}: line {first}: no line is a poem `title 体裁：【body】` ({reasons})")
    return result


def genre_counts(poems: Iterable[Poem]) -> Counter:
    """How many poems each genre word has."""
    return Counter(p.genre for p in poems)
