"""Constrained decoding: a form (or free sampling, or a 词牌 layout) as an automaton the compiled sampler applies.

Constrained decoding: ``build_constraint`` turns a form (plus an optional
acrostic, rhyme in a rhyme book and 格律 leniency ``strict``) into a small automaton whose tables are
indexed by a per-sample integer state, so an XLA-compiled decode loop can apply it with
``apply_constraint_tf`` / ``advance_tf``. States: 0 = header (``title 体裁：``,
written freely; 【 enters the body), then one state per body position
(characters and the punctuation of the form in order), then *close* (only 】)
and *done* (only [SEP]). Acrostic (藏头) is per clause (句): clause *i* starts
with the *i*-th acrostic character. Free sampling runs the same way through
``free_constraint`` (header, body, done): the header never writes 】 and the
body never 【, so no poem gets a second header.

With ``strict`` a state is a body position *and* the tone patterns still possible
(``metre.SEQUENCES`` at the leniency, read through ``metre.required``): a token is allowed
when its tone (``metre.lookups``: 平, 仄, either, unknown — unknown only where the pattern is
free) fits one of them, and the state after it keeps those it fits, so 平起/仄起 is committed by
the first tone of line 1 that tells them apart (its second character, or its first at strict
leniency in 七言) and 首句入韵 at line 1's end. States that cannot finish the body are trimmed
away, so a row never gets stuck. Each row also carries a rhyme state (``RHYME_WIDTH`` ints): the
rhyme groups recorded at the first rhyme position as a bit mask (the token's 平水韵 平声 groups that
have enough characters in the vocabulary) and narrowed at the others, and the rhyme characters
used (none may come twice, ``metre.RHYME``). All tables are padded to ``max_states()`` rows, so
free sampling, the four forms, both leniencies and 词牌 (``layout_constraint``: a corpus's clause
lengths and marks) share one compiled decode program.

``--rhyme`` without ``strict`` uses the same rhyme state: in the 平水韵 book (the default) the rhyme
clauses (2, 4, 6, 8) end in characters of one 平声 group, none twice, tones elsewhere free (clause 1 may
rhyme, never must); in the ``modern`` book they share a 中华新韵 final, with a fallback to any character
when the vocabulary offers none.

Importing this module imports neither TensorFlow nor pypinyin.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..errors import OptionError
from ..sampling import DEFAULT_RHYME_BOOK
from ..verse.forms import (_BY_FULL_NAME, _TRADITIONAL_NAMES, CLOSE, FORMS, GROUP_NAMES, OPEN, Form, get_form, is_hanzi,
                           rhyme_final)

# rhyme roles of a state (bit flags): SET records the rhyme groups of the token written there, MATCH
# keeps only tokens sharing a recorded group, FRESH (平水韵 rhyme) also refuses a rhyme character already used
ROLE_NONE, ROLE_SET, ROLE_MATCH, ROLE_FRESH = 0, 1, 2, 4
#: a row's rhyme state: the recorded rhyme groups as a bit mask (-1: none yet), then the rhyme characters
#: written so far, newest first (-1: none); 5 of them: line 1 and the four rhyme lines of a 律诗
RHYME_WIDTH = 6
NO_RHYME = (-1,) * RHYME_WIDTH
_CLASSES = 8  # token classes of the automaton: tone code (0 unknown, 1 平, 2 仄, 3 either) + 4 if it can rhyme


@dataclass(frozen=True)
class Layout:
    """The shape a constrained body follows: clause lengths and the mark after each.

    Args:
        name: what messages call it (五绝, 浣溪沙 …).
        lens: characters of each clause.
        marks: the mark after each clause ("" for a last clause without one).
    """

    name: str
    lens: tuple[int, ...]
    marks: tuple[str, ...]

    @property
    def body_len(self) -> int:
        """Characters in a body of this shape, marks included."""
        return sum(self.lens) + sum(1 for m in self.marks if m)

    def positions(self) -> list[tuple[int, int, str]]:
        """``(clause, offset, mark)`` of each body position; ``mark`` is "" at a character position."""
        out = []
        for clause, (n, mark) in enumerate(zip(self.lens, self.marks)):
            out.extend((clause, offset, "") for offset in range(n))
            if mark:
                out.append((clause, n, mark))
        return out


def form_layout(form: Form) -> Layout:
    """The ``Layout`` of a regulated form (equal clauses, ，。 alternating)."""
    return Layout(form.name, (form.clause_len,) * form.clauses, form.punctuation)


@dataclass
class DecodeConstraint:
    """Automaton tables for constrained generation (see ``build_constraint``).

    Args:
        allowed: bool [S, V]: tokens allowed in state s.
        next_state: int32 [S, V]: state after emitting token v in state s.
        rhyme_role: int32 [S]: ``ROLE_*`` flags of each state.
        token_final: int32 [V]: each token's rhyme groups as a bit mask (0 none): one bit of
            ``GROUP_NAMES`` (中华新韵) for ``--rhyme-book modern``, the 平声 groups of the 平水韵 (bit i: group i
            of ``tones.group_names()``) for ``pingshui`` and with ``strict``; all 0 without rhyme.
        done_state: the state after 】 (only [SEP] allowed).
        form: the regulated form the tables encode (None for free sampling and 词牌).
        tokens: the vocabulary's tokens (for prompts and messages).
        acrostic: the acrostic characters ("" for none).
        rhyme: whether rhyme positions are constrained.
        position: int [S]: the body position of each state (-1 header, ``body_len`` close, +1 done).
        layout: the body's shape (None for free sampling).
        strict: the 格律 leniency the tones follow (None: tones free).
        rhyme_book: the book the rhyme follows (``pingshui`` or ``modern``; None without rhyme).
    """

    allowed: np.ndarray
    next_state: np.ndarray
    rhyme_role: np.ndarray
    token_final: np.ndarray
    done_state: int
    form: Form | None = None
    tokens: list[str] = field(default_factory=list, repr=False)
    acrostic: str = ""
    rhyme: bool = False
    position: np.ndarray | None = None
    layout: Layout | None = None
    strict: str | None = None
    rhyme_book: str | None = None

    def tokens_to_finish(self, state: int) -> int:
        """Tokens still to write from ``state`` up to and including 】 (from the header state:
        【, the body and 】; the rest of the header, written freely, is not counted).

        Args:
            state: a state, e.g. from ``initial_state``.
        """
        if self.position is None:
            return self.done_state - state
        return self.layout.body_len + 1 - int(self.position[state])

    # numpy mirror of the TF functions (one sample) ---------------------------------
    def allowed_tokens(self, state: int, rhyme: tuple) -> np.ndarray:
        """Bool [V] of the tokens a sampler may pick (the rhyme fallback included).

        Args:
            state: the current state.
            rhyme: the row's rhyme state (``NO_RHYME`` at first).
        """
        allowed = self.allowed[state]
        role, group = int(self.rhyme_role[state]), int(rhyme[0])
        if role & ROLE_MATCH and group != -1:
            match = allowed & ((self.token_final & group) != 0)
            if role & ROLE_FRESH:
                match &= ~np.isin(np.arange(len(allowed)), rhyme[1:])
            if match.any():
                return match
        return allowed

    def advance(self, state: int, rhyme: tuple, token: int) -> tuple[int, tuple]:
        """The ``(state, rhyme)`` after emitting ``token``.

        Args:
            state: the current state.
            rhyme: the row's rhyme state.
            token: the emitted token id.
        """
        role, mask = int(self.rhyme_role[state]), int(self.token_final[token])
        group, used = int(rhyme[0]), tuple(int(u) for u in rhyme[1:])
        if role & ROLE_SET and mask:
            group = mask
        elif role & ROLE_MATCH and group != -1 and group & mask:
            group &= mask
        if role & ROLE_FRESH and mask:
            used = (int(token),) + used[:-1]
        return int(self.next_state[state, token]), (group, *used)

    def initial_state(self, prompt_text: str, option: str = "--opening") -> tuple[int, tuple]:
        """Walk a prompt (e.g. ``春晓 唐诗：【春眠不觉晓``) through the automaton.

        Args:
            prompt_text: the text the model is given, header and any body opening.
            option: the option to name when the body part does not fit.

        Returns:
            ``(state, rhyme)`` after the prompt.

        Raises:
            OptionError: the prompt's body part cannot be in this form (or breaks the acrostic,
                the tones or, with rhyme on, the rhyme).
        """
        index = {t: i for i, t in enumerate(self.tokens)}
        state, rhyme = 0, NO_RHYME
        for ch in prompt_text:
            if state == 0:  # header: the model sees [UNK] for unknown characters; only 】 is wrong
                if ch == CLOSE:
                    raise OptionError(f"{option}: the prompt has 】 before 【: {prompt_text!r}")
                state = int(self.next_state[0, index[OPEN]]) if ch == OPEN and OPEN in index else 0
                continue
            tok = index.get(ch, -1)
            if tok < 0 or not self.allowed_tokens(state, rhyme)[tok]:
                raise OptionError(self._misfit(prompt_text, state, ch, tok, option))
            state, rhyme = self.advance(state, rhyme, tok)
        return state, rhyme

    def _misfit(self, prompt: str, state: int, ch: str, tok: int, option: str) -> str:
        """One-line explanation of why ``ch`` cannot stand at ``state``."""
        layout = self.layout
        if state == self.done_state:
            return f"{option}: text after 】 in the prompt {prompt!r}"
        if tok < 0:
            return f"{option}: character {ch!r} is not in the vocabulary"
        if layout is None:  # free sampling: only a second 【 cannot stand in a body
            return f"{option}: the prompt {prompt!r} has a second {ch!r} inside the poem; give one header"
        where = f"{prompt!r} cannot begin a {layout.name}"
        body_pos = int(self.position[state])
        if body_pos == layout.body_len:
            return f"{option}: {where}: the body is complete after {layout.body_len} characters, 】 must follow"
        clause, offset, mark = layout.positions()[body_pos]
        role = int(self.rhyme_role[state])
        if mark:
            return (f"{option}: {where}: clause {clause + 1} has {layout.lens[clause]} characters and must end "
                    f"with {mark!r}, got {ch!r}")
        if offset == 0 and clause < len(self.acrostic) and ch != self.acrostic[clause]:
            return f"--acrostic: clause {clause + 1} must start with {self.acrostic[clause]!r}, the prompt has {ch!r}"
        if not is_hanzi(ch):
            return f"{option}: {where}: expected a Chinese character at clause {clause + 1}, got {ch!r}"
        if self.strict:
            return (f"--strict: {where}: {ch!r} at line {clause + 1}, character {offset + 1} breaks every "
                    f"{layout.name} tone pattern (or the 平水韵 rhyme) at {self.strict} leniency; change the "
                    "opening or drop --strict")
        book = "平水韵 平声" if self.rhyme_book == "pingshui" else "中华新韵"
        if role & ROLE_SET:
            return (f"--rhyme: {ch!r} at the end of clause {clause + 1} has no {book} rhyme group the vocabulary "
                    "can complete; change the opening" + (" or use --rhyme-book modern" if book != "中华新韵" else ""))
        return (f"--rhyme: {ch!r} at the end of clause {clause + 1} does not rhyme ({book} group, no rhyme "
                f"character twice) with the clauses before it in the prompt {prompt!r}; change the opening or "
                "drop --rhyme")

    def padded_tables(self, states: int | None = None) -> dict:
        """The tables as numpy arrays, the state axis padded: what ``as_tensors`` turns into tensors.

        Args:
            states: pad the state axis to this many rows (default ``max_states()``), so that every
                form, leniency and the free constraint have the same table shapes and share one compiled
                decode program. Padding rows are unreachable.
        """
        S = len(self.allowed)
        states = max_states() if states is None else max(states, S)
        pad = states - S
        return {
            "allowed": np.pad(self.allowed, ((0, pad), (0, 0))),
            "next_state": np.pad(self.next_state, ((0, pad), (0, 0))).astype(np.int16),  # < max_states()
            "rhyme_role": np.pad(self.rhyme_role, (0, pad)).astype(np.int32),
            "token_final": self.token_final.astype(np.int32),
        }

    def as_tensors(self, states: int | None = None) -> dict:
        """The tables as TensorFlow constants, the ``tables`` of ``apply_constraint_tf``/``advance_tf``.

        Args:
            states: as in ``padded_tables``.
        """
        import tensorflow as tf

        return {k: tf.constant(v) for k, v in self.padded_tables(states).items()}


def token_finals(tokens: list[str]) -> np.ndarray:
    """Int32 [V]: the 中华新韵 rhyme group of each token as a bit mask (bit i: ``GROUP_NAMES[i]``), 0 if none.

    Args:
        tokens: a vocabulary's tokens.
    """
    gid = {g: i for i, g in enumerate(GROUP_NAMES)}
    out = np.zeros(len(tokens), np.int32)
    for i, t in enumerate(tokens):
        g = rhyme_final(t) if len(t) == 1 else None
        if g is not None:
            out[i] = 1 << gid[g]
    return out


def group_of(mask: int, names=GROUP_NAMES) -> list[str]:
    """The group names whose bits are set in a rhyme mask (``token_final``, a row's rhyme state).

    Args:
        mask: a bit mask (-1: none recorded, gives []).
        names: the groups the bits index (``GROUP_NAMES``, or ``tones.group_names()`` with strict).
    """
    return [] if mask == -1 else [n for i, n in enumerate(names) if mask >> i & 1]


def free_constraint(vocab) -> DecodeConstraint:
    """The constraint of free sampling: one header, one body, whatever the model prefers.

    Three states: *header* (state 0: any token but the specials and 】; 【 enters the body),
    *body* (state 1: any token but the specials and 【, so a poem never holds a second header;
    】 ends it) and *done* (state 2: only [SEP]). A vocabulary without 【 stays in the header state.
    Every form's tables (``build_constraint``) keep the same rule in their header and body states.

    ``generate`` runs free sampling through the same compiled decode program as the forms
    (tables padded to ``max_states()``), so switching between free and form-constrained poems
    compiles nothing new; the mask costs one gather and select over ``[batch, vocab]`` a step.

    Args:
        vocab: a ``CharVocab`` (or any object with ``tokens``, the specials at ids 0–2).
    """
    tokens = list(vocab.tokens)
    index = {t: i for i, t in enumerate(tokens)}
    header, body, done = 0, 1, 2
    allowed = np.zeros((3, len(tokens)), bool)
    next_state = np.zeros((3, len(tokens)), np.int32)
    allowed[(header, body), 3:] = True
    next_state[body] = body
    next_state[done] = done
    allowed[done, 2] = True  # [SEP]
    if OPEN in index:
        allowed[body, index[OPEN]] = False
        next_state[header, index[OPEN]] = body
    if CLOSE in index:
        allowed[header, index[CLOSE]] = False
        next_state[body, index[CLOSE]] = done
    return DecodeConstraint(allowed=allowed, next_state=next_state, rhyme_role=np.zeros(3, np.int32),
                            token_final=np.zeros(len(tokens), np.int32), done_state=done, tokens=tokens)


def _other_script_hint(ch: str, index) -> str:
    """``"its simplified form 东 is; "`` when the other script's form of ``ch`` is in ``index`` (a corpus
    kept traditional, or converted to simplified), else ``""``.

    Args:
        ch: a character missing from the vocabulary.
        index: the vocabulary's tokens (anything supporting ``in``).
    """
    import opencc  # a dependency (corpus import uses it); imported only on this error path

    for config, script in (("t2s", "simplified"), ("s2t", "traditional")):
        other = opencc.OpenCC(config).convert(ch)
        if other != ch and other in index:
            return f"its {script} form {other!r} is; "
    return ""


def clause_start_states(form: Form) -> list[int]:
    """The automaton state of the first character of each clause (where an acrostic character goes) in a
    form's tables without ``strict`` (one state per body position).

    Args:
        form: the form.
    """
    return [1 + clause * (form.clause_len + 1) for clause in range(form.clauses)]


def form_spellings() -> dict[str, str]:
    """Every spelling ``get_form`` accepts (short and full names, simplified and traditional) → the form's name."""
    names = [*FORMS, *_BY_FULL_NAME]
    back = {v: k for k, v in _TRADITIONAL_NAMES.items()}  # code points: simplified → traditional
    spellings = {n: get_form(n).name for n in names}
    spellings.update({n.translate(back): get_form(n.translate(back)).name for n in names})
    return spellings


