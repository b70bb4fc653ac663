"""格律 of regulated verse (近体诗): the rules as tables, and the checker that reads them.

The rules are data, read by the checker here and meant for the decoding constraint too:

* ``BASE_LINES``: the four base lines per clause length, A B C D (五言 仄仄平平仄, 平平仄仄平,
  平平平仄仄, 仄仄仄平平; 七言 puts two opposite tones in front), as tone strings per leniency:
  ``strict`` (every position) and ``standard`` (一三五不论: odd positions free, written 中, except
  where freeing them would allow 孤平 — B's 1st / B7's 3rd character must stay 平 — or 三平尾 —
  D's 3rd / D7's 5th must stay 仄; ``NAMED_POSITIONS`` names those).
* ``SEQUENCES``: the line sequence of each pattern, for 4 (绝句) and 8 (律诗) clauses. They follow
  from 对 (the two lines of a couplet have opposite tones at the 2nd character, and its second line
  ends in 平) and 粘 (the first line of a couplet has the 2nd-character tone of the line before):
  ABCD (仄起 in 五言, 首句不入韵), DBCD (首句入韵), CDAB and BDAB, 律诗 repeating the second couplet
  pair. 平起/仄起 (the tone of line 1's 2nd character) and 首句入韵 (line 1 ends in 平) are read off
  the pattern's tones (``pattern_name``).
* ``RHYME``: the rhyme rules: rhyme lines end in 平 of one 平水韵 group; line 1 too when it ends
  in 平 (``first_line_in_group``, per leniency: both demand the same group; allowing any 平 group at
  ``standard`` — the 首句借邻韵 some poets used — raises tang-full's pass share from 57.1% to 59.4%);
  no rhyme character twice.

A character matches a required tone when one of its readings has it (多音字 like 看 match both);
a character missing from the table (``tones.UNKNOWN``) never counts as a violation, it is listed in
``PoemCheck.unknown``. 拗救 (compensated irregularities) is not modelled: a 拗 line fails
``strict`` and, unless it is within 一三五不论, ``standard``.

``check_poem`` explains one body; ``metre_figures`` measures many bodies at once with numpy
(lookup tables over code points; about a second for tang-full).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import OptionError
from ..sampling import CHOICE_RULES, LENIENCIES
from . import forms, tones

FREE = "中"
BASE_LINES: dict[int, dict[str, dict[str, str]]] = {
    5: {"A": {"strict": "仄仄平平仄", "standard": "中仄中平仄"},
        "B": {"strict": "平平仄仄平", "standard": "平平中仄平"},
        "C": {"strict": "平平平仄仄", "standard": "中平中仄仄"},
        "D": {"strict": "仄仄仄平平", "standard": "中仄仄平平"}},
    7: {"A": {"strict": "平平仄仄平平仄", "standard": "中平中仄中平仄"},
        "B": {"strict": "仄仄平平仄仄平", "standard": "中仄平平中仄平"},
        "C": {"strict": "仄仄平平平仄仄", "standard": "中仄中平中仄仄"},
        "D": {"strict": "平平仄仄仄平平", "standard": "中平中仄仄平平"}},
}
# odd positions the standard leniency keeps fixed, and the fault they prevent (1-based position)
NAMED_POSITIONS = {(5, "B", 1): "孤平", (7, "B", 3): "孤平", (5, "D", 3): "三平尾", (7, "D", 5): "三平尾"}
SEQUENCES: dict[int, tuple[str, ...]] = {
    4: ("ABCD", "DBCD", "CDAB", "BDAB"),
    8: ("ABCDABCD", "DBCDABCD", "CDABCDAB", "BDABCDAB"),
}
RHYME = {"tone": tones.PING, "one_group": True, "no_repeat": True,
         "first_line_in_group": {"strict": True, "standard": True}}

# tone codes: bit 1 平 possible, bit 2 仄 possible; 0 unknown. A pattern's 中 (FREE) is 0 (no requirement), a
# character's 中 (tones.EITHER, the same sign) is 3: two tables, since one dict cannot hold both
_CODE = {tones.PING: 1, tones.ZE: 2, FREE: 0}
_CHAR_CODE = {tones.PING: 1, tones.ZE: 2, tones.EITHER: 3, tones.UNKNOWN: 0}


def check_leniency(leniency: str, option: str = "--leniency") -> str:
    """``leniency`` if it is one of ``LENIENCIES``.

    Raises:
        OptionError: another value (names ``option`` and the choices).
    """
    if leniency not in LENIENCIES:  # the words of ``SamplingConfig``'s rule
        rule = next(r for r in CHOICE_RULES if r.name == "leniency")
        raise OptionError(f"{option}: {rule.expected}, got {leniency}")
    return leniency


def pattern_lines(form: forms.Form, sequence: str, leniency: str = "strict") -> list[str]:
    """The tone string of each line of a pattern.

    Args:
        form: a ``forms.Form``.
        sequence: one of ``SEQUENCES[form.clauses]`` (e.g. ``ABCD``).
        leniency: ``strict`` (the pattern itself) or ``standard`` (with free positions 中).
    """
    return [BASE_LINES[form.clause_len][letter][leniency] for letter in sequence]


def pattern_name(form: forms.Form, sequence: str) -> str:
    """E.g. ``仄起首句不入韵``: read off the strict tones of line 1.

    Args:
        form: a ``forms.Form``.
        sequence: one of ``SEQUENCES[form.clauses]``.
    """
    first = pattern_lines(form, sequence)[0]
    return f"{first[1]}起首句{'' if first[-1] == tones.PING else '不'}入韵"


def first_line_rhymes(form: forms.Form, sequence: str) -> bool:
    """Whether line 1 of the pattern is a rhyme line (ends in 平)."""
    return pattern_lines(form, sequence)[0][-1] == tones.PING


@functools.lru_cache(maxsize=None)
def required(form: forms.Form, leniency: str) -> np.ndarray:
    """Uint8 [patterns, clauses, clause_len]: the tone code each position requires (0 free).

    Args:
        form: a ``forms.Form``.
        leniency: one of ``LENIENCIES``.
    """
    return np.array([[[_CODE[t] for t in line] for line in pattern_lines(form, seq, leniency)]
                     for seq in SEQUENCES[form.clauses]], np.uint8)


# ---------------------------------------------------------------------------------- lookups
_LUT_SIZE = 0x30000


@dataclass
class Lookups:
    """Per-code-point arrays of one ``tones.ToneTable``.

    Args:
        tone: uint8 [code points]: tone code (1 平, 2 仄, 3 either, 0 unknown).
        ping: uint32: bit i set when the character is in 平声 group i.
        groups: uint64 [code points, 2]: bit i of the 106 groups (book order), any tone.
        table: the tone table.
    """

    tone: np.ndarray
    ping: np.ndarray
    groups: np.ndarray
    table: tones.ToneTable


@functools.lru_cache(maxsize=2)
def lookups(script: str = "simplified") -> Lookups:
    """The lookup arrays of a script's tone table (built once per process).

    Args:
        script: ``simplified`` or ``traditional``.
    """
    table = tones.table(script)
    index = {g: i for i, g in enumerate(tones.group_names())}
    tone = np.zeros(_LUT_SIZE, np.uint8)
    ping = np.zeros(_LUT_SIZE, np.uint32)
    groups = np.zeros((_LUT_SIZE, 2), np.uint64)
    for char, names in table.groups.items():
        cp = ord(char)
        if cp >= _LUT_SIZE or not names:
            continue
        tone[cp] = _CHAR_CODE[table.tone(char)]
        for name in names:
            i = index[name]
            if i < 30:
                ping[cp] |= np.uint32(1 << i)
            groups[cp, i // 64] |= np.uint64(1 << (i % 64))
    return Lookups(tone, ping, groups, table)


def _codepoints(bodies: Sequence[str], width: int) -> np.ndarray:
    """Int64 [n, width]: the code points of equal-length bodies."""
    if not bodies:
        return np.zeros((0, width), np.int64)
    flat = np.frombuffer("".join(bodies).encode("utf-32-le"), np.uint32).astype(np.int64)
    return flat.reshape(len(bodies), width)


def _clauses(codes: np.ndarray, form: forms.Form) -> np.ndarray:
    """[n, clauses, clause_len] code points without the clause marks."""
    return codes.reshape(len(codes), form.clauses, form.clause_len + 1)[:, :, :form.clause_len]


def _lut(table: np.ndarray, cps: np.ndarray) -> np.ndarray:
    return table[np.minimum(cps, _LUT_SIZE - 1)]


# ---------------------------------------------------------------------------------- judging
def _violations(tone: np.ndarray, form: forms.Form, leniency: str) -> np.ndarray:
    """Bool [n, patterns, clauses, clause_len]: positions whose tone breaks each pattern."""
    req = required(form, leniency)[None]
    t = tone[:, None]
    return (req > 0) & (t > 0) & ((t & req) == 0)


def _rhyme_ok(cps: np.ndarray, look: Lookups, form: forms.Form, leniency: str) -> np.ndarray:
    """Bool [n, patterns]: the rhyme rules of ``RHYME`` hold for each pattern."""
    ends = cps[:, :, -1]  # [n, clauses]
    rhyme_idx = [c - 1 for c in form.rhyme_clauses]
    ping = _lut(look.ping, ends)
    common = np.bitwise_and.reduce(ping[:, rhyme_idx], axis=1)
    with_first = common & ping[:, 0]
    out = np.zeros((len(cps), len(SEQUENCES[form.clauses])), bool)
    for k, seq in enumerate(SEQUENCES[form.clauses]):
        first = first_line_rhymes(form, seq)
        in_group = first and RHYME["first_line_in_group"][leniency]
        ok = (with_first if in_group else common) != 0
        chars = ends[:, ([0] if first else []) + rhyme_idx]
        if RHYME["no_repeat"]:
            s = np.sort(chars, axis=1)
            ok &= ~(s[:, 1:] == s[:, :-1]).any(axis=1)
        out[:, k] = ok
    return out


def _any_group_rhyme(cps: np.ndarray, look: Lookups, form: forms.Form) -> np.ndarray:
    """Bool [n]: the rhyme lines' last characters share one 平水韵 group (平 or 仄)."""
    ends = cps[:, [c - 1 for c in form.rhyme_clauses], -1]
    g = _lut(look.groups, ends)  # [n, lines, 2]
    common = np.bitwise_and.reduce(g, axis=1)
    return (common != 0).any(axis=1)


