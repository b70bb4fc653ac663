"""词牌 forms learned from a corpus: the clause pattern each frequent title follows.

A 词 is written to a tune (词牌) whose clause pattern is fixed; in a raw.txt of 词 the title is the
词牌. ``learn_patterns`` records, for every title heading at least ``MIN_POEMS`` poems, the modal
clause pattern and the share of its poems that follow it.

The pattern is the sequence of clause lengths, clauses split at ，。？！；and at 、. Editions punctuate
the same tune differently — a 读 (short pause) is printed 、 or ，, a stanza end 。 or ， — so the
marks are not part of what a poem must follow; the pattern records the marks most poems on the modal
lengths use (with 、 written ，), which is what generation writes. Treating 、 as a break, lengths
only, is also how the shares in the project's reference measurements (``../shared/ANCHORS.md``) were
measured (浣溪沙 97%, 水调歌头 34%). Variant forms of a tune (又一体) are not separated: they lower the
share (水调歌头, 念奴娇), they are not recorded.
Titles that name no tune (``EXCLUDED_TITLES``: 失调名, the tune is lost) are skipped.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Iterable

MIN_POEMS = 20
EXCLUDED_TITLES = frozenset({"失调名", "无题"})
BREAKS = "，。？！；、"
_SPLIT = re.compile(f"([{BREAKS}])")
_MARK = str.maketrans({"、": "，"})


def clause_pattern(body: str) -> tuple[tuple[int, ...], str]:
    """The clause lengths of a body and the marks ending them (、 written ，, "" after a last clause without one).

    Args:
        body: a poem body.
    """
    parts = _SPLIT.split(body)
    clauses, marks = parts[0::2], parts[1::2]
    if clauses and clauses[-1] == "":
        clauses.pop()
    marks = (marks + [""])[:len(clauses)]
    return tuple(len(c) for c in clauses), "".join(marks).translate(_MARK)


def pattern_text(lengths: Iterable[int], marks: str) -> str:
    """E.g. ``7，7。7。`` from lengths and marks.

    Args:
        lengths: clause lengths.
        marks: the mark after each clause.
    """
    return "".join(f"{n}{m}" for n, m in zip(lengths, marks))


def learn_patterns(poems: Iterable[tuple[str, str]], min_poems: int = MIN_POEMS) -> dict[str, dict]:
    """The modal clause pattern of every title heading at least ``min_poems`` poems.

    Args:
        poems: ``(title, body)`` pairs.
        min_poems: the fewest poems a title needs.

    Returns:
        title -> ``poems``, ``clauses`` (lengths), ``marks``, ``pattern`` (``7，7。…``) and ``share``
        (of the title's poems with the modal lengths), most poems first.
    """
    poems = list(poems)
    counts = Counter(t for t, _ in poems)
    frequent = {t for t, n in counts.items() if n >= min_poems and t and t not in EXCLUDED_TITLES}
    bodies = defaultdict(list)
    for title, body in poems:
        if title in frequent:
            bodies[title].append(body)
    out = {}
    for title in sorted(frequent, key=lambda t: (-counts[t], t)):
        found = [clause_pattern(b) for b in bodies[title]]
        lengths, n = Counter(l for l, _ in found).most_common(1)[0]
        marks = Counter(m for l, m in found if l == lengths).most_common(1)[0][0]
        out[title] = {"poems": len(found), "clauses": list(lengths), "marks": marks,
                      "pattern": pattern_text(lengths, marks), "share": round(n / len(found), 4)}
    return out


def follows(body: str, entry: dict) -> bool:
    """Whether a body has the clause lengths of a learned pattern.

    Args:
        body: a poem body.
        entry: a value of ``learn_patterns``.
    """
    return list(clause_pattern(body)[0]) == entry["clauses"]


def format_accuracy(poems: Iterable[tuple[str, str]], patterns: dict[str, dict]) -> dict:
    """Among poems titled with a recorded 词牌, the share that follows its pattern ("format accuracy").

    Args:
        poems: ``(title, body)`` pairs (an unfinished poem's body "" never follows).
        patterns: ``learn_patterns`` output.

    Returns:
        ``poems`` (those judged) and ``share`` (None without any).
    """
    judged = [follows(body, patterns[title]) for title, body in poems if title in patterns]
    return {"poems": len(judged), "share": round(sum(judged) / len(judged), 4) if judged else None}


def format_patterns(patterns: dict[str, dict], top: int = 10) -> list[str]:
    """Report lines: how many titles have a pattern, and the ``top`` most frequent.

    Args:
        patterns: ``learn_patterns`` output.
        top: how many to list.
    """
    if not patterns:
        return []
    listed = "; ".join(f"{t} {e['poems']} poems, {e['share']:.0%} {e['pattern']}"
                       for t, e in list(patterns.items())[:top])
    return [f"词牌 patterns (titles heading ≥ {MIN_POEMS} poems): {len(patterns)}; top: {listed}."]