@dataclass
class _Patterns:
    """What the automaton must follow besides the layout.

    Args:
        req: uint8 [P, clauses, longest clause]: tone code each pattern requires (0 free, 1 平, 2 仄).
        rhyme_lines: bool [P, clauses]: the clause ends in a rhyme of the pattern.
        mode: "none", "modern" (``--rhyme-book modern``: 中华新韵, fallback when nothing rhymes) or "pingshui"
            (``--rhyme`` and ``strict``: 平水韵 平声 groups, no fallback needed, no rhyme character twice).
    """

    req: np.ndarray
    rhyme_lines: np.ndarray
    mode: str


def _free_patterns(layout: Layout, rhyme_clauses: tuple[int, ...] = (), book: str = "modern") -> _Patterns:
    """One pattern with every tone free; ``rhyme_clauses`` (1-based) rhyme in ``book`` (``--rhyme``).

    Args:
        layout: the body's shape.
        rhyme_clauses: the clauses whose last characters rhyme (none: no rhyme).
        book: ``pingshui`` (the 平水韵 平声 groups, as ``strict`` rhymes) or ``modern`` (中华新韵).
    """
    lines = np.zeros((1, len(layout.lens)), bool)
    lines[0, [c - 1 for c in rhyme_clauses]] = True
    return _Patterns(np.zeros((1, len(layout.lens), max(layout.lens)), np.uint8), lines,
                     book if rhyme_clauses else "none")