def _ping_rhyme(cps: np.ndarray, look: Lookups, form: forms.Form) -> np.ndarray:
    """Bool [n]: the rhyme lines' last characters (2, 4, 6, 8) share one 平水韵 平声 group and none comes
    twice: the rhyme ``--rhyme`` writes (its default book), tones and line 1 aside."""
    ends = cps[:, [c - 1 for c in form.rhyme_clauses], -1]
    common = np.bitwise_and.reduce(_lut(look.ping, ends), axis=1)
    s = np.sort(ends, axis=1)
    return (common != 0) & ~(s[:, 1:] == s[:, :-1]).any(axis=1)


def _regular_codes(bodies: Sequence[str], form: forms.Form) -> np.ndarray:
    """[m, body_len] code points of the bodies that are regular in ``form`` (numpy, no Python per poem)."""
    same = [b for b in bodies if len(b) == form.body_len]
    cps = _codepoints(same, form.body_len)
    if not len(cps):
        return cps
    marks = cps.reshape(len(cps), form.clauses, form.clause_len + 1)
    want = np.array([ord(m) for m in form.punctuation])
    ok = (marks[:, :, -1] == want).all(axis=1)
    mark_cps = np.array([ord(m) for m in forms.CLAUSE_MARKS])
    ok &= ~np.isin(marks[:, :, :-1], mark_cps).any(axis=(1, 2))
    return cps[ok]


