"""Corpus diagnostics: what ``prepare`` and ``corpus stats`` report about a corpus.

``corpus_report`` returns plain JSON-able data (it is stored in the manifest);
``format_report`` renders it for the terminal.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

from ..config import DEFAULT_N_CTX
from ..verse.cipai import format_patterns, learn_patterns
from ..verse.metre import corpus_metre
from .corpus import SKIP_REASONS, ReadResult
from .vocab import UNK_ID, CharVocab

COVERAGE_TOP = (500, 1000, 2000, 3000, 5000)
SHOW_LOCATIONS = 3


def regular_form_counts(bodies: Sequence[str]) -> Counter:
    """How many bodies follow each regular form: ``forms.regular_form`` for many bodies at once.

    One compiled regex (built from ``forms.FORMS`` and ``forms.CLAUSE_MARKS``) runs over all
    bodies joined by newlines, instead of a Python call per poem. It implements exactly
    ``regular_form``'s rule: the clauses between the marks ，。？！； all have the form's clause
    length, the form's number of clauses, the marks are the form's (，。 alternating) and the body
    ends with a mark. ``tests/test_corpus.py`` checks it agrees with ``regular_form`` poem by poem.

    Args:
        bodies: poem bodies (the text between 【 and 】).

    Returns:
        form name -> number of bodies in that form (forms with none are absent).
    """
    from ..verse.forms import regular_form

    if not bodies:
        return Counter()
    text = "\n".join(bodies)
    compiled = _regular_regex()
    if compiled is None or text.count("\n") != len(bodies) - 1:
        # forms whose bodies share a length, or a body with a newline: one call per body
        return Counter(f.name for f in map(regular_form, bodies) if f is not None)
    pattern, by_length = compiled
    lengths = Counter(len(m) for m in pattern.findall(text))
    return Counter({by_length[n]: c for n, c in lengths.items()})


_REGULAR: tuple[re.Pattern, dict[int, str]] | None = None


def _regular_regex() -> tuple[re.Pattern, dict[int, str]] | None:
    """The regex matching a regular body, and form name by body length (None if two forms share a length)."""
    global _REGULAR
    if _REGULAR is None:
        from ..verse.forms import CLAUSE_MARKS, FORMS

        other = f"[^{re.escape(CLAUSE_MARKS)}\n]"
        alternatives, by_length = [], {}
        for form in FORMS.values():
            body_re = "".join(f"{other}{{{form.clause_len}}}{re.escape(mark)}" for mark in form.punctuation)
            alternatives.append(body_re)
            by_length[form.clauses * (form.clause_len + 1)] = form.name
        if len(by_length) != len(FORMS):
            return None
        _REGULAR = (re.compile("^(?:" + "|".join(alternatives) + ")$", re.MULTILINE), by_length)
    return _REGULAR


def corpus_report(read: ReadResult, vocab: CharVocab, ids: np.ndarray | None, lengths: np.ndarray,
                  n_ctx: int = DEFAULT_N_CTX, vocab_given: bool = False, chars: Counter | None = None,
                  unk_occurrences: int | None = None) -> dict:
    """Summarise a parsed corpus.

    Args:
        read: the parsed corpus (kept poems and skipped lines).
        vocab: the vocabulary used to encode it.
        ids: the encoded kept lines, concatenated.
        lengths: the length of each encoded line.
        n_ctx: the model context, to count poems longer than it.
        vocab_given: the vocabulary came from ``--vocab`` (then list the characters it misses).
        chars: the character counts of the kept poems' canonical lines, when already counted.
        unk_occurrences: the number of [UNK] ids, when already counted (then ``ids`` may be None).
    """
    poems = read.poems
    if chars is None:
        chars = CharVocab.count_chars(p.text for p in poems)
    total = sum(chars.values())
    freq = np.array(sorted(chars.values(), reverse=True), dtype=np.int64)
    cum = np.cumsum(freq) if len(freq) else np.zeros(1, np.int64)
    coverage = {str(n): round(float(cum[min(n, len(cum)) - 1] / max(total, 1)), 4) for n in COVERAGE_TOP}
    body_len = np.array([len(p.body) for p in poems], dtype=np.int64)
    line_len = lengths.astype(np.int64)
    forms = regular_form_counts([p.body for p in poems])
    regular = sum(forms.values())
    unk = int(np.count_nonzero(ids == UNK_ID)) if unk_occurrences is None else int(unk_occurrences)
    missing = Counter({c: n for c, n in chars.items() if c not in vocab.index})
    report = {
        "files": list(read.files),
        "lines": read.lines,
        "blank_lines": read.blank,
        "poems_kept": len(poems),
        "skipped": {r: {"count": len(v), "why": SKIP_REASONS[r],
                        "first": [f"{f}:{ln}" for f, ln in v[:SHOW_LOCATIONS]]}
                    for r, v in sorted(read.skipped.items(), key=lambda kv: -len(kv[1]))},
        "characters": total,
        "distinct_characters": len(chars),
        "vocab_size": vocab.size,
        "unk_occurrences": unk,
        "coverage_of_top_chars": coverage,
        "line_length": _percentiles(line_len),
        "body_length": _percentiles(body_len),
        "longer_than_context": {"n_ctx": n_ctx, "poems": int(np.count_nonzero(line_len + 1 > n_ctx)),
                                "handling": "kept whole; packed training continues them in the next row"},
        "regular_form": {"poems": regular, "share": round(regular / max(len(poems), 1), 4),
                         "by_form": dict(forms.most_common())},
        "genres": dict(Counter(p.genre for p in poems).most_common()),
        "metre": corpus_metre([p.body for p in poems], chars),
        "cipai": learn_patterns((p.title, p.body) for p in poems),
    }
    for key in ("pass_standard", "pass_strict", "pingshui_rhyme_rate", "pingshui_ping_rhyme_rate"):
        report["regular_form"][key] = report["metre"].get(key)
    if vocab_given:
        report["not_in_vocab"] = {"characters": len(missing), "occurrences": sum(missing.values()),
                                  "most_common": "".join(c for c, _ in missing.most_common(50))}
    return report


def _format_metre(m: dict) -> list[str]:
    """The 格律 lines of ``format_report``."""
    if "error" in m:
        return [f"格律: not measured: {m['error']}."]
    if not m.get("regular"):
        return []
    out = [f"格律 of the regular poems ({m['script']} 平水韵 table): {m['pass_standard']:.1%} pass at standard "
           f"leniency, {m['pass_strict']:.1%} strict; rhyme in one 平水韵 group {m['pingshui_rhyme_rate']:.1%} "
           f"(in one 平声 group, no character twice: {m['pingshui_ping_rhyme_rate']:.1%})."]
    unknown = m.get("unknown")
    if unknown and unknown["characters"]:
        out.append(f"Not in the tone table: {unknown['unknown_occurrence_share']:.2%} of character occurrences "
                   f"({unknown['unknown_characters']} of {unknown['characters']} distinct characters), "
                   f"most common: {unknown['most_common_unknown'][:20] or '-'}.")
    return out


def _percentiles(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(values.max()),
            "mean": round(float(values.mean()), 1)}


def format_report(report: dict) -> str:
    """Render ``corpus_report`` output as a short human-readable block."""
    out = [f"Read {report['lines']} poem line(s) from {len(report['files'])} file(s) "
           f"({report['blank_lines']} blank line(s) ignored)."]
    skipped = report["skipped"]
    n_skipped = sum(v["count"] for v in skipped.values())
    out.append(f"Kept {report['poems_kept']} poem(s); skipped {n_skipped}.")
    for reason, info in skipped.items():
        out.append(f"  skipped {info['count']:>6} × {info['why']} ({reason}), e.g. {', '.join(info['first'])}")
    out.append(f"Characters: {report['characters']:,} ({report['distinct_characters']:,} distinct); "
               f"vocabulary: {report['vocab_size']:,} tokens incl. 3 special; "
               f"[UNK] occurrences: {report['unk_occurrences']:,}.")
    cov = ", ".join(f"top {k}: {v:.1%}" for k, v in report["coverage_of_top_chars"].items())
    out.append(f"Coverage of occurrences by the most frequent characters: {cov}.")
    ll, bl = report["line_length"], report["body_length"]
    out.append(f"Line length p50/p90/p99/max: {ll['p50']}/{ll['p90']}/{ll['p99']}/{ll['max']}; "
               f"body length p50/p90/p99/max: {bl['p50']}/{bl['p90']}/{bl['p99']}/{bl['max']}.")
    lc = report["longer_than_context"]
    out.append(f"Longer than the context ({lc['n_ctx']}): {lc['poems']} poem(s), {lc['handling']}.")
    rf = report["regular_form"]
    by = ", ".join(f"{k} {v}" for k, v in rf["by_form"].items()) or "none"
    rhyme = f"; rhyme rate of the regular ones {rf['rhyme_rate']:.1%} (modern finals)" if rf.get("rhyme_rate") is not None else ""
    out.append(f"Regular 绝句/律诗 form: {rf['poems']} ({rf['share']:.1%}): {by}{rhyme}.")
    out.extend(_format_metre(report.get("metre") or {}))
    if "distinct" in report:
        out.append(f"Distinct-1 / distinct-2 of the bodies: {report['distinct']['distinct_1']:.4f} / "
                   f"{report['distinct']['distinct_2']:.4f}.")
    out.extend(format_patterns(report.get("cipai") or {}))
    genres = ", ".join(f"{k} {v}" for k, v in list(report["genres"].items())[:5])
    out.append(f"Genres: {genres}.")
    if "not_in_vocab" in report:
        miss = report["not_in_vocab"]
        out.append(f"Not in the given vocabulary: {miss['characters']} character(s), {miss['occurrences']} "
                   f"occurrence(s) mapped to [UNK]; most common: {miss['most_common'] or '-'}.")
    return "\n".join(out)