def _strict_patterns(form: Form, leniency: str) -> _Patterns:
    """The tone patterns of ``metre.SEQUENCES`` at a leniency and their rhyme lines (``metre.RHYME``)."""
    from ..verse import metre

    sequences = metre.SEQUENCES[form.clauses]
    lines = np.zeros((len(sequences), form.clauses), bool)
    lines[:, [c - 1 for c in form.rhyme_clauses]] = True
    if metre.RHYME["first_line_in_group"][leniency]:  # else line 1 needs only its tone (any 平 group)
        lines[:, 0] = [metre.first_line_rhymes(form, seq) for seq in sequences]
    return _Patterns(metre.required(form, leniency), lines, "pingshui")


def _dest(patterns: _Patterns, live: int, clause: int, offset: int, cls: int, last: bool) -> int:
    """The live patterns (a bit mask) after a token of class ``cls`` at a character position; 0: not allowed.

    A token keeps the patterns whose required tone it has (unknown tones fit only free positions). At a
    rhyme line's end a token that can rhyme commits to the patterns rhyming there, one that cannot to
    the others (``pingshui``); with ``modern`` rhyme, ``_automaton`` limits the setting position instead.
    """
    tone, can_rhyme = cls & 3, cls >= 4
    keep, rhyming = 0, 0
    for p in range(len(patterns.req)):
        if not live >> p & 1:
            continue
        need = int(patterns.req[p, clause, offset])
        if need == 0 or tone & need:
            keep |= 1 << p
            rhyming |= (1 << p) if last and patterns.rhyme_lines[p, clause] else 0
    if patterns.mode != "pingshui":
        return keep
    return keep & rhyming if can_rhyme and keep & rhyming else keep & ~rhyming