def metre_figures(bodies: Sequence[str], script: str = "simplified") -> dict:
    """The 格律 figures of many bodies: among the regular ones, the share passing each leniency and the
    share rhyming in one 平水韵 group.

    Args:
        bodies: poem bodies (irregular ones are not judged).
        script: the script of the tone table (see ``tones.table``).

    Returns:
        ``regular`` (bodies judged), ``pass_standard``, ``pass_strict``, ``pingshui_rhyme_rate``
        (rhyme lines in one group, 平 or 仄), ``pingshui_ping_rhyme_rate`` (rhyme lines in one 平声 group, no
        character twice: what ``--rhyme`` guarantees) and ``by_form`` (the same per form); shares are None
        without a regular body.
    """
    look = lookups(script)
    total = {"regular": 0, "standard": 0, "strict": 0, "rhyme": 0, "ping_rhyme": 0}
    by_form = {}
    for form in forms.FORMS.values():
        cps = _clauses(_regular_codes(bodies, form), form)
        tone = _lut(look.tone, cps)
        counts = {"regular": len(cps), "rhyme": int(_any_group_rhyme(cps, look, form).sum()),
                  "ping_rhyme": int(_ping_rhyme(cps, look, form).sum())}
        for len_ in LENIENCIES:
            ok = (~_violations(tone, form, len_).any(axis=(2, 3))) & _rhyme_ok(cps, look, form, len_)
            counts[len_] = int(ok.any(axis=1).sum())
        by_form[form.name] = _shares(counts)
        total = {k: total[k] + counts[k] for k in total}
    return {**_shares(total), "by_form": by_form}


