"""Import and download the public chinese-poetry JSON corpus (MIT licence).

``import_json`` turns chinese-poetry files (``[{"title", "paragraphs", ...}, ...]``)
into raw.txt lines ``title 体裁：【body】``, skipping poems that would teach the model
noise (lacunae, editorial notes in brackets, empty bodies, newlines) and counting
them by reason. ``download`` fetches the 全唐诗 files with urllib, resumably.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InputError, OptionError
from ..verse.forms import CLOSE, OPEN
from .corpus import format_line, read_text_file

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/master/全唐诗/"
TANG_FILES = tuple(f"poet.tang.{n}.json" for n in range(0, 58000, 1000))  # 58 files, 1000 poems each
DEFAULT_TIMEOUT = 60.0
MAX_EXAMPLES = 3

# reason key -> explanation shown in reports
SKIP_REASONS = {
    "empty_body": "empty body (no paragraphs)",
    "lacuna": "lacunae or placeholder characters (□ ○ ■ ● ⿰ …)",
    "brackets": "【】 in the title, or an editorial note （…）[…]《…》〔…〕{…} in the body",
    "newline": "a line break in the title, or a line break, tab or other control character in the body",
}
_LACUNA = re.compile("[□■▢◻○●◯\ufffd\u2ff0-\u2ffb]")
_BODY_BRACKETS = re.compile(r"[【】（）()\[\]《》〔〕〖〗{}〈〉]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACES = re.compile(r"[^\S\n\r]+")  # runs of whitespace other than line breaks
_GENRE = re.compile(r"^[^\s：:【】]+$")


@dataclass
class ImportReport:
    """What ``import_json`` did.

    Args:
        files: the JSON files read, in order.
        poems: poems found in them.
        written: lines written to ``out_path``.
        skipped: reason key (see ``SKIP_REASONS``) -> number of poems skipped.
        examples: reason key -> the first few ``(file, index)`` skipped for it (index 0-based).
        out_path: the raw.txt written.
    """

    files: list[str] = field(default_factory=list)
    poems: int = 0
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    out_path: str = ""

    def skip(self, reason: str, source: str, index: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append((source, index))

    def summary_lines(self) -> list[str]:
        """Human-readable summary: one line for the totals, one per skip reason."""
        lines = [f"Wrote {self.written} of {self.poems} poems from {len(self.files)} file(s) to {self.out_path}"]
        for reason, n in self.skipped.items():
            first = ", ".join(f"{Path(f).name}[{i}]" for f, i in self.examples.get(reason, []))
            lines.append(f"  skipped {n}: {SKIP_REASONS[reason]} (e.g. {first})")
        return lines


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def resolve_json_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders into their ``*.json`` files (natural order: poet.tang.2000 before .10000).

    Args:
        paths: JSON files and/or folders holding them.

    Raises:
        InputError: nothing given, a path is missing, or a folder holds no ``*.json``.
    """
    if not paths:
        raise InputError("no JSON file given; pass chinese-poetry files such as poet.tang.0.json or their folder")
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted((f for f in p.glob("*.json") if f.is_file()), key=_natural_key)
            if not found:
                raise InputError(f"{p}: folder has no *.json files; pass the folder holding poet.tang.*.json")
            files.extend(found)
        elif not p.exists():
            raise InputError(f"{p}: no such file or folder; check the path")
        else:
            files.append(p)
    return files


def check_genre(genre: str) -> str:
    """Return ``genre`` if it can stand before ``：【`` in a raw.txt line, else raise ``OptionError``."""
    if not _GENRE.match(genre or ""):
        raise OptionError(f"--genre {genre!r}: must be one word without spaces, colons or 【】 (e.g. 唐诗)")
    return genre


