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

Constrained decoding: ``build_constraint`` turns a form (plus an optional
acrostic and rhyme) into a small automaton whose tables are indexed by a
per-sample integer state, so an XLA-compiled decode loop can apply it with
``apply_constraint_tf`` / ``advance_tf``. States: 0 = header (``title 体裁：``,
written freely; 【 enters the body), then one state per body position
(characters and the punctuation of the form in order), then *close* (only 】)
and *done* (only [SEP]). Acrostic (藏头) is per clause (句): clause *i* starts
with the *i*-th acrostic character. Free sampling runs the same way through
``free_constraint`` (header, body, done): the header never writes 】 and the
body never 【, so no poem gets a second header.

Importing this module imports neither TensorFlow nor pypinyin.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import OptionError

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
#: rows of every padded constraint table: header, the longest body, close, done
MAX_STATES = max(f.body_len for f in FORMS.values()) + 3
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


# ------------------------------------------------------------------------- constrained decoding
ROLE_NONE, ROLE_SET, ROLE_MATCH = 0, 1, 2


@dataclass
class DecodeConstraint:
    """Automaton tables for constrained generation (see ``build_constraint``).

    Args:
        allowed: bool [S, V]: tokens allowed in state s.
        next_state: int32 [S, V]: state after emitting token v in state s.
        rhyme_role: int32 [S]: 0 none, 1 this position sets the rhyme, 2 must match it.
        token_final: int32 [V]: rhyme group id (index into ``GROUP_NAMES``) of each token, -1 if none
            (all -1 when ``rhyme`` is off: no rhyme position reads it).
        done_state: the state after 】 (only [SEP] allowed).
        form: the form the tables encode.
        tokens: the vocabulary's tokens (for prompts and messages).
        acrostic: the acrostic characters ("" for none).
        rhyme: whether rhyme positions are constrained.
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

    def tokens_to_finish(self, state: int) -> int:
        """Tokens still to write from ``state`` up to and including 】 (from the header state:
        【, the body and 】; the rest of the header, written freely, is not counted).

        Args:
            state: a state, e.g. from ``initial_state``.
        """
        return self.done_state - state

    # numpy mirror of the TF functions (one sample) ---------------------------------
    def allowed_tokens(self, state: int, rhyme_group: int) -> np.ndarray:
        """Bool [V] of the tokens a sampler may pick (the rhyme fallback included).

        Args:
            state: the current state.
            rhyme_group: the recorded rhyme group, -1 if none yet.
        """
        allowed = self.allowed[state]
        if self.rhyme_role[state] == ROLE_MATCH and rhyme_group >= 0:
            match = allowed & (self.token_final == rhyme_group)
            if match.any():
                return match
        return allowed

    def advance(self, state: int, rhyme_group: int, token: int) -> tuple[int, int]:
        """The ``(state, rhyme_group)`` after emitting ``token``.

        Args:
            state: the current state.
            rhyme_group: the recorded rhyme group, -1 if none yet.
            token: the emitted token id.
        """
        if self.rhyme_role[state] == ROLE_SET:
            rhyme_group = int(self.token_final[token])
        return int(self.next_state[state, token]), rhyme_group

    def initial_state(self, prompt_text: str, option: str = "--opening") -> tuple[int, int]:
        """Walk a prompt (e.g. ``春晓 唐诗：【春眠不觉晓``) through the automaton.

        Args:
            prompt_text: the text the model is given, header and any body opening.
            option: the option to name when the body part does not fit.

        Returns:
            ``(state, rhyme_group)`` after the prompt.

        Raises:
            OptionError: the prompt's body part cannot be in this form (or breaks the acrostic
                or, with rhyme on, the rhyme).
        """
        index = {t: i for i, t in enumerate(self.tokens)}
        state, group = 0, -1
        for ch in prompt_text:
            if state == 0:  # header: the model sees [UNK] for unknown characters; only 】 is wrong
                if ch == CLOSE:
                    raise OptionError(f"{option}: the prompt has 】 before 【: {prompt_text!r}")
                state = 1 if ch == OPEN else 0
                continue
            tok = index.get(ch, -1)
            if tok < 0 or not self.allowed_tokens(state, group)[tok]:
                raise OptionError(self._misfit(prompt_text, state, ch, tok, option))
            state, group = self.advance(state, group, tok)
        return state, group

    def _misfit(self, prompt: str, state: int, ch: str, tok: int, option: str) -> str:
        """One-line explanation of why ``ch`` cannot stand at ``state``."""
        form = self.form
        if state == self.done_state:
            return f"{option}: text after 】 in the prompt {prompt!r}"
        if tok < 0:
            return f"{option}: character {ch!r} is not in the vocabulary"
        if form is None:  # free sampling: only a second 【 cannot stand in a body
            return f"{option}: the prompt {prompt!r} has a second {ch!r} inside the poem; give one header"
        where = f"{prompt!r} cannot begin a {form.name}"
        if state == self.done_state - 1:
            return f"{option}: {where}: the body is complete after {form.body_len} characters, 】 must follow"
        body_pos = state - 1
        clause, offset = divmod(body_pos, form.clause_len + 1)
        if offset == form.clause_len:
            return (f"{option}: {where}: clause {clause + 1} has {form.clause_len} characters and must end "
                    f"with {form.punctuation[clause]!r}, got {ch!r}")
        if offset == 0 and clause < len(self.acrostic) and ch != self.acrostic[clause]:
            return f"--acrostic: clause {clause + 1} must start with {self.acrostic[clause]!r}, the prompt has {ch!r}"
        if self.rhyme_role[state] == ROLE_SET and is_hanzi(ch):
            return f"--rhyme: {ch!r} at the end of clause 2 has no known rhyme group; change the opening"
        if self.rhyme_role[state] == ROLE_MATCH and is_hanzi(ch):
            return (f"--rhyme: {ch!r} at the end of clause {clause + 1} does not rhyme with clause 2 "
                    f"in the prompt {prompt!r}; change the opening or drop --rhyme")
        return f"{option}: {where}: expected a Chinese character at clause {clause + 1}, got {ch!r}"

    def padded_tables(self, states: int | None = None) -> dict:
        """The tables as numpy arrays, the state axis padded: what ``as_tensors`` turns into tensors.

        Args:
            states: pad the state axis to this many rows (default ``MAX_STATES``), so that every
                form and the free constraint have the same table shapes and share one compiled
                decode program. Padding rows are unreachable.
        """
        S = len(self.allowed)
        states = MAX_STATES if states is None else max(states, S)
        pad = states - S
        return {
            "allowed": np.pad(self.allowed, ((0, pad), (0, 0))),
            "next_state": np.pad(self.next_state, ((0, pad), (0, 0))).astype(np.int32),
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
    """Int32 [V]: the rhyme group id (index into ``GROUP_NAMES``) of each token, -1 if none.

    Args:
        tokens: a vocabulary's tokens.
    """
    gid = {g: i for i, g in enumerate(GROUP_NAMES)}
    out = np.full(len(tokens), -1, np.int32)
    for i, t in enumerate(tokens):
        g = rhyme_final(t) if len(t) == 1 else None
        if g is not None:
            out[i] = gid[g]
    return out


def free_constraint(vocab) -> DecodeConstraint:
    """The constraint of free sampling: one header, one body, whatever the model prefers.

    Three states: *header* (state 0: any token but the specials and 】; 【 enters the body),
    *body* (state 1: any token but the specials and 【, so a poem never holds a second header;
    】 ends it) and *done* (state 2: only [SEP]). A vocabulary without 【 stays in the header state.
    Every form's tables (``build_constraint``) keep the same rule in their header and body states.

    ``generate`` runs free sampling through the same compiled decode program as the forms
    (tables padded to ``MAX_STATES``), so switching between free and form-constrained poems
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
                            token_final=np.full(len(tokens), -1, np.int32), done_state=done, tokens=tokens)


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
    """The automaton state of the first character of each clause (where an acrostic character goes).

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


def build_constraint(form_name: str, vocab, acrostic: str | None = None, rhyme: bool = False) -> DecodeConstraint:
    """Build the decoding automaton for a form.

    Args:
        form_name: one of ``FORMS`` or a full name (see ``get_form``).
        vocab: a ``CharVocab``.
        acrostic: characters that start clauses 1, 2, … (藏头, per clause); at most the
            form's clause count; spaces between them are ignored (``春 夏 秋 冬``).
        rhyme: constrain the last characters of clauses 4, 6, 8 to clause 2's rhyme group.

    Raises:
        OptionError: unknown form, bad acrostic, or a vocabulary without the form's marks.
    """
    form = get_form(form_name)
    tokens = list(vocab.tokens)
    index = {t: i for i, t in enumerate(tokens)}
    acrostic = "".join((acrostic or "").split())
    if len(acrostic) > form.clauses:
        raise OptionError(f"--acrostic: {len(acrostic)} characters but a {form.name} has {form.clauses} "
                          f"clauses; give at most {form.clauses}")
    for ch in acrostic:
        if not is_hanzi(ch):
            raise OptionError(f"--acrostic: {ch!r} is not a Chinese character")
        if ch not in index:
            raise OptionError(f"--acrostic: character {ch!r} is not in the vocabulary; "
                              f"{_other_script_hint(ch, index)}choose another")
    for mark in (OPEN, CLOSE, COMMA, STOP):
        if mark not in index:
            raise OptionError(f"--form: the vocabulary has no {mark!r}, so it cannot write a {form.name}")

    V = len(tokens)
    S = form.body_len + 3  # header, body positions, close, done
    close, done = S - 2, S - 1
    # rhyme groups only matter with rhyme on; without it pypinyin (about 55 MB) is never loaded
    finals = token_finals(tokens) if rhyme else np.full(V, -1, np.int32)
    hanzi = np.array([i >= 3 and is_hanzi(t) for i, t in enumerate(tokens)])
    allowed = np.zeros((S, V), bool)
    next_state = np.zeros((S, V), np.int32)
    role = np.zeros(S, np.int32)

    allowed[0, 3:] = True
    allowed[0, index[CLOSE]] = False
    next_state[0, index[OPEN]] = 1
    for p in range(form.body_len):
        s = p + 1
        clause, offset = divmod(p, form.clause_len + 1)
        next_state[s, :] = s + 1
        if offset == form.clause_len:
            allowed[s, index[form.punctuation[clause]]] = True
        else:
            allowed[s] = hanzi
        if rhyme and offset == form.clause_len - 1 and clause + 1 in form.rhyme_clauses:
            first = clause + 1 == form.rhyme_clauses[0]
            role[s] = ROLE_SET if first else ROLE_MATCH
            if first and (allowed[s] & (finals >= 0)).any():
                allowed[s] &= finals >= 0  # the rhyme-setting character must have a known group
    for s, ch in zip(clause_start_states(form), acrostic):  # the rhyme positions end clauses: never these
        allowed[s] = False
        allowed[s, index[ch]] = True
    allowed[close, index[CLOSE]] = True
    next_state[close, :] = done
    allowed[done, 2] = True  # [SEP]
    next_state[done, :] = done
    return DecodeConstraint(allowed, next_state, role, finals, done, form, tokens, acrostic, rhyme)


# ------------------------------------------------------------------------- TensorFlow helpers
def apply_constraint_tf(logits, state, rhyme_group, tables):
    """Mask logits to the tokens the constraint allows (XLA-safe, batch first).

    At rhyme role-2 positions only tokens of the recorded rhyme group stay allowed,
    unless none is allowed there (or no group is recorded): then the plain allowed set.

    Args:
        logits: float [B, V].
        state: int32 [B] current states.
        rhyme_group: int32 [B] recorded rhyme groups (-1 none).
        tables: ``DecodeConstraint.as_tensors()``.

    Returns:
        Logits [B, V] with disallowed tokens set to a large negative (-1e9, or the
        dtype's minimum for half precision), never -inf.
    """
    import tensorflow as tf

    state = tf.cast(state, tf.int32)
    rhyme_group = tf.cast(rhyme_group, tf.int32)
    allowed = tf.gather(tables["allowed"], state)
    role = tf.gather(tables["rhyme_role"], state)
    wants_match = tf.equal(role, ROLE_MATCH) & tf.greater_equal(rhyme_group, 0)

    def rhyme_mask():
        match = tf.logical_and(allowed, tf.equal(tables["token_final"][None, :], rhyme_group[:, None]))
        use_match = wants_match & tf.reduce_any(match, axis=1)
        return tf.where(use_match[:, None], match, allowed)

    # the rhyme test reads the whole vocabulary: only at the few steps where a row needs it
    mask = tf.cond(tf.reduce_any(wants_match), rhyme_mask, lambda: allowed)
    neg = tf.constant(max(-1e9, float(logits.dtype.min)), dtype=logits.dtype)
    return tf.where(mask, logits, neg)


def advance_tf(state, rhyme_group, token, tables):
    """The states and rhyme groups after emitting ``token`` (XLA-safe, batch first).

    Args:
        state: int32 [B] current states.
        rhyme_group: int32 [B] recorded rhyme groups (-1 none).
        token: int [B] emitted token ids.
        tables: ``DecodeConstraint.as_tensors()``.

    Returns:
        ``(state, rhyme_group)``, both int32 [B].
    """
    import tensorflow as tf

    state = tf.cast(state, tf.int32)
    token = tf.cast(token, tf.int32)
    new_state = tf.gather_nd(tables["next_state"], tf.stack([state, token], axis=1))
    role = tf.gather(tables["rhyme_role"], state)
    final = tf.gather(tables["token_final"], token)
    new_group = tf.where(tf.equal(role, ROLE_SET), final, tf.cast(rhyme_group, tf.int32))
    return new_state, new_group