def _role(patterns: _Patterns, live: int, clause: int) -> int:
    """``ROLE_*`` flags of a clause's last position for the live patterns."""
    if patterns.mode == "none":
        return ROLE_NONE
    rhyming = [p for p in range(len(patterns.req)) if live >> p & 1 and patterns.rhyme_lines[p, clause]]
    if not rhyming:
        return ROLE_NONE
    earlier = {bool(patterns.rhyme_lines[p, :clause].any()) for p in rhyming}
    if len(earlier) != 1:  # pragma: no cover - the tables commit 首句入韵 at line 1's end
        raise AssertionError("live patterns disagree on the rhyme lines before this one")
    role = ROLE_MATCH if earlier.pop() else ROLE_SET
    return role | (ROLE_FRESH if patterns.mode == "pingshui" else 0)


def _automaton(layout: Layout, patterns: _Patterns, present: np.ndarray, acrostic_cls: dict, set_filter: bool):
    """The reachable, completable states ``(position, live patterns)`` and their moves per token class.

    Args:
        layout: the body's shape.
        patterns: the tone patterns and rhyme lines.
        present: bool [_CLASSES]: classes the vocabulary has.
        acrostic_cls: clause -> the class of its acrostic character.
        set_filter: ``modern`` rhyme: only tokens that can rhyme may stand where the rhyme is set.

    Returns:
        ``(states, moves, roles)``: the body states in order (``(position, live)``; every state past the
        last position is *close*), ``moves[state]`` {token class (-1 a mark): next live patterns} and
        ``roles[state]``; ``states`` is empty when the body cannot be completed.
    """
    positions = layout.positions()
    full = (1 << len(patterns.req)) - 1
    frontier, seen = [(0, full)], {(0, full)}
    moves, roles = {}, {}
    for key in frontier:  # grows while it is read: breadth first over positions
        pos, live = key
        if pos == len(positions):
            continue
        clause, offset, mark = positions[pos]
        last = not mark and offset == layout.lens[clause] - 1
        roles[key] = _role(patterns, live, clause) if last else ROLE_NONE
        options = {}
        if mark:
            options[-1] = live
        else:
            classes = [acrostic_cls[clause]] if offset == 0 and clause in acrostic_cls else range(_CLASSES)
            for cls in classes:
                if present[cls] and not (set_filter and roles[key] & ROLE_SET and cls < 4):
                    nxt = _dest(patterns, live, clause, offset, cls, last)
                    if nxt:
                        options[cls] = nxt
        moves[key] = options
        for nxt in options.values():
            if (pos + 1, nxt) not in seen:
                seen.add((pos + 1, nxt))
                frontier.append((pos + 1, nxt))
    viable = {k for k in seen if k[0] == len(positions)}
    for key in sorted(moves, key=lambda k: -k[0]):  # trim: keep only moves that can still finish the body
        moves[key] = {c: n for c, n in moves[key].items() if (key[0] + 1, n) in viable}
        if moves[key]:
            viable.add(key)
    if (0, full) not in viable:
        return [], {}, {}
    return sorted(k for k in viable if k[0] < len(positions)), moves, roles