def check_output(out_path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an output that exists (unless ``overwrite``) or is a folder; return it as a Path.

    Args:
        out_path: the raw.txt to write.
        overwrite: allow replacing an existing file.
    """
    out = Path(out_path)
    if out.is_dir():
        raise OptionError(f"--out {out}: is a folder; give a file name such as {out / 'raw.txt'}")
    if out.exists() and not overwrite:
        raise OptionError(f"--out {out}: already exists; pass --overwrite to replace it or choose another name")
    return out


def load_poems(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """Read one chinese-poetry JSON file as ``(title, paragraphs)`` pairs.

    Args:
        path: a file such as poet.tang.0.json (``rhythmic`` is used when ``title`` is absent, as in 宋词).

    Raises:
        InputError: missing, not UTF-8, not JSON (with line and column), or not a list of poem objects.
    """
    text = read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
                         "pass a chinese-poetry file such as poet.tang.0.json") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of poems [{{\"title\": …, \"paragraphs\": […]}}, …], "
                         f"got a JSON {type(data).__name__}")
    poems = []
    for i, item in enumerate(data):
        title = item.get("title", item.get("rhythmic", "")) if isinstance(item, dict) else None
        paragraphs = item.get("paragraphs") if isinstance(item, dict) else None
        if (not isinstance(title, str) or not isinstance(paragraphs, list)
                or not all(isinstance(s, str) for s in paragraphs)):
            raise InputError(f"{path}: item [{i}] is not a poem object with a \"title\" string and "
                             "\"paragraphs\" list of strings; pass chinese-poetry poem JSON")
        poems.append((title, paragraphs))
    return poems


def _skip_reason(title: str, body: str) -> str | None:
    if not body:
        return "empty_body"
    if _CONTROL.search(title) or _CONTROL.search(body):
        return "newline"
    if OPEN in title or CLOSE in title or _BODY_BRACKETS.search(body):
        return "brackets"
    if _LACUNA.search(title) or _LACUNA.search(body):
        return "lacuna"
    return None


def _convert_all(converter, texts: list[str]) -> list[str]:
    """Convert many newline-free strings with one OpenCC call (falls back to one call each)."""
    if not texts:
        return texts
    out = converter.convert("\n".join(texts)).split("\n")
    return out if len(out) == len(texts) else [converter.convert(t) for t in texts]


def import_json(files: Sequence[str | os.PathLike], out_path: str | os.PathLike, genre: str = "唐诗",
                to_simplified: bool = False, overwrite: bool = False) -> ImportReport:
    """Convert chinese-poetry JSON files into a raw.txt, one ``title 体裁：【body】`` a line.

    Args:
        files: JSON files and/or folders of them (folders: every ``*.json``, natural order).
        out_path: the raw.txt to write (atomically; its folder is created).
        genre: the genre word written before ``：【``.
        to_simplified: convert titles and bodies from traditional to simplified (OpenCC t2s).
        overwrite: replace ``out_path`` if it exists.

    Raises:
        OptionError: bad genre, or ``out_path`` exists without ``overwrite``.
        InputError: an input is missing or not chinese-poetry JSON, or no poem could be kept.
    """
    check_genre(genre)
    out = check_output(out_path, overwrite)
    paths = resolve_json_files(files)
    converter = None
    if to_simplified:
        import opencc  # imported here: only this option needs it

        converter = opencc.OpenCC("t2s")
    report = ImportReport(out_path=str(out))
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise OptionError(f"--out {out}: cannot write ({exc.strerror}); choose another path") from None
    try:
        with f:
            for path in paths:
                source = str(path)
                poems = load_poems(path)
                report.files.append(source)
                report.poems += len(poems)
                titles, bodies = [], []
                for i, (title, paragraphs) in enumerate(poems):
                    body = "".join(paragraphs).strip()
                    title = _SPACES.sub(" ", title).strip()
                    reason = _skip_reason(title, body)
                    if reason:
                        report.skip(reason, source, i)
                        continue
                    titles.append(title)
                    bodies.append(body)
                if converter is not None:
                    titles, bodies = _convert_all(converter, titles), _convert_all(converter, bodies)
                for title, body in zip(titles, bodies):
                    f.write(format_line(title, genre, body) + "\n")
                report.written += len(bodies)
            f.flush()
            os.fsync(f.fileno())
        if report.written == 0:
            reasons = ", ".join(f"{SKIP_REASONS[r]} ×{n}" for r, n in report.skipped.items()) or "no poems"
            raise InputError(f"{paths[0]}: no poem could be imported ({reasons}); nothing written to {out}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return report


def _quote_url(url: str) -> str:
    """Percent-encode non-ASCII characters in a URL path (already-encoded parts are kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=urllib.parse.quote(parts.path, safe="/%")))


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` to ``dest`` through ``dest.part``; any failure is a one-line InputError."""
    hint = "check the internet connection, or pass --base-url pointing at a folder that holds poet.tang.*.json"
    part = dest.with_name(dest.name + ".part")
    try:
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise InputError(f"{url}: HTTP {exc.code} {exc.reason}; {hint}") from None
        except urllib.error.URLError as exc:
            raise InputError(f"{url}: cannot download ({exc.reason}); {hint}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise InputError(f"{url}: cannot download ({exc or type(exc).__name__}); {hint}") from None
        with resp:
            try:
                f = open(part, "wb")
            except OSError as exc:
                raise InputError(f"{part}: cannot save the download ({exc.strerror}); check --dest") from None
            with f:
                try:
                    while chunk := resp.read(1 << 16):
                        f.write(chunk)
                except (OSError, http.client.HTTPException) as exc:
                    raise InputError(f"{url}: download interrupted ({exc or type(exc).__name__}); "
                                     f"run again to resume, or {hint}") from None
        os.replace(part, dest)
    finally:
        if part.exists():
            part.unlink()


def _is_json_list(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return isinstance(json.load(f), list)
    except (OSError, ValueError):
        return False


def download(dest_dir: str | os.PathLike, base_url: str = DEFAULT_BASE_URL, files: Sequence[str] | None = None,
             timeout: float = DEFAULT_TIMEOUT, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Download chinese-poetry 全唐诗 JSON files; files already present and valid are kept.

    Args:
        dest_dir: folder to save them in (created if needed).
        base_url: the folder URL holding the files (non-ASCII is percent-encoded).
        files: file names to fetch; default ``TANG_FILES`` (poet.tang.0.json … poet.tang.57000.json).
        timeout: seconds to wait for the server on each request.
        progress: called with each file name once it is present (the CLI draws a bar with it).

    Returns:
        The paths of the JSON files, in ``files`` order.

    Raises:
        InputError: a file cannot be fetched (names the URL) or is not JSON, or ``dest_dir`` is not writable.
    """
    dest = Path(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{dest}: cannot create the download folder ({exc.strerror}); choose another --dest") from None
    base = _quote_url(base_url if base_url.endswith("/") else base_url + "/")
    names = list(TANG_FILES if files is None else files)
    paths = []
    for name in names:
        paths.append(_download_one(base, name, dest / name, timeout))
        if progress:
            progress(name)
    return paths


def _download_one(base: str, name: str, path: Path, timeout: float) -> Path:
    """Fetch one JSON file unless a valid copy is present.

    Args:
        base: the folder URL, percent-encoded, ending in ``/``.
        name: the file name.
        path: where it goes.
        timeout: seconds to wait for the server.
    """
    if _is_json_list(path):
        return path
    url = base + urllib.parse.quote(name)
    _fetch(url, path, timeout)
    if not _is_json_list(path):
        path.unlink()
        raise InputError(f"{url}: the server did not send a JSON list of poems; check --base-url")
    return path


def download_license(dest_dir: str | os.PathLike, base_url: str = DEFAULT_BASE_URL,
                     timeout: float = DEFAULT_TIMEOUT) -> Path | None:
    """Best effort: save the corpus's LICENSE (one folder above ``base_url``) into ``dest_dir``.

    Args:
        dest_dir: folder to save it in.
        base_url: the 全唐诗 folder URL; the licence is fetched from ``../LICENSE``.
        timeout: seconds to wait for the server.

    Returns:
        The saved path, or None when it could not be fetched.
    """
    path = Path(dest_dir) / "LICENSE"
    if path.is_file():
        return path
    base = _quote_url(base_url if base_url.endswith("/") else base_url + "/")
    try:
        _fetch(urllib.parse.urljoin(base, "../LICENSE"), path, timeout)
    except InputError:
        return None
    return path