def tone_accuracy(bodies: Sequence[str], script: str = "simplified") -> dict:
    """Per form, the per-position tone accuracy of the regular bodies: at each character position of a line
    (1 … 5 or 7), the share of characters with a known tone that have the tone the poem's nearest strict
    pattern (the ``SEQUENCES`` pattern it fits best) requires there. A character with both tones fits any.

    Args:
        bodies: poem bodies (irregular ones are not judged).
        script: the script of the tone table.

    Returns:
        form name -> ``{"poems": n, "by_position": [share per position]}`` for forms with a regular body.
    """
    look = lookups(script)
    out = {}
    for form in forms.FORMS.values():
        cps = _clauses(_regular_codes(bodies, form), form)
        if not len(cps):
            continue
        tone = _lut(look.tone, cps)  # [n, clauses, clause_len]
        fits = (tone[:, None] & required(form, "strict")[None]) != 0  # [n, patterns, clauses, clause_len]
        chosen = fits[np.arange(len(cps)), fits.sum(axis=(2, 3)).argmax(axis=1)]
        known = tone > 0
        share = (chosen & known).sum(axis=(0, 1)) / np.maximum(known.sum(axis=(0, 1)), 1)
        out[form.name] = {"poems": len(cps), "by_position": [round(float(x), 4) for x in share]}
    return out


def _shares(counts: dict) -> dict:
    n = counts["regular"]
    share = (lambda k: round(counts[k] / n, 4) if n else None)
    return {"regular": n, "pass_standard": share("standard"), "pass_strict": share("strict"),
            "pingshui_rhyme_rate": share("rhyme"), "pingshui_ping_rhyme_rate": share("ping_rhyme")}