def _token_classes(tokens: list[str], patterns: _Patterns) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Each token's automaton class (-1: not a Chinese character) and rhyme mask, and the tone script.

    With ``pingshui`` rhyme the tone is the 平水韵 table's (``metre.lookups``) and the mask holds the
    token's 平声 groups that have at least as many characters in the vocabulary as a poem needs rhyme
    characters, so that a recorded group can always be matched by a character not used yet.
    """
    hanzi = np.array([i >= 3 and is_hanzi(t) for i, t in enumerate(tokens)])
    tone = np.full(len(tokens), 3, np.int64)
    script = None
    if patterns.mode == "pingshui":
        from ..verse import metre, tones

        script = tones.detect_script("".join(t for t, h in zip(tokens, hanzi) if h))
        look = metre.lookups(script)
        cps = np.array([ord(t) if h else 0 for t, h in zip(tokens, hanzi)], np.int64)
        tone = metre._lut(look.tone, cps).astype(np.int64)
        ping = np.where(hanzi, metre._lut(look.ping, cps), 0).astype(np.int64)
        counts = np.array([(ping >> g & 1).sum() for g in range(30)])
        need = int(patterns.rhyme_lines.sum(axis=1).max())
        viable = sum(1 << g for g in range(30) if counts[g] >= need)
        masks = (ping & viable).astype(np.int32)
    elif patterns.mode == "modern":
        masks = token_finals(tokens)
    else:
        masks = np.zeros(len(tokens), np.int32)
    cls = np.where(hanzi, tone + 4 * (masks != 0), -1)
    return cls, masks, script


def _unsatisfiable(layout: Layout, patterns: _Patterns, present: np.ndarray, acrostic: str, strict: str | None) -> str:
    """One line: why no body of ``layout`` can be written with this vocabulary (and acrostic)."""
    if not present.any():
        return f"--form: the vocabulary has no Chinese character, so it cannot write a {layout.name}"
    need = int(patterns.rhyme_lines.sum(axis=1).max())
    if not strict and patterns.mode == "pingshui" and not present[4:].any():
        return (f"--rhyme: no 平水韵 平声 group has {need} characters in the vocabulary (a {layout.name} needs "
                f"{need} different rhyme characters of one group); train on a larger corpus, use --rhyme-book "
                "modern or drop --rhyme")
    if strict:
        for tone, bit in (("平", 1), ("仄", 2)):
            if not any(present[c] for c in range(_CLASSES) if c & bit):
                return (f"--strict: the vocabulary has no {tone} character of the 平水韵 table, so it cannot "
                        f"write a {layout.name} to its tone pattern; train on a larger corpus or drop --strict")
        if not present[4:].any():
            return (f"--strict: no 平水韵 平声 group has {need} characters in the vocabulary (a {layout.name} "
                    f"needs {need} different rhyme characters of one group); train on a larger corpus or "
                    "drop --strict")
    if acrostic:
        return (f"--acrostic: {acrostic!r} cannot begin the clauses of any {layout.name}"
                + (f" tone pattern at {strict} leniency; choose other characters or drop --strict" if strict else ""))
    return f"--strict: the vocabulary cannot complete a {layout.name} at {strict} leniency; drop --strict"


def _check_acrostic(acrostic: str, layout: Layout, index: dict) -> str:
    """The acrostic without spaces, checked against the layout and the vocabulary.

    Raises:
        OptionError: too many characters, a character that is not Chinese or not in the vocabulary.
    """
    acrostic = "".join((acrostic or "").split())
    clauses = len(layout.lens)
    if len(acrostic) > clauses:
        raise OptionError(f"--acrostic: {len(acrostic)} characters but a {layout.name} has {clauses} "
                          f"clauses; give at most {clauses}")
    for ch in acrostic:
        if not is_hanzi(ch):
            raise OptionError(f"--acrostic: {ch!r} is not a Chinese character")
        if ch not in index:
            raise OptionError(f"--acrostic: character {ch!r} is not in the vocabulary; "
                              f"{_other_script_hint(ch, index)}choose another")
    return acrostic


def build_constraint(form_name: str, vocab, acrostic: str | None = None, rhyme: bool = False,
                     strict: str | None = None, rhyme_book: str = DEFAULT_RHYME_BOOK) -> DecodeConstraint:
    """Build the decoding automaton for a regulated form.

    Args:
        form_name: one of ``FORMS`` or a full name (see ``get_form``).
        vocab: a ``CharVocab``.
        acrostic: characters that start clauses 1, 2, … (藏头, per clause); at most the
            form's clause count; spaces between them are ignored (``春 夏 秋 冬``).
        rhyme: constrain the last characters of clauses 4, 6, 8 to clause 2's rhyme group in ``rhyme_book``.
        strict: a leniency of ``metre.LENIENCIES``: follow the 格律 of ``metre`` at it — the tone
            patterns of ``metre.SEQUENCES`` (平起/仄起 commit at the first character of line 1 whose tone
            tells them apart, usually its second; 首句入韵 at line 1's end) and the 平水韵 rhyme of
            ``metre.RHYME`` (the group committed at the first rhyme; ``rhyme`` is then implied).
        rhyme_book: the book of ``rhyme`` without ``strict``: ``pingshui`` (clauses 2, 4, 6, 8 end in one
            平水韵 平声 group, no character twice; tones free) or ``modern`` (one 中华新韵 final).

    Raises:
        OptionError: unknown form, leniency or rhyme book, bad acrostic, a vocabulary without the form's
            marks, or one that cannot satisfy some position (too few characters of a tone or a rhyme group),
            or ``strict`` with the modern book.
    """
    form = get_form(form_name)
    layout = form_layout(form)
    book = check_rhyme_book(rhyme_book)
    if strict is not None:
        from ..verse.metre import check_leniency

        if book != "pingshui":
            raise OptionError(f"--rhyme-book {book}: --strict rhymes in the 平水韵 (pingshui); drop one of them")
        patterns = _strict_patterns(form, check_leniency(strict))
    else:
        patterns = _free_patterns(layout, form.rhyme_clauses if rhyme else (), book)
    rhyme = rhyme or strict is not None
    return _build(layout, patterns, vocab, acrostic, form=form, rhyme=rhyme, strict=strict,
                  rhyme_book=book if rhyme else None)


def check_rhyme_book(book: str) -> str:
    """``book`` if it is one of ``sampling.RHYME_BOOKS``.

    Raises:
        OptionError: another value, with ``SamplingConfig``'s message.
    """
    from ..errors import check_rules
    from ..sampling import CHOICE_RULES

    check_rules(CHOICE_RULES, {"rhyme_book": book})
    return book


def layout_constraint(layout: Layout, vocab, acrostic: str | None = None) -> DecodeConstraint:
    """The decoding automaton for a body of a given shape (a 词牌's clause lengths and marks), tones free.

    Args:
        layout: the shape.
        vocab: a ``CharVocab``.
        acrostic: as in ``build_constraint``.
    """
    return _build(layout, _free_patterns(layout), vocab, acrostic)


def _build(layout: Layout, patterns: _Patterns, vocab, acrostic: str | None, form: Form | None = None,
           rhyme: bool = False, strict: str | None = None, rhyme_book: str | None = None) -> DecodeConstraint:
    """The tables of ``build_constraint`` / ``layout_constraint``.

    States: 0 header (``title 体裁：``, written freely; 【 enters the body), one per reachable
    ``(body position, live tone patterns)`` in position order (one per position without ``strict``), then
    *close* (only 】) and *done* (only [SEP]).
    """
    tokens = list(vocab.tokens)
    index = {t: i for i, t in enumerate(tokens)}
    acrostic = _check_acrostic(acrostic, layout, index)
    for mark in (OPEN, CLOSE, *sorted(set(layout.marks) - {""})):
        if mark not in index:
            raise OptionError(f"--form: the vocabulary has no {mark!r}, so it cannot write a {layout.name}")
    cls, masks, _ = _token_classes(tokens, patterns)
    present = np.bincount(cls[cls >= 0], minlength=_CLASSES) > 0
    acrostic_cls = {c: int(cls[index[ch]]) for c, ch in enumerate(acrostic)}
    set_filter = patterns.mode == "modern" and bool((masks != 0).any())
    states, moves, roles = _automaton(layout, patterns, present, acrostic_cls, set_filter)
    if not states:
        raise OptionError(_unsatisfiable(layout, patterns, present, acrostic, strict))
    positions = layout.positions()
    V, S = len(tokens), len(states) + 3
    close, done = S - 2, S - 1
    ids = {key: i + 1 for i, key in enumerate(states)}
    target = (lambda pos, live: close if pos == len(positions) else ids[(pos, live)])  # noqa: E731
    allowed = np.zeros((S, V), bool)
    next_state = np.zeros((S, V), np.int32)
    role = np.zeros(S, np.int32)
    position = np.full(S, -1, np.int64)
    allowed[0, 3:] = True
    allowed[0, index[CLOSE]] = False
    next_state[0, index[OPEN]] = ids[(0, (1 << len(patterns.req)) - 1)]
    token_ids = np.arange(V)
    for key in states:
        s, (pos, _) = ids[key], key
        clause, offset, mark = positions[pos]
        position[s], role[s] = pos, roles[key]
        if mark:
            allowed[s, index[mark]] = True
            next_state[s] = target(pos + 1, moves[key][-1])
            continue
        dest = np.full(_CLASSES + 1, -1, np.int64)  # the last slot: tokens of no class
        for c, live in moves[key].items():
            dest[c] = target(pos + 1, live)
        d = dest[np.where(cls >= 0, cls, _CLASSES)]
        ok = d >= 0
        if offset == 0 and clause < len(acrostic):
            ok &= token_ids == index[acrostic[clause]]
        allowed[s] = ok
        next_state[s] = np.where(ok, d, d.max())
    allowed[close, index[CLOSE]] = True
    next_state[close] = done
    position[close], position[done] = len(positions), len(positions) + 1
    allowed[done, 2] = True  # [SEP]
    next_state[done] = done
    return DecodeConstraint(allowed, next_state, role, masks, done, form, tokens, acrostic, rhyme, position,
                            layout, strict, rhyme_book)


@functools.lru_cache(maxsize=None)
def max_states() -> int:
    """Rows of every padded constraint table: the most states any form needs at any leniency (a vocabulary
    with every kind of character; a real one, or an acrostic, reaches a subset of them)."""
    from ..verse.metre import LENIENCIES

    every = np.ones(_CLASSES, bool)
    sizes = [form.body_len + 3 for form in FORMS.values()]
    for form in FORMS.values():
        for leniency in LENIENCIES:
            sizes.append(len(_automaton(form_layout(form), _strict_patterns(form, leniency), every, {}, False)[0]) + 3)
    return max(sizes)


# ------------------------------------------------------------------------- TensorFlow helpers
def apply_constraint_tf(logits, state, rhyme, tables):
    """Mask logits to the tokens the constraint allows (XLA-safe, batch first).

    At ``ROLE_MATCH`` positions only tokens sharing a recorded rhyme group (and, with ``ROLE_FRESH``, not
    written at a rhyme position before) stay allowed, unless none is allowed there (or no group is
    recorded): then the plain allowed set (``strict`` tables never need that fallback).

    Args:
        logits: float [B, V].
        state: int32 [B] current states.
        rhyme: int32 [B, RHYME_WIDTH] rhyme states (``NO_RHYME`` at first).
        tables: ``DecodeConstraint.as_tensors()``.

    Returns:
        Logits [B, V] with disallowed tokens set to a large negative (-1e9, or the
        dtype's minimum for half precision), never -inf.
    """
    import tensorflow as tf

    state = tf.cast(state, tf.int32)
    rhyme = tf.cast(rhyme, tf.int32)
    group = rhyme[:, 0]
    allowed = tf.gather(tables["allowed"], state)
    role = tf.gather(tables["rhyme_role"], state)
    wants_match = tf.not_equal(role & ROLE_MATCH, 0) & tf.not_equal(group, -1)

    def rhyme_mask():
        match = allowed & tf.not_equal(tables["token_final"][None, :] & group[:, None], 0)
        vocab_ids = tf.range(tf.shape(allowed)[1])
        used = tf.reduce_any(tf.equal(rhyme[:, 1:, None], vocab_ids[None, None, :]), axis=1)
        match = match & ~(used & tf.not_equal(role & ROLE_FRESH, 0)[:, None])
        use_match = wants_match & tf.reduce_any(match, axis=1)
        return tf.where(use_match[:, None], match, allowed)

    # the rhyme test reads the whole vocabulary: only at the few steps where a row needs it
    mask = tf.cond(tf.reduce_any(wants_match), rhyme_mask, lambda: allowed)
    neg = tf.constant(max(-1e9, float(logits.dtype.min)), dtype=logits.dtype)
    return tf.where(mask, logits, neg)


def advance_tf(state, rhyme, token, tables):
    """The states and rhyme states after emitting ``token`` (XLA-safe, batch first; see
    ``DecodeConstraint.advance``).

    Args:
        state: int32 [B] current states.
        rhyme: int32 [B, RHYME_WIDTH] rhyme states.
        token: int [B] emitted token ids.
        tables: ``DecodeConstraint.as_tensors()``.

    Returns:
        ``(state, rhyme)``: int32 [B] and [B, RHYME_WIDTH].
    """
    import tensorflow as tf

    state = tf.cast(state, tf.int32)
    token = tf.cast(token, tf.int32)
    rhyme = tf.cast(rhyme, tf.int32)
    group, used = rhyme[:, 0], rhyme[:, 1:]
    new_state = tf.cast(tf.gather_nd(tables["next_state"], tf.stack([state, token], axis=1)), tf.int32)
    role = tf.gather(tables["rhyme_role"], state)
    mask = tf.gather(tables["token_final"], token)
    has = tf.not_equal(mask, 0)
    narrowed = group & mask
    group = tf.where(tf.not_equal(role & ROLE_SET, 0) & has, mask,
                     tf.where(tf.not_equal(role & ROLE_MATCH, 0) & tf.not_equal(group, -1)
                              & tf.not_equal(narrowed, 0), narrowed, group))
    record = tf.not_equal(role & ROLE_FRESH, 0) & has
    used = tf.where(record[:, None], tf.concat([token[:, None], used[:, :-1]], axis=1), used)
    return new_state, tf.concat([group[:, None], used], axis=1)