# ---------------------------------------------------------------------------------- one poem
@dataclass
class Violation:
    """One position whose tone breaks the pattern.

    Args:
        line: 1-based line (clause).
        position: 1-based character position in the line.
        char: the character.
        tone: its tone (平/仄).
        required: the tone the pattern wants there.
        fault: 孤平 / 三平尾 when the position guards one, else "".
    """

    line: int
    position: int
    char: str
    tone: str
    required: str
    fault: str = ""


@dataclass
class PoemCheck:
    """What ``check_poem`` found.

    Args:
        body: the body checked.
        form: the form's name, or None when the body is not a regular 绝句/律诗.
        passes: leniency -> the poem follows some pattern at that leniency (rhyme included).
        pattern: the pattern followed at ``leniency`` (or the nearest one): its name.
        sequence: that pattern's base-line letters (ABCD …).
        pattern_tones: its strict tone string per line.
        char_tones: each line's characters' tones (平/仄/中/?).
        violations: positions breaking the pattern at ``leniency``.
        rhyme_chars: the last characters of the rhyme lines (line 1 included when the pattern rhymes it).
        rhyme_groups: the 平声 groups all of them share (empty when none).
        rhyme_char_groups: each rhyme character's groups (any tone).
        rhyme_faults: rhyme rules broken (one line each).
        unknown: characters the table does not know.
        leniency: the leniency ``pattern`` and ``violations`` refer to.
        reason: why the body is not judged (irregular), else "".
    """

    body: str
    form: str | None
    passes: dict[str, bool] = field(default_factory=dict)
    pattern: str = ""
    sequence: str = ""
    pattern_tones: list[str] = field(default_factory=list)
    char_tones: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    rhyme_chars: list[str] = field(default_factory=list)
    rhyme_groups: list[str] = field(default_factory=list)
    rhyme_char_groups: list[list[str]] = field(default_factory=list)
    rhyme_faults: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    leniency: str = "standard"
    reason: str = ""


def check_poem(body: str, leniency: str = "standard", script: str | None = None) -> PoemCheck:
    """Check one body's 格律 and explain it.

    Args:
        body: the poem body (text between 【 and 】).
        leniency: the leniency the pattern and violations are reported at (``passes`` has both).
        script: ``simplified``/``traditional``; None detects it from the body (``tones.detect_script``).
    """
    check_leniency(leniency)
    form = forms.regular_form(body)
    if form is None:
        return PoemCheck(body, None, {n: False for n in LENIENCIES}, leniency=leniency,
                         reason="not a regular 绝句/律诗 (4 or 8 clauses of 5 or 7 characters, ，。 alternating)")
    look = lookups(script or tones.detect_script(body))
    cps = _clauses(_codepoints([body], form.body_len), form)
    tone = _lut(look.tone, cps)
    faults = {n: _violations(tone, form, n)[0] for n in LENIENCIES}
    rhyme = {n: _rhyme_ok(cps, look, form, n)[0] for n in LENIENCIES}
    passes = {n: bool(((~faults[n].any(axis=(1, 2))) & rhyme[n]).any()) for n in LENIENCIES}
    score = faults[leniency].sum(axis=(1, 2)) + (~rhyme[leniency]) * 1
    k = int(np.argmin(score))
    seq = SEQUENCES[form.clauses][k]
    lines = forms.split_clauses(body)[0]
    result = PoemCheck(body, form.name, passes, pattern_name(form, seq), seq, pattern_lines(form, seq),
                       ["".join(look.table.tone(c) for c in line) for line in lines], leniency=leniency)
    wanted = pattern_lines(form, seq, leniency)
    for li, pi in zip(*np.nonzero(faults[leniency][k])):
        ch = lines[li][pi]
        result.violations.append(Violation(int(li) + 1, int(pi) + 1, ch, look.table.tone(ch), wanted[li][pi],
                                           NAMED_POSITIONS.get((form.clause_len, seq[li], int(pi) + 1), "")))
    _explain_rhyme(result, form, seq, lines, look.table)
    result.unknown = sorted({c for line in lines for c in line if look.table.tone(c) == tones.UNKNOWN})
    return result


def _explain_rhyme(result: PoemCheck, form: forms.Form, seq: str, lines: list[str], table: tones.ToneTable) -> None:
    """Fill the rhyme fields of ``result`` for the pattern ``seq``."""
    idx = ([0] if first_line_rhymes(form, seq) else []) + [c - 1 for c in form.rhyme_clauses]
    result.rhyme_chars = [lines[i][-1] for i in idx]
    result.rhyme_char_groups = [list(table.groups.get(c, ())) for c in result.rhyme_chars]
    strict_first = RHYME["first_line_in_group"][result.leniency] or len(idx) == len(form.rhyme_clauses)
    group_chars = result.rhyme_chars if strict_first else result.rhyme_chars[1:]
    common = set(table.ping_groups(group_chars[0]))
    for c in group_chars[1:]:
        common &= set(table.ping_groups(c))
    result.rhyme_groups = [g for g in tones.group_names() if g in common]
    if not common:
        any_common = set(table.groups.get(group_chars[0], ()))
        for c in group_chars[1:]:
            any_common &= set(table.groups.get(c, ()))
        shared = [g for g in tones.group_names() if g in any_common]
        result.rhyme_faults.append(f"rhyme characters {''.join(group_chars)} share no 平声 group"
                                   + (f" (they rhyme in {shared[0]}: 仄韵, not 近体)" if shared else ""))
    repeated = sorted({c for c in result.rhyme_chars if result.rhyme_chars.count(c) > 1})
    if repeated:
        result.rhyme_faults.append(f"rhyme character repeated: {''.join(repeated)}")


def tone_marks(body: str, script: str | None = None) -> tuple[list[str], list[int]]:
    """Each body character's tone mark (平, 仄, 中 for either, "" for marks and unknown characters) and the
    indices of the rhyme characters (the rhyme lines' last characters of a regular body; for others the
    last character before each 。？！；).

    Args:
        body: a poem body.
        script: as in ``check_poem``.
    """
    table = tones.table(script or tones.detect_script(body))
    marks = [t if t != tones.UNKNOWN else "" for t in map(table.tone, body)]
    form = forms.regular_form(body)
    if form is not None:
        ends = [(c - 1) * (form.clause_len + 1) + form.clause_len - 1 for c in form.rhyme_clauses]
        first = form.clause_len - 1
        if table.tone(body[first]) in (tones.PING, tones.EITHER):
            ends.insert(0, first)
        return marks, ends
    return marks, [i - 1 for i, c in enumerate(body) if c in "。？！；" and i > 0 and forms.is_hanzi(body[i - 1])]


def corpus_metre(bodies: Sequence[str], chars: dict[str, int] | None = None) -> dict:
    """The 格律 block of the corpus report (``prepare``, ``corpus stats``).

    Args:
        bodies: the poems' bodies.
        chars: character counts of the corpus, for the share the tone table does not know (None skips it).

    Returns:
        ``metre_figures`` plus ``script`` and ``unknown`` (``ToneTable.unknown_share``); or ``{"error": …}``
        when the tone table is not installed (the report is still written).
    """
    try:
        script = tones.detect_script("".join(bodies[:200]))
        figures = metre_figures(bodies, script)
    except tones.ToneDataMissing as exc:
        return {"error": str(exc)}
    figures["script"] = script
    if chars is not None:
        figures["unknown"] = tones.table(script).unknown_share(chars)
    return figures


def warm_up(bodies: Sequence[str]) -> None:
    """Build the lookup tables ``corpus_metre`` will need (a one-time cost, kept out of timed work).

    Args:
        bodies: the poems' bodies (their script is detected as ``corpus_metre`` does).
    """
    try:
        lookups(tones.detect_script("".join(bodies[:200])))
    except tones.ToneDataMissing:
        pass
